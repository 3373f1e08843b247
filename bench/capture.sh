#!/usr/bin/env bash
# capture.sh [PCAP]
#
# Benchmarks `shadowctl capture` against `tshark` on the same pcap, in the same
# run: wall seconds, MB/s, requests found, requests/s and peak RSS of each, the
# shadowctl/tshark throughput and RSS ratios, and shadowctl's peak RSS on the
# first ~25% of the file (to show memory stays flat as the input grows).
#
# Without PCAP it runs two request mixes, each on a pcap created first with
# bench/make-capture-pcap.sh (1000 MB of loopback HTTP traffic): the large-body
# mix (bench-out/capture-1g.pcap) and the small-request mix of an API
# (bench-out/capture-small.pcap, small GETs and POSTs on keep-alive, over a
# million requests). That script sends traffic only to a private nginx on
# 127.0.0.1; this one sends none.
#
# Uses the prebuilt target/release/shadowctl (or $SHADOWCTL); it never builds.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$HERE/.." && pwd)
OUTDIR=$ROOT/bench-out
SHADOWCTL=${SHADOWCTL:-$ROOT/target/release/shadowctl}
mkdir -p -- "$OUTDIR"

log() { echo "[capture-bench] $*" >&2; }

[[ -x $SHADOWCTL ]] || { log "no binary at $SHADOWCTL (build it with: cargo build --release)"; exit 1; }
if [[ ! -x /usr/bin/time ]]; then
    log "installing time"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q time >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q time >/dev/null; }
fi
for c in tshark tcpdump python3; do
    command -v "$c" >/dev/null || { log "$c missing (bench/make-capture-pcap.sh installs it)"; exit 1; }
done

bench_pcap() { # bench_pcap PCAP LABEL
local PCAP=$1 LABEL=$2
echo "== $LABEL"
BYTES=$(stat -L -c %s -- "$PCAP")
MB=$(python3 -c "print(f'{$BYTES / 1e6:.1f}')")
log "input: $PCAP ($MB MB)"

# tshark only dissects HTTP on well-known ports; tell it the server port,
# taken from the first client SYN.
PORT=$(tshark -r "$PCAP" -c 200 -Y 'tcp.flags.syn == 1 && tcp.flags.ack == 0' -T fields -e tcp.dstport 2>/dev/null | head -1 || true)
DECODE=()
if [[ -n $PORT ]]; then DECODE=(-d "tcp.port==$PORT,http"); log "server port $PORT"; fi

# Warm the page cache so neither tool pays for the first read from disk.
cat -- "$PCAP" > /dev/null

TSHARK_TIME=$OUTDIR/tshark.time
TSHARK_LINES=$OUTDIR/tshark.lines
log "running tshark ..."
# tshark runs RUNS times (default 3), shadowctl SC_RUNS times (default 5,
# it is quick and this machine's timing is noisy); the median time and the
# largest peak RSS are reported, so one noisy run does not decide the ratio.
RUNS=${RUNS:-3}
SC_RUNS=${SC_RUNS:-5}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
T_ALL=()
for _ in $(seq "$RUNS"); do
    /usr/bin/time -o "$TSHARK_TIME" -f '%e %M' \
        bash -c 'set -o pipefail; tshark -r "$1" "${@:2}" -Y http.request -T fields -e http.request.method -e http.request.uri | wc -l' \
        _ "$PCAP" "${DECODE[@]}" > "$TSHARK_LINES"
    T_ALL+=("$(cat "$TSHARK_TIME")")
done
T_SECS=$(printf '%s\n' "${T_ALL[@]}" | awk '{print $1}' | median)
T_RSS=$(printf '%s\n' "${T_ALL[@]}" | awk '{print $2}' | sort -n | tail -1)
log "tshark runs (s, KB): ${T_ALL[*]}"
T_REQS=$(tr -d ' ' < "$TSHARK_LINES")

SC_TIME=$OUTDIR/shadowctl.time
STATS=$OUTDIR/stats.json
rm -f -- "$OUTDIR/x.parquet" "$STATS"
log "running shadowctl capture ..."
S_ALL=()
for _ in $(seq "$SC_RUNS"); do
    /usr/bin/time -o "$SC_TIME" -f '%e %M' \
        "$SHADOWCTL" capture --read "$PCAP" --out "$OUTDIR/x.parquet" -q --stats-json "$STATS"
    S_ALL+=("$(cat "$SC_TIME")")
done
S_SECS=$(printf '%s\n' "${S_ALL[@]}" | awk '{print $1}' | median)
S_RSS=$(printf '%s\n' "${S_ALL[@]}" | awk '{print $2}' | sort -n | tail -1)
log "shadowctl runs (s, KB): ${S_ALL[*]}"
S_REQS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["exchanges"])' "$STATS")
S_PACKETS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packets"])' "$STATS")

# The first ~25% of the capture, by packets.
SMALL=$OUTDIR/capture-quarter.pcap
N=$((S_PACKETS / 4))
log "cutting the first $N of $S_PACKETS packets to $SMALL"
tcpdump -r "$PCAP" -w "$SMALL" -c "$N" 2>/dev/null
SMALL_BYTES=$(stat -c %s -- "$SMALL")
log "running shadowctl capture on the quarter file ..."
/usr/bin/time -o "$OUTDIR/shadowctl-quarter.time" -f '%e %M' \
    "$SHADOWCTL" capture --read "$SMALL" --out "$OUTDIR/x-quarter.parquet" -q --stats-json "$OUTDIR/stats-quarter.json"
read -r Q_SECS Q_RSS < "$OUTDIR/shadowctl-quarter.time"
Q_REQS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["exchanges"])' "$OUTDIR/stats-quarter.json")

python3 - "$BYTES" "$T_SECS" "$T_RSS" "$T_REQS" "$S_SECS" "$S_RSS" "$S_REQS" \
          "$SMALL_BYTES" "$Q_SECS" "$Q_RSS" "$Q_REQS" <<'PY'
import sys
a = sys.argv[1:]
size = int(a[0])
rows = [("tshark", float(a[1]), int(a[2]), int(a[3])),
        ("shadowctl", float(a[4]), int(a[5]), int(a[6]))]
small = int(a[7]); q_secs = float(a[8]); q_rss = int(a[9]); q_reqs = int(a[10])

def rate(n, s):
    return n / s if s > 0 else float("inf")

print(f"input: {size / 1e6:.1f} MB")
print(f"{'tool':<10} {'seconds':>8} {'MB/s':>8} {'requests':>10} {'requests/s':>11} {'peak RSS MB':>12}")
for name, secs, rss, reqs in rows:
    print(f"{name:<10} {secs:>8.2f} {rate(size / 1e6, secs):>8.1f} {reqs:>10} {rate(reqs, secs):>11.0f} {rss / 1024:>12.1f}")
(_, ts, tr, _), (_, ss, sr, _) = rows
print(f"throughput ratio shadowctl/tshark: {rate(1, ss) / rate(1, ts):.1f}x")
print(f"peak RSS ratio   shadowctl/tshark: {sr / tr:.3f}")
print(f"shadowctl peak RSS: {q_rss / 1024:.1f} MB on {small / 1e6:.1f} MB ({q_reqs} exchanges, {q_secs:.2f} s), "
      f"{sr / 1024:.1f} MB on {size / 1e6:.1f} MB")
PY
}

# With PCAP: that file only. Without: both request mixes (MIXES, default
# "large small"), each pcap made once by bench/make-capture-pcap.sh:
#   large: bench-out/capture-1g.pcap, 1000 MB, small API calls with 64 KiB
#     bodies mixed in;
#   small: bench-out/capture-small.pcap, 1000 MB, small GETs and POSTs only
#     on keep-alive connections (over a million requests);
#   h2: bench-out/capture-h2.pcap, a million h2c streams from h2load to
#     nghttpd, against tshark's http2 dissector (bench/h2.sh capture).
if [[ $# -ge 1 ]]; then
    [[ -s $1 ]] || { log "no such pcap: $1"; exit 1; }
    bench_pcap "$1" "$1"
    exit 0
fi
for mix in ${MIXES:-large small h2}; do
    case $mix in
        h2) bash "$HERE/h2.sh" capture; continue ;;
        large) pcap=$OUTDIR/capture-1g.pcap ;;
        small) pcap=$OUTDIR/capture-small.pcap ;;
        *) log "unknown mix $mix (large, small, h2)"; exit 2 ;;
    esac
    if [[ ! -s $pcap ]]; then
        log "creating $pcap ($mix mix)"
        MIX=$mix "$HERE/make-capture-pcap.sh" "$pcap" 1000
    fi
    bench_pcap "$pcap" "$mix request mix: $pcap"
done
