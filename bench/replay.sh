#!/usr/bin/env bash
# replay.sh
#
# Benchmarks `shadowctl replay` against oha (a Rust HTTP load generator):
#   (a) throughput: a capture of N (default 100k) GET /small.json requests
#       replayed with --max --concurrency 64 to a primary AND a shadow; total
#       requests/s = 2 * N / wall seconds, against oha -n 2N -c 64 on one
#       target, the two alternated A_RUNS (default 3) times; ratio of the
#       medians (shadowctl/oha, target >= 1.0);
#   (b) rate accuracy: --rate 10000 --limit N to the primary alone (10 s);
#       achieved rate = requests / (last sent_ts - first sent_ts) read from the
#       results Parquet, schedule lag and latency p99, against
#       oha -q 10000 -z 10s -c 64;
#   (c) memory: peak RSS of the (a) replay (N requests) against the same
#       replay of 10*N requests (the capture file given 10 times);
#   (d) cost of resource sampling: the (a) replay without sampling and with
#       four sources sampled every 100 ms (both nginx /metrics endpoints and
#       both nginx process trees), alternated SAMPLING_RUNS times (default 3);
#       ratio of the medians (target >= 0.97).
#   (h) HTTP/2: replay --max --http2 against h2load at the same concurrency to
#       the same nghttpd (bench/h2.sh replay; target >= 0.8x h2load).
# STEPS (default abcdh) picks the parts to run, e.g. STEPS=d; oha is needed
# only for a and b.
#
# Targets are two private nginx instances (lib-nginx.sh: own config in a temp
# dir, listening ONLY on 127.0.0.1 on free ports) serving a ~200-byte JSON
# document. The capture to replay is made by `shadowctl capture --interface lo`
# while wrk drives the primary. All traffic goes to 127.0.0.1 only; nothing
# leaves the machine. Every loop is bounded in count and every command in time
# (timeout); everything the script starts is stopped on exit.
#
# Uses the prebuilt target/release/shadowctl (or $SHADOWCTL); it never builds.
# Needs oha on PATH or in ~/.cargo/bin (cargo install oha --locked). Missing
# nginx, wrk, time are installed with apt-get, pyarrow with pip.
# Outputs go to bench-out/replay/ (git-ignored); the table to table.txt there.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$HERE/.." && pwd)
SHADOWCTL=${SHADOWCTL:-$ROOT/target/release/shadowctl}
OUT=${OUT:-$ROOT/bench-out/replay}
N=${N:-100000}            # requests in the capture, and in (a) and (b)
REPEAT=${REPEAT:-10}      # (c): the capture given this many times
CONC=${CONC:-64}
RATE=${RATE:-10000}       # (b)
STEP_TIMEOUT=${STEP_TIMEOUT:-300}  # seconds, per command
STEPS=${STEPS:-abcdh}
SAMPLING_RUNS=${SAMPLING_RUNS:-3}  # (d)
A_RUNS=${A_RUNS:-3}               # (a)
START_TIME=$SECONDS
# Only the HTTP/2 case: no nginx, oha or wrk needed.
if [[ $STEPS == h ]]; then exec bash "$(dirname -- "${BASH_SOURCE[0]}")/h2.sh" replay; fi

log() { echo "[replay-bench] $*" >&2; }

# shellcheck source=lib-nginx.sh
. "$HERE/lib-nginx.sh"

[[ -x $SHADOWCTL ]] || { log "no binary at $SHADOWCTL (build it with: cargo build --release)"; exit 1; }
[[ $N =~ ^[0-9]+$ && $N -ge 1000 ]] || { log "N must be an integer >= 1000"; exit 2; }
[[ $REPEAT =~ ^[0-9]+$ && $REPEAT -ge 1 && $REPEAT -le 100 ]] || { log "REPEAT must be 1..100"; exit 2; }
export PATH=$PATH:$HOME/.cargo/bin
need nginx nginx-light nginx
need wrk wrk
need python3 python3
need curl curl
[[ -x /usr/bin/time ]] || { log "installing time"; apt_install time || { log "cannot install time"; exit 1; }; }
if [[ $STEPS == *a* || $STEPS == *b* ]]; then
    command -v oha >/dev/null || { log "oha not found (cargo install oha --locked)"; exit 1; }
fi
python3 -c 'import pyarrow.parquet' 2>/dev/null || {
    log "installing pyarrow"
    timeout 300 python3 -m pip install -q pyarrow >/dev/null || { log "cannot install pyarrow"; exit 1; }
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p -- "$OUT"
TMP=$(mktemp -d /tmp/shadowctl-replay.XXXXXX)
chmod 755 "$TMP"

CAP_PID=""; WRK_PID=""; NGINX_PIDS=()
cleanup() {
    local rc=$? p _
    [[ -n $WRK_PID ]] && kill "$WRK_PID" 2>/dev/null || true
    if [[ -n $CAP_PID ]] && kill -0 "$CAP_PID" 2>/dev/null; then
        kill -INT "$CAP_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$CAP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CAP_PID" 2>/dev/null || true
    fi
    for p in "${NGINX_PIDS[@]}"; do NGINX_PID=$p; nginx_stop; done
    rm -rf -- "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two nginx instances: primary and shadow.
mkdir -p "$TMP/primary" "$TMP/shadow"
nginx_start "$TMP/primary"; P1=$PORT; NGINX_PIDS+=("$NGINX_PID")
nginx_start "$TMP/shadow";  P2=$PORT; NGINX_PIDS+=("$NGINX_PID")
PRIMARY=http://127.0.0.1:$P1
SHADOW=http://127.0.0.1:$P2
log "primary $PRIMARY, shadow $SHADOW; outputs in $OUT"

# timed NAME CMD...: runs CMD under /usr/bin/time and timeout (SIGINT, then
# SIGKILL 15 s later); writes NAME.time ("wall_s maxrss_kb") and NAME.rc;
# never fails the script.
timed() {
    local name=$1 rc=0; shift
    /usr/bin/time -o "$OUT/$name.time" -f '%e %M' \
        timeout -k 15 -s INT "$STEP_TIMEOUT" "$@" > "$OUT/$name.stdout" 2> "$OUT/$name.stderr" || rc=$?
    echo "$rc" > "$OUT/$name.rc"
    (( rc == 0 )) || log "$name exited with $rc (see $OUT/$name.stderr)"
}

# ---------------------------------------------------------------- capture
has_packet_socket() { # has_packet_socket PID: the process holds an AF_PACKET socket
    local ino
    for ino in $(awk 'NR > 1 {print $NF}' /proc/net/packet); do
        ls -l "/proc/$1/fd" 2>/dev/null | grep -q "socket:\[$ino\]" && return 0
    done
    return 1
}
CAP=$OUT/capture.parquet
rm -f -- "$CAP" "$OUT/capture.json"
log "capturing $N requests to the primary (shadowctl capture --interface lo --max-exchanges $N)"
timeout -k 5 -s INT 150 "$SHADOWCTL" capture --interface lo --port "$P1" --out "$CAP" \
    --max-exchanges "$N" --duration 120 --stats-json "$OUT/capture.json" -q 2> "$OUT/capture.err" &
CAP_PID=$!
for _ in $(seq 100); do
    kill -0 "$CAP_PID" 2>/dev/null || { log "capture died:"; cat "$OUT/capture.err" >&2; exit 1; }
    has_packet_socket "$CAP_PID" && break
    sleep 0.1
done
sleep 0.3
# wrk has no request-count mode; it runs until the capture has N exchanges
# (or 120 s pass), then it is stopped.
timeout -s INT 130 wrk -t 1 -c 16 -d 120s --timeout 5s -H 'Accept: application/json' \
    "$PRIMARY/small.json" > "$OUT/capture.wrk" 2>&1 &
WRK_PID=$!
wait "$CAP_PID" || log "capture exited with $?"
CAP_PID=""
kill -INT "$WRK_PID" 2>/dev/null || true
wait "$WRK_PID" 2>/dev/null || true
WRK_PID=""
ROWS=$(python3 -c 'import sys, pyarrow.parquet as pq; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)' "$CAP")
log "capture: $ROWS exchanges in $CAP"
(( ROWS >= N )) || { log "capture has $ROWS < $N exchanges"; exit 1; }

# ---------------------------------------------------------------- (a) throughput
if [[ $STEPS == *a* ]]; then
for i in $(seq "$A_RUNS"); do
    log "(a) run $i: shadowctl replay --max, $N requests x 2 targets, then oha -n $((2 * N)) -c $CONC"
    timed "a_${i}_shadowctl" "$SHADOWCTL" replay "$CAP" --primary "$PRIMARY" --shadow "$SHADOW" --max \
        --concurrency "$CONC" --limit "$N" --out "$OUT/a.parquet" --summary-json "$OUT/a_$i.json" -q
    timed "a_${i}_oha" oha -n $((2 * N)) -c "$CONC" --no-tui --output-format json "$PRIMARY/small.json"
done
fi

# ---------------------------------------------------------------- (b) accuracy
if [[ $STEPS == *b* ]]; then
log "(b) shadowctl replay --rate $RATE --limit $N (primary only)"
timed b_shadowctl "$SHADOWCTL" replay "$CAP" --primary "$PRIMARY" --rate "$RATE" --limit "$N" \
    --concurrency "$CONC" --out "$OUT/b.parquet" --summary-json "$OUT/b.json" -q
DUR_S=$(( (N + RATE - 1) / RATE ))
log "(b) oha -q $RATE -z ${DUR_S}s -c $CONC"
timed b_oha oha -q "$RATE" -z "${DUR_S}s" -c "$CONC" --no-tui --output-format json "$PRIMARY/small.json"
fi

# ---------------------------------------------------------------- (c) memory
if [[ $STEPS == *c* ]]; then
CAPS=()
for _ in $(seq "$REPEAT"); do CAPS+=("$CAP"); done
log "(c) shadowctl replay --max, $((REPEAT * N)) requests (capture given $REPEAT times) x 2 targets"
timed c_shadowctl "$SHADOWCTL" replay "${CAPS[@]}" --primary "$PRIMARY" --shadow "$SHADOW" --max \
    --concurrency "$CONC" --limit $((REPEAT * N)) --out "$OUT/c.parquet" --summary-json "$OUT/c.json" -q
fi

# ---------------------------------------------------------------- (d) sampling cost
if [[ $STEPS == *d* ]]; then
SAMPLING=(--metrics "primary=$PRIMARY/metrics" --metrics "shadow=$SHADOW/metrics"
          --pid "nginx-primary=${NGINX_PIDS[0]}" --pid "nginx-shadow=${NGINX_PIDS[1]}"
          --metrics-interval 100ms)
for i in $(seq "$SAMPLING_RUNS"); do
    log "(d) run $i: --max without sampling, then with 4 sources every 100 ms"
    timed "d_plain_$i" "$SHADOWCTL" replay "$CAP" --primary "$PRIMARY" --shadow "$SHADOW" --max \
        --concurrency "$CONC" --limit "$N" --out "$OUT/d_plain.parquet" --summary-json "$OUT/d_plain_$i.json" -q
    timed "d_sampled_$i" "$SHADOWCTL" replay "$CAP" --primary "$PRIMARY" --shadow "$SHADOW" --max \
        --concurrency "$CONC" --limit "$N" --out "$OUT/d_sampled.parquet" --summary-json "$OUT/d_sampled_$i.json" -q \
        "${SAMPLING[@]}"
done
fi

# ---------------------------------------------------------------- report
python3 - "$OUT" "$N" "$REPEAT" "$RATE" "$STEPS" "$SAMPLING_RUNS" "$A_RUNS" <<'PY' | tee "$OUT/table.txt"
import json, os, statistics, sys
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

out, n, repeat, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
steps, sampling_runs, a_runs = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
notes = []

def timefile(name):
    # last line "wall_s maxrss_kb" (GNU time may add a status line first)
    try:
        w, m = open(f"{out}/{name}.time").read().split("\n")[-2].split()
        return float(w), int(m)
    except Exception:
        return float("nan"), 0

def rc(name):
    try:
        return int(open(f"{out}/{name}.rc").read())
    except Exception:
        return -1

def load(path):
    try:
        return json.load(open(path))
    except Exception as e:
        notes.append(f"{os.path.basename(path)}: unreadable ({e})")
        return {}

def oha(name):
    d = load(f"{out}/{name}.stdout")
    s = d.get("summary", {})
    p = d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    errs = d.get("errorDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    if errs:
        notes.append(f"{name}: errors {errs}")
    return s.get("requestsPerSec", float("nan")), (p.get("p99") or float("nan")) * 1e3, ok

def sc_problems(name, s):
    for t in s.get("targets", []):
        bad = sum(t["status_classes"][i] for i in (0, 1, 3, 4, 5))
        if t.get("errors") or bad:
            notes.append(f"{name}: target {t['name']} errors {t.get('errors')} non-2xx {bad}")
    if rc(name + "_shadowctl") != 0:
        notes.append(f"{name}: shadowctl exit code {rc(name + '_shadowctl')}")

def primary_sent(path):
    t = pq.read_table(path, columns=["role", "sent_ts", "error_kind"])
    t = t.filter(pc.equal(t["role"], "primary"))
    sent = t["sent_ts"].drop_null().cast(pa.int64())  # ns since the epoch
    span = (pc.max(sent).as_py() - pc.min(sent).as_py()) / 1e9 if len(sent) > 1 else float("nan")
    return len(t), len(sent), span

def target(s, name):
    return next((t for t in s.get("targets", []) if t["name"] == name), {})

rows = []
arss = 0
if "a" in steps:
    sc_runs, oha_runs = [], []
    for i in range(1, a_runs + 1):
        a = load(f"{out}/a_{i}.json"); sc_problems(f"a_{i}", a)
        aw, rss = timefile(f"a_{i}_shadowctl")
        arss = arss or rss
        sc_runs.append(2 * n / aw)
        o_rps, o_p99, o_ok = oha(f"a_{i}_oha")
        oha_runs.append(o_rps)
        notes.append(f"a run {i}: shadowctl wall {aw:.2f} s, summary elapsed {a.get('elapsed_s', 0):.2f} s, "
                     f"primary p50/p99 {target(a, 'primary').get('p50_ms', 0):.2f}/"
                     f"{target(a, 'primary').get('p99_ms', 0):.2f} ms; oha {o_ok} 2xx, p99 {o_p99:.2f} ms")
    a_total, o_rps = statistics.median(sc_runs), statistics.median(oha_runs)
    rows.append((f"(a) throughput, --max c=64", f"shadowctl req/s (2 targets, median of {a_runs})", f"{a_total:,.0f}",
                 "oha req/s (1 target)", f"{o_rps:,.0f}", f"ratio {a_total / o_rps:.2f} (>=1.0)"))
    notes.append("a runs (req/s): shadowctl " + " / ".join(f"{r:,.0f}" for r in sc_runs)
                 + "; oha " + " / ".join(f"{r:,.0f}" for r in oha_runs))
if "b" in steps:
    b = load(f"{out}/b.json"); sc_problems("b", b)
    rows_b, sent_b, span = primary_sent(f"{out}/b.parquet")
    b_rate = sent_b / span
    bp = target(b, "primary")
    q_rps, q_p99, q_ok = oha("b_oha")
    rows.append((f"(b) accuracy, --rate {rate:.0f}", "shadowctl achieved/s", f"{b_rate:,.0f}",
                 "oha achieved/s", f"{q_rps:,.0f}", f"ratio {b_rate / rate:.3f} / {q_rps / rate:.3f} of target"))
    rows.append(("", "shadowctl p99 ms (from due)", f"{bp.get('p99_ms', 0):.2f} ({bp.get('p99_from_due_ms', 0):.2f})",
                 "oha p99 ms", f"{q_p99:.2f}", ""))
    rows.append(("", "sc lag p50/p99/max ms", f"{b.get('lag_p50_ms', 0):.2f}/{b.get('lag_p99_ms', 0):.2f}/{b.get('lag_max_ms', 0):.2f}",
                 "sc sent_per_s (summary)", f"{b.get('sent_per_s', 0):,.0f}", ""))
    notes.append(f"b: {rows_b} primary rows, {sent_b} with sent_ts, first..last sent {span:.3f} s; oha {q_ok} 2xx")
if "c" in steps:
    c = load(f"{out}/c.json"); sc_problems("c", c)
    cw, crss = timefile("c_shadowctl")
    rows.append((f"(c) peak RSS, --max 2 targets", f"{n // 1000}k requests MB", f"{arss / 1024:.1f}",
                 f"{n * repeat // 1000}k requests MB", f"{crss / 1024:.1f}", f"ratio {crss / max(arss, 1):.2f}"))
    notes.append(f"c: {c.get('planned')} planned, {c.get('rows')} rows, wall {cw:.1f} s "
                 f"({2 * n * repeat / cw:,.0f} req/s total), lag max {c.get('lag_max_ms', 0):.0f} ms")
if "d" in steps:
    import statistics
    def rps(kind):
        walls = [timefile(f"d_{kind}_{k}")[0] for k in range(1, sampling_runs + 1)]
        return [2 * n / w for w in walls if w == w and w > 0]
    plain, sampled = rps("plain"), rps("sampled")
    for k in range(1, sampling_runs + 1):
        for kind in ("plain", "sampled"):
            d = load(f"{out}/d_{kind}_{k}.json")
            for t in d.get("targets", []):
                if t.get("errors"):
                    notes.append(f"d_{kind}_{k}: target {t['name']} errors {t['errors']}")
            if rc(f"d_{kind}_{k}") != 0:
                notes.append(f"d_{kind}_{k}: shadowctl exit code {rc(f'd_{kind}_{k}')}")
        m = d.get("metrics") or {}
        notes.append(f"d run {k}: sampled {m.get('samples')} samples in {m.get('scrapes')} readings, failures {m.get('failures')}")
    if plain and sampled:
        mp, ms = statistics.median(plain), statistics.median(sampled)
        rows.append((f"(d) sampling cost, --max c=64", "no sampling req/s (median)", f"{mp:,.0f}",
                     "4 sources every 100 ms req/s", f"{ms:,.0f}", f"ratio {ms / mp:.3f} (>=0.97)"))
        notes.append("d runs req/s: plain " + ", ".join(f"{x:,.0f}" for x in plain) + "; sampled " + ", ".join(f"{x:,.0f}" for x in sampled))

w = [max(len(r[i]) for r in rows) for i in range(6)]
for r in rows:
    print("  ".join(f"{v:<{w[i]}}" if i in (0, 1, 3, 5) else f"{v:>{w[i]}}" for i, v in enumerate(r)).rstrip())
for x in notes:
    print("  " + x)
PY
log "done in $((SECONDS - START_TIME))s"
if [[ $STEPS == *h* ]]; then bash "$HERE/h2.sh" replay; fi
