//! Reading packets from pcap and pcapng files.
//!
//! Files are memory-mapped and parsed with `pcap-parser` (libpcap refuses
//! pcapng files whose interfaces have different link types, and gives no
//! control over truncated files). A file that ends mid-record yields every
//! record before the cut and reports the cut.

use std::fs::File;
use std::path::Path;

use pcap_parser::nom;
use pcap_parser::pcapng::Block;
use pcap_parser::{
    parse_block_be, parse_block_le, parse_pcap_header, parse_sectionheaderblock, PcapError,
};

use super::CaptureError;

/// One captured frame, borrowed from the mapped file.
#[derive(Clone, Copy, Debug)]
pub struct RawPacket<'a> {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// LINKTYPE_* value of the interface the frame came from.
    pub linktype: i32,
    /// Interface index within the file (pcapng), 0 for pcap.
    pub interface: u32,
    pub data: &'a [u8],
    /// Length of the frame on the wire (>= data.len() when snaplen cut it).
    pub orig_len: u32,
}

/// How reading a file ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    pub packets: u64,
    /// Set when the file ended mid-record or held a damaged record: what was
    /// read before that point was used.
    pub damaged: Option<String>,
}

/// Bytes read between two releases of mapped pages (a power of two).
const RELEASE_STEP: usize = 4 << 20;

/// A memory-mapped capture file.
pub struct CaptureFile {
    map: memmap2::Mmap,
    name: String,
}

const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0x4d, 0x3c, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

impl CaptureFile {
    /// Open and check the magic number, so a non-capture fails before any work.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        use std::os::unix::fs::FileTypeExt;
        let name = path.display().to_string();
        // A directory or a pipe cannot be mapped ("No such device"): say
        // what it is instead. Asked before opening: opening a FIFO waits
        // for a writer.
        let kind = std::fs::metadata(path)
            .map_err(|e| CaptureError::Open(name.clone(), e))?
            .file_type();
        let not_file = if kind.is_dir() {
            Some("a directory")
        } else if kind.is_fifo() {
            Some("a FIFO (pipe); save the capture to a file first")
        } else if kind.is_socket() || kind.is_char_device() || kind.is_block_device() {
            Some("a device or socket; save the capture to a file first")
        } else {
            None
        };
        if let Some(what) = not_file {
            return Err(CaptureError::NotAFile(name, what));
        }
        let file = File::open(path).map_err(|e| CaptureError::Open(name.clone(), e))?;
        // SAFETY: the map is read-only; a file truncated by another process
        // while we read it is the user's documented risk, as with any mmap reader.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| CaptureError::Open(name.clone(), e))?;
        let magic: [u8; 4] = map
            .get(..4)
            .and_then(|m| m.try_into().ok())
            .ok_or_else(|| {
                CaptureError::NotACapture(name.clone(), "shorter than 4 bytes".into())
            })?;
        if !PCAP_MAGICS.contains(&magic) && magic != PCAPNG_MAGIC {
            return Err(CaptureError::NotACapture(
                name,
                format!("unknown magic number {:02x?}", magic),
            ));
        }
        // The file header too, so that a file cut inside it fails here,
        // before any output is created.
        let header = if magic == PCAPNG_MAGIC {
            parse_sectionheaderblock(&map).map(|_| ())
        } else {
            parse_pcap_header(&map).map(|_| ())
        };
        header.map_err(|e| {
            let why = match e {
                nom::Err::Incomplete(_) => "the file ends inside its header".to_string(),
                e => describe(&e),
            };
            CaptureError::NotACapture(name.clone(), why)
        })?;
        Ok(Self { map, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Call `on_packet` for every frame, with the byte offset reached.
    /// `stop` is polled now and then; when it says so, reading ends early.
    pub fn for_each_packet(
        &self,
        mut on_packet: impl FnMut(RawPacket<'_>, u64),
        stop: &dyn Fn() -> bool,
    ) -> Result<ReadOutcome, CaptureError> {
        let _ = self.map.advise(memmap2::Advice::Sequential);
        let mut released = 0usize;
        packets_in(
            &self.map,
            &self.name,
            |p, offset| {
                on_packet(p, offset);
                // Pages already read are dropped from this process (they stay
                // in the page cache), so resident memory does not grow with
                // the file. Nothing borrows them once `on_packet` returns.
                let done = (offset as usize) & !(RELEASE_STEP - 1);
                if done >= released + RELEASE_STEP {
                    // SAFETY: a read-only private file mapping; the released
                    // range is re-read from the file if touched again.
                    let _ = unsafe {
                        self.map.unchecked_advise_range(
                            memmap2::UncheckedAdvice::DontNeed,
                            released,
                            done - released,
                        )
                    };
                    released = done;
                }
            },
            stop,
        )
    }
}

/// Call `on_packet` for every frame of a pcap or pcapng image in memory.
pub fn packets_in(
    data: &[u8],
    name: &str,
    on_packet: impl FnMut(RawPacket<'_>, u64),
    stop: &dyn Fn() -> bool,
) -> Result<ReadOutcome, CaptureError> {
    if data.len() < 4 {
        return Err(CaptureError::NotACapture(
            name.into(),
            "shorter than 4 bytes".into(),
        ));
    }
    if data[..4] == PCAPNG_MAGIC {
        read_pcapng(data, on_packet, stop)
    } else {
        read_pcap(data, name, on_packet, stop)
    }
}

/// A parser error in words: never the parser's dump of the input bytes.
fn describe(err: &nom::Err<PcapError<&[u8]>>) -> String {
    match err {
        nom::Err::Incomplete(_) => "file ends in the middle of a record".into(),
        nom::Err::Error(e) | nom::Err::Failure(e) => match e {
            PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                format!("corrupt record ({})", kind.description())
            }
            PcapError::Incomplete(_) | PcapError::UnexpectedEof | PcapError::Eof => {
                "file ends in the middle of a record".into()
            }
            PcapError::HeaderNotRecognized => "header not recognized".into(),
            other => format!("corrupt record ({other:?})"),
        },
    }
}

/// A pcap record header.
#[derive(Clone, Copy)]
struct RecordHeader {
    ts_sec: u32,
    frac: u32,
    caplen: u32,
    origlen: u32,
}

fn record_header(b: &[u8], big: bool) -> Option<RecordHeader> {
    let word = |i: usize| {
        let w: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    };
    Some(RecordHeader {
        ts_sec: word(0)?,
        frac: word(4)?,
        caplen: word(8)?,
        origlen: word(12)?,
    })
}

/// What the pcap format says a record may look like; used to find the next
/// record after a corrupt one.
struct Plausible {
    max_caplen: u32,
    frac_limit: u32,
    big: bool,
}

impl Plausible {
    /// A record header that could be real, whose data fits in `b`, and that
    /// is followed by the end of the file or another such header.
    fn at(&self, b: &[u8], near_ts: Option<u32>) -> bool {
        let ok = |h: &RecordHeader| {
            h.caplen <= self.max_caplen
                && h.frac < self.frac_limit
                && h.origlen >= h.caplen
                && near_ts.is_none_or(|t| h.ts_sec.abs_diff(t) <= 7 * 86_400)
        };
        let Some(h) = record_header(b, self.big).filter(ok) else {
            return false;
        };
        let end = 16 + h.caplen as usize;
        if end > b.len() {
            return false;
        }
        end == b.len() || record_header(&b[end..], self.big).is_some_and(|n| ok(&n))
    }
}

fn read_pcap(
    data: &[u8],
    name: &str,
    mut on_packet: impl FnMut(RawPacket<'_>, u64),
    stop: &dyn Fn() -> bool,
) -> Result<ReadOutcome, CaptureError> {
    let (after_header, header) = parse_pcap_header(data)
        .map_err(|e| CaptureError::NotACapture(name.to_string(), describe(&e)))?;
    let nanos = header.is_nanosecond_precision();
    let big = header.is_bigendian();
    let linktype = header.network.0;
    // libpcap refuses a record longer than the larger of the file's snaplen
    // and 256 KiB; such a length is damage, not a packet.
    let rules = Plausible {
        max_caplen: header.snaplen.clamp(262_144, 16 << 20),
        frac_limit: if nanos { 1_000_000_000 } else { 1_000_000 },
        big,
    };
    let mut at = data.len() - after_header.len();
    let mut out = ReadOutcome::default();
    let mut damage: Vec<String> = Vec::new();
    let mut last_ts = None;
    while at < data.len() {
        if out.packets % 4096 == 0 && stop() {
            break;
        }
        let rest = &data[at..];
        let Some(h) = record_header(rest, big) else {
            damage.push(format!("file ends in the middle of a record at byte {at}"));
            break;
        };
        if h.caplen > rules.max_caplen {
            // Scan forward for the next record that looks real.
            let found =
                (at + 1..data.len().saturating_sub(15)).find(|&q| rules.at(&data[q..], last_ts));
            match found {
                Some(q) => {
                    damage.push(format!(
                        "corrupt record at byte {at} (length {}); skipped {} bytes to the next valid record at byte {q}",
                        h.caplen,
                        q - at
                    ));
                    at = q;
                    continue;
                }
                None => {
                    damage.push(format!(
                        "corrupt record at byte {at} (length {}); no valid record after it",
                        h.caplen
                    ));
                    break;
                }
            }
        }
        let end = at + 16 + h.caplen as usize;
        if end > data.len() {
            damage.push(format!("file ends in the middle of a record at byte {at}"));
            break;
        }
        let frac = if nanos {
            h.frac as i64
        } else {
            h.frac as i64 * 1000
        };
        out.packets += 1;
        last_ts = Some(h.ts_sec);
        on_packet(
            RawPacket {
                ts_ns: h.ts_sec as i64 * 1_000_000_000 + frac,
                linktype,
                interface: 0,
                data: &data[at + 16..end],
                orig_len: h.origlen,
            },
            end as u64,
        );
        at = end;
    }
    if !damage.is_empty() {
        out.damaged = Some(damage.join("; "));
    }
    Ok(out)
}

/// Per-interface facts from an Interface Description Block.
#[derive(Clone, Copy)]
struct Interface {
    linktype: i32,
    units_per_sec: u64,
    offset_secs: i64,
}

/// After a corrupt block at `at`, the next offset where a block stands that
/// its own framing vouches for: a known type, a length that is a multiple
/// of 4 and repeated at the block's end, followed by the end of the file or
/// another such block. Two checks in a row make a false find (and invented
/// packets) very unlikely; blocks are 4-byte aligned, so only those offsets
/// are tried.
fn next_pcapng_block(data: &[u8], at: usize, big: bool) -> Option<usize> {
    let word = |q: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(q..q + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let block_at = |q: usize| -> Option<usize> {
        let kind = word(q)?;
        let len = word(q + 4)? as usize;
        let known = matches!(kind, 1..=6) || kind == 0x0A0D_0D0A || kind == 0x0000_000A;
        let fits = len >= 12 && len.is_multiple_of(4) && q + len <= data.len();
        (known && fits && word(q + len - 4)? as usize == len).then_some(q + len)
    };
    let start = (at + 4) & !3;
    (start..data.len().saturating_sub(11))
        .step_by(4)
        .find(|&q| match block_at(q) {
            Some(end) if end == data.len() => true,
            Some(end) => block_at(end).is_some(),
            None => false,
        })
}

fn read_pcapng(
    data: &[u8],
    mut on_packet: impl FnMut(RawPacket<'_>, u64),
    stop: &dyn Fn() -> bool,
) -> Result<ReadOutcome, CaptureError> {
    let mut rest = data;
    let mut damage: Vec<String> = Vec::new();
    let mut big = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut undescribed = 0u64;
    let mut out = ReadOutcome::default();
    while !rest.is_empty() {
        if out.packets % 4096 == 0 && stop() {
            break;
        }
        let at = data.len() - rest.len();
        // A section header block fixes the byte order of what follows it.
        let parsed = if rest.starts_with(&PCAPNG_MAGIC) {
            parse_sectionheaderblock(rest).map(|(r, shb)| {
                big = shb.big_endian();
                (r, Block::SectionHeader(shb))
            })
        } else if big {
            parse_block_be(rest)
        } else {
            parse_block_le(rest)
        };
        let (next, block) = match parsed {
            Ok(ok) => ok,
            Err(e) => {
                let why = describe(&e).replace("record", "block");
                match next_pcapng_block(data, at, big) {
                    Some(q) => {
                        damage.push(format!(
                            "{why} at byte {at}; skipped {} bytes to the next valid block at byte {q}",
                            q - at
                        ));
                        rest = &data[q..];
                        continue;
                    }
                    None => {
                        damage.push(format!("{why} at byte {at}; no valid block after it"));
                        break;
                    }
                }
            }
        };
        let offset = (data.len() - next.len()) as u64;
        rest = next;
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                let units_per_sec = units_per_sec(idb.if_tsresol).unwrap_or_else(|| {
                    damage.push(format!(
                        "interface {} has an impossible time resolution ({:#04x}), read as microseconds, at byte {at}",
                        interfaces.len(),
                        idb.if_tsresol
                    ));
                    1_000_000
                });
                interfaces.push(Interface {
                    linktype: idb.linktype.0,
                    units_per_sec,
                    offset_secs: idb.ts_offset(),
                })
            }
            Block::EnhancedPacket(epb) => {
                let Some(iface) = interfaces.get(epb.if_id as usize).copied() else {
                    // Skipped, not the end: a damaged interface block
                    // must not cost the packets of the others after it.
                    undescribed += 1;
                    if undescribed == 1 {
                        damage.push(format!(
                            "packet names interface {} which was never described, at byte {at}",
                            epb.if_id
                        ));
                    }
                    continue;
                };
                let raw = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let ns = (u128::from(raw) * 1_000_000_000 / u128::from(iface.units_per_sec.max(1)))
                    as i64;
                out.packets += 1;
                let caplen = (epb.caplen as usize).min(epb.data.len());
                on_packet(
                    RawPacket {
                        ts_ns: ns.saturating_add(iface.offset_secs.saturating_mul(1_000_000_000)),
                        linktype: iface.linktype,
                        interface: epb.if_id,
                        data: &epb.data[..caplen],
                        orig_len: epb.origlen,
                    },
                    offset,
                );
            }
            Block::SimplePacket(spb) => {
                let Some(iface) = interfaces.first().copied() else {
                    continue;
                };
                out.packets += 1;
                let len = (spb.origlen as usize).min(spb.data.len());
                on_packet(
                    RawPacket {
                        ts_ns: 0,
                        linktype: iface.linktype,
                        interface: 0,
                        data: &spb.data[..len],
                        orig_len: spb.origlen,
                    },
                    offset,
                );
            }
            _ => {}
        }
    }
    if undescribed > 1 {
        damage.push(format!(
            "{undescribed} packets named an interface never described and were skipped"
        ));
    }
    if !damage.is_empty() {
        out.damaged = Some(damage.join("; "));
    }
    Ok(out)
}

/// Timestamp units per second of a pcapng interface (`if_tsresol`): with
/// the high bit set a power of two, else of ten (microseconds when the
/// option is absent). Done here because pcap-parser 0.17's own reading
/// refuses every power of two (it range-checks the byte with its flag).
fn units_per_sec(tsresol: u8) -> Option<u64> {
    let exp = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 != 0 {
        1u64.checked_shl(exp).filter(|_| exp < 64)
    } else {
        10u64.checked_pow(exp)
    }
}
