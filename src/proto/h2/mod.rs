//! HTTP/2 framing (RFC 9113) for one direction of a captured connection:
//! fed bytes as TCP delivers them, it reports whole frames, header blocks
//! joined across CONTINUATION, and DATA payloads as they arrive (not held),
//! with padding removed.
//!
//! Hand-written, like the HTTP/1 framer beside it: the `h2` crate frames a
//! connection it takes part in (it answers SETTINGS and PING, enforces flow
//! control, and stops at the first protocol error), while a recorder only
//! watches, must survive starting mid-connection, and must say what it lost.
//! Replay, which does take part, uses `h2`.

pub mod grpc;
pub mod hpack;

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 section 6).
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
const SETTINGS_HEADER_TABLE_SIZE: u16 = 1;

/// Non-DATA frames are held whole; larger ones are refused (SETTINGS may
/// allow up to 16 MiB, but no header block or control frame a recorder
/// must read is near that).
pub const MAX_HELD_FRAME: u32 = 1 << 20;
/// A header block joined from CONTINUATION frames is refused beyond this.
pub const MAX_BLOCK: usize = 1 << 20;
/// Frame buffer capacity kept between frames (the default largest frame
/// is 16 KiB), so a connection idle after one large frame holds little.
const KEEP_BUF: usize = 64 << 10;

/// The 9-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; 9] = b.get(..9)?.try_into().ok()?;
        Some(Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// Whether this header could start a frame of a well-behaved peer:
    /// used to find frames when a capture starts mid-connection.
    fn plausible(&self, reserved_bit: bool) -> bool {
        use kind::*;
        let on_stream = self.stream != 0;
        let fits = match self.kind {
            DATA | HEADERS | CONTINUATION | PUSH_PROMISE => on_stream,
            PRIORITY => on_stream && self.len == 5,
            RST_STREAM => on_stream && self.len == 4,
            SETTINGS => !on_stream && self.len.is_multiple_of(6) && self.flags & !1 == 0,
            PING => !on_stream && self.len == 8 && self.flags & !1 == 0,
            GOAWAY => !on_stream && self.len >= 8,
            WINDOW_UPDATE => self.len == 4,
            _ => false,
        };
        fits && !reserved_bit && self.len <= 1 << 16
    }
}

/// Whether `data` starts at a frame boundary: two or more plausible frames
/// follow each other, or one fills it exactly. A guess, made only for
/// connections picked up mid-way; a wrong "no" skips the connection.
pub fn starts_with_frames(data: &[u8]) -> bool {
    let mut at = 0usize;
    let mut frames = 0;
    while data.len() >= at + 9 {
        let Some(h) = FrameHeader::parse(&data[at..]) else {
            break;
        };
        if !h.plausible(data[at + 5] & 0x80 != 0) {
            return false;
        }
        frames += 1;
        at += 9 + h.len as usize;
        if frames >= 3 {
            return true;
        }
    }
    frames >= 2 || (frames == 1 && at == data.len())
}

/// Where the frame `data` may start with ends (header plus payload), when
/// its first nine bytes are a plausible frame header: a segment that holds
/// only the start of one large frame (a DATA frame of 16 KiB in 1,448-byte
/// segments) is checked again where its frame would end.
pub fn plausible_frame_end(data: &[u8]) -> Option<usize> {
    let h = FrameHeader::parse(data)?;
    h.plausible(data[5] & 0x80 != 0)
        .then_some(9 + h.len as usize)
}

/// RFC 9113 section 7 error code names.
pub fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("0x{code:x}"), |n| n.to_string())
}

/// What a direction carried, frame by frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Part of a DATA frame's payload (padding removed); `end_stream` comes
    /// with the last part of a frame that ends the stream.
    Data {
        stream: u32,
        data: &'a [u8],
        end_stream: bool,
    },
    /// A whole header block (HEADERS and its CONTINUATIONs).
    Headers {
        stream: u32,
        block: &'a [u8],
        end_stream: bool,
    },
    PushPromise {
        stream: u32,
        promised: u32,
        block: &'a [u8],
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
    /// SETTINGS (not an ACK) that set the header table size.
    HeaderTableSize(u32),
    /// A SETTINGS ACK: the sender now applies the other side's settings.
    SettingsAck,
    /// PRIORITY, PING, WINDOW_UPDATE, other SETTINGS, unknown types.
    Other,
}

/// Where the reader is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    Preface(usize),
    Header,
    Payload(FrameHeader),
    /// Inside a DATA frame: waiting for its pad length byte, then its data,
    /// then its padding.
    Data {
        h: FrameHeader,
        pad_byte: bool,
        data_left: u32,
        pad_left: u32,
    },
    Dead,
}

/// Frames one direction of a connection.
#[derive(Debug)]
pub struct FrameReader {
    read: Read,
    buf: Vec<u8>,
    /// A header block waiting for CONTINUATION: (stream, end_stream,
    /// promised stream for PUSH_PROMISE).
    open_block: Option<(u32, bool, Option<u32>)>,
    block: Vec<u8>,
    pub frames: u64,
}

impl FrameReader {
    /// `preface`: this is the client's direction from its start.
    pub fn new(preface: bool) -> Self {
        Self {
            read: if preface {
                Read::Preface(0)
            } else {
                Read::Header
            },
            buf: Vec::new(),
            open_block: None,
            block: Vec::new(),
            frames: 0,
        }
    }

    pub fn is_dead(&self) -> bool {
        self.read == Read::Dead
    }

    /// Stop reading: after lost bytes there is no telling where frames start.
    pub fn kill(&mut self) {
        self.read = Read::Dead;
        self.buf = Vec::new();
        self.block = Vec::new();
    }

    /// Bytes held (a partial frame or header block).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.block.len()
    }

    /// Feed bytes that follow the previous ones; `out` gets each frame. An
    /// error kills the reader and is returned.
    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(Frame<'_>)) -> Result<(), String> {
        while !data.is_empty() {
            let r = self.step(&mut data, out);
            if let Err(e) = r {
                self.kill();
                return Err(e);
            }
            if self.read == Read::Dead {
                return Ok(());
            }
        }
        Ok(())
    }

    fn step(&mut self, data: &mut &[u8], out: &mut dyn FnMut(Frame<'_>)) -> Result<(), String> {
        match self.read {
            Read::Dead => *data = &[],
            Read::Preface(seen) => {
                let n = data.len().min(PREFACE.len() - seen);
                if data[..n] != PREFACE[seen..seen + n] {
                    return Err("no HTTP/2 connection preface".into());
                }
                *data = &data[n..];
                self.read = if seen + n == PREFACE.len() {
                    Read::Header
                } else {
                    Read::Preface(seen + n)
                };
            }
            Read::Header => {
                let n = data.len().min(9 - self.buf.len());
                self.buf.extend_from_slice(&data[..n]);
                *data = &data[n..];
                if self.buf.len() == 9 {
                    let h = FrameHeader::parse(&self.buf).expect("nine bytes");
                    self.buf.clear();
                    self.begin(h, out)?;
                }
            }
            Read::Payload(h) => {
                let n = data.len().min(h.len as usize - self.buf.len());
                self.buf.extend_from_slice(&data[..n]);
                *data = &data[n..];
                if self.buf.len() == h.len as usize {
                    let payload = std::mem::take(&mut self.buf);
                    self.read = Read::Header;
                    self.frame(h, &payload, out)?;
                    // Kept for the next frame, unless one large frame grew
                    // it: an idle connection should not hold a megabyte.
                    if payload.capacity() <= KEEP_BUF {
                        self.buf = payload;
                        self.buf.clear();
                    }
                }
            }
            Read::Data {
                h,
                pad_byte,
                data_left,
                pad_left,
            } => self.data(h, pad_byte, data_left, pad_left, data, out)?,
        }
        Ok(())
    }

    fn begin(&mut self, h: FrameHeader, out: &mut dyn FnMut(Frame<'_>)) -> Result<(), String> {
        self.frames += 1;
        if let Some((stream, ..)) = self.open_block {
            if h.kind != kind::CONTINUATION || h.stream != stream {
                return Err(format!(
                    "frame type {} on stream {} inside a header block of stream {stream}",
                    h.kind, h.stream
                ));
            }
        }
        let of_a_stream = matches!(
            h.kind,
            kind::DATA
                | kind::HEADERS
                | kind::PRIORITY
                | kind::RST_STREAM
                | kind::PUSH_PROMISE
                | kind::CONTINUATION
        );
        if of_a_stream && h.stream == 0 {
            // RFC 9113 section 6: a connection error; what follows cannot
            // be read as the peer meant it.
            return Err(format!("frame type {} on stream 0", h.kind));
        }
        if h.kind == kind::DATA {
            let padded = h.flags & PADDED != 0;
            if padded && h.len == 0 {
                return Err("padded DATA frame without a pad length".into());
            }
            self.read = Read::Data {
                h,
                pad_byte: padded,
                data_left: if padded { 0 } else { h.len },
                pad_left: 0,
            };
            if h.len == 0 {
                self.end_data(h, out);
            }
            return Ok(());
        }
        if h.len > MAX_HELD_FRAME {
            return Err(format!("{}-byte frame of type {}", h.len, h.kind));
        }
        self.read = Read::Payload(h);
        if h.len == 0 {
            self.read = Read::Header;
            self.frame(h, &[], out)?;
        }
        Ok(())
    }

    fn data(
        &mut self,
        h: FrameHeader,
        mut pad_byte: bool,
        mut data_left: u32,
        mut pad_left: u32,
        data: &mut &[u8],
        out: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), String> {
        if pad_byte {
            let pad = data[0] as u32;
            *data = &data[1..];
            if pad + 1 > h.len {
                return Err(format!("DATA padding {pad} longer than the frame"));
            }
            pad_byte = false;
            data_left = h.len - 1 - pad;
            pad_left = pad;
        }
        let n = data.len().min(data_left as usize);
        if n > 0 {
            out(Frame::Data {
                stream: h.stream,
                data: &data[..n],
                end_stream: false,
            });
            *data = &data[n..];
            data_left -= n as u32;
        }
        let skip = data.len().min(pad_left as usize);
        *data = &data[skip..];
        pad_left -= skip as u32;
        self.read = Read::Data {
            h,
            pad_byte,
            data_left,
            pad_left,
        };
        if !pad_byte && data_left == 0 && pad_left == 0 {
            self.end_data(h, out);
        }
        Ok(())
    }

    fn end_data(&mut self, h: FrameHeader, out: &mut dyn FnMut(Frame<'_>)) {
        self.read = Read::Header;
        if h.flags & END_STREAM != 0 {
            out(Frame::Data {
                stream: h.stream,
                data: &[],
                end_stream: true,
            });
        }
    }

    /// A whole non-DATA frame.
    fn frame(
        &mut self,
        h: FrameHeader,
        p: &[u8],
        out: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), String> {
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        match h.kind {
            kind::HEADERS => {
                let mut frag = unpad(h, p)?;
                if h.flags & PRIORITY_FLAG != 0 {
                    frag = frag.get(5..).ok_or("HEADERS priority fields missing")?;
                }
                self.open_block = Some((h.stream, h.flags & END_STREAM != 0, None));
                self.fragment(h, frag, out)?;
            }
            kind::PUSH_PROMISE => {
                let frag = unpad(h, p)?;
                let promised = frag.get(..4).map(be32).ok_or("PUSH_PROMISE too short")?;
                self.open_block = Some((h.stream, false, Some(promised & 0x7fff_ffff)));
                self.fragment(h, &frag[4..], out)?;
            }
            kind::CONTINUATION => {
                if self.open_block.is_none() {
                    return Err(format!(
                        "CONTINUATION on stream {} without HEADERS",
                        h.stream
                    ));
                }
                self.fragment(h, p, out)?;
            }
            kind::RST_STREAM if p.len() == 4 => out(Frame::RstStream {
                stream: h.stream,
                code: be32(p),
            }),
            kind::GOAWAY if p.len() >= 8 => out(Frame::GoAway {
                last_stream: be32(p) & 0x7fff_ffff,
                code: be32(&p[4..]),
            }),
            kind::SETTINGS if h.flags & 1 == 0 => {
                let size = p
                    .chunks_exact(6)
                    .filter(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_HEADER_TABLE_SIZE)
                    .map(|s| be32(&s[2..]))
                    .next_back();
                out(size.map_or(Frame::Other, Frame::HeaderTableSize));
            }
            kind::SETTINGS => out(Frame::SettingsAck),
            kind::RST_STREAM | kind::GOAWAY => {
                return Err(format!("frame type {} of {} bytes", h.kind, h.len));
            }
            _ => out(Frame::Other),
        }
        Ok(())
    }

    fn fragment(
        &mut self,
        h: FrameHeader,
        frag: &[u8],
        out: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), String> {
        if self.block.len() + frag.len() > MAX_BLOCK {
            return Err(format!("header block over {MAX_BLOCK} bytes"));
        }
        if h.flags & END_HEADERS == 0 {
            self.block.extend_from_slice(frag);
            return Ok(());
        }
        let (stream, end_stream, promised) = self.open_block.take().expect("block is open");
        let joined;
        let block = if self.block.is_empty() {
            frag
        } else {
            self.block.extend_from_slice(frag);
            joined = std::mem::take(&mut self.block);
            &joined
        };
        out(match promised {
            Some(promised) => Frame::PushPromise {
                stream,
                promised,
                block,
            },
            None => Frame::Headers {
                stream,
                block,
                end_stream,
            },
        });
        Ok(())
    }
}

/// A padded frame's payload without its pad length byte and padding.
fn unpad(h: FrameHeader, p: &[u8]) -> Result<&[u8], String> {
    if h.flags & PADDED == 0 {
        return Ok(p);
    }
    let (&pad, rest) = p.split_first().ok_or("padded frame without a pad length")?;
    rest.len()
        .checked_sub(pad as usize)
        .map(|n| &rest[..n])
        .ok_or_else(|| format!("padding {pad} longer than the frame"))
}

#[cfg(test)]
mod tests;
