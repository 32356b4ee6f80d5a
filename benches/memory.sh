#!/usr/bin/env bash
# Memory and CPU per client, for capacity planning (deploy/README.md).
#
# Starts nginx (Debian's nginx-light) as a small fixed-body upstream and the
# release usher in front of it with the shipped rules, trusting 127.0.0.1's
# X-Forwarded-For. wrk then sends requests from CLIENTS distinct addresses
# (10.0.0.0/8, round robin) until usher tracks all of them, or its
# capacity. Prints RSS before and after, bytes per tracked client, and the
# CPU time usher spent per request (as cores per 10,000 requests/s).
#
#   CLIENTS=1000000 CAPACITY=1000000 bash benches/memory.sh
#
# Needs wrk, nginx and curl (apt-get install wrk nginx-light curl). Absolute figures
# depend on the machine; the per-client bytes hardly do.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-1000000}
CAPACITY=${CAPACITY:-$CLIENTS}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "memory.sh: $tool not found" >&2; exit 2; }
done
cargo build --release --locked --quiet
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); proxy=$(port); admin=$(port)

cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$up;
        location / { return 200 "ok\n"; }
    }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

cat >"$work/usher.toml" <<TOML
upstream = "http://127.0.0.1:$up"
listen = "127.0.0.1:$proxy"
admin = "127.0.0.1:$admin"
trusted_proxies = ["127.0.0.1"]
access_log = "off"
rules = ["$PWD/rules/*.toml"]
[state]
capacity = $CAPACITY
TOML
target/release/usher serve --config "$work/usher.toml" 2>"$work/usher.err" &
usher=$!
pids+=($usher)

cat >"$work/clients.lua" <<'LUA'
local next_id = 0
function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
end
function init(args)
    n = 0
    total = tonumber(os.getenv("CLIENTS"))
    step = tonumber(os.getenv("THREADS"))
    start = tonumber(os.getenv("START"))
end
function request()
    local k = (start + id + n * step) % total
    n = n + 1
    local ip = string.format("10.%d.%d.%d", math.floor(k / 65536) % 256,
        math.floor(k / 256) % 256, k % 256)
    return wrk.format("GET", "/", { ["X-Forwarded-For"] = ip })
end
LUA

metric() { curl -sf "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$usher/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$usher/stat"; }
requests() {
    curl -sf "http://127.0.0.1:$admin/metrics" |
        awk '/^usher_requests_total/ { n += $2 } END { printf "%d\n", n }'
}

for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$proxy/" >/dev/null
rss0=$(rss_kib)
ticks0=$(cpu_ticks)
req0=$(requests)
want=$(( CLIENTS < CAPACITY ? CLIENTS : CAPACITY ))
export CLIENTS THREADS START=0
# Until every client is tracked, or the state stops growing: it is
# sharded, so a full state holds a little less than its capacity. Each
# round starts where the last one stopped.
tracked=0
while :; do
    START=$(( $(requests) - req0 )) \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d10s -s "$work/clients.lua" "http://127.0.0.1:$proxy/" >/dev/null
    before=$tracked
    tracked=$(metric usher_tracked_clients)
    echo "memory.sh: tracking $tracked clients, RSS $(( $(rss_kib) / 1024 )) MiB" >&2
    [ "$tracked" -ge "$want" ] || [ "$tracked" -le "$before" ] && break
done
rss1=$(rss_kib)
ticks1=$(cpu_ticks)
req1=$(requests)
hz=$(getconf CLK_TCK)
python3 - "$rss0" "$rss1" "$tracked" "$ticks0" "$ticks1" "$hz" "$req0" "$req1" <<'PY'
import sys
rss0, rss1, tracked, t0, t1, hz, r0, r1 = map(float, sys.argv[1:])
cpu = (t1 - t0) / hz
reqs = r1 - r0
print(f"tracked clients        {tracked:,.0f}")
print(f"RSS before / after     {rss0/1024:,.1f} MiB / {rss1/1024:,.1f} MiB")
print(f"bytes per client       {(rss1 - rss0) * 1024 / tracked:,.0f}")
print(f"requests served        {reqs:,.0f}")
print(f"CPU per request        {cpu / reqs * 1e6:,.1f} us")
print(f"cores per 10k req/s    {cpu / reqs * 1e4:,.2f}")
PY
