#!/usr/bin/env python3
"""Write midframe-both.pcap: an h2c connection picked up in the middle of a
DATA frame on both sides (no handshake, no preface), after which stream 3
goes out and comes back frame-aligned. A capture must find the frame
boundary on the later segments, not give up after the first ones.

Usage: python3 make-midframe.py OUT.pcap   (standard library only)
"""
import struct
import sys


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip(a):
    return bytes(int(x) for x in a.split("."))


def packet(src, sport, dst, dport, seq, ack, payload):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 65535, 0, 0)
    pseudo = ip(src) + ip(dst) + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp + payload)) + tcp[18:]
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, ip(src), ip(dst))
    iph = iph[:10] + struct.pack("!H", csum(iph)) + iph[12:]
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + iph + tcp + payload


def frame(kind, flags, stream, payload):
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


def literal(name, value):
    # Literal without indexing, new name; short strings only.
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


HEADERS, DATA, PING = 1, 0, 6
END_STREAM, END_HEADERS = 1, 4
ends = [("10.0.0.1", 40000), ("10.0.0.2", 8080)]
seq = [1000, 5000]
out = []


def send(side, payload):
    (s, sp), (d, dp) = ends[side], ends[1 - side]
    out.append(packet(s, sp, d, dp, seq[side], seq[1 - side], payload))
    seq[side] += len(payload)


send(0, b"x" * 30)  # the tail of a DATA frame begun before the capture
send(1, b"y" * 20)
request = literal(":method", "POST") + literal(":path", "/three") + literal(":scheme", "http") + literal(":authority", "a")
send(0, frame(HEADERS, END_HEADERS | END_STREAM, 3, request) + frame(PING, 0, 0, b"\0" * 8))
send(1, frame(HEADERS, END_HEADERS, 3, literal(":status", "200")) + frame(DATA, END_STREAM, 3, b"three"))

with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, p in enumerate(out):
        f.write(struct.pack("<IIII", 1_700_000_000, 1000 * (i + 1), len(p), len(p)))
        f.write(p)
