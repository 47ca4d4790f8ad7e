# Helpers sourced by the hack/ scripts that run a Prometheus and the adapter on loopback
# (soak.sh, bench-relist.sh, bench.sh), so the waits and readers behave the same in each.
# shellcheck shell=bash

# Installs the Debian packages that provide the given commands, when some are missing.
# Arguments are command=package pairs, or a bare name when both are the same.
need_commands() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]} (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Prints a TCP port that is free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Writes a Prometheus configuration that scrapes one target every INTERVAL.
#   prometheus_config FILE TARGET INTERVAL
prometheus_config() {
  printf "global:\n  scrape_interval: %s\nscrape_configs:\n  - job_name: synth\n    static_configs:\n      - targets: ['%s']\n" \
    "$3" "$2" >"$1"
}

# The value of an instant query that returns one number (0 when it returns nothing or fails).
#   prometheus_scalar BASE_URL PROMQL
prometheus_scalar() {
  curl -s --max-time 5 -G "$1/api/v1/query" --data-urlencode "query=$2" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null ||
    echo 0
}

# Waits until PROMQL evaluates to EXPECTED (every series scraped), at most TRIES seconds.
#   wait_prometheus_count BASE_URL PROMQL EXPECTED [TRIES=60]
wait_prometheus_count() {
  local i
  for ((i = 0; i < ${4:-60}; i++)); do
    [[ "$(prometheus_scalar "$1" "$2")" == "$3" ]] && return 0
    sleep 1
  done
  echo "Prometheus at $1: $2 did not reach $3 in ${4:-60} s" >&2
  return 1
}

# Waits until URL answers HTTP 200 (TLS not verified), polling every STEP seconds, at most TRIES times.
#   wait_http_ok URL [TRIES=60] [STEP=0.5]
wait_http_ok() {
  local i
  for ((i = 0; i < ${2:-60}; i++)); do
    [[ "$(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' "$1")" == 200 ]] && return 0
    sleep "${3:-0.5}"
  done
  echo "$1 did not answer 200 in time" >&2
  return 1
}

# A memory figure of /proc/PID/status in KiB: VmRSS (default) or VmHWM (peak).
#   status_kib PID [FIELD=VmRSS]
status_kib() {
  awk -v field="${2:-VmRSS}:" '$1 == field {print $2}' "/proc/$1/status"
}
