//! IP and TCP: from an IP packet to a TCP segment, reassembling IP fragments.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use etherparse::defrag::IpDefragPool;
use etherparse::{ip_number, LaxIpSlice, SlicedPacket, TcpSlice};

use super::link::SkipReason;

/// TCP flags we act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// One TCP segment with its payload.
#[derive(Debug)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: Flags,
    pub payload: Cow<'a, [u8]>,
    /// Payload bytes that were on the wire but not captured (snaplen).
    pub missing: u32,
}

/// IP fragment reassembly, bounded in the number of packets it waits for.
pub struct Defragmenter {
    pool: IpDefragPool<i64, ()>,
    pending: usize,
    max_pending: usize,
    /// Fragment sets given up (expired, evicted or inconsistent).
    pub dropped: u64,
    /// Capture time of the last sweep for sets that will never complete.
    swept_ns: i64,
}

/// A fragment set not completed this long after its last fragment never
/// will be (Linux gives up after 30 s too, `ipfrag_time`): its memory goes.
const FRAGMENT_TIMEOUT_NS: i64 = 30_000_000_000;

impl Defragmenter {
    pub fn new(max_pending: usize) -> Self {
        Self {
            pool: IpDefragPool::new(),
            pending: 0,
            max_pending,
            dropped: 0,
            swept_ns: i64::MIN,
        }
    }

    /// Called with every packet's time: at most once a second of capture
    /// time, forget sets idle past the timeout, so a host that saw a few
    /// fragments once does not hold them for the rest of a long capture.
    pub fn tick(&mut self, now_ns: i64) {
        if self.pending == 0 || now_ns.saturating_sub(self.swept_ns) < 1_000_000_000 {
            return;
        }
        self.swept_ns = now_ns;
        self.expire(now_ns.saturating_sub(FRAGMENT_TIMEOUT_NS));
    }

    /// Forget fragment sets last touched before `cutoff_ns`.
    pub fn expire(&mut self, cutoff_ns: i64) {
        if self.pending == 0 {
            return;
        }
        // Counted in a pass of its own: `retain` may call its predicate
        // twice for an element (a first scan, then the filtering), so
        // counting inside the real predicate counted sets twice.
        let (kept, dropped) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0u64));
        self.pool.retain(|ts| {
            if *ts >= cutoff_ns {
                kept.set(kept.get() + 1);
            } else {
                dropped.set(dropped.get() + 1);
            }
            true
        });
        if dropped.get() > 0 {
            self.pool.retain(|ts| *ts >= cutoff_ns);
        }
        self.pending = kept.get();
        self.dropped += dropped.get();
    }

    fn add(&mut self, packet: &[u8], ts_ns: i64) -> Result<Option<Vec<u8>>, SkipReason> {
        let sliced = SlicedPacket::from_ip(packet).map_err(|_| SkipReason::IpMalformed)?;
        match self.pool.process_sliced_packet(&sliced, ts_ns, ()) {
            Ok(Some(done)) => {
                self.pending = self.pending.saturating_sub(1);
                if done.ip_number != ip_number::TCP {
                    return Err(SkipReason::NotTcp);
                }
                Ok(Some(done.payload))
            }
            Ok(None) => {
                self.pending += 1;
                if self.pending > self.max_pending {
                    // Memory bound: drop everything older than this packet.
                    self.expire(ts_ns);
                }
                Ok(None)
            }
            Err(_) => {
                self.dropped += 1;
                Err(SkipReason::IpMalformed)
            }
        }
    }
}

/// Decode an IP packet into a TCP segment. `Ok(None)` means "kept for later"
/// (an IP fragment waiting for the rest of its datagram).
pub fn decode<'a>(
    packet: &'a [u8],
    ts_ns: i64,
    defrag: &mut Defragmenter,
) -> Result<Option<Segment<'a>>, SkipReason> {
    let (ip, _) = LaxIpSlice::from_slice(packet).map_err(|e| match e {
        etherparse::err::ip::LaxHeaderSliceError::Len(_) => SkipReason::Truncated,
        _ => SkipReason::IpMalformed,
    })?;
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    let payload = ip.payload();
    if payload.ip_number != ip_number::TCP {
        return Err(SkipReason::NotTcp);
    }
    if payload.fragmented {
        return match defrag.add(packet, ts_ns)? {
            Some(datagram) => tcp_owned(src, dst, datagram).map(Some),
            None => Ok(None),
        };
    }
    // The length the IP header claims, to know what snaplen cut off.
    let header_len = payload.payload.as_ptr() as usize - packet.as_ptr() as usize;
    let claimed = match &ip {
        LaxIpSlice::Ipv4(v4) => v4.header().total_len() as usize,
        LaxIpSlice::Ipv6(v6) => 40 + v6.header().payload_length() as usize,
    }
    .saturating_sub(header_len);
    let tcp = TcpSlice::from_slice(payload.payload).map_err(|e| match e {
        etherparse::err::tcp::HeaderSliceError::Len(_) => SkipReason::Truncated,
        _ => SkipReason::TcpMalformed,
    })?;
    let captured = payload.payload.len();
    let missing = if payload.incomplete {
        claimed.saturating_sub(captured) as u32
    } else {
        0
    };
    Ok(Some(segment(
        src,
        dst,
        &tcp,
        Cow::Borrowed(tcp.payload()),
        missing,
    )))
}

fn tcp_owned<'a>(src: IpAddr, dst: IpAddr, datagram: Vec<u8>) -> Result<Segment<'a>, SkipReason> {
    let tcp = TcpSlice::from_slice(&datagram).map_err(|_| SkipReason::TcpMalformed)?;
    let header_len = tcp.header_len();
    let mut seg = segment(src, dst, &tcp, Cow::Borrowed(&[][..]), 0);
    let mut data = datagram;
    data.drain(..header_len);
    seg.payload = Cow::Owned(data);
    Ok(seg)
}

fn segment<'a>(
    src: IpAddr,
    dst: IpAddr,
    tcp: &TcpSlice<'_>,
    payload: Cow<'a, [u8]>,
    missing: u32,
) -> Segment<'a> {
    Segment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: Flags {
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
        },
        payload,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_packet(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1234, 80, 1000, 64000)
            .ack(7);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn decodes_tcp_and_reports_snaplen_cut() {
        let pkt = tcp_packet(b"GET / HTTP/1.1\r\n\r\n");
        let mut d = Defragmenter::new(16);
        let seg = decode(&pkt, 0, &mut d).unwrap().unwrap();
        assert_eq!(seg.src.to_string(), "10.0.0.1:1234");
        assert_eq!(seg.seq, 1000);
        assert_eq!(&*seg.payload, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(seg.missing, 0);
        let cut = &pkt[..pkt.len() - 5];
        let seg = decode(cut, 0, &mut d).unwrap().unwrap();
        assert_eq!(seg.missing, 5);
        assert_eq!(&*seg.payload, b"GET / HTTP/1.");
    }

    #[test]
    fn reassembles_ipv4_fragments() {
        let pkt = tcp_packet(&[b'x'; 48]);
        // Split the IP payload (20 TCP + 48 data) at 40 bytes into two fragments.
        let header = &pkt[..20];
        let body = &pkt[20..];
        let frag = |part: &[u8], offset_units: u16, more: bool| {
            let mut h = header.to_vec();
            let total = (20 + part.len()) as u16;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            let field = offset_units | if more { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&field.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            h.extend_from_slice(part);
            h
        };
        let mut d = Defragmenter::new(16);
        assert!(decode(&frag(&body[40..], 5, false), 1, &mut d)
            .unwrap()
            .is_none());
        let first = frag(&body[..40], 0, true);
        let seg = decode(&first, 2, &mut d).unwrap().unwrap();
        assert_eq!(seg.payload.len(), 48);
        assert_eq!(seg.dst.port(), 80);
        // A set whose first fragment never comes is forgotten after 30 s,
        // not held for the rest of the capture; its late first fragment
        // then waits alone rather than completing a stale datagram.
        let s = 1_000_000_000;
        assert!(decode(&frag(&body[40..], 5, false), 10 * s, &mut d)
            .unwrap()
            .is_none());
        d.tick(39 * s);
        assert_eq!(d.dropped, 0);
        d.tick(41 * s);
        assert_eq!(d.dropped, 1);
        assert!(decode(&first, 42 * s, &mut d).unwrap().is_none());
    }
}
