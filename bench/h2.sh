#!/usr/bin/env bash
# h2.sh capture|replay
#
# The HTTP/2 cases of the benchmarks, side by side with the peer on the same
# input in the same run:
#   capture  `shadowctl capture --read` against tshark's http2 dissector on a
#            large h2c capture (made once: h2load driving a private nghttpd on
#            127.0.0.1, recorded by tcpdump; bench-out/capture-h2.pcap).
#            Reports seconds (median of RUNS), streams found, peak RSS and the
#            throughput ratio (target >= 20x tshark).
#   replay   `shadowctl replay --max --http2 --concurrency C` of N recorded
#            GETs against `h2load -n N -c 1 -m C` (one connection, C streams:
#            the shape replay uses up to 64), both to the same nghttpd; total
#            requests/s from wall time, medians of RUNS runs alternated
#            (target >= 0.8x h2load).
# Called by capture.sh (MIXES=h2) and replay.sh (STEPS=h). All traffic goes to
# 127.0.0.1; every command is bounded in time; what it starts it stops.
set -euo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$HERE/.." && pwd)
SHADOWCTL=${SHADOWCTL:-$ROOT/target/release/shadowctl}
OUT=${OUT:-$ROOT/bench-out/h2}
RUNS=${RUNS:-3}
N=${N:-100000}
CONC=${CONC:-64}
PCAP_REQUESTS=${PCAP_REQUESTS:-1000000}
mkdir -p -- "$OUT"
log() { echo "[h2-bench] $*" >&2; }
# shellcheck source=lib-nginx.sh
. "$HERE/lib-nginx.sh"
[[ -x $SHADOWCTL ]] || { log "no binary at $SHADOWCTL (build it with: cargo build --release)"; exit 1; }
need nghttpd nghttp2-server
need h2load nghttp2-client
need tcpdump tcpdump
[[ -x /usr/bin/time ]] || need /usr/bin/time time

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# tcpdump says "listening on" once its filter is in place; traffic sent
# before that (the connections' SYNs) would be missing from the capture.
wait_tcpdump() {
    for _ in $(seq 100); do
        grep -q "listening on" "$OUT/tcpdump.log" 2>/dev/null && return 0
        sleep 0.1
    done
    log "tcpdump did not start"; exit 1
}

start_nghttpd() { # sets PORT; serves small.json (~200 bytes) from OUT/www
    mkdir -p "$OUT/www"
    python3 -c 'import json; print(json.dumps({"model": "resnet-50", "version": "v1", "label": "cat", "score": 0.9731, "scores": [0.9731, 0.0151, 0.0072, 0.0031], "latency_ms": 12.5, "request": "a1b2c3d4"}))' > "$OUT/www/small.json"
    PORT=$(free_port)
    timeout 900 nghttpd --no-tls -n 1 -d "$OUT/www" "$PORT" >/dev/null 2>&1 & PIDS+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nghttpd did not start"; exit 1
}

capture_case() {
    local pcap=$ROOT/bench-out/capture-h2.pcap
    if [[ ! -s $pcap ]]; then
        start_nghttpd
        log "recording $PCAP_REQUESTS h2c requests to $pcap"
        timeout 600 tcpdump -i lo -B 262144 -U --immediate-mode -w "$pcap" "tcp port $PORT" 2>"$OUT/tcpdump.log" & local td=$!
        PIDS+=($td)
        wait_tcpdump
        # A mix of paths and a POST body, several connections of many streams.
        timeout 600 h2load -n "$PCAP_REQUESTS" -c 8 -m 16 \
            "http://127.0.0.1:$PORT/small.json" "http://127.0.0.1:$PORT/small.json?model=a" \
            "http://127.0.0.1:$PORT/missing" >/dev/null
        sleep 2
        kill -TERM "$td"; wait "$td" || true
    fi
    local bytes port
    bytes=$(stat -L -c %s "$pcap")
    port=$(tshark -r "$pcap" -c 50 -Y 'tcp.flags.syn == 1 && tcp.flags.ack == 0' -T fields -e tcp.dstport 2>/dev/null | head -1)
    cat "$pcap" > /dev/null
    local t_all=() s_all=()
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -o "$OUT/t.time" -f '%e %M' bash -c 'set -o pipefail; tshark -r "$1" -d "tcp.port==$2,http2" -Y "http2.headers.method" -T fields -E occurrence=a -e http2.headers.method | tr "," "\n" | grep -c .' _ "$pcap" "$port" > "$OUT/t.count"
        t_all+=("$(cat "$OUT/t.time")")
        /usr/bin/time -o "$OUT/s.time" -f '%e %M' "$SHADOWCTL" capture --read "$pcap" --out "$OUT/x.parquet" -q --stats-json "$OUT/stats.json"
        s_all+=("$(cat "$OUT/s.time")")
    done
    log "tshark runs (s, KB): ${t_all[*]}"
    log "shadowctl runs (s, KB): ${s_all[*]}"
    local ts tr ss sr
    ts=$(printf '%s\n' "${t_all[@]}" | awk '{print $1}' | median)
    tr=$(printf '%s\n' "${t_all[@]}" | awk '{print $2}' | sort -n | tail -1)
    ss=$(printf '%s\n' "${s_all[@]}" | awk '{print $1}' | median)
    sr=$(printf '%s\n' "${s_all[@]}" | awk '{print $2}' | sort -n | tail -1)
    python3 - "$bytes" "$ts" "$tr" "$(cat "$OUT/t.count")" "$ss" "$sr" "$OUT/stats.json" <<'PY'
import json, sys
size, ts, tr, tn, ss, sr, stats = sys.argv[1:]
size, ts, tr, tn, ss, sr = int(size), float(ts), int(tr), int(tn), float(ss), int(sr)
st = json.load(open(stats))
sn = st["exchanges"]
print(f"== HTTP/2 (h2c) capture: {size / 1e6:.1f} MB, {st['packets']} packets")
print(f"{'tool':<10} {'seconds':>8} {'streams':>10} {'streams/s':>10} {'peak RSS MB':>12}")
print(f"{'tshark':<10} {ts:>8.2f} {tn:>10} {tn / ts:>10.0f} {tr / 1024:>12.1f}")
print(f"{'shadowctl':<10} {ss:>8.2f} {sn:>10} {sn / ss:>10.0f} {sr / 1024:>12.1f}")
print(f"throughput ratio shadowctl/tshark: {ts / ss:.1f}x (incomplete rows: {st['incomplete_exchanges']})")
PY
}

replay_case() {
    start_nghttpd
    local url="http://127.0.0.1:$PORT/small.json"
    local pcap=$OUT/replay-src.pcap cap=$OUT/replay-src.parquet
    if [[ ! -s $cap ]]; then
        log "recording $N requests to replay"
        timeout 300 tcpdump -i lo -B 262144 -U --immediate-mode -w "$pcap" "tcp port $PORT" 2>"$OUT/tcpdump.log" & local td=$!
        PIDS+=($td)
        wait_tcpdump
        timeout 300 h2load -n "$N" -c 1 -m 8 "$url" >/dev/null
        sleep 2
        kill -TERM "$td"; wait "$td" || true
        "$SHADOWCTL" capture --read "$pcap" --out "$cap" -q
    fi
    local rows
    rows=$(python3 -c 'import pyarrow.parquet as pq, sys; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)' "$cap" 2>/dev/null || echo "$N")
    log "replaying $rows requests; h2load sends as many"
    local h_all=() s_all=()
    for i in $(seq "$RUNS"); do
        local t0 t1
        t0=$(date +%s.%N)
        timeout 300 h2load -n "$rows" -c 1 -m "$CONC" "$url" > "$OUT/h2load.out"
        t1=$(date +%s.%N)
        h_all+=("$(python3 -c "print($rows / ($t1 - $t0))")")
        t0=$(date +%s.%N)
        timeout 300 "$SHADOWCTL" replay "$cap" --primary "http://127.0.0.1:$PORT" --max --http2 \
            --concurrency "$CONC" --out "$OUT/results-$i.parquet" -q > /dev/null
        t1=$(date +%s.%N)
        s_all+=("$(python3 -c "print($rows / ($t1 - $t0))")")
        grep -E "succeeded|^finished" "$OUT/h2load.out" | head -2 >&2
    done
    log "h2load runs (req/s): ${h_all[*]}"
    log "shadowctl runs (req/s): ${s_all[*]}"
    local hm sm
    hm=$(printf '%s\n' "${h_all[@]}" | median)
    sm=$(printf '%s\n' "${s_all[@]}" | median)
    python3 - "$rows" "$hm" "$sm" "$OUT/results-1.parquet" <<'PY'
import sys
import pyarrow.parquet as pq
rows, hm, sm, res = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
t = pq.read_table(res, columns=["target_name", "status", "error_kind"]).to_pylist()
live = [r for r in t if r["target_name"] == "primary"]
ok = sum(1 for r in live if r["status"] == 200 and r["error_kind"] is None)
print(f"== HTTP/2 (h2c) replay, {rows} requests, concurrency {sys.argv[0] and ''}")
print(f"h2load     {hm:>10.0f} req/s (median, wall time)")
print(f"shadowctl  {sm:>10.0f} req/s (median, wall time; {ok} of {len(live)} answered 200)")
print(f"ratio shadowctl/h2load: {sm / hm:.2f}x")
PY
}

case ${1:-} in
    capture) capture_case ;;
    replay) replay_case ;;
    *) echo "usage: h2.sh capture|replay" >&2; exit 2 ;;
esac
