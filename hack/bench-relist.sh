#!/usr/bin/env bash
# Measures the adapter's memory while it relists N series: starts hack/synth-target.py
# with N series, a Prometheus scraping it, and the adapter (release build) relisting every 5 s, then
# prints the adapter's peak RSS (VmHWM) after a few relists, and the time one /api/v1/series call takes.
#
#   hack/bench-relist.sh 10000 100000
#
# Ports: 19300 (target), 19390 (Prometheus), 19443 (adapter). State: .local/bench-relist/
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib.sh
source hack/lib.sh
need_commands prometheus curl
cargo build --release --locked --quiet --bin custom-metrics-adapter
state=$PWD/.local/bench-relist
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for n in "${@:-10000}"; do
  cleanup; pids=()
  rm -rf "$state"; mkdir -p "$state"
  interval=1s; ((n > 20000)) && interval=5s
  python3 hack/synth-target.py --series "$n" --port 19300 >"$state/target.log" 2>&1 & pids+=($!)
  prometheus_config "$state/prometheus.yml" 127.0.0.1:19300 "$interval"
  prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/tsdb" \
    --web.listen-address=127.0.0.1:19390 --log.level=warn >"$state/prometheus.log" 2>&1 & pids+=($!)
  wait_prometheus_count http://127.0.0.1:19390 'count(http_requests_total)' "$n" 120
  ./target/release/custom-metrics-adapter --secure-port 19443 --bind-address 127.0.0.1 --cert-dir "$state/certs" \
    --prometheus-url http://127.0.0.1:19390 --objects-file /dev/null --insecure-allow-anonymous \
    --metrics-relist-interval 5s --metrics-max-age 30s >"$state/adapter.log" 2>&1 & pid=$!; pids+=($pid)
  sleep 2
  idle=$(status_kib "$pid")
  sleep 16   # four relists
  peak=$(status_kib "$pid" VmHWM)
  now=$(status_kib "$pid")
  start=$(( $(date +%s) - 30 ))
  series_ms=$(curl -s -o /dev/null -w '%{time_total}' -H 'Accept-Encoding: identity' \
    "http://127.0.0.1:19390/api/v1/series?match%5B%5D=%7Bnamespace!%3D%22%22%2C__name__!~%22%5Econtainer_.*%22%7D&start=$start")
  resources=$(curl -sk https://127.0.0.1:19443/apis/custom.metrics.k8s.io/v1beta1 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["resources"]))')
  echo "series=$n adapter_rss_idle_kib=$idle adapter_rss_after_relists_kib=$now adapter_peak_rss_kib=$peak series_call_s=$series_ms discovered_resources=$resources"
done
