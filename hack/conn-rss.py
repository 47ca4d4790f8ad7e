#!/usr/bin/env python3
"""Measures the adapter's resident memory with many idle TLS connections (loopback only).

Starts the given adapter binary on 127.0.0.1 with a static objects file and no authentication,
opens N TLS connections that send nothing (HTTP/1.1), only part of a request head
(--head-bytes), or only the HTTP/2 preface and SETTINGS,
and prints RSS before, with all N open, and after the client closed them all.

    hack/conn-rss.py target/release/custom-metrics-adapter --connections 5000 [--h2] [--flag=--max-connections=0]

Bounded: at most --connections connections, 200 handshakes at a time, and --deadline (60 s) to open them;
those still waiting then (past --max-connections, in the listen backlog) are counted and dropped.
"""

import argparse
import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

OBJECTS = "namespaces:\n  - name: default\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def status_mib(pid, field):
    """A memory figure of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid):
    return status_mib(pid, "VmRSS")


def peak_mib(pid):
    return status_mib(pid, "VmHWM")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def open_idle(port, context, args, gate):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
                timeout=10,
            )
        except (OSError, asyncio.TimeoutError):
            return None
        if args.h2:
            writer.write(H2_PREFACE)
        elif args.head_bytes:
            # A request head that never ends, as a slow client would send it.
            writer.write(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * args.head_bytes)
        await writer.drain()
        return writer


async def measure(args, pid, port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"] if args.h2 else ["http/1.1"])
    gate = asyncio.Semaphore(200)
    await asyncio.sleep(2)
    before = rss_mib(pid)
    started = time.monotonic()
    # Past --max-connections the rest wait in the listen backlog: measure what was open by the
    # deadline, and count the others as still waiting.
    tasks = [asyncio.ensure_future(open_idle(port, context, args, gate)) for _ in range(args.connections)]
    done, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    opened = [t.result() for t in done if not t.cancelled() and t.exception() is None and t.result() is not None]
    elapsed = time.monotonic() - started
    await asyncio.sleep(1)
    during = rss_mib(pid)
    peak = peak_mib(pid)
    for writer in opened:
        writer.transport.abort()
    await asyncio.sleep(args.settle)
    after = rss_mib(pid)
    per = (during - before) * 1024 / max(len(opened), 1)
    print(
        f"protocol={'h2' if args.h2 else 'http/1.1'} head_bytes={args.head_bytes} opened={len(opened)}/{args.connections} in {elapsed:.1f}s "
        f"waiting={len(pending)} rss_before={before:.1f}MiB rss_open={during:.1f}MiB peak={peak:.1f}MiB rss_after_close={after:.1f}MiB "
        f"per_connection={per:.1f}KiB"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--h2", action="store_true")
    parser.add_argument("--head-bytes", type=int, default=0, help="HTTP/1.1: send this much of an unfinished request head")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after closing")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds to keep opening connections")
    parser.add_argument("--flag", action="append", default=[], help="extra adapter flag (repeatable)")
    args = parser.parse_args()
    args.connections = min(args.connections, 12000)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        objects = os.path.join(tmp, "objects.yaml")
        with open(objects, "w") as f:
            f.write(OBJECTS)
        adapter = subprocess.Popen(
            [
                args.binary,
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={tmp}/certs",
                f"--objects-file={objects}",
                "--insecure-allow-anonymous",
                "--prometheus-url=http://127.0.0.1:9",
                *args.flag,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            asyncio.run(measure(args, adapter.pid, port))
        finally:
            adapter.send_signal(signal.SIGTERM)
            try:
                adapter.wait(timeout=40)
            except subprocess.TimeoutExpired:
                adapter.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
