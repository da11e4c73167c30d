#!/usr/bin/python3
"""Memory soak: sends N requests (default 1,000,000) mixing GET, POST 64 KiB and streamed
responses to rwsgi under nginx and/or Apache, and reports worker RSS at the start (after a
warm-up) and at the end. Not a test: run it by hand (`make soak`) and read the numbers.

Loopback only; every wrk run is bounded in time and the loop in request count.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.apache import ApacheServer  # noqa: E402
from harness.common import Mount, children_of  # noqa: E402
from harness.nginx import NginxServer  # noqa: E402

SERVERS = {"nginx": NginxServer, "apache": ApacheServer}


def worker_rss_kib(server) -> dict[int, int]:
    out = {}
    for pid in children_of(server.master_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m:
            out[pid] = int(m.group(1))
    return out


def run_wrk(url: str, seconds: int, connections: int) -> int:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(ROOT / "bench" / "soak.lua"), url],
        check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"soak: {errors.group(1)} failed responses:\n{out}")
    return int(m.group(1))


def soak(kind: str, total: int, connections: int) -> dict:
    server = SERVERS[kind]()
    app = ROOT / "bench" / "soak_app.py"
    (server.apps_dir / "soak_app.py").write_bytes(app.read_bytes())
    (server.apps_dir / "soak_app.py").chmod(0o644)
    server.start([Mount("/soak", script="soak_app.py")], workers=2, threads=8)
    try:
        url = server.url("/")
        run_wrk(url, 3, connections)  # warm-up: imports, pools, allocator arenas
        before = worker_rss_kib(server)
        sent = 0
        started = time.monotonic()
        while sent < total:
            sent += run_wrk(url, 10, connections)
            print(f"  {kind}: {sent:,} requests, worker RSS {sum(worker_rss_kib(server).values()):,} KiB",
                  flush=True)
        after = worker_rss_kib(server)
        return dict(kind=kind, requests=sent, seconds=time.monotonic() - started,
                    before=before, after=after)
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", default="nginx,apache")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    results = []
    for kind in args.servers.split(","):
        print(f"soak {kind}: {args.requests:,} requests", flush=True)
        results.append(soak(kind, args.requests, args.connections))
    print()
    print("| server | requests | seconds | workers | RSS before (KiB) | RSS after (KiB) | growth |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        b, a = sum(r["before"].values()), sum(r["after"].values())
        same = sorted(r["before"]) == sorted(r["after"])
        print(f"| {r['kind']} | {r['requests']:,} | {r['seconds']:.0f} | "
              f"{len(r['after'])}{'' if same else ' (respawned!)'} | {b:,} | {a:,} | {100.0 * (a - b) / b:+.1f}% |")


if __name__ == "__main__":
    main()
