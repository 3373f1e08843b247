//! Endpoint names: "METHOD /path/template", shared by replay (which writes
//! them) and diff (which groups by them).
//!
//! The query string is not part of an endpoint. Path segments that are
//! identifiers (numbers, UUIDs, long hex strings, dates, ULIDs) become `{id}`, so
//! `GET /items/42?x=1` and `GET /items/7` are both `GET /items/{id}`.

/// The endpoint of a request.
pub fn endpoint(method: &str, target: &str) -> String {
    let path = path_of(target);
    let mut out = String::with_capacity(method.len() + 1 + path.len());
    out.push_str(method);
    out.push(' ');
    if path.is_empty() {
        out.push('/');
        return out;
    }
    let mut first = true;
    for seg in path.split('/') {
        if !first {
            out.push('/');
        }
        first = false;
        out.push_str(if is_identifier(seg) { "{id}" } else { seg });
    }
    out
}

/// The endpoint of a request given its content type: a gRPC call is named
/// by its method, `gRPC package.Service/Method` (its path holds no ids).
pub fn endpoint_of(method: &str, target: &str, content_type: Option<&[u8]>) -> String {
    if method == "POST" && crate::proto::h2::grpc::is_grpc(content_type) {
        return format!("gRPC {}", path_of(target).trim_start_matches('/'));
    }
    endpoint(method, target)
}

/// The path of a request-target: origin form as is, absolute form without
/// scheme and authority, `*` and authority form unchanged; never the query.
pub(crate) fn path_of(target: &str) -> &str {
    let no_query = target.split(['?', '#']).next().unwrap_or("");
    if let Some(rest) = no_query
        .strip_prefix("http://")
        .or_else(|| no_query.strip_prefix("https://"))
        .or_else(|| no_query.strip_prefix("HTTP://"))
        .or_else(|| no_query.strip_prefix("HTTPS://"))
    {
        return rest.find('/').map_or("/", |i| &rest[i..]);
    }
    no_query
}

fn is_identifier(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let hex = seg.len() >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit());
    is_number(seg) || hex || is_uuid(seg) || is_date(seg) || is_ulid(seg)
}

/// `42`, `-5`, `12.5`: offsets, coordinates, versions of a record.
fn is_number(seg: &str) -> bool {
    let unsigned = seg.strip_prefix(['-', '+']).unwrap_or(seg);
    let mut parts = unsigned.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && parts.next().is_none_or(digits)
}

/// `2024-01-15`: a report or a partition of one day.
fn is_date(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// A ULID (26 characters of Crockford's base32, upper case), as many
/// services name records now; a word of capitals this long has no digits.
fn is_ulid(seg: &str) -> bool {
    seg.len() == 26
        && seg.bytes().any(|b| b.is_ascii_digit())
        && seg
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Glob match with `*` (any run of characters) and `?` (one character),
/// for `--include` paths and config endpoint names (hand-written: ten lines,
/// no regex needed).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_identifiers_and_drops_queries() {
        assert_eq!(endpoint("GET", "/items/42?x=1"), "GET /items/{id}");
        assert_eq!(
            endpoint("GET", "/u/123e4567-e89b-12d3-a456-426614174000/x"),
            "GET /u/{id}/x"
        );
        assert_eq!(
            endpoint("GET", "/blob/0123456789abcdef0123"),
            "GET /blob/{id}"
        );
        assert_eq!(endpoint("GET", "/v1/models"), "GET /v1/models");
        assert_eq!(
            endpoint_of(
                "POST",
                "/inference.GRPCInferenceService/ModelInfer",
                Some(b"application/grpc")
            ),
            "gRPC inference.GRPCInferenceService/ModelInfer"
        );
        assert_eq!(
            endpoint_of("POST", "/v1/items/7", Some(b"application/json")),
            "POST /v1/items/{id}"
        );
        assert_eq!(endpoint("POST", "/predict"), "POST /predict");
        assert_eq!(endpoint("GET", "http://bro.org/a/7"), "GET /a/{id}");
        assert_eq!(endpoint("GET", "HTTP://bro.org"), "GET /");
        assert_eq!(endpoint("OPTIONS", "*"), "OPTIONS *");
        assert_eq!(endpoint("GET", ""), "GET /");
        // Signed and decimal numbers, days and ULIDs are ids too.
        assert_eq!(
            endpoint(
                "GET",
                "/geo/12.5/-3.25/reports/2024-01-15/01HGW2N7EHJPR3Q8T5V6XKZ9AB"
            ),
            "GET /geo/{id}/{id}/reports/{id}/{id}"
        );
        // Names that only look a bit like them are kept.
        for kept in [
            "/v1.2/x",
            "/gpt-4o-mini",
            "/1.2.3",
            "/2024-1-15",
            "/-",
            "/.",
        ] {
            assert_eq!(endpoint("GET", kept), format!("GET {kept}"), "{kept}");
        }
    }
}
