#!/usr/bin/env bash
# Soak: mixed traffic with a flood of new addresses for a while, sampling
# usher's RSS and open file descriptors, then saying whether both stayed
# flat.
#
# Starts nginx (Debian's nginx-light) as a small fixed-body upstream and the
# release usher in front of it with the shipped rules, trusting 127.0.0.1's
# X-Forwarded-For, with a client state of CAPACITY (100,000 unless set) so
# the flood fills it early. wrk then sends, for DURATION seconds (300
# unless set), a mix: browsers from a pool of 1,000 addresses, requests
# from addresses never seen before (a fifth: the flood), bot user agents,
# probes usher refuses, and bearer tokens that do not verify. Every
# INTERVAL seconds (5) it prints RSS, open descriptors, open connections,
# tracked clients and evictions.
#
# Flat means: past the first third of the run (warm-up, the state filling),
# the peak RSS of the last third is within 10 % of the middle third's, and
# open descriptors within 50. Exit 0 when both are flat, 1 when not.
#
#   DURATION=600 bash benches/soak.sh
#
# Needs wrk, nginx and curl (apt-get install wrk nginx-light curl). Builds
# with cargo into CARGO_TARGET_DIR (target/ unless set).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-300}
INTERVAL=${INTERVAL:-5}
CAPACITY=${CAPACITY:-100000}
CONNECTIONS=${CONNECTIONS:-32}
[ "$DURATION" -ge $((3 * INTERVAL)) ] || { echo "soak.sh: DURATION must be at least 3 INTERVALs" >&2; exit 2; }
. benches/serve.sh

cat >"$work/soak.lua" <<'LUA'
local counter = 0
function setup(thread)
    thread:set("seed", counter)
    counter = counter + 1
end
function init(args)
    math.randomseed(os.time() + seed * 7919)
    fresh = seed * 16777216
end
local browser = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
local bots = {"python-requests/2.32.3", "curl/8.5.0", "Go-http-client/1.1", "Scrapy/2.11"}
local probes = {"/.env", "/wp-login.php", "/.git/config", "/%2e%2e/%2e%2e/etc/passwd"}
function request()
    local kind = math.random(1, 20)
    local address
    if kind <= 4 then
        -- The flood: an address never seen before.
        fresh = fresh + 1
        address = string.format("11.%d.%d.%d", math.floor(fresh / 65536) % 256,
            math.floor(fresh / 256) % 256, fresh % 256)
    else
        local k = math.random(0, 999)
        address = string.format("10.0.%d.%d", math.floor(k / 256), k % 256)
    end
    local headers = {["X-Forwarded-For"] = address, ["User-Agent"] = browser,
        ["Accept"] = "text/html", ["Accept-Language"] = "en"}
    local path = "/products/" .. math.random(1, 500)
    if kind == 5 then
        headers["User-Agent"] = bots[math.random(1, #bots)]
    elseif kind == 6 then
        path = probes[math.random(1, #probes)]
    elseif kind == 7 then
        headers["Authorization"] = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.forged"
    end
    return wrk.format("GET", path, headers)
end
LUA
wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$work/soak.lua" "http://127.0.0.1:$proxy/" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")

# The last sample comes an interval before wrk stops.
samples=$((DURATION / INTERVAL - 1))
printf '%6s %10s %6s %8s %10s %12s\n' second rss_kib fds conns tracked evictions
: >"$work/samples"
for i in $(seq 1 "$samples"); do
    sleep "$INTERVAL"
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$usher/status")
    fds=$(ls "/proc/$usher/fd" | wc -l)
    conns=$(metric usher_connections_active)
    tracked=$(metric usher_tracked_clients)
    evictions=$(metric usher_state_evictions_total)
    printf '%6d %10d %6d %8s %10s %12s\n' $((i * INTERVAL)) "$rss" "$fds" "$conns" "$tracked" "$evictions"
    echo "$rss $fds" >>"$work/samples"
done
wait "$wrk_pid" || true
grep -E "Requests/sec|requests in|Non-2xx|Socket errors" "$work/wrk.out" || true

# Middle third against last third.
python3 - "$work/samples" <<'PY'
import sys
rows = [tuple(map(int, line.split())) for line in open(sys.argv[1]) if line.strip()]
third = len(rows) // 3
middle, last = rows[third:2 * third], rows[2 * third:]
rss_mid, rss_last = max(r[0] for r in middle), max(r[0] for r in last)
fd_mid, fd_last = max(r[1] for r in middle), max(r[1] for r in last)
rss_flat = rss_last <= rss_mid * 1.10
fd_flat = fd_last <= fd_mid + 50
print(f"peak RSS: middle third {rss_mid} KiB, last third {rss_last} KiB "
      f"({(rss_last / rss_mid - 1) * 100:+.1f} %): {'flat' if rss_flat else 'GROWING'}")
print(f"peak open descriptors: middle third {fd_mid}, last third {fd_last}: "
      f"{'flat' if fd_flat else 'GROWING'}")
sys.exit(0 if rss_flat and fd_flat else 1)
PY
