//! Secrets inside bodies: the string values of named JSON members
//! (`"password": "…"`, `"access_token": "…"` at any depth) and the values of
//! named fields of URL-encoded forms (`client_secret=…`), as a login or an
//! OAuth token endpoint carries them. Capture replaces such a value with
//! [`REDACTED`] in place, every other byte staying as captured; replay leaves
//! a member or field whose value is [`REDACTED`] out of what it sends.
//!
//! Only bodies whose `Content-Type` says JSON or a URL-encoded form, and
//! that have no `Content-Encoding`, are read: a compressed body would have
//! to be inflated and deflated again, and an event stream or a binary body
//! has no members to name.

use std::borrow::Cow;
use std::ops::Range;

use crate::schema::{HeaderList, REDACTED};

/// JSON members and form fields whose values are secrets unless
/// `--keep-secrets`: passwords, OAuth client secrets and the tokens a token
/// endpoint issues, API and private keys. Names match whatever their case
/// and `_`/`-` spelling (`accessToken`, `access-token`). Generic names
/// (`token`, `key`) are left to forms only: in JSON they are often data
/// (an LLM's `logprobs[].token`).
pub const DEFAULT_REDACTED_BODY: [&str; 20] = [
    "password",
    "passwd",
    // Password changes.
    "new_password",
    "old_password",
    "current_password",
    "client_secret",
    "client_assertion",
    "access_token",
    "refresh_token",
    "id_token",
    // OAuth: the PKCE verifier, the device flow's code, token exchange.
    "code_verifier",
    "device_code",
    "subject_token",
    "actor_token",
    "api_key",
    "private_key",
    // AWS STS and IAM answers (`SecretAccessKey`, `SessionToken`), Secrets
    // Manager's `SecretString`/`SecretBinary`. Not KMS's `Plaintext`: the
    // name matches `plain_text`, which is data in many APIs (rich text).
    "secret_access_key",
    "session_token",
    "secret_string",
    "secret_binary",
];

/// A body's format, as far as secrets are found in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

/// What `headers` say the body is, when it is read for secrets: JSON
/// (`application/json`, `…+json`) or a URL-encoded form, not compressed.
pub fn body_kind(headers: &HeaderList) -> Option<BodyKind> {
    // One pass over the fields: this runs for every captured body.
    let mut content_type = None;
    for (name, value) in headers.iter() {
        let bad = match name.len() {
            12 if name.eq_ignore_ascii_case(b"content-type") => {
                content_type.get_or_insert(value);
                false
            }
            16 if name.eq_ignore_ascii_case(b"content-encoding") => {
                coded(value, &[b"identity".as_slice(), b""])
            }
            // A transfer coding other than chunked (`gzip, chunked`) is
            // stored as it came, still coded, like a content coding.
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                coded(value, &[b"chunked".as_slice()])
            }
            _ => false,
        };
        if bad {
            return None;
        }
    }
    media_kind(content_type?)
}

/// A coding list naming something other than `plain`.
fn coded(value: &[u8], plain: &[&[u8]]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|c| !plain.iter().any(|p| c.eq_ignore_ascii_case(p)))
}

/// The kind of body a `Content-Type` value names, if it is read at all.
fn media_kind(ct: &[u8]) -> Option<BodyKind> {
    let media = ct.split(|&b| b == b';').next()?.trim_ascii();
    let ends_json = media.len() >= 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json");
    // AWS's JSON protocols (STS, KMS, Secrets Manager) say
    // `application/x-amz-json-1.1`.
    let amz = b"application/x-amz-json-";
    let amz_json = media.len() > amz.len() && media[..amz.len()].eq_ignore_ascii_case(amz);
    if media.eq_ignore_ascii_case(b"application/json")
        || media.eq_ignore_ascii_case(b"text/json")
        || ends_json
        || amz_json
    {
        Some(BodyKind::Json)
    } else if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// A name as compared: lower case, without `_` and `-`.
pub fn normalize(name: &[u8]) -> Vec<u8> {
    name.iter()
        .filter(|b| !matches!(b, b'_' | b'-'))
        .map(u8::to_ascii_lowercase)
        .collect()
}

/// Names to redact, normalized once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyNames {
    /// JSON member names.
    json: Vec<Vec<u8>>,
    /// Form field names: the JSON ones and the query parameter ones (a
    /// form is a query in a body).
    form: Vec<Vec<u8>>,
}

impl BodyNames {
    pub fn new(json: &[String], query: &[String]) -> Self {
        let json: Vec<Vec<u8>> = json.iter().map(|n| normalize(n.as_bytes())).collect();
        let mut form = json.clone();
        form.extend(query.iter().map(|n| normalize(n.as_bytes())));
        form.sort();
        form.dedup();
        Self { json, form }
    }

    pub fn is_empty(&self) -> bool {
        self.form.is_empty()
    }

    fn for_kind(&self, kind: BodyKind) -> &[Vec<u8>] {
        match kind {
            BodyKind::Json => &self.json,
            BodyKind::Form => &self.form,
        }
    }
}

/// Whether `raw` is one of `names` (normalized), compared without
/// allocating: this runs for every string member of every JSON body.
fn named(names: &[Vec<u8>], raw: &[u8]) -> bool {
    let spelled = || {
        raw.iter()
            .filter(|b| !matches!(b, b'_' | b'-'))
            .map(u8::to_ascii_lowercase)
    };
    names.iter().any(|m| m.iter().copied().eq(spelled()))
}

/// Redact a message's body if its headers say it is JSON or a form; how
/// many values were replaced.
pub fn redact_message(headers: &HeaderList, body: &mut Vec<u8>, names: &BodyNames) -> u64 {
    if names.is_empty() || body.is_empty() {
        return 0;
    }
    body_kind(headers).map_or(0, |kind| redact_body(body, kind, names))
}

/// Replace the secret values in `body` with [`REDACTED`]; how many were
/// replaced. A body cut short (`--max-body`) is read as far as it goes: a
/// secret cut off at its end is redacted too.
pub fn redact_body(body: &mut Vec<u8>, kind: BodyKind, names: &BodyNames) -> u64 {
    if names.for_kind(kind).is_empty() || body.is_empty() {
        return 0;
    }
    let mut spans = Vec::new();
    match kind {
        BodyKind::Json => string_members(body, |m| {
            let value = &body[m.value.clone()];
            if !value.is_empty() && value != REDACTED.as_bytes() && named(&names.json, &body[m.key])
            {
                spans.push(m.value);
            }
        }),
        BodyKind::Form => {
            for field in form_fields(body) {
                let value = &body[field.value.clone()];
                if !value.is_empty()
                    && value != REDACTED.as_bytes()
                    && named(&names.form, &body[field.name])
                {
                    spans.push(field.value);
                }
            }
        }
    }
    if spans.is_empty() {
        return 0;
    }
    let mut out = Vec::with_capacity(body.len() + spans.len() * REDACTED.len());
    let mut at = 0;
    for span in &spans {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    *body = out;
    spans.len() as u64
}

/// Which captured [`REDACTED`] values replay leaves out rather than send as
/// if they were the secret.
#[derive(Clone, Debug, Default)]
pub enum LeftOut {
    /// Every one: the capture did not record the names it redacted by (files
    /// from before they were recorded).
    #[default]
    Any,
    /// Only those of the names the capture redacted by: a `[REDACTED]` that
    /// is data (a prompt already scrubbed upstream) is sent as captured.
    Named {
        headers: Vec<String>,
        query: Vec<String>,
        body: BodyNames,
    },
}

impl LeftOut {
    /// For captures that recorded these names (`None`: not all did).
    pub fn by(names: Option<&super::Redaction>) -> Self {
        match names {
            None => Self::Any,
            Some(r) => Self::Named {
                headers: r.headers.clone(),
                query: r.query.clone(),
                body: r.body_names(),
            },
        }
    }

    /// A header field of this name whose value is [`REDACTED`].
    pub fn header(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Named { headers, .. } => headers.iter().any(|h| h.eq_ignore_ascii_case(name)),
        }
    }

    /// A query parameter of this name whose value is [`REDACTED`].
    pub fn query(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Named { query, .. } => query.iter().any(|q| q.eq_ignore_ascii_case(name)),
        }
    }

    /// A body member or field of this (raw) name.
    fn member(&self, kind: BodyKind, raw: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Named { body, .. } => named(body.for_kind(kind), raw),
        }
    }
}

/// The body as replay sends it: JSON members and form fields whose value is
/// [`REDACTED`] left out (never sent as if it were the secret), and how many.
pub fn without_redacted<'b>(
    headers: &HeaderList,
    body: &'b [u8],
    left_out: &LeftOut,
) -> (Cow<'b, [u8]>, u32) {
    if memchr::memmem::find(body, REDACTED.as_bytes()).is_none() {
        return (Cow::Borrowed(body), 0);
    }
    let (cuts, left_out) = match body_kind(headers) {
        Some(BodyKind::Json) => {
            let cuts = json_cuts(body, left_out);
            let n = cuts.len() as u32;
            (cuts, n)
        }
        Some(BodyKind::Form) => form_cuts(body, left_out),
        None => (Vec::new(), 0),
    };
    if cuts.is_empty() {
        return (Cow::Borrowed(body), 0);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for cut in &cuts {
        out.extend_from_slice(&body[at..cut.start]);
        at = cut.end;
    }
    out.extend_from_slice(&body[at..]);
    (Cow::Owned(out), left_out)
}

/// The ranges to remove for JSON members whose value is `"[REDACTED]"`,
/// each with one comma beside it so that the rest stays valid JSON: the one
/// before when no earlier cut took it, else the one after.
fn json_cuts(body: &[u8], left_out: &LeftOut) -> Vec<Range<usize>> {
    let mut cuts: Vec<Range<usize>> = Vec::new();
    string_members(body, |m| {
        if !m.closed
            || &body[m.value.clone()] != REDACTED.as_bytes()
            || !left_out.member(BodyKind::Json, &body[m.key.clone()])
        {
            return;
        }
        let end = m.value.end + 1; // the closing quote
        let before = body[..m.key_quote]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace());
        let after = body[end..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|i| end + i);
        let taken = cuts.last().map_or(0, |c| c.end);
        let cut = match (before, after) {
            (Some(b), _) if body[b] == b',' && b >= taken => b..end,
            (_, Some(a)) if body[a] == b',' => m.key_quote..a + 1,
            _ => m.key_quote..end,
        };
        cuts.push(cut);
    });
    cuts
}

/// The ranges to remove for form fields whose value is `[REDACTED]`, each
/// with the `&` that joined it to the rest, and how many fields they hold.
fn form_cuts(body: &[u8], left_out: &LeftOut) -> (Vec<Range<usize>>, u32) {
    let fields: Vec<FormField> = form_fields(body).collect();
    let kept = |f: &FormField| {
        &body[f.value.clone()] != REDACTED.as_bytes()
            || !left_out.member(BodyKind::Form, &body[f.name.clone()])
    };
    let left_out = fields.iter().filter(|f| !kept(f)).count() as u32;
    if left_out == 0 {
        return (Vec::new(), 0);
    }
    // A cut field takes the `&` before it; the first field kept after
    // only cut ones takes the `&` before it too.
    let mut cuts = Vec::new();
    let (mut any_kept, mut prev_end) = (false, 0);
    for f in &fields {
        if !kept(f) {
            cuts.push(prev_end..f.whole.end);
        } else if !any_kept {
            cuts.push(prev_end..f.whole.start);
            any_kept = true;
        }
        prev_end = f.whole.end;
    }
    (merge(cuts), left_out)
}

/// Sorted ranges with touching or overlapping ones joined.
fn merge(cuts: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for c in cuts.into_iter().filter(|c| !c.is_empty()) {
        match out.last_mut() {
            Some(last) if c.start <= last.end => last.end = last.end.max(c.end),
            _ => out.push(c),
        }
    }
    out
}

/// One `name=value` of a URL-encoded form.
struct FormField {
    whole: Range<usize>,
    name: Range<usize>,
    value: Range<usize>,
}

fn form_fields(body: &[u8]) -> impl Iterator<Item = FormField> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at > body.len() {
            return None;
        }
        let start = at;
        let end = memchr::memchr(b'&', &body[start..]).map_or(body.len(), |i| start + i);
        at = end + 1;
        // A field without `=` is a name with no value.
        let eq = memchr::memchr(b'=', &body[start..end]).map_or(end, |i| start + i);
        Some(FormField {
            whole: start..end,
            name: start..eq,
            value: (eq + 1).min(end)..end,
        })
    })
}

/// An object member whose value is a string.
struct StringMember {
    /// Where the key's opening quote is.
    key_quote: usize,
    /// The key's bytes, inside the quotes (escapes as written).
    key: Range<usize>,
    /// The value's bytes, inside the quotes.
    value: Range<usize>,
    /// Whether the value's closing quote came (a cut body may end inside).
    closed: bool,
}

/// Call `found` for each string-valued member of every object in a JSON
/// text, in order. Written by hand because we need the byte ranges of
/// members to replace or cut them while every other byte stays as captured
/// (serde_json and the other parsers give values, not where they were), and
/// a body cut short by `--max-body` must still be read up to its end. It
/// tracks only the nesting and the strings; anything that is not JSON is
/// stepped over, never a panic, in one pass with a stack as deep as the
/// text's nesting.
fn string_members(text: &[u8], mut found: impl FnMut(StringMember)) {
    // Whether each open container is an object: one byte a level, so a
    // body of 16 MiB of `[` holds 16 MiB here, no more. The key state is
    // the innermost container's only: an outer one's is always clear while
    // an inner one is open (its value is that container).
    let mut objects: Vec<bool> = Vec::new();
    // The last key read in the innermost object, until its value ends.
    let mut key: Option<(usize, Range<usize>)> = None;
    // A `:` came after that key: a string now is its value.
    let mut value_next = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            open @ (b'{' | b'[') => {
                objects.push(open == b'{');
                (key, value_next) = (None, false);
            }
            b'}' | b']' | b',' => {
                if text[i] != b',' {
                    objects.pop();
                }
                (key, value_next) = (None, false);
            }
            b':' => value_next = key.is_some(),
            b'"' => {
                let (end, closed) = string_end(text, i + 1);
                if objects.last() == Some(&true) {
                    if value_next {
                        if let Some((key_quote, key)) = key.take() {
                            found(StringMember {
                                key_quote,
                                key,
                                value: i + 1..end,
                                closed,
                            });
                        }
                        value_next = false;
                    } else {
                        key = Some((i, i + 1..end));
                    }
                }
                i = end;
            }
            _ => {
                // Numbers, literals, blanks: on to the next byte that counts.
                let rest = &text[i..];
                i += rest
                    .iter()
                    .position(|&b| STRUCTURAL[usize::from(b)])
                    .unwrap_or(rest.len());
                continue;
            }
        }
        i += 1;
    }
}

/// The bytes [`string_members`] acts on.
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let bytes = b"{}[],:\"";
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
};

/// Where the string starting at `from` (after its opening quote) ends: the
/// index of its closing quote and true, or the text's end and false.
fn string_end(text: &[u8], mut from: usize) -> (usize, bool) {
    while let Some(j) = memchr::memchr2(b'"', b'\\', &text[from..]) {
        let at = from + j;
        if text[at] == b'"' {
            return (at, true);
        }
        from = at + 2; // the escaped byte
        if from > text.len() {
            break;
        }
    }
    (text.len(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> BodyNames {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        BodyNames::new(
            &own(&DEFAULT_REDACTED_BODY),
            &own(&super::super::DEFAULT_REDACTED_QUERY),
        )
    }

    fn redacted(kind: BodyKind, body: &str) -> (String, u64) {
        let mut b = body.as_bytes().to_vec();
        let n = redact_body(&mut b, kind, &names());
        (String::from_utf8(b).unwrap(), n)
    }

    fn headers(ct: &str) -> HeaderList {
        let mut h = HeaderList::default();
        h.push(b"Content-Type", ct.as_bytes());
        h
    }

    #[test]
    fn json_secrets_are_redacted_in_place_at_any_depth_and_in_any_spelling() {
        let (out, n) = redacted(
            BodyKind::Json,
            r#"{"user": "ann", "password" : "hunter2", "nested": {"accessToken":"a.b.c", "list": [{"Refresh-Token": "r\"1"}]}, "n": 3}"#,
        );
        assert_eq!(
            out,
            r#"{"user": "ann", "password" : "[REDACTED]", "nested": {"accessToken":"[REDACTED]", "list": [{"Refresh-Token": "[REDACTED]"}]}, "n": 3}"#
        );
        assert_eq!(n, 3);
    }

    /// Credentials of a password change, of OAuth's PKCE, device and
    /// token-exchange grants, and of an AWS STS answer.
    #[test]
    fn the_default_names_cover_common_credential_shapes() {
        let (out, n) = redacted(
            BodyKind::Json,
            r#"{"Credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "sk", "SessionToken": "st", "Expiration": 1}}"#,
        );
        assert_eq!(
            out,
            r#"{"Credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "[REDACTED]", "SessionToken": "[REDACTED]", "Expiration": 1}}"#
        );
        assert_eq!(n, 2);
        let (out, n) = redacted(
            BodyKind::Json,
            r#"{"ARN": "arn:x", "SecretString": "{\"pw\": 1}", "SecretBinary": "AAEC"}"#,
        );
        assert_eq!(
            out,
            r#"{"ARN": "arn:x", "SecretString": "[REDACTED]", "SecretBinary": "[REDACTED]"}"#
        );
        assert_eq!(n, 2);
        let (out, n) = redacted(
            BodyKind::Json,
            r#"{"currentPassword": "a", "new_password": "b", "old-password": "c"}"#,
        );
        assert_eq!(
            out,
            r#"{"currentPassword": "[REDACTED]", "new_password": "[REDACTED]", "old-password": "[REDACTED]"}"#
        );
        assert_eq!(n, 3);
        let (out, n) = redacted(
            BodyKind::Form,
            "grant_type=authorization_code&code=c1&code_verifier=v&device_code=d&subject_token=s&actor_token=a",
        );
        assert_eq!(
            out,
            "grant_type=authorization_code&code=c1&code_verifier=[REDACTED]&device_code=[REDACTED]&subject_token=[REDACTED]&actor_token=[REDACTED]"
        );
        assert_eq!(n, 4);
    }

    #[test]
    fn json_data_that_only_looks_like_a_secret_is_kept() {
        for body in [
            // an LLM's logprobs: `token` is data in JSON
            r#"{"logprobs": {"content": [{"token": "Hello", "logprob": -0.1}]}}"#,
            // a secret's name as a value, or as a key of a non-string
            r#"{"field": "password", "password": {"min_length": 8}, "api_key": null}"#,
            r#"["password", "hunter2"]"#,
            r#"{"password": ""}"#,
            r#"{"password": "[REDACTED]"}"#,
        ] {
            assert_eq!(
                redacted(BodyKind::Json, body),
                (body.to_string(), 0),
                "{body}"
            );
        }
    }

    #[test]
    fn a_json_body_cut_inside_a_secret_has_the_rest_redacted() {
        let (out, n) = redacted(BodyKind::Json, r#"{"a": 1, "client_secret": "s3cr"#);
        assert_eq!(
            (out.as_str(), n),
            (r#"{"a": 1, "client_secret": "[REDACTED]"#, 1)
        );
    }

    #[test]
    fn form_fields_are_redacted_by_body_and_query_names() {
        let (out, n) = redacted(
            BodyKind::Form,
            "grant_type=password&username=ann&password=hunter2&client_id=app&client_secret=xyz&token=&scope=a+b",
        );
        assert_eq!(
            out,
            "grant_type=password&username=ann&password=[REDACTED]&client_id=app&client_secret=[REDACTED]&token=&scope=a+b"
        );
        assert_eq!(n, 2);
        assert_eq!(redacted(BodyKind::Form, "token=abc").1, 1);
    }

    #[test]
    fn only_declared_uncompressed_json_and_forms_are_read() {
        assert_eq!(
            body_kind(&headers("application/json")),
            Some(BodyKind::Json)
        );
        assert_eq!(
            body_kind(&headers("Application/Vnd.Api+JSON; charset=utf-8")),
            Some(BodyKind::Json)
        );
        assert_eq!(
            body_kind(&headers("application/x-www-form-urlencoded")),
            Some(BodyKind::Form)
        );
        for json in ["application/x-amz-json-1.1", "text/json; charset=utf-8"] {
            assert_eq!(body_kind(&headers(json)), Some(BodyKind::Json), "{json}");
        }
        for other in [
            "text/event-stream",
            "application/grpc",
            "text/plain",
            "application/x-amz-json-",
            "application/x-amz-cbor-1.1",
        ] {
            assert_eq!(body_kind(&headers(other)), None, "{other}");
        }
        let mut gz = headers("application/json");
        gz.push(b"Content-Encoding", b"gzip");
        assert_eq!(body_kind(&gz), None);
        let mut te = headers("application/json");
        te.push(b"Transfer-Encoding", b"gzip, chunked");
        assert_eq!(body_kind(&te), None, "a transfer coding is stored coded");
        let mut plain = headers("application/json");
        plain.push(b"Transfer-Encoding", b"Chunked");
        plain.push(b"Content-Encoding", b"");
        assert_eq!(body_kind(&plain), Some(BodyKind::Json));
        assert_eq!(body_kind(&HeaderList::default()), None);
    }

    #[test]
    fn replay_leaves_redacted_members_out_and_the_json_stays_valid() {
        let h = headers("application/json");
        for (body, want, n) in [
            (
                r#"{"user": "ann", "password": "[REDACTED]"}"#,
                r#"{"user": "ann"}"#,
                1,
            ),
            (
                r#"{"password": "[REDACTED]", "user": "ann"}"#,
                r#"{ "user": "ann"}"#,
                1,
            ),
            (
                r#"{"a":"[REDACTED]","b":"[REDACTED]","x":1}"#,
                r#"{"x":1}"#,
                2,
            ),
            (r#"{"a":"[REDACTED]","b":"[REDACTED]"}"#, r#"{}"#, 2),
            (
                r#"{"x":1,"auth":{"password":"[REDACTED]"},"tags":["[REDACTED]"]}"#,
                r#"{"x":1,"auth":{},"tags":["[REDACTED]"]}"#,
                1,
            ),
        ] {
            let (out, k) = without_redacted(&h, body.as_bytes(), &LeftOut::Any);
            let out = String::from_utf8(out.into_owned()).unwrap();
            assert_eq!((out.as_str(), k), (want, n), "{body}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
    }

    #[test]
    fn replay_leaves_redacted_form_fields_out() {
        let h = headers("application/x-www-form-urlencoded");
        for (body, want, n) in [
            ("a=1&password=[REDACTED]&b=2", "a=1&b=2", 1),
            ("password=[REDACTED]&b=2", "b=2", 1),
            ("a=1&password=[REDACTED]", "a=1", 1),
            ("password=[REDACTED]&client_secret=[REDACTED]", "", 2),
            ("x=[REDACTED]&a=1&y=[REDACTED]&b=2", "a=1&b=2", 2),
        ] {
            let (out, k) = without_redacted(&h, body.as_bytes(), &LeftOut::Any);
            assert_eq!((&*out, k), (want.as_bytes(), n), "{body}");
        }
        let plain = b"password=[REDACTED]";
        let (out, k) = without_redacted(&headers("text/plain"), plain, &LeftOut::Any);
        assert_eq!((&*out, k), (&plain[..], 0));
    }

    /// Nesting costs a byte a level, and a secret deep inside is found.
    #[test]
    fn deep_nesting_is_read_in_one_pass() {
        let depth = 100_000;
        let mut body = "[".repeat(depth).into_bytes();
        body.extend_from_slice(br#"{"password":"x"}"#);
        body.extend(std::iter::repeat_n(b']', depth));
        assert_eq!(redact_body(&mut body, BodyKind::Json, &names()), 1);
        assert!(body.windows(12).any(|w| w == br#""[REDACTED]""#));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let key = prop::sample::select(vec![
            "password",
            "user",
            "accessToken",
            "token",
            "a\"b",
            "API-KEY",
            "x",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-z\"\\\\ {}\\[\\],:]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..4).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    /// What redaction should give: string values of secret keys replaced.
    fn expected(v: &serde_json::Value, names: &BodyNames) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let secret = matches!(v, Value::String(s) if !s.is_empty() && s != REDACTED)
                            && named(
                                &names.json,
                                serde_json::to_string(k)
                                    .unwrap()
                                    .trim_matches('"')
                                    .as_bytes(),
                            );
                        let v = if secret {
                            Value::from(REDACTED)
                        } else {
                            expected(v, names)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|v| expected(v, names)).collect()),
            other => other.clone(),
        }
    }

    proptest! {
        #[test]
        fn redacted_json_parses_to_the_same_value_with_secrets_replaced(
            v in json_value(), pretty in any::<bool>()
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let mut body = text.into_bytes();
            redact_body(&mut body, BodyKind::Json, &names());
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(got, expected(&v, &names()));
            // What replay sends parses too, with no redacted member left.
            let (sent, _) = without_redacted(&headers("application/json"), &body, &LeftOut::Any);
            let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
            prop_assert!(!serde_json::to_string(&sent).unwrap().contains("\":\"[REDACTED]\""));
        }

        #[test]
        fn any_bytes_are_read_without_a_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut b = body.clone();
            redact_body(&mut b, BodyKind::Json, &names());
            let mut b = body.clone();
            redact_body(&mut b, BodyKind::Form, &names());
            let _ = without_redacted(&headers("application/json"), &body, &LeftOut::Any);
            let _ = without_redacted(&headers("application/x-www-form-urlencoded"), &body, &LeftOut::Any);
        }
    }
}
