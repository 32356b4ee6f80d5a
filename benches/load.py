#!/usr/bin/env python3
"""Proxy load benchmark: usher against the bot filters operators deploy today.

On loopback, with one nginx as the upstream (a small fixed body), wrk drives
in turn, in interleaved rounds (A B C D, A B C D, ...) so that the ratios
hold on a noisy machine:

  direct   wrk -> upstream
  usher    wrk -> usher (shipped rules) -> upstream
  nginx    wrk -> nginx: a user-agent `map` of 50 regexes, `limit_req` per
           client address, a label header -> upstream
  haproxy  wrk -> HAProxy: the same 50 regexes, a stick-table rate limit per
           client address, a label header -> upstream

Every request comes "through a trusted proxy" with X-Forwarded-For from a
pool of 10,000 addresses, so each proxy keys its per-client state by a real
client address (nginx's realip, HAProxy's set-src, usher's
trusted_proxies), at a pace per address that no limit refuses. The same
wrk settings apply to all, once with one worker each (usher --workers 1,
nginx worker_processes 1, HAProxy nbthread 1) and once with two.

--mixed sends a mix instead: browsers, JWT bearers, API keys and bot user
agents. usher verifies the credentials; nginx and HAProxy have no
equivalent and only run their regexes (so they do less work).

--rate N offers about N requests/s in all instead of as many as the
targets take: each connection waits a random (exponential) pause between
requests. At saturation p99 mostly measures queueing behind a full CPU;
below it, it measures what a proxy adds to a request, which is what the
latency targets are about.

Prints, per worker count: requests/s (median of the rounds), p50 and p99
latency and what each adds over direct, the ratios usher/nginx and
usher/HAProxy, and usher's peak RSS. Absolute figures depend on the
machine (and wrk shares it); compare the ratios.

  python3 benches/load.py [--rounds 3] [--duration 10] [--connections 64]
                          [--workers 1,2] [--mixed] [--redis] [--rate N]

Needs wrk, nginx and haproxy (apt-get install wrk nginx-light haproxy) and
builds usher with `cargo build --release --locked`.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

# Servers write nothing to our output (and hold no pipe of ours open).
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binary under test; USHER=path compares another build.
USHER = os.environ.get("USHER", os.path.join(REPO, "target/release/usher"))

# The user-agent patterns a typical nginx/HAProxy bot filter carries: tools,
# libraries, scanners, headless browsers and crawlers. 50 of them.
BOT_PATTERNS = [
    "bot", "crawl", "spider", "slurp", "curl", "wget", "python-requests",
    "python-urllib", "aiohttp", "httpx", "go-http-client", "java/", "okhttp",
    "apache-httpclient", "libwww-perl", "lwp::simple", "mechanize", "scrapy",
    "headlesschrome", "phantomjs", "selenium", "puppeteer", "playwright",
    "sqlmap", "nikto", "nmap", "masscan", "zgrab", "nuclei", "wpscan",
    "dirbuster", "gobuster", "ffuf", "feroxbuster", "acunetix", "netsparker",
    "burp", "axios/", "node-fetch", "got \\(", "ruby", "php/", "perl",
    "httpclient", "winhttp", "powershell", "facebookexternalhit", "ahrefs",
    "semrush", "bytespider",
]
assert len(BOT_PATTERNS) == 50

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
BOTS = ["python-requests/2.32.3", "curl/8.5.0", "Go-http-client/1.1", "Scrapy/2.11"]
SECRET = "load-benchmark-secret-load-benchmark-secret"
ISSUER = "https://auth.bench/"
ADDRESSES = 10_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(subject, plan):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"iss": ISSUER, "aud": "web", "sub": subject, "plan": plan,
              "exp": int(time.time()) + 86_400}
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def wait_http(url, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load.py: {' '.join(proc.args)} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"load.py: {url} did not answer")


def lua_script(work, mixed, pause_ms=None):
    """wrk script: an address from the pool at random (so no address keeps a
    clockwork pace), for --mixed a request kind at random, and for --rate a
    random pause of `pause_ms` on average between a connection's requests."""
    tokens = [jwt(f"user{i}", "pro" if i % 2 else "free") for i in range(20)]
    keys = [f"bench-key-{i:02d}-0123456789abcdef" for i in range(5)]
    lines = [
        f"local addresses = {ADDRESSES}",
        f"local browser = {json.dumps(BROWSER)}",
        "local bots = {" + ",".join(json.dumps(b) for b in BOTS) + "}",
        "local tokens = {" + ",".join(json.dumps(t) for t in tokens) + "}",
        "local keys = {" + ",".join(json.dumps(k) for k in keys) + "}",
        f"local mixed = {'true' if mixed else 'false'}",
        f"local pause_ms = {pause_ms if pause_ms else 'nil'}",
        """
local counter = 0
function setup(thread)
    thread:set("seed", counter)
    counter = counter + 1
end
function init(args)
    math.randomseed(os.time() + seed * 7919)
end
if pause_ms then
    function delay()
        return -math.log(1 - math.random()) * pause_ms
    end
end
function request()
    local k = math.random(0, addresses - 1)
    local headers = {
        ["X-Forwarded-For"] = string.format("10.%d.%d.%d",
            math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256),
        ["User-Agent"] = browser,
        ["Accept"] = "text/html,application/xhtml+xml",
        ["Accept-Language"] = "en-GB,en;q=0.9",
    }
    if mixed then
        local kind = math.random(1, 10)
        if kind <= 2 then
            headers["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)]
        elseif kind == 3 then
            headers["X-Api-Key"] = keys[math.random(1, #keys)]
        elseif kind == 4 then
            headers["User-Agent"] = bots[math.random(1, #bots)]
        end
    end
    return wrk.format("GET", "/products/" .. math.random(1, 50), headers)
end
""",
    ]
    path = os.path.join(work, "clients.lua")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path, keys


class Target:
    def __init__(self, name, url, procs, pid=None):
        self.name, self.url, self.procs, self.pid = name, url, procs, pid

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_upstream(work):
    port = free_port()
    conf = os.path.join(work, "upstream.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; pid {work}/upstream.pid;
error_log {work}/upstream.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "ok\\n"; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", work], **QUIET)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc)
    return Target("direct", url, [proc])


def start_redis(work):
    """A redis-server without persistence, for usher's shared state."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work], **QUIET)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("load.py: redis-server did not start")
            time.sleep(0.05)
    return Target("redis", f"redis://127.0.0.1:{port}/", [proc])


def start_usher(work, upstream, workers, keys, redis=None):
    port, admin = free_port(), free_port()
    keys_file = os.path.join(work, "api-keys.toml")
    with open(keys_file, "w") as f:
        for i, key in enumerate(keys):
            digest = hashlib.sha256(key.encode()).hexdigest()
            f.write(f'[[key]]\nsha256 = "{digest}"\nowner = "client{i}"\nclass = "service_client"\n')
    name = "usher-redis" if redis else "usher"
    conf = os.path.join(work, f"{name}-{workers}.toml")
    state = f'[state]\nbackend = "redis"\nurl = "{redis.url}"\n' if redis else ""
    with open(conf, "w") as f:
        f.write(f"""listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
upstream = "{upstream.url}"
trusted_proxies = ["127.0.0.1"]
access_log = "off"
rules = ["{REPO}/rules/*.toml"]

[[identity.jwt]]
issuer = "{ISSUER}"
audience = "web"
algorithms = ["HS256"]
secret_env = "USHER_BENCH_SECRET"
paying = {{ claim = "plan", any_of = ["pro"] }}

[identity.api_keys]
file = "{keys_file}"

{state}""")
    env = dict(os.environ, USHER_BENCH_SECRET=SECRET, RUST_LOG="warn")
    proc = subprocess.Popen(
        [USHER, "serve", "--config", conf,
         "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "usher.err"), "a"),
    )
    wait_http(f"http://127.0.0.1:{admin}/readyz", proc)
    return Target(name, f"http://127.0.0.1:{port}", [proc], pid=proc.pid)


def start_nginx(work, upstream, workers):
    port = free_port()
    conf = os.path.join(work, f"nginx-{workers}.conf")
    patterns = "\n".join(f'    "~*{p}" malicious_bot;' for p in BOT_PATTERNS)
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes {workers}; pid {work}/nginx-{workers}.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  set_real_ip_from 127.0.0.1;
  real_ip_header X-Forwarded-For;
  map $http_user_agent $client_class {{
    default public_visitor;
{patterns}
  }}
  limit_req_zone $binary_remote_addr zone=perclient:64m rate=100r/s;
  upstream app {{ server {upstream.url[7:]}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      limit_req zone=perclient burst=200 nodelay;
      limit_req_status 429;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Usher-Class $client_class;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_pass http://app;
    }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", work], **QUIET)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc)
    return Target("nginx", url, [proc])


def start_haproxy(work, upstream, workers):
    port = free_port()
    patterns = os.path.join(work, "patterns.txt")
    with open(patterns, "w") as f:
        f.write("\n".join(BOT_PATTERNS) + "\n")
    conf = os.path.join(work, f"haproxy-{workers}.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread {workers}
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend bench
  bind 127.0.0.1:{port}
  stick-table type ip size 1m expire 60s store http_req_rate(10s)
  http-request set-src hdr(x-forwarded-for) if {{ src 127.0.0.1 }}
  http-request track-sc0 src
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 1000 }}
  http-request set-header X-Usher-Class public_visitor
  http-request set-header X-Usher-Class malicious_bot if {{ hdr(user-agent) -m reg -i -f {patterns} }}
  default_backend app
backend app
  server app {upstream.url[7:]}
""")
    proc = subprocess.Popen(["haproxy", "-f", conf], **QUIET)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc)
    return Target("haproxy", url, [proc])


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(url, script, args):
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
         "--latency", "-s", script, url + "/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps, "p50": lat.get("50"), "p99": lat.get("99"),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(args):
    for tool in ("wrk", "nginx", "haproxy") + (("redis-server",) if args.redis else ()):
        if not shutil.which(tool):
            raise SystemExit(f"load.py: {tool} not found (apt-get install wrk nginx-light haproxy)")
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=REPO, check=True)
    work = tempfile.mkdtemp(prefix="usher-load-")
    pause_ms = 1000.0 * args.connections / args.rate if args.rate else None
    script, keys = lua_script(work, args.mixed, pause_ms)
    upstream = start_upstream(work)
    redis = start_redis(work) if args.redis else None
    report = {}
    try:
        for workers in args.workers:
            targets = [
                upstream,
                start_usher(work, upstream, workers, keys),
                start_nginx(work, upstream, workers),
                start_haproxy(work, upstream, workers),
            ]
            if redis:
                targets.append(start_usher(work, upstream, workers, keys, redis))
            results = {t.name: [] for t in targets}
            try:
                for t in targets:  # warm up: connections, caches, JIT-less but page cache
                    subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", script, t.url + "/"],
                                   capture_output=True, check=True)
                for r in range(args.rounds):
                    for t in targets:
                        result = wrk(t.url, script, args)
                        results[t.name].append(result)
                        print(f"  workers={workers} round={r + 1} {t.name:<8} "
                              f"{result['rps']:>10,.0f} req/s  p50 {result['p50'] * 1e3:6.2f} ms  "
                              f"p99 {result['p99'] * 1e3:6.2f} ms  non-2xx {result['non2xx']}"
                              f"{'  ' + result['socket_errors'] if result['socket_errors'] else ''}",
                              file=sys.stderr)
                usher_rss = peak_rss_mib(targets[1].pid)
            finally:
                for t in targets[1:]:
                    t.stop()
            report[workers] = (results, usher_rss)
    finally:
        upstream.stop()
        if redis:
            redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report


def summarise(report, args):
    kind = "mixed (browsers, JWT, API keys, bots)" if args.mixed else "browsers"
    offered = f", about {args.rate:,} req/s offered" if args.rate else ""
    print(f"\nusher load benchmark: {kind}; wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s{offered}, {args.rounds} interleaved rounds, medians\n")
    for workers, (results, rss) in report.items():
        med = {name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
               for name, runs in results.items()}
        direct = med["direct"]
        print(f"workers = {workers}")
        print(f"  {'target':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}")
        for name, m in med.items():
            added50 = (m["p50"] - direct["p50"]) * 1e3
            added99 = (m["p99"] - direct["p99"]) * 1e3
            print(f"  {name:<8} {m['rps']:>10,.0f} {m['p50'] * 1e3:>8.2f} {m['p99'] * 1e3:>8.2f} "
                  f"{added50 if name != 'direct' else 0:>8.2f} {added99 if name != 'direct' else 0:>8.2f}")
        u, n, h = med["usher"], med["nginx"], med["haproxy"]
        best = max(n["rps"], h["rps"])
        print(f"  throughput usher/nginx {u['rps'] / n['rps']:.2f}x, usher/haproxy "
              f"{u['rps'] / h['rps']:.2f}x, usher/best peer {u['rps'] / best:.2f}x")
        print(f"  p99 added: usher {(u['p99'] - direct['p99']) * 1e3:.2f} ms, nginx "
              f"{(n['p99'] - direct['p99']) * 1e3:.2f} ms, haproxy {(h['p99'] - direct['p99']) * 1e3:.2f} ms")
        if "usher-redis" in med:
            r = med["usher-redis"]
            print(f"  redis backend: throughput {r['rps'] / u['rps']:.2f}x the memory backend's, "
                  f"p99 added {(r['p99'] - direct['p99']) * 1e3:.2f} ms against "
                  f"{(u['p99'] - direct['p99']) * 1e3:.2f} ms")
        print(f"  usher peak RSS {rss:.1f} MiB\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", default="1,2",
                        type=lambda s: [int(w) for w in s.split(",")])
    parser.add_argument("--mixed", action="store_true")
    parser.add_argument("--redis", action="store_true",
                        help="also usher with the Redis state backend (needs redis-server)")
    parser.add_argument("--rate", type=int,
                        help="offer about this many requests/s in all, instead of all they take")
    args = parser.parse_args()
    summarise(run(args), args)


if __name__ == "__main__":
    main()
