#!/usr/bin/env bash
# Record the HTTP/2 capture fixtures in this folder from real clients and
# servers on loopback, with tshark's http2 dissector as the oracle:
#   nghttp.pcap    nghttpd and nghttp with prior knowledge (GETs, a POST, a
#                  30 KB header split into CONTINUATION frames, padded
#                  frames, PRIORITY frames) and an h2load run
#   upgrade.pcap   curl and nghttp upgrading with `Upgrade: h2c` to hyper-h2,
#                  one connection of 120 streams whose answers fill and evict
#                  the server's HPACK table
#   grpc.pcap      grpcio client against the grpcio primary and shadow
#                  (unary and server-streaming; UNAVAILABLE from the shadow)
#   grpc-midway.pcap, upgrade-midway.pcap
#                  the same connections with their first packets cut off,
#                  as a capture started mid-connection sees them
#   grpc-lossy.pcap  grpc.pcap with two packets from the middle dropped
#   grpc-primary.pcap  grpc.pcap's connections to the primary only
# and X.tshark.tsv for each full capture. Needs root (tcpdump), nghttp2-client,
# nghttp2-server, curl, tshark, editcap and ../../.venv (grpcio, grpcio-tools, h2).
set -euo pipefail
cd "$(dirname "$0")"
PY=../../.venv/bin/python
[ -x "$PY" ] || { echo "make-captures: run scripts/test-venv.sh first" >&2; exit 1; }
for t in nghttpd nghttp h2load curl tcpdump tshark editcap; do
  command -v "$t" >/dev/null || { echo "make-captures: $t missing" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

P_NGHTTPD=18461 P_UPGRADE=18462 P_PRIMARY=18463 P_SHADOW=18464

record() { # FILE FILTER: start tcpdump, wait until it listens
  tcpdump -i lo -B 65536 -U --immediate-mode -w "$1" "$2" 2>"$work/tcpdump.log" & pids+=($!)
  # "listening" comes a moment before packets are really captured.
  for _ in $(seq 50); do grep -q listening "$work/tcpdump.log" && { sleep 1; return; }; sleep 0.1; done
  echo "make-captures: tcpdump did not start" >&2; exit 1
}
stop_recording() { sleep 1; kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; }
wait_line() { # LOG: wait for "listening"
  for _ in $(seq 100); do grep -q listening "$1" 2>/dev/null && return; sleep 0.1; done
  echo "make-captures: server did not start ($1)" >&2; exit 1
}

# --- nghttp2 ---------------------------------------------------------------
mkdir -p "$work/www"
echo '{"model":"resnet","ok":true}' > "$work/www/a.json"
head -c 20000 /dev/urandom | base64 > "$work/www/big.txt"
echo hello > "$work/www/index.html"
nghttpd --no-tls -d "$work/www" "$P_NGHTTPD" >"$work/nghttpd.log" 2>&1 & pids+=($!)
sleep 0.5
record nghttp.pcap "tcp port $P_NGHTTPD"
base=http://127.0.0.1:$P_NGHTTPD
nghttp -n "$base/a.json" "$base/big.txt" "$base/index.html" "$base/missing"
nghttp -n -d "$work/www/a.json" "$base/a.json"
nghttp -n -H "x-big: $(head -c 30000 /dev/zero | tr '\0' a)" "$base/index.html"
nghttp -n -b 17 "$base/a.json" "$base/big.txt"
h2load -n 100 -c 2 -m 2 "$base/a.json" "$base/index.html" >/dev/null
stop_recording

# --- Upgrade: h2c ------------------------------------------------------------
"$PY" h2c_upgrade_server.py "$P_UPGRADE" >"$work/upgrade.log" 2>&1 & pids+=($!)
wait_line "$work/upgrade.log"
record upgrade.pcap "tcp port $P_UPGRADE"
base=http://127.0.0.1:$P_UPGRADE
curl -s --http2 "$base/first" "$base/second" >/dev/null
urls=(); for i in $(seq 1 120); do urls+=("$base/item/$i"); done
nghttp -nu "${urls[@]}"
stop_recording

# --- gRPC ------------------------------------------------------------------
"$PY" ../grpc/grpc_server.py "$P_PRIMARY" primary >"$work/primary.log" 2>&1 & pids+=($!)
"$PY" ../grpc/grpc_server.py "$P_SHADOW" shadow >"$work/shadow.log" 2>&1 & pids+=($!)
wait_line "$work/primary.log"; wait_line "$work/shadow.log"
record grpc.pcap "tcp port $P_PRIMARY or tcp port $P_SHADOW"
"$PY" ../grpc/grpc_client.py "$P_PRIMARY" 60
"$PY" ../grpc/grpc_client.py "$P_SHADOW" 60
stop_recording

# What a capture on the primary's host holds: its connections only.
tshark -r grpc.pcap -Y "tcp.port == $P_PRIMARY" -F pcap -w grpc-primary.pcap

# Mid-connection: drop the packets that carried the preface, SETTINGS and the
# first requests (whose header blocks filled the HPACK tables).
editcap -F pcap upgrade.pcap upgrade-midway.pcap 1-12
editcap -F pcap grpc.pcap grpc-midway.pcap 1-39
# Loss: two packets from the middle of the first gRPC connection are
# dropped, the first of them carrying a header block.
lost=$(tshark -r grpc.pcap -d "tcp.port==$P_PRIMARY,http2" -Y 'http2.type == 1 && tcp.stream == 0' \
  -T fields -e frame.number | sed -n 60p)
editcap -F pcap grpc.pcap grpc-lossy.pcap "$lost" "$((lost + 1))"

# The full captures must be whole (tcpdump can drop under h2load's burst).
for f in nghttp.pcap upgrade.pcap grpc.pcap; do
  lost=$(tshark -r "$f" -Y tcp.analysis.lost_segment -T fields -e frame.number | wc -l)
  [ "$lost" = 0 ] || { echo "make-captures: $f lost $lost segments; run again" >&2; exit 1; }
done

oracle() { # PCAP DECODE-AS...
  local pcap=$1; shift
  local args=(); for d in "$@"; do args+=(-d "$d"); done
  "$PY" - "$pcap" "${args[@]}" > "${pcap%.pcap}.tshark.tsv" <<'PYEOF'
import json, subprocess, sys
pcap, args = sys.argv[1], sys.argv[2:]
out = subprocess.run(["tshark", "-r", pcap, *args, "-Y", "http2.type == 1", "-T", "json",
                      "--no-duplicate-keys"], capture_output=True, check=True).stdout
def aslist(x): return x if isinstance(x, list) else [x]
rows, order = {}, []
for pkt in json.loads(out):
    layers = pkt["_source"]["layers"]
    tcp = layers["tcp"]["tcp.stream"]
    for h2 in aslist(layers.get("http2", [])):
        for st in aslist(h2.get("http2.stream", [])):
            if st.get("http2.type") != "1":
                continue
            key = (tcp, st["http2.streamid"])
            if key not in rows:
                rows[key] = {}
                order.append(key)
            r = rows[key]
            for h in aslist(st.get("http2.header", [])):
                n, v = h.get("http2.header.name"), h.get("http2.header.value") or ""
                if n in (":method", ":path", ":authority") and n not in r:
                    r[n] = v
                if n == ":status" and not v.startswith("1"):
                    r.setdefault(n, v)
                if n == "grpc-status":
                    r[n] = v
print("# tshark http2 dissector: one row per stream with a HEADERS frame")
print("tcp_stream\tstream_id\tmethod\tpath\tauthority\tstatus\tgrpc_status")
for k in order:
    r = rows[k]
    cols = [r.get(n, "") for n in (":method", ":path", ":authority", ":status", "grpc-status")]
    print("\t".join([*k, *cols]))
PYEOF
}
oracle nghttp.pcap "tcp.port==$P_NGHTTPD,http2"
oracle upgrade.pcap "tcp.port==$P_UPGRADE,http"
oracle grpc.pcap "tcp.port==$P_PRIMARY,http2" "tcp.port==$P_SHADOW,http2"
ls -l ./*.pcap ./*.tsv
