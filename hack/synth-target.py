#!/usr/bin/env python3
"""Synthetic Prometheus scrape target for perf anchoring.

Exposes N counter series in Prometheus text format:

    http_requests_total{namespace="ns-K",pod="pod-J",service="svc-M"} <value>

Layout: 10 namespaces (ns-0..ns-9), N/10 pods per namespace (pod-0..pod-(N/10-1),
pod names repeat across namespaces), services group 10 consecutive pods
(svc-M with M = J // 10). Each series grows linearly:
value = rate_j * seconds_since_start, with rate_j in 1..10 req/s (deterministic).

With --names K it also exposes K gauges with one series each, on ns-0's pod-0,
so the adapter discovers K more metric names (hack/bench.sh measures discovery this way):

    synth_gauge_I{namespace="ns-0",pod="pod-0",service="svc-0"} <I>

Usage: python3 synth-target.py --series 10000 --port 19100 [--names 0] [--host 127.0.0.1]
Only binds loopback by default. Stop it by its PID.

A copy of ../shared/bench/synth_target.py (the project's performance anchor) with --names added,
kept here so the hack/ scripts do not depend on files outside the repository.
"""
import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMESPACES = 10


def build(n):
    per_ns = max(1, n // NAMESPACES)
    prefixes, rates = [], []
    i = 0
    for k in range(NAMESPACES):
        for j in range(per_ns):
            if i >= n:
                break
            prefixes.append(
                'http_requests_total{namespace="ns-%d",pod="pod-%d",service="svc-%d"} '
                % (k, j, j // 10)
            )
            rates.append(1 + (k * 7 + j * 13) % 10)
            i += 1
    return prefixes, rates


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--port", type=int, default=19100)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--names", type=int, default=0)
    args = ap.parse_args()

    prefixes, rates = build(args.series)
    header = (
        "# HELP http_requests_total Synthetic request counter.\n"
        "# TYPE http_requests_total counter\n"
    )
    # The gauges never change, so their text is built once.
    gauges = "".join(
        '# TYPE synth_gauge_%d gauge\nsynth_gauge_%d{namespace="ns-0",pod="pod-0",service="svc-0"} %d\n'
        % (i, i, i)
        for i in range(args.names)
    )
    start = time.time()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.split("?")[0] != "/metrics":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            t = time.time() - start
            body = header + "".join(
                "%s%.3f\n" % (p, r * t) for p, r in zip(prefixes, rates)
            ) + gauges
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    print(
        "serving %d series and %d gauges on %s:%d" % (len(prefixes), args.names, args.host, args.port),
        flush=True,
    )
    srv.serve_forever()


if __name__ == "__main__":
    main()
