//! Incremental HTTP/1.x message framing over one direction of a TCP stream.
//!
//! Heads are parsed with `httparse`; framing (Content-Length, chunked with
//! trailers, close-delimited, no body) and recovery after lost bytes are ours:
//! the parser is fed bytes as TCP delivers them, told about gaps, and
//! resynchronises at the next start line after a gap or a parse error.

use crate::schema::HeaderList;
use crate::text::latin1;

pub mod strict;

/// Which kind of messages a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Request,
    Response,
}

/// The start line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: String,
        target: String,
        version: String,
    },
    Response {
        version: String,
        status: u16,
        reason: String,
    },
}

/// A parsed message head.
#[derive(Clone, Debug)]
pub struct Head {
    pub line: StartLine,
    pub headers: HeaderList,
    /// Where the head departs from RFC 9112, if it does (see `strict`).
    pub problem: Option<String>,
    /// Its framing headers cannot be trusted (invalid, or a bare CR or a
    /// folded line could hide one from a server that reads it otherwise).
    pub framing_unsure: bool,
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    /// Unknown (the request it answers is uncertain, and HEAD would mean no
    /// body): the body runs to the next line that starts a message.
    UntilNextHead,
    /// The connection stops carrying HTTP after this message (101, CONNECT).
    Tunnel,
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Complete,
    /// Bytes were lost inside the message.
    Gap,
    /// The bytes stopped making sense as HTTP.
    Malformed,
    /// The stream ended before the message did.
    Cut,
}

/// What the parser reports to the owner of the connection.
pub trait Sink {
    /// A head was parsed; the owner decides the framing of its body.
    /// `offset` is where the message starts in this direction's stream.
    fn head(&mut self, role: Role, head: Head, ts: i64, offset: u64) -> Framing;
    fn body(&mut self, role: Role, data: &[u8], ts: i64);
    /// `len` body bytes were lost in a gap (counted, not stored).
    fn body_gap(&mut self, role: Role, len: u64);
    fn trailers(&mut self, role: Role, trailers: HeaderList);
    fn end(&mut self, role: Role, ts: i64, how: End);
    /// Bytes from stream `offset` on were lost (or unreadable) where a
    /// message could start: `certain` when a message start surely was in
    /// them, false when the loss may have held none.
    fn lost(&mut self, role: Role, offset: u64, certain: bool);
    /// The message being read (or, between messages, the bytes where one
    /// should start) departs from RFC 9112 as `detail` says.
    fn problem(&mut self, role: Role, detail: String);
}

/// Largest message head we buffer; beyond it the head counts as malformed.
pub const MAX_HEAD: usize = 256 * 1024;
/// Longest line we wait for while looking for a start line.
const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a start line; `resync` means bytes before it are skipped.
    Start {
        resync: bool,
    },
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    UntilNextHead,
    /// No more HTTP on this direction.
    Dead,
}

/// Outcome of looking at the bytes where a start line should begin.
#[derive(Debug, PartialEq, Eq)]
pub enum Looks {
    Yes,
    No,
    NeedMore,
}

/// Framer for one direction of one connection.
pub struct MessageParser {
    role: Role,
    state: State,
    /// Bytes of an incomplete head, chunk-size line or trailer block.
    buf: Vec<u8>,
    /// Whether a message is open (head reported, end not yet).
    open: bool,
    /// Stream offset of the first byte not yet consumed (gaps included).
    offset: u64,
    /// Stream offset of the bytes the current step looks at.
    cursor: u64,
    /// A head still incomplete: where it starts and how many of its bytes
    /// were searched for its end, so that a head arriving a byte at a time
    /// is not searched from its start again for every byte.
    head_searched: (u64, usize),
    pub heads: u64,
    pub malformed: u64,
    pub skipped_bytes: u64,
    /// While resynchronising or scanning a body of unknown framing: whether
    /// the next byte is known to begin a line. After a loss it is not: the
    /// bytes may be the tail of a line ("EAD /x HTTP/1.1").
    line_start: bool,
    /// Keep the bytes of a body whose framing broke (to the next message
    /// start) instead of skipping them: a recorder loses nothing.
    keep_broken: bool,
    /// The open message's framing broke: it ends as malformed.
    damaged: bool,
    /// Heads larger than [`MAX_HEAD`] (kept as far as they fit, flagged).
    pub oversize_heads: u64,
    /// A lone CR came before the next start line.
    lead_problem: bool,
    /// Where the stream stopped carrying HTTP/1 (after a 101 or CONNECT).
    stopped_at: Option<u64>,
}

impl MessageParser {
    /// `mid_stream`: the direction was picked up without its start, so skip
    /// to the first start line. `offset`: where in the stream it starts.
    pub fn new(role: Role, mid_stream: bool, offset: u64) -> Self {
        Self {
            role,
            state: State::Start { resync: mid_stream },
            buf: Vec::new(),
            open: false,
            offset,
            cursor: offset,
            head_searched: (u64::MAX, 0),
            heads: 0,
            malformed: 0,
            skipped_bytes: 0,
            line_start: !mid_stream,
            keep_broken: false,
            damaged: false,
            oversize_heads: 0,
            lead_problem: false,
            stopped_at: None,
        }
    }

    /// The stream offset after the message that opened a tunnel.
    pub fn stopped_at(&self) -> Option<u64> {
        self.stopped_at
    }

    /// Keep the bytes of bodies whose framing breaks, in the message.
    pub fn keeping_broken_bodies(mut self) -> Self {
        self.keep_broken = true;
        self
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_dead(&self) -> bool {
        self.state == State::Dead
    }

    pub fn kill(&mut self) {
        self.state = State::Dead;
        self.buf = Vec::new();
    }

    /// Bytes held for an incomplete head or line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes that follow the previous ones in the stream.
    pub fn feed(&mut self, data: &[u8], ts: i64, sink: &mut dyn Sink) {
        if self.state == State::Dead || data.is_empty() {
            return;
        }
        let data = match self.finish_buffered(data, ts, sink) {
            Some(rest) => rest,
            None => return,
        };
        let used = self.run(data, ts, sink);
        self.offset += used as u64;
        if used < data.len() && self.state != State::Dead {
            self.buf.extend_from_slice(&data[used..]);
        }
    }

    /// With bytes left over from before (a head split across segments),
    /// append as little of `data` as completes them, so that bodies that
    /// follow are not copied through the buffer. Returns the part of `data`
    /// still to process, or None when all of it went into the buffer.
    fn finish_buffered<'d>(
        &mut self,
        mut data: &'d [u8],
        ts: i64,
        sink: &mut dyn Sink,
    ) -> Option<&'d [u8]> {
        while !self.buf.is_empty() {
            let old = self.buf.len();
            let take = data.len().min(old.max(4096));
            let mut buf = std::mem::take(&mut self.buf);
            buf.extend_from_slice(&data[..take]);
            let used = self.run(&buf, ts, sink);
            self.offset += used as u64;
            if self.state == State::Dead {
                return None;
            }
            if used >= old {
                // Past the old bytes: go on with `data` itself.
                buf.clear();
                self.buf = buf;
                return Some(&data[used - old..]);
            }
            buf.drain(..used);
            self.buf = buf;
            data = &data[take..];
            if data.is_empty() {
                return None;
            }
        }
        Some(data)
    }

    /// `len` bytes of the stream were never captured.
    pub fn gap(&mut self, len: u64, ts: i64, sink: &mut dyn Sink) {
        let pending = std::mem::take(&mut self.buf);
        self.cursor = self.offset;
        let lost_at = self.offset + pending.len() as u64;
        self.offset += pending.len() as u64 + len;
        self.line_start = false;
        match self.state {
            State::Dead => {}
            State::Length(rem) if pending.is_empty() && len < rem => {
                sink.body_gap(self.role, len);
                self.state = State::Length(rem - len);
                self.mark_gap_inside(sink);
            }
            State::Length(rem) if pending.is_empty() => {
                // The gap covers the end of this body and maybe the start of
                // the next message.
                sink.body_gap(self.role, rem);
                self.finish_message(ts, End::Gap, sink);
                if len > rem {
                    sink.lost(self.role, lost_at + rem, true);
                    self.state = State::Start { resync: true };
                }
            }
            State::Chunked(Chunk::Data(rem)) if pending.is_empty() && len < rem => {
                // Inside one chunk's data: its size says where it ends, so
                // the framing (and the stream's later chunks) survive.
                sink.body_gap(self.role, len);
                self.state = State::Chunked(Chunk::Data(rem - len));
                self.mark_gap_inside(sink);
            }
            State::UntilClose => {
                sink.body_gap(self.role, len);
                self.mark_gap_inside(sink);
            }
            State::Start { resync } => {
                // A head whose tail is lost is still reported; the lost
                // bytes may hold more messages after it.
                let salvaged = self.salvage_head(&pending, ts, End::Gap, sink);
                sink.lost(self.role, lost_at, !salvaged && !resync);
                self.state = State::Start { resync: true };
            }
            _ => {
                // Inside chunked framing or a body of unknown length: the
                // loss may end this message and hold others.
                if self.state == State::UntilNextHead && !pending.is_empty() {
                    sink.body(self.role, &pending, ts);
                }
                self.finish_message(ts, End::Gap, sink);
                sink.lost(self.role, lost_at, false);
                self.state = State::Start { resync: true };
            }
        }
    }

    /// The direction ended: `closed` by its sender (FIN), or not (RST, end
    /// of capture, idle expiry, eviction).
    pub fn finish(&mut self, ts: i64, closed: bool, sink: &mut dyn Sink) {
        let pending = std::mem::take(&mut self.buf);
        self.cursor = self.offset;
        match self.state {
            State::Dead => {}
            State::UntilClose | State::UntilNextHead => {
                // Bytes held back in case they began a glued head are body.
                if !pending.is_empty() {
                    sink.body(self.role, &pending, ts);
                }
                // A body that runs to the close is whole only if the sender
                // closed it (RFC 9112 section 8): a reset or the end of the
                // capture cuts it.
                let end = if closed { End::Complete } else { End::Cut };
                self.finish_message(ts, end, sink)
            }
            State::Start { .. } => {
                self.salvage_head(&pending, ts, End::Cut, sink);
            }
            _ => self.finish_message(ts, End::Cut, sink),
        }
        self.state = State::Dead;
    }

    /// A gap inside a body whose framing survives: flag the message, keep going.
    fn mark_gap_inside(&mut self, sink: &mut dyn Sink) {
        // Reported as a zero-length gap so the owner flags the message now;
        // the message still ends normally when its framing says so.
        sink.body_gap(self.role, 0);
    }

    fn finish_message(&mut self, ts: i64, how: End, sink: &mut dyn Sink) {
        let how = match how {
            End::Complete if self.damaged => End::Malformed,
            how => how,
        };
        self.damaged = false;
        if self.open {
            self.open = false;
            sink.end(self.role, ts, how);
        }
        self.state = State::Start { resync: false };
    }

    /// On a gap or end while a head was half received: report what can be
    /// read of it (the start line and complete header lines), so a request
    /// whose tail was lost is still listed. Returns whether anything was.
    fn salvage_head(&mut self, pending: &[u8], ts: i64, how: End, sink: &mut dyn Sink) -> bool {
        let start = skip_blank_lines(pending);
        let data = &pending[start..];
        let mut head = match data.iter().rposition(|&b| b == b'\n') {
            // Keep only complete lines, then close the head artificially.
            Some(last_nl) => data[..=last_nl].to_vec(),
            // Only part of the start line (snaplen): keep it if it names at
            // least a method and a target, as tshark does.
            None if data.len() < MAX_LINE && data.contains(&b' ') => {
                let mut line = data.to_vec();
                line.push(b'\n');
                line
            }
            None => return false,
        };
        // Bytes kept while resynchronising are not known to start a
        // message: only a whole, strict start line counts there.
        let trusted = !matches!(self.state, State::Start { resync: true });
        if self.looks_like_start(&head, trusted) != Looks::Yes {
            return false;
        }
        head.extend_from_slice(b"\r\n");
        let Some(parsed) = parse_head(self.role, &head) else {
            return false;
        };
        self.heads += 1;
        sink.head(self.role, parsed.0, ts, self.cursor + start as u64);
        sink.end(self.role, ts, how);
        true
    }

    /// Process `input`; returns how many bytes were consumed.
    fn run(&mut self, input: &[u8], ts: i64, sink: &mut dyn Sink) -> usize {
        let mut at = 0;
        // Each round consumes bytes or returns, so this ends.
        loop {
            let rest = &input[at..];
            self.cursor = self.offset + at as u64;
            let used = match self.state {
                State::Dead => {
                    // After a tunnel opened: what follows is not HTTP/1.
                    self.stopped_at.get_or_insert(self.offset + at as u64);
                    return input.len();
                }
                _ if rest.is_empty() => return at,
                State::Start { resync: true } => self.resync(rest),
                State::Start { resync: false } => self.start(rest, ts, sink),
                State::Length(rem) => {
                    let n = rem.min(rest.len() as u64) as usize;
                    sink.body(self.role, &rest[..n], ts);
                    if n as u64 == rem {
                        self.finish_message(ts, End::Complete, sink);
                    } else {
                        self.state = State::Length(rem - n as u64);
                    }
                    Some(n)
                }
                State::UntilClose => {
                    sink.body(self.role, rest, ts);
                    Some(rest.len())
                }
                State::UntilNextHead => self.until_next_head(rest, ts, sink),
                State::Chunked(c) => self.chunked(c, rest, ts, sink),
            };
            match used {
                Some(n) => at += n,
                None => return at,
            }
        }
    }

    /// A body of unknown framing: pass bytes on until a line starts the
    /// next message.
    fn until_next_head(&mut self, rest: &[u8], ts: i64, sink: &mut dyn Sink) -> Option<usize> {
        // Bodies without a final newline glue the next head to them.
        let scan = match (
            self.scan_lines(rest, self.line_start),
            glued_start(self.role, rest, self.line_start),
        ) {
            (Scan::Found(p) | Scan::NeedMore(p), Some(g)) if g < p => Scan::Found(g),
            (Scan::NotFound, Some(g)) => Scan::Found(g),
            (scan, _) => scan,
        };
        let (body, next) = match scan {
            Scan::Found(p) => (p, true),
            Scan::NeedMore(p) => (p, false),
            // Keep a tail that may begin a head glued to the body.
            Scan::NotFound => (rest.len() - rest.len().min(GLUE_TAIL), false),
        };
        if body > 0 {
            sink.body(self.role, &rest[..body], ts);
            self.line_start = rest[body - 1] == b'\n';
        }
        if next {
            self.finish_message(ts, End::Complete, sink);
            return Some(body);
        }
        (body > 0).then_some(body)
    }

    /// Skip to the next plausible start line. `None` when more bytes are needed.
    fn resync(&mut self, rest: &[u8]) -> Option<usize> {
        let trusted = self.line_start;
        let found = match (
            self.scan_lines(rest, trusted),
            glued_start(self.role, rest, trusted),
        ) {
            (Scan::Found(p), Some(g)) | (Scan::NeedMore(p), Some(g)) if g < p => Scan::Found(g),
            (Scan::NotFound, Some(g)) => Scan::Found(g),
            (scan, _) => scan,
        };
        let used = match found {
            Scan::Found(pos) => {
                self.state = State::Start { resync: false };
                pos
            }
            Scan::NeedMore(pos) => pos,
            // Keep a tail that may hold the beginning of a start line glued
            // to the bytes before it.
            Scan::NotFound => rest.len() - rest.len().min(RESYNC_TAIL),
        };
        self.skipped_bytes += used as u64;
        if used > 0 {
            self.line_start = rest[used - 1] == b'\n';
        }
        if used == 0 && !matches!(found, Scan::Found(_)) {
            None
        } else {
            Some(used)
        }
    }

    /// The first line start that is (or may become) a start line;
    /// `trusted`: whether `rest` itself begins a line.
    fn scan_lines(&self, rest: &[u8], trusted: bool) -> Scan {
        let mut pos = 0;
        if !trusted {
            match memchr(b'\n', rest) {
                Some(nl) => pos = nl + 1,
                None => return Scan::NotFound,
            }
        }
        loop {
            match self.looks_like_start(&rest[pos..], false) {
                Looks::Yes => return Scan::Found(pos),
                Looks::NeedMore if rest.len() - pos < MAX_LINE => return Scan::NeedMore(pos),
                _ => match memchr(b'\n', &rest[pos..]) {
                    Some(nl) => pos += nl + 1,
                    None => return Scan::NotFound,
                },
            }
        }
    }

    fn start(&mut self, rest: &[u8], ts: i64, sink: &mut dyn Sink) -> Option<usize> {
        let blank = skip_blank_lines(rest);
        if blank > 0 {
            // Empty lines before a start line are allowed; a lone CR is not.
            let lone_cr = rest[..blank]
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\r' && rest.get(i + 1).is_some_and(|&n| n != b'\n'));
            self.lead_problem |= lone_cr;
            return Some(blank);
        }
        if self.looks_like_start(rest, true) == Looks::No {
            return Some(self.malformed(rest, sink));
        }
        let end = match self.head_end(rest) {
            Some(end) if end <= MAX_HEAD => end,
            None if rest.len() <= MAX_HEAD => return None,
            _ => return Some(self.oversize_head(rest, ts, sink)),
        };
        let Some((head, _)) = parse_head(self.role, &rest[..end]) else {
            return Some(self.malformed(rest, sink));
        };
        self.begin(head, ts, sink);
        Some(end)
    }

    /// Where the head (or trailer section) at the cursor ends. The bytes
    /// searched by an earlier call cannot end it, except near their last
    /// line break, whose next two bytes may not have come then: a head
    /// arriving a byte at a time is searched once, not once per byte.
    fn head_end(&mut self, rest: &[u8]) -> Option<usize> {
        let from = match self.head_searched {
            (at, n) if at == self.cursor => n.saturating_sub(2).min(rest.len()),
            _ => 0,
        };
        let end = head_end(rest, from);
        if end.is_none() {
            self.head_searched = (self.cursor, rest.len());
        }
        end
    }

    /// A head larger than [`MAX_HEAD`]: kept up to the last whole line that
    /// fits and flagged; what follows stays in the message's body, up to
    /// the next message start. Returns the bytes taken as the head.
    fn oversize_head(&mut self, rest: &[u8], ts: i64, sink: &mut dyn Sink) -> usize {
        let fits = &rest[..MAX_HEAD];
        let Some(last_nl) = fits.iter().rposition(|&b| b == b'\n') else {
            return self.malformed(rest, sink);
        };
        let mut bytes = fits[..=last_nl].to_vec();
        bytes.extend_from_slice(b"\r\n");
        let Some((mut head, _)) = parse_head(self.role, &bytes) else {
            return self.malformed(rest, sink);
        };
        self.oversize_heads += 1;
        head.problem = Some(format!(
            "head larger than {} KiB: kept to the last whole line that fits",
            MAX_HEAD / 1024
        ));
        head.framing_unsure = true;
        self.begin(head, ts, sink);
        last_nl + 1
    }

    /// Report a parsed head and enter its body's framing.
    fn begin(&mut self, mut head: Head, ts: i64, sink: &mut dyn Sink) {
        if std::mem::take(&mut self.lead_problem) {
            head.problem
                .get_or_insert_with(|| "bare CR before the start line".into());
        }
        self.heads += 1;
        self.open = true;
        let framing = sink.head(self.role, head, ts, self.cursor);
        self.state = match framing {
            Framing::None | Framing::Length(0) => {
                self.finish_message(ts, End::Complete, sink);
                State::Start { resync: false }
            }
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
            Framing::UntilNextHead => {
                self.line_start = true;
                State::UntilNextHead
            }
            Framing::Tunnel => {
                self.finish_message(ts, End::Complete, sink);
                State::Dead
            }
        };
    }

    /// Bytes that cannot be a message start: note it and resynchronise.
    fn malformed(&mut self, rest: &[u8], sink: &mut dyn Sink) -> usize {
        self.malformed += 1;
        if let (Role::Response, State::Start { resync: false }) = (self.role, self.state) {
            let line = rest.split(|&b| b == b'\n').next().unwrap_or(b"");
            let line = &line[..line.len().min(80)];
            let detail = format!("invalid status line: {:?}", latin1(line));
            sink.problem(self.role, detail);
        }
        sink.lost(self.role, self.cursor, true);
        self.state = State::Start { resync: true };
        self.line_start = false;
        // Skip at least one byte so resync cannot match the same place again.
        1
    }

    fn chunked(&mut self, c: Chunk, rest: &[u8], ts: i64, sink: &mut dyn Sink) -> Option<usize> {
        match c {
            Chunk::Size => {
                let Some(nl) = memchr(b'\n', rest) else {
                    if rest.len() > MAX_LINE {
                        return Some(self.broken(ts, sink, "chunk-size line too long".into()));
                    }
                    return None;
                };
                match parse_chunk_size(&rest[..nl]) {
                    Ok(0) => self.state = State::Chunked(Chunk::Trailers),
                    Ok(n) => self.state = State::Chunked(Chunk::Data(n)),
                    Err(detail) => return Some(self.broken(ts, sink, detail)),
                }
                Some(nl + 1)
            }
            Chunk::Data(rem) => {
                let n = rem.min(rest.len() as u64) as usize;
                sink.body(self.role, &rest[..n], ts);
                self.state = State::Chunked(if n as u64 == rem {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rem - n as u64)
                });
                Some(n)
            }
            Chunk::DataEnd => {
                if rest.starts_with(b"\r\n") {
                    self.state = State::Chunked(Chunk::Size);
                    Some(2)
                } else if rest.starts_with(b"\n") {
                    self.state = State::Chunked(Chunk::Size);
                    Some(1)
                } else if rest == b"\r" {
                    None
                } else {
                    Some(self.broken(ts, sink, "chunk data not followed by CRLF".into()))
                }
            }
            Chunk::Trailers => {
                let blank = if rest.starts_with(b"\r\n") {
                    2
                } else if rest.starts_with(b"\n") {
                    1
                } else {
                    0
                };
                if blank > 0 {
                    self.finish_message(ts, End::Complete, sink);
                    return Some(blank);
                }
                if rest == b"\r" {
                    return None;
                }
                let Some(end) = self.head_end(rest) else {
                    if rest.len() > MAX_HEAD {
                        return Some(self.broken(ts, sink, "trailer section too large".into()));
                    }
                    return None;
                };
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&rest[..end], &mut headers) {
                    Ok(httparse::Status::Complete((_, parsed))) => {
                        let mut list = HeaderList::new();
                        parsed
                            .iter()
                            .for_each(|h| list.push(h.name.as_bytes(), h.value));
                        sink.trailers(self.role, list);
                        self.finish_message(ts, End::Complete, sink);
                    }
                    _ => {
                        // Kept as far as a line-by-line reading goes, flagged.
                        self.malformed += 1;
                        if let Some((head, _)) = parse_head_lenient_fields(&rest[..end]) {
                            sink.trailers(self.role, head);
                        }
                        sink.problem(self.role, "invalid trailer section".into());
                        self.finish_message(ts, End::Malformed, sink);
                    }
                }
                Some(end)
            }
        }
    }

    /// The body framing broke: the message is malformed. A recorder keeps
    /// what follows in its body up to the next message start; otherwise
    /// the message ends here and the parser resynchronises.
    fn broken(&mut self, ts: i64, sink: &mut dyn Sink, detail: String) -> usize {
        self.malformed += 1;
        sink.problem(self.role, detail);
        if self.keep_broken && self.open {
            self.damaged = true;
            self.state = State::UntilNextHead;
            self.line_start = false;
            return 0;
        }
        self.finish_message(ts, End::Malformed, sink);
        self.state = State::Start { resync: true };
        self.line_start = false;
        0
    }

    /// Whether `d` starts with a start line; `lenient` only at a message
    /// boundary we trust (not while skipping unknown bytes).
    fn looks_like_start(&self, d: &[u8], lenient: bool) -> Looks {
        match self.role {
            Role::Request => looks_like_request_line(d, lenient),
            Role::Response => looks_like_status_line(d),
        }
    }
}

pub(crate) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

/// Bytes kept while scanning a body of unknown framing, in case a status
/// line glued to it begins in them ("HTTP/1.1 200" is 12 bytes).
const GLUE_TAIL: usize = 16;

/// Bytes kept while resynchronising, in case a start line begins in them.
const RESYNC_TAIL: usize = 8 * 1024;

/// Where a start line may be found while resynchronising.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    Found(usize),
    /// A candidate starts here but is not complete yet.
    NeedMore(usize),
    NotFound,
}

/// Methods recognised at the end of a token glued to earlier bytes
/// (`...}POST /x HTTP/1.1`), longest first.
const KNOWN_METHODS: [&[u8]; 14] = [
    b"PROPPATCH",
    b"PROPFIND",
    b"OPTIONS",
    b"CONNECT",
    b"UNLOCK",
    b"DELETE",
    b"PATCH",
    b"TRACE",
    b"MKCOL",
    b"POST",
    b"HEAD",
    b"MOVE",
    b"COPY",
    b"LOCK",
];

/// A start line that does not begin a line: bodies without a final newline
/// are glued to the next message. Found through its "HTTP/1." marker.
/// `trusted`: whether `rest` begins a line; if not, a method at its very
/// start may be the tail of a longer word and must be a known method whole.
fn glued_start(role: Role, rest: &[u8], trusted: bool) -> Option<usize> {
    for at in memchr::memmem::find_iter(rest, b"HTTP/1.") {
        let start = match role {
            Role::Response => at,
            Role::Request => match request_line_start(rest, at) {
                Some(start) => start,
                // Not a request line ("r/2 HTTP/1.1" after a loss): look on.
                None => continue,
            },
        };
        if role == Role::Request && start == 0 && !trusted {
            let method = rest.split(|&b| b == b' ').next().unwrap_or(b"");
            let known = method == b"GET" || method == b"PUT" || KNOWN_METHODS.contains(&method);
            if !known {
                continue;
            }
        }
        let ok = match role {
            Role::Response => looks_like_status_line(&rest[start..]),
            Role::Request => looks_like_request_line(&rest[start..], false),
        };
        if ok == Looks::Yes {
            return Some(start);
        }
    }
    None
}

/// Given the position of "HTTP/1." ending a request line, where that line's
/// method begins.
fn request_line_start(rest: &[u8], version_at: usize) -> Option<usize> {
    let before = rest[..version_at].strip_suffix(b" ")?;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let target_sp = before[line_start..].iter().rposition(|&b| b == b' ')? + line_start;
    let token_start = before[line_start..target_sp]
        .iter()
        .rposition(|&b| !is_tchar(b))
        .map_or(line_start, |i| line_start + i + 1);
    let token = &rest[token_start..target_sp];
    if token.len() <= 32 && token.iter().all(|b| b.is_ascii_uppercase()) {
        return Some(token_start);
    }
    // A method glued to body bytes: keep the known method at its end.
    KNOWN_METHODS
        .iter()
        .chain([&b"GET"[..], b"PUT"].iter())
        .find(|m| token.ends_with(m))
        .map(|m| target_sp - m.len())
}

fn skip_blank_lines(d: &[u8]) -> usize {
    let mut i = 0;
    while i < d.len() && (d[i] == b'\r' || d[i] == b'\n') {
        i += 1;
    }
    i
}

/// End of the head (index after the blank line), if it is all there.
/// Where the head in `d` ends (after its blank line), searching for the
/// line breaks from `from` on.
fn head_end(d: &[u8], mut from: usize) -> Option<usize> {
    while let Some(nl) = memchr(b'\n', &d[from..]) {
        let i = from + nl;
        let next = &d[i + 1..];
        if next.starts_with(b"\r\n") {
            return Some(i + 3);
        }
        if next.starts_with(b"\n") {
            return Some(i + 2);
        }
        from = i + 1;
    }
    None
}

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// RFC 9110 token characters as a table: checked for every byte of every
/// method and field name, where scanning the list of symbols showed in the
/// capture profile.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// `METHOD SP target SP HTTP/x.y` (checked as far as the bytes go).
///
/// `lenient` (used where a message must begin, never when skipping junk)
/// also accepts what servers answer although it is malformed: a missing or
/// broken version (`GET /`, `GET / HTTP/1.`) or a missing target
/// (`OPTIONS`), as long as the method is an upper-case token.
pub fn looks_like_request_line(d: &[u8], lenient: bool) -> Looks {
    let method_len = d.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == 0 && !d.is_empty() || method_len > 32 {
        return Looks::No;
    }
    // Methods are words: "0" (a chunk end after lost framing) is not one.
    if d.first().is_some_and(|b| !b.is_ascii_alphabetic()) {
        return Looks::No;
    }
    let upper = d[..method_len]
        .iter()
        .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    // Outside a trusted message boundary (resynchronising after a loss),
    // the bytes before a method may be the tail of a body: "q5q5HEAD /x"
    // must not read as a method "q5q5HEAD" (the glued-start search finds
    // HEAD). Methods in the wild are upper-case.
    if !lenient && !upper && method_len > 0 {
        return Looks::No;
    }
    let lenient = lenient && upper;
    match d.get(method_len) {
        None => return Looks::NeedMore,
        Some(b' ') => {}
        Some(b'\r' | b'\n') if lenient => {}
        Some(_) => return Looks::No,
    }
    let line_end = match memchr(b'\n', d) {
        Some(i) => i,
        None if d.len() > MAX_LINE => return Looks::No,
        None => return Looks::NeedMore,
    };
    let line = &d[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if lenient {
        return if line.iter().all(|&b| b >= 0x20 && b != 0x7f) {
            Looks::Yes
        } else {
            Looks::No
        };
    }
    let Some(sp) = line.iter().rposition(|&b| b == b' ') else {
        return Looks::No;
    };
    if sp <= method_len {
        return Looks::No;
    }
    let version = &line[sp + 1..];
    let target = line[method_len + 1..sp].trim_ascii();
    if target.is_empty() || !is_version(version) {
        return Looks::No;
    }
    Looks::Yes
}

fn is_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}

/// `HTTP/x.y SP NNN` (checked as far as the bytes go).
pub fn looks_like_status_line(d: &[u8]) -> Looks {
    const P: &[u8] = b"HTTP/";
    let n = d.len().min(P.len());
    if d[..n] != P[..n] {
        return Looks::No;
    }
    if d.len() < 12 {
        return Looks::NeedMore;
    }
    if is_version(&d[..8]) && d[8] == b' ' && d[9..12].iter().all(u8::is_ascii_digit) {
        Looks::Yes
    } else {
        Looks::No
    }
}

/// `chunk-size [chunk-ext]` (RFC 9112 section 7.1); the line end is CRLF or
/// LF, and no other CR may appear.
fn parse_chunk_size(line: &[u8]) -> Result<u64, String> {
    let bad = || format!("invalid chunk-size line: {}", latin1(line).escape_debug());
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.contains(&b'\r') {
        return Err(bad());
    }
    let digits = line.split(|&b| b == b';').next().unwrap_or(b"");
    // Whitespace may stand before an extension (BWS), never before the size.
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad())?;
    u64::from_str_radix(text, 16).map_err(|_| bad())
}

fn parser_config() -> httparse::ParserConfig {
    // Be as lenient as servers in the wild: we observe, we do not enforce.
    let mut c = httparse::ParserConfig::default();
    c.allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_space_before_first_header_name(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    c
}

fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Parse a complete head. Start-line fields keep their exact wire bytes.
/// Parse a complete head: strictly when it is what RFC 9112 allows, else
/// line by line keeping every line, with what was wrong in `problem`.
fn parse_head(role: Role, head: &[u8]) -> Option<(Head, usize)> {
    let mut problem = strict::head_problem(role, head);
    let strict = if problem.is_none() {
        parse_head_strict(role, head)
    } else {
        None
    };
    let (mut parsed, used) = match strict {
        Some(p) => p,
        None => {
            problem.get_or_insert_with(|| "head not readable by a strict parser".into());
            parse_head_lenient(role, head)?
        }
    };
    let framing = strict::framing_problem(role, &parsed.headers);
    parsed.framing_unsure = framing.is_some()
        || problem
            .as_deref()
            .is_some_and(|p| p.contains("bare CR") || p.contains("folding"));
    parsed.problem = problem.or(framing);
    Some((parsed, used))
}

/// `HTTP/1.x` for httparse's minor version, without the formatting
/// machinery: it ran for every head and was 5% of the capture's parser
/// thread.
fn version_text(minor: u8) -> String {
    match minor {
        1 => "HTTP/1.1".into(),
        0 => "HTTP/1.0".into(),
        n => format!("HTTP/1.{n}"),
    }
}

fn parse_head_strict(role: Role, head: &[u8]) -> Option<(Head, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let config = parser_config();
    let (line, used, parsed): (StartLine, usize, &[httparse::Header]) = match role {
        Role::Request => {
            let mut req = httparse::Request::new(&mut headers);
            let used = match config.parse_request(&mut req, head) {
                Ok(httparse::Status::Complete(n)) => n,
                _ => return None,
            };
            let method = req.method?;
            let path = req.path?;
            let version = version_text(req.version?);
            let m = offset_in(head, method.as_bytes());
            let p = offset_in(head, path.as_bytes());
            let line = StartLine::Request {
                method: latin1(&head[m..m + method.len()]).into_owned(),
                target: latin1(&head[p..p + path.len()]).into_owned(),
                version,
            };
            (line, used, &*req.headers)
        }
        Role::Response => {
            let mut resp = httparse::Response::new(&mut headers);
            let used = match config.parse_response(&mut resp, head) {
                Ok(httparse::Status::Complete(n)) => n,
                _ => return None,
            };
            let line = StartLine::Response {
                version: version_text(resp.version?),
                status: resp.code?,
                reason: latin1(resp.reason.unwrap_or("").as_bytes()).into_owned(),
            };
            (line, used, &*resp.headers)
        }
    };
    let mut list = HeaderList::with_capacity(parsed.len(), used);
    for h in parsed {
        list.push(h.name.as_bytes(), h.value);
    }
    Some((
        Head {
            line,
            headers: list,
            problem: None,
            framing_unsure: false,
        },
        used,
    ))
}

/// Header fields read line by line, keeping every line: folded lines are
/// unfolded (RFC 9112 section 5.2), a line without a colon is kept as a
/// name with an empty value.
fn fields_leniently<'a>(lines: impl Iterator<Item = &'a [u8]>) -> HeaderList {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for l in lines.take_while(|l| !l.is_empty()) {
        if matches!(l.first(), Some(b' ' | b'\t')) && !fields.is_empty() {
            let last = fields.last_mut().expect("not empty");
            last.1.push(b' ');
            last.1.extend_from_slice(l.trim_ascii());
        } else if let Some(colon) = memchr(b':', l) {
            fields.push((
                l[..colon].trim_ascii().to_vec(),
                l[colon + 1..].trim_ascii().to_vec(),
            ));
        } else {
            fields.push((l.trim_ascii().to_vec(), Vec::new()));
        }
    }
    let mut headers = HeaderList::new();
    fields.iter().for_each(|(n, v)| headers.push(n, v));
    headers
}

/// A trailer section read line by line (see [`fields_leniently`]).
fn parse_head_lenient_fields(section: &[u8]) -> Option<(HeaderList, usize)> {
    let lines = section
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    Some((fields_leniently(lines), section.len()))
}

/// Line-by-line parsing for heads httparse rejects (spaces in the target,
/// bytes it does not allow in names): servers accept these, so we record them.
fn parse_head_lenient(role: Role, head: &[u8]) -> Option<(Head, usize)> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let line = match role {
        Role::Request => {
            // METHOD [SP target [SP version]]; the version is the last word
            // when it starts with "HTTP/", so a target may hold spaces.
            let (method, rest) = match memchr(b' ', first) {
                Some(sp) => (&first[..sp], first[sp + 1..].trim_ascii()),
                None => (first, &b""[..]),
            };
            let (target, version) = match rest.iter().rposition(|&b| b == b' ') {
                // A version cut short by snaplen ("HTT") still counts as one.
                Some(sp)
                    if rest[sp + 1..].starts_with(b"HTTP/")
                        || b"HTTP/".starts_with(&rest[sp + 1..]) =>
                {
                    (rest[..sp].trim_ascii(), &rest[sp + 1..])
                }
                _ => (rest, &b""[..]),
            };
            if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
                return None;
            }
            StartLine::Request {
                method: latin1(method).into_owned(),
                target: latin1(target).into_owned(),
                version: latin1(version).into_owned(),
            }
        }
        Role::Response => {
            if looks_like_status_line(first) != Looks::Yes {
                return None;
            }
            StartLine::Response {
                version: latin1(&first[..8]).into_owned(),
                status: std::str::from_utf8(&first[9..12]).ok()?.parse().ok()?,
                reason: latin1(first.get(13..).unwrap_or(b"")).into_owned(),
            }
        }
    };
    let headers = fields_leniently(lines);
    Some((
        Head {
            line,
            headers,
            problem: None,
            framing_unsure: false,
        },
        head.len(),
    ))
}

fn content_length(h: &HeaderList) -> Result<Option<u64>, ()> {
    let Some(v) = h.get("content-length") else {
        return Ok(None);
    };
    // "5, 5" (repeated by a proxy) is one length; anything else is broken.
    let mut value = None;
    for part in v.split(|&b| b == b',') {
        let n: u64 = std::str::from_utf8(part.trim_ascii())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(())?;
        if value.is_some_and(|v| v != n) {
            return Err(());
        }
        value = Some(n);
    }
    Ok(value)
}

fn is_chunked(h: &HeaderList) -> Option<bool> {
    let last = h.get_all("transfer-encoding").last()?;
    let coding = last
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    Some(coding.eq_ignore_ascii_case(b"chunked"))
}

/// Body framing of a request (RFC 9112 section 6.3).
pub fn request_framing(head: &Head) -> Framing {
    // RFC 9110 section 9.3.6: a CONNECT request has no content.
    if matches!(&head.line, StartLine::Request { method, .. } if method == "CONNECT") {
        return Framing::None;
    }
    match is_chunked(&head.headers) {
        Some(true) => return Framing::Chunked,
        // A request cannot be close-delimited; a non-chunked coding is broken.
        Some(false) => return Framing::None,
        None => {}
    }
    match content_length(&head.headers) {
        Ok(Some(n)) => Framing::Length(n),
        _ => Framing::None,
    }
}

/// Body framing of a response to a request with `method` (None if unknown).
pub fn response_framing(head: &Head, method: Option<&str>) -> Framing {
    let StartLine::Response { status, .. } = head.line else {
        return Framing::None;
    };
    if status == 101 || (method == Some("CONNECT") && (200..300).contains(&status)) {
        return Framing::Tunnel;
    }
    if method == Some("HEAD") || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::None;
    }
    match is_chunked(&head.headers) {
        Some(true) => return Framing::Chunked,
        Some(false) => return Framing::UntilClose,
        None => {}
    }
    match content_length(&head.headers) {
        Ok(Some(n)) => Framing::Length(n),
        _ => Framing::UntilClose,
    }
}

#[cfg(test)]
mod tests;
