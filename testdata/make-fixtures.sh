#!/usr/bin/env bash
# Rebuild the capture fixtures in this folder from real loopback traffic.
# Needs root (tcpdump on lo) and python3. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 fixture_server.py "$port" & server=$!
trap 'kill $server 2>/dev/null || true; kill $dump 2>/dev/null || true' EXIT
tcpdump -i lo -s 0 -U -w demo.pcap "tcp port $port" 2>/dev/null & dump=$!
sleep 1
python3 fixture_client.py "$port"
sleep 1
kill -INT $dump; wait $dump || true
# A copy cut in the middle of a record, for the truncated-input tests.
size=$(stat -c %s demo.pcap)
head -c $((size * 2 / 3)) demo.pcap > truncated.pcap
python3 - <<'PY'
# A pcap whose header is valid but whose packets are random bytes.
import random, struct
random.seed(7)
with open("garbage.pcap", "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
    for i in range(200):
        n = random.randint(0, 300)
        f.write(struct.pack("<IIII", 1700000000 + i, 0, n, n))
        f.write(bytes(random.getrandbits(8) for _ in range(n)))
PY
# The first 60 packets in other container formats: pcapng, nanosecond pcap,
# big-endian pcap. Same packets, same timestamps.
editcap -F pcap -r demo.pcap small.pcap 1-60
editcap -F pcapng small.pcap small.pcapng
editcap -F nsecpcap small.pcap small-ns.pcap
python3 - <<'PY'
# Rewrite small.pcap with big-endian headers (as written on SPARC/PowerPC).
import struct
data = open("small.pcap", "rb").read()
magic, vmaj, vmin, zone, sig, snap, link = struct.unpack("<IHHiIII", data[:24])
out = [struct.pack(">IHHiIII", magic, vmaj, vmin, zone, sig, snap, link)]
at = 24
while at < len(data):
    sec, usec, incl, orig = struct.unpack("<IIII", data[at:at + 16])
    out.append(struct.pack(">IIII", sec, usec, incl, orig))
    out.append(data[at + 16:at + 16 + incl])
    at += 16 + incl
open("small-be.pcap", "wb").write(b"".join(out))
PY
# The demo services' traffic: 1,500 requests of the demo mix sent to
# `demo_service serve v1` (built by `cargo build --example demo_service`).
SVC=../target/debug/examples/demo_service
if [[ -x $SVC ]]; then
    D=$(mktemp -d)
    "$SVC" serve v1 "$D/v1.port" & SVC_PID=$!
    for _ in $(seq 100); do [[ -s $D/v1.port ]] && break; sleep 0.05; done
    PORT=$(cat "$D/v1.port")
    tcpdump -i lo -B 65536 -s 0 -w demo-services.pcap "tcp port $PORT" 2>"$D/tcpdump.err" & DUMP_PID=$!
    sleep 1
    "$SVC" load "$PORT" 1500
    sleep 0.5
    kill -INT "$DUMP_PID"; wait "$DUMP_PID" || true
    kill "$SVC_PID"
    grep -q " 0 packets dropped by kernel" "$D/tcpdump.err" || { echo "kernel drops: $(cat "$D/tcpdump.err")" >&2; exit 1; }
else
    echo "demo-services.pcap not rebuilt: build the demo_service example first" >&2
fi
# Secrets in bodies (an OAuth password grant, a JSON login, a completion
# whose `token` fields are data): secrets_fixture.py is server and client.
SPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tcpdump -i lo -s 0 -U -w secrets.pcap "tcp port $SPORT" 2>/dev/null & SDUMP=$!
sleep 1
python3 secrets_fixture.py "$SPORT"
sleep 1
kill -INT $SDUMP; wait $SDUMP || true
echo "fixtures written"
