#!/usr/bin/env python3
"""Instructions per request: usher against HAProxy, counted by callgrind.

Wall-clock rates move with whatever else a shared machine runs; the number
of user-space instructions a proxy executes per request does not (within a
few percent: batching varies with timing). This runs each proxy with one
worker under `valgrind --tool=callgrind` in front of the same nginx upstream
as benches/load.py, with the same wrk script, counts instructions only
while wrk runs (after a warm-up), and divides by the requests wrk
completed. Kernel time is not counted: both proxies make the same four
socket calls per request.

  python3 benches/instructions.py [--mixed] [--duration 10] [--usher PATH]

Needs valgrind, wrk, nginx and haproxy. Under callgrind a proxy runs some
fifty times slower, so a run serves tens of thousands of requests.
"""

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("load", os.path.join(HERE, "load.py"))
load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load)


def wrapper(work, name, program):
    """A script that runs `program` under callgrind, counting nothing yet."""
    out = os.path.join(work, f"{name}.callgrind")
    path = os.path.join(work, f"{name}-callgrind.sh")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no "
                f"--callgrind-out-file={out}.%p {program} \"$@\"\n")
    os.chmod(path, 0o755)
    return path, out


def count(target, pid, out_prefix, script, duration):
    """Instructions per request while wrk drives `target`."""
    subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-s", script, target.url + "/"],
                   capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{duration}s", "-s", script, target.url + "/"],
                         capture_output=True, text=True, check=True).stdout
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    target.stop()
    time.sleep(1)
    total = 0
    for dump in glob.glob(out_prefix + ".*"):
        text = subprocess.run(["callgrind_annotate", dump], capture_output=True, text=True).stdout
        m = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
        if m:
            total += int(m.group(1).replace(",", ""))
    return total / requests, requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds counted per proxy")
    parser.add_argument("--mixed", action="store_true", help="JWT bearers, API keys and bots too")
    parser.add_argument("--usher", help="a usher binary (default: build the release one)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"instructions.py: {tool} not found")
    usher = args.usher
    if not usher:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"],
                       cwd=load.REPO, check=True)
        usher = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(load.REPO, "target")),
                             "release", "usher")
    work = tempfile.mkdtemp(prefix="usher-instructions-")
    script, keys = load.lua_script(work, args.mixed)
    upstream = load.start_upstream(work)
    results = {}
    try:
        load.USHER, out = wrapper(work, "usher", usher)
        target = load.start_usher(work, upstream, 1, keys)
        results["usher"] = count(target, target.pid, out, script, args.duration)

        # HAProxy's config as load.py writes it, then the same under callgrind.
        plain = load.start_haproxy(work, upstream, 1)
        plain.stop()
        time.sleep(0.5)
        program, out = wrapper(work, "haproxy", "haproxy")
        config = os.path.join(work, "haproxy-1.cfg")
        proc = subprocess.Popen([program, "-f", config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.wait_http(plain.url + "/", proc, timeout=60)
        target = load.Target("haproxy", plain.url, [proc])
        results["haproxy"] = count(target, proc.pid, out, script, args.duration)
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)

    kind = "mixed" if args.mixed else "browsers"
    print(f"\nuser-space instructions per request ({kind}, one worker, callgrind)")
    for name, (per_request, requests) in results.items():
        print(f"  {name:<8} {per_request:>9,.0f}   ({requests:,} requests counted)")
    print(f"  usher/haproxy {results['usher'][0] / results['haproxy'][0]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
