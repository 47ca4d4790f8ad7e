#!/usr/bin/env bash
# A bounded soak on loopback: the adapter (release build) behind hack/synth-target.py and
# a Prometheus, under steady keep-alive load (wrk: the HPA's pods/* request, a single object, the
# discovery document) plus connection churn and hostile requests (a Python client that opens
# connections it never uses, sends malformed and escaped paths, and hangs up mid-request). Every
# SAMPLE seconds it prints the adapter's RSS, open file descriptors and threads, then a summary that
# says whether they grew. Everything stops by itself after DURATION seconds.
#
#   hack/soak.sh [DURATION=120] [SAMPLE=5]
#
# Ports: 19500 (target), 19590 (Prometheus), 19543 (adapter). State: .local/soak/
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib.sh
source hack/lib.sh
duration=${1:-120}
sample=${2:-5}
series=${SERIES:-1000}
need_commands prometheus wrk curl
cargo build --release --locked --quiet --bin custom-metrics-adapter

state=$PWD/.local/soak
rm -rf "$state"; mkdir -p "$state"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 hack/synth-target.py --series "$series" --port 19500 >"$state/target.log" 2>&1 & pids+=($!)
prometheus_config "$state/prometheus.yml" 127.0.0.1:19500 2s
prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/tsdb" \
  --web.listen-address=127.0.0.1:19590 --log.level=warn >"$state/prometheus.log" 2>&1 & pids+=($!)

# The objects the synthetic series name: the pods (app=web) and services of ns-0..ns-9.
python3 hack/synth-objects.py "$series" >"$state/objects.yaml"

wait_prometheus_count http://127.0.0.1:19590 'count(http_requests_total)' "$series"
./target/release/custom-metrics-adapter --secure-port 19543 --bind-address 127.0.0.1 --cert-dir "$state/certs" \
  --prometheus-url http://127.0.0.1:19590 --objects-file "$state/objects.yaml" --insecure-allow-anonymous \
  --metrics-relist-interval 10s >"$state/adapter.log" 2>&1 & adapter=$!; pids+=($adapter)
base=https://127.0.0.1:19543
wait_http_ok "$base/readyz"

group=/apis/custom.metrics.k8s.io/v1beta2
hpa="$group/namespaces/ns-0/pods/*/http_requests?labelSelector=app%3Dweb"
one="$group/namespaces/ns-0/services/svc-0/http_requests"
# rate() needs two scrapes in its window: wait for the first full answer before loading.
wait_http_ok "$base$hpa"
for name in hpa one discovery; do
  case $name in hpa) path=$hpa ;; one) path=$one ;; discovery) path=$group ;; esac
  code=$(curl -sk -o "$state/first-$name.json" -w '%{http_code}' "$base$path")
  echo "first $name request: HTTP $code"
  wrk -t1 -c4 -d"${duration}s" --timeout 10s "$base$path" >"$state/wrk-$name.log" 2>&1 & pids+=($!)
done

# Hostile churn: idle connections that are dropped, garbage paths, half-sent requests; bounded by time.
python3 - "$duration" >"$state/churn.log" 2>&1 <<'PY' & pids+=($!)
import random, socket, ssl, sys, time
end = time.time() + float(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
paths = ["/apis/custom.metrics.k8s.io/v1beta2/namespaces/%zz/pods/*/x", "/apis/%FF", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns-0/pods/*/http_requests?labelSelector=a%20in%20(",
         "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns-0/pods/%2A/http_requests", "/" + "a/" * 2000, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns-0/pods/*/http_requests?metricLabelSelector=code%3D%22%7D"]
sent = idle = 0
while time.time() < end:
    try:
        raw = socket.create_connection(("127.0.0.1", 19543), timeout=5)
        conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        mode = random.random()
        if mode < 0.3:
            idle += 1  # a connection that never sends anything, dropped after a moment
            time.sleep(0.05)
        elif mode < 0.5:
            conn.sendall(b"GET /apis/custom.metrics.k8s.io/v1beta2 HTTP/1.1\r\nHost: x\r\n")  # no end of headers
        else:
            conn.sendall(f"GET {random.choice(paths)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            conn.recv(65536)
            sent += 1
        conn.close()
    except OSError:
        time.sleep(0.05)
print(f"hostile requests {sent}, idle connections {idle}")
PY

rss() { status_kib "$adapter"; }
fds() { ls "/proc/$adapter/fd" | wc -l; }
threads() { awk '/Threads/ {print $2}' "/proc/$adapter/status"; }
printf "%6s %10s %6s %8s\n" "t_s" "rss_kib" "fds" "threads" | tee "$state/samples.txt"
started=$(date +%s)
while (($(date +%s) - started < duration)); do
  kill -0 "$adapter" 2>/dev/null || { echo "the adapter exited" >&2; tail -20 "$state/adapter.log" >&2; exit 1; }
  printf "%6d %10d %6d %8d\n" "$(($(date +%s) - started))" "$(rss)" "$(fds)" "$(threads)" | tee -a "$state/samples.txt"
  sleep "$sample"
done
sleep 2   # load has stopped; connections close
printf "%6s %10d %6d %8d  (after the load)\n" "end" "$(rss)" "$(fds)" "$(threads)" | tee -a "$state/samples.txt"
wait "${pids[@]:3}" 2>/dev/null || true
for log in "$state"/wrk-*.log; do grep -E "Requests/sec|Non-2xx|Socket errors" "$log" | sed "s|^|$(basename "$log" .log): |"; done
cat "$state/churn.log"
python3 - "$state/samples.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.split() and l.split()[0].isdigit()]
rss = [int(r[1]) for r in rows]; fds = [int(r[2]) for r in rows]
half = len(rows) // 2 or 1
first, second = max(rss[:half]), max(rss[half:] or rss)
print(f"rss_kib first_half_max={first} second_half_max={second} growth={second - first} ({100 * (second - first) / max(first, 1):.1f}%)")
print(f"fds min={min(fds)} max={max(fds)}")
PY
