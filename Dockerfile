# syntax=docker/dockerfile:1
# The adapter image: custom-metrics-adapter (the entrypoint) and sample-metrics-app.
#
#   docker build -t <registry>/custom-metrics-adapter:0.1.0 .

FROM rust:1-bookworm AS builder
WORKDIR /src
# Everything but what .dockerignore leaves out (target, .local, .git).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/custom-metrics-adapter target/release/sample-metrics-app /out/

# glibc and libgcc for the Rust binaries, CA certificates, a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/custom-metrics-adapter /out/sample-metrics-app /usr/local/bin/
USER 65532:65532
EXPOSE 6443
ENTRYPOINT ["/usr/local/bin/custom-metrics-adapter"]
