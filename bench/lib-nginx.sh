# lib-nginx.sh: shared parts of the benchmark scripts (sourced, not run).
#
# Installs missing tools with apt-get and runs a private nginx (own config and
# prefix in a temp dir, listening ONLY on 127.0.0.1 on a free port) that serves
#   /small.json  a ~200-byte JSON document
#   /big.bin     64 KiB of random bytes
#   /post...     reads and discards the request body, answers 200 {"ok":true}
# with keep-alive on, access_log off and one worker. Nothing leaves the machine.
#
# The sourcing script defines log() and calls nginx_stop from its EXIT trap.

# ---------------------------------------------------------------- tools
APT_UPDATED=0
apt_install() { # apt_install PACKAGE... : installs the first that works
    local pkg
    export DEBIAN_FRONTEND=noninteractive
    for pkg in "$@"; do
        if ! apt-get install -y -q "$pkg" >/dev/null 2>&1; then
            if [[ $APT_UPDATED -eq 0 ]]; then
                apt-get update -q >/dev/null
                APT_UPDATED=1
            fi
            apt-get install -y -q "$pkg" >/dev/null 2>&1 && return 0
        else
            return 0
        fi
    done
    return 1
}
need() { # need COMMAND PACKAGE...
    local cmd=$1; shift
    if ! command -v "$cmd" >/dev/null 2>&1; then
        log "installing $* for $cmd"
        apt_install "$@" || { log "cannot install $cmd"; exit 1; }
    fi
}
# nginx may live in /usr/sbin, which is not always on PATH.
export PATH=$PATH:/usr/sbin:/sbin

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- nginx
NGINX_PID=""
# nginx_start DIR: sets PORT and NGINX_PID; DIR must exist and be
# world-readable (the worker reads DIR/html).
nginx_start() {
    local dir=$1
    PORT=$(free_port)
    log "nginx on 127.0.0.1:$PORT, prefix $dir"
    mkdir -p "$dir/html" "$dir/logs" "$dir/tmp"
    # ~200-byte JSON document.
    python3 - "$dir/html/small.json" <<'PY'
import json, sys
doc = {"id": 4711, "name": "shadowctl benchmark", "tags": ["alpha", "beta", "gamma"],
       "active": True, "score": 98.25, "owner": {"id": 17, "login": "bench"},
       "updated": "2024-05-01T12:00:00Z", "note": "x" * 20}
s = json.dumps(doc)
open(sys.argv[1], "w").write(s + "\n")
PY
    # 64 KiB of not-very-compressible bytes.
    head -c 65536 /dev/urandom > "$dir/html/big.bin"
    # A Prometheus exposition of a typical size (process families and a
    # labelled latency histogram, ~10 KB) for replay's resource sampling.
    python3 - "$dir/html/metrics" <<'PY'
import sys
lines = ["# TYPE process_cpu_seconds_total counter", "process_cpu_seconds_total 12.5",
         "# TYPE process_resident_memory_bytes gauge", "process_resident_memory_bytes 5.24288e+07",
         "# TYPE process_open_fds gauge", "process_open_fds 42",
         "# TYPE http_request_duration_seconds histogram"]
for route in ("/predict", "/embed", "/items", "/health"):
    for le in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"):
        lines.append(f'http_request_duration_seconds_bucket{{route="{route}",method="POST",le="{le}"}} 1234')
    lines.append(f'http_request_duration_seconds_sum{{route="{route}",method="POST"}} 56.7')
    lines.append(f'http_request_duration_seconds_count{{route="{route}",method="POST"}} 1234')
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY

    cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 8192;
user root;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    gzip on;
    gzip_types application/json;
    gzip_min_length 20;
    gzip_http_version 1.1;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$PORT;
        server_name localhost;
        root $dir/html;
        location = /small.json { }
        location = /big.bin { }
        location = /metrics { default_type text/plain; }
        # POST: nginx reads (and discards) the whole request body from the
        # client, then answers 200 with a small JSON document.
        location /post {
            client_max_body_size 1m;
            client_body_buffer_size 128k;
            default_type application/json;
            return 200 '{"ok":true}';
        }
    }
}
EOF

    nginx -p "$dir" -c "$dir/nginx.conf" -t -q
    nginx -p "$dir" -c "$dir/nginx.conf" &
    NGINX_PID=$!
    local _
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$PORT/small.json" 2>/dev/null && break
        kill -0 "$NGINX_PID" 2>/dev/null || { log "nginx died"; cat "$dir/logs/error.log" >&2; exit 1; }
        sleep 0.1
    done
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/small.json" || { log "nginx not answering"; exit 1; }
}

nginx_stop() {
    if [[ -n $NGINX_PID ]] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
        local _
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
    fi
    NGINX_PID=""
}
