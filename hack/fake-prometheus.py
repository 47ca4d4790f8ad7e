#!/usr/bin/env python3
"""A fake Prometheus for memory benchmarks: /api/v1/series lists one http_requests_total series
(so the adapter discovers http_requests for pods), /api/v1/query answers a valid instant vector of
about --answer-mb megabytes (pods pod-0000000, pod-0000001, ... in namespace default).

    python3 hack/fake-prometheus.py --port 19391 --answer-mb 100
"""
import argparse
import http.server
import json
import time


def vector(megabytes):
    now = f"{time.time():.3f}"
    target = int(megabytes * 1_000_000)
    head = b'{"status":"success","data":{"resultType":"vector","result":['
    parts, size, i = [head], len(head), 0
    while size < target:
        sample = (
            f'{"," if i else ""}{{"metric":{{"namespace":"default","pod":"pod-{i:07d}",'
            f'"service":"web"}},"value":[{now},"{i % 1000}.5"]}}'
        ).encode()
        parts.append(sample)
        size += len(sample)
        i += 1
    parts.append(b"]}}")
    return b"".join(parts), i


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=19391)
    parser.add_argument("--answer-mb", type=float, default=100)
    args = parser.parse_args()
    answer, samples = vector(args.answer_mb)
    series = json.dumps({
        "status": "success",
        "data": [{"__name__": "http_requests_total", "namespace": "default", "pod": "pod-0000000"}],
    }).encode()
    print(f"answer: {len(answer)} bytes, {samples} samples", flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = answer if self.path.startswith("/api/v1/query") else series
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            view = memoryview(body)
            for start in range(0, len(body), 1 << 20):
                try:
                    self.wfile.write(view[start:start + (1 << 20)])
                except (BrokenPipeError, ConnectionResetError):
                    return

        do_POST = do_GET

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
