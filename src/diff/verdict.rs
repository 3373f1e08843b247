//! The gate: one reason per criterion, endpoint and shadow, then the
//! verdict. Rates are judged by their 95% intervals: a criterion passes when
//! the whole interval is on the good side of the threshold, fails when the
//! whole interval is on the bad side, and is inconclusive in between. So a
//! small sample can never pass by luck, and missing data is never a GO.

use crate::report::{Outcome, Reason, Report, ShadowStats, Verdict};

use super::config::Gate;

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn reason(
    criterion: &str,
    endpoint: Option<&str>,
    shadow: &str,
    observed: f64,
    threshold: f64,
    outcome: Outcome,
    detail: String,
) -> Reason {
    Reason {
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
    reason(
        "divergence_rate",
        ep,
        shadow,
        s.divergence_rate,
        g.max_divergence_rate,
        outcome,
        format!(
            "{} of {} exchanges diverge ({}, 95% CI {}–{}), {verb} the limit {}{top}",
            s.divergent,
            s.compared,
            pct(s.divergence_rate),
            pct(lo),
            pct(hi),
            pct(g.max_divergence_rate)
        ),
    )
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
    reason(
        "error_rate_increase",
        ep,
        shadow,
        e.difference,
        g.max_error_rate_increase,
        outcome,
        format!(
            "shadow errors {} ({}) vs primary {} ({}): increase {} (95% CI {} to {}), limit {}",
            e.shadow,
            pct(e.shadow_rate),
            e.primary,
            pct(e.primary_rate),
            pct(e.difference),
            pct(lo),
            pct(hi),
            pct(g.max_error_rate_increase)
        ),
    )
}

fn latency(s: &ShadowStats, ep: Option<&str>, shadow: &str, g: &Gate) -> Option<Reason> {
    let l = &s.latency_ms;
    let enough =
        l.primary.count >= g.min_latency_samples && l.shadow.count >= g.min_latency_samples;
    if !enough {
        // Per endpoint, too few samples means "not judged" (no reason);
        // overall it means the gate cannot say.
        return ep.is_none().then(|| {
            reason(
                "p99_latency_ratio",
                None,
                shadow,
                l.p99_ratio.unwrap_or(f64::NAN),
                g.max_p99_latency_ratio,
                Outcome::Inconclusive,
                format!(
                    "too few answers for a p99 ({} primary, {} shadow; need {})",
                    l.primary.count, l.shadow.count, g.min_latency_samples
                ),
            )
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
            "p99 {:.2} ms shadow vs {:.2} ms primary: ratio {ratio:.2}, limit {:.2} (and {:.1} ms slower)",
            l.shadow.p99, l.primary.p99, g.max_p99_latency_ratio, g.p99_latency_slack_ms
        ),
    ))
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
            reasons.extend(drift(s, e, name, g));
        }
    }
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
