//! Markdown rendering of a [`Report`], for a pull-request comment or a CI job
//! summary (GitHub-flavoured Markdown: pipe tables, code spans, no raw HTML).
//!
//! Everything that came from traffic or configuration goes out through one of
//! two escapers, so it can neither break a table row nor turn into markup:
//! [`code`] (a code span; CommonMark shows code-span content literally, so
//! `<script>` there is text, never HTML) or [`text`] (prose; `<`, `>`, `&`
//! become entities and Markdown punctuation is backslash-escaped).
//!
//! The number formatting helpers here are `pub(super)` because the HTML and
//! JUnit renderers print the same figures and should print them the same way.

use std::fmt::{self, Write};

use super::{clip, Dist, EndpointReport, Example, LatencyMs, Outcome, Reason, Report, ShadowStats};

/// Endpoint rows per shadow: a PR comment must stay readable (and GitHub caps
/// comments at 64 KiB).
const MAX_ENDPOINT_ROWS: usize = 20;
/// Rows of the smaller per-shadow tables (fields, noise, missing, segments).
const MAX_LIST_ROWS: usize = 10;
const MAX_EXAMPLES: usize = 5;
const MAX_DIFFS_PER_EXAMPLE: usize = 5;
/// Captured values are cut to this many characters before display.
const MAX_VALUE_CHARS: usize = 80;
const MAX_TARGET_CHARS: usize = 120;
/// Rows of the reasons table before passes are counted instead of listed.
const MAX_REASON_ROWS: usize = 40;
/// A reason's detail names captured paths and fields: kept to a cell's worth.
const MAX_DETAIL_CHARS: usize = 600;

/// What we print for a figure that does not exist or is not a number.
pub(super) const NA: &str = "n/a";

/// Render the whole report as GitHub-flavoured Markdown.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail; the Result only exists for `?`.
    let _ = write_report(&mut out, r);
    fit_comment(out)
}

/// GitHub refuses a comment over 65,536 characters (`gh pr comment` fails
/// with "body too long"), and every table is already capped: a report of
/// very many endpoints and shadows is cut at a line end, and says so.
const MAX_COMMENT_BYTES: usize = 60_000;

fn fit_comment(mut out: String) -> String {
    if out.len() <= MAX_COMMENT_BYTES {
        return out;
    }
    // Slicing inside a multi-byte character (`–`, `×`, a non-ASCII path)
    // would panic: step back to a character boundary first.
    let mut end = MAX_COMMENT_BYTES;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    let cut = out[..end].rfind('\n').unwrap_or(0);
    out.truncate(cut);
    out.push_str("\n\n_The rest of this report is cut to fit a pull-request comment: the HTML and JSON reports hold all of it._\n");
    out
}

fn write_report(o: &mut String, r: &Report) -> fmt::Result {
    header(o, r)?;
    reasons(o, r)?;
    resources(o, r)?;
    for name in shadow_names(r) {
        shadow_section(o, r, name)?;
    }
    Ok(())
}

/// Verdict heading plus one summary line, so the outcome is visible even when
/// the comment is collapsed to its first lines.
fn header(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "## shadowctl diff: {}", r.verdict.as_str())?;
    writeln!(o)?;
    let shadows: Vec<String> = r.shadow_names.iter().map(|s| code(s)).collect();
    let shadows = if shadows.is_empty() {
        "none".to_string()
    } else {
        shadows.join(", ")
    };
    writeln!(
        o,
        "**{}** exchanges · {} input file(s) · shadows: {} · primary answers: {} · noise estimated: {}",
        int(r.exchanges),
        r.inputs.len(),
        shadows,
        code(&r.primary_source),
        if r.noise_estimated { "yes" } else { "no" },
    )?;
    writeln!(o)?;
    writeln!(o, "{}", r.method.describe())?;
    if let Some(j) = &r.judge {
        writeln!(o)?;
        writeln!(o, "{}", judge_line(j))?;
    }
    writeln!(o)
}

/// The external judge's work in one sentence.
pub(super) fn judge_line(j: &crate::diff::judge::JudgeStats) -> String {
    format!(
        "Judge: {} calls, {} scored, {} failed ({} timeouts, {} restarts)",
        int(j.calls),
        int(j.scored),
        int(j.failed),
        int(j.timeouts),
        int(j.restarts)
    )
}

/// Every reason, failures first, so the rows that decided the verdict lead.
fn reasons(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "### Reasons")?;
    writeln!(o)?;
    if r.reasons.is_empty() {
        writeln!(o, "_No criteria were evaluated._")?;
        return writeln!(o);
    }
    writeln!(
        o,
        "| Criterion | Endpoint | Shadow | Observed | Threshold | Outcome | Detail |"
    )?;
    writeln!(o, "|---|---|---|--:|--:|---|---|")?;
    // Past the cap, passes are counted, not listed: the rows that decided
    // lead, and a comment of many endpoints stays under GitHub's limit.
    let sorted = reasons_by_severity(r);
    let shown = if sorted.len() <= MAX_REASON_ROWS {
        sorted.len()
    } else {
        let open = sorted.iter().filter(|x| x.outcome != Outcome::Pass).count();
        open.min(MAX_REASON_ROWS)
    };
    for reason in &sorted[..shown] {
        let (seen, limit) =
            observed_and_threshold(&reason.criterion, reason.observed, reason.threshold);
        writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            code(&reason.criterion),
            opt_code(reason.endpoint.as_deref()),
            opt_code(reason.shadow.as_deref()),
            seen,
            limit,
            outcome_badge(reason.outcome),
            text(&clip(&reason.detail, MAX_DETAIL_CHARS)),
        )?;
    }
    if sorted.len() > shown {
        let passed = sorted[shown..]
            .iter()
            .filter(|x| x.outcome == Outcome::Pass)
            .count();
        writeln!(o)?;
        writeln!(
            o,
            "_{} more criteria not shown ({} of them passed): the HTML and JSON reports list every one._",
            sorted.len() - shown,
            passed
        )?;
    }
    writeln!(o)?;
    for hint in &r.hints {
        writeln!(o, "> Hint: {}", text(hint))?;
        writeln!(o)?;
    }
    Ok(())
}

/// Everything about one shadow; sections without data are left out.
fn shadow_section(o: &mut String, r: &Report, name: &str) -> fmt::Result {
    writeln!(o, "### Shadow {}", code(name))?;
    writeln!(o)?;
    if let Some(s) = r.overall.get(name) {
        overall_line(o, s)?;
    }
    endpoints_table(o, &endpoint_rows(r, name))?;
    llm_table(o, &endpoint_rows(r, name))?;
    similarity_table(o, &endpoint_rows(r, name))?;
    if let Some(s) = r.overall.get(name) {
        fields_table(o, s)?;
        noise_table(o, s)?;
        missing_table(o, s)?;
        drift_table(o, s)?;
    }
    segments_table(o, r, name)?;
    examples(o, r, name)
}

/// The overall figures for one shadow on one line.
fn overall_line(o: &mut String, s: &ShadowStats) -> fmt::Result {
    let k = &s.by_kind;
    writeln!(
        o,
        "Overall: {} compared · {} divergent{}, {} · by kind: status {}, body {}, header {}, error {} · errors primary/shadow {} / {} · p99 primary/shadow {} / {} ms ({})",
        int(s.compared),
        int(s.divergent),
        s.unjudged_note(int),
        pct_ci(s.divergence_rate, s.divergence_ci),
        int(k.status),
        int(k.body),
        int(k.header),
        int(k.error),
        int(s.errors.primary),
        int(s.errors.shadow),
        p99(&s.latency_ms.primary),
        p99(&s.latency_ms.shadow),
        ratio(s.latency_ms.p99_ratio),
    )?;
    writeln!(o)
}

fn endpoints_table(o: &mut String, rows: &[(&EndpointReport, &ShadowStats)]) -> fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        o,
        "| Endpoint | Compared | Divergent | Rate (95% CI) | Errors P/S | p99 P/S (ms) | Ratio |"
    )?;
    writeln!(o, "|---|--:|--:|--:|--:|--:|--:|")?;
    for (e, s) in rows.iter().take(MAX_ENDPOINT_ROWS) {
        writeln!(
            o,
            "| {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            code(&clip(&e.endpoint, MAX_VALUE_CHARS)),
            int(s.compared),
            int(s.divergent),
            pct_ci(s.divergence_rate, s.divergence_ci),
            int(s.errors.primary),
            int(s.errors.shadow),
            p99(&s.latency_ms.primary),
            p99(&s.latency_ms.shadow),
            ratio(s.latency_ms.p99_ratio),
        )?;
    }
    left_out(o, rows.len(), MAX_ENDPOINT_ROWS, "endpoints")?;
    writeln!(o)
}

/// LLM figures per endpoint: time to first token, gaps, speed, tokens.
fn llm_table(o: &mut String, rows: &[(&EndpointReport, &ShadowStats)]) -> fmt::Result {
    let llm: Vec<_> = rows
        .iter()
        .filter_map(|(e, s)| s.llm.as_ref().map(|l| (e, l)))
        .collect();
    if llm.is_empty() {
        return Ok(());
    }
    writeln!(o, "**LLM answers** (primary / shadow)")?;
    writeln!(o)?;
    writeln!(
        o,
        "| Endpoint | Streamed | TTFT p50 (ms) | TTFT p99 (ms) | Ratio | Inter-token p50 (ms) | Tokens/s p50 | Ratio | Output tokens mean | Ratio | Stop reasons |"
    )?;
    writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")?;
    for (e, l) in llm.iter().take(MAX_ENDPOINT_ROWS) {
        writeln!(
            o,
            "| {} | {} / {} | {} / {} | {} / {} | {} | {} / {} | {} / {} | {} | {} / {} | {} | {} / {} |",
            code(&clip(&e.endpoint, MAX_VALUE_CHARS)),
            int(l.streamed.primary),
            int(l.streamed.shadow),
            ms_of(&l.ttft_ms.primary, l.ttft_ms.primary.p50),
            ms_of(&l.ttft_ms.shadow, l.ttft_ms.shadow.p50),
            ms_of(&l.ttft_ms.primary, l.ttft_ms.primary.p99),
            ms_of(&l.ttft_ms.shadow, l.ttft_ms.shadow.p99),
            ratio(l.ttft_p99_ratio),
            ms_of(&l.inter_token_ms.primary, l.inter_token_ms.primary.p50),
            ms_of(&l.inter_token_ms.shadow, l.inter_token_ms.shadow.p50),
            fixed_of(&l.tokens_per_second.primary, l.tokens_per_second.primary.p50, 1),
            fixed_of(&l.tokens_per_second.shadow, l.tokens_per_second.shadow.p50, 1),
            ratio(l.tokens_per_second_ratio),
            fixed_of(&l.output_tokens.primary, l.output_tokens.primary.mean, 1),
            fixed_of(&l.output_tokens.shadow, l.output_tokens.shadow.mean, 1),
            ratio(l.output_tokens_ratio),
            text(&finish_reasons(&l.finish_reasons.primary)),
            text(&finish_reasons(&l.finish_reasons.shadow)),
        )?;
    }
    left_out(o, llm.len(), MAX_ENDPOINT_ROWS, "endpoints")?;
    writeln!(o)
}

/// Text compared by similarity, beside the primary's similarity to itself.
fn similarity_table(o: &mut String, rows: &[(&EndpointReport, &ShadowStats)]) -> fmt::Result {
    let sims: Vec<_> = rows
        .iter()
        .flat_map(|(e, s)| s.similarity.iter().map(move |x| (e, x)))
        .collect();
    if sims.is_empty() {
        return Ok(());
    }
    writeln!(
        o,
        "**Text similarity** (shadow to primary, beside primary to itself)"
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "| Endpoint | Field | Metric | Shadow median | Primary's own median | Drop (95% CI) | p |"
    )?;
    writeln!(o, "|---|---|---|--:|--:|--:|--:|")?;
    for (e, x) in sims.iter().take(MAX_LIST_ROWS) {
        writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            code(&clip(&e.endpoint, MAX_VALUE_CHARS)),
            code(&clip(&x.path, MAX_VALUE_CHARS)),
            text(&x.metric),
            fixed(x.shadow.p50, 3),
            x.noise.as_ref().map_or(NA.to_string(), |n| fixed(n.p50, 3)),
            similarity_drop(x),
            x.p_value.map_or(NA.to_string(), p_value),
        )?;
    }
    left_out(o, sims.len(), MAX_LIST_ROWS, "similarity rows")?;
    writeln!(o)
}

/// `0.200 (0.188 to 0.210)`, or n/a without a noise sample.
pub(super) fn similarity_drop(x: &crate::report::Similarity) -> String {
    match (x.drop, x.drop_ci) {
        (Some(d), Some([lo, hi])) => {
            format!("{} ({} to {})", fixed(d, 3), fixed(lo, 3), fixed(hi, 3))
        }
        _ => NA.to_string(),
    }
}

/// Stop reasons with their counts, most frequent first.
pub(super) fn finish_reasons(m: &std::collections::BTreeMap<String, u64>) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = v
        .iter()
        .take(SHOWN)
        .map(|(k, n)| format!("{k} {}", int(**n)))
        .collect();
    if v.len() > SHOWN {
        let rest: u64 = v[SHOWN..].iter().map(|(_, n)| **n).sum();
        parts.push(format!("{} others {}", v.len() - SHOWN, int(rest)));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn fields_table(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.fields.is_empty() {
        return Ok(());
    }
    writeln!(o, "**Top divergent fields**")?;
    writeln!(o)?;
    writeln!(o, "| Field | Divergent | Rate | Kinds |")?;
    writeln!(o, "|---|--:|--:|---|")?;
    for f in s.fields.iter().take(MAX_LIST_ROWS) {
        let kinds: Vec<String> = f
            .kinds
            .iter()
            .map(|(k, n)| format!("{} {}", text(k), int(*n)))
            .collect();
        writeln!(
            o,
            "| {} | {} | {} | {} |",
            code(&clip(&f.path, MAX_VALUE_CHARS)),
            int(f.divergent),
            pct(f.rate),
            kinds.join(", "),
        )?;
    }
    left_out(o, s.fields.len(), MAX_LIST_ROWS, "fields")?;
    writeln!(o)
}

fn noise_table(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.noise_fields.is_empty() {
        return Ok(());
    }
    writeln!(
        o,
        "**Noise fields** (also differ between two primary answers; not counted)"
    )?;
    writeln!(o)?;
    writeln!(o, "| Field | Primary vs primary | Primary vs shadow |")?;
    writeln!(o, "|---|--:|--:|")?;
    for f in s.noise_fields.iter().take(MAX_LIST_ROWS) {
        writeln!(
            o,
            "| {} | {} | {} |",
            code(&clip(&f.path, MAX_VALUE_CHARS)),
            pct(f.noise_rate),
            pct(f.shadow_rate),
        )?;
    }
    left_out(o, s.noise_fields.len(), MAX_LIST_ROWS, "noise fields")?;
    writeln!(o)
}

fn missing_table(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.missing_fields.is_empty() {
        return Ok(());
    }
    writeln!(o, "**Missing in shadow**")?;
    writeln!(o)?;
    writeln!(o, "| Field | Count | Rate |")?;
    writeln!(o, "|---|--:|--:|")?;
    for f in s.missing_fields.iter().take(MAX_LIST_ROWS) {
        writeln!(
            o,
            "| {} | {} | {} |",
            code(&clip(&f.path, MAX_VALUE_CHARS)),
            int(f.count),
            pct(f.rate),
        )?;
    }
    left_out(o, s.missing_fields.len(), MAX_LIST_ROWS, "missing fields")?;
    writeln!(o)
}

fn drift_table(o: &mut String, s: &ShadowStats) -> fmt::Result {
    if s.drift.is_empty() {
        return Ok(());
    }
    writeln!(o, "**Drift**")?;
    writeln!(o)?;
    writeln!(o, "| Field | Kind | n P/S | PSI | Test |")?;
    writeln!(o, "|---|---|--:|--:|---|")?;
    for d in &s.drift {
        writeln!(
            o,
            "| {} | {} | {} / {} | {} | {} |",
            code(&clip(&d.path, MAX_VALUE_CHARS)),
            text(&d.kind),
            int(d.primary_count),
            int(d.shadow_count),
            fixed(d.psi, 3),
            drift_test(d.chi_square, d.ks),
        )?;
    }
    writeln!(o)
}

fn segments_table(o: &mut String, r: &Report, name: &str) -> fmt::Result {
    let segs: Vec<_> = r.segments.iter().filter(|s| s.shadow == name).collect();
    if segs.is_empty() {
        return Ok(());
    }
    writeln!(o, "**Significant segments**")?;
    writeln!(o)?;
    writeln!(
        o,
        "| Dimension | Value | Exchanges | Divergent | Rate | Rest | p |"
    )?;
    writeln!(o, "|---|---|--:|--:|--:|--:|--:|")?;
    for s in segs.iter().take(MAX_LIST_ROWS) {
        writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            text(&s.dimension),
            code(&clip(&s.value, MAX_VALUE_CHARS)),
            int(s.exchanges),
            int(s.divergent),
            pct(s.rate),
            pct(s.rest_rate),
            p_value(s.p_value),
        )?;
    }
    left_out(o, segs.len(), MAX_LIST_ROWS, "segments")?;
    writeln!(o)
}

/// Examples as nested lists: one line per exchange, one per difference.
/// Lists (not tables) because values are long and a table would be too wide.
fn examples(o: &mut String, r: &Report, name: &str) -> fmt::Result {
    let ex: Vec<&Example> = r
        .top_divergences
        .iter()
        .filter(|e| e.shadow == name)
        .collect();
    if ex.is_empty() {
        return Ok(());
    }
    writeln!(o, "**Examples**")?;
    writeln!(o)?;
    for e in ex.iter().take(MAX_EXAMPLES) {
        writeln!(
            o,
            "- {} (exchange {}, status {} → {})",
            inline_code(&clip(
                &format!("{} {}", e.method, e.target),
                MAX_TARGET_CHARS
            )),
            e.exchange_id,
            status(e.primary_status),
            status(e.shadow_status),
        )?;
        for d in e.differences.iter().take(MAX_DIFFS_PER_EXAMPLE) {
            writeln!(
                o,
                "  - {}: {} → {} ({})",
                inline_code(&clip(&d.path, MAX_VALUE_CHARS)),
                inline_code(&clip(&d.primary, MAX_VALUE_CHARS)),
                inline_code(&clip(&d.shadow, MAX_VALUE_CHARS)),
                text(&d.kind),
            )?;
        }
        if e.differences.len() > MAX_DIFFS_PER_EXAMPLE {
            writeln!(
                o,
                "  - _{} more differences_",
                e.differences.len() - MAX_DIFFS_PER_EXAMPLE
            )?;
        }
    }
    if ex.len() > MAX_EXAMPLES {
        writeln!(o)?;
        writeln!(
            o,
            "_{} more examples in the HTML and JSON reports (a comment shows {MAX_EXAMPLES})._",
            ex.len() - MAX_EXAMPLES
        )?;
    }
    if let Some(note) = &r.examples_note {
        writeln!(o)?;
        writeln!(o, "_{}_", text(note))?;
    }
    writeln!(o)
}

/// Say how many rows a capped table dropped, so nobody mistakes it for all.
fn left_out(o: &mut String, total: usize, shown: usize, what: &str) -> fmt::Result {
    if total > shown {
        writeln!(o)?;
        writeln!(o, "_{} more {} not shown._", total - shown, what)?;
    }
    Ok(())
}

// ---- escaping -------------------------------------------------------------

/// A value as a code span for a table cell. Backticks are removed (they would
/// end the span), control characters become spaces (a newline would end the
/// table row) and `|` becomes `\|` (the table splitter runs before code spans
/// are recognised). No entities: code-span content is shown literally, so
/// `&lt;` would be displayed as such, and `<` there is never HTML anyway.
pub(super) fn code(s: &str) -> String {
    let clean = strip_for_code(s);
    if clean.trim().is_empty() {
        return "(empty)".to_string();
    }
    format!("`{}`", escape_pipes(&clean))
}

/// A value as a code span outside tables (example lists), where a `|` is
/// ordinary text and must not get a backslash.
fn inline_code(s: &str) -> String {
    let clean = strip_for_code(s);
    if clean.trim().is_empty() {
        return "(empty)".to_string();
    }
    format!("`{clean}`")
}

/// `Some` as a code span, `None` (all endpoints / all shadows) as "all".
fn opt_code(s: Option<&str>) -> String {
    s.map_or_else(|| "all".to_string(), code)
}

fn strip_for_code(s: &str) -> String {
    s.chars()
        .filter(|&c| c != '`')
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `|` as `\|`, keeping GFM's cell splitter from reading a preceding run of
/// backslashes as escapes of each other (`a\\|b` would end the cell at the
/// pipe): the run before a pipe is padded to an even length, so the total
/// before the pipe is odd and the pipe stays escaped. Only an odd run gains a
/// backslash in the display; the table itself can never break.
fn escape_pipes(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut run = 0usize;
    for c in s.chars() {
        if c == '\\' {
            run += 1;
            continue;
        }
        let pad = if c == '|' { run % 2 + 1 } else { 0 };
        out.extend(std::iter::repeat_n('\\', run + pad));
        out.push(c);
        run = 0;
    }
    out.extend(std::iter::repeat_n('\\', run));
    out
}

/// Prose that may contain captured text (reason details, kinds): HTML
/// specials as entities, Markdown punctuation backslash-escaped, line breaks
/// as spaces, so it renders as the same plain text in or out of a table.
/// GitHub finds mentions, issue references and bare links in the rendered
/// text, after escapes are gone: a zero-width space after `@` and `#`, and
/// inside `://` and `www.`, keeps a field name an answer chose from pinging
/// a team, cross-referencing an issue or becoming a link.
pub(super) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut prev = ' ';
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{200B}"),
            '#' => out.push_str("\\#\u{200B}"),
            '/' if prev == ':' => out.push_str("\u{200B}/"),
            '.' if out.len() >= 3
                && out.as_bytes()[out.len() - 3..].eq_ignore_ascii_case(b"www") =>
            {
                out.push_str("\u{200B}.")
            }
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
        prev = c;
    }
    out
}

// ---- shared selection -------------------------------------------------------

/// Shadow names in report order, then any that only appear in the data, so a
/// shadow missing from `shadow_names` is still shown rather than dropped.
pub(super) fn shadow_names(r: &Report) -> Vec<&str> {
    let found = r
        .shadow_names
        .iter()
        .chain(r.overall.keys())
        .chain(r.endpoints.iter().flat_map(|e| e.shadows.keys()))
        .chain(r.segments.iter().map(|s| &s.shadow))
        .chain(r.top_divergences.iter().map(|e| &e.shadow));
    let mut names: Vec<&str> = Vec::new();
    for n in found {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    names
}

/// One shadow's endpoints, highest divergence rate first (NaN last), so a cap
/// on rows keeps the ones worth looking at.
pub(super) fn endpoint_rows<'a>(
    r: &'a Report,
    shadow: &str,
) -> Vec<(&'a EndpointReport, &'a ShadowStats)> {
    let mut rows: Vec<_> = r
        .endpoints
        .iter()
        .filter_map(|e| e.shadows.get(shadow).map(|s| (e, s)))
        .collect();
    let key = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    rows.sort_by(|(ea, a), (eb, b)| {
        key(b.divergence_rate)
            .total_cmp(&key(a.divergence_rate))
            .then(b.divergent.cmp(&a.divergent))
            .then(ea.endpoint.cmp(&eb.endpoint))
    });
    rows
}

/// Reasons with failures first, then inconclusive, then passes (stable, so
/// the engine's order is kept within each group).
pub(super) fn reasons_by_severity(r: &Report) -> Vec<&Reason> {
    let rank = |o: Outcome| match o {
        Outcome::Fail => 0,
        Outcome::Inconclusive => 1,
        Outcome::Pass => 2,
    };
    let mut v: Vec<&Reason> = r.reasons.iter().collect();
    v.sort_by_key(|x| rank(x.outcome));
    v
}

// ---- number formatting ------------------------------------------------------

/// Outcome with the emoji a reviewer scans for.
fn outcome_badge(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "✅ pass",
        Outcome::Fail => "❌ fail",
        Outcome::Inconclusive => "⚠️ inconclusive",
    }
}

/// Lower-case outcome word (HTML classes, JUnit messages).
pub(super) fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Inconclusive => "inconclusive",
    }
}

/// How a criterion's figures are shown.
#[derive(Clone, Copy)]
enum Unit {
    Percent,
    Ratio,
    Fixed3,
    Count,
    Plain,
}

fn unit(criterion: &str) -> Unit {
    match criterion {
        "divergence_rate" | "error_rate_increase" | "not_compared" => Unit::Percent,
        "p99_latency_ratio"
        | "ttft_p99_ratio"
        | "tokens_per_second_ratio"
        | "output_tokens_ratio"
        | "cpu_per_request_ratio"
        | "memory_ratio"
        | "gpu_memory_ratio" => Unit::Ratio,
        "similarity_drop" | "drift_psi" => Unit::Fixed3,
        "judge_failures" | "min_exchanges" | "unpaired_answers" => Unit::Count,
        _ => Unit::Plain,
    }
}

/// A reason's observed value or threshold in the unit of its criterion:
/// rates as percentages, the latency ratio with ×, counts as integers.
pub(super) fn observed(criterion: &str, v: f64) -> String {
    match unit(criterion) {
        Unit::Percent => pct(v),
        Unit::Ratio => ratio(Some(v)),
        Unit::Fixed3 => fixed(v, 3),
        Unit::Count => count(v),
        Unit::Plain => num(v),
    }
}

/// A reason's observed value and threshold, with as many more decimals as
/// it takes to tell them apart: 1.2549 against a limit of 1.25 printed
/// "1.25× | 1.25× | fail", a failure whose figure seemed to equal its limit.
pub(super) fn observed_and_threshold(criterion: &str, v: f64, limit: f64) -> (String, String) {
    let (a, b) = (observed(criterion, v), observed(criterion, limit));
    if a != b || v == limit || !v.is_finite() || !limit.is_finite() {
        return (a, b);
    }
    let u = unit(criterion);
    for d in 3..=9 {
        let (a, b) = (precise(u, v, d), precise(u, limit, d));
        if a != b {
            return (a, b);
        }
    }
    (a, b)
}

fn precise(u: Unit, v: f64, d: usize) -> String {
    match u {
        Unit::Percent => format!("{:.d$}%", v * 100.0),
        Unit::Ratio => format!("{v:.d$}×"),
        _ => format!("{v:.d$}"),
    }
}

/// A fraction as a percentage with 2 decimals.
pub(super) fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2}%", v * 100.0)
    } else {
        NA.to_string()
    }
}

/// A rate with its 95% interval; the interval is dropped if it is not usable.
pub(super) fn pct_ci(rate: f64, ci: [f64; 2]) -> String {
    if !rate.is_finite() {
        return NA.to_string();
    }
    if ci[0].is_finite() && ci[1].is_finite() {
        format!(
            "{:.2}% ({:.2}–{:.2}%)",
            rate * 100.0,
            ci[0] * 100.0,
            ci[1] * 100.0
        )
    } else {
        pct(rate)
    }
}

/// Milliseconds with precision that suits the magnitude.
pub(super) fn ms(v: f64) -> String {
    if !v.is_finite() {
        NA.to_string()
    } else if v.abs() < 10.0 {
        format!("{v:.2}")
    } else if v.abs() < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// p99 of one side; `n/a` when that side had no answers (a 0 p99 would lie).
pub(super) fn p99(l: &LatencyMs) -> String {
    if l.count == 0 {
        NA.to_string()
    } else {
        ms(l.p99)
    }
}

/// A figure of a latency summary, `n/a` when it summarises nothing (a side
/// that never streamed has no TTFT, not one of 0 ms).
pub(super) fn ms_of(l: &LatencyMs, v: f64) -> String {
    if l.count == 0 {
        NA.to_string()
    } else {
        ms(v)
    }
}

/// A figure of a distribution, `n/a` when it holds no value.
pub(super) fn fixed_of(d: &Dist, v: f64, decimals: usize) -> String {
    if d.count == 0 {
        NA.to_string()
    } else {
        fixed(v, decimals)
    }
}

pub(super) fn ratio(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.2}×"),
        _ => NA.to_string(),
    }
}

/// Fixed decimals, `n/a` for NaN and infinities.
pub(super) fn fixed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        NA.to_string()
    }
}

/// A count that arrives as f64 (thresholds), printed as an integer.
fn count(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        num(v)
    }
}

/// Any other number: integers plainly, else up to 4 decimals, trimmed.
pub(super) fn num(v: f64) -> String {
    if !v.is_finite() {
        return NA.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "0" || s == "-0" {
        format!("{v:.1e}")
    } else {
        s.to_string()
    }
}

/// p-values: tiny ones in scientific notation so they do not print as 0.
pub(super) fn p_value(v: f64) -> String {
    if !v.is_finite() {
        NA.to_string()
    } else if v != 0.0 && v.abs() < 1e-4 {
        format!("{v:.1e}")
    } else {
        format!("{v:.4}")
    }
}

/// The drift test that applies: chi-square (categorical) or KS (numeric).
pub(super) fn drift_test(chi: Option<[f64; 2]>, ks: Option<[f64; 2]>) -> String {
    match (chi, ks) {
        (Some([x, p]), _) => format!("χ² {}, p {}", fixed(x, 2), p_value(p)),
        (None, Some([d, p])) => format!("KS D {}, p {}", fixed(d, 3), p_value(p)),
        (None, None) => NA.to_string(),
    }
}

/// Integers with thousands separators, easier to compare at a glance.
pub(super) fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An HTTP status, or "none" when that side gave no answer.
pub(super) fn status(s: Option<u16>) -> String {
    s.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// The cells of one target's resources row (after its name), shared with
/// the HTML table.
pub(super) fn resource_cells(x: &crate::report::Resources) -> Vec<String> {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let pair = |v: &Option<crate::report::MeanP95>, digits: usize| {
        v.as_ref().map_or("–".to_string(), |m| {
            format!("{:.digits$} / {:.digits$}", m.mean, m.p95)
        })
    };
    vec![
        x.source.clone().unwrap_or_else(|| "–".into()),
        pair(&x.cpu_cores, 3),
        opt(x.cpu_ms_per_request, 3),
        opt(x.memory_peak_mb, 1),
        x.memory_growth_mb_per_hour
            .as_ref()
            .map_or("–".to_string(), |g| {
                format!("{:.1} ({:.1} to {:.1})", g.slope, g.ci[0], g.ci[1])
            }),
        pair(&x.gpu_util, 1),
        opt(x.gpu_memory_peak_mb, 0),
        opt(x.capacity_cores_at_peak, 2),
        x.scrape_failures.to_string(),
    ]
}

/// What each target cost (with metrics files), and telemetry parity.
fn resources(o: &mut String, r: &Report) -> fmt::Result {
    if r.resources.is_empty() {
        if let Some(note) = &r.resources_note {
            writeln!(o, "_{}_", text(note))?;
            writeln!(o)?;
        }
        return Ok(());
    }
    writeln!(o, "### Resources")?;
    writeln!(o)?;
    writeln!(
        o,
        "| Target | Source | CPU cores mean / p95 | CPU ms per answer | Memory peak MB | Memory growth MB/h (95% CI) | GPU util % mean / p95 | GPU memory peak MB | Cores at peak | Failed scrapes |"
    )?;
    writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")?;
    for (name, x) in &r.resources {
        let cells: Vec<String> = resource_cells(x).iter().map(|c| text(c)).collect();
        writeln!(o, "| {} | {} |", code(name), cells.join(" | "))?;
    }
    writeln!(o)?;
    for (t, tel) in &r.telemetry {
        let lost: Vec<&String> = tel
            .missing_in_shadow
            .iter()
            .chain(&tel.labels_missing_in_shadow)
            .collect();
        if lost.is_empty() {
            writeln!(
                o,
                "Telemetry of {}: every family and label of the primary is there.",
                code(t)
            )?;
        } else {
            let names: Vec<String> = lost.iter().map(|s| code(s)).collect();
            writeln!(o, "Telemetry of {}: missing {}.", code(t), names.join(", "))?;
        }
        if !tel.added_in_shadow.is_empty() {
            let names: Vec<String> = tel.added_in_shadow.iter().map(|s| code(s)).collect();
            writeln!(o, "New in {}: {}.", code(t), names.join(", "))?;
        }
        writeln!(o)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{
        Difference, Drift, DriftBin, EndpointReport, Example, FieldDivergence, MissingField,
        NoiseField, Outcome, Reason, Report, Segment, ShadowStats, Verdict,
    };
    use super::*;

    const HOSTILE: &str = "<script>alert(1)</script>";

    fn reason(criterion: &str, endpoint: Option<&str>, outcome: Outcome) -> Reason {
        Reason {
            needed_exchanges: None,
            path: None,
            criterion: criterion.into(),
            endpoint: endpoint.map(Into::into),
            shadow: Some("canary".into()),
            observed: 0.034,
            threshold: 0.01,
            passed: outcome == Outcome::Pass,
            outcome,
            detail: format!("rate too high on {HOSTILE} | check it"),
        }
    }

    fn stats(compared: u64, divergent: u64) -> ShadowStats {
        let rate = divergent as f64 / compared.max(1) as f64;
        ShadowStats {
            compared,
            divergent,
            divergence_rate: rate,
            divergence_ci: [rate / 2.0, rate * 2.0],
            ..ShadowStats::default()
        }
    }

    /// A small report with hostile captured text in every traffic field.
    fn sample_report() -> Report {
        let mut overall = stats(1000, 34);
        overall.fields.push(FieldDivergence {
            path: format!("$.{HOSTILE}"),
            divergent: 20,
            rate: 0.02,
            kinds: BTreeMap::from([("changed".to_string(), 20)]),
        });
        overall.noise_fields.push(NoiseField {
            path: "$.ts".into(),
            noise_rate: 0.9,
            shadow_rate: f64::NAN,
        });
        overall.missing_fields.push(MissingField {
            path: "$.a|b".into(),
            count: 3,
            rate: 0.003,
        });
        overall.drift.push(Drift {
            path: "$.tier".into(),
            kind: "categorical".into(),
            primary_count: 10,
            shadow_count: 10,
            psi: f64::NAN,
            chi_square: Some([3.2, 0.07]),
            ks: None,
            bins: vec![DriftBin {
                label: HOSTILE.into(),
                primary: 4,
                shadow: 6,
            }],
        });
        let endpoints = (0..25)
            .map(|i| EndpointReport {
                endpoint: match i {
                    0 => format!("GET /x{HOSTILE}|`y`"),
                    // Backslash runs before a pipe must not unescape it.
                    1 => "GET /a\\|b".to_string(),
                    2 => "GET /a\\\\|b\\".to_string(),
                    _ => format!("GET /e{i}"),
                },
                count: 40,
                // The hostile endpoint diverges most, so it is in the shown rows.
                shadows: BTreeMap::from([(
                    "canary".to_string(),
                    stats(40, if i == 0 { 9 } else { i % 5 }),
                )]),
            })
            .collect();
        Report {
            method: Default::default(),
            verdict: Verdict::NoGo,
            reasons: vec![
                reason("divergence_rate", None, Outcome::Pass),
                reason("divergence_rate", Some("GET /x"), Outcome::Fail),
                reason("p99_latency_ratio", Some(HOSTILE), Outcome::Inconclusive),
            ],
            exchanges: 1234,
            inputs: vec!["results.parquet".into()],
            shadow_names: vec!["canary".into()],
            primary_source: "live".into(),
            noise_estimated: true,
            overall: BTreeMap::from([("canary".to_string(), overall)]),
            endpoints,
            segments: vec![Segment {
                shadow: "canary".into(),
                dimension: "endpoint".into(),
                value: HOSTILE.into(),
                exchanges: 40,
                divergent: 4,
                rate: 0.1,
                rest_rate: 0.01,
                p_value: 1e-7,
            }],
            top_divergences: vec![Example {
                exchange_id: 7,
                shadow: "canary".into(),
                endpoint: "GET /x".into(),
                method: "GET".into(),
                target: format!("/x?q={HOSTILE}"),
                primary_status: Some(200),
                shadow_status: None,
                differences: vec![Difference {
                    path: "$.name".into(),
                    kind: "changed".into(),
                    primary: "\"a`b\"".into(),
                    shadow: HOSTILE.into(),
                }],
            }],
            examples_note: None,
            hints: vec![],
            resources: Default::default(),
            telemetry: Default::default(),
            resources_note: None,
            latency_buckets_ms: vec![1.0, 10.0, 100.0],
            tokens_per_second_buckets: vec![],
            similarity_buckets: vec![],
            judge: None,
            unpaired_answers: Default::default(),
            not_compared: Default::default(),
        }
    }

    /// The line with the text outside code spans, which is what GitHub may
    /// interpret as Markdown or HTML.
    fn outside_code(line: &str) -> String {
        line.split('`').step_by(2).collect()
    }

    /// Writes the sample to $SHADOWCTL_DUMP_MD for a look by eye.
    #[test]
    fn dump_sample() {
        if let Ok(path) = std::env::var("SHADOWCTL_DUMP_MD") {
            std::fs::write(path, render(&sample_report())).unwrap();
        }
    }

    #[test]
    fn heading_and_summary() {
        let md = render(&sample_report());
        assert!(md.starts_with("## shadowctl diff: NO-GO\n"));
        assert!(md.contains("**1,234** exchanges"));
        assert!(md.contains("noise estimated: yes"));
    }

    #[test]
    fn one_table_row_per_reason_failures_first() {
        let md = render(&sample_report());
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| `divergence_rate`") || l.starts_with("| `p99_latency"))
            .collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].contains("❌ fail"));
        assert!(rows[1].contains("⚠️ inconclusive"));
        assert!(rows[2].contains("✅ pass"));
        assert!(rows[2].contains("| all |"));
        assert!(rows[0].contains("3.40%") && rows[0].contains("1.00%"));
    }

    #[test]
    fn hostile_text_cannot_become_html_or_break_rows() {
        let md = render(&sample_report());
        for line in md.lines() {
            let prose = outside_code(line);
            assert!(!prose.contains('<'), "raw < outside code: {line}");
            if line.starts_with('|') {
                // Every table row has the column count of its header.
                let cells = unescaped_pipes(line);
                assert!(
                    cells == 8 || cells == 5 || cells == 4 || cells == 6,
                    "{line}"
                );
            }
        }
        assert!(md.contains("rate too high on &lt;script&gt;alert(1)&lt;/script&gt; \\| check it"));
        // Backticks removed, pipe escaped, inside one code span.
        assert!(md.contains("`GET /x<script>alert(1)</script>\\|y`"));
    }

    #[test]
    fn llm_and_similarity_tables_escape_what_traffic_wrote() {
        let mut r = sample_report();
        let hostile = "x<script>|y";
        let e = r.endpoints.first_mut().unwrap();
        let s = e.shadows.values_mut().next().unwrap();
        let mut l = crate::report::LlmStats::default();
        l.streamed.primary = 10;
        l.ttft_ms.primary.count = 10;
        l.ttft_ms.primary.p50 = 12.5;
        l.ttft_p99_ratio = Some(2.5);
        l.finish_reasons.primary.insert(hostile.into(), 2);
        s.llm = Some(l);
        s.similarity.push(crate::report::Similarity {
            path: "$.text".into(),
            metric: "rouge_l".into(),
            shadow: Default::default(),
            noise: None,
            drop: None,
            drop_ci: None,
            p_value: None,
        });
        let md = render(&r);
        let row = md
            .lines()
            .find(|l| l.contains("2.50×") && l.contains("12.5 "))
            .expect("an LLM row");
        assert_eq!(unescaped_pipes(row), 12, "{row}");
        assert!(!outside_code(row).contains('<'), "{row}");
        let sim = md
            .lines()
            .find(|l| l.contains("`$.text`"))
            .expect("a similarity row");
        assert_eq!(unescaped_pipes(sim), 8, "{sim}");
        assert!(sim.contains("| n/a |"), "{sim}");
    }

    /// Count `|` not preceded by an odd run of backslashes (GFM cell splits).
    fn unescaped_pipes(line: &str) -> usize {
        let mut run = 0usize;
        let mut n = 0;
        for c in line.chars() {
            match c {
                '\\' => run += 1,
                '|' => {
                    if run.is_multiple_of(2) {
                        n += 1;
                    }
                    run = 0;
                }
                _ => run = 0,
            }
        }
        n
    }

    #[test]
    fn endpoint_rows_are_capped_and_counted() {
        let md = render(&sample_report());
        let rows = md.lines().filter(|l| l.starts_with("| `GET /")).count();
        assert_eq!(rows, MAX_ENDPOINT_ROWS);
        assert!(md.contains("_5 more endpoints not shown._"));
    }

    #[test]
    fn nan_and_empty_do_not_panic() {
        let md = render(&sample_report());
        assert!(md.contains("| n/a |"), "NaN PSI printed as n/a");
        let empty = Report {
            method: Default::default(),
            verdict: Verdict::Inconclusive,
            reasons: vec![],
            exchanges: 0,
            inputs: vec![],
            shadow_names: vec![],
            primary_source: String::new(),
            noise_estimated: false,
            overall: BTreeMap::new(),
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
        let md = render(&empty);
        assert!(md.contains("INCONCLUSIVE"));
        assert!(md.contains("_No criteria were evaluated._"));
    }

    /// The terminal's caps keep what decided: failures before undecided
    /// reasons, the most divergent endpoints, and a count of the rest.
    #[test]
    fn terminal_puts_failures_first_and_counts_what_it_leaves_out() {
        let mut r = sample_report();
        r.reasons = (0..30)
            .map(|i| {
                reason(
                    "p99_latency_ratio",
                    Some(&format!("GET /u{i}")),
                    Outcome::Inconclusive,
                )
            })
            .collect();
        r.reasons
            .push(reason("cpu_per_request_ratio", None, Outcome::Fail));
        let mut more = r.endpoints[3].clone();
        more.endpoint = "GET /worst".into();
        more.shadows.insert("canary".into(), stats(40, 30));
        r.endpoints.push(more);
        let out = super::super::terminal::render(&r, false, false);
        let fail = out.find("FAIL cpu_per_request_ratio").expect(&out);
        let undecided = out.find("UNDECIDED").expect(&out);
        assert!(fail < undecided, "{out}");
        assert!(out.contains("… 11 more in the reports"), "{out}");
        assert!(out.contains("GET /worst"), "{out}");
        assert!(out.contains("… 1 more endpoints in the reports"), "{out}");
        // A side without answers has no p99, not one of 0 ms.
        assert!(out.contains("p99 n/a shadow vs n/a primary"), "{out}");
    }

    /// The cut at the comment limit falls inside a multi-byte character.
    #[test]
    fn a_report_cut_inside_a_multi_byte_character_does_not_panic() {
        // "é" is two bytes: one of the two paddings puts the limit inside it.
        for pad in ["", "a"] {
            let line = format!("{pad}{}\n", "é".repeat(40_000));
            let out = fit_comment(line.repeat(2));
            assert!(out.len() <= MAX_COMMENT_BYTES + 200, "{}", out.len());
            assert!(out.ends_with("the HTML and JSON reports hold all of it._\n"));
        }
        let mut r = sample_report();
        r.hints = vec!["é".repeat(40_000), "a".to_string() + &"é".repeat(40_000)];
        assert!(render(&r).ends_with("the HTML and JSON reports hold all of it._\n"));
    }

    /// Hundreds of endpoints with long names: failures first, passes
    /// counted, and the whole under GitHub's comment limit.
    #[test]
    fn a_huge_report_fits_a_pull_request_comment() {
        let mut r = sample_report();
        let long = "/v1/".to_string() + &"segment/".repeat(20);
        r.reasons = (0..300)
            .map(|i| {
                let outcome = if i % 50 == 7 {
                    Outcome::Fail
                } else {
                    Outcome::Pass
                };
                let mut x = reason("divergence_rate", Some(&format!("GET {long}{i}")), outcome);
                x.detail = "d".repeat(2000);
                x
            })
            .collect();
        let shadows: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
        r.shadow_names = shadows.clone();
        for e in &mut r.endpoints {
            e.endpoint = format!("GET {long}{}", e.endpoint);
            let s = e.shadows["canary"].clone();
            for name in &shadows {
                e.shadows.insert(name.clone(), s.clone());
            }
        }
        let md = render(&r);
        assert!(md.chars().count() <= 65_536, "{}", md.len());
        assert_eq!(md.matches("❌ fail").count(), 6, "every failure listed");
        assert!(md.contains("_294 more criteria not shown (294 of them passed)"));
        assert!(md.ends_with("the HTML and JSON reports hold all of it._\n"));
    }

    #[test]
    fn escapers() {
        assert_eq!(escape_pipes("a|b"), "a\\|b");
        assert_eq!(escape_pipes("a\\|b"), "a\\\\\\|b");
        assert_eq!(escape_pipes("a\\\\|b"), "a\\\\\\|b");
        assert_eq!(escape_pipes("a\\b\\"), "a\\b\\");
        assert_eq!(code("``"), "(empty)");
        assert_eq!(code("a\nb"), "`a b`");
        assert_eq!(text("*x* <b>"), "\\*x\\* &lt;b&gt;");
        // Nothing GitHub would turn into a mention, a reference or a link.
        let quiet = text("$.cc @org/security fixes #12, see https://x.io or WWW.x.io");
        for loud in ["@org", "#12", "https://", "WWW.x"] {
            assert!(!quiet.contains(loud), "{loud} in {quiet}");
        }
        let shown: String = quiet
            .chars()
            .filter(|&c| c != '\u{200B}' && c != '\\')
            .collect();
        assert_eq!(
            shown,
            "$.cc @org/security fixes #12, see https://x.io or WWW.x.io"
        );
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(int(0), "0");
        assert_eq!(pct(f64::NAN), "n/a");
        assert_eq!(pct_ci(0.5, [f64::NAN, 1.0]), "50.00%");
        assert_eq!(num(1e-9), "1.0e-9");
        assert_eq!(observed("min_exchanges", 200.0), "200");
        assert_eq!(observed("p99_latency_ratio", f64::INFINITY), "n/a");
    }

    /// A failing figure never prints as its limit.
    #[test]
    fn a_figure_and_its_limit_print_apart_when_they_differ() {
        let pair = observed_and_threshold;
        assert_eq!(
            pair("output_tokens_ratio", 1.2549, 1.25),
            ("1.255×".into(), "1.250×".into())
        );
        assert_eq!(pair("tokens_per_second_ratio", 0.7951, 0.8).0, "0.795×");
        assert_eq!(
            pair("not_compared", 0.01004, 0.01),
            ("1.004%".into(), "1.000%".into())
        );
        assert_eq!(
            pair("p99_latency_ratio", 1.2, 1.5),
            ("1.20×".into(), "1.50×".into())
        );
        assert_eq!(
            pair("divergence_rate", 0.01, 0.01),
            ("1.00%".into(), "1.00%".into())
        );
        assert_eq!(pair("p99_latency_ratio", f64::NAN, 1.5).0, "n/a");
        assert_eq!(
            crate::diff::verdict::apart(1.2549, 1.25),
            ("1.255".into(), "1.250".into())
        );
        assert_eq!(
            crate::diff::verdict::apart(3.0, 1.25),
            ("3.00".into(), "1.25".into())
        );
        assert_eq!(
            crate::diff::verdict::apart(1.25, 1.25),
            ("1.25".into(), "1.25".into())
        );
        assert_eq!(
            crate::diff::verdict::apart_at(0.0100004, 0.01, 3),
            ("0.0100004".into(), "0.0100000".into())
        );
    }
}
