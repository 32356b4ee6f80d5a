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
# With FLOOD=N, an address-rotation flood instead: one request from each
# of N distinct addresses against a state of CAPACITY clients (250,000
# unless set), RSS, tracked clients and evictions sampled every second.
# Prints RSS when the state first reached capacity, its peak after and at
# the end, the growth in between, and the series (all of it, one line a
# second, to the file SAMPLES if set).
#
#   FLOOD=5000000 CAPACITY=250000 bash benches/memory.sh
#
# Needs wrk, nginx and curl (apt-get install wrk nginx-light curl). Absolute figures
# depend on the machine; the per-client bytes hardly do. Builds with cargo
# into CARGO_TARGET_DIR (target/ unless set).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOD=${FLOOD:-0}
if [ "$FLOOD" -gt 0 ]; then
    CLIENTS=$FLOOD
    CAPACITY=${CAPACITY:-250000}
else
    CLIENTS=${CLIENTS:-1000000}
    CAPACITY=${CAPACITY:-$CLIENTS}
fi
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
. benches/serve.sh

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

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$usher/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$usher/stat"; }
requests() {
    curl -sf "http://127.0.0.1:$admin/metrics" |
        awk '/^usher_requests_total/ { n += $2 } END { printf "%d\n", n }'
}

curl -sf "http://127.0.0.1:$proxy/" >/dev/null
rss0=$(rss_kib)
ticks0=$(cpu_ticks)
req0=$(requests)
export CLIENTS THREADS START=0

# Every second: time, RSS (KiB), tracked clients, evictions, requests.
sample() {
    while kill -0 "$usher" 2>/dev/null; do
        local m
        m=$(curl -sf "http://127.0.0.1:$admin/metrics") || break
        printf '%s %s %s\n' "$(date +%s.%N)" "$(rss_kib)" "$(awk '
            $1 == "usher_tracked_clients" { t = $2 }
            $1 == "usher_state_evictions_total" { e = $2 }
            /^usher_requests_total/ { n += $2 }
            END { printf "%d %d %d", t, e, n }' <<<"$m")"
        sleep 1
    done
}

if [ "$FLOOD" -gt 0 ]; then
    # Addresses come from 10.0.0.0/8: past 2^24 they would repeat.
    if [ "$FLOOD" -gt 16777216 ]; then
        echo "memory.sh: FLOOD is at most 16777216 (10.0.0.0/8)" >&2
        exit 2
    fi
    sample >"$work/samples" &
    pids+=($!)
    sent=0
    while [ "$sent" -lt "$FLOOD" ]; do
        prev=$sent
        START=$sent \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d10s -s "$work/clients.lua" "http://127.0.0.1:$proxy/" >/dev/null
        # usher dying (out of memory, say) is what this run may find.
        kill -0 "$usher" 2>/dev/null || { echo "memory.sh: usher exited:" >&2; cat "$work/usher.err" >&2; exit 1; }
        sent=$(( $(requests) - req0 ))
        [ "$sent" -gt "$prev" ] || { echo "memory.sh: no progress in a round" >&2; exit 1; }
        echo "memory.sh: flood: $sent of $FLOOD addresses, tracking $(metric usher_tracked_clients), RSS $(( $(rss_kib) / 1024 )) MiB" >&2
    done
    sleep 2
    [ -n "${SAMPLES:-}" ] && cp "$work/samples" "$SAMPLES"
    python3 - "$rss0" "$req0" "$(metric usher_tracked_clients_capacity)" "$work/samples" <<'PY'
import sys
rss0, req0, capacity = (float(a) for a in sys.argv[1:4])
rows = [tuple(map(float, line.split())) for line in open(sys.argv[4]) if len(line.split()) == 5]
if not rows:
    sys.exit("memory.sh: no RSS samples were taken")
t0 = rows[0][0]
# Full: 99% of the capacity (a sharded state fills its last shards late).
full = next((i for i, r in enumerate(rows) if r[2] >= 0.99 * capacity), None)
if full is None:
    sys.exit(f"memory.sh: the state never reached its capacity ({capacity:,.0f})")
mib = lambda kib: kib / 1024
after = rows[full:]
rss = sorted(r[1] for r in after)
# Single samples wander with the allocator's purging: compare the median
# RSS of the first tenth of the time at capacity with that of the last.
tenth = max(1, len(after) // 10)
median = lambda xs: sorted(xs)[len(xs) // 2]
first, last = median([r[1] for r in after[:tenth]]), median([r[1] for r in after[-tenth:]])
at_full, end = rows[full], rows[-1]
print(f"capacity               {capacity:,.0f} clients")
print(f"addresses sent         {end[4] - req0:,.0f}")
print(f"evictions              {end[3]:,.0f}")
print(f"RSS at rest            {mib(rss0):,.1f} MiB")
print(f"capacity reached       {at_full[0] - t0:.0f} s, {at_full[4] - req0:,.0f} requests in, RSS {mib(at_full[1]):,.1f} MiB")
print(f"bytes per client       {(at_full[1] - rss0) * 1024 / at_full[2]:,.0f}")
print(f"RSS at capacity        min {mib(rss[0]):,.1f} / median {mib(median(rss)):,.1f} / max {mib(rss[-1]):,.1f} MiB over {end[0] - at_full[0]:.0f} s")
print(f"RSS first / last tenth {mib(first):,.1f} / {mib(last):,.1f} MiB (medians): {(last - first) / first:+.1%}")
print("series (s, requests, tracked, evictions, RSS MiB):")
step = max(1, len(rows) // 12)
for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
    print(f"  {r[0] - t0:5.0f} {r[4] - req0:>11,.0f} {r[2]:>9,.0f} {r[3]:>11,.0f} {mib(r[1]):7.1f}")
PY
    exit 0
fi

want=$(( CLIENTS < CAPACITY ? CLIENTS : CAPACITY ))
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
