//! What is secret in captured and replayed traffic, and how it is hidden:
//! shared by capture (before anything is written) and replay (the live
//! answers it records).

pub mod body;

pub use body::{redact_message, BodyNames, DEFAULT_REDACTED_BODY};

use crate::schema::{HeaderList, DEFAULT_REDACTED, REDACTED};

/// Query parameters whose values are secrets unless `--keep-secrets`:
/// API keys and tokens, and the signatures and credentials of presigned
/// S3 and GCS URLs (anyone holding one can use it until it expires).
pub const DEFAULT_REDACTED_QUERY: [&str; 13] = [
    "api_key",
    "access_token",
    "refresh_token",
    "client_secret",
    "token",
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// Header fields whose value is a URL, whose query is redacted like the
/// request target's (a redirect or a referrer can carry a token).
pub const URL_FIELDS: [&str; 3] = ["referer", "location", "content-location"];

/// What capture redacts before anything is written. Capture records it in
/// its statistics (`redaction`, also in each file's metadata), so that
/// replay redacts the live answers by the same names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Redaction {
    /// Header names (lower case) whose values become [`REDACTED`].
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameter names (lower case) whose values become [`REDACTED`].
    #[serde(default)]
    pub query: Vec<String>,
    /// JSON member and form field names whose values become [`REDACTED`]
    /// in bodies (forms also use `query`; see [`body`]).
    #[serde(default)]
    pub body: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            headers: own(&DEFAULT_REDACTED),
            query: own(&DEFAULT_REDACTED_QUERY),
            body: own(&DEFAULT_REDACTED_BODY),
        }
    }
}

impl Redaction {
    /// `--keep-secrets`: nothing unless asked by name.
    pub fn none() -> Self {
        Self {
            headers: Vec::new(),
            query: Vec::new(),
            body: Vec::new(),
        }
    }

    /// These names and those of `other`, each once.
    pub fn union(mut self, other: &Redaction) -> Self {
        for (mine, theirs) in [
            (&mut self.headers, &other.headers),
            (&mut self.query, &other.query),
            (&mut self.body, &other.body),
        ] {
            for name in theirs {
                if !mine.iter().any(|m| m.eq_ignore_ascii_case(name)) {
                    mine.push(name.to_ascii_lowercase());
                }
            }
        }
        self
    }

    /// The body names, normalized for matching.
    pub fn body_names(&self) -> BodyNames {
        BodyNames::new(&self.body, &self.query)
    }
}

/// Replace the values of the named query parameters of a request target
/// with [`REDACTED`]; the new target and how many values were replaced.
pub fn redact_query(target: &str, names: &[String]) -> (Option<String>, u64) {
    let Some((path, rest)) = target.split_once('?') else {
        return (None, 0);
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let mut n = 0;
    let parts: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, v))
                if !v.is_empty()
                    && v != REDACTED
                    && names.iter().any(|name| name.eq_ignore_ascii_case(k)) =>
            {
                n += 1;
                format!("{k}={REDACTED}")
            }
            _ => p.to_string(),
        })
        .collect();
    if n == 0 {
        return (None, 0);
    }
    let mut out = format!("{path}?{}", parts.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    (Some(out), n)
}

/// Redact the query of the URL in each of the `fields` (any case); how
/// many values were replaced. The list is only rebuilt when one is.
pub fn redact_url_fields(headers: &mut HeaderList, fields: &[&str], query: &[String]) -> u64 {
    let named = |n: &[u8]| fields.iter().any(|f| f.as_bytes().eq_ignore_ascii_case(n));
    if !headers.iter().any(|(n, v)| named(n) && v.contains(&b'?')) {
        return 0;
    }
    let mut out = HeaderList::with_capacity(headers.len(), headers.byte_len());
    let mut replaced = 0;
    for (name, value) in headers.iter() {
        let redacted = named(name)
            .then(|| redact_query(&String::from_utf8_lossy(value), query))
            .and_then(|(v, k)| v.map(|v| (v, k)));
        match redacted {
            Some((v, k)) => {
                replaced += k;
                out.push(name, v.as_bytes());
            }
            None => out.push(name, value),
        }
    }
    if replaced > 0 {
        *headers = out;
    }
    replaced
}
