//! `--config shadow.toml`: the gate thresholds, which headers to ignore,
//! per-field comparison rules, drift fields and endpoint templates.
//! Every option is documented in `docs/config.md`; unknown keys are errors so
//! a typo cannot silently loosen the gate.

use std::path::Path;

use serde::Deserialize;

use super::jsonpath::PathPattern;
pub use crate::endpoint::glob;

/// The whole file. Every section is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gate: Gate,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    #[serde(default, rename = "drift")]
    pub drift: Vec<DriftField>,
    #[serde(default)]
    pub endpoints: Endpoints,
    /// `[[stream]]`: how to assemble event streams of APIs not built in.
    #[serde(default, rename = "stream")]
    pub streams: Vec<StreamSpec>,
    /// The external judge for `compare = "judge"` (see `docs/judge.md`).
    #[serde(default)]
    pub judge_command: Vec<String>,
    /// Judge processes run side by side.
    #[serde(default = "four")]
    pub judge_concurrency: usize,
    /// Seconds one judgement may take.
    #[serde(default = "sixty")]
    pub judge_timeout_s: f64,
    /// `FileDescriptorSet` files (`protoc --descriptor_set_out
    /// --include_imports`) for decoding gRPC messages; relative to the
    /// config file.
    #[serde(default)]
    pub proto_descriptors: Vec<std::path::PathBuf>,
    /// The descriptors, loaded by [`Config::load`].
    #[serde(skip)]
    pub descriptors: Option<std::sync::Arc<super::grpc::Descriptors>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gate: Gate::default(),
            headers: Headers::default(),
            rules: Vec::new(),
            drift: Vec::new(),
            endpoints: Endpoints::default(),
            streams: Vec::new(),
            judge_command: Vec::new(),
            judge_concurrency: four(),
            judge_timeout_s: sixty(),
            proto_descriptors: Vec::new(),
            descriptors: None,
        }
    }
}

fn four() -> usize {
    4
}

fn sixty() -> f64 {
    60.0
}

/// One `[[stream]]`: events of a JSON stream on matching endpoints are
/// assembled by taking the text piece at `text_path` of each event.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    #[serde(default = "star")]
    pub endpoint: String,
    pub text_path: String,
    pub finish_path: Option<String>,
    pub output_tokens_path: Option<String>,
    #[serde(skip)]
    pub patterns: Option<[Option<PathPattern>; 3]>,
}

/// Thresholds of the go/no-go decision.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gate {
    /// GO needs the upper 95% bound of the divergence rate below this.
    pub max_divergence_rate: f64,
    /// Shadow error rate minus primary error rate (upper 95% bound).
    pub max_error_rate_increase: f64,
    /// Shadow p99 / primary p99, per endpoint.
    pub max_p99_latency_ratio: f64,
    /// Fewer exchanges in total: INCONCLUSIVE.
    pub min_exchanges: u64,
    /// A shadow with more of its requests not carried out than this share
    /// (never sent in time, or interrupted by a stop): INCONCLUSIVE, since
    /// the rest may not be like them.
    pub max_not_compared_rate: f64,
    /// Endpoints with fewer exchanges are not judged one by one (they
    /// still count in the overall figures).
    pub min_endpoint_exchanges: u64,
    /// Fewer answers than this on a side: the p99 ratio is not judged.
    pub min_latency_samples: u64,
    /// A p99 ratio above the limit fails only when the shadow's p99 is also
    /// this many milliseconds above the primary's: ratios of sub-millisecond
    /// latencies are scheduling jitter, not regressions.
    pub p99_latency_slack_ms: f64,
    /// Optional ceiling on the population stability index of drift fields.
    pub max_psi: Option<f64>,
    /// LLM streams: shadow p99 time to first token over the primary's.
    pub max_ttft_p99_ratio: f64,
    /// LLM streams: shadow median decode speed (tokens/s) over the primary's.
    pub min_tokens_per_second_ratio: f64,
    /// LLM answers: mean output tokens, shadow over primary (cost guard).
    pub max_output_tokens_ratio: f64,
    /// Text compared by similarity: the most the median similarity to the
    /// primary may drop below the primary's similarity to itself.
    pub max_similarity_drop: f64,
    /// Resources (with metrics files): shadow CPU time per answer over the
    /// primary's.
    pub max_cpu_per_request_ratio: Option<f64>,
    /// Shadow peak memory over the primary's.
    pub max_memory_ratio: Option<f64>,
    /// Fails when the lower bound of the shadow's memory growth interval
    /// (MB per hour) is above this; not judged unless set.
    pub max_memory_growth_mb_per_hour: Option<f64>,
    /// Shadow peak GPU memory over the primary's; not judged unless set.
    pub max_gpu_memory_ratio: Option<f64>,
    /// Fail when the shadow stops exposing a metric family (or label) the
    /// primary exposes; by default parity is only reported.
    pub require_telemetry_parity: bool,
    /// How the per-endpoint judgements are corrected for being many:
    /// `holm` (default), `bonferroni` or `none` (each at 95% on its own).
    pub family_wise: FamilyWise,
}

/// Family-wise error control over the per-endpoint judgements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyWise {
    /// Holm's step-down: the smallest p-value is judged at α/m, the next at
    /// α/(m−1), ...; stops at the first that is not decided.
    #[default]
    Holm,
    /// Every judgement at α/m.
    Bonferroni,
    /// Every judgement at α on its own (the chance of some false decision
    /// grows with the number of endpoints).
    None,
}

impl FamilyWise {
    pub fn as_str(self) -> &'static str {
        match self {
            FamilyWise::Holm => "holm",
            FamilyWise::Bonferroni => "bonferroni",
            FamilyWise::None => "none",
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            max_divergence_rate: 0.01,
            max_error_rate_increase: 0.01,
            max_p99_latency_ratio: 1.5,
            min_exchanges: 200,
            max_not_compared_rate: 0.01,
            min_endpoint_exchanges: 30,
            min_latency_samples: 100,
            p99_latency_slack_ms: 1.0,
            max_psi: None,
            max_ttft_p99_ratio: 1.5,
            min_tokens_per_second_ratio: 0.8,
            max_output_tokens_ratio: 1.25,
            max_similarity_drop: 0.05,
            max_cpu_per_request_ratio: Some(1.3),
            max_memory_ratio: Some(1.5),
            max_memory_growth_mb_per_hour: None,
            max_gpu_memory_ratio: None,
            require_telemetry_parity: false,
            family_wise: FamilyWise::Holm,
        }
    }
}

/// Response headers left out of the comparison.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Headers {
    /// Added to the built-in list (see [`DEFAULT_IGNORED_HEADERS`]).
    pub ignore: Vec<String>,
    /// Set to false to compare the built-in ones too.
    pub ignore_defaults: bool,
    /// Compare only these headers (empty: all but the ignored ones).
    pub only: Vec<String>,
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            ignore: Vec::new(),
            ignore_defaults: true,
            only: Vec::new(),
        }
    }
}

/// Headers that differ between any two servers or any two answers.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "age",
    "expires",
    "last-modified",
    "etag",
    "set-cookie",
    "via",
    "traceparent",
    "tracestate",
    "x-amzn-trace-id",
    "x-runtime",
    "x-response-time",
    // Bodies are compared decoded, so how they were encoded does not matter;
    // likewise gRPC messages (grpc-encoding) and what a server accepts.
    "content-encoding",
    "grpc-encoding",
    "grpc-accept-encoding",
    // The gRPC status is compared on its own, wherever it came: in the
    // headers of a trailers-only answer or in the trailers of a full one.
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

impl Headers {
    /// Whether header `name` (lower case) is compared.
    pub fn compared(&self, name: &str) -> bool {
        if !self.only.is_empty() {
            return self.only.iter().any(|h| h.eq_ignore_ascii_case(name));
        }
        let default = self.ignore_defaults && DEFAULT_IGNORED_HEADERS.contains(&name);
        !default && !self.ignore.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// How the values at a path are compared.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// Not compared at all.
    Ignore,
    /// Equal JSON values (numbers compared as numbers).
    Exact,
    /// Numbers within `abs_tolerance` or `rel_tolerance`.
    Numeric,
    /// Arrays of numbers with cosine similarity at least `min`.
    Cosine,
    /// Texts with ROUGE-L F1 at least `min`.
    RougeL,
    /// Arrays equal as multisets (order ignored).
    Unordered,
    /// Scored 0..1 by the external `judge_command`, at least `min`.
    Judge,
}

/// One `[[rule]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob over endpoint names (`*` matches anything).
    #[serde(default = "star")]
    pub endpoint: String,
    /// JSON path: `$`, `.name`, `["name"]`, `[3]`, `[*]`, `.*`.
    pub path: String,
    pub compare: Compare,
    #[serde(default)]
    pub abs_tolerance: f64,
    #[serde(default)]
    pub rel_tolerance: f64,
    /// Lowest similarity accepted (cosine, rouge_l).
    pub min: Option<f64>,
    #[serde(skip)]
    pub pattern: Option<PathPattern>,
}

fn star() -> String {
    "*".into()
}

/// One `[[drift]]`: a field whose distribution is compared.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftField {
    #[serde(default = "star")]
    pub endpoint: String,
    pub path: String,
    /// Histogram bins for numeric fields.
    #[serde(default = "ten")]
    pub bins: usize,
    #[serde(skip)]
    pub pattern: Option<PathPattern>,
}

fn ten() -> usize {
    10
}

/// `[endpoints]`: name endpoints explicitly.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// Templates like `GET /users/{user}/repos/{repo}`: a request whose
    /// method and path match is reported under the template's name.
    #[serde(default)]
    pub templates: Vec<String>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--config {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let mut c = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: name.clone(),
            message,
        })?;
        if !c.proto_descriptors.is_empty() {
            let dir = path.parent().unwrap_or(Path::new("."));
            let files: Vec<_> = c.proto_descriptors.iter().map(|p| dir.join(p)).collect();
            let d =
                super::grpc::Descriptors::load(&files).map_err(|message| ConfigError::Invalid {
                    path: name,
                    message,
                })?;
            c.descriptors = Some(std::sync::Arc::new(d));
        }
        Ok(c)
    }

    /// Parse config text; the error says which key is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        c.check()?;
        Ok(c)
    }

    fn check(&mut self) -> Result<(), String> {
        let g = &self.gate;
        for (name, v) in [
            ("max_divergence_rate", g.max_divergence_rate),
            ("max_error_rate_increase", g.max_error_rate_increase),
            ("max_not_compared_rate", g.max_not_compared_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("gate.{name} = {v}: must be between 0 and 1"));
            }
        }
        if g.max_divergence_rate == 0.0 {
            // The upper bound of a rate's interval is never 0.
            return Err("gate.max_divergence_rate = 0: no sample could ever show a rate below 0, so the gate could never say GO; for \"no divergence\" give a small rate such as 0.001".into());
        }
        for (name, v) in [
            ("max_p99_latency_ratio", g.max_p99_latency_ratio),
            ("max_ttft_p99_ratio", g.max_ttft_p99_ratio),
            ("min_tokens_per_second_ratio", g.min_tokens_per_second_ratio),
            ("max_output_tokens_ratio", g.max_output_tokens_ratio),
            (
                "max_cpu_per_request_ratio",
                g.max_cpu_per_request_ratio.unwrap_or(1.0),
            ),
            ("max_memory_ratio", g.max_memory_ratio.unwrap_or(1.0)),
            (
                "max_gpu_memory_ratio",
                g.max_gpu_memory_ratio.unwrap_or(1.0),
            ),
        ] {
            // `inf` switches a latency ratio gate off (docs/config.md).
            let off = v == f64::INFINITY
                && matches!(name, "max_p99_latency_ratio" | "max_ttft_p99_ratio");
            if !(off || v.is_finite() && v > 0.0) {
                return Err(format!("gate.{name} = {v}: must be above 0"));
            }
        }
        // Every other threshold is a non-negative number: a negative one is a
        // gate no shadow can pass (PSI is never below 0), NaN one never fails.
        for (name, v) in [
            ("p99_latency_slack_ms", Some(g.p99_latency_slack_ms)),
            ("max_psi", g.max_psi),
            ("max_similarity_drop", Some(g.max_similarity_drop)),
            (
                "max_memory_growth_mb_per_hour",
                g.max_memory_growth_mb_per_hour,
            ),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(format!("gate.{name} = {v}: must be 0 or more"));
            }
        }
        for (i, r) in self.rules.iter_mut().enumerate() {
            let at = format!("rule #{} (path {})", i + 1, r.path);
            r.pattern = Some(PathPattern::parse(&r.path).map_err(|e| format!("{at}: {e}"))?);
            let needs_min = matches!(
                r.compare,
                Compare::Cosine | Compare::RougeL | Compare::Judge
            );
            if r.compare == Compare::Judge && self.judge_command.is_empty() {
                return Err(format!(
                    "{at}: compare = \"judge\" needs judge_command = [\"program\", \"args\"...]"
                ));
            }
            match (needs_min, r.min) {
                (true, None) => return Err(format!("{at}: compare = {:?} needs min", r.compare)),
                // Accepted and ignored, it would read as a rule it is not.
                (false, Some(_)) => {
                    return Err(format!(
                        "{at}: min is for compare = \"cosine\", \"rouge_l\" or \"judge\", not {:?}",
                        r.compare
                    ))
                }
                (true, Some(m)) if !(0.0..=1.0).contains(&m) && r.compare != Compare::Cosine => {
                    return Err(format!("{at}: min must be between 0 and 1"))
                }
                (true, Some(m)) if !(-1.0..=1.0).contains(&m) => {
                    return Err(format!("{at}: min must be between -1 and 1"))
                }
                _ => {}
            }
            let non_negative = |t: f64| t.is_finite() && t >= 0.0;
            if !non_negative(r.abs_tolerance) || !non_negative(r.rel_tolerance) {
                return Err(format!("{at}: tolerances cannot be negative"));
            }
            if r.compare != Compare::Numeric && (r.abs_tolerance > 0.0 || r.rel_tolerance > 0.0) {
                return Err(format!(
                    "{at}: abs_tolerance and rel_tolerance are for compare = \"numeric\", not {:?}",
                    r.compare
                ));
            }
            // Endpoint names are "METHOD /path": a glob without a space
            // (and not starting with `*`) can never match one.
            if !r.endpoint.contains(' ') && !r.endpoint.starts_with('*') {
                return Err(format!(
                    "{at}: endpoint {:?} matches no endpoint name; names look like \"POST /predict\" (or use a glob such as \"* /predict\")",
                    r.endpoint
                ));
            }
        }
        for (i, d) in self.drift.iter_mut().enumerate() {
            d.pattern = Some(
                PathPattern::parse(&d.path)
                    .map_err(|e| format!("drift #{} (path {}): {e}", i + 1, d.path))?,
            );
            if !(2..=100).contains(&d.bins) {
                return Err(format!("drift #{}: bins must be 2..=100", i + 1));
            }
        }
        for (i, st) in self.streams.iter_mut().enumerate() {
            let parse = |p: &Option<String>| -> Result<Option<PathPattern>, String> {
                p.as_deref()
                    .map(PathPattern::parse)
                    .transpose()
                    .map_err(|e| format!("stream #{}: {e}", i + 1))
            };
            st.patterns = Some([
                parse(&Some(st.text_path.clone()))?,
                parse(&st.finish_path)?,
                parse(&st.output_tokens_path)?,
            ]);
        }
        if !(self.judge_timeout_s > 0.0 && self.judge_timeout_s <= 86_400.0) {
            return Err(format!(
                "judge_timeout_s = {}: must be above 0 and at most 86400 (a day)",
                self.judge_timeout_s
            ));
        }
        if !(1..=64).contains(&self.judge_concurrency) {
            return Err(format!(
                "judge_concurrency = {}: must be 1..=64",
                self.judge_concurrency
            ));
        }
        for t in &self.endpoints.templates {
            let well_formed = t.split_once(' ').is_some_and(|(m, p)| {
                !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) && p.starts_with('/')
            });
            if !well_formed {
                return Err(format!(
                    "endpoints.templates: {t:?} must look like \"METHOD /path/{{name}}\""
                ));
            }
        }
        Ok(())
    }
}

/// Map a request to a configured template name, if one matches.
pub fn template_for<'a>(templates: &'a [String], method: &str, path: &str) -> Option<&'a str> {
    // Absolute-form targets (through a forward proxy) match by their path.
    let path = crate::endpoint::path_of(path);
    templates.iter().map(String::as_str).find(|t| {
        let Some((m, tp)) = t.split_once(' ') else {
            return false;
        };
        if !m.eq_ignore_ascii_case(method) {
            return false;
        }
        let (a, b): (Vec<&str>, Vec<&str>) = (tp.split('/').collect(), path.split('/').collect());
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|(x, y)| (x.starts_with('{') && x.ends_with('}') && !y.is_empty()) || x == y)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model API example of docs/config.md.
    const EXAMPLE_CONFIG: &str = include_str!("../../testdata/model-api-shadow.toml");

    #[test]
    fn every_gate_threshold_is_validated_alike() {
        for bad in [
            "max_psi = -1",
            "max_psi = nan",
            "max_psi = inf",
            "p99_latency_slack_ms = -0.5",
            "max_p99_latency_ratio = -inf",
            "max_p99_latency_ratio = nan",
            "max_output_tokens_ratio = inf",
            "family_wise = \"sometimes\"",
            "max_divergence_rate = nan",
            "max_error_rate_increase = -0.1",
        ] {
            let e = Config::parse(&format!("[gate]\n{bad}\n")).err();
            let key = bad.split(' ').next().unwrap();
            assert!(
                e.as_deref().is_some_and(|e| e.contains(key)),
                "{bad}: {e:?}"
            );
        }
        assert!(Config::parse(
            "[[rule]]\npath = '$.a'\ncompare = 'numeric'\nabs_tolerance = nan\n"
        )
        .is_err());
        for good in [
            "max_psi = 0",
            "max_psi = 0.25",
            "p99_latency_slack_ms = 0",
            // The p99 gates can be switched off.
            "max_p99_latency_ratio = inf",
            "max_ttft_p99_ratio = inf",
            "family_wise = \"bonferroni\"",
        ] {
            Config::parse(&format!("[gate]\n{good}\n")).unwrap();
        }
    }

    #[test]
    fn the_model_api_example_parses() {
        let c = Config::parse(EXAMPLE_CONFIG).unwrap();
        assert_eq!(c.gate.max_divergence_rate, 0.05);
        assert_eq!(c.gate.min_exchanges, 200);
        assert_eq!(c.rules.len(), 4);
        assert_eq!(c.rules[1].compare, Compare::Numeric);
        assert_eq!(c.rules[1].rel_tolerance, 1e-6);
        assert_eq!(c.rules[2].min, Some(0.95));
        assert_eq!(c.drift.len(), 2);
        assert!(!c.headers.compared("x-request-id"));
        assert!(!c.headers.compared("content-length"));
        assert!(c.headers.compared("content-type"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("[gate]\nmax_divergence = 0.1\n").unwrap_err();
        assert!(e.contains("max_divergence"), "{e}");
        let e = Config::parse("[[rule]]\npath = \"$.x\"\ncompare = \"cosine\"\n").unwrap_err();
        assert!(e.contains("needs min"), "{e}");
        let e = Config::parse("[[rule]]\npath = \"x[\"\ncompare = \"exact\"\n").unwrap_err();
        assert!(e.contains("rule #1"), "{e}");
        let e = Config::parse("[gate]\nmax_divergence_rate = 5\n").unwrap_err();
        assert!(e.contains("between 0 and 1"), "{e}");
        for (rule, said) in [
            ("compare = \"numeric\"\nmin = 0.9", "min is for"),
            (
                "compare = \"exact\"\nabs_tolerance = 0.1",
                "are for compare = \"numeric\"",
            ),
            (
                "compare = \"exact\"\nendpoint = \"/predict\"",
                "matches no endpoint name",
            ),
        ] {
            let e = Config::parse(&format!("[[rule]]\npath = \"$.x\"\n{rule}\n")).unwrap_err();
            assert!(e.contains(said), "{rule}: {e}");
        }
        Config::parse("[[rule]]\nendpoint = \"*/predict\"\npath = \"$.x\"\ncompare = \"exact\"\n")
            .unwrap();
        for t in ["GET items/{id}", "/items/{id} GET", " /x"] {
            let e = Config::parse(&format!("[endpoints]\ntemplates = [{t:?}]\n")).unwrap_err();
            assert!(e.contains("must look like"), "{t}: {e}");
        }
        let e = Config::parse("[gate]\nmax_divergence_rate = 0\n").unwrap_err();
        assert!(e.contains("could never say GO"), "{e}");
        let e = Config::parse("judge_timeout_s = 1e20\n").unwrap_err();
        assert!(e.contains("at most 86400"), "{e}");
    }

    #[test]
    fn globs_and_templates() {
        assert!(glob("*", "POST /predict"));
        assert!(glob("POST /*", "POST /predict"));
        assert!(!glob("GET /*", "POST /predict"));
        assert!(glob("GET /items/{id}", "GET /items/{id}"));
        assert!(glob("* /items/*", "GET /items/{id}"));
        let t = vec!["GET /repos/{owner}/{repo}".to_string()];
        assert_eq!(
            template_for(&t, "GET", "/repos/rust-lang/cargo?x=1"),
            Some("GET /repos/{owner}/{repo}")
        );
        assert_eq!(template_for(&t, "GET", "/repos/rust-lang"), None);
        assert!(template_for(&t, "GET", "http://api.example/repos/a/b?x=1").is_some());
        assert_eq!(template_for(&t, "POST", "/repos/a/b"), None);
    }
}
