//! Compare one primary answer with one shadow answer: errors, status,
//! headers, then the body (decoded; JSON field by field under the config's
//! rules; text exactly or by ROUGE-L; binary by equality).

use std::borrow::Cow;
use std::io::Read;

use serde_json::Value;

use super::config::{glob, Compare, Config, Rule};
use super::doc::LazyDoc;
use super::jsonpath::{field_name, Step};
use super::similarity::{cosine, numeric_close, rouge_l};
use crate::schema::ReplayResult;

/// How a field differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiffKind {
    Changed,
    MissingInShadow,
    AddedInShadow,
    TypeChanged,
    /// A `judge` rule's value the judge gave no score for (a timeout, a
    /// crash, a bad answer): unknown, neither agreeing nor differing.
    Unjudged,
}

impl DiffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Changed => "changed",
            DiffKind::MissingInShadow => "missing_in_shadow",
            DiffKind::AddedInShadow => "added_in_shadow",
            DiffKind::TypeChanged => "type_changed",
            DiffKind::Unjudged => "unjudged",
        }
    }
}

/// One difference: `path` is `error`, `status`, `header:NAME`, `body`, or a
/// JSON path with indexes as `[*]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Diff {
    pub path: String,
    pub kind: DiffKind,
    /// Short renderings of both values, for examples.
    pub primary: String,
    pub shadow: String,
}

/// Differences beyond this many per exchange are not listed (a shadow that
/// returns a different document is already divergent by then).
const MAX_DIFFS: usize = 50;
/// Decoded bodies larger than this are compared as they came (bomb guard).
const MAX_DECODED: u64 = 64 << 20;

/// What of the config applies to one endpoint (globs matched once).
pub struct EndpointConfig<'c> {
    pub rules: Vec<&'c Rule>,
    /// Indexes into `Config::drift`.
    pub drift: Vec<usize>,
    /// How its bodies are read (`[[stream]]`, protobuf descriptors).
    pub doc: super::doc::DocSpec<'c>,
    /// A rule scores similarity (rouge_l, judge): every pair is walked,
    /// equal ones too, so the similarity distributions count them.
    pub scores: bool,
}

/// How `compare = "judge"` rules are treated in one comparison.
#[derive(Clone, Copy)]
pub enum JudgeMode<'a> {
    /// No judge configured, or none wanted now.
    Off,
    /// First pass: note what the judge must see; count the path as equal.
    Collect,
    /// Second pass: use the judgements, by exact path.
    Score(&'a std::collections::HashMap<String, super::judge::Judgement>),
}

/// What a comparison saw besides differences.
#[derive(Debug, Default)]
pub struct Observed {
    /// (rule path, metric, similarity) for each value under a rouge_l or
    /// judge rule.
    pub similarities: Vec<(String, &'static str, f64)>,
    /// Collect mode: (exact path, rule path, primary value, shadow value).
    pub judge_wanted: Vec<(String, String, Value, Value)>,
    /// Score mode: judgements that failed (the path is `Unjudged`).
    pub judge_failed: u64,
}

/// Compares answers under one config; caches what applies per endpoint so
/// no glob runs and nothing is allocated per exchange.
pub struct Comparer<'c> {
    config: &'c Config,
    by_endpoint: std::collections::HashMap<String, usize>,
    configs: Vec<EndpointConfig<'c>>,
    /// The endpoint asked for last: consecutive exchanges mostly share one,
    /// and hashing its name two or three times per exchange showed in the
    /// profile.
    last: (String, usize),
    /// Where an endpoint past [`MAX_CACHED_ENDPOINTS`] gets its rules worked
    /// out, uncached: each exchange is still compared by its own endpoint's
    /// rules however many endpoints a run has.
    scratch: Option<usize>,
}

/// Endpoints whose rules are kept once worked out: a run of unbounded
/// distinct names (ids in paths no template collapses) must not grow memory
/// with each new one. Past it, the globs run for each exchange.
const MAX_CACHED_ENDPOINTS: usize = 2 * super::MAX_ENDPOINTS;

impl<'c> Comparer<'c> {
    pub fn new(config: &'c Config) -> Self {
        Self {
            config,
            by_endpoint: Default::default(),
            configs: Vec::new(),
            last: (String::new(), usize::MAX),
            scratch: None,
        }
    }

    /// The rules and drift fields for `endpoint`.
    pub fn endpoint(&mut self, endpoint: &str) -> &EndpointConfig<'c> {
        if self.last.1 != usize::MAX && self.last.0 == endpoint {
            return &self.configs[self.last.1];
        }
        let i = match self.by_endpoint.get(endpoint) {
            Some(&i) => i,
            None if self.by_endpoint.len() >= MAX_CACHED_ENDPOINTS => {
                let applies = self.applies_to(endpoint);
                match self.scratch {
                    Some(i) => {
                        self.configs[i] = applies;
                        i
                    }
                    None => {
                        self.configs.push(applies);
                        *self.scratch.insert(self.configs.len() - 1)
                    }
                }
            }
            None => {
                let applies = self.applies_to(endpoint);
                self.configs.push(applies);
                self.by_endpoint
                    .insert(endpoint.to_string(), self.configs.len() - 1);
                self.configs.len() - 1
            }
        };
        self.last.0.clear();
        self.last.0.push_str(endpoint);
        self.last.1 = i;
        &self.configs[i]
    }

    fn applies_to(&self, endpoint: &str) -> EndpointConfig<'c> {
        let c = self.config;
        let rules: Vec<_> = c
            .rules
            .iter()
            .filter(|r| glob(&r.endpoint, endpoint))
            .collect();
        EndpointConfig {
            scores: rules
                .iter()
                .any(|r| matches!(r.compare, Compare::RougeL | Compare::Judge)),
            rules,
            drift: (0..c.drift.len())
                .filter(|&i| glob(&c.drift[i].endpoint, endpoint))
                .collect(),
            doc: super::doc::DocSpec {
                stream: c.streams.iter().rev().find(|s| glob(&s.endpoint, endpoint)),
                protos: c.descriptors.as_deref(),
            },
        }
    }

    /// All differences between `p` (primary) and `s` (shadow) answers to the
    /// same request. Both must be usable answers (see `usable`).
    pub fn compare(&mut self, endpoint: &str, p: &ReplayResult, s: &ReplayResult) -> Vec<Diff> {
        let spec = self.endpoint(endpoint).doc;
        let (pd, sd) = (LazyDoc::new(p, spec), LazyDoc::new(s, spec));
        let mut seen = Observed::default();
        self.compare_docs(endpoint, &pd, &sd, JudgeMode::Off, &mut seen)
    }

    /// [`Comparer::compare`] on bodies whose documents may already be
    /// built; similarities and judge requests go to `seen`.
    pub fn compare_docs(
        &mut self,
        endpoint: &str,
        pd: &LazyDoc,
        sd: &LazyDoc,
        judge: JudgeMode,
        seen: &mut Observed,
    ) -> Vec<Diff> {
        let (p, s) = (pd.row, sd.row);
        if p.error_kind.is_some() || s.error_kind.is_some() {
            let name = |r: &ReplayResult| match (r.error_kind, r.status) {
                (Some(k), _) => k.as_str().to_string(),
                (None, Some(st)) => format!("status {st}"),
                (None, None) => "no answer".into(),
            };
            if p.error_kind == s.error_kind {
                return Vec::new();
            }
            return vec![diff("error", DiffKind::Changed, name(p), name(s))];
        }
        if p.status != s.status {
            let st = |r: &ReplayResult| r.status.map_or("none".into(), |s| s.to_string());
            return vec![diff("status", DiffKind::Changed, st(p), st(s))];
        }
        // gRPC carries its status apart from HTTP's (which is 200 either way).
        let grpc =
            |r: &ReplayResult| super::grpc::status(&r.response_headers, &r.response_trailers);
        if grpc(p) != grpc(s) {
            let st = |r: &ReplayResult| {
                grpc(r).map_or("none".into(), |c| {
                    format!("{c} {}", super::grpc::code_name(c))
                })
            };
            return vec![diff("grpc-status", DiffKind::Changed, st(p), st(s))];
        }
        let mut out = self.compare_headers(p, s);
        // Cut bodies (`--max-body`) hold only a prefix: answers of other
        // lengths differ even when the prefixes agree.
        if (p.response_body_truncated || s.response_body_truncated)
            && p.response_body_len != s.response_body_len
        {
            out.push(diff(
                "body_length",
                DiffKind::Changed,
                p.response_body_len.to_string(),
                s.response_body_len.to_string(),
            ));
        }
        let ec = self.endpoint(endpoint);
        let mut walk = Walk {
            rules: &ec.rules,
            out: &mut out,
            seen,
            judge,
            unjudged: 0,
        };
        compare_bodies(pd, sd, ec.scores, &mut walk);
        out
    }

    fn compare_headers(&self, p: &ReplayResult, s: &ReplayResult) -> Vec<Diff> {
        // The same fields in the same order, byte for byte: nothing can
        // differ (the common case; the general path allocates per name).
        if p.response_headers == s.response_headers {
            return Vec::new();
        }
        let mut names: Vec<String> = p
            .response_headers
            .iter()
            .chain(s.response_headers.iter())
            .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
            .filter(|n| self.config.headers.compared(n))
            .collect();
        names.sort();
        names.dedup();
        let value = |r: &ReplayResult, n: &str| {
            let all: Vec<String> = r
                .response_headers
                .get_all(n)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            (!all.is_empty()).then(|| all.join(", "))
        };
        let mut out = Vec::new();
        for n in names {
            let (a, b) = (value(p, &n), value(s, &n));
            let kind = match (&a, &b) {
                (Some(x), Some(y)) if x == y => continue,
                (Some(_), Some(_)) => DiffKind::Changed,
                (Some(_), None) => DiffKind::MissingInShadow,
                (None, Some(_)) => DiffKind::AddedInShadow,
                (None, None) => continue,
            };
            out.push(diff(
                &format!("header:{n}"),
                kind,
                a.unwrap_or_default(),
                b.unwrap_or_default(),
            ));
        }
        out
    }
}

fn diff(path: &str, kind: DiffKind, primary: String, shadow: String) -> Diff {
    Diff {
        path: path.to_string(),
        kind,
        primary: crate::report::clip(&primary, 120),
        shadow: crate::report::clip(&shadow, 120),
    }
}

/// The body as the application saw it: content-encoding undone.
pub fn decoded_body(r: &ReplayResult) -> Cow<'_, [u8]> {
    let enc = r
        .response_headers
        .get("content-encoding")
        .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase());
    let raw = r.response_body.as_slice();
    // A body cut short (a stream stopped by its idle limit, a timeout or
    // --max-body) ends mid-encoding: what decoded before the cut is the
    // answer so far, as a client would have shown it.
    let cut = r.response_body_truncated || r.error_kind.is_some();
    let out = match enc.as_deref() {
        // Every member; failing that (bytes after the last member that
        // are not one), the first member as before.
        Some("gzip") | Some("x-gzip") => read_all(flate2::read::MultiGzDecoder::new(raw), cut)
            .or_else(|| read_all(flate2::read::GzDecoder::new(raw), cut)),
        Some("deflate") => read_all(flate2::read::ZlibDecoder::new(raw), cut)
            .or_else(|| read_all(flate2::read::DeflateDecoder::new(raw), cut)),
        Some("br") => read_all(brotli_decompressor::Decompressor::new(raw, 4096), cut),
        _ => None,
    };
    out.map_or(Cow::Borrowed(raw), Cow::Owned)
}

/// The whole decoded body, or None past [`MAX_DECODED`]: a prefix would
/// let two bodies that differ only after it compare equal. A body that
/// fails to decode is None, unless it was `cut` and some of it decoded.
fn read_all(r: impl Read, cut: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = r.take(MAX_DECODED + 1).read_to_end(&mut out);
    if read.is_err() && (!cut || out.is_empty()) {
        return None;
    }
    (out.len() as u64 <= MAX_DECODED).then_some(out)
}

/// Parse a body as JSON when it looks like JSON (a UTF-8 byte-order mark,
/// which some Windows stacks put first, is skipped as RFC 8259 allows).
pub fn parse_json(body: &[u8]) -> Option<Value> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if matches!(first, b'{' | b'[') {
        serde_json::from_slice(body).ok()
    } else {
        None
    }
}

/// The state of one walk over two documents.
struct Walk<'a, 'w> {
    rules: &'a [&'a Rule],
    out: &'w mut Vec<Diff>,
    seen: &'w mut Observed,
    judge: JudgeMode<'w>,
    /// `Unjudged` entries in `out`: not differences, so not counted
    /// against `MAX_DIFFS` (a judge outage on many values must not stop the
    /// walk before a real difference after them), and bounded on their own.
    unjudged: usize,
}

fn compare_bodies(pd: &LazyDoc, sd: &LazyDoc, scores: bool, w: &mut Walk) {
    let (p, s) = (pd.row, sd.row);
    if !scores
        && p.response_body == s.response_body
        && p.response_headers.get("content-encoding") == s.response_headers.get("content-encoding")
    {
        return;
    }
    // A rule on the whole body (`path = "$"`) that ignores it ignores any
    // body: binary, or JSON on one side only.
    let whole = w.rules.iter().rev().find(|r| pattern_matches(r, &[]));
    if whole.is_some_and(|r| r.compare == Compare::Ignore) {
        return;
    }
    let (a, b) = (pd.get(), sd.get());
    match (&a.json, &b.json) {
        (Some(x), Some(y)) => {
            let mut path = Vec::new();
            w.json_diff(x, y, &mut path);
            return;
        }
        (Some(_), None) | (None, Some(_)) => {
            w.out.push(diff(
                "body",
                DiffKind::TypeChanged,
                preview(&decoded_body(p)),
                preview(&decoded_body(s)),
            ));
            return;
        }
        (None, None) => {}
    }
    let (a, b) = (decoded_body(p), decoded_body(s));
    if a == b {
        return;
    }
    if let (Some(r), Ok(x), Ok(y)) = (whole, std::str::from_utf8(&a), std::str::from_utf8(&b)) {
        match r.compare {
            Compare::Ignore => return,
            Compare::RougeL => {
                let score = rouge_l(x, y);
                w.seen.similarities.push((r.path.clone(), "rouge_l", score));
                if score >= r.min.unwrap_or(1.0) {
                    return;
                }
            }
            _ => {}
        }
    }
    w.out
        .push(diff("body", DiffKind::Changed, preview(&a), preview(&b)));
}

fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned()
}

fn pattern_matches(r: &Rule, path: &[Step]) -> bool {
    r.pattern.as_ref().is_some_and(|p| p.matches(path))
}

/// The rule for this exact path: the last matching one in file order wins
/// (like .gitignore), so a specific rule can follow a general one.
fn rule_at<'r>(rules: &[&'r Rule], path: &[Step]) -> Option<&'r Rule> {
    rules
        .iter()
        .rev()
        .find(|r| pattern_matches(r, path))
        .copied()
}

fn short(v: &Value) -> String {
    v.to_string()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Walk<'_, '_> {
    /// Whether the differences listed reached `MAX_DIFFS`.
    fn full(&self) -> bool {
        self.out.len() - self.unjudged >= MAX_DIFFS
    }

    fn json_diff(&mut self, p: &Value, s: &Value, path: &mut Vec<Step>) {
        let rules = self.rules;
        if self.full() {
            return;
        }
        let push = |out: &mut Vec<Diff>, path: &[Step], kind| {
            add(out, diff(&field_name(path), kind, short(p), short(s)));
        };
        if let Some(rule) = rule_at(rules, path) {
            let failed_before = self.seen.judge_failed;
            if let Some(equal) = self.by_rule(rule, p, s, path) {
                if !equal {
                    // A judge outage is not the shadow's fault: its values
                    // are kept apart so the summary can leave them out of
                    // the divergent count without losing them.
                    if self.seen.judge_failed == failed_before {
                        push(self.out, path, DiffKind::Changed);
                    } else if self.unjudged < MAX_DIFFS {
                        let before = self.out.len();
                        push(self.out, path, DiffKind::Unjudged);
                        self.unjudged += self.out.len() - before;
                    }
                }
                return;
            }
        }
        match (p, s) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, va) in a {
                    path.push(Step::Key(k.clone()));
                    match b.get(k) {
                        Some(vb) => self.json_diff(va, vb, path),
                        None if !ignored(rules, path) => {
                            let d = diff(
                                &field_name(path),
                                DiffKind::MissingInShadow,
                                short(va),
                                String::new(),
                            );
                            add(self.out, d);
                        }
                        None => {}
                    }
                    path.pop();
                }
                for (k, vb) in b {
                    if !a.contains_key(k) {
                        path.push(Step::Key(k.clone()));
                        if !ignored(rules, path) {
                            let d = diff(
                                &field_name(path),
                                DiffKind::AddedInShadow,
                                String::new(),
                                short(vb),
                            );
                            add(self.out, d);
                        }
                        path.pop();
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                for i in 0..a.len().max(b.len()) {
                    path.push(Step::Index(i));
                    match (a.get(i), b.get(i)) {
                        (Some(x), Some(y)) => self.json_diff(x, y, path),
                        (Some(x), None) if !ignored(rules, path) => add(
                            self.out,
                            diff(
                                &field_name(path),
                                DiffKind::MissingInShadow,
                                short(x),
                                String::new(),
                            ),
                        ),
                        (None, Some(y)) if !ignored(rules, path) => add(
                            self.out,
                            diff(
                                &field_name(path),
                                DiffKind::AddedInShadow,
                                String::new(),
                                short(y),
                            ),
                        ),
                        _ => {}
                    }
                    path.pop();
                    if self.full() {
                        return;
                    }
                }
            }
            // A value the primary had and the shadow returned as null counts as
            // missing: for a consumer it is the same loss.
            (a, Value::Null) if !a.is_null() => push(self.out, path, DiffKind::MissingInShadow),
            (Value::Number(a), Value::Number(b)) => {
                if !same_number(a, b) {
                    push(self.out, path, DiffKind::Changed);
                }
            }
            (a, b) if type_name(a) != type_name(b) => push(self.out, path, DiffKind::TypeChanged),
            (a, b) => {
                if a != b {
                    push(self.out, path, DiffKind::Changed);
                }
            }
        }
    }
}

fn ignored(rules: &[&Rule], path: &[Step]) -> bool {
    rule_at(rules, path).is_some_and(|r| r.compare == Compare::Ignore)
}

impl Walk<'_, '_> {
    /// Compare under a rule: `Some(equal)`, or `None` when the rule does not
    /// apply to these value types and the default comparison should run.
    fn by_rule(&mut self, rule: &Rule, p: &Value, s: &Value, path: &[Step]) -> Option<bool> {
        match rule.compare {
            Compare::Ignore => Some(true),
            Compare::Exact => Some(json_equal(p, s)),
            Compare::Numeric => {
                let (Value::Number(a), Value::Number(b)) = (p, s) else {
                    return None;
                };
                Some(numbers_close(a, b, rule.abs_tolerance, rule.rel_tolerance))
            }
            Compare::Cosine => {
                let (a, b) = (numbers(p)?, numbers(s)?);
                if a.is_empty() && b.is_empty() {
                    return Some(true); // no embedding on either side agrees
                }
                Some(cosine(&a, &b).is_some_and(|c| c >= rule.min.unwrap_or(1.0)))
            }
            Compare::RougeL => {
                let (a, b) = (p.as_str()?, s.as_str()?);
                let score = rouge_l(a, b);
                self.seen
                    .similarities
                    .push((rule.path.clone(), "rouge_l", score));
                Some(score >= rule.min.unwrap_or(1.0))
            }
            Compare::Unordered => {
                let (a, b) = (p.as_array()?, s.as_array()?);
                let canon = |v: &Vec<Value>| {
                    let mut c: Vec<String> = v.iter().map(canonical).collect();
                    c.sort();
                    c
                };
                Some(canon(a) == canon(b))
            }
            Compare::Judge => self.judged(rule, p, s, path),
        }
    }

    /// A `judge` rule: noted in the first pass, scored in the second. A
    /// failed judgement is never a pass: it is counted and kept as an
    /// `Unjudged` difference.
    fn judged(&mut self, rule: &Rule, p: &Value, s: &Value, path: &[Step]) -> Option<bool> {
        let key = exact_path(path);
        if !matches!(self.judge, JudgeMode::Off) && json_equal(p, s) {
            // Equal values agree fully: a judge call would cost time and
            // money, and its timeout would count as a difference.
            if matches!(self.judge, JudgeMode::Score(_)) {
                self.seen
                    .similarities
                    .push((rule.path.clone(), "judge", 1.0));
            }
            return Some(true);
        }
        match self.judge {
            JudgeMode::Off => Some(json_equal(p, s)),
            JudgeMode::Collect => {
                self.seen
                    .judge_wanted
                    .push((key, rule.path.clone(), p.clone(), s.clone()));
                Some(true)
            }
            JudgeMode::Score(scores) => match scores.get(&key) {
                Some(super::judge::Judgement::Score(x)) => {
                    self.seen
                        .similarities
                        .push((rule.path.clone(), "judge", *x));
                    Some(*x >= rule.min.unwrap_or(1.0))
                }
                _ => {
                    self.seen.judge_failed += 1;
                    Some(false)
                }
            },
        }
    }
}

/// A concrete path with its indexes, as the key of one judged value.
pub fn exact_path(path: &[Step]) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            // A key that is not a plain name is quoted, so `{"a.b": ..}`
            // and `{"a": {"b": ..}}` are two values, not one judgement.
            Step::Key(k)
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                out.push('.');
                out.push_str(k);
            }
            Step::Key(k) => out.push_str(&format!("[{}]", Value::String(k.to_string()))),
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn numbers(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(Value::as_f64).collect()
}

/// Record `d` unless the same field already differs the same way: a
/// field that differs in every element of an array is one entry, so the
/// cap on entries never hides the fields after it.
fn add(out: &mut Vec<Diff>, d: Diff) {
    if !out.iter().any(|e| e.kind == d.kind && e.path == d.path) {
        out.push(d);
    }
}

/// A JSON integer, exactly (serde_json reads one past u64 as a double).
fn int(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// The integer a whole double stands for, exactly (`1.2345678901234568e18`
/// is 1234567890123456768), or None for a fraction or out of range.
fn integral(f: f64) -> Option<i128> {
    (f.fract() == 0.0 && f.abs() < 1.0e38).then_some(f as i128)
}

/// Integers compare exactly (ids above 2^53, and gRPC's negative numbers
/// read as 64-bit varints, are not equal just because their nearest
/// doubles are), against a whole double too (an id a shadow passed through
/// a float is caught); any other pair as doubles, so 1 and 1.0 are the same.
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x == y,
        (Some(x), None) => b.as_f64().and_then(integral) == Some(x),
        (None, Some(y)) => a.as_f64().and_then(integral) == Some(y),
        (None, None) => a.as_f64() == b.as_f64(),
    }
}

/// [`numeric_close`] for JSON numbers; two integers are compared by their
/// exact difference, so a tolerance of zero still tells 2^53 from 2^53+1.
fn numbers_close(a: &serde_json::Number, b: &serde_json::Number, abs: f64, rel: f64) -> bool {
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        let scale = x.unsigned_abs().max(y.unsigned_abs()) as f64;
        return x == y || (x.abs_diff(y) as f64) <= abs.max(rel * scale);
    }
    if same_number(a, b) {
        return true;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => numeric_close(x, y, abs, rel),
        _ => false,
    }
}

/// A value's text with numbers in one form (`1.0` as `1`), for comparing
/// arrays as multisets the way values compare elsewhere.
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64().and_then(integral) {
            Some(i) if n.is_f64() => i.to_string(),
            _ => n.to_string(),
        },
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(o) => {
            let mut items: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            items.sort();
            format!("{{{}}}", items.join(","))
        }
        other => other.to_string(),
    }
}

fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ErrorKind, HeaderList};

    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> ReplayResult {
        let mut h = HeaderList::new();
        for (n, v) in headers {
            h.push(n.as_bytes(), v.as_bytes());
        }
        ReplayResult {
            status: Some(status),
            response_headers: h,
            response_body: body.to_vec(),
            ..Default::default()
        }
    }

    fn json_answer(body: &str) -> ReplayResult {
        answer(
            200,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    fn run(
        config: &str,
        endpoint: &str,
        p: &ReplayResult,
        s: &ReplayResult,
    ) -> Vec<(String, DiffKind)> {
        let c = Config::parse(config).unwrap();
        let mut cmp = Comparer::new(&c);
        cmp.compare(endpoint, p, s)
            .into_iter()
            .map(|d| (d.path, d.kind))
            .collect()
    }

    /// Past the cache of endpoints, each one's rules are still its own, and
    /// the cache stops growing.
    #[test]
    fn endpoints_past_the_cache_get_their_own_rules_uncached() {
        let config =
            "[[rule]]\nendpoint = \"POST /late*\"\npath = \"$.session\"\ncompare = \"ignore\"\n";
        let c = Config::parse(config).unwrap();
        let mut cmp = Comparer::new(&c);
        for i in 0..MAX_CACHED_ENDPOINTS + 10 {
            assert!(cmp.endpoint(&format!("GET /item-{i}")).rules.is_empty());
        }
        assert_eq!(cmp.by_endpoint.len(), MAX_CACHED_ENDPOINTS);
        // Uncached names one after another, and a cached one between them.
        for name in ["POST /late-1", "GET /item-1", "POST /late-2", "GET /x"] {
            let rules = cmp.endpoint(name).rules.len();
            assert_eq!(rules, usize::from(name.starts_with("POST")), "{name}");
        }
        let p = json_answer(r#"{"session":"a","label":"cat"}"#);
        let s = json_answer(r#"{"session":"b","label":"dog"}"#);
        let paths = |ep: &str, cmp: &mut Comparer| -> Vec<String> {
            cmp.compare(ep, &p, &s)
                .into_iter()
                .map(|d| d.path)
                .collect()
        };
        assert_eq!(paths("POST /late-3", &mut cmp), ["$.label"]);
        assert_eq!(paths("GET /y", &mut cmp), ["$.label", "$.session"]);
        assert_eq!(paths("POST /late-3", &mut cmp), ["$.label"]);
        assert_eq!(cmp.by_endpoint.len(), MAX_CACHED_ENDPOINTS);
        assert!(cmp.configs.len() <= MAX_CACHED_ENDPOINTS + 1);
    }

    /// A judge outage on many values must not use up the cap on listed
    /// differences before a real difference that comes after them.
    #[test]
    fn unjudged_values_do_not_fill_the_list_of_differences() {
        let config = "judge_command = [\"true\"]\n[[rule]]\npath = \"$.t.*\"\ncompare = \"judge\"\nmin = 0.5\n";
        let c = Config::parse(config).unwrap();
        let mut cmp = Comparer::new(&c);
        let doc = |prefix: &str, usage: u32| {
            let t: serde_json::Map<String, Value> = (0..60)
                .map(|k| (format!("k{k:02}"), Value::from(format!("{prefix}{k}"))))
                .collect();
            json_answer(&serde_json::json!({"t": t, "usage": usage}).to_string())
        };
        let (p, s) = (doc("a", 1), doc("b", 2));
        let spec = cmp.endpoint("POST /x").doc;
        let (pd, sd) = (LazyDoc::new(&p, spec), LazyDoc::new(&s, spec));
        // No judgement came back for any value.
        let scores = std::collections::HashMap::new();
        let mut seen = Observed::default();
        let diffs = cmp.compare_docs("POST /x", &pd, &sd, JudgeMode::Score(&scores), &mut seen);
        assert_eq!(seen.judge_failed, 60);
        let unjudged = diffs
            .iter()
            .filter(|d| d.kind == DiffKind::Unjudged)
            .count();
        assert_eq!(unjudged, MAX_DIFFS);
        assert!(
            diffs
                .iter()
                .any(|d| d.path == "$.usage" && d.kind == DiffKind::Changed),
            "{diffs:?}"
        );
    }

    #[test]
    fn judged_values_are_keyed_by_unambiguous_paths() {
        let dotted = exact_path(&[Step::Key("a.b".into())]);
        let nested = exact_path(&[Step::Key("a".into()), Step::Key("b".into())]);
        assert_eq!(nested, "$.a.b");
        assert_eq!(dotted, r#"$["a.b"]"#);
        assert_eq!(
            exact_path(&[Step::Key("x\"]".into()), Step::Index(2)]),
            r#"$["x\"]"][2]"#
        );
    }

    /// NOT_FOUND trailers-only (status in the headers) and NOT_FOUND in
    /// trailers after an empty body are the same answer.
    #[test]
    fn a_grpc_status_is_compared_once_wherever_it_came() {
        let grpc = [("content-type", "application/grpc")];
        let mut only = answer(200, &grpc, b"");
        only.response_headers.push(b"grpc-status", b"5");
        only.response_headers
            .push(b"grpc-message", b"item 42 not found");
        let mut full = answer(200, &grpc, b"");
        full.response_trailers.push(b"grpc-status", b"5");
        full.response_trailers.push(b"grpc-message", b"no item 42");
        assert_eq!(run("", "gRPC m.S/Get", &only, &full), vec![]);
        let mut other = full.clone();
        other.response_trailers = HeaderList::new();
        other.response_trailers.push(b"grpc-status", b"14");
        assert_eq!(
            run("", "gRPC m.S/Get", &only, &other),
            vec![("grpc-status".to_string(), DiffKind::Changed)]
        );
    }

    #[test]
    fn json_fields_by_kind() {
        let p = json_answer(r#"{"a":1,"b":{"c":"x","d":[1,2]},"gone":true,"t":1,"n":5}"#);
        let s = json_answer(r#"{"a":1.0,"b":{"c":"y","d":[1]},"new":1,"t":"1","n":null}"#);
        let got = run("", "GET /x", &p, &s);
        assert_eq!(
            got,
            vec![
                ("$.b.c".into(), DiffKind::Changed),
                ("$.b.d[*]".into(), DiffKind::MissingInShadow),
                ("$.gone".into(), DiffKind::MissingInShadow),
                ("$.n".into(), DiffKind::MissingInShadow),
                ("$.t".into(), DiffKind::TypeChanged),
                ("$.new".into(), DiffKind::AddedInShadow),
            ]
        );
    }

    #[test]
    fn integers_compare_exactly_and_unordered_arrays_like_values() {
        // Two ids above 2^53 that share their nearest double.
        let p = json_answer(r#"{"id":1152921504606846976,"n":-1}"#);
        let s = json_answer(r#"{"id":1152921504606846977,"n":-1}"#);
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![("$.id".into(), DiffKind::Changed)]
        );
        // gRPC without descriptors: -1 and -2 as 64-bit varints.
        let p = json_answer(r#"{"1":18446744073709551615}"#);
        let s = json_answer(r#"{"1":18446744073709551614}"#);
        assert_eq!(run("", "GET /x", &p, &s).len(), 1);
        let exact = "[[rule]]\npath = \"$\"\ncompare = \"exact\"\n";
        assert_eq!(run(exact, "GET /x", &p, &s).len(), 1);
        // 1 and 1.0 stay equal, in place and as members of a multiset.
        let cfg = "[[rule]]\npath = \"$.tags\"\ncompare = \"unordered\"\n";
        let p = json_answer(r#"{"tags":[1,2,{"w":3}],"v":1}"#);
        let s = json_answer(r#"{"tags":[{"w":3.0},2.0,1],"v":1.0}"#);
        assert_eq!(run(cfg, "GET /x", &p, &s), vec![]);
    }

    #[test]
    fn an_id_passed_through_a_double_differs_from_the_integer() {
        // 1234567890123456789 printed by a shadow that held it in a double.
        let p = json_answer(r#"{"id":1234567890123456789,"big":10000000000000000,"one":1}"#);
        let s = json_answer(r#"{"id":1.2345678901234568e18,"big":1e16,"one":1.0}"#);
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![("$.id".into(), DiffKind::Changed)]
        );
        // The same holds in a multiset: 1e16 is 10000000000000000.
        let cfg = "[[rule]]\npath = \"$.v\"\ncompare = \"unordered\"\n";
        let p = json_answer(r#"{"v":[10000000000000000,2]}"#);
        let s = json_answer(r#"{"v":[2,1e16]}"#);
        assert_eq!(run(cfg, "GET /x", &p, &s), vec![]);
    }

    #[test]
    fn a_numeric_rule_keeps_integers_exact_within_its_tolerance() {
        let exact = "[[rule]]\npath = \"$.n\"\ncompare = \"numeric\"\n";
        let p = json_answer(r#"{"n":9007199254740993}"#);
        let s = json_answer(r#"{"n":9007199254740992}"#);
        assert_eq!(run(exact, "GET /x", &p, &s).len(), 1);
        let loose = "[[rule]]\npath = \"$.n\"\ncompare = \"numeric\"\nabs_tolerance = 1.0\n";
        assert_eq!(run(loose, "GET /x", &p, &s), vec![]);
        let p = json_answer(r#"{"n":1.5}"#);
        let s = json_answer(r#"{"n":1.75}"#);
        let rel = "[[rule]]\npath = \"$.n\"\ncompare = \"numeric\"\nrel_tolerance = 0.2\n";
        assert_eq!(run(rel, "GET /x", &p, &s), vec![]);
        assert_eq!(run(exact, "GET /x", &p, &s).len(), 1);
    }

    #[test]
    fn two_empty_embeddings_agree() {
        let cfg = "[[rule]]\npath = \"$.e\"\ncompare = \"cosine\"\nmin = 0.99\n";
        let p = json_answer(r#"{"e":[]}"#);
        assert_eq!(run(cfg, "GET /x", &p, &json_answer(r#"{"e":[]}"#)), vec![]);
        assert_eq!(
            run(cfg, "GET /x", &p, &json_answer(r#"{"e":[1.0]}"#)).len(),
            1
        );
    }

    #[test]
    fn every_gzip_member_is_read_and_a_byte_order_mark_is_skipped() {
        use std::io::Write;
        let gz = |parts: &[&str]| -> Vec<u8> {
            let mut out = Vec::new();
            for part in parts {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(part.as_bytes()).unwrap();
                out.extend(e.finish().unwrap());
            }
            out
        };
        let enc = [("content-encoding", "gzip")];
        let p = answer(200, &enc, &gz(&[r#"{"a":1,"#, r#""b":2}"#]));
        let s = answer(200, &enc, &gz(&[r#"{"a":1,"#, r#""b":3}"#]));
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![("$.b".into(), DiffKind::Changed)]
        );
        // Bytes after the last member that are not one: the members read.
        let mut p = answer(200, &enc, &gz(&[r#"{"a":1}"#]));
        let mut s = answer(200, &enc, &gz(&[r#"{"a":2}"#]));
        p.response_body.extend([0, 0, 0, 0]);
        s.response_body.extend([0, 0, 0, 0]);
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![("$.a".into(), DiffKind::Changed)]
        );
        // A JSON body after a BOM is still compared field by field.
        let p = json_answer("\u{feff}{\"a\":1,\"t\":1}");
        let s = json_answer("\u{feff}{\"a\":2,\"t\":1.0}");
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![("$.a".into(), DiffKind::Changed)]
        );
    }

    #[test]
    fn a_cut_compressed_stream_is_compared_as_far_as_it_decodes() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let text: String = (0..400)
            .map(|i| format!("data: {{\"n\":{i}}}\n\n"))
            .collect();
        e.write_all(text.as_bytes()).unwrap();
        let whole = e.finish().unwrap();
        let mut r = answer(
            200,
            &[("content-encoding", "gzip")],
            &whole[..whole.len() / 2],
        );
        // Not known to be cut: a broken body is compared as it came.
        assert_eq!(decoded_body(&r).as_ref(), r.response_body.as_slice());
        r.error_kind = Some(ErrorKind::StreamIdle);
        let got = decoded_body(&r);
        assert!(
            !got.is_empty() && text.as_bytes().starts_with(&got),
            "{}",
            got.len()
        );
    }

    #[test]
    fn ignoring_the_whole_body_ignores_binary_and_one_sided_json() {
        let cfg = "[[rule]]\nendpoint = \"GET /img\"\npath = \"$\"\ncompare = \"ignore\"\n";
        let p = answer(200, &[], &[0xff, 0xd8, 0xff, 0x00]);
        let s = answer(200, &[], &[0xff, 0xd8, 0xfe, 0x01]);
        assert_eq!(run(cfg, "GET /img", &p, &s), vec![]);
        assert_eq!(run(cfg, "GET /other", &p, &s).len(), 1);
        let json = [("content-type", "application/json")];
        let p = answer(200, &json, b"<html>not json</html>");
        let s = answer(200, &json, br#"{"a":1}"#);
        assert_eq!(run(cfg, "GET /img", &p, &s), vec![]);
        assert_eq!(
            run(cfg, "GET /other", &p, &s),
            vec![("body".into(), DiffKind::TypeChanged)]
        );
    }

    #[test]
    fn a_field_differing_in_every_element_does_not_hide_the_fields_after_it() {
        let items = |t: usize| -> String {
            let v: Vec<String> = (0..80).map(|i| format!(r#"{{"ts":{}}}"#, i + t)).collect();
            v.join(",")
        };
        let p = json_answer(&format!(r#"{{"items":[{}],"total":100}}"#, items(0)));
        let s = json_answer(&format!(r#"{{"items":[{}],"total":999}}"#, items(1)));
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![
                ("$.items[*].ts".into(), DiffKind::Changed),
                ("$.total".into(), DiffKind::Changed),
            ]
        );
    }

    #[test]
    fn cut_bodies_of_other_lengths_differ_though_their_prefixes_agree() {
        let mut p = answer(200, &[], b"same prefix");
        let mut s = answer(200, &[], b"same prefix");
        (p.response_body_truncated, s.response_body_truncated) = (true, true);
        (p.response_body_len, s.response_body_len) = (20 << 20, 35 << 20);
        assert_eq!(
            run("", "GET /x", &p, &s),
            vec![("body_length".into(), DiffKind::Changed)]
        );
        s.response_body_len = 20 << 20;
        assert_eq!(run("", "GET /x", &p, &s), vec![]);
    }

    #[test]
    fn rules_ignore_tolerate_and_measure_similarity() {
        let cfg = r#"
[[rule]]
path = "$.trace_id"
compare = "ignore"
[[rule]]
endpoint = "POST /predict"
path = "$.score"
compare = "numeric"
rel_tolerance = 1e-6
[[rule]]
path = "$.embedding"
compare = "cosine"
min = 0.95
[[rule]]
path = "$.text"
compare = "rouge_l"
min = 0.8
[[rule]]
path = "$.tags"
compare = "unordered"
[[rule]]
path = "$.items[*].price"
compare = "numeric"
abs_tolerance = 0.01
"#;
        let p = json_answer(
            r#"{"trace_id":"a","score":0.5,"embedding":[1,0,0],"text":"the cat sat on the mat today","tags":["a","b"],"items":[{"price":1.0}]}"#,
        );
        let close = json_answer(
            r#"{"trace_id":"b","score":0.5000001,"embedding":[1,0.1,0],"text":"the cat sat on the mat today!","tags":["b","a"],"items":[{"price":1.005}]}"#,
        );
        assert_eq!(run(cfg, "POST /predict", &p, &close), vec![]);
        let far = json_answer(
            r#"{"score":0.6,"embedding":[0,1,0],"text":"a dog ran","tags":["a","c"],"items":[{"price":1.5}]}"#,
        );
        let paths: Vec<String> = run(cfg, "POST /predict", &p, &far)
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(
            paths,
            [
                "$.embedding",
                "$.items[*].price",
                "$.score",
                "$.tags",
                "$.text"
            ]
        );
        // The numeric rule is for POST /predict only.
        let other = run(cfg, "POST /other", &p, &close);
        assert_eq!(other, vec![("$.score".into(), DiffKind::Changed)]);
    }

    #[test]
    fn status_errors_headers_and_text() {
        let ok = answer(200, &[("x-v", "1"), ("date", "a")], b"hello");
        let mut err = ok.clone();
        err.error_kind = Some(ErrorKind::Timeout);
        err.status = None;
        assert_eq!(
            run("", "e", &ok, &err),
            vec![("error".into(), DiffKind::Changed)]
        );
        assert_eq!(run("", "e", &err, &err.clone()), vec![]);
        let s500 = answer(500, &[], b"");
        assert_eq!(
            run("", "e", &ok, &s500),
            vec![("status".into(), DiffKind::Changed)]
        );
        let other = answer(
            200,
            &[("x-v", "2"), ("date", "b"), ("x-new", "1")],
            b"hellO",
        );
        assert_eq!(
            run("", "e", &ok, &other),
            vec![
                ("header:x-new".into(), DiffKind::AddedInShadow),
                ("header:x-v".into(), DiffKind::Changed),
                ("body".into(), DiffKind::Changed),
            ]
        );
        let rouge = "[[rule]]\npath = \"$\"\ncompare = \"rouge_l\"\nmin = 0.5\n";
        let a = answer(200, &[], b"the quick brown fox");
        let b = answer(200, &[], b"the quick brown dog");
        assert_eq!(run(rouge, "e", &a, &b), vec![]);
    }

    #[test]
    fn bodies_decoding_past_the_cap_are_compared_whole_not_by_prefix() {
        use std::io::Write;
        // Equal for the first 64 MiB, different after.
        let gzipped = |tail: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                gz.write_all(&zeros).unwrap();
            }
            gz.write_all(tail).unwrap();
            answer(200, &[("content-encoding", "gzip")], &gz.finish().unwrap())
        };
        let (a, b) = (gzipped(b"tail A"), gzipped(b"tail B"));
        assert_eq!(
            run("", "e", &a, &b),
            vec![("body".into(), DiffKind::Changed)]
        );
        assert_eq!(run("", "e", &a, &gzipped(b"tail A")), vec![]);
    }

    #[test]
    fn bodies_are_decoded_before_comparing() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(br#"{"a":1}"#).unwrap();
        let p = answer(
            200,
            &[
                ("content-encoding", "gzip"),
                ("content-type", "application/json"),
            ],
            &gz.finish().unwrap(),
        );
        let s = json_answer(r#"{"a":1}"#);
        assert_eq!(run("", "e", &p, &s), vec![]);
        let s2 = json_answer(r#"{"a":2}"#);
        assert_eq!(
            run("", "e", &p, &s2),
            vec![("$.a".into(), DiffKind::Changed)]
        );
        // deflate (zlib-wrapped) and br decode to the same document.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(br#"{"a":1}"#).unwrap();
        let deflated = answer(
            200,
            &[
                ("content-encoding", "deflate"),
                ("content-type", "application/json"),
            ],
            &z.finish().unwrap(),
        );
        assert_eq!(run("", "e", &deflated, &s), vec![]);
        // `{"a":1}` compressed by Python's brotli.compress.
        let br_bytes = [11, 3, 128, 123, 34, 97, 34, 58, 49, 125, 3];
        let br = answer(
            200,
            &[
                ("content-encoding", "br"),
                ("content-type", "application/json"),
            ],
            &br_bytes,
        );
        assert_eq!(run("", "e", &br, &s), vec![]);
        assert_eq!(
            run("", "e", &br, &s2),
            vec![("$.a".into(), DiffKind::Changed)]
        );
    }
}
