#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests against a real Prometheus,
# real TLS, curl and kubectl. Installs Debian's prometheus package when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)   # hack/gen-certs.sh, checked by the manifest test
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# kubectl v1.32 is preinstalled on this machine kind; Debian's kubernetes-client conflicts with it.
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required (v1.32 expected on PATH)" >&2; exit 1; }

cargo test --locked --all-targets "$@"
