#!/usr/bin/env bash
# The project's benchmark: the adapter side by side with the same PromQL sent directly to
# Prometheus, on loopback. For each configuration (1,000 and 10,000 synthetic series,
# hack/synth-target.py, scraped every second) it starts a Prometheus and the adapter (release build,
# --objects-file with the synthetic pods and services, --metrics-relist-interval 10s), then runs
# wrk at 1 and 8 connections (keep-alive; TLS to the adapter, plain HTTP to Prometheus) for:
#
#   one pod          .../namespaces/ns-0/pods/pod-0/http_requests
#   pods/* 10, 100   .../namespaces/ns-0/pods/*/http_requests?labelSelector=g10=0 (g100=0)
#   service          .../namespaces/ns-0/services/svc-0/http_requests
#   discovery        /apis/custom.metrics.k8s.io/v1beta2 with 10 (1k) or 10,000 (10k) metric names;
#                    "direct" is Prometheus' /api/v1/label/__name__/values, its nearest equivalent
#   hot metric       one pod again on an adapter started with --query-cache-ttl=5s, when the
#                    adapter has that flag (skipped with a note otherwise)
#
# "direct" sends the PromQL the adapter sends, read from the debug log of a first, short-lived
# adapter. Each adapter run is followed at once by its direct run (ROUNDS times), so every ratio
# compares runs of the same minute. One markdown table is printed at the end, with the adapter's
# RSS (idle, after the load, peak) and its cold start to /readyz (next to Prometheus' own
# /api/v1/series time, which the first relist waits for).
#
#   hack/bench.sh            1k and 10k series, 4 s runs, 2 rounds (about 8 minutes on 2 cores)
#   hack/bench.sh --quick    1k series, 1 s runs, 1 round (a smoke run, under a minute)
#
# Ports are picked free; state goes to a temporary directory, removed at the end (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib.sh
source hack/lib.sh

quick=false
case "${1:-}" in
  --quick) quick=true ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
if $quick; then
  configs=(1000:9); duration=1; rounds=1
else
  configs=(1000:9 10000:9999); duration=4; rounds=2
fi

need_commands prometheus wrk curl python3
cargo build --release --locked --quiet --bin custom-metrics-adapter
adapter_bin=$PWD/target/release/custom-metrics-adapter
cache_flag=()
"$adapter_bin" --help | grep -q -- '--query-cache-ttl' && cache_flag=(--query-cache-ttl=5s)

state=$(mktemp -d "${TMPDIR:-/tmp}/cma-bench.XXXXXX")
results=$state/results.tsv   # config case c side req/s p50_ms p99_ms non2xx
facts=$state/facts.tsv       # config what value
: >"$results"; : >"$facts"
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
cleanup() {
  stop_all
  if [[ "${KEEP:-}" == 1 ]]; then echo "state kept in $state" >&2; else rm -rf "$state"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

group=/apis/custom.metrics.k8s.io/v1beta2
declare -A paths=(
  [one pod]="$group/namespaces/ns-0/pods/pod-0/http_requests"
  [pods/* 10]="$group/namespaces/ns-0/pods/*/http_requests?labelSelector=g10%3D0"
  [pods/* 100]="$group/namespaces/ns-0/pods/*/http_requests?labelSelector=g100%3D0"
  [service]="$group/namespaces/ns-0/services/svc-0/http_requests"
)
query_cases=("one pod" "pods/* 10" "pods/* 100" "service")

# Starts an adapter on PORT with the objects file; extra arguments are passed on. Sets $adapter_pid.
start_adapter() {
  local port=$1 log=$2; shift 2
  "$adapter_bin" --secure-port "$port" --bind-address 127.0.0.1 --cert-dir "$state/certs" \
    --prometheus-url "$prom" --objects-file "$state/objects.yaml" --insecure-allow-anonymous \
    --metrics-relist-interval 10s "$@" >"$log" 2>&1 &
  adapter_pid=$!
  pids+=("$adapter_pid")
}

# Runs wrk against URL with C connections and appends one line to the results.
#   measure CONFIG CASE C SIDE URL
measure() {
  local out=$state/wrk.txt
  wrk -t1 -c"$3" -d"${duration}s" --latency --timeout 10s "$5" >"$out" 2>&1 || true
  python3 - "$out" "$1" "$2" "$3" "$4" >>"$results" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
def pct(p):
    m = re.search(r"^\s*%d%%\s+([\d.]+)(us|ms|s|m)\s*$" % p, text, re.M)
    return float(m.group(1)) * scale[m.group(2)] if m else float("nan")
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
failed = int(bad.group(1)) if bad else 0
if errors:
    failed += sum(int(n) for n in re.findall(r"\d+", errors.group(1)))
print("\t".join(sys.argv[2:6] + [rps.group(1) if rps else "0", "%.3f" % pct(50), "%.3f" % pct(99), str(failed)]))
PY
}

# The PromQL the adapter sends for PATH, from the debug log of the probe adapter.
promql_of() {
  curl -sk --max-time 10 -o /dev/null "$base$1"
  sleep 0.1
  grep 'Querying the backend' "$state/probe.log" | tail -1 |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["promql"])'
}

# Runs the adapter and direct sides of one case at 1 and 8 connections, interleaved.
#   side_by_side CONFIG CASE ADAPTER_URL DIRECT_URL
side_by_side() {
  local c round
  for c in 1 8; do
    for ((round = 0; round < rounds; round++)); do
      measure "$1" "$2" "$c" adapter "$3"
      measure "$1" "$2" "$c" direct "$4"
    done
  done
}

bench_config() {
  local series=$1 names=$2 config
  config=$((series / 1000))k
  echo "== $config: $series series, $((names + 1)) metric names" >&2
  local target_port prom_port port
  target_port=$(free_port); prom_port=$(free_port)
  prom=http://127.0.0.1:$prom_port
  python3 hack/synth-target.py --series "$series" --names "$names" --port "$target_port" >"$state/target.log" 2>&1 &
  pids+=($!)
  prometheus_config "$state/prometheus.yml" "127.0.0.1:$target_port" 1s
  rm -rf "$state/tsdb"
  prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$state/prometheus.log" 2>&1 &
  pids+=($!)
  python3 hack/synth-objects.py "$series" >"$state/objects.yaml"
  wait_prometheus_count "$prom" 'count(http_requests_total)' "$series" 90
  wait_prometheus_count "$prom" 'count({__name__=~"synth_gauge_.*"})' "$names" 90

  # A first adapter, logging its queries, tells the PromQL of each case; rate() needs two scrapes.
  port=$(free_port); base=https://127.0.0.1:$port
  RUST_LOG=warn,custom_metrics_adapter::pipeline=debug start_adapter "$port" "$state/probe.log" --log-format json
  wait_http_ok "$base${paths[one pod]}" 120 0.5
  declare -A direct=()
  local name
  for name in "${query_cases[@]}"; do
    direct[$name]="$prom/api/v1/query?query=$(promql_of "${paths[$name]}" | python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.stdin.read().strip(), safe=""))')"
  done
  kill "$adapter_pid"; wait "$adapter_pid" 2>/dev/null || true

  # The measured adapter: cold start to /readyz, then idle RSS.
  port=$(free_port); base=https://127.0.0.1:$port
  local started ready_ms series_s
  started=$(date +%s%N)
  start_adapter "$port" "$state/adapter.log"
  wait_http_ok "$base/readyz" 3000 0.01
  ready_ms=$((($(date +%s%N) - started) / 1000000))
  series_s=$(curl -s -o /dev/null -w '%{time_total}' -H 'Accept-Encoding: identity' -G "$prom/api/v1/series" \
    --data-urlencode 'match[]={namespace!="",__name__!~"^container_.*"}' --data-urlencode "start=$(($(date +%s) - 10))")
  printf "%s\tcold\t%s\t%s\n" "$config" "$ready_ms" "$series_s" >>"$facts"
  wait_http_ok "$base${paths[one pod]}" 60 0.5
  sleep 2
  local idle discovered
  idle=$(status_kib "$adapter_pid")
  discovered=$(curl -sk "$base$group" | python3 -c 'import json,sys; print(len({r["name"].split("/", 1)[1] for r in json.load(sys.stdin)["resources"]}))')

  for name in "${query_cases[@]}"; do
    side_by_side "$config" "$name" "$base${paths[$name]}" "${direct[$name]}"
  done
  side_by_side "$config" "discovery ($discovered names)" "$base$group" "$prom/api/v1/label/__name__/values"
  sleep 1
  printf "%s\trss\t%s\t%s\t%s\n" "$config" "$idle" "$(status_kib "$adapter_pid")" "$(status_kib "$adapter_pid" VmHWM)" >>"$facts"
  kill "$adapter_pid"; wait "$adapter_pid" 2>/dev/null || true

  if ((${#cache_flag[@]})); then
    port=$(free_port); base=https://127.0.0.1:$port
    start_adapter "$port" "$state/cached.log" "${cache_flag[@]}"
    wait_http_ok "$base${paths[one pod]}" 60 0.5
    side_by_side "$config" "hot metric (${cache_flag[0]#--})" "$base${paths[one pod]}" "${direct[one pod]}"
  else
    printf "%s\tnote\thot metric: skipped, this adapter has no --query-cache-ttl\n" "$config" >>"$facts"
  fi
  stop_all
}

for pair in "${configs[@]}"; do
  bench_config "${pair%%:*}" "${pair#*:}"
done

python3 - "$results" "$facts" "$duration" "$rounds" <<'PY'
import collections, statistics, sys
results, facts, duration, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
runs = collections.OrderedDict()
for line in open(results):
    config, case, c, side, rps, p50, p99, failed = line.rstrip("\n").split("\t")
    runs.setdefault((config, case, c), {"adapter": [], "direct": []})[side].append(
        (float(rps), float(p50), float(p99), int(failed)))
def summary(rows):
    return (statistics.mean(r[0] for r in rows), statistics.median(r[1] for r in rows),
            statistics.median(r[2] for r in rows), sum(r[3] for r in rows))
def ms(v):
    return "%.2f" % v if v < 10 else "%.1f" % v
print("| case | adapter req/s | direct req/s | ratio | adapter p50/p99 ms | direct p50/p99 ms | overhead p50 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
notes = []
for (config, case, c), sides in runs.items():
    a, d = summary(sides["adapter"]), summary(sides["direct"])
    flag = lambda s: " (%d failed)" % s[3] if s[3] else ""
    print("| %s %s, c=%s | %.0f%s | %.0f%s | %.2f× | %s / %s | %s / %s | %+.2f |" % (
        config, case, c, a[0], flag(a), d[0], flag(d), a[0] / d[0] if d[0] else float("nan"),
        ms(a[1]), ms(a[2]), ms(d[1]), ms(d[2]), a[1] - d[1]))
for line in open(facts):
    config, what, *rest = line.rstrip("\n").split("\t")
    if what == "rss":
        idle, after, peak = (int(v) / 1024 for v in rest)
        print("| %s RSS idle → after load (peak) | %.1f → %.1f MiB (%.1f) | | | | | |" % (config, idle, after, peak))
    elif what == "cold":
        print("| %s cold start to /readyz (direct: Prometheus /api/v1/series) | %.2f s | %.3f s | | | | |" % (
            config, int(rest[0]) / 1000, float(rest[1])))
    else:
        notes.append("%s: %s" % (config, rest[0]))
print()
print("wrk -t1, keep-alive, %s s per run, %s round(s) per side, adapter and direct runs interleaved; "
      "adapter over TLS, Prometheus over plain HTTP; p50/p99 are medians over rounds." % (duration, rounds))
for note in notes:
    print(note)
PY
