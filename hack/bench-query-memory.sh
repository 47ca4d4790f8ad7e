#!/usr/bin/env bash
# Measures the adapter's memory while it reads one large Prometheus query answer: starts
# hack/fake-prometheus.py answering a valid vector of SIZE megabytes, the adapter (release build,
# or $ADAPTER) with an objects file of ten pods, sends CONCURRENCY requests for pods/* at once and
# prints the adapter's peak RSS (VmHWM) and its RSS afterwards.
#
#   hack/bench-query-memory.sh 100 1        # one 100 MB answer
#   hack/bench-query-memory.sh 100 4        # four at once
#   MAX=64Mi hack/bench-query-memory.sh 100 # with the default limit: refused
#
# Ports: 19391 (fake Prometheus), 19444 (adapter). State: .local/bench-query/
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-100}
concurrency=${2:-1}
max=${MAX:-1Gi}
adapter=${ADAPTER:-}
if [[ -z "$adapter" ]]; then
  cargo build --release --locked --quiet --bin custom-metrics-adapter
  adapter=./target/release/custom-metrics-adapter
fi
state=$PWD/.local/bench-query
rm -rf "$state"; mkdir -p "$state"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

python3 hack/fake-prometheus.py --port 19391 --answer-mb "$size" >"$state/prometheus.log" 2>&1 & pids+=($!)
{
  echo "namespaces: [{name: default}]"
  echo "pods:"
  for i in $(seq 0 9); do echo "  - {name: pod-000000$i, namespace: default}"; done
} >"$state/objects.yaml"
until grep -q answer "$state/prometheus.log" 2>/dev/null; do sleep 0.2; done
limit_flag=()
# An adapter from before the flag existed has no limit to raise.
"$adapter" --help | grep -q -- --prometheus-max-response-bytes && limit_flag=(--prometheus-max-response-bytes "$max")
"$adapter" --secure-port 19444 --bind-address 127.0.0.1 --cert-dir "$state/certs" \
  --prometheus-url http://127.0.0.1:19391 --objects-file "$state/objects.yaml" --insecure-allow-anonymous \
  "${limit_flag[@]}" >"$state/adapter.log" 2>&1 & pid=$!; pids+=($pid)
url=https://127.0.0.1:19444/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests
# Ready once the (small) series listing is in: no query answer has been read yet.
for _ in $(seq 1 100); do
  [[ $(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:19444/readyz 2>/dev/null) == 200 ]] && break
  sleep 0.2
done
idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
start=$(date +%s%N)
requests=()
for i in $(seq 1 "$concurrency"); do
  curl -sk -o "$state/answer.$i" -w '%{http_code}\n' "$url" >>"$state/codes" & requests+=($!)
done
wait "${requests[@]}"
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 1
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
echo "$(head -1 "$state/prometheus.log") concurrency=$concurrency limit=$max codes=$(sort "$state/codes" | uniq -c | tr -s ' \n' ' ')"
echo "adapter_rss_idle_kib=$idle adapter_peak_rss_kib=$peak adapter_rss_after_kib=$after elapsed_ms=$elapsed_ms"
