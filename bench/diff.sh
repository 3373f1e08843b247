#!/usr/bin/env bash
# diff.sh
#
# Benchmarks `shadowctl diff` (full field-level comparison, noise, drift,
# reports) against a pyarrow script that only counts exact body mismatches
# and latency percentiles, on the same results Parquet, in the same run:
# 1,000,000 exchanges (primary + one shadow) with small JSON answers, 2%
# divergent, made by `examples/make_results.rs`. Median of RUNS runs each;
# wall time and peak RSS from /usr/bin/time.
#
# Then streamed LLM answers: N_STREAMS (default 1,000,000) OpenAI chat
# streams of 50 events per side, 2% with a changed word; shadowctl diff
# (assembly, comparison, TTFT / token figures, full report) against a
# pyarrow script that only concatenates the deltas of each stream and
# counts differing texts. STREAM_RUNS runs each (default 1: it is long).
# STREAMS=0 skips this part.
#
# Uses target/release/shadowctl and target/release/examples/make_results
# (built here if missing). Outputs in bench-out/diff/ (git-ignored).
set -euo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$HERE/.." && pwd)
OUT=${OUT:-$ROOT/bench-out/diff}
N=${N:-1000000}
RUNS=${RUNS:-3}
SHADOWCTL=${SHADOWCTL:-$ROOT/target/release/shadowctl}
log() { echo "[diff-bench] $*" >&2; }
mkdir -p "$OUT"
[[ -x $SHADOWCTL && -x $ROOT/target/release/examples/make_results ]] || \
    (cd "$ROOT" && cargo build --release --bin shadowctl --example make_results)
[[ -x /usr/bin/time ]] || { log "installing time"; apt-get install -y -q time >/dev/null; }
python3 -c 'import pyarrow' 2>/dev/null || timeout 300 python3 -m pip install -q pyarrow
DATA=$OUT/results-$N.parquet
[[ -f $DATA ]] || { log "writing $N exchanges to $DATA"; "$ROOT/target/release/examples/make_results" "$N" 0.02 "$DATA"; }

cat > "$OUT/peer.py" <<'PY'
# The peer: exact body mismatches and latency percentiles with pyarrow.
import sys
import pyarrow.compute as pc
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1], columns=["exchange_id", "role", "response_body", "latency_ns"])
p = t.filter(pc.equal(t["role"], "primary")).sort_by("exchange_id")
s = t.filter(pc.equal(t["role"], "shadow")).sort_by("exchange_id")
mismatch = pc.sum(pc.not_equal(p["response_body"], s["response_body"]).cast("int64")).as_py()
q = lambda c: [x / 1e6 for x in pc.quantile(c, q=[0.5, 0.95, 0.99]).to_pylist()]
print(f"exchanges {len(p)} mismatches {mismatch} primary p50/p95/p99 ms {q(p['latency_ns'])} shadow {q(s['latency_ns'])}")
PY

run() { # run NAME CMD...: appends "wall_s rss_kb" to $OUT/NAME.times
    /usr/bin/time -o "$OUT/$1.t" -f '%e %M' "${@:2}" > "$OUT/$1.out" 2>&1 || true
    tail -n1 "$OUT/$1.t" >> "$OUT/$1.times"
}
rm -f "$OUT"/*.times
for i in $(seq "$RUNS"); do
    log "run $i/$RUNS"
    run peer python3 "$OUT/peer.py" "$DATA"
    run shadowctl "$SHADOWCTL" diff "$DATA" --json "$OUT/report.json" -q
done
python3 - "$OUT" <<'PY' | tee "$OUT/table.txt"
import json, statistics, sys
out = sys.argv[1]
def med(name):
    rows = [l.split() for l in open(f"{out}/{name}.times") if l.strip()]
    return statistics.median(float(w) for w, _ in rows), max(int(m) for _, m in rows) / 1024, [float(w) for w, _ in rows]
ps, prss, pruns = med("peer")
ss, srss, sruns = med("shadowctl")
r = json.load(open(f"{out}/report.json"))
v2 = r["overall"]["v2"]
print(f"pyarrow (exact mismatches + percentiles)  median {ps:.2f} s  runs {pruns}  peak RSS {prss:.0f} MB")
print(f"shadowctl diff (field-level, full report) median {ss:.2f} s  runs {sruns}  peak RSS {srss:.0f} MB")
print(f"speed ratio pyarrow/shadowctl {ps / ss:.2f} (>= 1 means shadowctl is no slower); RSS target < 300 MB")
print(f"shadowctl: {r['exchanges']} exchanges, {v2['divergent']} divergent ({v2['divergence_rate']*100:.2f}%), fields {[f['path'] for f in v2['fields']]}")
print("peer:", open(f"{out}/peer.out").read().strip())
PY

[[ ${STREAMS:-1} == 0 ]] && exit 0
N_STREAMS=${N_STREAMS:-1000000}
STREAM_RUNS=${STREAM_RUNS:-1}
SDATA=$OUT/streams-$N_STREAMS.parquet
[[ -f $SDATA ]] || { log "writing $N_STREAMS streamed answers per side to $SDATA"; "$ROOT/target/release/examples/make_results" "$N_STREAMS" 0.02 "$SDATA" streams; }
cat > "$OUT/peer_streams.py" <<'PY'
# The peer: assemble each streamed answer by concatenating its deltas (one
# json.loads per event), pair primary and shadow by exchange id as they
# come (memory stays flat), and count answers whose text differs.
import json, sys
import pyarrow.parquet as pq

def text(body):
    out = []
    for ev in body.split(b"\n\n"):
        if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
            continue
        ch = json.loads(ev[6:])["choices"]
        if ch:
            c = ch[0]["delta"].get("content")
            if c:
                out.append(c)
    return "".join(out)

f = pq.ParquetFile(sys.argv[1])
waiting, answers, differ = {}, 0, 0
for b in f.iter_batches(columns=["exchange_id", "response_body"], batch_size=8192):
    d = b.to_pydict()
    for i, body in zip(d["exchange_id"], d["response_body"]):
        t = text(body)
        other = waiting.pop(i, None)
        if other is None:
            waiting[i] = t
        else:
            answers += 1
            differ += other != t
print(f"answers {answers} differing texts {differ}")
PY
for i in $(seq "$STREAM_RUNS"); do
    log "streams run $i/$STREAM_RUNS"
    run peer_streams python3 "$OUT/peer_streams.py" "$SDATA"
    run shadowctl_streams "$SHADOWCTL" diff "$SDATA" --json "$OUT/report-streams.json" -q
done
python3 - "$OUT" <<'PY' | tee -a "$OUT/table.txt"
import json, statistics, sys
out = sys.argv[1]
def med(name):
    rows = [l.split() for l in open(f"{out}/{name}.times") if l.strip()]
    return statistics.median(float(w) for w, _ in rows), max(int(m) for _, m in rows) / 1024, [float(w) for w, _ in rows]
ps, prss, pruns = med("peer_streams")
ss, srss, sruns = med("shadowctl_streams")
r = json.load(open(f"{out}/report-streams.json"))
v2 = r["overall"]["v2"]
print(f"streams: pyarrow (concatenate deltas, count differing texts) median {ps:.2f} s  runs {pruns}  peak RSS {prss:.0f} MB")
print(f"streams: shadowctl diff (assembled answers, TTFT/tokens, full report) median {ss:.2f} s  runs {sruns}  peak RSS {srss:.0f} MB")
print(f"streams: speed ratio pyarrow/shadowctl {ps / ss:.2f} (>= 1 means shadowctl is no slower); RSS target < 300 MB")
print(f"streams: shadowctl {r['exchanges']} exchanges, {v2['divergent']} divergent, fields {[f['path'] for f in v2['fields']]}, TTFT p50 {v2['llm']['ttft_ms']['primary']['p50']:.1f} ms")
print("streams: peer:", open(f"{out}/peer_streams.out").read().strip())
PY
