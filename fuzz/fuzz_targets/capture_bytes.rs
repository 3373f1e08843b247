//! Fuzz the bytes -> exchanges path two ways with one input:
//! 1. as a capture file (a pcap header is added when the input has no magic),
//!    through link, IP, TCP, reassembly and HTTP;
//! 2. as a script of TCP segments on one connection, which reaches deep into
//!    reassembly and HTTP framing (random files rarely form valid TCP).
#![no_main]

use std::borrow::Cow;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use shadowctl::capture::net::{Flags, Segment};
use shadowctl::capture::reassembly::{Reassembler, ReassemblyConfig};
use shadowctl::capture::source::packets_in;
use shadowctl::capture::{CaptureStats, Pipeline};

fn as_capture(data: &[u8]) {
    let mut image;
    let bytes = if matches!(data.get(..4), Some([0xd4, 0xc3, 0xb2, 0xa1] | [0x0a, 0x0d, 0x0d, 0x0a])) {
        data
    } else {
        let linktype = [1u32, 0, 101, 113, 127, 239, 276, 104, 9][*data.first().unwrap_or(&0) as usize % 9];
        image = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        image.extend_from_slice(&linktype.to_le_bytes());
        image.extend_from_slice(data);
        &image
    };
    let mut p = Pipeline::new(ReassemblyConfig::default());
    let _ = packets_in(bytes, "fuzz", |pkt, _| p.packet(&pkt), &|| false);
    // What the writer thread does to every row before writing it.
    if let Some(mut rows) = p.finish() {
        let _ = shadowctl::capture::redact_rows(&mut rows, &Default::default());
    }
}

fn as_segments(data: &[u8]) {
    let c: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let s: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let mut r = Reassembler::new(ReassemblyConfig {
        max_conn_buffer: 4096,
        max_buffer_bytes: 16384,
        ..Default::default()
    });
    let mut stats = CaptureStats::default();
    let mut seqs = [1000u32, 9000u32];
    let mut rest = data;
    let mut ts = 0;
    // Each record: flags, sequence delta (i16), length, then the bytes.
    while rest.len() >= 4 {
        let (f, delta, len) = (rest[0], i16::from_le_bytes([rest[1], rest[2]]), rest[3] as usize);
        let body = &rest[4..(4 + len).min(rest.len())];
        rest = &rest[(4 + len).min(rest.len())..];
        let side = usize::from(f & 1);
        let seq = seqs[side].wrapping_add(delta as i32 as u32);
        seqs[side] = seq.wrapping_add(body.len() as u32);
        let seg = Segment {
            src: if side == 0 { c } else { s },
            dst: if side == 0 { s } else { c },
            seq,
            ack: seqs[1 - side],
            flags: Flags { syn: f & 2 != 0, ack: f & 4 != 0, fin: f & 8 != 0, rst: f & 16 != 0 },
            payload: Cow::Borrowed(body),
            missing: u32::from(f >> 5) * 7,
        };
        ts += 1;
        r.segment(&seg, ts, &mut stats);
    }
    r.finish(&mut stats);
    let _ = r.take_exchanges();
}

fuzz_target!(|data: &[u8]| {
    as_capture(data);
    as_segments(data);
});
