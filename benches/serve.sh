# Sourced by memory.sh and soak.sh: builds the release usher, starts nginx
# (Debian's nginx-light) as a small fixed-body upstream and usher in front
# of it with the shipped rules, trusting 127.0.0.1's X-Forwarded-For, with
# a client state of CAPACITY, and waits until usher is ready. Leaves:
# $work (a scratch folder, removed on exit), $proxy and $admin (ports),
# $usher (its pid), pids (everything to stop on exit, append to it),
# and metric NAME (one sample from /metrics). Needs wrk, nginx and curl.
# Builds with cargo into CARGO_TARGET_DIR (target/ unless set).
for tool in wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found (apt-get install wrk nginx-light curl)" >&2; exit 2; }
done
cargo build --release --locked --quiet
usher_bin=${CARGO_TARGET_DIR:-target}/release/usher
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
"$usher_bin" serve --config "$work/usher.toml" 2>"$work/usher.err" &
usher=$!
pids+=("$usher")
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { cat "$work/usher.err" >&2; exit 1; }

metric() { curl -fs "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
