//! Building the exact bytes of a replayed request.
//!
//! We write requests ourselves instead of through reqwest or hyper: both
//! keep headers in a map that lower-cases names and groups duplicates, and
//! add headers of their own, so neither can send back what was captured
//! byte for byte (see docs/decisions/0001-raw-http-client.md).

use super::h2::H2Request;
use crate::redact::body::{without_redacted, LeftOut};
use crate::schema::{Exchange, REDACTED};
use crate::text::latin1_bytes;

/// Headers that describe one hop, not the request: never forwarded as captured.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

/// How requests are rewritten for a target.
#[derive(Clone, Debug, Default)]
pub struct RequestRules {
    /// Keep the captured Host instead of the target's authority.
    pub keep_host: bool,
    /// `--header 'Name: value'`: set on every request (replaces same-name fields).
    pub set: Vec<(String, String)>,
    /// `--drop-header NAME` (lower case).
    pub drop: Vec<String>,
    /// Which `[REDACTED]` values are left out (set from the names the
    /// capture recorded, see [`LeftOut`]).
    pub left_out: LeftOut,
}

/// RFC 9110 section 5.6.2: `token = 1*tchar`.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why a captured request cannot be sent as recorded, if it cannot: bytes
/// that would end the request line or a header early (CR, LF, NUL; spaces
/// and controls in the target), a method or header name that is not a
/// token, no target at all (an HTTP/2 `:path` the capture could not
/// decode). Written as they are, such bytes would make the target read a
/// second request of someone else's making (request smuggling) or refuse
/// the first; HTTP/2 capture records fields as it saw them, unchecked.
pub fn unsendable(ex: &Exchange) -> Option<String> {
    if !is_token(&ex.method) {
        return Some(format!("the method {:?} is not a token", ex.method));
    }
    if ex.target.is_empty() {
        return Some("no target was recorded".into());
    }
    if ex.target.chars().any(|c| c <= ' ' || c == '\u{7f}') {
        return Some("the target holds spaces or control characters".into());
    }
    let fields = ex.request_headers.iter().map(|f| ("header", f));
    let trailers = ex.request_trailers.iter().map(|f| ("trailer", f));
    for (what, (name, value)) in fields.chain(trailers) {
        if name.first() == Some(&b':') {
            continue; // HTTP/2 pseudo-headers: not sent as fields
        }
        if !is_token(&String::from_utf8_lossy(name)) {
            return Some(format!(
                "the {what} name {:?} is not a token",
                String::from_utf8_lossy(name)
            ));
        }
        if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Some(format!(
                "the value of {} holds CR, LF or NUL",
                String::from_utf8_lossy(name)
            ));
        }
    }
    None
}

/// A field as sent: name and value.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Trailer fields never sent: ones that describe one hop, frame the
/// message or route it (RFC 9110 section 6.5.1), which a server or proxy
/// reading them could take for the head's. Others go as captured.
fn not_a_trailer(lower: &str) -> bool {
    HOP_BY_HOP.contains(&lower)
        || matches!(lower, "content-length" | "host")
        || lower.starts_with(':')
}

/// The captured request trailers as they go out: in order, without
/// `--drop-header` fields, what a trailer may not carry, names the head
/// sets (`--header`, the shadow marker: their value goes once, in the
/// head) and redacted values (left out, counted, as in the header).
/// Returns (fields, dropped).
fn trailer_fields<'a>(
    ex: &'a Exchange,
    rules: &RequestRules,
    dest: &Destination<'_>,
) -> (Vec<Field<'a>>, u32) {
    let marker = marker_name(dest);
    let mut dropped = 0;
    let mut out = Vec::new();
    for (name, value) in ex.request_trailers.iter() {
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        let set = rules
            .set
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(&lower));
        if rules.drop.contains(&lower) || not_a_trailer(&lower) || set || marker(&lower) {
            continue;
        }
        if value == REDACTED.as_bytes() && rules.left_out.header(&lower) {
            dropped += 1;
            continue;
        }
        out.push((name, value));
    }
    (out, dropped)
}

/// Parse `Name: value` given to `flag` (`--header`, `--marker`). A name that
/// is not a token, or a value with CR, LF or NUL, would let the text end the
/// header block and smuggle a request of its own onto the connection.
pub fn parse_header_field(flag: &str, s: &str) -> Result<(String, String), String> {
    let (n, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{flag} '{}': expected 'Name: value'", s.escape_debug()))?;
    let (n, v) = (n.trim_matches([' ', '\t']), v.trim_matches([' ', '\t']));
    if !is_token(n) {
        return Err(format!(
            "{flag} '{}': the name '{}' is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only)",
            s.escape_debug(),
            n.escape_debug()
        ));
    }
    if v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(format!(
            "{flag} '{}': the value holds CR, LF or NUL, which would end the header",
            s.escape_debug()
        ));
    }
    Ok((n.to_string(), v.to_string()))
}

/// Where a request goes.
#[derive(Clone, Debug)]
pub struct Destination<'a> {
    /// `host:port` as sent in Host.
    pub authority: &'a str,
    /// A path prefix from the target URL ("" for none).
    pub base_path: &'a str,
    /// The marker header for shadows.
    pub marker: Option<&'a (String, String)>,
}

/// The request bytes and how many redacted values were left out.
pub struct Built {
    pub bytes: Vec<u8>,
    pub dropped_redacted: u32,
}

/// The origin-form path of a captured request-target.
fn origin_form(target: &str) -> &str {
    for scheme in ["http://", "https://", "HTTP://", "HTTPS://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A redacted query value is never sent: its parameter is left out (like a
/// redacted header), and counted.
fn without_redacted_query<'p>(
    path: &'p str,
    left_out: &LeftOut,
) -> (std::borrow::Cow<'p, str>, u32) {
    let Some((base, rest)) = path.split_once('?') else {
        return (path.into(), 0);
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let redacted = |p: &&str| {
        p.split_once('=')
            .is_some_and(|(k, v)| v == REDACTED && left_out.query(k))
    };
    let dropped = query.split('&').filter(redacted).count() as u32;
    if dropped == 0 {
        return (path.into(), 0);
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !redacted(p)).collect();
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    (out.into(), dropped)
}

/// The captured request's header fields as they go out, for either
/// protocol: in order, without pseudo-headers (the request line or the
/// HTTP/2 head carries them), `--drop-header` fields and what the protocol
/// does not send (`skip`); `--header` values in place of the first
/// same-name field (later ones dropped, unmatched ones at the end);
/// redacted values left out; Content-Length set to the body sent
/// (`body_len`). Each
/// field goes to `push(lower-cased name, name, value, captured)`, where
/// `captured` is false for values the rules set. Returns the redacted
/// values left out.
fn send_fields(
    ex: &Exchange,
    body_len: usize,
    rules: &RequestRules,
    skip: impl Fn(&str, &[u8]) -> bool,
    mut push: impl FnMut(&str, &[u8], &[u8], bool),
) -> u32 {
    let mut set_done = vec![false; rules.set.len()];
    let mut length_sent = false;
    let mut dropped = 0;
    let length = body_len.to_string();
    for (name, value) in ex.request_headers.iter() {
        if name.first() == Some(&b':') {
            continue;
        }
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        if rules.drop.contains(&lower) || skip(&lower, value) {
            continue;
        }
        if let Some(i) = rules
            .set
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&lower))
        {
            if !std::mem::replace(&mut set_done[i], true) {
                push(&lower, name, rules.set[i].1.as_bytes(), false);
            }
            continue;
        }
        if value == REDACTED.as_bytes() && rules.left_out.header(&lower) {
            dropped += 1;
            continue;
        }
        if lower == "referer" || lower == "content-location" {
            // A referrer's redacted query values are left out, as the
            // target's are: `[REDACTED]` is never sent as if it were one.
            let text = String::from_utf8_lossy(value);
            let (url, n) = without_redacted_query(&text, &rules.left_out);
            if n > 0 {
                dropped += n;
                push(&lower, name, url.as_bytes(), true);
                continue;
            }
        }
        if lower == "content-length" {
            // In place, with the length of the (de-chunked) body we send.
            if !std::mem::replace(&mut length_sent, true) {
                push(&lower, name, length.as_bytes(), false);
            }
            continue;
        }
        push(&lower, name, value, true);
    }
    for (i, (n, v)) in rules.set.iter().enumerate() {
        if !set_done[i] {
            push(&n.to_ascii_lowercase(), n.as_bytes(), v.as_bytes(), false);
        }
    }
    dropped
}

/// Whether a field has the marker's name: a shadow gets the marker's value
/// alone, never a captured or `--header` field of that name beside it (a
/// captured `x-shadow-replay: 0` read first would pass for real traffic).
fn marker_name<'a>(dest: &'a Destination<'_>) -> impl Fn(&str) -> bool + 'a {
    move |lower| {
        dest.marker
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case(lower))
    }
}

/// Build the request for one destination.
pub fn build(ex: &Exchange, dest: &Destination<'_>, rules: &RequestRules) -> Built {
    let mut out = Vec::with_capacity(256 + ex.request_body.len());
    let version = if ex.http_version == "HTTP/1.0" {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    out.extend_from_slice(&latin1_bytes(&ex.method));
    out.push(b' ');
    let (path, mut dropped_redacted) =
        without_redacted_query(origin_form(&ex.target), &rules.left_out);
    let (body, dropped_body) =
        without_redacted(&ex.request_headers, &ex.request_body, &rules.left_out);
    dropped_redacted += dropped_body;
    if !dest.base_path.is_empty() && path.starts_with('/') {
        out.extend_from_slice(dest.base_path.trim_end_matches('/').as_bytes());
    }
    out.extend_from_slice(&latin1_bytes(&path));
    out.push(b' ');
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\n");

    let (mut host_seen, mut length_sent) = (false, false);
    // Trailers need chunked framing: HTTP/1.0 has none, so they stay unsent.
    let (trailers, dropped_trailers) = trailer_fields(ex, rules, dest);
    let chunked = !trailers.is_empty() && version == "HTTP/1.1";
    dropped_redacted += dropped_trailers;
    // With trailers sent, the `Trailer` field announcing them goes too.
    let hop_by_hop = |lower: &str, _: &[u8]| {
        (HOP_BY_HOP.contains(&lower) && !(chunked && lower == "trailer"))
            || (chunked && lower == "content-length")
    };
    let marker = marker_name(dest);
    dropped_redacted += send_fields(
        ex,
        body.len(),
        rules,
        hop_by_hop,
        |lower, name, value, captured| {
            if marker(lower) {
                return; // only the marker's own value, once
            }
            if chunked && lower == "content-length" {
                return; // a `--header` length beside chunked framing: two framings
            }
            if captured && lower == "host" {
                // The first Host, rewritten to the target unless --keep-host.
                if std::mem::replace(&mut host_seen, true) {
                    return;
                }
                let v = if rules.keep_host {
                    value
                } else {
                    dest.authority.as_bytes()
                };
                return push_header(&mut out, name, v);
            }
            host_seen |= lower == "host";
            length_sent |= lower == "content-length";
            push_header(&mut out, name, value);
        },
    );
    if !host_seen && version == "HTTP/1.1" {
        // An HTTP/2 request carried its host in `:authority`.
        let captured = ex.host.as_deref().filter(|_| rules.keep_host);
        push_header(
            &mut out,
            b"Host",
            captured.unwrap_or(dest.authority).as_bytes(),
        );
    }
    if let Some((n, v)) = dest.marker {
        push_header(&mut out, n.as_bytes(), v.as_bytes());
    }
    if chunked {
        push_header(&mut out, b"Transfer-Encoding", b"chunked");
        out.extend_from_slice(b"\r\n");
        chunk_with_trailers(&mut out, &body, &trailers);
        return Built {
            bytes: out,
            dropped_redacted,
        };
    }
    // The body is stored de-chunked: a chunked request is sent with a length.
    let had_chunked = ex.request_headers.get("transfer-encoding").is_some();
    if !length_sent && (!body.is_empty() || had_chunked) {
        let length = body.len().to_string();
        push_header(&mut out, b"Content-Length", length.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Built {
        bytes: out,
        dropped_redacted,
    }
}

/// A body as one chunk (none when empty), the last chunk, and the trailer
/// section (RFC 9112 section 7.1).
fn chunk_with_trailers(out: &mut Vec<u8>, body: &[u8], trailers: &[Field<'_>]) {
    if !body.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Build the request for one destination as an HTTP/2 stream: `:method`,
/// `:path` and `:authority` (rewritten like Host, or kept with
/// `--keep-host`) from the capture, headers in their order with names in
/// lower case as HTTP/2 requires, without connection-specific fields (RFC
/// 9113 section 8.2.2; `te: trailers` stays, gRPC needs it) and without
/// captured pseudo-headers, which the head carries.
pub fn build_h2(
    ex: &Exchange,
    dest: &Destination<'_>,
    rules: &RequestRules,
    https: bool,
) -> Result<(H2Request, u32), String> {
    let (path, mut dropped) = without_redacted_query(origin_form(&ex.target), &rules.left_out);
    let (body, dropped_body) =
        without_redacted(&ex.request_headers, &ex.request_body, &rules.left_out);
    dropped += dropped_body;
    let mut full_path = String::new();
    if !dest.base_path.is_empty() && path.starts_with('/') {
        full_path.push_str(dest.base_path.trim_end_matches('/'));
    }
    full_path.push_str(&path);
    let captured_authority = ex.host.as_deref().unwrap_or(dest.authority);
    let authority = if rules.keep_host {
        captured_authority
    } else {
        dest.authority
    };
    let scheme = if https { "https" } else { "http" };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        // The bytes captured (text holds them one char per byte), not
        // their UTF-8 spelling: `é` sent as C3 A9 stays C3 A9.
        .path_and_query(crate::text::latin1_bytes(&full_path).into_owned())
        .build()
        .map_err(|e| format!("not a valid HTTP/2 request URI: {e}"))?;
    let method = http::Method::from_bytes(ex.method.as_bytes())
        .map_err(|_| format!("the method {:?} is not valid", ex.method))?;
    let mut head = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())
        .map_err(|e| format!("not a valid HTTP/2 request: {e}"))?;
    let h = head.headers_mut();
    let mut push = |n: &[u8], v: &[u8]| {
        let name = http::HeaderName::from_bytes(&n.to_ascii_lowercase());
        if let (Ok(name), Ok(value)) = (name, http::HeaderValue::from_bytes(v)) {
            h.append(name, value);
        }
    };
    let (trailer_list, dropped_trailers) = trailer_fields(ex, rules, dest);
    let forbidden = |lower: &str, value: &[u8]| {
        // Sent as the exact lower-case `trailers` below: `h2` refuses any
        // other spelling.
        let te_trailers = lower == "te" && value.eq_ignore_ascii_case(b"trailers");
        // Not connection-specific in HTTP/2: announces the trailers sent.
        let announces = lower == "trailer" && !trailer_list.is_empty();
        (HOP_BY_HOP.contains(&lower) && !te_trailers && !announces)
            || lower == "host"
            || lower == "http2-settings"
    };
    let marker = marker_name(dest);
    dropped += send_fields(ex, body.len(), rules, forbidden, |lower, n, v, _| {
        // `--header` fields come here unfiltered: a `Connection` or `Host`
        // among them would make `h2` refuse every request.
        if forbidden(lower, v) {
            return;
        }
        if lower == "te" {
            push(n, b"trailers");
        } else if !marker(lower) {
            push(n, v);
        }
    });
    if let Some((n, v)) = dest.marker {
        push(n.as_bytes(), v.as_bytes());
    }
    let body = bytes::Bytes::copy_from_slice(&body);
    dropped += dropped_trailers;
    let mut trailers = http::HeaderMap::new();
    for (n, v) in trailer_list {
        let name = http::HeaderName::from_bytes(&n.to_ascii_lowercase());
        if let (Ok(name), Ok(value)) = (name, http::HeaderValue::from_bytes(v)) {
            trailers.append(name, value);
        }
    }
    let trailers = (!trailers.is_empty()).then_some(trailers);
    Ok((
        H2Request {
            head,
            body,
            trailers,
        },
        dropped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_tokens_and_values_cannot_end_the_header() {
        assert_eq!(
            parse_header_field("--header", " X-A :  b c ").unwrap(),
            ("X-A".to_string(), "b c".to_string())
        );
        for bad in ["X-A: b\0", "X-A: b\r\nX: y", "X A: b", ": b", "X-A"] {
            assert!(parse_header_field("--header", bad).is_err(), "{bad:?}");
        }
    }

    /// Captured bytes that would end a header or the request line early
    /// are never sent (they would smuggle a request onto the connection).
    #[test]
    fn requests_that_would_smuggle_or_lack_a_target_are_unsendable() {
        assert_eq!(unsendable(&exchange()), None);
        let mut h2 = exchange();
        h2.request_headers.push(b":path", b"/x");
        assert_eq!(
            unsendable(&h2),
            None,
            "pseudo-headers are not sent as fields"
        );
        let with = |f: &dyn Fn(&mut Exchange)| {
            let mut ex = exchange();
            f(&mut ex);
            unsendable(&ex)
        };
        let cases: [&dyn Fn(&mut Exchange); 6] = [
            &|e| e.request_headers.push(b"x-a", b"v\r\nGET /admin HTTP/1.1"),
            &|e| e.request_headers.push(b"x-a", b"v\0"),
            &|e| e.request_headers.push(b"x a", b"v"),
            &|e| e.target = "/a HTTP/1.1\r\nHost: x\r\n\r\nGET /admin".into(),
            &|e| e.target = String::new(),
            &|e| e.method = "GE T".into(),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(with(*case).is_some(), "case {i}");
        }
    }

    /// `te: Trailers` (any spelling) goes out as the `trailers` HTTP/2
    /// allows; `h2` refuses the request otherwise.
    #[test]
    fn te_trailers_is_sent_lower_case_over_http2() {
        let mut ex = exchange();
        ex.request_headers.push(b"TE", b"Trailers");
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "",
            marker: None,
        };
        let (req, _) = build_h2(&ex, &dest, &RequestRules::default(), false).unwrap();
        let te: Vec<_> = req.head.headers().get_all("te").iter().collect();
        assert_eq!(te, ["trailers"]);
    }

    /// The captured bytes of the path go out as they were: raw UTF-8
    /// (held one char per byte) is not encoded a second time.
    #[test]
    fn http2_paths_keep_their_captured_bytes() {
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "",
            marker: None,
        };
        let mut ex = exchange();
        // "/café?q=naïve" as captured: UTF-8 bytes, one char per byte.
        let raw = "/café?q=naïve".as_bytes();
        ex.target = raw.iter().map(|&b| b as char).collect();
        let (req, _) = build_h2(&ex, &dest, &RequestRules::default(), false).unwrap();
        let sent = req.head.uri().path_and_query().unwrap().as_str().as_bytes();
        assert_eq!(sent, raw);
        // `--header` fields that HTTP/2 forbids are left out, not sent.
        let rules = RequestRules {
            set: vec![("Connection".into(), "close".into())],
            ..RequestRules::default()
        };
        let (req, _) = build_h2(&exchange(), &dest, &rules, false).unwrap();
        assert!(req.head.headers().get("connection").is_none());
    }

    fn exchange() -> Exchange {
        let mut ex = Exchange {
            method: "POST".into(),
            target: "http://old.example/api/x?q=1".into(),
            http_version: "HTTP/1.1".into(),
            request_body: b"hello".to_vec(),
            ..Default::default()
        };
        for (n, v) in [
            ("Host", "old.example"),
            ("X-Trace", "a"),
            ("Authorization", REDACTED),
            ("Transfer-Encoding", "chunked"),
            ("x-trace", "b"),
            ("Connection", "keep-alive"),
        ] {
            ex.request_headers.push(n.as_bytes(), v.as_bytes());
        }
        ex
    }

    /// A body secret redacted at capture is left out over either protocol,
    /// counted, and the length sent is the body's as sent.
    #[test]
    fn redacted_body_fields_are_left_out_over_http1_and_http2() {
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "",
            marker: None,
        };
        let mut ex = exchange();
        ex.request_headers = Default::default();
        ex.request_headers
            .push(b"Content-Type", b"application/json");
        ex.request_headers.push(b"Content-Length", b"44");
        ex.request_body = br#"{"user":"ann","password":"[REDACTED]","n":1}"#.to_vec();
        let built = build(&ex, &dest, &RequestRules::default());
        let text = String::from_utf8(built.bytes).unwrap();
        assert!(
            text.contains("\r\nContent-Length: 20\r\n")
                && text.ends_with("\r\n\r\n{\"user\":\"ann\",\"n\":1}"),
            "{text}"
        );
        assert_eq!(built.dropped_redacted, 1);
        let (h2, dropped) = build_h2(&ex, &dest, &RequestRules::default(), false).unwrap();
        assert_eq!(&h2.body[..], br#"{"user":"ann","n":1}"#);
        assert_eq!(h2.head.headers()["content-length"], "20");
        assert_eq!(dropped, 1);
    }

    /// With the names the capture recorded, only their `[REDACTED]` values
    /// are left out: one that is data (a prompt scrubbed upstream) is sent.
    #[test]
    fn only_the_recorded_names_redacted_values_are_left_out() {
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "",
            marker: None,
        };
        let mut ex = exchange();
        ex.target = "/v1?api_key=[REDACTED]&q=[REDACTED]".into();
        ex.request_headers = Default::default();
        ex.request_headers
            .push(b"Content-Type", b"application/json");
        ex.request_headers
            .push(b"Authorization", REDACTED.as_bytes());
        ex.request_headers.push(b"X-Note", REDACTED.as_bytes());
        ex.request_body = br#"{"prompt":"[REDACTED]","password":"[REDACTED]"}"#.to_vec();
        let named = RequestRules {
            left_out: LeftOut::by(Some(&crate::redact::Redaction::default())),
            ..Default::default()
        };
        let built = build(&ex, &dest, &named);
        let text = String::from_utf8(built.bytes).unwrap();
        assert!(
            text.starts_with("POST /v1?q=[REDACTED] HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(!text.contains("Authorization") && text.contains("\r\nX-Note: [REDACTED]\r\n"));
        assert!(text.ends_with(r#"{"prompt":"[REDACTED]"}"#), "{text}");
        assert_eq!(built.dropped_redacted, 3);
        let (h2, dropped) = build_h2(&ex, &dest, &named, false).unwrap();
        assert_eq!(&h2.body[..], br#"{"prompt":"[REDACTED]"}"#);
        assert_eq!(dropped, 3);
        // A capture that recorded no names: every one is left out.
        let built = build(&ex, &dest, &RequestRules::default());
        let text = String::from_utf8(built.bytes).unwrap();
        assert!(text.starts_with("POST /v1 HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        assert_eq!(built.dropped_redacted, 6);
        // Nothing was redacted (`--keep-secrets`): every value is data.
        let kept = RequestRules {
            left_out: LeftOut::by(Some(&crate::redact::Redaction::none())),
            ..Default::default()
        };
        assert_eq!(build(&ex, &dest, &kept).dropped_redacted, 0);
    }

    #[test]
    fn a_shadow_gets_the_marker_alone_whatever_was_captured_or_set() {
        let marker = ("x-shadow-replay".to_string(), "1".to_string());
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "",
            marker: Some(&marker),
        };
        let mut ex = exchange();
        ex.request_headers.push(b"X-Shadow-Replay", b"0");
        let rules = RequestRules {
            set: vec![("X-SHADOW-REPLAY".into(), "2".into())],
            ..Default::default()
        };
        let text = String::from_utf8(build(&ex, &dest, &rules).bytes).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-shadow-replay"))
            .collect();
        assert_eq!(lines, ["x-shadow-replay: 1"], "{text}");
        let (h2, _) = build_h2(&ex, &dest, &rules, false).unwrap();
        let values: Vec<_> = h2
            .head
            .headers()
            .get_all("x-shadow-replay")
            .iter()
            .collect();
        assert_eq!(values, ["1"]);
        // The primary gets what was captured and set, as before.
        let primary = Destination {
            marker: None,
            ..dest
        };
        let text = String::from_utf8(build(&ex, &primary, &rules).bytes).unwrap();
        assert!(
            text.contains("X-SHADOW-REPLAY: 2\r\n") || text.contains("X-Shadow-Replay: 2\r\n"),
            "{text}"
        );
    }

    #[test]
    fn keeps_order_and_case_rewrites_host_and_frames_the_body() {
        let marker = ("x-shadow-replay".to_string(), "1".to_string());
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "/v2",
            marker: Some(&marker),
        };
        let built = build(&exchange(), &dest, &RequestRules::default());
        let text = String::from_utf8(built.bytes).unwrap();
        assert_eq!(
            text,
            "POST /v2/api/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nX-Trace: a\r\nx-trace: b\r\n\
             x-shadow-replay: 1\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert_eq!(built.dropped_redacted, 1);
    }

    /// Captured request trailers go out after the body: chunked over
    /// HTTP/1.1 with the `Trailer` field that announced them, in order,
    /// without redacted values, framing fields or `--drop-header` names;
    /// over HTTP/2 after the DATA. HTTP/1.0 has no trailers: a length.
    #[test]
    fn request_trailers_are_sent_after_the_body() {
        let mut ex = exchange();
        ex.request_headers.push(b"Trailer", b"X-Checksum");
        for (n, v) in [
            ("X-Checksum", "abc"),
            ("X-Token", REDACTED),
            ("Content-Length", "99"),
            ("X-Trace", "t"),
            ("X-Shadow-Replay", "0"),
            ("X-Tenant", "old"),
            ("x-done", "1"),
        ] {
            ex.request_trailers.push(n.as_bytes(), v.as_bytes());
        }
        let marker = ("x-shadow-replay".to_string(), "1".to_string());
        let dest = Destination {
            authority: "127.0.0.1:9000",
            base_path: "",
            marker: Some(&marker),
        };
        // A --header value goes once, in the head, never beside a captured
        // trailer of its name; so does the marker.
        let rules = RequestRules {
            drop: vec!["x-trace".into()],
            set: vec![("X-Tenant".into(), "new".into())],
            ..Default::default()
        };
        let built = build(&ex, &dest, &rules);
        assert_eq!(
            String::from_utf8(built.bytes).unwrap(),
            "POST /api/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nTrailer: X-Checksum\r\n\
             X-Tenant: new\r\nx-shadow-replay: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nX-Checksum: abc\r\nx-done: 1\r\n\r\n"
        );
        assert_eq!(built.dropped_redacted, 2, "Authorization and X-Token");

        let (h2, dropped) = build_h2(&ex, &dest, &rules, false).unwrap();
        let t = h2.trailers.expect("trailers");
        let got: Vec<(&str, &str)> = t
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, [("x-checksum", "abc"), ("x-done", "1")]);
        assert_eq!(h2.head.headers()["trailer"], "X-Checksum");
        assert_eq!(h2.head.headers()["x-tenant"], "new");
        assert_eq!(h2.head.headers()["x-shadow-replay"], "1");
        assert_eq!((&h2.body[..], dropped), (&b"hello"[..], 2));

        // No body: the last chunk and the trailers alone.
        ex.request_body.clear();
        let text = String::from_utf8(build(&ex, &dest, &rules).bytes).unwrap();
        assert!(
            text.ends_with("\r\n\r\n0\r\nX-Checksum: abc\r\nx-done: 1\r\n\r\n"),
            "{text}"
        );
        ex.http_version = "HTTP/1.0".into();
        let text = String::from_utf8(build(&ex, &dest, &rules).bytes).unwrap();
        assert!(
            !text.contains("chunked") && !text.contains("X-Checksum: abc"),
            "{text}"
        );
        // Only redacted or framing trailers: nothing to send, a length.
        let mut plain = exchange();
        plain.request_trailers.push(b"X-Token", REDACTED.as_bytes());
        let text = String::from_utf8(build(&plain, &dest, &RequestRules::default()).bytes).unwrap();
        assert!(text.ends_with("Content-Length: 5\r\n\r\nhello"), "{text}");
        assert!(build_h2(&plain, &dest, &RequestRules::default(), false)
            .unwrap()
            .0
            .trailers
            .is_none());
        // A trailer that would end the section early is never sent.
        plain
            .request_trailers
            .push(b"X-Bad", b"a\r\nGET / HTTP/1.1");
        assert!(unsendable(&plain).is_some_and(|w| w.contains("X-Bad")));
    }

    #[test]
    fn set_headers_replace_redacted_values_and_drop_works() {
        let rules = RequestRules {
            keep_host: true,
            set: vec![("authorization".into(), "Bearer fresh".into())],
            drop: vec!["x-trace".into()],
            left_out: LeftOut::Any,
        };
        let dest = Destination {
            authority: "h:1",
            base_path: "",
            marker: None,
        };
        let built = build(&exchange(), &dest, &rules);
        let text = String::from_utf8(built.bytes).unwrap();
        assert!(text.contains("Host: old.example\r\n"), "{text}");
        assert!(text.contains("Authorization: Bearer fresh\r\n"), "{text}");
        assert!(
            !text.contains("X-Trace") && !text.contains("REDACTED"),
            "{text}"
        );
        assert_eq!(built.dropped_redacted, 0);
    }

    #[test]
    fn redacted_query_values_are_left_out_and_counted() {
        let r = REDACTED.to_string();
        let cases = [
            ("/a?x=1", "/a?x=1", 0),
            (&*format!("/a?api_key={r}&x=1"), "/a?x=1", 1),
            (&*format!("/a?key={r}&sig={r}"), "/a", 2),
            (&*format!("/a?x=1&token={r}#frag"), "/a?x=1#frag", 1),
        ];
        for (input, want, dropped) in cases {
            let (got, n) = without_redacted_query(input, &LeftOut::Any);
            assert_eq!((got.as_ref(), n), (want, dropped), "{input}");
        }
        let mut ex = exchange();
        ex.target = format!("/v1/models?api_key={r}&limit=5");
        let dest = Destination {
            authority: "h:1",
            base_path: "",
            marker: None,
        };
        let built = build(&ex, &dest, &RequestRules::default());
        let text = String::from_utf8(built.bytes).unwrap();
        assert!(
            text.starts_with("POST /v1/models?limit=5 HTTP/1.1\r\n"),
            "{text}"
        );
        assert_eq!(built.dropped_redacted, 2, "the header and the parameter");
        // A referrer's redacted values go the same way.
        ex.request_headers.push(
            b"Referer",
            format!("https://a.example/p?code=7&access_token={r}").as_bytes(),
        );
        let built = build(&ex, &dest, &RequestRules::default());
        let text = String::from_utf8(built.bytes).unwrap();
        assert!(
            text.contains("Referer: https://a.example/p?code=7\r\n"),
            "{text}"
        );
        assert!(!text.contains("REDACTED"), "{text}");
        assert_eq!(built.dropped_redacted, 3);
    }
}
