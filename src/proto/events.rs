//! Event streams in a response body: server-sent events (WHATWG HTML,
//! "event stream interpretation") and newline-delimited JSON. Fed the body
//! in the pieces it arrived in, each with its arrival time, so one parser
//! gives capture (packet times), replay (read times) and diff (stored
//! bodies) the same events at the same positions.
//!
//! Hand-written: the SSE crates parse from an async byte stream and hide
//! where and when each event ended, which is what TTFT and token gaps need;
//! the format itself is a few rules.

/// How a body is cut into events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/event-stream`.
    Sse,
    /// One JSON value per line (`application/x-ndjson`, `application/jsonl`).
    Ndjson,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Sse => "sse",
            Format::Ndjson => "ndjson",
        }
    }
}

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The SSE `event:` field, if any.
    pub name: Option<String>,
    /// SSE: the `data:` lines joined with LF. NDJSON: the line.
    pub data: Vec<u8>,
    /// Arrival time of the piece that completed the event.
    pub ts: i64,
    /// Body offset just past the line end that dispatched the event (for
    /// CRLF, its CR: the event is complete there).
    pub end: u64,
    /// The event was longer than [`MAX_EVENT`] and was cut there.
    pub truncated: bool,
}

/// Bytes kept of one event; the rest is dropped (and flagged) so a stream
/// without line ends cannot grow memory without bound.
pub const MAX_EVENT: usize = 8 << 20;
/// A UTF-8 byte-order mark, which an event stream may begin with.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Which format a response body is, from its content type, else from its
/// first bytes (servers label streams `text/plain` or `application/json`).
pub fn detect(content_type: Option<&[u8]>, body: &[u8]) -> Option<Format> {
    content_type
        .and_then(by_content_type)
        .or_else(|| sniff(body))
}

/// The format a content type names, if it names one (no allocation: this
/// runs on every answer `diff` reads).
pub fn by_content_type(ct: &[u8]) -> Option<Format> {
    let mime = ct.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    let is = |name: &[u8]| mime.eq_ignore_ascii_case(name);
    if is(b"text/event-stream") {
        return Some(Format::Sse);
    }
    let ndjson: [&[u8]; 6] = [
        b"application/x-ndjson",
        b"application/ndjson",
        b"application/jsonl",
        b"application/x-jsonlines",
        b"application/jsonlines",
        b"application/json-lines",
    ];
    ndjson.iter().any(|n| is(n)).then_some(Format::Ndjson)
}

/// Content sniffing: an SSE body starts with a field line and has a blank
/// line; an NDJSON body is two or more lines that each hold a whole JSON
/// object (a pretty-printed document fails on its first line `{`).
pub fn sniff(body: &[u8]) -> Option<Format> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let body = &body[start..];
    let field = [&b"data:"[..], b"event:", b"id:", b"retry:", b":"]
        .iter()
        .any(|p| body.starts_with(p));
    if field {
        let blank = memchr::memmem::find(body, b"\n\n").is_some()
            || memchr::memmem::find(body, b"\r\n\r\n").is_some();
        return (blank && sse_lines(body)).then_some(Format::Sse);
    }
    if body[0] != b'{' {
        return None;
    }
    let first_end = memchr::memchr(b'\n', body)?;
    let rest = &body[first_end + 1..];
    let next = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[next] != b'{' {
        return None;
    }
    let whole = |line: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
    let second = &rest[next..];
    let second = &second[..memchr::memchr(b'\n', second).unwrap_or(second.len())];
    (whole(&body[..first_end]) && whole(second)).then_some(Format::Ndjson)
}

/// Whether every line of an unlabelled body is an SSE field a stream sends
/// (`data`, `event`, `id`, `retry`) or a comment, with some `data`: text
/// that only starts like one (`id: 1` then `status: ok`, or an event then
/// prose) is compared as it is, not reduced to its events.
fn sse_lines(body: &[u8]) -> bool {
    let mut data = false;
    // A body cut at --max-body may end inside a line, even inside a field
    // name: a last line without its end only has to begin like a field.
    let (whole, last) = match body.iter().rposition(|&b| b == b'\n' || b == b'\r') {
        Some(end) => body.split_at(end + 1),
        None => (body, &b""[..]),
    };
    let fields: [&[u8]; 4] = [b"data", b"event", b"id", b"retry"];
    // Either a field's name cut short, or a whole name (then a colon, or
    // the end): `data_error happened` begins like `data` but is no field.
    let last_name = &last[..memchr::memchr(b':', last).unwrap_or(last.len())];
    let begins_like_field = last.is_empty()
        || last[0] == b':'
        || fields
            .iter()
            .any(|f| f.starts_with(last) || *f == last_name);
    if !begins_like_field {
        return false;
    }
    for line in whole.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let name = &line[..memchr::memchr(b':', line).unwrap_or(line.len())];
        match name {
            b"data" => data = true,
            b"event" | b"id" | b"retry" => {}
            _ => return false,
        }
    }
    data
}

/// The incremental parser. Feed pieces in order, then `finish`.
#[derive(Debug)]
pub struct EventParser {
    format: Format,
    /// The current (unfinished) line.
    line: Vec<u8>,
    line_truncated: bool,
    /// The last byte fed was a CR: an LF right after it ends nothing.
    after_cr: bool,
    /// At the very start (a BOM is skipped there).
    at_start: bool,
    /// At the start: the first bytes of what may be a BOM, held back.
    held: Vec<u8>,
    /// When the last bytes of the unfinished line arrived.
    tail_ts: i64,
    /// SSE: data lines of the event being built, each followed by LF.
    data: Vec<u8>,
    has_data: bool,
    name: Option<String>,
    event_truncated: bool,
    /// Bytes consumed so far.
    offset: u64,
}

impl EventParser {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            line: Vec::new(),
            line_truncated: false,
            after_cr: false,
            at_start: true,
            held: Vec::new(),
            tail_ts: 0,
            data: Vec::new(),
            has_data: false,
            name: None,
            event_truncated: false,
            offset: 0,
        }
    }

    /// Parse one piece that arrived at `ts`; completed events go to `out`.
    pub fn feed(&mut self, piece: &[u8], ts: i64, out: &mut impl FnMut(Event)) {
        if !self.at_start {
            return self.lines(piece, ts, out);
        }
        // A byte-order mark may arrive split: its first bytes wait until it
        // is whole or cannot be one, so the first event is never lost.
        let mut start = std::mem::take(&mut self.held);
        start.extend_from_slice(piece);
        if start.len() < BOM.len() && BOM.starts_with(&start) {
            self.held = start;
            return;
        }
        self.at_start = false;
        let rest = match start.strip_prefix(BOM) {
            Some(rest) => {
                self.offset += BOM.len() as u64;
                rest
            }
            None => &start[..],
        };
        self.lines(rest, ts, out);
    }

    fn lines(&mut self, piece: &[u8], ts: i64, out: &mut impl FnMut(Event)) {
        let mut i = 0;
        while i < piece.len() {
            let rest = &piece[i..];
            // SSE ends lines at CR, LF or CRLF; NDJSON at LF only (a CR
            // is whitespace inside JSON, and CRLF's CR is trimmed).
            let end = match self.format {
                Format::Sse => memchr::memchr2(b'\n', b'\r', rest),
                Format::Ndjson => memchr::memchr(b'\n', rest),
            };
            let Some(at) = end else {
                self.push_line_bytes(rest);
                self.offset += rest.len() as u64;
                self.after_cr = false;
                self.tail_ts = ts;
                return;
            };
            let lf_after_cr = at == 0 && rest[0] == b'\n' && self.after_cr;
            if !lf_after_cr {
                self.push_line_bytes(&rest[..at]);
            }
            self.after_cr = rest[at] == b'\r';
            self.offset += at as u64 + 1;
            i += at + 1;
            if !lf_after_cr {
                self.end_line(ts, out);
            }
        }
    }

    /// The body ended: an NDJSON line without its newline still counts when
    /// it is whole JSON; an SSE event without its blank line does not (the
    /// WHATWG rules drop it, and so does every client).
    pub fn finish(&mut self, ts: i64, out: &mut impl FnMut(Event)) {
        let held = std::mem::take(&mut self.held);
        self.lines(&held, ts, out);
        // The last line came with its last piece, not when the body ended
        // (a stream that stalled after it ends much later).
        let ts = if self.line.is_empty() {
            ts
        } else {
            self.tail_ts
        };
        if self.format == Format::Ndjson && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let line = line.trim_ascii();
            if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
                out(Event {
                    name: None,
                    data: line.to_vec(),
                    ts,
                    end: self.offset,
                    truncated: self.line_truncated,
                });
            }
        }
        self.line.clear();
        self.data.clear();
        self.has_data = false;
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        let room = MAX_EVENT.saturating_sub(self.line.len());
        if bytes.len() > room {
            self.line_truncated = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self, ts: i64, out: &mut impl FnMut(Event)) {
        let line = std::mem::take(&mut self.line);
        let truncated = std::mem::take(&mut self.line_truncated);
        match self.format {
            Format::Ndjson => {
                let trimmed = line.trim_ascii();
                if !trimmed.is_empty() {
                    out(Event {
                        name: None,
                        data: trimmed.to_vec(),
                        ts,
                        end: self.offset,
                        truncated,
                    });
                }
            }
            Format::Sse => self.sse_line(line, truncated, ts, out),
        }
    }

    fn sse_line(&mut self, line: Vec<u8>, truncated: bool, ts: i64, out: &mut impl FnMut(Event)) {
        if line.is_empty() {
            if self.has_data {
                self.data.pop(); // the LF after the last data line
                out(Event {
                    name: self.name.take(),
                    data: std::mem::take(&mut self.data),
                    ts,
                    end: self.offset,
                    truncated: std::mem::take(&mut self.event_truncated),
                });
            }
            self.has_data = false;
            self.name = None;
            self.event_truncated = false;
            return;
        }
        if line[0] == b':' {
            return; // a comment: keep-alives
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"data" => {
                let room = MAX_EVENT.saturating_sub(self.data.len());
                self.event_truncated |= truncated || value.len() + 1 > room;
                if room == 0 {
                    return; // full: not even the line's newline
                }
                let take = value.len().min(room.saturating_sub(1));
                self.data.extend_from_slice(&value[..take]);
                self.data.push(b'\n');
                self.has_data = true;
            }
            // An empty type is the default one (WHATWG: only a non-empty
            // buffer names the event), also after an earlier `event:`.
            b"event" if value.is_empty() => self.name = None,
            b"event" => self.name = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry and unknown fields change nothing we report
        }
    }
}

/// Events of a whole stored body whose pieces arrived as `arrivals` says
/// (`(body length after the piece, time)`, in order; bytes past the last
/// entry arrived at `end_ts`).
pub fn events_of(format: Format, body: &[u8], arrivals: &[(u64, i64)], end_ts: i64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut parser = EventParser::new(format);
    let mut from = 0usize;
    let mut push = |e: Event| out.push(e);
    for &(upto, ts) in arrivals {
        let upto = (upto as usize).min(body.len());
        if upto > from {
            parser.feed(&body[from..upto], ts, &mut push);
            from = upto;
        }
    }
    if from < body.len() {
        parser.feed(&body[from..], end_ts, &mut push);
    }
    parser.finish(end_ts, &mut push);
    out
}

/// The timed events of a stored response body, when it is an event stream
/// sent without a content coding (a compressed stream's bytes cannot be
/// cut into events as they arrive).
pub fn stream_events(
    content_type: Option<&[u8]>,
    content_encoding: Option<&[u8]>,
    body: &[u8],
    arrivals: &[(u64, i64)],
    end_ts: i64,
) -> Option<Vec<Event>> {
    let coded = content_encoding.is_some_and(|c| !c.trim_ascii().eq_ignore_ascii_case(b"identity"));
    if coded {
        return None;
    }
    let format = detect(content_type, body)?;
    Some(events_of(format, body, arrivals, end_ts))
}

/// Remember when the stored body reached `len` bytes (pieces that arrive
/// together share one entry, so a body costs one entry per packet or read).
/// Returns whether an entry was added.
pub fn note_arrival(arrivals: &mut Vec<(u64, i64)>, len: u64, ts: i64) -> bool {
    match arrivals.last_mut() {
        Some(last) if last.1 == ts => last.0 = len,
        Some(last) if last.0 == len => {}
        _ => {
            arrivals.push((len, ts));
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(format: Format, body: &[u8]) -> Vec<Event> {
        events_of(format, body, &[], 0)
    }

    /// Unlabelled text that only starts like SSE is not reduced to its
    /// events (two different answers read as equal `[]`); a real stream is.
    #[test]
    fn sniffing_takes_only_bodies_made_of_sse_fields() {
        assert_eq!(sniff(b"id: 1\nstatus: ok\n\n"), None);
        assert_eq!(sniff(b"data: 1\n\nfailed"), None);
        assert_eq!(sniff(b"id: 1\n\n"), None, "no data");
        assert_eq!(
            sniff(b"data: 1\n\nda"),
            Some(Format::Sse),
            "cut inside a field name"
        );
        assert_eq!(
            sniff(b"data: 1\n\ndata_error happened"),
            None,
            "begins like a field, is none"
        );
        assert_eq!(sniff(b"data: 1\n\ndata: cut"), Some(Format::Sse));
        assert_eq!(sniff(b"data: 1\n\ndata"), Some(Format::Sse));
        assert_eq!(sniff(b"data: 1\n\n: a comment, cut"), Some(Format::Sse));
        assert_eq!(
            sniff(b": keep-alive\r\nevent: delta\r\ndata: {}\r\nid: 7\r\n\r\ndata: [DONE]\r\n\r\n"),
            Some(Format::Sse)
        );
    }

    /// NDJSON lines end at LF only: a CR inside a line is JSON whitespace.
    #[test]
    fn ndjson_lines_end_at_lf_only() {
        let ev = all(Format::Ndjson, b"{\"a\":\r1}\r\n{\"b\": 2} \r\n{\"c\":3}\r");
        let data: Vec<&[u8]> = ev.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"{\"a\":\r1}"[..], b"{\"b\": 2}", b"{\"c\":3}"]);
    }

    /// A full event takes no more bytes, newlines included.
    #[test]
    fn a_full_event_grows_no_further() {
        let mut body = b"data:".to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_EVENT));
        body.extend_from_slice(b"\n");
        body.extend(b"data:\n".repeat(1000));
        body.extend_from_slice(b"\n");
        let ev = all(Format::Sse, &body);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].data.len() <= MAX_EVENT, "{}", ev[0].data.len());
    }

    #[test]
    fn sse_follows_the_whatwg_rules() {
        let body = b"\xef\xbb\xbf: keep-alive\n\nevent: a\ndata: one\ndata:two\r\n\r\ndata\n\nid: 7\nretry: 5\n\nevent: only-name\n\ndata: x\rdata: y\r\rdata: cut";
        let ev = all(Format::Sse, body);
        let datas: Vec<&[u8]> = ev.iter().map(|e| e.data.as_slice()).collect();
        assert_eq!(datas, vec![&b"one\ntwo"[..], b"", b"x\ny"]);
        assert_eq!(ev[0].name.as_deref(), Some("a"));
        assert_eq!(
            ev[1].name, None,
            "the name does not leak into the next event"
        );
        assert_eq!(ev[2].name, None, "nor that of an event with no data");
        let emptied = all(
            Format::Sse,
            b"event:\ndata: 1\n\nevent: a\nevent:\ndata: 2\n\n",
        );
        let names: Vec<Option<&str>> = emptied.iter().map(|e| e.name.as_deref()).collect();
        assert_eq!(names, [None, None], "an empty type is the default one");
        // Offsets count the BOM and land just past the line end that
        // dispatched (a CRLF dispatches at its CR).
        assert!(body[..ev[0].end as usize].ends_with(b"two\r\n\r"));
        assert!(body[..ev[2].end as usize].ends_with(b"y\r\r"));
    }

    #[test]
    fn ndjson_lines_and_a_last_line_without_newline() {
        let body = b"{\"a\":1}\r\n\n  {\"a\":2}\n{\"a\":3}";
        let ev = all(Format::Ndjson, body);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[1].data, b"{\"a\":2}");
        assert_eq!(ev[2].end, body.len() as u64);
        // Cut mid-object: the partial line is not an event.
        assert_eq!(all(Format::Ndjson, b"{\"a\":1}\n{\"a\":").len(), 1);
    }

    #[test]
    fn each_event_takes_the_time_of_the_piece_that_completed_it() {
        let body = b"data: a\n\ndata: b";
        let body2 = [&body[..], b"\n\ndata: c\n\n"].concat();
        // Pieces: "data: a\n\ndata: b" at 10, "\n\n" at 20, the rest at 30.
        let arrivals = [(body.len() as u64, 10), (body.len() as u64 + 2, 20)];
        let ev = events_of(Format::Sse, &body2, &arrivals, 30);
        let ts: Vec<i64> = ev.iter().map(|e| e.ts).collect();
        assert_eq!(ts, vec![10, 20, 30]);
    }

    #[test]
    fn a_split_byte_order_mark_loses_no_event() {
        let mut ev = Vec::new();
        let mut p = EventParser::new(Format::Sse);
        for (i, piece) in [&b"\xef"[..], b"\xbb", b"\xbfdata: a\n\n"]
            .iter()
            .enumerate()
        {
            p.feed(piece, i as i64, &mut |e| ev.push(e));
        }
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].data.as_slice(), ev[0].end), (&b"a"[..], 12));
    }

    #[test]
    fn a_last_line_without_newline_takes_the_time_it_came_not_the_end() {
        let mut ev = Vec::new();
        let mut p = EventParser::new(Format::Ndjson);
        p.feed(b"{\"a\":1}\n{\"a\"", 10, &mut |e| ev.push(e));
        p.feed(b":2}", 20, &mut |e| ev.push(e));
        p.finish(30_000, &mut |e| ev.push(e));
        let ts: Vec<i64> = ev.iter().map(|e| e.ts).collect();
        assert_eq!(ts, vec![10, 20]);
    }

    #[test]
    fn a_cr_lf_split_across_pieces_is_one_line_end() {
        let mut ev = Vec::new();
        let mut p = EventParser::new(Format::Sse);
        p.feed(b"data: a\r", 1, &mut |e| ev.push(e));
        p.feed(b"\n\r", 2, &mut |e| ev.push(e));
        p.feed(b"\ndata: b\n\n", 3, &mut |e| ev.push(e));
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].data.as_slice(), ev[0].ts), (&b"a"[..], 2));
    }

    #[test]
    fn detection_by_type_and_by_content() {
        let sse = b"data: {\"x\":1}\n\n";
        assert_eq!(
            detect(Some(b"text/event-stream; charset=utf-8"), b""),
            Some(Format::Sse)
        );
        assert_eq!(
            detect(Some(b"application/x-ndjson"), b""),
            Some(Format::Ndjson)
        );
        assert_eq!(detect(Some(b"text/plain"), sse), Some(Format::Sse));
        assert_eq!(
            detect(Some(b"application/json"), b"{\"a\":1}\n{\"a\":2}\n"),
            Some(Format::Ndjson)
        );
        assert_eq!(
            detect(Some(b"application/json"), b"{\n  \"a\": 1\n}\n{\"b\":2}"),
            None
        );
        assert_eq!(detect(Some(b"application/json"), b"{\"a\":1}"), None);
        assert_eq!(detect(None, b"data: no blank line yet"), None);
        assert_eq!(detect(None, b""), None);
    }

    #[test]
    fn an_endless_line_is_cut_not_kept() {
        let mut p = EventParser::new(Format::Ndjson);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            p.feed(&chunk, 0, &mut |_| {});
        }
        assert!(p.line.len() <= MAX_EVENT);
    }

    proptest! {
        /// However the body is cut into pieces, the same events come out at
        /// the same offsets.
        #[test]
        fn splitting_never_changes_the_events(
            events in proptest::collection::vec("[a-z {}\":,]{0,12}", 0..8),
            crlf in any::<bool>(),
            bom in any::<bool>(),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            // A byte-order mark, which a cut may split too.
            let mut body = if bom { "\u{feff}".to_string() } else { String::new() };
            for (i, e) in events.iter().enumerate() {
                body += &format!(":ping{nl}event: e{i}{nl}data: {e}{nl}data: more{nl}{nl}");
            }
            let whole = all(Format::Sse, body.as_bytes());
            prop_assert_eq!(whole.len(), events.len());
            let mut cuts: Vec<u64> = cuts.into_iter().map(|c| (c % (body.len() + 1)) as u64).collect();
            cuts.sort_unstable();
            let arrivals: Vec<(u64, i64)> = cuts.iter().map(|&c| (c, 1)).collect();
            let split = events_of(Format::Sse, body.as_bytes(), &arrivals, 1);
            let strip = |v: &[Event]| v.iter().map(|e| (e.data.clone(), e.end, e.name.clone())).collect::<Vec<_>>();
            prop_assert_eq!(strip(&whole), strip(&split));
        }
    }
}
