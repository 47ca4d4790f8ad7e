#!/usr/bin/env bash
# Runs the seed scenario on this machine: Prometheus (Debian's package, installed if missing),
# three replicas of the sample app behind a "Service" sample-metrics-app with ~500 requests/s of
# load, and the adapter on https://127.0.0.1:6443. Prints the curl and kubectl commands to try.
#
#   hack/run-local.sh           run until Ctrl-C
#   hack/run-local.sh --check   start everything, wait for the first answer, print it, stop
#
# Ports: ADAPTER_PORT (6443), PROMETHEUS_PORT (19090), APP_PORT_BASE (18081..18083). State: .local/
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
[[ "${1:-}" == "--check" ]] && check=true
adapter_port=${ADAPTER_PORT:-6443}
prometheus_port=${PROMETHEUS_PORT:-19090}
app_port_base=${APP_PORT_BASE:-18081}
rps=${RPS:-500}
state=$PWD/.local
seed_path=/apis/custom-metrics.metrics.k8s.io/v1beta1/namespaces/default/services/sample-metrics-app/http_requests

if ! command -v prometheus >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  echo "==> installing prometheus and curl (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus curl >/dev/null
fi

echo "==> building"
cargo build --locked --quiet --bins
bin=$PWD/target/debug

rm -rf "$state/prometheus-data"
mkdir -p "$state/certs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three "pods" of the sample app. In a cluster a ServiceMonitor attaches namespace/pod/service
# labels to their series; here the scrape config does the same.
targets=""
objects="pods:\n"
for i in 0 1 2; do
  port=$((app_port_base + i))
  "$bin/sample-metrics-app" serve --listen "127.0.0.1:$port" 2>>"$state/sample-app.log" &
  pids+=($!)
  targets+="      - targets: ['127.0.0.1:$port']\n        labels: {namespace: default, pod: sample-metrics-app-$i, service: sample-metrics-app}\n"
  objects+="  - {name: sample-metrics-app-$i, namespace: default, labels: {app: sample-metrics-app}}\n"
done
objects+="services:\n  - {name: sample-metrics-app, namespace: default, labels: {app: sample-metrics-app}, selector: {app: sample-metrics-app}}\n"
printf "$objects" >"$state/objects.yaml"
printf "global:\n  scrape_interval: 2s\nscrape_configs:\n  - job_name: sample-metrics-app\n    static_configs:\n$targets" >"$state/prometheus.yml"

echo "==> starting Prometheus on 127.0.0.1:$prometheus_port"
prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/prometheus-data" \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn 2>>"$state/prometheus.log" &
pids+=($!)

app_urls=()
for i in 0 1 2; do app_urls+=(--target "http://127.0.0.1:$((app_port_base + i))/"); done
"$bin/sample-metrics-app" load "${app_urls[@]}" --rps "$rps" 2>>"$state/load.log" &
pids+=($!)

echo "==> starting the adapter on https://127.0.0.1:$adapter_port"
"$bin/custom-metrics-adapter" --secure-port "$adapter_port" --bind-address 127.0.0.1 \
  --cert-dir "$state/certs" --prometheus-url "http://127.0.0.1:$prometheus_port" \
  --objects-file "$state/objects.yaml" --metrics-relist-interval 5s \
  --insecure-allow-anonymous 2>>"$state/adapter.log" &
pids+=($!)

cat >"$state/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local-adapter
  cluster: {server: "https://127.0.0.1:$adapter_port", insecure-skip-tls-verify: true}
users:
- name: local
  user: {token: local-dev}
contexts:
- name: local-adapter
  context: {cluster: local-adapter, user: local}
current-context: local-adapter
EOF

echo "==> waiting for the first rate (two scrapes) and the adapter's metric discovery"
answer=""
for _ in $(seq 1 90); do
  if answer=$(curl -sSfk "https://127.0.0.1:$adapter_port$seed_path" 2>/dev/null); then break; fi
  answer=""
  sleep 1
done
if [[ -z "$answer" ]]; then
  echo "no answer after 90 s; logs are in $state/*.log" >&2
  curl -sSk "https://127.0.0.1:$adapter_port$seed_path" >&2 || true
  exit 1
fi

cat <<EOF

The seed request answers:
$answer

Try:
  curl -sSk https://127.0.0.1:$adapter_port$seed_path
  kubectl --kubeconfig $state/kubeconfig get --raw $seed_path
  kubectl --kubeconfig $state/kubeconfig get --raw '/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests?labelSelector=app%3Dsample-metrics-app'
  kubectl --kubeconfig $state/kubeconfig get --raw /apis/custom.metrics.k8s.io/v1beta2 | python3 -m json.tool

The load generator sends $rps requests/s in total; the value converges on "$rps" once the
2-minute rate window is full. Logs: $state/*.log
EOF

if $check; then
  echo "$answer" | grep -q '"kind":"MetricValueList"' || { echo "unexpected answer" >&2; exit 1; }
  echo "==> --check passed; stopping"
  exit 0
fi
echo "Press Ctrl-C to stop."
wait
