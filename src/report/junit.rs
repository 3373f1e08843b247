//! JUnit XML rendering of a [`Report`], so CI systems that already show test
//! results (GitLab, Jenkins, test-report actions) show each gate criterion as
//! a test case: failed criteria fail, inconclusive ones are skipped.
//!
//! All content goes through [`xml`], which escapes markup and drops the
//! characters XML 1.0 does not allow at all (a stray control byte in a
//! captured header would otherwise make the whole file unparseable).

use std::fmt::{self, Write};

use super::markdown::{observed_and_threshold, outcome_word};
use super::{Outcome, Reason, Report};

/// Render the report as one JUnit `<testsuite>`.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(2048);
    // Writing into a String cannot fail; the Result only exists for `?`.
    let _ = write_suite(&mut out, r);
    out
}

fn write_suite(o: &mut String, r: &Report) -> fmt::Result {
    let count = |want: Outcome| r.reasons.iter().filter(|x| x.outcome == want).count();
    writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        o,
        r#"<testsuite name="shadowctl diff" tests="{}" failures="{}" errors="0" skipped="{}">"#,
        r.reasons.len(),
        count(Outcome::Fail),
        count(Outcome::Inconclusive),
    )?;
    properties(o, r)?;
    for reason in &r.reasons {
        testcase(o, reason)?;
    }
    writeln!(o, "</testsuite>")
}

/// The verdict and run facts, for tools that display suite properties.
fn properties(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "  <properties>")?;
    let props = [
        ("verdict", r.verdict.as_str().to_string()),
        ("exchanges", r.exchanges.to_string()),
        ("shadows", r.shadow_names.join(", ")),
        ("primary_source", r.primary_source.clone()),
        ("noise_estimated", r.noise_estimated.to_string()),
    ];
    for (name, value) in props {
        writeln!(
            o,
            r#"    <property name="{}" value="{}"/>"#,
            xml(name),
            xml(&value)
        )?;
    }
    writeln!(o, "  </properties>")
}

/// One criterion as one test case. The failure/skip message carries the
/// figures; the failure body and system-out carry the human detail.
fn testcase(o: &mut String, x: &Reason) -> fmt::Result {
    let classname = x.shadow.as_deref().unwrap_or("all");
    let mut name = format!(
        "{} [{}]",
        x.criterion,
        x.endpoint.as_deref().unwrap_or("all")
    );
    // One case per field for per-field criteria: CI servers key cases by
    // class and name, and would fold two fields' failures into one.
    if let Some(path) = &x.path {
        name = format!("{name} {path}");
    }
    let (seen, limit) = observed_and_threshold(&x.criterion, x.observed, x.threshold);
    let figures = format!(
        "{}: observed {seen}, threshold {limit}",
        outcome_word(x.outcome),
    );
    writeln!(
        o,
        r#"  <testcase classname="{}" name="{}" time="0">"#,
        xml(classname),
        xml(&name)
    )?;
    match x.outcome {
        Outcome::Fail => writeln!(
            o,
            r#"    <failure message="{}" type="{}">{}</failure>"#,
            xml(&figures),
            xml(&x.criterion),
            xml(&x.detail)
        )?,
        Outcome::Inconclusive => writeln!(
            o,
            r#"    <skipped message="{}"/>"#,
            xml(&format!("{figures}. {}", x.detail))
        )?,
        Outcome::Pass => {}
    }
    if !x.detail.is_empty() {
        writeln!(o, "    <system-out>{}</system-out>", xml(&x.detail))?;
    }
    writeln!(o, "  </testcase>")
}

/// Escape for XML attribute values and text alike. Tab, newline and CR are
/// written as character references so attribute normalisation keeps them;
/// characters XML 1.0 forbids (other C0 controls, U+FFFE, U+FFFF) are dropped.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if allowed_in_xml(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// The XML 1.0 `Char` production (Rust `char` already excludes surrogates).
fn allowed_in_xml(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Outcome, Reason, Report, Verdict};
    use super::*;

    const HOSTILE: &str = "<script>alert(\"1\") & 'x'</script>\u{1}\u{1b}";

    fn reason(criterion: &str, endpoint: Option<&str>, outcome: Outcome) -> Reason {
        Reason {
            needed_exchanges: None,
            path: None,
            criterion: criterion.into(),
            endpoint: endpoint.map(Into::into),
            shadow: Some(format!("canary{HOSTILE}")),
            observed: 0.05,
            threshold: 0.01,
            passed: outcome == Outcome::Pass,
            outcome,
            detail: format!("look at {HOSTILE}\nnow"),
        }
    }

    fn sample_report() -> Report {
        Report {
            method: Default::default(),
            verdict: Verdict::NoGo,
            reasons: vec![
                reason("min_exchanges", None, Outcome::Pass),
                reason("divergence_rate", Some(HOSTILE), Outcome::Fail),
                reason("divergence_rate", Some("GET /a"), Outcome::Fail),
                reason("p99_latency_ratio", Some("GET /a"), Outcome::Inconclusive),
            ],
            exchanges: 500,
            inputs: vec![],
            shadow_names: vec!["canary".into()],
            primary_source: "recorded".into(),
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
        }
    }

    /// Minimal well-formedness check: every `<name ...>` is closed in order,
    /// self-closing tags are balanced, and nothing but entities uses `&`.
    fn assert_well_formed(x: &str) {
        let body = x
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .unwrap();
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "stray < in {tag}");
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in {tag}"
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name));
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap().to_string();
                stack.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        for (i, _) in x.match_indices('&') {
            let ent = &x[i..x[i..].find(';').map_or(x.len(), |j| i + j + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#9;", "&#10;", "&#13;"]
                    .contains(&ent),
                "bad entity {ent}"
            );
        }
        assert!(!x.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn counts_and_structure() {
        let x = render(&sample_report());
        assert_well_formed(&x);
        assert!(x.contains(
            r#"<testsuite name="shadowctl diff" tests="4" failures="2" errors="0" skipped="1">"#
        ));
        assert_eq!(x.matches("<testcase ").count(), 4);
        assert_eq!(x.matches("<failure ").count(), 2);
        assert_eq!(x.matches("<skipped ").count(), 1);
        assert!(x.contains(r#"name="min_exchanges [all]""#));
        assert!(x.contains(r#"message="fail: observed 5.00%, threshold 1.00%""#));
    }

    #[test]
    fn hostile_content_is_escaped() {
        let x = render(&sample_report());
        assert!(!x.contains("<script"));
        assert!(x.contains(
            "divergence_rate [&lt;script&gt;alert(&quot;1&quot;) &amp; &apos;x&apos;&lt;/script&gt;]"
        ));
        assert!(x.contains("&#10;now"));
        assert!(!x.contains('\u{1}') && !x.contains('\u{1b}'));
    }

    #[test]
    fn per_field_criteria_are_one_case_per_field() {
        let mut r = sample_report();
        r.reasons = ["$.label", "$.score"]
            .map(|p| Reason {
                path: Some(p.into()),
                ..reason("drift_psi", Some("POST /predict"), Outcome::Fail)
            })
            .into();
        let x = render(&r);
        assert!(
            x.contains(r#"name="drift_psi [POST /predict] $.label""#),
            "{x}"
        );
        assert!(
            x.contains(r#"name="drift_psi [POST /predict] $.score""#),
            "{x}"
        );
    }

    #[test]
    fn empty_report() {
        let mut r = sample_report();
        r.reasons.clear();
        let x = render(&r);
        assert_well_formed(&x);
        assert!(x.contains(r#"tests="0" failures="0" errors="0" skipped="0""#));
    }

    #[test]
    fn xml_char_filter() {
        assert_eq!(xml("a\u{0}b\u{FFFE}c\u{7f}"), "abc\u{7f}");
        assert!(allowed_in_xml('\u{10FFFF}'));
    }
}
