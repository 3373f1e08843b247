//! The gate: one reason per criterion, endpoint and shadow, then the
//! verdict. Rates are judged by their 95% intervals: a criterion passes when
//! the whole interval is on the good side of the threshold, fails when the
//! whole interval is on the bad side, and is inconclusive in between. So a
//! small sample can never pass by luck, and missing data is never a GO.

use crate::report::{Outcome, Reason, Report, ShadowStats, Verdict};

use super::config::{FamilyWise, Gate};
use super::intervals::{self, Bounds, Method};
use super::latency::LogHist;
use crate::report::PerSide;

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

pub(super) fn reason(
    criterion: &str,
    endpoint: Option<&str>,
    shadow: &str,
    observed: f64,
    threshold: f64,
    outcome: Outcome,
    detail: String,
) -> Reason {
    Reason {
        needed_exchanges: None,
        path: None,
        criterion: criterion.into(),
        endpoint: endpoint.map(str::to_string),
        shadow: Some(shadow.to_string()),
        observed,
        threshold,
        passed: outcome == Outcome::Pass,
        outcome,
        detail,
    }
}

/// Three-way decision from an interval and an upper threshold.
fn by_interval(low: f64, high: f64, threshold: f64) -> Outcome {
    if high < threshold {
        Outcome::Pass
    } else if low > threshold {
        Outcome::Fail
    } else {
        Outcome::Inconclusive
    }
}

/// The interval kind and error level a criterion is judged at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Level {
    pub method: Method,
    pub alpha: f64,
}

impl Level {
    /// "95% CI", "99.58% confidence sequence".
    fn words(self) -> String {
        let pct = format!("{:.3}", (1.0 - self.alpha) * 100.0);
        let pct = pct.trim_end_matches('0').trim_end_matches('.');
        match self.method {
            Method::Fixed => format!("{pct}% CI"),
            Method::Sequential => format!("{pct}% confidence sequence"),
        }
    }
}

/// Criteria decided by an interval, whose level the family-wise
/// correction sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Test {
    Divergence,
    Errors,
    Latency,
    Ttft,
}

/// p99 of each side bracketed, then the ratio and the difference.
struct QuantileBounds {
    shadow: Bounds,
    primary: Bounds,
    ratio: Bounds,
    diff_ms: Bounds,
}

/// Share of a decision's error given to the upper bound of a p99: a lower
/// bound of a p99 is cheap (most answers lie below it), an upper one needs
/// hundreds of answers, so it gets most of the error allowed.
const UPPER_SHARE: f64 = 0.9;

/// Bounds on both sides' p99 at `lv`, with the sample scaled by `f` (f = 1:
/// as read). A pass rests on the shadow's upper bound and the primary's
/// lower one, a fail on the other two; each pair together errs at most
/// alpha/2 (shared 0.9 : 0.1), so the three-way decision errs at most alpha.
fn p99_bounds(h: &PerSide<LogHist>, lv: Level, f: f64) -> Option<QuantileBounds> {
    let half = lv.alpha / 2.0;
    let (low_tail, high_tail) = ((1.0 - UPPER_SHARE) * half, UPPER_SHARE * half);
    let side = |hist: &LogHist| -> Option<Bounds> {
        let n = hist.count() as f64;
        let (lo, hi) = intervals::quantile_ranks(lv.method, n * f, 0.99, low_tail, high_tail);
        // Ranks back from fractions, each rounded the safe way (a lower
        // bound from the rank at or below, an upper from the one at or
        // above), with room for the round trip through f64.
        let low = match lo {
            Some(fr) => hist.rank_bounds_ms((fr * n + 1e-6).floor() as u64)?.0,
            None => 0.0,
        };
        let high = match hi {
            Some(fr) => hist.rank_bounds_ms((fr * n - 1e-6).ceil() as u64)?.1,
            None => f64::INFINITY,
        };
        Some((low, high))
    };
    let (p, s) = (side(&h.primary)?, side(&h.shadow)?);
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    Some(QuantileBounds {
        ratio: (
            if p.1.is_finite() { div(s.0, p.1) } else { 0.0 },
            div(s.1, p.0),
        ),
        diff_ms: (s.0 - p.1, s.1 - p.0),
        shadow: s,
        primary: p,
    })
}

/// Pass when the shadow's p99 is surely within the ratio (or the slack),
/// fail when it is surely beyond both.
fn p99_outcome(b: &QuantileBounds, limit: f64, slack_ms: f64) -> Outcome {
    if b.ratio.1 <= limit || b.diff_ms.1 <= slack_ms {
        Outcome::Pass
    } else if b.ratio.0 > limit && b.diff_ms.0 > slack_ms {
        Outcome::Fail
    } else {
        Outcome::Inconclusive
    }
}

impl Test {
    pub fn criterion(self) -> &'static str {
        match self {
            Test::Divergence => "divergence_rate",
            Test::Errors => "error_rate_increase",
            Test::Latency => "p99_latency_ratio",
            Test::Ttft => "ttft_p99_ratio",
        }
    }

    fn hists(self, s: &ShadowStats) -> &PerSide<LogHist> {
        if self == Test::Ttft {
            &s.hists.ttft
        } else {
            &s.hists.latency
        }
    }

    fn limit(self, g: &Gate) -> f64 {
        match self {
            Test::Divergence => g.max_divergence_rate,
            Test::Errors => g.max_error_rate_increase,
            Test::Latency => g.max_p99_latency_ratio,
            Test::Ttft => g.max_ttft_p99_ratio,
        }
    }

    /// Whether it is judged at all: quantiles need enough answers.
    pub fn applies(self, s: &ShadowStats, g: &Gate) -> bool {
        match self {
            Test::Divergence | Test::Errors => s.compared > 0,
            Test::Latency | Test::Ttft => {
                let h = self.hists(s);
                self.limit(g).is_finite()
                    && h.primary.count() >= g.min_latency_samples
                    && h.shadow.count() >= g.min_latency_samples
            }
        }
    }

    /// The outcome at `lv` with the sample scaled by `f`.
    pub fn outcome(self, s: &ShadowStats, g: &Gate, lv: Level, f: f64) -> Outcome {
        let limit = self.limit(g);
        let n = s.compared as f64 * f;
        match self {
            Test::Divergence => intervals::rate(lv.method, s.divergent as f64 * f, n, lv.alpha)
                .map_or(Outcome::Inconclusive, |(lo, hi)| by_interval(lo, hi, limit)),
            Test::Errors => intervals::error_increase(
                lv.method,
                intervals::error_pairs(s.compared, &s.errors).scaled(f),
                lv.alpha,
            )
            .map_or(Outcome::Inconclusive, |(lo, hi)| by_interval(lo, hi, limit)),
            Test::Latency | Test::Ttft => p99_bounds(self.hists(s), lv, f)
                .map_or(Outcome::Inconclusive, |b| {
                    p99_outcome(&b, limit, g.p99_latency_slack_ms)
                }),
        }
    }

    /// The smallest error level at which it is decided either way.
    pub fn p_value(self, s: &ShadowStats, g: &Gate, method: Method) -> f64 {
        intervals::p_value(|alpha| {
            self.outcome(s, g, Level { method, alpha }, 1.0) != Outcome::Inconclusive
        })
    }

    /// More exchanges (or answers) that would decide it if what was seen
    /// held: the sample grown by the smallest factor that decides.
    fn needed(self, s: &ShadowStats, g: &Gate, lv: Level) -> Option<u64> {
        let base = match self {
            Test::Divergence | Test::Errors => s.compared,
            Test::Latency | Test::Ttft => {
                let h = self.hists(s);
                h.primary.count().min(h.shadow.count())
            }
        } as f64;
        let f = intervals::scale_to_decide(|f| self.outcome(s, g, lv, f) != Outcome::Inconclusive)?;
        Some((base * f - base).ceil().max(1.0) as u64)
    }

    /// The reason, judged at `lv`.
    pub fn reason(
        self,
        s: &ShadowStats,
        ep: Option<&str>,
        shadow: &str,
        g: &Gate,
        lv: Level,
    ) -> Reason {
        let mut outcome = self.outcome(s, g, lv, 1.0);
        let needed = (outcome == Outcome::Inconclusive)
            .then(|| self.needed(s, g, lv))
            .flatten();
        let limit = self.limit(g);
        let (observed, mut detail) = match self {
            Test::Divergence => divergence_words(s, g, lv, outcome),
            Test::Errors => error_words(s, g, lv),
            Test::Latency | Test::Ttft => p99_words(self, s, g, lv),
        };
        // Per endpoint, only a clear error increase counts: small endpoints
        // cannot prove the absence of one, and the overall figure covers them.
        let per_endpoint_errors = self == Test::Errors && ep.is_some();
        if per_endpoint_errors && outcome == Outcome::Inconclusive {
            outcome = Outcome::Pass;
            // Said, so a pass above the limit does not read as a mistake.
            detail.push_str("; not a clear increase on this endpoint alone: judged overall");
        } else {
            detail.push_str(&needed_words(needed, outcome, ep));
        }
        let mut r = reason(
            self.criterion(),
            ep,
            shadow,
            observed,
            limit,
            outcome,
            detail,
        );
        r.needed_exchanges = needed.filter(|_| outcome == Outcome::Inconclusive);
        r
    }
}

fn divergence_words(s: &ShadowStats, g: &Gate, lv: Level, outcome: Outcome) -> (f64, String) {
    let (lo, hi) = intervals::rate(lv.method, s.divergent as f64, s.compared as f64, lv.alpha)
        .unwrap_or((0.0, 1.0));
    let top = s
        .fields
        .first()
        .map(|f| format!("; most divergent: {} ({})", f.path, pct(f.rate)))
        .unwrap_or_default();
    let verb = match outcome {
        Outcome::Pass => "below",
        Outcome::Fail => "above",
        Outcome::Inconclusive => "too few exchanges to tell against",
    };
    let (rate, limit) = apart_at(s.divergence_rate * 100.0, g.max_divergence_rate * 100.0, 2);
    (
        s.divergence_rate,
        format!(
            "{} of {} exchanges diverge ({rate}%, {} {}–{}), {verb} the limit {limit}%{top}",
            s.divergent,
            s.compared,
            lv.words(),
            pct(lo),
            pct(hi),
        ),
    )
}

fn error_words(s: &ShadowStats, g: &Gate, lv: Level) -> (f64, String) {
    let e = &s.errors;
    let (lo, hi) =
        intervals::error_increase(lv.method, intervals::error_pairs(s.compared, e), lv.alpha)
            .unwrap_or((-1.0, 1.0));
    (
        e.difference,
        format!(
            "shadow errors {} ({}) vs primary {} ({}): increase {} ({} {} to {}), limit {}",
            e.shadow,
            pct(e.shadow_rate),
            e.primary,
            pct(e.primary_rate),
            pct(e.difference),
            lv.words(),
            pct(lo),
            pct(hi),
            pct(g.max_error_rate_increase),
        ),
    )
}

fn ms_bound(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "∞".into()
    }
}

fn p99_words(t: Test, s: &ShadowStats, g: &Gate, lv: Level) -> (f64, String) {
    let (ps, ss, ratio, what) = match (t, &s.llm) {
        (Test::Ttft, Some(l)) => (
            l.ttft_ms.primary.p99,
            l.ttft_ms.shadow.p99,
            l.ttft_p99_ratio,
            "time to first token p99",
        ),
        _ => (
            s.latency_ms.primary.p99,
            s.latency_ms.shadow.p99,
            s.latency_ms.p99_ratio,
            "p99",
        ),
    };
    let ratio = ratio.unwrap_or(f64::NAN);
    let limit = t.limit(g);
    let bounds = match p99_bounds(t.hists(s), lv, 1.0) {
        Some(b) => format!(
            " ({}: shadow {}–{} ms, primary {}–{} ms, ratio {:.2}–{})",
            lv.words(),
            ms_bound(b.shadow.0),
            ms_bound(b.shadow.1),
            ms_bound(b.primary.0),
            ms_bound(b.primary.1),
            b.ratio.0,
            if b.ratio.1.is_finite() {
                format!("{:.2}", b.ratio.1)
            } else {
                "∞".into()
            }
        ),
        None => String::new(),
    };
    let (shown, limit) = apart(ratio, limit);
    (
        ratio,
        format!(
            "{what} {ss:.2} ms shadow vs {ps:.2} ms primary: ratio {shown}, limit {limit}; {}{bounds}",
            latency_difference(ss - ps, g.p99_latency_slack_ms)
        ),
    )
}

/// "; about N more exchanges of E would decide" for an undecided criterion.
fn needed_words(needed: Option<u64>, outcome: Outcome, ep: Option<&str>) -> String {
    let scope = ep.map_or_else(|| "in all".to_string(), |e| format!("of {e}"));
    match (outcome, needed) {
        (Outcome::Inconclusive, Some(n)) => {
            format!("; about {n} more exchanges {scope} would decide if the observed rates held")
        }
        (Outcome::Inconclusive, None) => {
            "; at the observed rate no number of exchanges would decide (it sits on the limit)"
                .into()
        }
        _ => String::new(),
    }
}

/// Too few answers for a p99 at all (overall only; per endpoint it is
/// simply not judged).
fn too_few_for_p99(t: Test, s: &ShadowStats, shadow: &str, g: &Gate) -> Option<Reason> {
    let h = t.hists(s);
    let (p, sh) = (h.primary.count(), h.shadow.count());
    if t == Test::Ttft && p == 0 && sh == 0 || t.limit(g).is_infinite() {
        return None;
    }
    let short = g.min_latency_samples.saturating_sub(p.min(sh));
    let observed = match t {
        Test::Ttft => s.llm.as_ref().and_then(|l| l.ttft_p99_ratio),
        _ => s.latency_ms.p99_ratio,
    };
    let mut r = reason(
        t.criterion(),
        None,
        shadow,
        observed.unwrap_or(f64::NAN),
        t.limit(g),
        Outcome::Inconclusive,
        format!(
            "too few answers for a p99 ({p} primary, {sh} shadow; need {}): about {short} more answered exchanges in all would do",
            g.min_latency_samples
        ),
    );
    r.needed_exchanges = Some(short);
    Some(r)
}

/// The p99 difference in words, with the slack under which any ratio passes.
fn latency_difference(slower_ms: f64, slack_ms: f64) -> String {
    if slower_ms >= 0.0 {
        format!("shadow {slower_ms:.2} ms slower (differences up to {slack_ms:.1} ms pass)")
    } else {
        format!("shadow {:.2} ms faster", -slower_ms)
    }
}

/// A ratio gate on LLM figures, with the latency gate's rules: judged only
/// with enough answers on both sides; per endpoint, too few means not judged.
struct RatioGate<'a> {
    criterion: &'a str,
    counts: (u64, u64),
    ratio: Option<f64>,
    limit: f64,
    /// The ratio must stay below the limit (else above it).
    upper: bool,
    /// Passes anyway when the shadow is worse by no more than this (ms).
    slack_ok: bool,
    what: String,
}

fn ratio_gate(r: RatioGate, ep: Option<&str>, shadow: &str, g: &Gate) -> Option<Reason> {
    let (p, s) = r.counts;
    if p == 0 && s == 0 {
        return None;
    }
    if p < g.min_latency_samples || s < g.min_latency_samples {
        return ep.is_none().then(|| {
            reason(
                r.criterion,
                None,
                shadow,
                r.ratio.unwrap_or(f64::NAN),
                r.limit,
                Outcome::Inconclusive,
                format!(
                    "too few LLM answers to judge {} ({p} primary, {s} shadow; need {})",
                    r.criterion, g.min_latency_samples
                ),
            )
        });
    }
    let ratio = r.ratio?;
    let within = if r.upper {
        ratio <= r.limit
    } else {
        ratio >= r.limit
    };
    let outcome = if within || r.slack_ok {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    Some(reason(r.criterion, ep, shadow, ratio, r.limit, outcome, {
        let (ratio, limit) = apart(ratio, r.limit);
        format!("{}: ratio {ratio}, limit {limit}", r.what)
    }))
}

/// A figure and its limit with 2 decimals, or as many more as it takes to
/// tell them apart: "ratio 1.25, limit 1.25" on a failure hid why it failed.
pub(crate) fn apart(v: f64, limit: f64) -> (String, String) {
    apart_at(v, limit, 2)
}

/// [`apart`] from `d0` decimals; the `d0` form when no precision tells
/// them apart.
pub(crate) fn apart_at(v: f64, limit: f64, d0: usize) -> (String, String) {
    let at = |d: usize| (format!("{v:.d$}"), format!("{limit:.d$}"));
    if v != limit {
        for d in d0..=d0 + 7 {
            let out = at(d);
            if out.0 != out.1 {
                return out;
            }
        }
    }
    at(d0)
}

fn llm(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Vec<Reason> {
    let Some(l) = &s.llm else {
        return Vec::new();
    };
    let (vp, vs) = (&l.tokens_per_second.primary, &l.tokens_per_second.shadow);
    let (op, os) = (&l.output_tokens.primary, &l.output_tokens.shadow);
    [
        RatioGate {
            criterion: "tokens_per_second_ratio",
            counts: (vp.count, vs.count),
            ratio: l.tokens_per_second_ratio,
            limit: g.min_tokens_per_second_ratio,
            upper: false,
            slack_ok: false,
            what: format!(
                "median decode speed {:.1} tokens/s shadow vs {:.1} primary",
                vs.p50, vp.p50
            ),
        },
        RatioGate {
            criterion: "output_tokens_ratio",
            counts: (op.count, os.count),
            ratio: l.output_tokens_ratio,
            limit: g.max_output_tokens_ratio,
            upper: true,
            slack_ok: false,
            what: format!(
                "mean output tokens {:.1} shadow vs {:.1} primary",
                os.mean, op.mean
            ),
        },
    ]
    .into_iter()
    .filter_map(|r| ratio_gate(r, ep, shadow, g))
    .collect()
}

/// Text judged against its own noise: fails when the shadow's similarity
/// to the primary is lower than the primary's to itself by more than the
/// limit (the whole 95% interval of the shift above it), passes when the
/// whole interval is below it.
fn similarity(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Vec<Reason> {
    let Some(ep) = ep else {
        return Vec::new(); // per endpoint only: texts of different endpoints do not mix
    };
    s.similarity
        .iter()
        .filter_map(|x| {
            let (drop, [lo, hi]) = (x.drop?, x.drop_ci?);
            let outcome = by_interval(lo, hi, g.max_similarity_drop);
            let noise = x.noise.as_ref()?;
            Some(reason(
                "similarity_drop",
                Some(ep),
                shadow,
                drop,
                g.max_similarity_drop,
                outcome,
                {
                    let (shown, limit) = apart_at(drop, g.max_similarity_drop, 3);
                    format!(
                        "{} ({}): median similarity to the primary {:.3} vs the primary's own {:.3}; drop {shown} (95% CI {lo:.3} to {hi:.3}), limit {limit}",
                        x.path, x.metric, x.shadow.p50, noise.p50
                    )
                },
            ))
            .map(|r| Reason {
                path: Some(x.path.clone()),
                ..r
            })
        })
        .collect()
}

fn judge_failures(s: &ShadowStats, ep: Option<&str>, shadow: &str) -> Option<Reason> {
    (s.judge_failed > 0).then(|| {
        reason(
            "judge_failures",
            ep,
            shadow,
            s.judge_failed as f64,
            0.0,
            Outcome::Inconclusive,
            format!(
                "{} judge calls gave no score (timeouts, crashes, bad answers or refusals; {} on this shadow's pairs, {} on the primary's own noise pairs); {} exchanges hold such values and no other difference beyond noise: whether those agree is unknown, so they are not counted as divergent, and the gate cannot say GO",
                s.judge_failed,
                s.judge_failed.saturating_sub(s.judge_failed_noise),
                s.judge_failed_noise,
                s.unjudged
            ),
        )
    })
}

/// Answers with no primary answer to compare with: what they would have
/// shown is unknown (a shadow's late timeouts, for one), so never a GO.
fn unpaired(counts: &std::collections::BTreeMap<String, u64>) -> Vec<Reason> {
    counts
        .iter()
        .map(|(name, &n)| {
            reason(
                "unpaired_answers",
                None,
                name,
                n as f64,
                0.0,
                Outcome::Inconclusive,
                format!(
                    "{n} answers of {name} have no primary answer in the results to be compared with (written after their exchange was compared, or the primary's row is missing): they are not compared, and the gate cannot say GO"
                ),
            )
        })
        .collect()
}

/// Shadow requests the replay did not carry out: a few (a run stopped with
/// requests in flight) are reported; more than the gate's share means the
/// figures describe only the requests that got through.
fn not_compared(report: &Report, g: &Gate) -> Vec<Reason> {
    report
        .not_compared
        .iter()
        .map(|(name, why)| {
            let n: u64 = why.values().sum();
            let compared = report.overall.get(name).map_or(0, |s| s.compared);
            let rate = n as f64 / (n + compared).max(1) as f64;
            let reasons: Vec<String> = why.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let outcome = if rate <= g.max_not_compared_rate {
                Outcome::Pass
            } else {
                Outcome::Inconclusive
            };
            reason(
                "not_compared",
                None,
                name,
                rate,
                g.max_not_compared_rate,
                outcome,
                format!(
                    "{n} of {} requests to {name} were not carried out ({}){}",
                    n + compared,
                    reasons.join(", "),
                    if outcome == Outcome::Pass {
                        ""
                    } else {
                        ": the figures cover only the requests that got an answer, and the gate cannot say GO"
                    }
                ),
            )
        })
        .collect()
}

/// Values on one side only that fail a drift field (see [`drift`]).
const MIN_ONE_SIDED_VALUES: u64 = 6;

fn drift(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Vec<Reason> {
    let Some(max) = g.max_psi else {
        return Vec::new();
    };
    s.drift
        .iter()
        .map(|d| {
            // PSI compares two distributions; with values on one side only
            // it says 0, yet the field is gone (or of another type) there.
            // Over the same exchanges, all of n values falling on one side
            // by chance has probability 2^(1-n): from 6 values on, under 5%.
            let one_sided = (d.primary_count == 0) != (d.shadow_count == 0)
                && d.primary_count.max(d.shadow_count) >= MIN_ONE_SIDED_VALUES;
            let outcome = if d.psi <= max && !one_sided {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
            let detail = if one_sided {
                format!(
                    "{}: {} {} values from the primary, {} from the shadow: the field is missing, null or of another type on one side",
                    d.path, d.primary_count, d.kind, d.shadow_count
                )
            } else {
                format!("{}: PSI {:.4}, limit {max}", d.path, d.psi)
            };
            let r = reason("drift_psi", ep, shadow, d.psi, max, outcome, detail);
            Reason {
                path: Some(d.path.clone()),
                ..r
            }
        })
        .collect()
}

/// The error allowed: for each overall criterion, and for the family of
/// per-endpoint ones together (unless `family_wise = "none"`).
pub(crate) const ALPHA: f64 = 0.05;

/// Every criterion decided by an interval, in the order reported.
const TESTS: [Test; 4] = [Test::Divergence, Test::Errors, Test::Latency, Test::Ttft];

/// Whether `criterion` is decided by an interval that has a time-uniform
/// form (`replay --until-decided` may stop on it).
pub(crate) fn anytime_valid(criterion: &str) -> bool {
    TESTS.iter().any(|t| t.criterion() == criterion)
}

/// The level each of m judgements is held to, from their p-values.
///
/// Holm: sorted by p-value, the i-th smallest (from 0) is decided at
/// alpha/(m − i) as long as every smaller one was decided; from the first
/// that is not, the rest are held to that step's level (which none of
/// them meets). Bonferroni: all at alpha/m. None: all at alpha.
pub(crate) fn family_levels(p: &[f64], fw: FamilyWise, alpha: f64) -> Vec<f64> {
    let m = p.len();
    match fw {
        FamilyWise::None => vec![alpha; m],
        FamilyWise::Bonferroni => vec![alpha / m.max(1) as f64; m],
        FamilyWise::Holm => {
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
            let mut levels = vec![alpha; m];
            let mut stopped: Option<f64> = None;
            for (step, &i) in order.iter().enumerate() {
                let level = stopped.unwrap_or(alpha / (m - step) as f64);
                levels[i] = level;
                if stopped.is_none() && p[i] > level {
                    stopped = Some(level);
                }
            }
            levels
        }
    }
}

/// Fill in `report.reasons` and `report.verdict`.
pub fn judge(report: &mut Report, g: &Gate) {
    let method = report.method.intervals;
    let overall = Level {
        method,
        alpha: ALPHA,
    };
    let mut reasons = Vec::new();
    let mut blocking = false; // an INCONCLUSIVE that outranks failures
    let enough = report.exchanges >= g.min_exchanges;
    reasons.push(Reason {
        needed_exchanges: (!enough).then(|| g.min_exchanges - report.exchanges),
        path: None,
        criterion: "min_exchanges".into(),
        endpoint: None,
        shadow: None,
        observed: report.exchanges as f64,
        threshold: g.min_exchanges as f64,
        passed: enough,
        outcome: if enough {
            Outcome::Pass
        } else {
            Outcome::Inconclusive
        },
        detail: format!(
            "{} exchanges read, {} needed to decide",
            report.exchanges, g.min_exchanges
        ),
    });
    blocking |= !enough;
    if report.shadow_names.is_empty() {
        blocking = true;
        reasons.push(Reason {
            needed_exchanges: None,
            path: None,
            criterion: "shadow_usable".into(),
            endpoint: None,
            shadow: None,
            observed: 0.0,
            threshold: 1.0,
            passed: false,
            outcome: Outcome::Inconclusive,
            detail: "the results hold no shadow answers to compare".into(),
        });
    }
    for (name, s) in &report.overall {
        let usable = s.compared.saturating_sub(s.errors.shadow);
        let ok = usable > 0;
        blocking |= !ok;
        reasons.push(reason(
            "shadow_usable",
            None,
            name,
            usable as f64,
            1.0,
            if ok {
                Outcome::Pass
            } else {
                Outcome::Inconclusive
            },
            format!(
                "{usable} of {} shadow answers usable (not errors){}",
                s.compared,
                if ok { "" } else { ": the shadow looks down" }
            ),
        ));
        for t in TESTS {
            if t.applies(s, g) {
                reasons.push(t.reason(s, None, name, g, overall));
            } else if matches!(t, Test::Latency | Test::Ttft) {
                reasons.extend(too_few_for_p99(t, s, name, g));
            }
        }
        reasons.extend(llm(s, None, name, g));
        reasons.extend(judge_failures(s, None, name));
        reasons.extend(drift(s, None, name, g));
    }
    // Per-endpoint judgements: first their p-values, then each one's level
    // under the correction chosen.
    let judged = |s: &ShadowStats| s.compared >= g.min_endpoint_exchanges;
    let mut family = Vec::new();
    for (i, ep) in report.endpoints.iter().enumerate() {
        for (name, s) in ep.shadows.iter().filter(|(_, s)| judged(s)) {
            for t in TESTS.into_iter().filter(|t| t.applies(s, g)) {
                family.push(((i, name.as_str(), t), t.p_value(s, g, method)));
            }
        }
    }
    // One family per criterion: its judgements over every endpoint and
    // shadow, so more endpoints cannot make a false decision likelier.
    let mut levels = std::collections::HashMap::new();
    for t in TESTS {
        let members: Vec<_> = family.iter().filter(|((_, _, x), _)| *x == t).collect();
        let p: Vec<f64> = members.iter().map(|(_, p)| *p).collect();
        let alphas = family_levels(&p, g.family_wise, ALPHA);
        levels.extend(members.iter().map(|(k, _)| *k).zip(alphas));
        report.method.family_size = report.method.family_size.max(members.len());
    }
    report.method.alpha = ALPHA;
    for (i, ep) in report.endpoints.iter().enumerate() {
        for (name, s) in ep.shadows.iter().filter(|(_, s)| judged(s)) {
            let e = Some(ep.endpoint.as_str());
            for t in TESTS {
                if let Some(&alpha) = levels.get(&(i, name.as_str(), t)) {
                    reasons.push(t.reason(s, e, name, g, Level { method, alpha }));
                }
            }
            reasons.extend(llm(s, e, name, g));
            reasons.extend(similarity(s, e, name, g));
            reasons.extend(drift(s, e, name, g));
        }
    }
    reasons.extend(unpaired(&report.unpaired_answers));
    reasons.extend(not_compared(report, g));
    reasons.extend(super::resources::reasons(
        &report.resources,
        &report.telemetry,
        &report.shadow_names,
        g,
    ));
    let any = |o: Outcome| reasons.iter().any(|r| r.outcome == o);
    report.verdict = if blocking {
        Verdict::Inconclusive
    } else if any(Outcome::Fail) {
        Verdict::NoGo
    } else if any(Outcome::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Go
    };
    report.reasons = reasons;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_steps_down_and_stops_at_the_first_undecided() {
        let p = [0.001, 0.04, 0.013, 0.5];
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        // Sorted: 0.001 at 0.05/4 (decided), 0.013 at 0.05/3 (decided),
        // 0.04 at 0.05/2 (not: stop), 0.5 held to that same 0.025.
        let holm = family_levels(&p, FamilyWise::Holm, 0.05);
        assert!(
            close(&holm, &[0.0125, 0.025, 0.05 / 3.0, 0.025]),
            "{holm:?}"
        );
        assert!(close(
            &family_levels(&p, FamilyWise::Bonferroni, 0.05),
            &[0.0125; 4]
        ));
        assert!(close(
            &family_levels(&p, FamilyWise::None, 0.05),
            &[0.05; 4]
        ));
        assert!(family_levels(&[], FamilyWise::Holm, 0.05).is_empty());
    }

    #[test]
    fn the_level_is_named_in_words() {
        let fixed = |alpha| Level {
            method: Method::Fixed,
            alpha,
        };
        assert_eq!(fixed(0.05).words(), "95% CI");
        assert_eq!(fixed(0.0125).words(), "98.75% CI");
        assert_eq!(fixed(0.05 / 3.0).words(), "98.333% CI");
        let seq = Level {
            method: Method::Sequential,
            alpha: 0.05,
        };
        assert_eq!(seq.words(), "95% confidence sequence");
    }

    #[test]
    fn a_p99_needs_hundreds_of_answers_to_be_bounded_above() {
        let hist = |n: u64, ms: i64| {
            let mut h = LogHist::default();
            for i in 0..n as i64 {
                h.record_ns((ms * 1_000_000) + i * 1000);
            }
            h
        };
        let lv = Level {
            method: Method::Fixed,
            alpha: 0.05,
        };
        // 300 a side: no upper bound, so neither a pass nor a fail.
        let small = PerSide {
            primary: hist(300, 10),
            shadow: hist(300, 40),
        };
        let b = p99_bounds(&small, lv, 1.0).unwrap();
        assert!(b.shadow.1.is_infinite() && b.primary.1.is_infinite());
        assert_eq!(p99_outcome(&b, 1.5, 1.0), Outcome::Inconclusive);
        // 1000 a side: 4x slower fails, the same passes.
        let slow = PerSide {
            primary: hist(1000, 10),
            shadow: hist(1000, 40),
        };
        let b = p99_bounds(&slow, lv, 1.0).unwrap();
        assert_eq!(p99_outcome(&b, 1.5, 1.0), Outcome::Fail, "{:?}", b.ratio);
        let same = PerSide {
            primary: hist(1000, 10),
            shadow: hist(1000, 10),
        };
        let b = p99_bounds(&same, lv, 1.0).unwrap();
        assert_eq!(p99_outcome(&b, 1.5, 1.0), Outcome::Pass, "{:?}", b.ratio);
        // Grown by the factor the "needed" figure uses, 300 decides too.
        let f = intervals::scale_to_decide(|f| {
            p99_bounds(&small, lv, f).map(|b| p99_outcome(&b, 1.5, 1.0)) == Some(Outcome::Fail)
        })
        .unwrap();
        assert!(f > 1.2 && f < 3.0, "{f}");
    }

    #[test]
    fn an_endpoint_error_increase_not_yet_clear_passes_and_says_why() {
        let g = Gate::default();
        let lv = Level {
            method: Method::Fixed,
            alpha: 0.05,
        };
        let mut s = ShadowStats {
            compared: 100,
            ..ShadowStats::default()
        };
        s.errors.shadow = 3;
        s.errors.shadow_only = 3;
        s.errors.shadow_rate = 0.03;
        s.errors.difference = 0.03;
        // 3% against a 1% limit on 100 exchanges: not clear either way.
        let overall = Test::Errors.reason(&s, None, "v2", &g, lv);
        assert_eq!(overall.outcome, Outcome::Inconclusive, "{}", overall.detail);
        let ep = Test::Errors.reason(&s, Some("GET /x"), "v2", &g, lv);
        assert_eq!(ep.outcome, Outcome::Pass);
        assert!(ep.detail.ends_with("judged overall"), "{}", ep.detail);
        assert!(
            !overall.detail.contains("judged overall"),
            "{}",
            overall.detail
        );
    }

    /// A drift field the shadow no longer gives (or gives as text where
    /// the primary gives numbers): PSI has one side only and says 0.
    #[test]
    fn a_drift_field_with_values_on_one_side_only_fails() {
        let g = Gate {
            max_psi: Some(0.2),
            ..Gate::default()
        };
        let field = |primary_count, shadow_count| crate::report::Drift {
            path: "$.score".into(),
            kind: "numeric".into(),
            primary_count,
            shadow_count,
            psi: 0.0,
            chi_square: None,
            ks: None,
            bins: Vec::new(),
        };
        let s = ShadowStats {
            drift: vec![field(500, 500), field(500, 0), field(0, 500), field(2, 0)],
            ..ShadowStats::default()
        };
        let r = drift(&s, None, "v2", &g);
        let outcomes: Vec<_> = r.iter().map(|r| r.outcome).collect();
        // A rare field seen twice on one side only may be chance.
        assert_eq!(
            outcomes,
            [Outcome::Pass, Outcome::Fail, Outcome::Fail, Outcome::Pass]
        );
        assert!(
            r[1].detail
                .contains("500 numeric values from the primary, 0 from the shadow"),
            "{}",
            r[1].detail
        );
    }

    #[test]
    fn latency_difference_says_which_way() {
        assert_eq!(
            latency_difference(6.17, 1.0),
            "shadow 6.17 ms slower (differences up to 1.0 ms pass)"
        );
        assert_eq!(latency_difference(-2.5, 1.0), "shadow 2.50 ms faster");
    }
}
