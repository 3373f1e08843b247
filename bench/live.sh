#!/usr/bin/env bash
# live.sh
#
# Benchmarks live capture, `shadowctl capture --interface lo --port PORT`,
# against tcpdump writing a pcap of the same traffic.
#
# It starts a private nginx (own config in a temp dir, listening ONLY on
# 127.0.0.1 on a free port; see lib-nginx.sh) and, for each rate R in $RATES
# (requests/second, default "5000 10000 20000"), drives it for $DURATION
# seconds (default 10) at a constant rate with wrk: 80% GET of a ~200-byte
# JSON file, 20% POST of a 1 KiB body; 90% of the rate on keep-alive
# connections and 10% with "Connection: close" (a new connection per request).
# wrk has no constant-rate mode (and oha is not packaged), so each connection
# pauses a fixed delay() after each response, and the number of connections
# is calibrated by a short run before each rate. The rate reported is the one
# wrk measured, not the one intended.
#
# Each rate runs twice: once captured by shadowctl, once by tcpdump (the
# reference, whose pcap is then read with `shadowctl capture --read` to count
# the HTTP requests in it). For each capturer: CPU used during the load (in
# cores), peak RSS, kernel drops; for shadowctl also exchanges captured and
# loss against the requests wrk completed. Prints one table at the end.
#
# All traffic goes to 127.0.0.1 only; nothing leaves the machine. Every loop is
# bounded; everything the script starts is stopped on exit. Outputs go to
# bench-out/live/. Uses the prebuilt target/release/shadowctl (or $SHADOWCTL);
# it never builds. Missing nginx, wrk, tcpdump are installed with apt-get.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$HERE/.." && pwd)
SHADOWCTL=${SHADOWCTL:-$ROOT/target/release/shadowctl}
OUT=${OUT:-$ROOT/bench-out/live}
RATES=${RATES:-5000 10000 20000}
DURATION=${DURATION:-10}
# Pause (ms) after each response on each connection; the connection counts
# follow from it and the rate. A pause long against the response time keeps
# the rate from sagging when the capturer competes with nginx and wrk for CPU.
DELAY_MS=${DELAY_MS:-40}
CALIBRATE_SECS=${CALIBRATE_SECS:-2}
# Skip the remaining rates once this many seconds have passed.
MAX_SECS=${MAX_SECS:-270}
# Extra arguments for the shadowctl live capture (word-split), e.g. "--snaplen 4096".
SC_EXTRA_ARGS=${SC_EXTRA_ARGS:-}
START_TIME=$SECONDS

log() { echo "[live-bench] $*" >&2; }

# shellcheck source=lib-nginx.sh
. "$HERE/lib-nginx.sh"

[[ -x $SHADOWCTL ]] || { log "no binary at $SHADOWCTL (build it with: cargo build --release)"; exit 1; }
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || { log "DURATION must be a positive integer"; exit 2; }
for r in $RATES; do [[ $r =~ ^[0-9]+$ && $r -ge 10 ]] || { log "bad rate in RATES: $r"; exit 2; }; done
need nginx nginx-light nginx
need wrk wrk
need tcpdump tcpdump
need python3 python3
need curl curl

# One file descriptor per wrk connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p -- "$OUT"
TMP=$(mktemp -d /tmp/shadowctl-live.XXXXXX)
chmod 755 "$TMP"

CAP_PID=""; WRK_PIDS=()
cleanup() {
    local rc=$? p
    for p in "${WRK_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n $CAP_PID ]] && kill -0 "$CAP_PID" 2>/dev/null; then
        kill -INT "$CAP_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$CAP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CAP_PID" 2>/dev/null || true
        wait "$CAP_PID" 2>/dev/null || true
    fi
    nginx_stop
    rm -rf -- "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nginx_start "$TMP"
log "outputs in $OUT"

# ---------------------------------------------------------------- load
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 > "$TMP/body1k"
# wrk script; arguments after `--`: DELAY_MS [close]. Per 5 requests on a
# connection: 4 GET /small.json, 1 POST /post with 1 KiB.
cat > "$TMP/mix.lua" <<EOF
local f = assert(io.open("$TMP/body1k", "rb")); local body = f:read("*a"); f:close()
local reqs
local i = 0
local d = 10
init = function(args)
    d = tonumber(args[1])
    local h = { ["Accept"] = "application/json" }
    if args[2] == "close" then h["Connection"] = "close" end
    local get = wrk.format("GET", "/small.json", h)
    local ph = { ["Content-Type"] = "application/json" }
    for k, v in pairs(h) do ph[k] = v end
    local post = wrk.format("POST", "/post", ph, body)
    reqs = { get, get, get, get, post }
    -- Start each connection at a different point of the cycle.
    i = math.random(0, 4)
end
delay = function()
    return d
end
request = function()
    i = i + 1
    return reqs[(i % #reqs) + 1]
end
EOF

# run_load SECS KA_CONNS CLOSE_CONNS PREFIX: runs both wrk processes at once
# and waits for them; their summaries go to PREFIX.ka and PREFIX.close.
run_load() {
    local secs=$1 ka=$2 cl=$3 prefix=$4 p rc=0
    local ka_threads=2
    (( ka < 2 )) && ka_threads=1
    WRK_PIDS=()
    timeout -s INT $((secs + 20)) wrk -t "$ka_threads" -c "$ka" -d "${secs}s" --timeout 5s -s "$TMP/mix.lua" \
        "http://127.0.0.1:$PORT/" -- "$DELAY_MS" > "$prefix.ka" 2>&1 &
    WRK_PIDS+=($!)
    timeout -s INT $((secs + 20)) wrk -t 1 -c "$cl" -d "${secs}s" --timeout 5s -s "$TMP/mix.lua" \
        "http://127.0.0.1:$PORT/" -- "$DELAY_MS" close > "$prefix.close" 2>&1 &
    WRK_PIDS+=($!)
    for p in "${WRK_PIDS[@]}"; do wait "$p" || rc=$?; done
    WRK_PIDS=()
    (( rc == 0 )) || log "wrk exited with $rc (see $prefix.ka / $prefix.close)"
}
# wrk_requests FILE: completed requests; wrk_rate FILE: requests/second.
wrk_requests() { awk '/ requests in /{print $1; f=1} END{if(!f) print 0}' "$1"; }
wrk_rate() { awk '/ requests in /{t=$4; sub(/s,$/, "", t); if (t+0 > 0) printf "%.1f\n", $1/t; f=1} END{if(!f) print 0}' "$1"; }
wrk_problems() { grep -hE 'Socket errors|Non-2xx' "$@" || true; }

conns_for() { # conns_for RATE: connections to reach RATE with DELAY_MS, ~1 ms latency assumed
    local c=$(( ($1 * (DELAY_MS + 1) + 999) / 1000 ))
    (( c < 1 )) && c=1
    echo "$c"
}
scale_conns() { # scale_conns CONNS TARGET ACHIEVED: CONNS * TARGET / ACHIEVED, bounded
    python3 -c '
import sys
c, t, a = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
n = c * 2 if a <= 0 else round(c * t / a)
print(max(1, min(n, c * 3, 8000)))' "$1" "$2" "$3"
}

# ---------------------------------------------------------------- capture
cpu_ticks() { # utime + stime of PID, in clock ticks
    local s
    s=$(cat "/proc/$1/stat")
    s=${s##*) }
    local -a f
    read -ra f <<< "$s"
    echo $(( f[11] + f[12] ))
}
vm_hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
# has_packet_socket PID: the process holds an AF_PACKET socket (capture open).
has_packet_socket() {
    local ino
    for ino in $(awk 'NR > 1 {print $NF}' /proc/net/packet); do
        ls -l "/proc/$1/fd" 2>/dev/null | grep -q "socket:\[$ino\]" && return 0
    done
    return 1
}
wait_ready() { # wait_ready PID ERRFILE PATTERN
    local _
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || { log "capturer died:"; cat "$2" >&2; exit 1; }
        if has_packet_socket "$1" || grep -q "$3" "$2" 2>/dev/null; then
            sleep 0.3
            return 0
        fi
        sleep 0.1
    done
    log "capturer not ready after 10 s"; exit 1
}
stop_capturer() { # sends SIGINT to CAP_PID and waits (at most 60 s) for it
    local _
    kill -INT "$CAP_PID" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$CAP_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$CAP_PID" 2>/dev/null; then
        log "capturer $CAP_PID still running 60 s after SIGINT; killing it"
        kill -KILL "$CAP_PID" 2>/dev/null || true
    fi
    wait "$CAP_PID" 2>/dev/null || true
    CAP_PID=""
}

# measured_run NAME RATE KA CL: starts the capturer (CAP_CMD), runs the load,
# stops the capturer; writes NAME-RATE.run (key=value lines).
measured_run() {
    local name=$1 rate=$2 ka=$3 cl=$4
    local base=$OUT/$name-$rate t0 t1 c0 c1 hwm
    "${CAP_CMD[@]}" 2> "$base.err" &
    CAP_PID=$!
    wait_ready "$CAP_PID" "$base.err" "$READY_PATTERN"
    c0=$(cpu_ticks "$CAP_PID"); t0=$(now)
    run_load "$DURATION" "$ka" "$cl" "$base.wrk"
    c1=$(cpu_ticks "$CAP_PID"); t1=$(now)
    sleep 1
    hwm=$(vm_hwm_kb "$CAP_PID")
    stop_capturer
    {
        echo "cpu_ticks=$((c1 - c0))"
        echo "wall=$(python3 -c "print($t1 - $t0)")"
        echo "hwm_kb=$hwm"
        echo "sent=$(( $(wrk_requests "$base.wrk.ka") + $(wrk_requests "$base.wrk.close") ))"
        echo "achieved=$(python3 -c "print($(wrk_rate "$base.wrk.ka") + $(wrk_rate "$base.wrk.close"))")"
    } > "$base.run"
    wrk_problems "$base.wrk.ka" "$base.wrk.close" | sed "s/^/[live-bench] $name $rate wrk: /" >&2
}

CLK_TCK=$(getconf CLK_TCK)
DONE_RATES=()
for R in $RATES; do
    if (( SECONDS - START_TIME > MAX_SECS )); then
        log "time budget of ${MAX_SECS}s used up; skipping rate $R and later"
        break
    fi
    # Calibrate: 90% keep-alive, 10% new connections.
    KA_T=$(( R * 9 / 10 )); CL_T=$(( R - KA_T ))
    KA=$(conns_for "$KA_T"); CL=$(conns_for "$CL_T")
    run_load "$CALIBRATE_SECS" "$KA" "$CL" "$OUT/calibrate-$R"
    KA=$(scale_conns "$KA" "$KA_T" "$(wrk_rate "$OUT/calibrate-$R.ka")")
    CL=$(scale_conns "$CL" "$CL_T" "$(wrk_rate "$OUT/calibrate-$R.close")")
    log "rate $R: $KA keep-alive + $CL connection-close connections, ${DELAY_MS} ms pause"

    rm -rf -- "$OUT/live-$R" "$OUT/live-$R.json"
    CAP_CMD=("$SHADOWCTL" capture --interface lo --port "$PORT" --out "$OUT/live-$R" --stats-json "$OUT/live-$R.json" -q)
    # shellcheck disable=SC2206
    CAP_CMD+=($SC_EXTRA_ARGS)
    READY_PATTERN="capturing on"
    log "rate $R: shadowctl capture for ${DURATION}s"
    measured_run live "$R" "$KA" "$CL"

    rm -f -- "$OUT/tcpdump-$R.pcap"
    CAP_CMD=(tcpdump -i lo -w "$OUT/tcpdump-$R.pcap" -s 0 -B 65536 -Z root "tcp port $PORT")
    READY_PATTERN="listening on"
    log "rate $R: tcpdump for ${DURATION}s"
    measured_run tcpdump "$R" "$KA" "$CL"

    log "rate $R: counting requests in tcpdump-$R.pcap"
    rm -f -- "$OUT/tcpdump-$R.parquet" "$OUT/tcpdump-$R.read.json"
    timeout 120 "$SHADOWCTL" capture --read "$OUT/tcpdump-$R.pcap" --out "$OUT/tcpdump-$R.parquet" \
        -q --stats-json "$OUT/tcpdump-$R.read.json"
    rm -f -- "$OUT/tcpdump-$R.parquet"
    DONE_RATES+=("$R")
done
(( ${#DONE_RATES[@]} > 0 )) || { log "no rate was run"; exit 1; }

# ---------------------------------------------------------------- report
python3 - "$OUT" "$CLK_TCK" "${DONE_RATES[@]}" <<'PY' | tee "$OUT/table.txt"
import json, re, sys
out, tck, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def run(path):
    d = {}
    for line in open(path):
        k, v = line.strip().split("=", 1)
        d[k] = float(v) if v else 0.0
    return d

def td_dropped(path):
    m = re.search(r"(\d+) packets? dropped by kernel", open(path).read())
    return int(m.group(1)) if m else None

hdr = ("rate", "achieved", "sent",
       "sc exch", "sc loss%", "sc kdrop", "sc cpu", "sc MB",
       "td sent", "td reqs", "td kdrop", "td cpu", "td MB", "cpu sc/td")
fmt = "{:>6} {:>9} {:>8} | {:>8} {:>8} {:>8} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>6} {:>6} | {:>9}"
print("shadowctl (sc) vs tcpdump (td) live capture on lo; cpu in cores during the load, MB = peak RSS")
print(fmt.format(*hdr))
extra = []
for r in rates:
    sc = run(f"{out}/live-{r}.run")
    td = run(f"{out}/tcpdump-{r}.run")
    st = json.load(open(f"{out}/live-{r}.json"))
    rd = json.load(open(f"{out}/tcpdump-{r}.read.json"))
    sc_cpu = sc["cpu_ticks"] / tck / sc["wall"]
    td_cpu = td["cpu_ticks"] / tck / td["wall"]
    sent = int(sc["sent"])
    ex = st["exchanges"]
    loss = 100.0 * (sent - ex) / sent if sent else float("nan")
    tdk = td_dropped(f"{out}/tcpdump-{r}.err")
    print(fmt.format(r, f"{sc['achieved']:.0f}", sent,
                     ex, f"{loss:.2f}", st.get("kernel_dropped", "?"), f"{sc_cpu:.2f}", f"{sc['hwm_kb'] / 1024:.1f}",
                     int(td["sent"]), rd["exchanges"], "?" if tdk is None else tdk, f"{td_cpu:.2f}",
                     f"{td['hwm_kb'] / 1024:.1f}",
                     f"{sc_cpu / td_cpu:.2f}" if td_cpu > 0 else "inf"))
    extra.append(f"rate {r}: shadowctl interface_dropped={st.get('interface_dropped')} "
                 f"writer_dropped_exchanges={st.get('writer_dropped_exchanges')} "
                 f"incomplete_exchanges={st.get('incomplete_exchanges')}; "
                 f"tcpdump run achieved {td['achieved']:.0f} req/s")
print("sent/achieved are from the shadowctl run; 'td sent' is the tcpdump run's own load.")
for e in extra:
    print(e)
PY
log "done in $((SECONDS - START_TIME))s"
