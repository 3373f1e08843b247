//! What RFC 9112 says a message head must be, checked line by line.
//!
//! The framer records what it can read, as leniently as servers in the
//! wild; this module says where a head departs from the RFC, so that such
//! an exchange is flagged (`request_malformed` / `response_malformed` with
//! `malformed_detail`) instead of being written as a clean row that a
//! strict server would have read differently. Written by hand: httparse
//! stops at the first error and, in lenient mode, drops the lines it cannot
//! read, while the row must keep every line and say what was wrong.

use super::{is_tchar, Role};
use crate::schema::HeaderList;
use crate::text::latin1;

/// Why a head is not what RFC 9112 allows, if it is not.
pub fn head_problem(role: Role, head: &[u8]) -> Option<String> {
    let mut lines = lines_of(head).enumerate();
    let (_, first) = lines.next()?;
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    if let Some(at) = memchr::memchr(b'\r', first) {
        return Some(format!("bare CR in the start line at byte {at}"));
    }
    let start = match role {
        Role::Request => request_line_problem(first),
        Role::Response => status_line_problem(first),
    };
    if start.is_some() {
        return start;
    }
    for (n, line) in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if let Some(p) = field_line_problem(line) {
            return Some(format!("{p} in header line {n}: {}", shown_field(line)));
        }
    }
    None
}

fn request_line_problem(line: &[u8]) -> Option<String> {
    // Split without collecting: this runs for every request.
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let what = if line.split(|&b| b == b' ').count() > 3 {
            "space inside the request-target"
        } else {
            "request line without target or version"
        };
        return Some(format!("{what}: {}", shown_target(line)));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Some(format!("method is not a token: {}", shown(method)));
    }
    if target.is_empty() || target.iter().any(|&b| b <= 0x20 || b == 0x7f) {
        return Some(format!("invalid request-target: {}", shown_target(target)));
    }
    if !matches!(version, b"HTTP/1.0" | b"HTTP/1.1") {
        return Some(format!("not an HTTP/1 version: {}", shown(version)));
    }
    None
}

fn status_line_problem(line: &[u8]) -> Option<String> {
    let ok_version = matches!(line.get(..8), Some(b"HTTP/1.0" | b"HTTP/1.1"));
    let ok_code = line.get(8) == Some(&b' ')
        && line
            .get(9..12)
            .is_some_and(|c| c.iter().all(u8::is_ascii_digit))
        && matches!(line.get(12), None | Some(b' '));
    let ok_reason = line
        .get(13..)
        .is_none_or(|r| r.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
    (!(ok_version && ok_code && ok_reason)).then(|| format!("invalid status line: {}", shown(line)))
}

fn field_line_problem(line: &[u8]) -> Option<&'static str> {
    if matches!(line[0], b' ' | b'\t') {
        return Some("obsolete line folding");
    }
    if memchr::memchr(b'\r', line).is_some() {
        return Some("bare CR");
    }
    let Some(colon) = memchr::memchr(b':', line) else {
        return Some("no colon");
    };
    let name = &line[..colon];
    if name.last().is_some_and(|b| b.is_ascii_whitespace()) {
        return Some("whitespace before the colon");
    }
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Some("field name is not a token");
    }
    if has_control(&line[colon + 1..]) {
        return Some("control character in the value");
    }
    None
}

/// The lines of a head split at LF (found with memchr, not byte by byte),
/// the part after the last LF included, like `split(|b| b == b'\n')`.
fn lines_of(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', head);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match ends.next() {
            Some(end) => {
                let line = &head[start..end];
                start = end + 1;
                Some(line)
            }
            None => {
                done = true;
                Some(&head[start..])
            }
        }
    })
}

/// Whether a field value holds a control character other than HTAB (or
/// DEL). Eight bytes at a time: a word with no byte below 0x20 and none
/// equal to 0x7f is clean, and most are; only a word that might hold one
/// is looked at byte by byte (HTAB is below 0x20, so it lands there too).
fn has_control(value: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let bad = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    let mut words = value.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        // Some byte below 0x20 (exact for thresholds up to 0x80), or some
        // byte equal to 0x7f (a zero byte in x ^ 0x7f..).
        let below = x.wrapping_sub(LOW * 0x20) & !x & HIGH;
        let del = x ^ (LOW * 0x7f);
        let has_del = del.wrapping_sub(LOW) & !del & HIGH;
        if (below | has_del) != 0 && w.iter().any(|&b| bad(b)) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| bad(b))
}

/// Why the body framing headers cannot be trusted (RFC 9112 section 6),
/// if they cannot: the body's end is then unknown.
pub fn framing_problem(role: Role, headers: &HeaderList) -> Option<String> {
    // Runs for every head: the common shapes (no framing header, or one
    // plain Content-Length) are answered without allocating.
    if headers.get_all("transfer-encoding").next().is_none() {
        let mut cl = headers.get_all("content-length");
        match (cl.next(), cl.next()) {
            (None, _) => return None,
            (Some(v), None) if plain_length(v) => return None,
            _ => {}
        }
    }
    let lengths: Vec<&[u8]> = headers.get_all("content-length").collect();
    let codings: Vec<&[u8]> = headers.get_all("transfer-encoding").collect();
    if !content_lengths_agree(headers) {
        let all: Vec<String> = lengths.iter().map(|v| shown(v)).collect();
        return Some(format!("invalid Content-Length: {}", all.join(" / ")));
    }
    if codings.is_empty() {
        return None;
    }
    if !lengths.is_empty() {
        return Some("both Transfer-Encoding and Content-Length".into());
    }
    let list: Vec<Vec<u8>> = codings
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|c| c.trim_ascii().to_ascii_lowercase())
        .collect();
    let chunked = list.iter().filter(|c| c.as_slice() == b"chunked").count();
    let known = |c: &Vec<u8>| {
        matches!(
            c.as_slice(),
            b"chunked" | b"gzip" | b"x-gzip" | b"deflate" | b"compress" | b"x-compress"
        )
    };
    let shown_all = || {
        let all: Vec<String> = codings.iter().map(|v| shown(v)).collect();
        all.join(", ")
    };
    if let Some(bad) = list.iter().find(|c| !known(c)) {
        return Some(format!(
            "unknown transfer coding {:?} in {}",
            latin1(bad),
            shown_all()
        ));
    }
    if chunked > 1 {
        return Some(format!("chunked applied more than once: {}", shown_all()));
    }
    let last_chunked = list.last().is_some_and(|c| c.as_slice() == b"chunked");
    if chunked == 1 && !last_chunked {
        return Some(format!(
            "chunked is not the last transfer coding: {}",
            shown_all()
        ));
    }
    if role == Role::Request && !last_chunked {
        return Some(format!(
            "request transfer coding does not end in chunked: {}",
            shown_all()
        ));
    }
    None
}

/// One Content-Length value: 1 to 18 digits (fits in a u64).
/// Whether the Content-Length lines, and the comma-separated values in
/// each, all give one plain length (true when there is none).
pub fn content_lengths_agree(headers: &HeaderList) -> bool {
    let mut values = headers
        .get_all("content-length")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    let Some(first) = values.next() else {
        return true;
    };
    plain_length(first) && values.all(|v| v == first)
}

fn plain_length(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit)
}

/// Bytes as text for a message, escaped and cut to a readable length.
/// A field line as a detail may show it: its name, never its value (the
/// detail is written as it is, and the value may be a secret that
/// redaction removes from the header list, such as an Authorization).
fn shown_field(line: &[u8]) -> String {
    match memchr::memchr(b':', line) {
        _ if matches!(line.first(), Some(b' ' | b'\t')) => {
            "a continuation line (value not shown)".into()
        }
        Some(colon) => format!("{}: (value not shown)", shown(&line[..colon])),
        None => shown(line),
    }
}

/// A request line or target as a detail may show it: up to its query,
/// whose parameters may be secrets (`?access_token=`).
fn shown_target(b: &[u8]) -> String {
    match memchr::memchr(b'?', b) {
        Some(q) => format!("{}?(query not shown)", shown(&b[..q])),
        None => shown(b),
    }
}

fn shown(b: &[u8]) -> String {
    const MAX: usize = 80;
    let s: String = b
        .iter()
        .take(MAX)
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if b.len() > MAX {
        format!("\"{s}...\"")
    } else {
        format!("\"{s}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: &str) -> Option<String> {
        head_problem(Role::Request, h.as_bytes())
    }

    proptest::proptest! {
        #[test]
        fn the_word_scan_finds_what_the_byte_scan_finds(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let slow = v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
            proptest::prop_assert_eq!(has_control(&v), slow);
        }

        #[test]
        fn lines_split_like_the_slice_split(v in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\n', b'\r', b' ']), 0..40)) {
            let want: Vec<&[u8]> = v.split(|&b| b == b'\n').collect();
            let got: Vec<&[u8]> = lines_of(&v).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn control_characters_are_found_in_any_position() {
        for n in 0..20 {
            for bad in [0u8, 0x0b, 0x1f, 0x7f] {
                let mut v = vec![b'x'; n + 1];
                v[n] = bad;
                assert!(has_control(&v), "{bad:#x} at {n}");
            }
            let mut v = vec![b'x'; n + 1];
            v[n] = b'\t';
            assert!(!has_control(&v));
            v[n] = 0x80;
            assert!(!has_control(&v), "obs-text is allowed");
        }
    }

    #[test]
    fn valid_heads_pass() {
        assert_eq!(req("GET /a?b HTTP/1.1\r\nHost: x\r\nA: b c\r\n\r\n"), None);
        assert_eq!(req("GET / HTTP/1.0\nHost: x\n\n"), None);
        let resp = |h: &str| head_problem(Role::Response, h.as_bytes());
        assert_eq!(resp("HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(resp("HTTP/1.1 204\r\n\r\n"), None);
    }

    #[test]
    fn each_departure_is_named() {
        let cases = [
            ("GET / HTTP/1.1\r\nFo@: Failure\r\n\r\n", "not a token"),
            (
                "GET / HTTP/1.1\r\nContent-Length : 4\r\n\r\n",
                "whitespace before",
            ),
            (
                "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n  abc\r\n\r\n",
                "folding",
            ),
            (
                "GET / HTTP/1.1\r\nx:\rTransfer-Encoding: chunked\r\n\r\n",
                "bare CR",
            ),
            ("GET /foo bar/ HTTP/1.1\r\n\r\n", "space inside"),
            (
                "DESCRIBE rtsp://x RTSP/1.0\r\n\r\n",
                "not an HTTP/1 version",
            ),
        ];
        for (head, want) in cases {
            let got = req(head).unwrap_or_default();
            assert!(got.contains(want), "{head:?}: {got:?}");
        }
        let got = head_problem(
            Role::Response,
            b"HTTP/1.1 200 OK\r\rContent-Length: 4\r\n\r\n",
        );
        assert!(got.unwrap().contains("bare CR"));
    }

    #[test]
    fn framing_headers_must_be_unambiguous() {
        let h = |pairs: &[(&str, &str)]| {
            let mut l = HeaderList::new();
            pairs
                .iter()
                .for_each(|(n, v)| l.push(n.as_bytes(), v.as_bytes()));
            l
        };
        let bad = [
            vec![("Content-Length", "4 2")],
            vec![("Content-Length", "")],
            vec![("Content-Length", "-1")],
            vec![("Content-Length", "99999999999999999999")],
            vec![("Content-Length", "3, 10")],
            vec![("Content-Length", "3"), ("Content-Length", "4")],
            vec![("Transfer-Encoding", "identity"), ("Content-Length", "3")],
            vec![("Transfer-Encoding", "chunkedchunked")],
            vec![("Transfer-Encoding", "chunked, deflate")],
            vec![
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
        ];
        for case in bad {
            assert!(
                framing_problem(Role::Request, &h(&case)).is_some(),
                "{case:?}"
            );
        }
        let good = [
            vec![("Content-Length", "5, 5")],
            vec![("Transfer-Encoding", "gzip, chunked")],
            vec![("Content-Length", "0")],
        ];
        for case in good {
            assert_eq!(framing_problem(Role::Request, &h(&case)), None, "{case:?}");
        }
        // A response may end a non-chunked coding with the connection.
        let gz = h(&[("Transfer-Encoding", "gzip")]);
        assert_eq!(framing_problem(Role::Response, &gz), None);
        assert!(framing_problem(Role::Request, &gz).is_some());
    }
}
