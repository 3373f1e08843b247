//! HTML rendering of a [`Report`]: one self-contained file (inline CSS, inline
//! SVG charts, no scripts, no external resources) that can be archived as a
//! CI artifact and opened offline, years later, without anything breaking.
//!
//! Every string from traffic or configuration goes through [`esc`], in
//! element text, attribute values and SVG `<text>`/`<title>` alike, so a
//! captured value can never become markup.

use std::fmt::{self, Write};

use super::markdown::{
    drift_test, endpoint_rows, finish_reasons, fixed, fixed_of, int, judge_line, ms, ms_of, num,
    observed_and_threshold, outcome_word, p99, p_value, pct, pct_ci, ratio, reasons_by_severity,
    shadow_names, similarity_drop, status,
};
use super::{clip, Drift, EndpointReport, Example, LatencyPair, Report, ShadowStats, Verdict};

/// Primary is always blue and shadow always orange, in every chart and legend.
const PRIMARY: &str = "#1f6feb";
const SHADOW: &str = "#e8710a";
const LIMIT: &str = "#cf222e";
const GRID: &str = "#d8dee4";

const MAX_ENDPOINT_ROWS: usize = 200;
const MAX_BAR_ROWS: usize = 30;
const MAX_ENDPOINT_CHARTS: usize = 50;
const MAX_DRIFT_BINS: usize = 30;
const MAX_EXAMPLES: usize = 20;
const MAX_DIFFS_PER_EXAMPLE: usize = 30;
const MAX_VALUE_CHARS: usize = 300;
/// Examples shown open; the rest start collapsed.
const OPEN_EXAMPLES: usize = 3;

const CSS: &str = "\
:root{color-scheme:light}
body{margin:0;background:#fff;color:#1f2328;line-height:1.45;\
font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:8px 24px 48px}
h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
h3{margin:24px 0 8px}
.banner{border-radius:8px;padding:16px 20px;margin:16px 0}
.banner h1{margin:0 0 4px;font-size:1.7em}
.banner p{margin:0}
.v-go{background:#1a7f37;color:#fff}
.v-nogo{background:#cf222e;color:#fff}
.v-inconclusive{background:#f2c744;color:#3b2300}
table{border-collapse:collapse;width:100%;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;\
word-break:break-all}
.pass{color:#1a7f37}
.fail{color:#cf222e;font-weight:600}
.inconclusive{color:#9a6700;font-weight:600}
.muted{color:#59636e}
details{margin:6px 0}
summary{cursor:pointer}
figure{margin:8px 0 20px}
figcaption{font-size:.9em;color:#59636e}
svg{display:block;max-width:100%;height:auto;font-size:11px}
svg text{fill:#1f2328}
";

/// Render the report as one HTML5 document.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // Writing into a String cannot fail; the Result only exists for `?`.
    let _ = page(&mut out, r);
    out
}

fn page(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "<!DOCTYPE html>")?;
    writeln!(o, r#"<html lang="en"><head><meta charset="utf-8">"#)?;
    writeln!(
        o,
        r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#
    )?;
    writeln!(o, "<title>shadowctl diff: {}</title>", r.verdict.as_str())?;
    writeln!(o, "<style>\n{CSS}</style></head><body><main>")?;
    banner(o, r)?;
    writeln!(o, "<p>{}</p>", esc(&r.method.describe()))?;
    reasons(o, r)?;
    resources(o, r)?;
    for name in shadow_names(r) {
        shadow_section(o, r, name)?;
    }
    writeln!(o, "</main></body></html>")
}

/// Escape text for HTML element content and quoted attribute values (single
/// or double). C0 control characters other than tab/newline/CR become U+FFFD
/// because HTML does not allow them either.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A captured value in `<code>`, cut for display, the full text in a tooltip.
fn code(s: &str, max: usize) -> String {
    let short = clip(s, max);
    if short.len() == s.len() {
        format!("<code>{}</code>", esc(s))
    } else {
        format!(r#"<code title="{}">{}</code>"#, esc(s), esc(&short))
    }
}

/// Verdict first and big: it is the one thing every reader came for.
fn banner(o: &mut String, r: &Report) -> fmt::Result {
    let class = match r.verdict {
        Verdict::Go => "v-go",
        Verdict::NoGo => "v-nogo",
        Verdict::Inconclusive => "v-inconclusive",
    };
    writeln!(
        o,
        r#"<header class="banner {class}"><h1>shadowctl diff: {}</h1>"#,
        r.verdict.as_str()
    )?;
    let shadows: Vec<String> = r.shadow_names.iter().map(|s| esc(s)).collect();
    writeln!(
        o,
        "<p>{} exchanges · {} input file(s) · shadows: {} · primary answers: {} · noise estimated: {}</p></header>",
        int(r.exchanges),
        r.inputs.len(),
        if shadows.is_empty() { "none".to_string() } else { shadows.join(", ") },
        esc(&r.primary_source),
        if r.noise_estimated { "yes" } else { "no" },
    )?;
    if let Some(j) = &r.judge {
        writeln!(o, "<p>{}</p>", esc(&judge_line(j)))?;
    }
    if !r.inputs.is_empty() {
        write!(o, "<details><summary>Inputs</summary><ul>")?;
        for i in &r.inputs {
            write!(o, "<li>{}</li>", code(i, MAX_VALUE_CHARS))?;
        }
        writeln!(o, "</ul></details>")?;
    }
    Ok(())
}

fn reasons(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "<h2>Reasons</h2>")?;
    if r.reasons.is_empty() {
        return writeln!(o, r#"<p class="muted">No criteria were evaluated.</p>"#);
    }
    writeln!(o, "<table><thead><tr><th>Criterion</th><th>Endpoint</th><th>Shadow</th><th>Observed</th><th>Threshold</th><th>Outcome</th><th>Detail</th></tr></thead><tbody>")?;
    for x in reasons_by_severity(r) {
        let word = outcome_word(x.outcome);
        let (seen, limit) = observed_and_threshold(&x.criterion, x.observed, x.threshold);
        writeln!(
            o,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="{word}">{word}</td><td>{}</td></tr>"#,
            code(&x.criterion, MAX_VALUE_CHARS),
            x.endpoint
                .as_deref()
                .map_or_else(|| "all".to_string(), |e| code(e, MAX_VALUE_CHARS)),
            x.shadow.as_deref().map_or_else(|| "all".to_string(), esc),
            esc(&seen),
            esc(&limit),
            esc(&x.detail),
        )?;
    }
    writeln!(o, "</tbody></table>")?;
    for hint in &r.hints {
        writeln!(o, r#"<p class="muted">Hint: {}</p>"#, esc(hint))?;
    }
    Ok(())
}

/// Everything about one shadow: figures, charts, then the detail tables.
fn shadow_section(o: &mut String, r: &Report, name: &str) -> fmt::Result {
    writeln!(o, "<section><h2>Shadow <code>{}</code></h2>", esc(name))?;
    let rows = endpoint_rows(r, name);
    if let Some(s) = r.overall.get(name) {
        overall(o, s)?;
        writeln!(o, "<h3>Latency, all endpoints</h3>")?;
        latency_chart(
            o,
            &r.latency_buckets_ms,
            &s.latency_ms,
            &format!("Latency of {name}, all endpoints"),
        )?;
    }
    if !rows.is_empty() {
        writeln!(o, "<h3>Divergence rate by endpoint</h3>")?;
        divergence_chart(o, &rows, divergence_limit(r, name))?;
        writeln!(o, "<h3>Endpoints</h3>")?;
        endpoints_table(o, &rows)?;
        endpoint_latency(o, r, &rows)?;
        llm(o, r, &rows)?;
        similarity(o, r, &rows)?;
    }
    if let Some(s) = r.overall.get(name) {
        drift(o, s)?;
        fields(o, s)?;
    }
    segments(o, r, name)?;
    if let Some(s) = r.overall.get(name) {
        noise(o, s)?;
        missing(o, s)?;
    }
    examples(o, r, name)?;
    writeln!(o, "</section>")
}

fn overall(o: &mut String, s: &ShadowStats) -> fmt::Result {
    let k = &s.by_kind;
    writeln!(
        o,
        "<p>{} compared · {} divergent{}, {} · by kind: status {}, body {}, header {}, error {} · errors primary/shadow {} / {} ({} / {}) · p99 primary/shadow {} / {} ms ({})</p>",
        int(s.compared),
        int(s.divergent),
        s.unjudged_note(int),
        esc(&pct_ci(s.divergence_rate, s.divergence_ci)),
        int(k.status),
        int(k.body),
        int(k.header),
        int(k.error),
        int(s.errors.primary),
        int(s.errors.shadow),
        esc(&pct(s.errors.primary_rate)),
        esc(&pct(s.errors.shadow_rate)),
        esc(&p99(&s.latency_ms.primary)),
        esc(&p99(&s.latency_ms.shadow)),
        esc(&ratio(s.latency_ms.p99_ratio)),
    )?;
    if !s.errors.shadow_by_kind.is_empty() {
        let kinds: Vec<String> = s
            .errors
            .shadow_by_kind
            .iter()
            .map(|(k, n)| format!("{} {}", esc(k), int(*n)))
            .collect();
        writeln!(o, "<p>Shadow errors by kind: {}</p>", kinds.join(", "))?;
    }
    Ok(())
}

fn endpoints_table(o: &mut String, rows: &[(&EndpointReport, &ShadowStats)]) -> fmt::Result {
    writeln!(o, "<table><thead><tr><th>Endpoint</th><th>Compared</th><th>Divergent</th><th>Rate (95% CI)</th><th>Errors P/S</th><th>p99 P/S (ms)</th><th>Ratio</th></tr></thead><tbody>")?;
    for (e, s) in rows.iter().take(MAX_ENDPOINT_ROWS) {
        writeln!(
            o,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{} / {}</td><td class="n">{} / {}</td><td class="n">{}</td></tr>"#,
            code(&e.endpoint, MAX_VALUE_CHARS),
            int(s.compared),
            int(s.divergent),
            esc(&pct_ci(s.divergence_rate, s.divergence_ci)),
            int(s.errors.primary),
            int(s.errors.shadow),
            esc(&p99(&s.latency_ms.primary)),
            esc(&p99(&s.latency_ms.shadow)),
            esc(&ratio(s.latency_ms.p99_ratio)),
        )?;
    }
    writeln!(o, "</tbody></table>")?;
    left_out(o, rows.len(), MAX_ENDPOINT_ROWS, "endpoints")
}

/// Per-endpoint latency charts, each collapsed: there can be many.
fn endpoint_latency(
    o: &mut String,
    r: &Report,
    rows: &[(&EndpointReport, &ShadowStats)],
) -> fmt::Result {
    writeln!(o, "<h3>Latency by endpoint</h3>")?;
    for (e, s) in rows.iter().take(MAX_ENDPOINT_CHARTS) {
        writeln!(
            o,
            "<details><summary>{} · p99 {} / {} ms ({})</summary>",
            code(&e.endpoint, 120),
            esc(&p99(&s.latency_ms.primary)),
            esc(&p99(&s.latency_ms.shadow)),
            esc(&ratio(s.latency_ms.p99_ratio)),
        )?;
        latency_chart(
            o,
            &r.latency_buckets_ms,
            &s.latency_ms,
            &format!("Latency of {}", e.endpoint),
        )?;
        writeln!(o, "</details>")?;
    }
    left_out(o, rows.len(), MAX_ENDPOINT_CHARTS, "endpoint charts")
}

/// LLM answers: a table per endpoint, then the distributions of time to
/// first token and of decode speed.
fn llm(o: &mut String, r: &Report, rows: &[(&EndpointReport, &ShadowStats)]) -> fmt::Result {
    let llm: Vec<_> = rows
        .iter()
        .filter_map(|(e, s)| s.llm.as_ref().map(|l| (e, l)))
        .collect();
    if llm.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>LLM answers</h3>")?;
    writeln!(o, "<table><thead><tr><th>Endpoint</th><th>Streamed P/S</th><th>TTFT p50 P/S (ms)</th><th>TTFT p99 P/S (ms)</th><th>Ratio</th><th>Inter-token p50 P/S (ms)</th><th>Tokens/s p50 P/S</th><th>Ratio</th><th>Output tokens P/S</th><th>Ratio</th><th>Stop reasons P / S</th></tr></thead><tbody>")?;
    for (e, l) in llm.iter().take(MAX_ENDPOINT_ROWS) {
        writeln!(
            o,
            r#"<tr><td>{}</td><td class="n">{} / {}</td><td class="n">{} / {}</td><td class="n">{} / {}</td><td class="n">{}</td><td class="n">{} / {}</td><td class="n">{} / {}</td><td class="n">{}</td><td class="n">{} / {}</td><td class="n">{}</td><td>{} / {}</td></tr>"#,
            code(&e.endpoint, MAX_VALUE_CHARS),
            int(l.streamed.primary),
            int(l.streamed.shadow),
            esc(&ms_of(&l.ttft_ms.primary, l.ttft_ms.primary.p50)),
            esc(&ms_of(&l.ttft_ms.shadow, l.ttft_ms.shadow.p50)),
            esc(&ms_of(&l.ttft_ms.primary, l.ttft_ms.primary.p99)),
            esc(&ms_of(&l.ttft_ms.shadow, l.ttft_ms.shadow.p99)),
            esc(&ratio(l.ttft_p99_ratio)),
            esc(&ms_of(
                &l.inter_token_ms.primary,
                l.inter_token_ms.primary.p50
            )),
            esc(&ms_of(
                &l.inter_token_ms.shadow,
                l.inter_token_ms.shadow.p50
            )),
            esc(&fixed_of(
                &l.tokens_per_second.primary,
                l.tokens_per_second.primary.p50,
                1
            )),
            esc(&fixed_of(
                &l.tokens_per_second.shadow,
                l.tokens_per_second.shadow.p50,
                1
            )),
            esc(&ratio(l.tokens_per_second_ratio)),
            esc(&fixed_of(
                &l.output_tokens.primary,
                l.output_tokens.primary.mean,
                1
            )),
            esc(&fixed_of(
                &l.output_tokens.shadow,
                l.output_tokens.shadow.mean,
                1
            )),
            esc(&ratio(l.output_tokens_ratio)),
            esc(&finish_reasons(&l.finish_reasons.primary)),
            esc(&finish_reasons(&l.finish_reasons.shadow)),
        )?;
    }
    writeln!(o, "</tbody></table>")?;
    for (e, l) in llm.iter().take(MAX_ENDPOINT_CHARTS) {
        if l.streamed.primary + l.streamed.shadow == 0 {
            continue;
        }
        writeln!(
            o,
            "<details open><summary>{} · time to first token and decode speed</summary>",
            code(&e.endpoint, 120)
        )?;
        let ttft = LatencyPair {
            primary: l.ttft_ms.primary.clone(),
            shadow: l.ttft_ms.shadow.clone(),
            p99_ratio: l.ttft_p99_ratio,
        };
        latency_chart(
            o,
            &r.latency_buckets_ms,
            &ttft,
            &format!("Time to first token of {}", e.endpoint),
        )?;
        let (p, s) = (&l.tokens_per_second.primary, &l.tokens_per_second.shadow);
        overlay_chart(
            o,
            &Overlay {
                edges: &r.tokens_per_second_buckets,
                hist: [&p.histogram, &s.histogram],
                markers: [
                    (p.count > 0).then(|| {
                        (
                            p.p50,
                            format!("primary median {} tokens/s", fixed(p.p50, 1)),
                        )
                    }),
                    (s.count > 0)
                        .then(|| (s.p50, format!("shadow median {} tokens/s", fixed(s.p50, 1)))),
                ],
                legend: [
                    format!(
                        "primary (n={}, median {} tokens/s)",
                        int(p.count),
                        fixed(p.p50, 1)
                    ),
                    format!(
                        "shadow (n={}, median {} tokens/s)",
                        int(s.count),
                        fixed(s.p50, 1)
                    ),
                ],
                x_label: "decode speed (tokens per second after the first, upper edge of bucket)",
                title: &format!("Decode speed of {}", e.endpoint),
            },
        )?;
        writeln!(o, "</details>")?;
    }
    left_out(o, llm.len(), MAX_ENDPOINT_CHARTS, "endpoint charts")
}

/// Text compared by similarity, beside the primary's similarity to itself.
fn similarity(o: &mut String, r: &Report, rows: &[(&EndpointReport, &ShadowStats)]) -> fmt::Result {
    let sims: Vec<_> = rows
        .iter()
        .flat_map(|(e, s)| s.similarity.iter().map(move |x| (e, x)))
        .collect();
    if sims.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Text similarity against the primary's own</h3>")?;
    for (e, x) in sims.iter().take(MAX_ENDPOINT_CHARTS) {
        writeln!(
            o,
            "<details open><summary>{} {} ({}) · drop {}</summary>",
            code(&e.endpoint, 120),
            code(&x.path, 120),
            esc(&x.metric),
            esc(&similarity_drop(x)),
        )?;
        let empty = crate::report::Dist::default();
        let own = x.noise.as_ref().unwrap_or(&empty);
        overlay_chart(
            o,
            &Overlay {
                edges: &r.similarity_buckets,
                hist: [&own.histogram, &x.shadow.histogram],
                markers: [
                    x.noise.as_ref().map(|n| {
                        (
                            n.p50,
                            format!("primary to itself, median {}", fixed(n.p50, 3)),
                        )
                    }),
                    Some((
                        x.shadow.p50,
                        format!("shadow to primary, median {}", fixed(x.shadow.p50, 3)),
                    )),
                ],
                legend: [
                    format!("primary to itself (n={})", int(own.count)),
                    format!("shadow to primary (n={})", int(x.shadow.count)),
                ],
                x_label: "similarity (upper edge of bucket)",
                title: &format!("Similarity of {} on {}", x.path, e.endpoint),
            },
        )?;
        writeln!(o, "</details>")?;
    }
    left_out(o, sims.len(), MAX_ENDPOINT_CHARTS, "similarity charts")
}

fn drift(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.drift.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Drift</h3>")?;
    writeln!(o, "<table><thead><tr><th>Field</th><th>Kind</th><th>n P/S</th><th>PSI</th><th>Test</th></tr></thead><tbody>")?;
    for d in &s.drift {
        writeln!(
            o,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{} / {}</td><td class="n">{}</td><td>{}</td></tr>"#,
            code(&d.path, MAX_VALUE_CHARS),
            esc(&d.kind),
            int(d.primary_count),
            int(d.shadow_count),
            esc(&fixed(d.psi, 3)),
            esc(&drift_test(d.chi_square, d.ks)),
        )?;
    }
    writeln!(o, "</tbody></table>")?;
    for d in &s.drift {
        drift_chart(o, d)?;
    }
    Ok(())
}

fn fields(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.fields.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Top divergent fields</h3>")?;
    writeln!(o, "<table><thead><tr><th>Field</th><th>Divergent</th><th>Rate</th><th>Kinds</th></tr></thead><tbody>")?;
    for f in &s.fields {
        let kinds: Vec<String> = f
            .kinds
            .iter()
            .map(|(k, n)| format!("{} {}", esc(k), int(*n)))
            .collect();
        writeln!(
            o,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            code(&f.path, MAX_VALUE_CHARS),
            int(f.divergent),
            esc(&pct(f.rate)),
            kinds.join(", "),
        )?;
    }
    writeln!(o, "</tbody></table>")
}

fn segments(o: &mut String, r: &Report, name: &str) -> fmt::Result {
    let segs: Vec<_> = r.segments.iter().filter(|s| s.shadow == name).collect();
    if segs.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Significant segments</h3>")?;
    writeln!(o, "<table><thead><tr><th>Dimension</th><th>Value</th><th>Exchanges</th><th>Divergent</th><th>Rate</th><th>Rest</th><th>p</th></tr></thead><tbody>")?;
    for s in segs {
        writeln!(
            o,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(&s.dimension),
            code(&s.value, MAX_VALUE_CHARS),
            int(s.exchanges),
            int(s.divergent),
            esc(&pct(s.rate)),
            esc(&pct(s.rest_rate)),
            esc(&p_value(s.p_value)),
        )?;
    }
    writeln!(o, "</tbody></table>")
}

fn noise(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.noise_fields.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Noise fields</h3>")?;
    writeln!(
        o,
        r#"<p class="muted">These also differ between two answers of the primary, so they are not counted as divergence.</p>"#
    )?;
    writeln!(o, "<table><thead><tr><th>Field</th><th>Primary vs primary</th><th>Primary vs shadow</th></tr></thead><tbody>")?;
    for f in &s.noise_fields {
        writeln!(
            o,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            code(&f.path, MAX_VALUE_CHARS),
            esc(&pct(f.noise_rate)),
            esc(&pct(f.shadow_rate)),
        )?;
    }
    writeln!(o, "</tbody></table>")
}

fn missing(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.missing_fields.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Missing in shadow</h3>")?;
    writeln!(
        o,
        "<table><thead><tr><th>Field</th><th>Count</th><th>Rate</th></tr></thead><tbody>"
    )?;
    for f in &s.missing_fields {
        writeln!(
            o,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            code(&f.path, MAX_VALUE_CHARS),
            int(f.count),
            esc(&pct(f.rate)),
        )?;
    }
    writeln!(o, "</tbody></table>")
}

/// Divergent exchanges, one collapsible block each with its differences.
fn examples(o: &mut String, r: &Report, name: &str) -> fmt::Result {
    let ex: Vec<&Example> = r
        .top_divergences
        .iter()
        .filter(|e| e.shadow == name)
        .collect();
    if ex.is_empty() {
        return Ok(());
    }
    writeln!(o, "<h3>Top divergent examples</h3>")?;
    for (i, e) in ex.iter().take(MAX_EXAMPLES).enumerate() {
        writeln!(
            o,
            "<details{}><summary>{} · exchange {} · status {} → {} · endpoint {}</summary>",
            if i < OPEN_EXAMPLES { " open" } else { "" },
            code(&format!("{} {}", e.method, e.target), 160),
            e.exchange_id,
            status(e.primary_status),
            status(e.shadow_status),
            code(&e.endpoint, 120),
        )?;
        writeln!(o, "<table><thead><tr><th>Path</th><th>Kind</th><th>Primary</th><th>Shadow</th></tr></thead><tbody>")?;
        for d in e.differences.iter().take(MAX_DIFFS_PER_EXAMPLE) {
            writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                code(&d.path, MAX_VALUE_CHARS),
                esc(&d.kind),
                code(&d.primary, MAX_VALUE_CHARS),
                code(&d.shadow, MAX_VALUE_CHARS),
            )?;
        }
        writeln!(o, "</tbody></table>")?;
        left_out(o, e.differences.len(), MAX_DIFFS_PER_EXAMPLE, "differences")?;
        writeln!(o, "</details>")?;
    }
    left_out(o, ex.len(), MAX_EXAMPLES, "examples")?;
    if let Some(note) = &r.examples_note {
        writeln!(o, r#"<p class="muted">{}</p>"#, esc(note))?;
    }
    Ok(())
}

/// Say how many items a capped list dropped.
fn left_out(o: &mut String, total: usize, shown: usize, what: &str) -> fmt::Result {
    if total > shown {
        writeln!(
            o,
            r#"<p class="muted">{} more {what} not shown.</p>"#,
            total - shown
        )?;
    }
    Ok(())
}

/// The divergence threshold that applies to this shadow, to draw as a line.
fn divergence_limit(r: &Report, name: &str) -> Option<f64> {
    r.reasons
        .iter()
        .filter(|x| x.criterion == "divergence_rate")
        .filter(|x| x.shadow.as_deref().is_none_or(|s| s == name))
        .map(|x| x.threshold)
        .find(|t| t.is_finite() && *t > 0.0)
}

// ---- SVG ----------------------------------------------------------------------

/// An SVG coordinate; non-finite values collapse to 0 so a NaN in the data
/// can never produce an invalid attribute.
fn c(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "0".to_string()
    }
}

/// The smallest "round" number (1, 2, 2.5, 5 × 10^k) at or above `v`, for
/// axis maxima that give readable tick labels.
fn nice_ceil(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|x| *x >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// Opening tag of a chart, with an accessible title as first child.
fn svg_open(o: &mut String, w: f64, h: f64, title: &str) -> fmt::Result {
    writeln!(
        o,
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><title>{}</title>"#,
        esc(title)
    )
}

/// A "primary / shadow" colour legend at (x, y).
fn legend(o: &mut String, x: f64, y: f64, primary: &str, shadow: &str) -> fmt::Result {
    for (i, (colour, label)) in [(PRIMARY, primary), (SHADOW, shadow)].iter().enumerate() {
        let yy = y + 16.0 * i as f64;
        writeln!(
            o,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            c(x),
            c(yy - 9.0),
            c(x + 14.0),
            c(yy),
            esc(label)
        )?;
    }
    Ok(())
}

/// Each side's histogram as shares of its own answers, so sides with
/// different counts (e.g. shadow timeouts) still overlay comparably.
fn shares(h: &[u64], n: usize) -> Vec<f64> {
    let total: u64 = h.iter().sum();
    (0..n)
        .map(|i| match (h.get(i), total) {
            (Some(&v), t) if t > 0 => v as f64 / t as f64,
            _ => 0.0,
        })
        .collect()
}

/// Where a latency falls on the bucket axis (bucket i spans [i, i+1]),
/// interpolated in log space inside its bucket because buckets are log-spaced.
fn bucket_pos(edges: &[f64], n: usize, v: f64) -> Option<f64> {
    if !v.is_finite() || v < 0.0 || n == 0 {
        return None;
    }
    let Some(i) = edges.iter().position(|&e| v <= e) else {
        // Above the last edge: the overflow bucket if there is one.
        return Some((edges.len() as f64 + 0.5).min(n as f64));
    };
    let hi = edges[i];
    let lo = if i == 0 { 0.0 } else { edges[i - 1] };
    let frac = if lo > 0.0 && hi > lo {
        (v / lo).ln() / (hi / lo).ln()
    } else if hi > lo {
        (v - lo) / (hi - lo)
    } else {
        1.0
    };
    let frac = if frac.is_finite() {
        frac.clamp(0.0, 1.0)
    } else {
        0.5
    };
    Some((i as f64 + frac).min(n as f64))
}

/// A bucket edge as a short axis label.
fn edge_label(v: f64) -> String {
    if !v.is_finite() {
        "∞".to_string()
    } else if v >= 10_000.0 {
        format!("{:.0}s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        num(v)
    }
}

/// Overlaid step lines of the primary and shadow latency histograms over the
/// log-spaced buckets, with dashed p99 markers.
fn latency_chart(o: &mut String, edges: &[f64], pair: &LatencyPair, title: &str) -> fmt::Result {
    let (p, s) = (&pair.primary, &pair.shadow);
    overlay_chart(
        o,
        &Overlay {
            edges,
            hist: [&p.histogram, &s.histogram],
            markers: [
                (p.count > 0).then(|| (p.p99, format!("primary p99 {} ms", ms(p.p99)))),
                (s.count > 0).then(|| (s.p99, format!("shadow p99 {} ms", ms(s.p99)))),
            ],
            legend: [
                format!("primary (n={}, p99 {} ms)", int(p.count), p99(p)),
                format!("shadow (n={}, p99 {} ms)", int(s.count), p99(s)),
            ],
            x_label: "latency (ms, upper edge of log-spaced bucket)",
            title,
        },
    )
}

/// Two distributions over the same buckets, drawn one over the other.
struct Overlay<'a> {
    edges: &'a [f64],
    /// Counts per bucket: primary, shadow.
    hist: [&'a [u64]; 2],
    /// A dashed line per side at this value, with its tooltip.
    markers: [Option<(f64, String)>; 2],
    legend: [String; 2],
    x_label: &'a str,
    title: &'a str,
}

fn overlay_chart(o: &mut String, c_: &Overlay) -> fmt::Result {
    let [hp, hs] = c_.hist;
    let n = hp.len().max(hs.len());
    let any = hp.iter().chain(hs).any(|&v| v > 0);
    if n == 0 || !any {
        return writeln!(o, r#"<p class="muted">No histogram to draw.</p>"#);
    }
    let (sp, ss) = (shares(hp, n), shares(hs, n));
    let ymax = nice_ceil(sp.iter().chain(&ss).copied().fold(0.0, f64::max));
    let (w, h, left, right, top, bottom) = (760.0, 260.0, 56.0, 16.0, 40.0, 44.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let bw = pw / n as f64;
    let x = |pos: f64| left + pos * bw;
    let y = |share: f64| top + ph - share / ymax * ph;

    writeln!(o, "<figure>")?;
    svg_open(o, w, h, c_.title)?;
    y_axis(o, left, pw, top, ph, ymax)?;
    x_axis_buckets(o, c_.edges, n, left, top + ph, bw)?;
    for (shares, colour) in [(&sp, PRIMARY), (&ss, SHADOW)] {
        let mut d = format!("M{} {}", c(x(0.0)), c(y(0.0)));
        for (i, v) in shares.iter().enumerate() {
            let _ = write!(d, " V{} H{}", c(y(*v)), c(x(i as f64 + 1.0)));
        }
        let _ = write!(d, " V{}", c(y(0.0)));
        writeln!(
            o,
            r#"<path d="{d}" fill="{colour}" fill-opacity="0.12" stroke="{colour}" stroke-width="1.8"/>"#
        )?;
    }
    for (marker, colour) in c_.markers.iter().zip([PRIMARY, SHADOW]) {
        if let Some((v, label)) = marker {
            value_marker(o, c_.edges, n, *v, label, colour, (x(0.0), bw, top, ph))?;
        }
    }
    legend(o, left + pw - 230.0, 16.0, &c_.legend[0], &c_.legend[1])?;
    writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        c(left + pw / 2.0),
        c(h - 6.0),
        esc(c_.x_label)
    )?;
    y_title(o, top, ph, "share of answers")?;
    writeln!(o, "</svg></figure>")
}

/// A dashed vertical line at `v` on the bucket axis.
fn value_marker(
    o: &mut String,
    edges: &[f64],
    n: usize,
    v: f64,
    label: &str,
    colour: &str,
    (x0, bw, top, ph): (f64, f64, f64, f64),
) -> fmt::Result {
    let Some(pos) = bucket_pos(edges, n, v) else {
        return Ok(());
    };
    let x = x0 + pos * bw;
    writeln!(
        o,
        r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 3"><title>{}</title></line>"#,
        c(x),
        c(top),
        c(x),
        c(top + ph),
        esc(label)
    )
}

/// Horizontal grid lines with share labels (0, ½, max) on the left.
fn y_axis(o: &mut String, left: f64, pw: f64, top: f64, ph: f64, ymax: f64) -> fmt::Result {
    for k in 0..=2 {
        let v = ymax * k as f64 / 2.0;
        let yy = top + ph - ph * k as f64 / 2.0;
        writeln!(
            o,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{GRID}"/><text x="{}" y="{}" text-anchor="end">{}</text>"#,
            c(left),
            c(yy),
            c(left + pw),
            c(yy),
            c(left - 4.0),
            c(yy + 4.0),
            esc(&short_pct(v))
        )?;
    }
    Ok(())
}

/// A vertical axis title centred on the plot's height.
fn y_title(o: &mut String, top: f64, ph: f64, label: &str) -> fmt::Result {
    let mid = c(top + ph / 2.0);
    writeln!(
        o,
        r#"<text x="12" y="{mid}" text-anchor="middle" transform="rotate(-90 12 {mid})">{}</text>"#,
        esc(label)
    )
}

/// Tick labels at bucket edges, thinned to at most ~10 so they do not overlap.
fn x_axis_buckets(
    o: &mut String,
    edges: &[f64],
    n: usize,
    left: f64,
    base: f64,
    bw: f64,
) -> fmt::Result {
    let step = n.div_ceil(10).max(1);
    writeln!(
        o,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#59636e"/>"##,
        c(left),
        c(base),
        c(left + bw * n as f64),
        c(base)
    )?;
    for i in (0..n).filter(|i| (i + 1).is_multiple_of(step) || i + 1 == n) {
        let label = edges
            .get(i)
            .map_or_else(|| "∞".to_string(), |&e| edge_label(e));
        let xx = left + bw * (i as f64 + 1.0);
        writeln!(
            o,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#59636e"/><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            c(xx),
            c(base),
            c(xx),
            c(base + 4.0),
            c(xx),
            c(base + 16.0),
            esc(&label)
        )?;
    }
    Ok(())
}

/// A share as an axis label: fewer decimals than table percentages.
fn short_pct(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_string()
    } else if v == 0.0 {
        "0%".to_string()
    } else if v * 100.0 >= 10.0 {
        format!("{:.0}%", v * 100.0)
    } else if v * 100.0 >= 1.0 {
        format!("{:.1}%", v * 100.0)
    } else {
        format!("{:.2}%", v * 100.0)
    }
}

/// Geometry of the divergence bar chart.
struct Bars {
    label_w: f64,
    bar_w: f64,
    row_h: f64,
    top: f64,
    xmax: f64,
}

impl Bars {
    /// x of a rate; NaN and negatives sit at 0, values past the axis at its end.
    fn x(&self, v: f64) -> f64 {
        let v = if v.is_finite() {
            v.clamp(0.0, self.xmax)
        } else {
            0.0
        };
        self.label_w + v / self.xmax * self.bar_w
    }
}

/// Horizontal bars of divergence rate per endpoint, with the 95% interval
/// as whiskers and the gate threshold as a dashed line.
fn divergence_chart(
    o: &mut String,
    all: &[(&EndpointReport, &ShadowStats)],
    limit: Option<f64>,
) -> fmt::Result {
    let rows = &all[..all.len().min(MAX_BAR_ROWS)];
    let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let top_value = rows
        .iter()
        .map(|(_, s)| finite(s.divergence_rate).max(finite(s.divergence_ci[1])))
        .chain(limit)
        .fold(0.0, f64::max);
    let g = Bars {
        label_w: 300.0,
        bar_w: 360.0,
        row_h: 22.0,
        top: 10.0,
        xmax: nice_ceil(if top_value > 0.0 { top_value } else { 0.01 }),
    };
    let w = g.label_w + g.bar_w + 150.0;
    let base = g.top + g.row_h * rows.len() as f64;
    let h = base + 32.0;

    writeln!(o, "<figure>")?;
    svg_open(o, w, h, "Divergence rate by endpoint, with 95% intervals")?;
    for k in 0..=4 {
        let v = g.xmax * k as f64 / 4.0;
        writeln!(
            o,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{GRID}"/><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            c(g.x(v)),
            c(g.top),
            c(g.x(v)),
            c(base),
            c(g.x(v)),
            c(base + 14.0),
            esc(&short_pct(v))
        )?;
    }
    for (i, (e, s)) in rows.iter().enumerate() {
        divergence_row(o, &g, e, s, g.top + g.row_h * i as f64)?;
    }
    if let Some(t) = limit {
        writeln!(
            o,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{LIMIT}" stroke-width="1.5" stroke-dasharray="6 3"><title>threshold {}</title></line><text x="{}" y="{}" text-anchor="middle" fill="{LIMIT}">limit {}</text>"#,
            c(g.x(t)),
            c(g.top),
            c(g.x(t)),
            c(base),
            esc(&pct(t)),
            c(g.x(t)),
            c(base + 28.0),
            esc(&pct(t))
        )?;
    }
    writeln!(o, "</svg></figure>")?;
    left_out(o, all.len(), MAX_BAR_ROWS, "endpoints in the chart")
}

/// One bar of the divergence chart: label, bar, whisker, value.
fn divergence_row(
    o: &mut String,
    g: &Bars,
    e: &EndpointReport,
    s: &ShadowStats,
    y: f64,
) -> fmt::Result {
    let mid = y + g.row_h / 2.0;
    let summary = format!(
        "{}: {} ({} of {})",
        e.endpoint,
        pct_ci(s.divergence_rate, s.divergence_ci),
        int(s.divergent),
        int(s.compared)
    );
    writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="end"><title>{}</title>{}</text>"#,
        c(g.label_w - 6.0),
        c(mid + 4.0),
        esc(&e.endpoint),
        esc(&clip(&e.endpoint, 44))
    )?;
    writeln!(
        o,
        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{SHADOW}"><title>{}</title></rect>"#,
        c(g.label_w),
        c(y + 4.0),
        c(g.x(s.divergence_rate) - g.label_w),
        c(g.row_h - 8.0),
        esc(&summary)
    )?;
    let [lo, hi] = s.divergence_ci;
    if lo.is_finite() && hi.is_finite() && hi >= lo {
        let (x1, x2) = (g.x(lo), g.x(hi));
        writeln!(
            o,
            r##"<path d="M{} {}V{}M{} {}H{}M{} {}V{}" stroke="#1f2328" stroke-width="1.2" fill="none"/>"##,
            c(x1),
            c(mid - 5.0),
            c(mid + 5.0),
            c(x1),
            c(mid),
            c(x2),
            c(x2),
            c(mid - 5.0),
            c(mid + 5.0)
        )?;
    }
    writeln!(
        o,
        r#"<text x="{}" y="{}">{}</text>"#,
        c(g.label_w + g.bar_w + 8.0),
        c(mid + 4.0),
        esc(&pct_ci(s.divergence_rate, s.divergence_ci))
    )
}

/// Grouped bars per drift bin: primary and shadow shares side by side.
fn drift_chart(o: &mut String, d: &Drift) -> fmt::Result {
    let bins = &d.bins[..d.bins.len().min(MAX_DRIFT_BINS)];
    if bins.is_empty() {
        return Ok(());
    }
    let total = |f: fn(&super::DriftBin) -> u64| d.bins.iter().map(f).sum::<u64>();
    let (tp, ts) = (total(|b| b.primary), total(|b| b.shadow));
    let share = |v: u64, t: u64| if t > 0 { v as f64 / t as f64 } else { 0.0 };
    let ymax = nice_ceil(
        bins.iter()
            .map(|b| share(b.primary, tp).max(share(b.shadow, ts)))
            .fold(0.0, f64::max),
    );
    let (w, h, left, right, top, bottom) = (760.0, 250.0, 56.0, 16.0, 40.0, 70.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let gw = pw / bins.len() as f64;
    let y = |v: f64| top + ph - v / ymax * ph;

    writeln!(o, "<figure>")?;
    svg_open(
        o,
        w,
        h,
        &format!("Distribution of {} (PSI {})", d.path, fixed(d.psi, 3)),
    )?;
    y_axis(o, left, pw, top, ph, ymax)?;
    y_title(o, top, ph, "share of values")?;
    for (i, b) in bins.iter().enumerate() {
        let gx = left + gw * i as f64;
        let tip = format!(
            "{}: primary {} ({}), shadow {} ({})",
            b.label,
            int(b.primary),
            pct(share(b.primary, tp)),
            int(b.shadow),
            pct(share(b.shadow, ts))
        );
        for (k, (v, t, colour)) in [(b.primary, tp, PRIMARY), (b.shadow, ts, SHADOW)]
            .iter()
            .enumerate()
        {
            let bx = gx + gw * (0.1 + 0.42 * k as f64);
            let by = y(share(*v, *t));
            writeln!(
                o,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{colour}"><title>{}</title></rect>"#,
                c(bx),
                c(by),
                c(gw * 0.38),
                c(top + ph - by),
                esc(&tip)
            )?;
        }
        let lx = gx + gw / 2.0;
        let ly = top + ph + 12.0;
        writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="end" transform="rotate(-35 {} {})"><title>{}</title>{}</text>"#,
            c(lx),
            c(ly),
            c(lx),
            c(ly),
            esc(&b.label),
            esc(&clip(&b.label, 14))
        )?;
    }
    legend(
        o,
        left + pw - 150.0,
        16.0,
        &format!("primary (n={})", int(tp)),
        &format!("shadow (n={})", int(ts)),
    )?;
    writeln!(
        o,
        "</svg><figcaption>{} · {} · PSI {} · {}</figcaption></figure>",
        code(&d.path, 120),
        esc(&d.kind),
        esc(&fixed(d.psi, 3)),
        esc(&drift_test(d.chi_square, d.ks)),
    )?;
    left_out(o, d.bins.len(), MAX_DRIFT_BINS, "bins")
}

/// What each target cost: a table, then CPU and memory over the replay's
/// time, every target on one time axis.
fn resources(o: &mut String, r: &Report) -> fmt::Result {
    if r.resources.is_empty() {
        // Why there are no figures, as the other reports say it.
        if let Some(note) = &r.resources_note {
            writeln!(o, r#"<p class="muted">{}</p>"#, esc(note))?;
        }
        return Ok(());
    }
    writeln!(o, "<section><h2>Resources</h2>")?;
    writeln!(o, "<table><thead><tr><th>Target</th><th>Source</th><th>CPU cores mean / p95</th><th>CPU ms per answer</th><th>Memory peak MB</th><th>Memory growth MB/h (95% CI)</th><th>GPU util mean / p95</th><th>GPU memory peak MB</th><th>Cores at peak</th><th>Failed scrapes</th></tr></thead><tbody>")?;
    for (name, x) in &r.resources {
        let row = super::markdown::resource_cells(x);
        write!(o, "<tr><td>{}</td>", esc(name))?;
        for cell in row {
            write!(o, r#"<td class="n">{}</td>"#, esc(&cell))?;
        }
        writeln!(o, "</tr>")?;
    }
    writeln!(o, "</tbody></table>")?;
    if let Some(peak) = r.resources.values().find_map(|x| x.peak_requests_per_s) {
        writeln!(
            o,
            r#"<p class="muted">Cores at peak: CPU per answer times the capture's busiest second ({peak:.0} requests/s).</p>"#
        )?;
    }
    for (t, tel) in &r.telemetry {
        if tel.missing_in_shadow.is_empty()
            && tel.added_in_shadow.is_empty()
            && tel.labels_missing_in_shadow.is_empty()
        {
            writeln!(o, "<p>Telemetry of <code>{}</code>: every family and label of the primary is there.</p>", esc(t))?;
            continue;
        }
        writeln!(
            o,
            "<p>Telemetry of <code>{}</code>: missing {}; labels missing {}; new {}.</p>",
            esc(t),
            esc(&list_or_none(&tel.missing_in_shadow)),
            esc(&list_or_none(&tel.labels_missing_in_shadow)),
            esc(&list_or_none(&tel.added_in_shadow))
        )?;
    }
    let cpu: Vec<(&str, &[f64], &[f64])> = r
        .resources
        .iter()
        .map(|(n, x)| (n.as_str(), &x.series.t_s[..], &x.series.cpu_cores[..]))
        .collect();
    time_chart(o, "CPU cores over the replay", "cores", &cpu)?;
    let mem: Vec<(&str, &[f64], &[f64])> = r
        .resources
        .iter()
        .map(|(n, x)| {
            (
                n.as_str(),
                &x.series.memory_t_s[..],
                &x.series.memory_mb[..],
            )
        })
        .collect();
    time_chart(o, "Memory over the replay", "MB", &mem)?;
    writeln!(o, "</section>")
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Lines of value against seconds since sampling began, one per target
/// (the primary in its colour, shadows in theirs).
fn time_chart(
    o: &mut String,
    title: &str,
    unit: &str,
    lines: &[(&str, &[f64], &[f64])],
) -> fmt::Result {
    let xmax = lines
        .iter()
        .flat_map(|l| l.1.iter().copied())
        .fold(0.0, f64::max);
    let ymax = nice_ceil(
        lines
            .iter()
            .flat_map(|l| l.2.iter().copied())
            .fold(0.0, f64::max),
    );
    if xmax <= 0.0 || ymax <= 0.0 {
        return Ok(());
    }
    let (w, h, left, right, top, bottom) = (760.0, 240.0, 64.0, 16.0, 40.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x = |t: f64| left + t / xmax * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    writeln!(o, "<figure>")?;
    svg_open(o, w, h, title)?;
    for k in 0..=2 {
        let v = ymax * k as f64 / 2.0;
        writeln!(
            o,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{GRID}"/><text x="{}" y="{}" text-anchor="end">{}</text>"#,
            c(left),
            c(y(v)),
            c(left + pw),
            c(y(v)),
            c(left - 4.0),
            c(y(v) + 4.0),
            esc(&format!("{v:.3}"))
        )?;
    }
    let palette = [SHADOW, "#2da44e", "#8250df", "#cf222e"];
    let mut shadows = 0;
    for (i, (name, ts, vs)) in lines.iter().enumerate() {
        let colour = if *name == "primary" {
            PRIMARY
        } else {
            shadows += 1;
            palette[(shadows - 1) % palette.len()]
        };
        let points: Vec<String> = ts
            .iter()
            .zip(vs.iter())
            .map(|(t, v)| format!("{},{}", c(x(*t)), c(y(*v))))
            .collect();
        if points.is_empty() {
            continue;
        }
        writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"/><rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            points.join(" "),
            c(left + pw - 150.0),
            c(8.0 + 14.0 * i as f64),
            c(left + pw - 136.0),
            c(17.0 + 14.0 * i as f64),
            esc(name)
        )?;
    }
    writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since sampling began</text>"#,
        c(left + pw / 2.0),
        c(h - 6.0)
    )?;
    y_title(o, top, ph, unit)?;
    writeln!(o, "</svg></figure>")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{
        Difference, Drift, DriftBin, EndpointReport, Example, FieldDivergence, LatencyMs,
        LatencyPair, MissingField, NoiseField, Outcome, Reason, Report, Segment, ShadowStats,
        Verdict,
    };
    use super::*;

    const HOSTILE: &str = "<script>alert(1)</script>";

    fn latency(count: u64, p99: f64, histogram: Vec<u64>) -> LatencyMs {
        LatencyMs {
            count,
            p50: p99 / 4.0,
            p95: p99 / 2.0,
            p99,
            p999: p99 * 1.5,
            max: p99 * 2.0,
            histogram,
        }
    }

    fn stats(compared: u64, divergent: u64) -> ShadowStats {
        let rate = divergent as f64 / compared.max(1) as f64;
        ShadowStats {
            compared,
            divergent,
            divergence_rate: rate,
            divergence_ci: [rate * 0.5, rate * 1.8 + 0.01],
            latency_ms: LatencyPair {
                primary: latency(compared, 40.0, vec![1, 10, 50, 30, 8, 1]),
                shadow: latency(compared, 120.0, vec![0, 5, 30, 40, 20, 5]),
                p99_ratio: Some(3.0),
            },
            ..ShadowStats::default()
        }
    }

    /// LLM figures and a similarity row, with hostile text where traffic
    /// puts text (stop reasons, the rule's path comes from the config).
    fn with_llm(mut s: ShadowStats) -> ShadowStats {
        let dist = |p50: f64, histogram: Vec<u64>| crate::report::Dist {
            count: 100,
            mean: p50,
            p5: p50 * 0.8,
            p50,
            p95: p50 * 1.2,
            p99: p50 * 1.5,
            histogram,
        };
        let mut l = crate::report::LlmStats::default();
        l.streamed.primary = 100;
        l.streamed.shadow = 100;
        l.ttft_ms.primary = latency(100, 12.0, vec![0, 80, 20, 0, 0, 0]);
        l.ttft_ms.shadow = latency(100, 30.0, vec![0, 0, 70, 30, 0, 0]);
        l.ttft_p99_ratio = Some(2.5);
        l.tokens_per_second.primary = dist(450.0, vec![0, 10, 90, 0]);
        l.tokens_per_second.shadow = dist(800.0, vec![0, 0, 20, 80]);
        l.finish_reasons.primary.insert(HOSTILE.into(), 3);
        l.finish_reasons.shadow.insert("stop".into(), 100);
        s.llm = Some(l);
        s.similarity.push(crate::report::Similarity {
            path: "$.text".into(),
            metric: "rouge_l".into(),
            shadow: dist(0.64, vec![0, 0, 0, 0, 0, 10, 80, 10, 0, 0]),
            noise: Some(dist(0.84, vec![0, 0, 0, 0, 0, 0, 0, 20, 75, 5])),
            drop: Some(0.2),
            drop_ci: Some([0.18, 0.21]),
            p_value: Some(1e-9),
        });
        s
    }

    /// A report with hostile captured text in every traffic-derived field.
    fn sample_report() -> Report {
        let mut overall = stats(1000, 30);
        overall.fields.push(FieldDivergence {
            path: format!("$.{HOSTILE}"),
            divergent: 20,
            rate: 0.02,
            kinds: BTreeMap::from([("changed".to_string(), 20)]),
        });
        overall.noise_fields.push(NoiseField {
            path: "$.ts".into(),
            noise_rate: 0.9,
            shadow_rate: 0.91,
        });
        overall.missing_fields.push(MissingField {
            path: format!("$.{HOSTILE}"),
            count: 3,
            rate: 0.003,
        });
        overall.errors.shadow_by_kind.insert(HOSTILE.into(), 2);
        overall.drift.push(Drift {
            path: format!("$.{HOSTILE}"),
            kind: "categorical".into(),
            primary_count: 100,
            shadow_count: 90,
            psi: 0.31,
            chi_square: Some([20.0, 1e-5]),
            ks: None,
            bins: vec![
                DriftBin {
                    label: HOSTILE.into(),
                    primary: 60,
                    shadow: 30,
                },
                DriftBin {
                    label: "gold".into(),
                    primary: 40,
                    shadow: 60,
                },
            ],
        });
        let endpoints = vec![
            EndpointReport {
                endpoint: format!("GET /{HOSTILE}"),
                count: 500,
                shadows: BTreeMap::from([("canary".to_string(), stats(500, 25))]),
            },
            EndpointReport {
                endpoint: "POST /predict".into(),
                count: 500,
                shadows: BTreeMap::from([("canary".to_string(), with_llm(stats(500, 5)))]),
            },
        ];
        Report {
            method: Default::default(),
            verdict: Verdict::NoGo,
            reasons: vec![
                Reason {
                    needed_exchanges: None,
                    path: None,
                    criterion: "divergence_rate".into(),
                    endpoint: Some(format!("GET /{HOSTILE}")),
                    shadow: Some("canary".into()),
                    observed: 0.08,
                    threshold: 0.05,
                    passed: false,
                    outcome: Outcome::Fail,
                    detail: format!("see {HOSTILE}"),
                },
                Reason {
                    needed_exchanges: None,
                    path: None,
                    criterion: "p99_latency_ratio".into(),
                    endpoint: None,
                    shadow: Some("canary".into()),
                    observed: f64::NAN,
                    threshold: 2.0,
                    passed: false,
                    outcome: Outcome::Inconclusive,
                    detail: "few answers".into(),
                },
            ],
            exchanges: 1000,
            inputs: vec![format!("/tmp/{HOSTILE}.parquet")],
            shadow_names: vec!["canary".into()],
            primary_source: "live".into(),
            noise_estimated: false,
            overall: BTreeMap::from([("canary".to_string(), overall)]),
            endpoints,
            segments: vec![Segment {
                shadow: "canary".into(),
                dimension: "endpoint".into(),
                value: HOSTILE.into(),
                exchanges: 500,
                divergent: 25,
                rate: 0.05,
                rest_rate: 0.01,
                p_value: 0.001,
            }],
            top_divergences: vec![Example {
                exchange_id: 42,
                shadow: "canary".into(),
                endpoint: format!("GET /{HOSTILE}"),
                method: "GET".into(),
                target: format!("/x?q={HOSTILE}&r=\"'"),
                primary_status: Some(200),
                shadow_status: Some(500),
                differences: vec![Difference {
                    path: "$.html".into(),
                    kind: "changed".into(),
                    primary: HOSTILE.into(),
                    shadow: "<SCRIPT src=https://evil.example/x.js></SCRIPT>".into(),
                }],
            }],
            examples_note: None,
            hints: vec![],
            resources: Default::default(),
            telemetry: Default::default(),
            resources_note: None,
            latency_buckets_ms: vec![1.0, 5.0, 25.0, 125.0, 625.0],
            tokens_per_second_buckets: vec![],
            similarity_buckets: vec![],
            judge: None,
            unpaired_answers: Default::default(),
            not_compared: Default::default(),
        }
    }

    /// Tag names that the renderer itself writes; anything else in the output
    /// would mean captured text became markup.
    const ALLOWED_TAGS: &[&str] = &[
        "!DOCTYPE",
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "main",
        "header",
        "h1",
        "h2",
        "h3",
        "p",
        "ul",
        "li",
        "details",
        "summary",
        "section",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "code",
        "figure",
        "figcaption",
        "svg",
        "rect",
        "line",
        "path",
        "text",
    ];

    fn tag_names(html: &str) -> Vec<&str> {
        html.match_indices('<')
            .map(|(i, _)| {
                let rest = &html[i + 1..];
                let rest = rest.strip_prefix('/').unwrap_or(rest);
                let end = rest
                    .find(|ch: char| ch.is_whitespace() || ch == '>' || ch == '/')
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    /// Writes the sample to $SHADOWCTL_DUMP_HTML for a look in a browser.
    #[test]
    fn dump_sample() {
        if let Ok(path) = std::env::var("SHADOWCTL_DUMP_HTML") {
            std::fs::write(path, render(&sample_report())).unwrap();
        }
    }

    #[test]
    fn no_script_and_only_known_tags() {
        let html = render(&sample_report());
        assert!(!html.to_ascii_lowercase().contains("<script"));
        for t in tag_names(&html) {
            assert!(ALLOWED_TAGS.contains(&t), "unexpected tag <{t}>");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&amp;r=&quot;&#39;"));
    }

    #[test]
    fn self_contained() {
        let html = render(&sample_report());
        for tag in html
            .split('<')
            .skip(1)
            .map(|t| t.split('>').next().unwrap_or(""))
        {
            let lower = tag.to_ascii_lowercase();
            assert!(!lower.contains("src="), "resource in <{tag}>");
            assert!(!lower.contains("href="), "link in <{tag}>");
        }
        let css = &html[html.find("<style>").unwrap()..html.find("</style>").unwrap()];
        assert!(!css.contains("url(") && !css.contains("@import"));
    }

    #[test]
    fn verdict_banner_and_charts() {
        let html = render(&sample_report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains(r#"<header class="banner v-nogo"><h1>shadowctl diff: NO-GO</h1>"#));
        // Overall latency, two endpoint latency charts, divergence bars,
        // drift, time to first token, decode speed, similarity.
        assert_eq!(html.matches("<svg").count(), 8);
        assert!(html.contains("<title>Time to first token of POST /predict</title>"));
        assert!(html.contains("<title>Decode speed of POST /predict</title>"));
        assert!(html.contains("shadow median 800.0 tokens/s"));
        assert!(html.contains("drop 0.200 (0.180 to 0.210)"));
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        assert!(html.contains(PRIMARY) && html.contains(SHADOW));
        assert!(html.contains(">limit 5.00%</text>"));
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn empty_report_renders() {
        let r = Report {
            method: Default::default(),
            verdict: Verdict::Go,
            reasons: vec![],
            exchanges: 0,
            inputs: vec![],
            shadow_names: vec!["s".into()],
            primary_source: String::new(),
            noise_estimated: true,
            overall: BTreeMap::from([("s".to_string(), ShadowStats::default())]),
            endpoints: vec![],
            segments: vec![],
            top_divergences: vec![],
            examples_note: None,
            hints: vec![],
            resources: Default::default(),
            telemetry: Default::default(),
            resources_note: None,
            latency_buckets_ms: vec![],
            tokens_per_second_buckets: vec![],
            similarity_buckets: vec![],
            judge: None,
            unpaired_answers: Default::default(),
            not_compared: Default::default(),
        };
        let html = render(&r);
        assert!(html.contains("v-go") && html.contains("GO"));
        assert!(html.contains("No histogram to draw."));
        assert!(html.ends_with("</main></body></html>\n"));
    }

    #[test]
    fn helpers() {
        assert_eq!(
            esc("<a href='x'>&\"\u{0}"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;\u{FFFD}"
        );
        assert_eq!(nice_ceil(0.034), 0.05);
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(f64::NAN), 1.0);
        assert_eq!(c(f64::NAN), "0");
        let edges = [1.0, 10.0, 100.0];
        assert_eq!(bucket_pos(&edges, 4, 10.0), Some(2.0));
        assert_eq!(bucket_pos(&edges, 4, 1000.0), Some(3.5));
        let mid = bucket_pos(&edges, 4, 31.622_776_6).unwrap();
        assert!((mid - 2.5).abs() < 1e-6);
        assert_eq!(bucket_pos(&edges, 4, f64::NAN), None);
        assert_eq!(shares(&[1, 3], 3), vec![0.25, 0.75, 0.0]);
    }
}
