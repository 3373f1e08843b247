//! The gate: one reason per criterion, endpoint and shadow, then the
//! verdict. Rates are judged by their 95% intervals: a criterion passes when
//! the whole interval is on the good side of the threshold, fails when the
//! whole interval is on the bad side, and is inconclusive in between. So a
//! small sample can never pass by luck, and missing data is never a GO.

use crate::report::{Outcome, Reason, Report, ShadowStats, Verdict};

use super::config::Gate;
use super::stats;

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

fn divergence(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Reason {
    let [lo, hi] = s.divergence_ci;
    let outcome = by_interval(lo, hi, g.max_divergence_rate);
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
    let needed = (outcome == Outcome::Inconclusive)
        .then(|| stats::wilson_needed(s.divergent, s.compared, g.max_divergence_rate))
        .flatten();
    let mut r = reason(
        "divergence_rate",
        ep,
        shadow,
        s.divergence_rate,
        g.max_divergence_rate,
        outcome,
        format!(
            "{} of {} exchanges diverge ({}, 95% CI {}–{}), {verb} the limit {}{top}{}",
            s.divergent,
            s.compared,
            pct(s.divergence_rate),
            pct(lo),
            pct(hi),
            pct(g.max_divergence_rate),
            needed_words(needed, outcome, ep)
        ),
    );
    r.needed_exchanges = needed;
    r
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

fn errors(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Reason {
    let e = &s.errors;
    let [lo, hi] = e.difference_ci;
    let mut outcome = by_interval(lo, hi, g.max_error_rate_increase);
    // Per endpoint, only a clear increase counts: small endpoints cannot
    // prove the absence of one, and the overall figure covers them.
    if ep.is_some() && outcome == Outcome::Inconclusive {
        outcome = Outcome::Pass;
    }
    let needed = (outcome == Outcome::Inconclusive)
        .then(|| stats::newcombe_needed(e.primary, e.shadow, s.compared, g.max_error_rate_increase))
        .flatten();
    let mut r = reason(
        "error_rate_increase",
        ep,
        shadow,
        e.difference,
        g.max_error_rate_increase,
        outcome,
        format!(
            "shadow errors {} ({}) vs primary {} ({}): increase {} (95% CI {} to {}), limit {}{}",
            e.shadow,
            pct(e.shadow_rate),
            e.primary,
            pct(e.primary_rate),
            pct(e.difference),
            pct(lo),
            pct(hi),
            pct(g.max_error_rate_increase),
            needed_words(needed, outcome, ep)
        ),
    );
    r.needed_exchanges = needed;
    r
}

fn latency(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Option<Reason> {
    let l = &s.latency_ms;
    let enough =
        l.primary.count >= g.min_latency_samples && l.shadow.count >= g.min_latency_samples;
    if !enough {
        // Per endpoint, too few samples means "not judged" (no reason);
        // overall it means the gate cannot say.
        return ep.is_none().then(|| {
            let short = g
                .min_latency_samples
                .saturating_sub(l.primary.count.min(l.shadow.count));
            let mut r = reason(
                "p99_latency_ratio",
                None,
                shadow,
                l.p99_ratio.unwrap_or(f64::NAN),
                g.max_p99_latency_ratio,
                Outcome::Inconclusive,
                format!(
                    "too few answers for a p99 ({} primary, {} shadow; need {}): about {short} more answered exchanges in all would do",
                    l.primary.count, l.shadow.count, g.min_latency_samples
                ),
            );
            r.needed_exchanges = Some(short);
            r
        });
    }
    let ratio = l.p99_ratio?;
    let slower_ms = l.shadow.p99 - l.primary.p99;
    let outcome = if ratio <= g.max_p99_latency_ratio || slower_ms <= g.p99_latency_slack_ms {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    Some(reason(
        "p99_latency_ratio",
        ep,
        shadow,
        ratio,
        g.max_p99_latency_ratio,
        outcome,
        format!(
            "p99 {:.2} ms shadow vs {:.2} ms primary: ratio {ratio:.2}, limit {:.2}; {}",
            l.shadow.p99,
            l.primary.p99,
            g.max_p99_latency_ratio,
            latency_difference(slower_ms, g.p99_latency_slack_ms)
        ),
    ))
}

/// The p99 difference in words, with the slack under which any ratio passes.
fn latency_difference(slower_ms: f64, slack_ms: f64) -> String {
    if slower_ms >= 0.0 {
        format!("shadow {slower_ms:.2} ms slower (differences up to {slack_ms:.1} ms pass)")
    } else {
        format!("shadow {:.2} ms faster", -slower_ms)
    }
}

/// A ratio gate on LLM timings, with the latency gate's rules: judged only
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
    Some(reason(
        r.criterion,
        ep,
        shadow,
        ratio,
        r.limit,
        outcome,
        format!("{}: ratio {ratio:.2}, limit {:.2}", r.what, r.limit),
    ))
}

fn llm(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Vec<Reason> {
    let Some(l) = &s.llm else {
        return Vec::new();
    };
    let (tp, ts) = (&l.ttft_ms.primary, &l.ttft_ms.shadow);
    let (vp, vs) = (&l.tokens_per_second.primary, &l.tokens_per_second.shadow);
    let (op, os) = (&l.output_tokens.primary, &l.output_tokens.shadow);
    [
        RatioGate {
            criterion: "ttft_p99_ratio",
            counts: (tp.count, ts.count),
            ratio: l.ttft_p99_ratio,
            limit: g.max_ttft_p99_ratio,
            upper: true,
            slack_ok: ts.p99 - tp.p99 <= g.p99_latency_slack_ms,
            what: format!(
                "time to first token p99 {:.1} ms shadow vs {:.1} ms primary",
                ts.p99, tp.p99
            ),
        },
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
                format!(
                    "{} ({}): median similarity to the primary {:.3} vs the primary's own {:.3}; drop {drop:.3} (95% CI {lo:.3} to {hi:.3}), limit {:.3}",
                    x.path, x.metric, x.shadow.p50, noise.p50, g.max_similarity_drop
                ),
            ))
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
                "{} judge calls gave no score (timeouts, crashes or bad answers): those values count as differing, and the gate cannot say GO",
                s.judge_failed
            ),
        )
    })
}

fn drift(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Vec<Reason> {
    let Some(max) = g.max_psi else {
        return Vec::new();
    };
    s.drift
        .iter()
        .map(|d| {
            let outcome = if d.psi <= max {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
            reason(
                "drift_psi",
                ep,
                shadow,
                d.psi,
                max,
                outcome,
                format!("{}: PSI {:.4}, limit {max}", d.path, d.psi),
            )
        })
        .collect()
}

/// Fill in `report.reasons` and `report.verdict`.
pub fn judge(report: &mut Report, g: &Gate) {
    let mut reasons = Vec::new();
    let mut blocking = false; // an INCONCLUSIVE that outranks failures
    let enough = report.exchanges >= g.min_exchanges;
    reasons.push(Reason {
        needed_exchanges: (!enough).then(|| g.min_exchanges - report.exchanges),
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
        reasons.push(divergence(s, None, name, g));
        reasons.push(errors(s, None, name, g));
        reasons.extend(latency(s, None, name, g));
        reasons.extend(llm(s, None, name, g));
        reasons.extend(judge_failures(s, None, name));
        reasons.extend(drift(s, None, name, g));
    }
    for ep in &report.endpoints {
        for (name, s) in &ep.shadows {
            if s.compared < g.min_endpoint_exchanges {
                continue;
            }
            let e = Some(ep.endpoint.as_str());
            reasons.push(divergence(s, e, name, g));
            reasons.push(errors(s, e, name, g));
            reasons.extend(latency(s, e, name, g));
            reasons.extend(llm(s, e, name, g));
            reasons.extend(similarity(s, e, name, g));
            reasons.extend(drift(s, e, name, g));
        }
    }
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
    use super::latency_difference;

    #[test]
    fn latency_difference_says_which_way() {
        assert_eq!(
            latency_difference(6.17, 1.0),
            "shadow 6.17 ms slower (differences up to 1.0 ms pass)"
        );
        assert_eq!(latency_difference(-2.5, 1.0), "shadow 2.50 ms faster");
    }
}
