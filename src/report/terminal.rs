//! The summary `shadowctl diff` always prints: verdict first, then the
//! reasons that decided it, then the figures per shadow and endpoint.
//! Colour only on a terminal and without NO_COLOR.

use std::fmt::Write;

use super::markdown::{endpoint_rows, fixed_of, ms_of, p99, reasons_by_severity};
use super::{clip, Outcome, Report, Verdict};

/// Endpoint rows printed per shadow; the reports list them all.
const MAX_ENDPOINTS: usize = 25;

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Captured text may hold escape sequences: never let them reach the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A p99 with its unit, or `n/a` for a side without answers.
fn with_ms(l: &super::LatencyMs) -> String {
    match p99(l) {
        v if l.count == 0 => v,
        v => format!("{v} ms"),
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// `verbose`: list every criterion, passed ones too.
pub fn render(r: &Report, colour: bool, verbose: bool) -> String {
    let p = Paint(colour);
    let mut o = String::new();
    let v = match r.verdict {
        Verdict::Go => p.wrap("1;32", "GO"),
        Verdict::NoGo => p.wrap("1;31", "NO-GO"),
        Verdict::Inconclusive => p.wrap("1;33", "INCONCLUSIVE"),
    };
    let _ = writeln!(o, "verdict: {v}");
    let _ = writeln!(
        o,
        "  {} exchanges from {} file(s); primary: {}; noise {}",
        r.exchanges,
        r.inputs.len(),
        r.primary_source,
        if r.noise_estimated {
            "estimated from two primary observations"
        } else {
            "not estimated (one primary observation)"
        }
    );
    let _ = writeln!(o, "  {}", r.method.describe());
    for hint in &r.hints {
        let _ = writeln!(o, "  hint: {}", clean(hint));
    }
    // Failures first, as in the other reports: a cap on lines must never
    // hide the failure that decided a NO-GO behind undecided ones.
    let deciding: Vec<_> = reasons_by_severity(r)
        .into_iter()
        .filter(|x| verbose || x.outcome != Outcome::Pass)
        .collect();
    let _ = writeln!(
        o,
        "\nreasons ({} criteria checked, {} not passed):",
        r.reasons.len(),
        r.reasons
            .iter()
            .filter(|x| x.outcome != Outcome::Pass)
            .count()
    );
    let shown = if verbose { usize::MAX } else { 20 };
    for x in deciding.iter().take(shown) {
        let mark = match x.outcome {
            Outcome::Fail => p.wrap("31", "FAIL"),
            Outcome::Inconclusive => p.wrap("33", "UNDECIDED"),
            Outcome::Pass => p.wrap("32", "pass"),
        };
        let _ = writeln!(
            o,
            "  {mark} {} [{}] {}: {}",
            x.criterion,
            clean(x.endpoint.as_deref().unwrap_or("all")),
            clean(x.shadow.as_deref().unwrap_or("-")),
            clean(&x.detail)
        );
    }
    if deciding.len() > shown {
        let _ = writeln!(
            o,
            "  … {} more in the reports (or -v)",
            deciding.len() - shown
        );
    }
    for (name, s) in &r.overall {
        let _ = writeln!(
            o,
            "\nshadow {}: {} compared, {} divergent{} ({}, CI {}–{}); errors {} vs {} primary; p99 {} shadow vs {} primary",
            clean(name),
            s.compared,
            s.divergent,
            s.unjudged_note(|n| n.to_string()),
            pct(s.divergence_rate),
            pct(s.divergence_ci[0]),
            pct(s.divergence_ci[1]),
            s.errors.shadow,
            s.errors.primary,
            with_ms(&s.latency_ms.shadow),
            with_ms(&s.latency_ms.primary)
        );
        let _ = writeln!(
            o,
            "  {:<36} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "endpoint", "compared", "diverge", "err+", "p99 prim", "p99 shad"
        );
        // Most divergent first, as in the other reports, so the cap keeps
        // the endpoints worth looking at.
        let rows = endpoint_rows(r, name);
        for (ep, e) in rows.iter().take(MAX_ENDPOINTS) {
            let _ = writeln!(
                o,
                "  {:<36} {:>8} {:>9} {:>9} {:>9} {:>9}",
                clip(&clean(&ep.endpoint), 35),
                e.compared,
                pct(e.divergence_rate),
                pct(e.errors.difference),
                p99(&e.latency_ms.primary),
                p99(&e.latency_ms.shadow)
            );
        }
        if rows.len() > MAX_ENDPOINTS {
            let _ = writeln!(
                o,
                "  … {} more endpoints in the reports",
                rows.len() - MAX_ENDPOINTS
            );
        }
        for (ep, e) in rows.iter().take(MAX_ENDPOINTS) {
            let endpoint = clip(&clean(&ep.endpoint), 35);
            if let Some(l) = &e.llm {
                let _ = writeln!(
                    o,
                    "  llm {endpoint} (primary / shadow): TTFT p50 {} / {} ms, p99 {} / {} ms; tokens/s p50 {} / {}; output tokens {} / {}; stop reasons {} / {}",
                    ms_of(&l.ttft_ms.primary, l.ttft_ms.primary.p50),
                    ms_of(&l.ttft_ms.shadow, l.ttft_ms.shadow.p50),
                    ms_of(&l.ttft_ms.primary, l.ttft_ms.primary.p99),
                    ms_of(&l.ttft_ms.shadow, l.ttft_ms.shadow.p99),
                    fixed_of(&l.tokens_per_second.primary, l.tokens_per_second.primary.p50, 1),
                    fixed_of(&l.tokens_per_second.shadow, l.tokens_per_second.shadow.p50, 1),
                    fixed_of(&l.output_tokens.primary, l.output_tokens.primary.mean, 1),
                    fixed_of(&l.output_tokens.shadow, l.output_tokens.shadow.mean, 1),
                    clean(&super::markdown::finish_reasons(&l.finish_reasons.primary)),
                    clean(&super::markdown::finish_reasons(&l.finish_reasons.shadow)),
                );
            }
            for x in &e.similarity {
                let own = x
                    .noise
                    .as_ref()
                    .map_or("n/a".to_string(), |n| format!("{:.3}", n.p50));
                let _ = writeln!(
                    o,
                    "  text {endpoint} {} ({}): median similarity {:.3} vs the primary's own {own}; drop {}",
                    clip(&clean(&x.path), 40),
                    x.metric,
                    x.shadow.p50,
                    super::markdown::similarity_drop(x),
                );
            }
        }
        for f in s.fields.iter().take(5) {
            let _ = writeln!(
                o,
                "  field {} differs in {} ({})",
                clip(&clean(&f.path), 60),
                f.divergent,
                pct(f.rate)
            );
        }
        for f in s.noise_fields.iter().take(5) {
            let _ = writeln!(
                o,
                "  noise {} (primary vs primary {}, shadow {}) not counted",
                clip(&clean(&f.path), 60),
                pct(f.noise_rate),
                pct(f.shadow_rate)
            );
        }
        for d in s.drift.iter().filter(|d| notable_drift(d)).take(5) {
            let _ = writeln!(
                o,
                "  drift {} ({}): PSI {:.3}, {}",
                clip(&clean(&d.path), 60),
                d.kind,
                d.psi,
                super::markdown::drift_test(d.chi_square, d.ks)
            );
        }
        for m in s.missing_fields.iter().take(5) {
            let _ = writeln!(
                o,
                "  missing in shadow: {} ({})",
                clip(&clean(&m.path), 60),
                pct(m.rate)
            );
        }
    }
    for seg in r.segments.iter().take(5) {
        let _ = writeln!(
            o,
            "  concentrated: {} {}={} diverges {} vs {} elsewhere (p={:.2e})",
            clean(&seg.shadow),
            seg.dimension,
            clip(&clean(&seg.value), 40),
            pct(seg.rate),
            pct(seg.rest_rate),
            seg.p_value
        );
    }
    resources(&mut o, r);
    if let Some(j) = &r.judge {
        let _ = writeln!(o, "\n{}", super::markdown::judge_line(j));
    }
    if let Some(ex) = r.top_divergences.first() {
        let _ = writeln!(
            o,
            "\nexample: exchange {} {} {} ({}):",
            ex.exchange_id,
            clean(&ex.method),
            clip(&clean(&ex.target), 60),
            clean(&ex.shadow)
        );
        for d in ex.differences.iter().take(5) {
            let _ = writeln!(
                o,
                "  {} {}: {} -> {}",
                clip(&clean(&d.path), 50),
                d.kind,
                clip(&clean(&d.primary), 40),
                clip(&clean(&d.shadow), 40)
            );
        }
    }
    o
}

/// A drift worth a line: its test is significant at 5%, or its PSI is at
/// least 0.1 (the usual "moderate shift" mark).
fn notable_drift(d: &crate::report::Drift) -> bool {
    let p = d.chi_square.or(d.ks).map_or(1.0, |t| t[1]);
    p < 0.05 || d.psi >= 0.1
}

/// One line per sampled target, then telemetry parity per shadow.
fn resources(o: &mut String, r: &Report) {
    if r.resources.is_empty() {
        if let Some(note) = &r.resources_note {
            let _ = writeln!(o, "\n{note}");
        }
        return;
    }
    let _ = writeln!(o, "\nresources:");
    for (name, x) in &r.resources {
        let mut parts = Vec::new();
        if let Some(c) = &x.cpu_cores {
            parts.push(format!("CPU {:.3} cores (p95 {:.3})", c.mean, c.p95));
        }
        if let Some(ms) = x.cpu_ms_per_request {
            parts.push(format!("{ms:.3} ms CPU per answer"));
        }
        if let Some(m) = x.memory_peak_mb {
            parts.push(format!("memory peak {m:.1} MB"));
        }
        if let Some(g) = &x.memory_growth_mb_per_hour {
            parts.push(format!(
                "growth {:.1} MB/h ({:.1} to {:.1})",
                g.slope, g.ci[0], g.ci[1]
            ));
        }
        if let Some(g) = &x.gpu_util {
            parts.push(format!("GPU {:.1}% (p95 {:.1}%)", g.mean, g.p95));
        }
        if let Some(g) = x.gpu_memory_peak_mb {
            parts.push(format!("GPU memory peak {g:.0} MB"));
        }
        if let (Some(c), Some(p)) = (x.capacity_cores_at_peak, x.peak_requests_per_s) {
            parts.push(format!("{c:.2} cores at the capture's peak {p:.0}/s"));
        }
        if x.scrape_failures > 0 {
            parts.push(format!(
                "{} failed scrapes ({})",
                x.scrape_failures,
                clip(&clean(x.first_failure.as_deref().unwrap_or("")), 60)
            ));
        }
        let _ = writeln!(
            o,
            "  {} ({}, {}): {}",
            clean(name),
            x.role,
            x.source.as_deref().unwrap_or("no samples"),
            if parts.is_empty() {
                "nothing measured".to_string()
            } else {
                parts.join("; ")
            }
        );
    }
    for (t, tel) in &r.telemetry {
        let mut lost: Vec<&str> = tel.missing_in_shadow.iter().map(String::as_str).collect();
        lost.extend(tel.labels_missing_in_shadow.iter().map(String::as_str));
        let _ = writeln!(
            o,
            "  telemetry {}: {}{}",
            clean(t),
            if lost.is_empty() {
                "nothing of the primary's missing".to_string()
            } else {
                format!("missing {}", clean(&lost.join(", ")))
            },
            if tel.added_in_shadow.is_empty() {
                String::new()
            } else {
                format!("; new {}", clean(&tel.added_in_shadow.join(", ")))
            }
        );
    }
}
