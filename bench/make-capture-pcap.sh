#!/usr/bin/env bash
# make-capture-pcap.sh OUT.pcap [TARGET_MB]
#
# Builds a pcap of real HTTP/1.1 traffic for the `shadowctl capture` benchmark.
# It starts a private nginx (own config and prefix in a temp dir, listening
# ONLY on 127.0.0.1 on a free port), drives it with wrk and records the
# loopback traffic with tcpdump until OUT.pcap reaches TARGET_MB (default
# 1000) or 5 minutes pass. Two request mixes (MIX):
#   large (default): GET small JSON with gzip, GET 64 KiB, POST 1 KiB and
#     POST 64 KiB bodies;
#   small: only small API calls on keep-alive connections, as a model API
#     sees them: GET small JSON (with and without gzip) and POST 1 KiB; about
#     1.3 million requests in 1000 MB. All traffic goes to 127.0.0.1 only; nothing
# leaves the machine. Everything it starts is stopped on exit.
#
# Missing tools (nginx, wrk, tcpdump, tshark) are installed with apt-get.
set -euo pipefail

usage() { echo "usage: $0 OUT.pcap [TARGET_MB]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
OUT=$1
TARGET_MB=${2:-1000}
[[ $TARGET_MB =~ ^[0-9]+$ && $TARGET_MB -gt 0 ]] || usage
HARD_CAP_SECS=300
# Load shape: wrk connections and a pause (ms) after each response on each
# connection. Unthrottled loopback traffic (several hundred MB/s) makes tcpdump
# drop packets; the default aims at roughly 20-30 MB/s.
MIX=${MIX:-large}
[[ $MIX == large || $MIX == small ]] || { echo "MIX must be large or small" >&2; exit 2; }
if [[ $MIX == small ]]; then
    # Small requests: more connections for the same bytes per second.
    WRK_CONNS=${WRK_CONNS:-32}
    WRK_DELAY_MS=${WRK_DELAY_MS:-3}
else
    WRK_CONNS=${WRK_CONNS:-16}
    WRK_DELAY_MS=${WRK_DELAY_MS:-4}
fi

log() { echo "[make-capture-pcap] $*" >&2; }

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib-nginx.sh
. "$HERE/lib-nginx.sh"
need nginx nginx-light nginx
need wrk wrk
need tcpdump tcpdump
need tshark tshark
need python3 python3

# ---------------------------------------------------------------- setup
OUT_DIR=$(dirname -- "$OUT")
mkdir -p -- "$OUT_DIR"
OUT=$(cd -- "$OUT_DIR" && pwd)/$(basename -- "$OUT")
TMP=$(mktemp -d /tmp/shadowctl-pcap.XXXXXX)
chmod 755 "$TMP"

TCPDUMP_PID=""; WRK_PIDS=()
cleanup() {
    local rc=$?
    for p in "${WRK_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n $TCPDUMP_PID ]] && kill -0 "$TCPDUMP_PID" 2>/dev/null; then
        kill -INT "$TCPDUMP_PID" 2>/dev/null || true
        wait "$TCPDUMP_PID" 2>/dev/null || true
    fi
    nginx_stop
    rm -rf -- "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nginx_start "$TMP"

# wrk request mix: each connection cycles through the four request kinds.
head -c 768 /dev/urandom | base64 -w0 > "$TMP/body1k"
head -c 49152 /dev/urandom | base64 -w0 > "$TMP/body64k"
cat > "$TMP/mix.lua" <<EOF
local function slurp(p) local f = assert(io.open(p, "rb")); local s = f:read("*a"); f:close(); return s end
local body1k = slurp("$TMP/body1k")
local body64k = slurp("$TMP/body64k")
local reqs
local i = 0
init = function(args)
    -- Mostly small API calls, as production traffic is, with large bodies
    -- mixed in: per 20 requests 14 small GETs (gzip), 4 small POSTs, one
    -- 64 KiB GET and one 64 KiB POST.
    local small_get = wrk.format("GET", "/small.json", { ["Accept-Encoding"] = "gzip", ["Accept"] = "application/json" })
    local plain_get = wrk.format("GET", "/small.json", {})
    local small_post = wrk.format("POST", "/post/small", { ["Content-Type"] = "application/octet-stream" }, body1k)
    reqs = {}
    for k = 1, 10 do reqs[#reqs + 1] = small_get end
    for k = 1, 4 do reqs[#reqs + 1] = plain_get end
    for k = 1, 4 do reqs[#reqs + 1] = small_post end
    if "$MIX" == "large" then
        reqs[#reqs + 1] = wrk.format("GET", "/big.bin", {})
        reqs[#reqs + 1] = wrk.format("POST", "/post/big", { ["Content-Type"] = "application/octet-stream" }, body64k)
    else
        -- Small only: per 20 requests 12 GETs with gzip, 4 without, 4 POSTs.
        for k = 1, 2 do reqs[#reqs + 1] = small_get end
    end
end
delay = function()
    return $WRK_DELAY_MS
end
request = function()
    i = i + 1
    return reqs[(i % #reqs) + 1]
end
EOF

# ---------------------------------------------------------------- capture
rm -f -- "$OUT"
tcpdump -i lo -w "$OUT" -s 0 -B 65536 -Z root "tcp port $PORT" 2> "$TMP/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$TMP/tcpdump.err" 2>/dev/null && break
    kill -0 "$TCPDUMP_PID" 2>/dev/null || { log "tcpdump died"; cat "$TMP/tcpdump.err" >&2; exit 1; }
    sleep 0.1
done

# A few wrk runs in sequence so the capture also holds connection set-up and
# tear-down, not only a handful of endless keep-alive connections.
TARGET_BYTES=$((TARGET_MB * 1000 * 1000))
START=$(date +%s)
(
    w=""
    trap '[[ -n $w ]] && kill "$w" 2>/dev/null; exit 0' TERM
    while :; do
        wrk -t 1 -c "$WRK_CONNS" -d 10s --timeout 5s -s "$TMP/mix.lua" "http://127.0.0.1:$PORT/" >> "$TMP/wrk.out" 2>&1 &
        w=$!
        wait "$w" || true
        w=""
    done
) &
WRK_PIDS+=($!)

size=0
while :; do
    size=$(stat -c %s -- "$OUT" 2>/dev/null || echo 0)
    (( size >= TARGET_BYTES )) && break
    if (( $(date +%s) - START >= HARD_CAP_SECS )); then
        log "hard cap of ${HARD_CAP_SECS}s reached at $((size / 1000000)) MB"
        break
    fi
    kill -0 "$TCPDUMP_PID" 2>/dev/null || { log "tcpdump died"; cat "$TMP/tcpdump.err" >&2; exit 1; }
    sleep 0.2
done

# Stop the load first (the loop, then any wrk it runs), then tcpdump.
kill "${WRK_PIDS[0]}" 2>/dev/null || true
wait "${WRK_PIDS[0]}" 2>/dev/null || true
WRK_PIDS=()
sleep 0.5
kill -INT "$TCPDUMP_PID"
wait "$TCPDUMP_PID" || true
TCPDUMP_PID=""
ELAPSED=$(( $(date +%s) - START ))

log "wrk runs (the last, cut short by the stop, prints nothing):"; grep -E "requests in|Non-2xx|Socket errors" "$TMP/wrk.out" | sed "s/^/    /" >&2 || true
log "tcpdump:"; grep -E 'packets (captured|received|dropped)' "$TMP/tcpdump.err" | sed 's/^/    /' >&2
DROP_LINE=$(grep 'dropped by kernel' "$TMP/tcpdump.err" || echo "no 'dropped by kernel' line")
echo "tcpdump: $DROP_LINE"
size=$(stat -c %s -- "$OUT")
echo "pcap: $OUT  $((size / 1000000)) MB in ${ELAPSED}s, server port $PORT"

# Check that POST bodies really crossed the wire: look at the first few
# thousand packets for a reassembled 64 KiB POST.
posts=$(tshark -r "$OUT" -c 20000 -d "tcp.port==$PORT,http" -Y 'http.request.method == "POST"' \
        -T fields -e http.content_length -e tcp.reassembled.length 2>/dev/null | sort | uniq -c | sort -rn | head -5 || true)
log "POST requests in the first 20000 packets (count, Content-Length, reassembled bytes):"
printf '%s\n' "$posts" | sed 's/^/    /' >&2
if [[ $MIX == large ]] && ! awk '$2 == 65536 && $3 >= 65536 { ok = 1 } END { exit !ok }' <<<"$posts"; then
    log "WARNING: no fully reassembled 64 KiB POST body found in the capture"
fi
