#!/usr/bin/env bash
# The whole pipeline on a small model-serving API, in under a minute:
#   1. start demo services v1 (primary) and v2 (shadow, with seeded
#      regressions) on free loopback ports;
#   2. capture 1,500 requests sent to v1 live from the loopback interface
#      (needs root or CAP_NET_RAW; otherwise the bundled capture
#      testdata/demo-services.pcap of the same traffic is used; DEMO_NO_LIVE=1
#      forces that);
#   3. replay the capture against v1 and v2;
#   4. diff with testdata/demo-shadow.toml: the verdict, its reasons, and
#      reports in demo-out/;
#   5. replay --until-decided: the same gate while sending, stopping as
#      soon as it is decided.
# Everything it starts is stopped on exit; traffic stays on 127.0.0.1.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-demo-out}
BIN=${BIN:-target/release}
SC=$BIN/shadowctl
SVC=$BIN/examples/demo_service
N=${N:-1500}
for b in "$SC" "$SVC"; do
    [[ -x $b ]] || { echo "no $b: build with: cargo build --release --bin shadowctl --example demo_service (or set BIN to the directory that holds them)" >&2; exit 1; }
done
mkdir -p "$OUT"
# Old reports too: a failed step must not leave the last run's to be read as this one's.
rm -f "$OUT"/*.parquet "$OUT"/*.port "$OUT"/capture.err "$OUT"/*.json "$OUT"/report.* \
    "$OUT"/junit.xml "$OUT"/divergences.jsonl
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*"; }
wait_file() { for _ in $(seq 100); do [[ -s $1 ]] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }

say "starting demo services v1 (primary) and v2 (shadow)"
"$SVC" serve v1 "$OUT/v1.port" & PIDS+=($!)
"$SVC" serve v2 "$OUT/v2.port" & PIDS+=($!)
wait_file "$OUT/v1.port"; wait_file "$OUT/v2.port"
V1=$(cat "$OUT/v1.port"); V2=$(cat "$OUT/v2.port")
echo "v1 on 127.0.0.1:$V1, v2 on 127.0.0.1:$V2"

CAP=$OUT/exchanges.parquet
LIVE=0
if [[ -z ${DEMO_NO_LIVE:-} ]]; then
    "$SC" capture --interface lo --port "$V1" --out "$CAP" --duration 30 -q 2> "$OUT/capture.err" &
    CAP_PID=$!
    PIDS+=("$CAP_PID")
    sleep 1.5
    kill -0 "$CAP_PID" 2>/dev/null && LIVE=1
fi
if (( LIVE )); then
    say "capturing live on lo (port $V1) while sending $N requests to v1"
    "$SVC" load "$V1" "$N"
    sleep 0.5
    kill -INT "$CAP_PID" 2>/dev/null || true
    wait "$CAP_PID" || true
    if [[ ! -s $CAP ]]; then
        say "the live capture wrote nothing ($(tail -n1 "$OUT/capture.err")); using the bundled testdata/demo-services.pcap"
        "$SC" capture --read testdata/demo-services.pcap --out "$CAP" -q
    fi
else
    if [[ -n ${DEMO_NO_LIVE:-} ]]; then why="DEMO_NO_LIVE is set"; else why="it did not start: $(tail -n1 "$OUT/capture.err")"; fi
    say "not capturing live ($why); using the bundled testdata/demo-services.pcap"
    "$SC" capture --read testdata/demo-services.pcap --out "$CAP" -q
fi

say "replaying against v1 and v2"
"$SC" replay "$CAP" --primary "http://127.0.0.1:$V1" --shadow "v2=http://127.0.0.1:$V2" \
    --rate 1000 --out "$OUT/results.parquet" -q \
    --metrics "primary=http://127.0.0.1:$V1/metrics" --metrics "v2=http://127.0.0.1:$V2/metrics" \
    --metrics-interval 100ms

say "diff"
rc=0
"$SC" diff "$OUT/results.parquet" "$OUT/results.metrics.parquet" --config testdata/demo-shadow.toml \
    --json "$OUT/report.json" --markdown "$OUT/report.md" --html "$OUT/report.html" \
    --junit "$OUT/junit.xml" --divergences "$OUT/divergences.jsonl" || rc=$?
case $rc in 0|1|3) ;; *) echo "diff failed (exit $rc)" >&2; exit "$rc" ;; esac
say "replay until decided: the gate looked at as answers come in, stopping once decided"
"$SC" replay "$CAP" --primary "http://127.0.0.1:$V1" --shadow "v2=http://127.0.0.1:$V2" \
    --rate 1000 --until-decided --config testdata/demo-shadow.toml \
    --out "$OUT/until-decided.parquet" --summary-json "$OUT/until-decided.json" | sed -n '/^until decided/,$p' || true
say "reports"
# OUT may be absolute (OUT=/tmp/x): print it as it is, else under ROOT.
case $OUT in /*) SHOWN=$OUT ;; *) SHOWN=$ROOT/$OUT ;; esac
for f in report.html report.md report.json junit.xml divergences.jsonl; do echo "  $SHOWN/$f"; done
case $rc in
    1) echo "verdict NO-GO, as seeded: v2 flips labels, drops price, spends 4x the CPU per inference, and its chat answers move away from v1's wording; its slower /embed and later first token are named UNDECIDED (300 answers cannot bound a p99 from above) with the exchanges that would decide them" ;;
    0|3) echo "unexpected verdict (exit $rc): the seeded regressions were not all caught" >&2; exit 1 ;;
    *) exit "$rc" ;;
esac
