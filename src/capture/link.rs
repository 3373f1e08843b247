//! Link layers: from a captured frame to the IP packet inside it.
//!
//! Written by hand because no crate covers the set we meet in real captures
//! (etherparse parses Ethernet and SLL v1 only; SLL2, NFLOG, radiotap/802.11,
//! Cisco HDLC, PPPoE and stacked VLAN tags need their own few lines each).

/// Why a frame carries no IP packet we can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    UnsupportedLinkType,
    NotIp,
    Truncated,
    Encrypted80211,
    Not80211Data,
    IpFragmentPending,
    IpMalformed,
    NotTcp,
    TcpMalformed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedLinkType => "unsupported_link_type",
            Self::NotIp => "not_ip",
            Self::Truncated => "truncated_headers",
            Self::Encrypted80211 => "encrypted_80211",
            Self::Not80211Data => "not_80211_data",
            Self::IpFragmentPending => "ip_fragment_pending",
            Self::IpMalformed => "ip_malformed",
            Self::NotTcp => "not_tcp",
            Self::TcpMalformed => "tcp_malformed",
        }
    }
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const ETH_PPPOE_SESSION: u16 = 0x8864;
const ETH_MPLS: [u16; 2] = [0x8847, 0x8848];

/// LINKTYPE_* values we understand.
pub mod linktype {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    pub const PPP: i32 = 9;
    pub const RAW: i32 = 101;
    pub const RAW_OPENBSD: i32 = 12;
    pub const RAW_ALT: i32 = 14;
    pub const C_HDLC: i32 = 104;
    pub const IEEE802_11: i32 = 105;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IEEE802_11_RADIOTAP: i32 = 127;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const NFLOG: i32 = 239;
    pub const LINUX_SLL2: i32 = 276;
    pub const PPP_HDLC: i32 = 50;
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

/// The IP packet inside a frame of the given link type.
pub fn ip_payload(linktype: i32, frame: &[u8]) -> Result<&[u8], SkipReason> {
    use linktype::*;
    match linktype {
        ETHERNET => ethernet(frame),
        LINUX_SLL => ethertype_payload(
            be16(frame, 14).ok_or(SkipReason::Truncated)?,
            frame.get(16..),
        ),
        LINUX_SLL2 => ethertype_payload(
            be16(frame, 0).ok_or(SkipReason::Truncated)?,
            frame.get(20..),
        ),
        NULL | LOOP => bsd_loopback(linktype, frame),
        RAW | RAW_OPENBSD | RAW_ALT | IPV4 | IPV6 => by_version(frame),
        C_HDLC => ethertype_payload(be16(frame, 2).ok_or(SkipReason::Truncated)?, frame.get(4..)),
        PPP | PPP_HDLC => ppp(frame),
        IEEE802_11 => wifi(frame),
        IEEE802_11_RADIOTAP => {
            let len = frame
                .get(2..4)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or(SkipReason::Truncated)?;
            wifi(frame.get(len..).ok_or(SkipReason::Truncated)?)
        }
        NFLOG => nflog(frame),
        _ => Err(SkipReason::UnsupportedLinkType),
    }
}

fn ethertype_payload(ethertype: u16, rest: Option<&[u8]>) -> Result<&[u8], SkipReason> {
    let mut ethertype = ethertype;
    let mut rest = rest.ok_or(SkipReason::Truncated)?;
    // Bounded: each round strips at least four bytes.
    loop {
        match ethertype {
            ETH_IPV4 | ETH_IPV6 => return Ok(rest),
            t if ETH_VLAN.contains(&t) => {
                ethertype = be16(rest, 2).ok_or(SkipReason::Truncated)?;
                rest = &rest[4..];
            }
            ETH_PPPOE_SESSION => {
                // 6-byte PPPoE header, then PPP (its protocol field may be
                // compressed to one byte).
                return ppp(rest.get(6..).ok_or(SkipReason::Truncated)?);
            }
            t if ETH_MPLS.contains(&t) => return mpls(rest),
            _ => return Err(SkipReason::NotIp),
        }
    }
}

fn ethernet(frame: &[u8]) -> Result<&[u8], SkipReason> {
    let ethertype = be16(frame, 12).ok_or(SkipReason::Truncated)?;
    if ethertype < 0x0600 {
        // 802.3 length field: LLC, maybe SNAP with an ethertype.
        return llc_snap(&frame[14..]);
    }
    ethertype_payload(ethertype, frame.get(14..))
}

fn llc_snap(d: &[u8]) -> Result<&[u8], SkipReason> {
    match d {
        [0xaa, 0xaa, 0x03, _, _, _, t0, t1, rest @ ..] => {
            ethertype_payload(u16::from_be_bytes([*t0, *t1]), Some(rest))
        }
        _ => Err(SkipReason::NotIp),
    }
}

fn mpls(mut d: &[u8]) -> Result<&[u8], SkipReason> {
    // Labels until bottom-of-stack; the payload's IP version tells v4 from v6.
    loop {
        let label = d.get(..4).ok_or(SkipReason::Truncated)?;
        d = &d[4..];
        if label[2] & 1 == 1 {
            return by_version(d);
        }
    }
}

fn by_version(d: &[u8]) -> Result<&[u8], SkipReason> {
    match d.first().map(|b| b >> 4) {
        Some(4) | Some(6) => Ok(d),
        Some(_) => Err(SkipReason::NotIp),
        None => Err(SkipReason::Truncated),
    }
}

fn bsd_loopback(linktype: i32, frame: &[u8]) -> Result<&[u8], SkipReason> {
    let raw: [u8; 4] = frame
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(SkipReason::Truncated)?;
    // NULL stores the family in the writer's byte order, LOOP in network order.
    let family = if linktype == linktype::LOOP || (raw[0] == 0 && raw[1] == 0) {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    };
    match family {
        2 | 10 | 24 | 28 | 30 => by_version(&frame[4..]),
        _ => Err(SkipReason::NotIp),
    }
}

fn ppp_protocol(proto: u16, rest: &[u8]) -> Result<&[u8], SkipReason> {
    match proto {
        0x0021 | 0x0057 => by_version(rest),
        _ => Err(SkipReason::NotIp),
    }
}

fn ppp(frame: &[u8]) -> Result<&[u8], SkipReason> {
    // Optional HDLC address/control (ff 03), then a 1- or 2-byte protocol.
    let d = frame.strip_prefix(&[0xff, 0x03]).unwrap_or(frame);
    match d.first() {
        Some(p) if p & 1 == 1 => ppp_protocol(u16::from(*p), &d[1..]),
        Some(_) => ppp_protocol(be16(d, 0).ok_or(SkipReason::Truncated)?, &d[2..]),
        None => Err(SkipReason::Truncated),
    }
}

fn wifi(d: &[u8]) -> Result<&[u8], SkipReason> {
    let (fc0, fc1) = match d {
        [a, b, ..] => (*a, *b),
        _ => return Err(SkipReason::Truncated),
    };
    let frame_type = (fc0 >> 2) & 0b11;
    let subtype = fc0 >> 4;
    if frame_type != 2 || subtype & 0b0100 != 0 {
        // Not a data frame, or a null-function frame without payload.
        return Err(SkipReason::Not80211Data);
    }
    if fc1 & 0x40 != 0 {
        return Err(SkipReason::Encrypted80211);
    }
    let mut len = 24;
    if fc1 & 0b11 == 0b11 {
        len += 6; // four-address frame (ToDS and FromDS)
    }
    let qos = subtype & 0b1000 != 0;
    if qos {
        len += 2;
        if fc1 & 0x80 != 0 {
            len += 4; // HT control
        }
    }
    llc_snap(d.get(len..).ok_or(SkipReason::Truncated)?)
}

fn nflog(d: &[u8]) -> Result<&[u8], SkipReason> {
    // 4-byte header (family, version, resource id), then TLVs whose length and
    // type are in host byte order, each padded to 4 bytes.
    const NFULA_PAYLOAD: u16 = 9;
    let mut at = 4;
    while let Some(tl) = d.get(at..at + 4) {
        let len = u16::from_le_bytes([tl[0], tl[1]]) as usize;
        let kind = u16::from_le_bytes([tl[2], tl[3]]) & 0x7fff;
        if len < 4 {
            return Err(SkipReason::Truncated);
        }
        if kind == NFULA_PAYLOAD {
            let body = d
                .get(at + 4..(at + len).min(d.len()))
                .ok_or(SkipReason::Truncated)?;
            return by_version(body);
        }
        at += (len + 3) & !3;
    }
    Err(SkipReason::NotIp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IP: [u8; 4] = [0x45, 0, 0, 20];

    #[test]
    fn strips_stacked_vlans_and_pppoe() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[
            0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0x00,
        ]);
        f.extend_from_slice(&IP);
        assert_eq!(ip_payload(linktype::ETHERNET, &f).unwrap(), &IP);

        let mut p = vec![0u8; 12];
        p.extend_from_slice(&[0x88, 0x64, 0x11, 0, 0, 1, 0, 20, 0x00, 0x21]);
        p.extend_from_slice(&IP);
        assert_eq!(ip_payload(linktype::ETHERNET, &p).unwrap(), &IP);
        // Protocol-field compression: one byte 0x21.
        let mut c = vec![0u8; 12];
        c.extend_from_slice(&[0x88, 0x64, 0x11, 0, 0, 1, 0, 20, 0x21]);
        c.extend_from_slice(&IP);
        assert_eq!(ip_payload(linktype::ETHERNET, &c).unwrap(), &IP);
    }

    #[test]
    fn sll2_and_loopback() {
        let mut f = vec![0x86, 0xdd];
        f.extend_from_slice(&[0; 18]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        assert_eq!(
            ip_payload(linktype::LINUX_SLL2, &f).unwrap(),
            &[0x60, 0, 0, 0]
        );
        let mut n = vec![2, 0, 0, 0];
        n.extend_from_slice(&IP);
        assert_eq!(ip_payload(linktype::NULL, &n).unwrap(), &IP);
        let mut l = vec![0, 0, 0, 30];
        l.extend_from_slice(&[0x60, 1]);
        assert_eq!(ip_payload(linktype::LOOP, &l).unwrap(), &[0x60, 1]);
    }

    proptest! {
        #[test]
        fn never_panics(lt in prop::sample::select(vec![0, 1, 9, 12, 50, 101, 104, 105, 108, 113, 127, 228, 239, 276, 999]),
                        d in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ip_payload(lt, &d);
        }
    }
}
