//! The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0, as
//! model servers and exporters serve them on `/metrics`: samples with their
//! labels and values, and the families (with their label names) a target
//! exposes.
//!
//! Written here rather than taken from a crate: the crates that parse the
//! format pull in a full client library and give up on the first bad line;
//! a scrape of a live server must keep every line it can read and count
//! the rest. Series selectors (`--metrics-select`) are parsed here too,
//! their regular expressions by the `regex` crate.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family as exposed: its type (`counter`, `gauge`, `histogram`,
/// `summary`, `untyped`, ...) and the label names its samples carry
/// (`le` and `quantile` included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family {
    pub kind: String,
    pub label_names: BTreeSet<String>,
}

/// What one scrape said.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// By family name (the `# TYPE` name; for a sample without one, its own).
    pub families: BTreeMap<String, Family>,
    /// Lines that could not be read, and the first of them.
    pub bad_lines: u64,
    pub first_bad: Option<String>,
}

/// Parse an exposition. Never fails: unreadable lines are counted.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            read_comment(comment, &mut out);
            continue;
        }
        match sample(line) {
            Some(s) => {
                let family = family_of(&s.name, &out.families);
                let f = out.families.entry(family).or_insert_with(|| Family {
                    kind: "untyped".into(),
                    ..Default::default()
                });
                f.label_names
                    .extend(s.labels.iter().map(|(k, _)| k.clone()));
                out.samples.push(s);
            }
            None => {
                out.bad_lines += 1;
                if out.first_bad.is_none() {
                    out.first_bad = Some(line.chars().take(80).collect());
                }
            }
        }
    }
    out
}

/// `# TYPE name kind`; HELP, UNIT, EOF and free comments are skipped.
fn read_comment(comment: &str, out: &mut Exposition) {
    let mut words = comment.split_whitespace();
    if words.next() != Some("TYPE") {
        return;
    }
    if let (Some(name), Some(kind)) = (words.next(), words.next()) {
        out.families.entry(name.to_string()).or_default().kind = kind.to_ascii_lowercase();
    }
}

/// The family a sample belongs to: the declared family its name extends
/// (`x_total`, `x_bucket`, `x_sum`, `x_count`, `x_created` of family `x`),
/// else its own name.
fn family_of(name: &str, families: &BTreeMap<String, Family>) -> String {
    if families.contains_key(name) {
        return name.to_string();
    }
    for suffix in [
        "_total", "_bucket", "_sum", "_count", "_created", "_gsum", "_gcount", "_info",
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families.contains_key(base) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim_start();
    let end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..end];
    if !name.starts_with(is_name_start) {
        return None;
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp, then (OpenMetrics) an
    // optional exemplar after `#`.
    let rest = rest.split(" # ").next().unwrap_or("");
    let mut fields = rest.split_whitespace();
    let value = number(fields.next()?)?;
    if let Some(ts) = fields.next() {
        number(ts)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="1",b="x\"y"}` -> labels and the text after `}`.
fn label_set(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let end = s.find(|c: char| !is_name_char(c))?;
        let key = &s[..end];
        if key.is_empty() || !key.starts_with(is_name_start) {
            return None;
        }
        s = s[end..].trim_start().strip_prefix('=')?.trim_start();
        let (value, after) = quoted(s.strip_prefix('"')?)?;
        labels.push((key.to_string(), value));
        s = after.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// The text of a quoted label value (after its opening quote) with `\\`,
/// `\"` and `\n` unescaped, and what follows its closing quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT_004: &str = r#"# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.23
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.4576e+07
# TYPE model_predictions_total counter
model_predictions_total{label="cat"} 3.0
model_predictions_total{label="dog",path="a\"b\\c\nd"} 4.0 1700000000000
# TYPE model_request_seconds histogram
model_request_seconds_bucket{le="0.005"} 1.0
model_request_seconds_bucket{le="+Inf"} 7.0
model_request_seconds_sum 0.07
model_request_seconds_count 7.0
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1"} 87
"#;

    #[test]
    fn text_format_samples_labels_and_families() {
        let e = parse(TEXT_004);
        assert_eq!(e.bad_lines, 0, "{:?}", e.first_bad);
        assert_eq!(e.samples.len(), 9);
        assert_eq!(e.samples[0].name, "process_cpu_seconds_total");
        assert_eq!(e.samples[0].value, 1.23);
        assert_eq!(e.samples[1].value, 24_576_000.0);
        assert_eq!(
            e.samples[3].labels,
            [
                ("label".into(), "dog".into()),
                ("path".into(), "a\"b\\c\nd".into())
            ]
        );
        assert_eq!(e.samples[5].labels, [("le".into(), "+Inf".into())]);
        assert_eq!(e.samples[5].value, 7.0);
        assert_eq!(parse("x +Inf\ny NaN\n").samples[0].value, f64::INFINITY);
        let h = &e.families["model_request_seconds"];
        assert_eq!(h.kind, "histogram");
        assert_eq!(h.label_names.iter().collect::<Vec<_>>(), ["le"]);
        let c = &e.families["model_predictions_total"];
        assert_eq!(c.label_names.iter().collect::<Vec<_>>(), ["label", "path"]);
        assert_eq!(e.families["DCGM_FI_DEV_GPU_UTIL"].kind, "untyped");
        assert!(!e.families.contains_key("model_request_seconds_bucket"));
    }

    #[test]
    fn openmetrics_counters_created_and_exemplars() {
        let text = "# TYPE jobs counter\n# UNIT jobs jobs\njobs_total{a=\"1\"} 5 # {trace_id=\"x\"} 1.0 1.5\njobs_created{a=\"1\"} 1.7e9\n# EOF\n";
        let e = parse(text);
        assert_eq!(e.bad_lines, 0, "{:?}", e.first_bad);
        assert_eq!(e.samples.len(), 2);
        assert_eq!(e.samples[0].value, 5.0);
        assert_eq!(e.families.len(), 1);
        assert_eq!(e.families["jobs"].kind, "counter");
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let e = parse("{{{ not a metric\nok_metric 1\nbad{x=1} 2\nname{a=\"unterminated} 3\nx 1 2 3\n\u{0}\u{1}");
        assert_eq!(e.samples.len(), 1);
        assert_eq!(e.bad_lines, 5);
        assert_eq!(e.first_bad.as_deref(), Some("{{{ not a metric"));
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panic(text in "\\PC{0,200}") {
            let e = parse(&text);
            proptest::prop_assert!(e.samples.len() as u64 + e.bad_lines <= text.lines().count() as u64);
        }

        #[test]
        fn written_samples_read_back(
            value in -1e12f64..1e12,
            labels in proptest::collection::vec(("[a-z_][a-z0-9_]{0,6}", "[ -~]{0,10}"), 0..4),
        ) {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let line = format!("m{{{}}} {value}\n", body.join(","));
            let e = parse(&line);
            proptest::prop_assert_eq!(e.bad_lines, 0);
            proptest::prop_assert_eq!(e.samples[0].value, value);
            proptest::prop_assert_eq!(&e.samples[0].labels, &labels);
        }
    }
}

/// A series selector as PromQL writes it, `{pod=~"model-v1-.*",container!="POD"}`
/// (braces optional): every matcher must hold. A label a series lacks
/// matches as the empty string, and a regular expression must match the
/// whole value, as in Prometheus.
#[derive(Clone, Debug)]
pub struct Selector(Vec<Matcher>);

#[derive(Clone, Debug)]
struct Matcher {
    label: String,
    negate: bool,
    test: Test,
}

#[derive(Clone, Debug)]
enum Test {
    Equal(String),
    Regex(regex::Regex),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let inner = text.trim();
        let inner = match inner.strip_prefix('{') {
            Some(rest) => rest
                .strip_suffix('}')
                .ok_or_else(|| format!("{text:?}: a '{{' without its '}}'"))?,
            None => inner,
        };
        let mut matchers = Vec::new();
        let mut rest = inner.trim_start();
        while !rest.is_empty() {
            let (m, after) = Matcher::parse(rest).map_err(|e| format!("{text:?}: {e}"))?;
            matchers.push(m);
            rest = after.trim_start();
            rest = match rest.strip_prefix(',') {
                Some(r) => r.trim_start(),
                None if rest.is_empty() => rest,
                None => return Err(format!("{text:?}: expected ',' before {rest:?}")),
            };
        }
        if matchers.is_empty() {
            return Err(format!("{text:?}: no label matcher"));
        }
        Ok(Self(matchers))
    }

    /// Whether the series `name{labels}` is selected (`__name__` is the
    /// sample's name, as in PromQL).
    pub fn matches(&self, name: &str, labels: &[(String, String)]) -> bool {
        self.0.iter().all(|m| {
            let value = if m.label == "__name__" {
                name
            } else {
                labels
                    .iter()
                    .find(|(k, _)| *k == m.label)
                    .map_or("", |(_, v)| v.as_str())
            };
            let hit = match &m.test {
                Test::Equal(want) => value == want,
                Test::Regex(re) => re.is_match(value),
            };
            hit != m.negate
        })
    }
}

impl Matcher {
    /// One `label op "value"`, and the text after it.
    fn parse(text: &str) -> Result<(Self, &str), String> {
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        let (label, rest) = text.split_at(end);
        if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at {text:?}"));
        }
        let rest = rest.trim_start();
        let (op, rest) = ["=~", "!~", "!=", "="]
            .into_iter()
            .find_map(|op| rest.strip_prefix(op).map(|r| (op, r)))
            .ok_or_else(|| format!("expected =, !=, =~ or !~ after {label}"))?;
        let (value, rest) = rest
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a double-quoted value after {label}{op}"))
            .and_then(promql_string)?;
        let test = if op.contains('~') {
            // `(?s)`: Prometheus's `.` matches a newline too.
            let re = regex::Regex::new(&format!("^(?s:{value})$"))
                .map_err(|e| format!("{label}{op}{value:?}: {e}"))?;
            Test::Regex(re)
        } else {
            Test::Equal(value)
        };
        let m = Matcher {
            label: label.to_string(),
            negate: op.starts_with('!'),
            test,
        };
        Ok((m, rest))
    }
}

/// A PromQL double-quoted string (after its opening quote) and the text
/// after it. Escapes are Go's, as in PromQL; an unknown one is refused, as
/// Prometheus does, rather than read as its letter: `"\d+"` would
/// otherwise select nothing without a word (a regex class is `"\\d+"`).
fn promql_string(text: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &text[i + 1..])),
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                out.push(match e {
                    '\\' | '"' | '\'' => e,
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'v' => '\u{b}',
                    other => {
                        return Err(format!(
                            "unknown escape \\{other} in a quoted value (a regular expression's \\{other} is written \\\\{other})"
                        ))
                    }
                });
            }
            c => out.push(c),
        }
    }
    Err("a quoted value without its closing quote".into())
}

#[cfg(test)]
mod selector_tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_as_promql_does() {
        let s =
            Selector::parse(r#"{pod=~"model-v1-.*", container!="POD",namespace="ml"}"#).unwrap();
        let ours = labels(&[
            ("pod", "model-v1-0"),
            ("container", "server"),
            ("namespace", "ml"),
        ]);
        assert!(s.matches("container_cpu_usage_seconds_total", &ours));
        // Anchored: a regex matches the whole value.
        let other = labels(&[
            ("pod", "x-model-v1-0"),
            ("container", "server"),
            ("namespace", "ml"),
        ]);
        assert!(!s.matches("m", &other));
        let pause = labels(&[
            ("pod", "model-v1-0"),
            ("container", "POD"),
            ("namespace", "ml"),
        ]);
        assert!(!s.matches("m", &pause));
        // A missing label is the empty string: `container!=""` drops it.
        let s = Selector::parse(r#"container!="""#).unwrap();
        assert!(!s.matches("m", &labels(&[("id", "/")])));
        assert!(s.matches("m", &labels(&[("container", "server")])));
        let s = Selector::parse(r#"gpu!~"1|2", name="a\"b""#).unwrap();
        assert!(s.matches("m", &labels(&[("gpu", "0"), ("name", "a\"b")])));
        assert!(!s.matches("m", &labels(&[("gpu", "2"), ("name", "a\"b")])));
        // `__name__` is the sample's name; escapes are PromQL's.
        let s = Selector::parse(r#"__name__=~"container_.*", pod=~"model-v1-\\d+""#).unwrap();
        let pod = labels(&[("pod", "model-v1-12")]);
        assert!(s.matches("container_cpu_usage_seconds_total", &pod));
        assert!(!s.matches("process_cpu_seconds_total", &pod));
        // Prometheus's `.` matches a newline too.
        let s = Selector::parse(r#"note=~"a.b""#).unwrap();
        assert!(s.matches("m", &labels(&[("note", "a\nb")])));
    }

    #[test]
    fn bad_selectors_are_refused_with_the_reason() {
        for (bad, says) in [
            ("", "no label matcher"),
            ("{}", "no label matcher"),
            ("{pod=\"a\"", "without its"),
            ("pod=a", "double-quoted"),
            ("pod==\"a\"", "double-quoted"),
            ("pod=\"a\" container=\"b\"", "expected ','"),
            ("pod=~\"(\"", "pod=~"),
            ("9x=\"a\"", "label name"),
            ("pod~\"a\"", "expected =, !=, =~ or !~"),
            (r#"pod=~"model-v1-\d+""#, "unknown escape \\d"),
            ("pod=\"a", "closing quote"),
        ] {
            let e = Selector::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
