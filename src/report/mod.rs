//! The diff report: one serialisable [`Report`] that every output format
//! (terminal, Markdown, JSON, HTML, JUnit) renders. Field names are a public
//! interface documented in `docs/report.md`.

pub mod html;
pub mod junit;
pub mod markdown;
pub mod terminal;

use std::collections::BTreeMap;

use serde::Serialize;

/// The go/no-go decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Verdict {
    Go,
    NoGo,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Go => "GO",
            Verdict::NoGo => "NO-GO",
            Verdict::Inconclusive => "INCONCLUSIVE",
        }
    }

    /// The exit code `shadowctl diff` ends with.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Go => 0,
            Verdict::NoGo => 1,
            Verdict::Inconclusive => 3,
        }
    }
}

/// How one criterion came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// Too little data to decide at 95% confidence.
    Inconclusive,
}

/// One criterion of the gate, judged for one endpoint (or overall) and one shadow.
#[derive(Clone, Debug, Serialize)]
pub struct Reason {
    /// `min_exchanges`, `shadow_usable`, `divergence_rate`, `error_rate_increase`,
    /// `p99_latency_ratio`, `ttft_p99_ratio`, `tokens_per_second_ratio`,
    /// `output_tokens_ratio`, `similarity_drop`, `judge_failures`, `drift_psi`,
    /// and with metrics files `cpu_per_request_ratio`, `memory_ratio`,
    /// `memory_growth`, `gpu_memory_ratio`, `telemetry_parity`.
    pub criterion: String,
    /// `None` means all endpoints together.
    pub endpoint: Option<String>,
    pub shadow: Option<String>,
    /// The value compared with the threshold (for rates: the bound used).
    pub observed: f64,
    pub threshold: f64,
    /// `true` only for [`Outcome::Pass`].
    pub passed: bool,
    pub outcome: Outcome,
    /// One sentence a person can act on.
    pub detail: String,
    /// Undecided criteria: how many more exchanges (of the endpoint, or in
    /// all) would decide it if the observed rates held (docs/diff.md).
    pub needed_exchanges: Option<u64>,
    /// Criteria judged per field (`similarity_drop`, `drift_psi`): the
    /// field's path, so two judgements of one endpoint stay apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyMs {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Counts over log-spaced buckets (edges in `Report::latency_buckets_ms`),
    /// for charts.
    pub histogram: Vec<u64>,
}

/// Latency of primary and shadow on the same requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyPair {
    pub primary: LatencyMs,
    pub shadow: LatencyMs,
    /// shadow p99 / primary p99 (absent when either side has no answers).
    pub p99_ratio: Option<f64>,
}

/// Error counts (transport errors and 5xx answers).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Errors {
    pub primary: u64,
    pub shadow: u64,
    pub primary_rate: f64,
    pub shadow_rate: f64,
    /// shadow_rate - primary_rate, with its 95% interval.
    pub difference: f64,
    pub difference_ci: [f64; 2],
    /// Shadow errors by kind (`timeout`, `reset`, `http_5xx`, ...).
    pub shadow_by_kind: BTreeMap<String, u64>,
    /// Exchanges where only the primary erred, and only the shadow: the
    /// paired counts the time-uniform interval of the increase uses.
    pub primary_only: u64,
    pub shadow_only: u64,
}

/// How often one field (or `status`, `error`, `header:NAME`, `body`) differed.
#[derive(Clone, Debug, Serialize)]
pub struct FieldDivergence {
    pub path: String,
    /// Exchanges where it differed (and counted as divergence).
    pub divergent: u64,
    pub rate: f64,
    /// Counts by kind: `changed`, `missing_in_shadow`, `added_in_shadow`, `type_changed`.
    pub kinds: BTreeMap<String, u64>,
}

/// A field that also differs between two primary observations of the same
/// request: not counted as divergence.
#[derive(Clone, Debug, Serialize)]
pub struct NoiseField {
    pub path: String,
    /// Rate of primary-vs-primary differences.
    pub noise_rate: f64,
    /// Rate of primary-vs-shadow differences (not significantly higher).
    pub shadow_rate: f64,
}

/// A field the primary had and the shadow did not (or had as null).
#[derive(Clone, Debug, Serialize)]
pub struct MissingField {
    pub path: String,
    pub count: u64,
    pub rate: f64,
}

/// Distribution drift of one configured field between primary and shadow.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    pub path: String,
    /// `categorical` or `numeric`.
    pub kind: String,
    pub primary_count: u64,
    pub shadow_count: u64,
    pub psi: f64,
    /// Chi-square (categorical) statistic and p-value.
    pub chi_square: Option<[f64; 2]>,
    /// Kolmogorov-Smirnov (numeric) statistic D and p-value.
    pub ks: Option<[f64; 2]>,
    /// Bin labels with primary and shadow counts, for charts.
    pub bins: Vec<DriftBin>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DriftBin {
    pub label: String,
    pub primary: u64,
    pub shadow: u64,
}

/// Divergence counts split by kind (an exchange can count in several).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ByKind {
    pub status: u64,
    pub body: u64,
    pub header: u64,
    pub error: u64,
}

/// One shadow compared with the primary, on one endpoint or overall.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShadowStats {
    /// Exchanges where both sides could be compared.
    pub compared: u64,
    pub divergent: u64,
    pub divergence_rate: f64,
    /// 95% Wilson interval of the divergence rate.
    pub divergence_ci: [f64; 2],
    pub by_kind: ByKind,
    pub fields: Vec<FieldDivergence>,
    pub noise_fields: Vec<NoiseField>,
    pub missing_fields: Vec<MissingField>,
    pub errors: Errors,
    pub latency_ms: LatencyPair,
    pub drift: Vec<Drift>,
    /// LLM answers on this endpoint (null when there were none).
    pub llm: Option<LlmStats>,
    /// Text compared by similarity (`rouge_l`, `judge` rules), against the
    /// primary's similarity to itself.
    pub similarity: Vec<Similarity>,
    /// Judge calls that gave no score (on this shadow's pairs and the noise
    /// pairs): never a pass, so the gate cannot say GO while any remain.
    pub judge_failed: u64,
    /// Of `judge_failed`, those on the noise pairs: said apart in the
    /// reason, since failures on the shadow's pairs alone may be its doing
    /// (answers that time the judge out).
    #[serde(skip)]
    pub judge_failed_noise: u64,
    /// Exchanges not divergent that hold values the judge gave no score
    /// for: not in `divergent`, which is then a lower
    /// bound (enough for a NO-GO, never for a GO).
    pub unjudged: u64,
    /// The latency and first-token distributions themselves, from which
    /// the gate computes quantile intervals at the level it needs.
    #[serde(skip)]
    pub(crate) hists: QuantileHists,
}

/// Latency distributions kept for the gate (not serialised).
#[derive(Clone, Debug, Default)]
pub(crate) struct QuantileHists {
    pub latency: PerSide<crate::diff::latency::LogHist>,
    pub ttft: PerSide<crate::diff::latency::LogHist>,
}

/// How the gate turned figures into decisions.
#[derive(Clone, Debug, Serialize)]
pub struct GateMethod {
    /// `fixed`: intervals valid at the sample size read (a plain replay);
    /// `sequential`: confidence sequences, valid however often the data
    /// were looked at (results of `replay --until-decided`).
    pub intervals: crate::diff::intervals::Method,
    /// `holm`, `bonferroni` or `none`: how the per-endpoint judgements are
    /// corrected for being many.
    pub family_wise: crate::diff::config::FamilyWise,
    /// Judgements in the largest family: each criterion's per-endpoint
    /// judgements (endpoints × shadows) form one family.
    pub family_size: usize,
    /// The error allowed for the family (and for each overall criterion).
    pub alpha: f64,
}

impl GateMethod {
    /// One line for every report: which intervals, which correction.
    pub fn describe(&self) -> String {
        let intervals = match self.intervals {
            crate::diff::intervals::Method::Fixed => "fixed-sample intervals",
            crate::diff::intervals::Method::Sequential => {
                "confidence sequences (valid at every look: replay --until-decided)"
            }
        };
        let correction = match self.family_wise {
            crate::diff::config::FamilyWise::None => {
                "per-endpoint judgements each at their own level (family_wise = \"none\")".to_string()
            }
            fw => format!(
                "per-endpoint judgements corrected by {} over each criterion's endpoints (largest family {})",
                if fw == crate::diff::config::FamilyWise::Holm { "Holm" } else { "Bonferroni" },
                self.family_size
            ),
        };
        format!(
            "method: {intervals}, error {:.0}% per criterion; {correction}",
            self.alpha * 100.0
        )
    }
}

impl Default for GateMethod {
    fn default() -> Self {
        Self {
            intervals: crate::diff::intervals::Method::Fixed,
            family_wise: Default::default(),
            family_size: 0,
            alpha: 0.05,
        }
    }
}

/// A distribution of per-answer values (tokens per second, tokens,
/// similarity).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Dist {
    pub count: u64,
    pub mean: f64,
    /// The low tail: the least similar answers, the slowest decoders.
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// Counts over the buckets whose upper edges the report names
    /// (`tokens_per_second_buckets`, `similarity_buckets`); empty for token counts.
    pub histogram: Vec<u64>,
}

/// One figure for each side.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerSide<T> {
    pub primary: T,
    pub shadow: T,
}

/// What matters in LLM answers: how soon, how fast, how long, why stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LlmStats {
    /// LLM answers seen on each side, and how many of them were streamed
    /// with event timing.
    pub answers: PerSide<u64>,
    pub streamed: PerSide<u64>,
    /// Time from the request to the first event with generated content.
    pub ttft_ms: PerSide<LatencyMs>,
    /// Gaps between consecutive content events.
    pub inter_token_ms: PerSide<LatencyMs>,
    /// Per answer: output tokens after the first / time from first to last
    /// content event.
    pub tokens_per_second: PerSide<Dist>,
    /// Per answer: the API's usage count, else one per content event.
    pub output_tokens: PerSide<Dist>,
    pub finish_reasons: PerSide<BTreeMap<String, u64>>,
    /// shadow p99 TTFT / primary p99 TTFT.
    pub ttft_p99_ratio: Option<f64>,
    /// shadow median tokens/s / primary median.
    pub tokens_per_second_ratio: Option<f64>,
    /// shadow mean output tokens / primary mean.
    pub output_tokens_ratio: Option<f64>,
}

/// Similarity of the shadow's text to the primary's, beside the primary's
/// to itself (recorded against live), and the shift between the two.
#[derive(Clone, Debug, Serialize)]
pub struct Similarity {
    /// The rule's path (`$.text`) and how it scores (`rouge_l`, `judge`).
    pub path: String,
    pub metric: String,
    pub shadow: Dist,
    /// Absent without a second primary observation.
    pub noise: Option<Dist>,
    /// Hodges-Lehmann estimate of how much lower the shadow's similarity
    /// is than the primary's own (positive: the shadow moved away).
    pub drop: Option<f64>,
    /// 95% interval of `drop` (Mann-Whitney).
    pub drop_ci: Option<[f64; 2]>,
    /// One-sided Mann-Whitney p-value of "the shadow's similarity is lower".
    pub p_value: Option<f64>,
}

/// Everything about one endpoint ("METHOD /path/{id}").
#[derive(Clone, Debug, Serialize)]
pub struct EndpointReport {
    pub endpoint: String,
    /// Exchanges replayed for this endpoint.
    pub count: u64,
    pub shadows: BTreeMap<String, ShadowStats>,
}

/// A slice of traffic whose divergence rate is significantly above the rest.
#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    pub shadow: String,
    /// `endpoint`, `method`, `status_class`, `request_size`.
    pub dimension: String,
    pub value: String,
    pub exchanges: u64,
    pub divergent: u64,
    pub rate: f64,
    pub rest_rate: f64,
    /// One-sided p-value (two-proportion z test), significant after
    /// Benjamini-Hochberg at 5% over all segments tested.
    pub p_value: f64,
}

/// One field-level difference in an example.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub path: String,
    pub kind: String,
    /// Short renderings of the two values (captured content: escape on output).
    pub primary: String,
    pub shadow: String,
}

/// A divergent exchange shown as an example.
#[derive(Clone, Debug, Serialize)]
pub struct Example {
    pub exchange_id: u64,
    pub shadow: String,
    pub endpoint: String,
    pub method: String,
    pub target: String,
    pub primary_status: Option<u16>,
    pub shadow_status: Option<u16>,
    pub differences: Vec<Difference>,
}

/// A mean and 95th percentile over sampling intervals.
#[derive(Clone, Debug, Serialize)]
pub struct MeanP95 {
    pub mean: f64,
    pub p95: f64,
}

/// Memory growth: least-squares slope in MB per hour after the warm-up,
/// with its 95% interval.
#[derive(Clone, Debug, Serialize)]
pub struct Growth {
    pub slope: f64,
    pub ci: [f64; 2],
    /// Samples the slope was fitted to.
    pub samples: u64,
}

/// The points the HTML report draws: CPU cores per interval (at the end of
/// each interval) and memory per reading, in seconds since sampling began.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResourceSeries {
    pub t_s: Vec<f64>,
    pub cpu_cores: Vec<f64>,
    pub memory_t_s: Vec<f64>,
    pub memory_mb: Vec<f64>,
}

/// What one target cost while it was replayed to (from metrics files).
#[derive(Clone, Debug, Serialize)]
pub struct Resources {
    /// `primary`, `shadow`, or `unknown` (a name not in the results).
    pub role: String,
    /// Where CPU and memory came from: `pid`, `cgroup` or `prometheus`.
    pub source: Option<String>,
    pub samples: u64,
    pub scrape_failures: u64,
    pub first_failure: Option<String>,
    /// Cores used per sampling interval.
    pub cpu_cores: Option<MeanP95>,
    /// CPU seconds over the sampled window / answers in it, in ms.
    pub cpu_ms_per_request: Option<f64>,
    pub answers_in_window: u64,
    pub memory_peak_mb: Option<f64>,
    /// `--pid` only: `pss` (shared pages divided among the processes that
    /// map them) or `rss` (where some member's PSS could not be read), or
    /// both over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_measure: Option<String>,
    pub memory_growth_mb_per_hour: Option<Growth>,
    /// GPU utilisation in percent.
    pub gpu_util: Option<MeanP95>,
    pub gpu_memory_peak_mb: Option<f64>,
    /// Requests in the capture's busiest second.
    pub peak_requests_per_s: Option<f64>,
    /// Cores this version would need at that rate.
    pub capacity_cores_at_peak: Option<f64>,
    pub series: ResourceSeries,
}

impl Resources {
    /// A target no metrics file says anything about.
    pub fn unmeasured() -> Self {
        Self {
            role: "unknown".into(),
            source: None,
            samples: 0,
            scrape_failures: 0,
            first_failure: None,
            cpu_cores: None,
            cpu_ms_per_request: None,
            answers_in_window: 0,
            memory_peak_mb: None,
            memory_measure: None,
            memory_growth_mb_per_hour: None,
            gpu_util: None,
            gpu_memory_peak_mb: None,
            peak_requests_per_s: None,
            capacity_cores_at_peak: None,
            series: ResourceSeries::default(),
        }
    }
}

/// Metric families of the primary the shadow does not expose, and new ones.
#[derive(Clone, Debug, Serialize)]
pub struct Telemetry {
    pub missing_in_shadow: Vec<String>,
    pub added_in_shadow: Vec<String>,
    /// `family{label}`: a label the primary's family has and the shadow's lacks.
    pub labels_missing_in_shadow: Vec<String>,
    /// Why the families cannot be compared fairly, when they cannot: a
    /// side's last scrape (after the traffic) failed, and families that
    /// appear only once used (labelled ones) are not in its first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unjudged: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub reasons: Vec<Reason>,
    /// Which intervals and which family-wise correction decided.
    pub method: GateMethod,
    /// Exchanges read (all endpoints), and results files merged.
    pub exchanges: u64,
    pub inputs: Vec<String>,
    /// Shadow names in the order they appear.
    pub shadow_names: Vec<String>,
    /// Where the primary's answers came from: `live`, `recorded`.
    pub primary_source: String,
    /// Whether two primary observations allowed noise estimation.
    pub noise_estimated: bool,
    pub overall: BTreeMap<String, ShadowStats>,
    pub endpoints: Vec<EndpointReport>,
    pub segments: Vec<Segment>,
    pub top_divergences: Vec<Example>,
    /// Why fewer examples than `--top` asked for are listed, when they are.
    pub examples_note: Option<String>,
    /// Advice on the configuration, from what the data shows (a field that
    /// differs in nearly every exchange while no noise could be estimated).
    pub hints: Vec<String>,
    /// Per target (from metrics files): what it cost while replayed to.
    pub resources: BTreeMap<String, Resources>,
    /// Per shadow: metric families of the primary it does not expose.
    pub telemetry: BTreeMap<String, Telemetry>,
    /// Why no resource figures are given, when none are.
    pub resources_note: Option<String>,
    /// Upper edges of the latency histogram buckets, in milliseconds.
    pub latency_buckets_ms: Vec<f64>,
    /// Upper edges of the tokens-per-second histogram buckets.
    pub tokens_per_second_buckets: Vec<f64>,
    /// Upper edges of the similarity histogram buckets (0.1 .. 1.0).
    pub similarity_buckets: Vec<f64>,
    /// The external judge's work, when `compare = "judge"` is used.
    pub judge: Option<crate::diff::judge::JudgeStats>,
    /// Per target: answers whose exchange had no primary answer to compare
    /// with (it came too late, or its primary row is missing). Never a GO.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unpaired_answers: BTreeMap<String, u64>,
    /// Per shadow, by reason: its requests the replay did not carry out
    /// (`not_sent_in_time`: it fell behind; `interrupted`: a stop cut them
    /// short). Above `gate.max_not_compared_rate`, never a GO.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_compared: BTreeMap<String, BTreeMap<String, u64>>,
}

impl ShadowStats {
    /// `, N unjudged` after the divergent count when exchanges that are not
    /// divergent hold values a judge failed to score: during an outage
    /// "0 divergent" alone would read as agreement.
    pub fn unjudged_note(&self, int: impl Fn(u64) -> String) -> String {
        if self.unjudged == 0 {
            return String::new();
        }
        format!(", {} unjudged", int(self.unjudged))
    }
}

/// Cut captured text for display: at most `max` chars, with an ellipsis.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
