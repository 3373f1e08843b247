//! `shadowctl diff` on results files built here with known truth: how many
//! exchanges diverge, on which fields, which are noise, what the verdict and
//! exit code must be.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};
use shadowctl::schema::{
    results_schema, results_to_batch, ErrorKind, HeaderList, ParquetFileWriter, ReplayResult,
    TargetRole, WriterConfig, META_TARGETS, RESULTS,
};

/// The model API example of docs/config.md.
const EXAMPLE_CONFIG: &str = include_str!("../testdata/model-api-shadow.toml");

/// One answer: `body` as JSON, answered in `latency_ms`.
fn row(
    id: u64,
    name: &str,
    role: TargetRole,
    endpoint: &str,
    body: &Value,
    latency_ms: f64,
) -> ReplayResult {
    let (method, path) = endpoint.split_once(' ').unwrap();
    let mut headers = HeaderList::new();
    headers.push(b"Content-Type", b"application/json");
    headers.push(b"Date", format!("t{id}{name}").as_bytes());
    let sent = 1_700_000_000_000_000_000 + id as i64 * 1_000_000;
    ReplayResult {
        exchange_id: id,
        flow_id: id,
        target_name: name.into(),
        role: Some(role),
        method: method.into(),
        target: path.into(),
        endpoint: endpoint.into(),
        request_body: b"{\"x\":1}".to_vec(),
        due_ts: sent,
        sent_ts: Some(sent),
        first_byte_ts: Some(sent + 1000),
        done_ts: Some(sent + (latency_ms * 1e6) as i64),
        status: Some(200),
        response_headers: headers,
        response_body: body.to_string().into_bytes(),
        response_body_len: body.to_string().len() as u64,
        ..Default::default()
    }
}

fn write_results(path: &Path, rows: &[ReplayResult], targets: &str) {
    let mut w = ParquetFileWriter::create(path, results_schema(), RESULTS, WriterConfig::default())
        .unwrap();
    for chunk in rows.chunks(700) {
        w.write_batch(&results_to_batch(chunk).unwrap()).unwrap();
    }
    w.finish(vec![(META_TARGETS.to_string(), targets.to_string())])
        .unwrap();
}

/// What one exchange looks like on each side.
struct Case {
    endpoint: &'static str,
    recorded: Value,
    primary: Value,
    shadow: Option<Value>,
    shadow_ms: f64,
}

fn rows_for(cases: &[Case]) -> Vec<ReplayResult> {
    let mut rows = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let id = i as u64;
        rows.push(row(
            id,
            "recorded",
            TargetRole::Recorded,
            c.endpoint,
            &c.recorded,
            2.0,
        ));
        rows.push(row(
            id,
            "primary",
            TargetRole::Primary,
            c.endpoint,
            &c.primary,
            2.0,
        ));
        let mut s = row(
            id,
            "v2",
            TargetRole::Shadow,
            c.endpoint,
            c.shadow.as_ref().unwrap_or(&Value::Null),
            c.shadow_ms,
        );
        if c.shadow.is_none() {
            s.status = None;
            s.response_body.clear();
            s.error_kind = Some(ErrorKind::ConnectRefused);
        }
        rows.push(s);
    }
    rows
}

/// 1,000 POST /predict: the request id differs on every pair of answers
/// (noise), the label differs between primary and shadow in `changed` of them.
fn predict_cases(n: usize, changed: usize) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let body = |rid: String, label: &str| {
                json!({"label": label, "score": 0.25 + (i % 7) as f64 / 10.0, "trace_id": rid.clone(), "request_id": rid})
            };
            let label = if i % 3 == 0 { "cat" } else { "dog" };
            let shadow_label = if i < changed { "bird" } else { label };
            Case {
                endpoint: "POST /predict",
                recorded: body(format!("r{i}"), label),
                primary: body(format!("p{i}"), label),
                shadow: Some(body(format!("s{i}"), shadow_label)),
                shadow_ms: 2.1,
            }
        })
        .collect()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: Value,
    dir: tempfile::TempDir,
}

fn diff(cases: &[Case], config: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.parquet");
    write_results(&results, &rows_for(cases), "recorded,primary,v2");
    diff_files(dir, &[results], config, extra)
}

fn diff_files(dir: tempfile::TempDir, files: &[PathBuf], config: &str, extra: &[&str]) -> Run {
    let cfg = dir.path().join("shadow.toml");
    std::fs::write(&cfg, config).unwrap();
    let json_path = dir.path().join("report.json");
    let out = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("diff")
        .args(files)
        .arg("--config")
        .arg(&cfg)
        .arg("--json")
        .arg(&json_path)
        .args(extra)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
        dir,
    }
}

fn endpoint<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {r}"))
}

fn paths(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn small_divergence_is_go_and_noise_is_named_not_counted() {
    let run = diff(&predict_cases(1000, 20), EXAMPLE_CONFIG, &[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let r = &run.report;
    assert_eq!(r["verdict"], "GO");
    let v2 = &endpoint(r, "POST /predict")["shadows"]["v2"];
    assert_eq!(v2["compared"], 1000);
    assert_eq!(v2["divergent"], 20, "{v2}");
    assert_eq!(paths(&v2["fields"]), ["$.label"]);
    assert_eq!(v2["fields"][0]["divergent"], 20);
    // request_id differs between the two primaries every time: noise.
    assert_eq!(paths(&v2["noise_fields"]), ["$.request_id"]);
    let ci = v2["divergence_ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo < 0.02 && 0.02 < hi && hi < 0.05, "{lo} {hi}");
    // Every reason has the documented keys.
    for reason in r["reasons"].as_array().unwrap() {
        for key in [
            "criterion",
            "endpoint",
            "shadow",
            "observed",
            "threshold",
            "passed",
        ] {
            assert!(reason.get(key).is_some(), "{key} missing in {reason}");
        }
    }
    for key in [
        "divergent",
        "divergence_rate",
        "divergence_ci",
        "fields",
        "noise_fields",
        "errors",
        "latency_ms",
        "drift",
    ] {
        assert!(v2.get(key).is_some(), "{key} missing");
    }
    for side in ["primary", "shadow"] {
        for q in ["p50", "p95", "p99"] {
            assert!(v2["latency_ms"][side][q].as_f64().unwrap() > 1.0);
        }
    }
    assert!(run.stdout.contains("verdict: GO"), "{}", run.stdout);
}

#[test]
fn large_divergence_is_no_go_naming_endpoint_and_field() {
    let run = diff(&predict_cases(1000, 200), EXAMPLE_CONFIG, &[]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let r = &run.report;
    assert_eq!(r["verdict"], "NO-GO");
    let failed: Vec<&Value> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["passed"] == false)
        .collect();
    assert!(failed.iter().any(|x| x["criterion"] == "divergence_rate"
        && x["endpoint"] == "POST /predict"
        && x["shadow"] == "v2"
        && x["observed"].as_f64().unwrap() > 0.19));
    // Drift: 20% of labels became "bird".
    let drift = &endpoint(r, "POST /predict")["shadows"]["v2"]["drift"];
    let label = drift
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "$.label")
        .unwrap();
    assert_eq!(label["kind"], "categorical");
    assert!(label["psi"].as_f64().unwrap() > 0.5, "{label}");
    assert!(label["chi_square"][1].as_f64().unwrap() < 1e-6, "{label}");
    let score = drift
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "$.score")
        .unwrap();
    assert_eq!(score["kind"], "numeric");
    assert!(
        score["ks"][0].as_f64().unwrap() < 0.01,
        "same scores: {score}"
    );
    assert!(run.stdout.contains("NO-GO"));
}

#[test]
fn too_few_exchanges_or_a_dead_shadow_is_inconclusive() {
    let run = diff(&predict_cases(50, 0), EXAMPLE_CONFIG, &[]);
    assert_eq!(run.code, Some(3), "{}", run.stdout);
    assert_eq!(run.report["verdict"], "INCONCLUSIVE");
    let mut dead = predict_cases(500, 0);
    for c in &mut dead {
        c.shadow = None;
    }
    let run = diff(&dead, EXAMPLE_CONFIG, &[]);
    assert_eq!(run.code, Some(3), "{}", run.stdout);
    assert!(run.report["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["criterion"] == "shadow_usable" && x["outcome"] == "inconclusive"));
}

#[test]
fn slower_shadow_and_missing_fields_are_reported() {
    let mut cases = predict_cases(600, 0);
    for (i, c) in cases.iter_mut().enumerate() {
        c.shadow_ms = 2.0 + (i % 100) as f64 * 0.2; // p99 about 21.8 ms vs 2 ms
        if i % 10 == 0 {
            if let Some(Value::Object(m)) = &mut c.shadow {
                m.remove("score");
            }
        }
    }
    let run = diff(&cases, EXAMPLE_CONFIG, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let v2 = &endpoint(&run.report, "POST /predict")["shadows"]["v2"];
    assert_eq!(paths(&v2["missing_fields"]), ["$.score"]);
    assert_eq!(v2["missing_fields"][0]["count"], 60);
    let ratio = v2["latency_ms"]["p99_ratio"].as_f64().unwrap();
    assert!(ratio > 5.0, "{ratio}");
    let latency = run.report["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["criterion"] == "p99_latency_ratio" && x["endpoint"] == "POST /predict")
        .unwrap()
        .clone();
    assert_eq!(latency["passed"], false);
    // The difference is the shadow's, not the slack.
    let detail = latency["detail"].as_str().unwrap();
    assert!(
        detail.contains("ms slower (differences up to 1.0 ms pass)"),
        "{detail}"
    );
    assert!(!detail.contains("shadow 1.00 ms slower"), "{detail}");
}

#[test]
fn top_lists_as_many_examples_as_asked_or_says_why_not() {
    // One kind of divergence (the label) in 40 exchanges: --top 20 lists 20
    // of them, not the 3 kept per kind before.
    let run = diff(&predict_cases(1000, 40), EXAMPLE_CONFIG, &["--top", "20"]);
    let examples = run.report["top_divergences"].as_array().unwrap();
    assert_eq!(examples.len(), 20, "{}", run.stdout);
    assert!(run.report["examples_note"].is_null());
    // Only 4 divergent exchanges: all 4, and the report says that is all.
    let run = diff(&predict_cases(1000, 4), EXAMPLE_CONFIG, &["--top", "20"]);
    assert_eq!(run.report["top_divergences"].as_array().unwrap().len(), 4);
    let note = run.report["examples_note"].as_str().unwrap();
    assert!(
        note.contains("4 examples of the 20 asked for")
            && note.contains("every divergent exchange"),
        "{note}"
    );
}

#[test]
fn shards_merge_to_the_same_numbers_as_the_whole() {
    let cases = predict_cases(900, 90);
    let rows = rows_for(&cases);
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.parquet");
    write_results(&whole, &rows, "recorded,primary,v2");
    let mut shards = Vec::new();
    for k in 0..3u64 {
        let part: Vec<ReplayResult> = rows
            .iter()
            .filter(|r| r.exchange_id % 3 == k)
            .cloned()
            .collect();
        let p = dir.path().join(format!("shard{k}.parquet"));
        write_results(&p, &part, "recorded,primary,v2");
        shards.push(p);
    }
    let a = diff_files(tempfile::tempdir().unwrap(), &[whole], EXAMPLE_CONFIG, &[]);
    let b = diff_files(dir, &shards, EXAMPLE_CONFIG, &[]);
    assert_eq!(a.code, b.code);
    assert_eq!(a.report["exchanges"], 900);
    assert_eq!(a.report["endpoints"], b.report["endpoints"]);
    assert_eq!(a.report["verdict"], b.report["verdict"]);
}

#[test]
fn hostile_content_stays_inert_in_every_report() {
    let evil = "<script>alert(1)</script>";
    let mut cases = predict_cases(300, 0);
    for (i, c) in cases.iter_mut().enumerate().take(40) {
        c.endpoint = "GET /x<script>alert(1)</script>";
        c.shadow = Some(json!({"label": evil, "n": i}));
        c.primary = json!({"label": "ok", "n": i});
        c.recorded = c.primary.clone();
    }
    let run = diff(&cases, EXAMPLE_CONFIG, &[]);
    let d = run.dir.path().to_path_buf();
    let (html, md, xml) = (d.join("r.html"), d.join("r.md"), d.join("r.xml"));
    let run2 = diff_files(
        run.dir,
        &[d.join("results.parquet")],
        EXAMPLE_CONFIG,
        &[
            "--html",
            html.to_str().unwrap(),
            "--markdown",
            md.to_str().unwrap(),
            "--junit",
            xml.to_str().unwrap(),
        ],
    );
    assert_eq!(run2.code, Some(1), "{}", run2.stderr);
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(
        !html.to_ascii_lowercase().contains("<script"),
        "raw script tag in HTML"
    );
    assert!(html.contains("&lt;script&gt;"), "escaped text present");
    assert!(html.contains("<svg"));
    // In Markdown, captured text is either entity-escaped or inside a code
    // span (which GitHub and GitLab show literally, never as HTML).
    let md = std::fs::read_to_string(&md).unwrap();
    for line in md.lines() {
        let outside_code: String = line.split('`').step_by(2).collect();
        assert!(
            !outside_code.contains("<script"),
            "raw script tag in Markdown: {line}"
        );
    }
    assert!(md.contains("NO-GO"));
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert!(!xml.contains("<script"), "raw script tag in JUnit");
    assert!(xml.contains("<testsuite"));
}

#[test]
fn divergences_file_holds_each_divergent_exchange_without_noise() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("div.jsonl");
    let run = diff(
        &predict_cases(400, 10),
        EXAMPLE_CONFIG,
        &["--divergences", jsonl.to_str().unwrap()],
    );
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for l in &lines {
        assert_eq!(paths(&l["differences"]), ["$.label"], "{l}");
        assert_eq!(l["shadow_answer"]["body"]["label"], "bird");
        assert_eq!(l["request"]["method"], "POST");
    }
    assert!(!dir.path().join("div.jsonl.partial").exists());
}

#[test]
fn divergence_concentrated_in_long_inputs_is_found() {
    let mut cases = predict_cases(1000, 0);
    let mut rows;
    // Long requests (every 5th) diverge half the time; short ones never.
    for (i, c) in cases.iter_mut().enumerate() {
        if i % 5 == 0 && i % 10 == 0 {
            c.shadow = Some(json!({"label": "bird", "score": 0.0}));
        }
    }
    rows = rows_for(&cases);
    for r in rows.iter_mut().filter(|r| r.exchange_id % 5 == 0) {
        r.request_body = vec![b'a'; 20_000];
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.parquet");
    write_results(&p, &rows, "recorded,primary,v2");
    let run = diff_files(dir, &[p], EXAMPLE_CONFIG, &[]);
    let seg = run.report["segments"].as_array().unwrap();
    assert!(
        seg.iter()
            .any(|s| s["dimension"] == "request_size" && s["value"] == "10-100 KiB"),
        "{seg:?}"
    );
}

#[test]
fn bad_input_is_exit_2_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.parquet");
    let run = diff_files(tempfile::tempdir().unwrap(), &[missing], "", &[]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("nope.parquet"), "{}", run.stderr);
    let run = diff(&predict_cases(10, 0), "[gate]\nmax_divergence = 1\n", &[]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("max_divergence"), "{}", run.stderr);
    // A capture file is not a results file.
    let cap = dir.path().join("cap.parquet");
    let w = shadowctl::schema::ExchangeFileWriter::create(&cap, WriterConfig::default()).unwrap();
    w.finish(vec![]).unwrap();
    let run = diff_files(tempfile::tempdir().unwrap(), &[cap], "", &[]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("not a shadowctl results file"),
        "{}",
        run.stderr
    );
}

/// Rows given twice in one file would count every figure twice; a later
/// file with no primary would be dropped unseen. Both are exit 2, named.
#[test]
fn repeated_rows_and_a_later_file_without_primary_are_errors() {
    let rows = rows_for(&predict_cases(20, 0));
    let dir = tempfile::tempdir().unwrap();
    let twice = dir.path().join("twice.parquet");
    let doubled: Vec<ReplayResult> = rows.iter().chain(rows.iter()).cloned().collect();
    write_results(&twice, &doubled, "primary,shadow");
    let run = diff_files(tempfile::tempdir().unwrap(), &[twice], "", &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("has two rows"), "{}", run.stderr);

    let whole = dir.path().join("whole.parquet");
    write_results(&whole, &rows, "primary,shadow");
    let shadow_only = dir.path().join("shadow-only.parquet");
    let mut late: Vec<ReplayResult> = rows
        .iter()
        .filter(|r| r.role == Some(TargetRole::Shadow))
        .cloned()
        .collect();
    for r in &mut late {
        r.exchange_id += 1000;
    }
    write_results(&shadow_only, &late, "shadow");
    let run = diff_files(tempfile::tempdir().unwrap(), &[whole, shadow_only], "", &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("shadow-only.parquet") && run.stderr.contains("without a primary"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_field_differing_everywhere_without_noise_estimate_gets_the_ignore_hint() {
    // Recorded primary only: request_id differs on every exchange and
    // nothing can tell it is noise. diff says so, with the rule to add.
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.parquet");
    let rows: Vec<ReplayResult> = rows_for(&predict_cases(300, 0))
        .into_iter()
        .filter(|r| r.role != Some(TargetRole::Primary))
        .collect();
    write_results(&results, &rows, "recorded,v2");
    let run = diff_files(dir, std::slice::from_ref(&results), EXAMPLE_CONFIG, &[]);
    assert_eq!(run.report["noise_estimated"], false);
    let hints = run.report["hints"].as_array().unwrap();
    assert_eq!(hints.len(), 1, "{hints:?}");
    let hint = hints[0].as_str().unwrap();
    assert!(
        hint.starts_with("$.request_id differs in 100% of POST /predict exchanges")
            && hint.contains(
                r#"[[rule]] endpoint = "POST /predict" path = "$.request_id" compare = "ignore""#
            ),
        "{hint}"
    );
    assert!(
        run.stdout.contains("hint: $.request_id differs"),
        "{}",
        run.stdout
    );
    // With the rule the hint gives, the field is ignored and the hint gone.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{EXAMPLE_CONFIG}\n[[rule]]\nendpoint = \"POST /predict\"\npath = \"$.request_id\"\ncompare = \"ignore\"\n"
    );
    let run = diff_files(dir, &[results], &config, &[]);
    assert_eq!(run.report["hints"].as_array().unwrap().len(), 0);
    let v2 = &endpoint(&run.report, "POST /predict")["shadows"]["v2"];
    assert!(paths(&v2["fields"]).is_empty(), "{}", v2["fields"]);
}

/// A rule whose endpoint glob names no endpoint of the run does nothing;
/// the report says so, with the names the run has.
#[test]
fn a_rule_for_an_endpoint_the_run_never_saw_gets_a_hint() {
    let config = format!(
        "{EXAMPLE_CONFIG}\n[[rule]]\nendpoint = \"POST /predcit\"\npath = \"$.request_id\"\ncompare = \"ignore\"\n\n[[rule]]\nendpoint = \"POST /pred*\"\npath = \"$.trace_id\"\ncompare = \"ignore\"\n"
    );
    let run = diff(&predict_cases(60, 0), &config, &[]);
    let hints: Vec<&str> = run.report["hints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|h| h.starts_with("config:"))
        .collect();
    assert_eq!(hints.len(), 1, "{hints:?}");
    // Rules for endpoints this run lacks (the example's /embed, /generate)
    // are no typo: no hint for them.
    assert!(
        hints[0].contains("\"POST /predcit\"")
            && hints[0].contains("did you mean \"POST /predict\""),
        "{}",
        hints[0]
    );
    assert!(run.stdout.contains("POST /predcit"), "{}", run.stdout);
}

#[test]
fn an_undecided_divergence_says_how_many_more_exchanges_would_decide() {
    // 14 of 400 (3.5%) against a 5% limit: the interval straddles it.
    let run = diff(&predict_cases(400, 14), EXAMPLE_CONFIG, &[]);
    assert_eq!(run.code, Some(3), "{}", run.stdout);
    let r = run.report["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["criterion"] == "divergence_rate" && r["endpoint"] == "POST /predict")
        .unwrap()
        .clone();
    assert_eq!(r["outcome"], "inconclusive");
    let more = r["needed_exchanges"].as_u64().unwrap();
    assert!(more > 0 && more < 5000, "{r}");
    let detail = r["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "about {more} more exchanges of POST /predict would decide"
        )),
        "{detail}"
    );
    assert!(
        run.stdout
            .contains("more exchanges of POST /predict would decide"),
        "{}",
        run.stdout
    );
    // A decided criterion carries no such number.
    let decided = diff(&predict_cases(1000, 100), EXAMPLE_CONFIG, &[]);
    assert!(decided.report["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] != "inconclusive")
        .all(|r| r["needed_exchanges"].is_null()));
}

/// Five endpoints of 400 exchanges; one diverges in 30 (7.5%) against a 5%
/// limit, the others never. At 95% alone that endpoint fails; Bonferroni
/// holds each of the five at 99%, where it is undecided; Holm decides the
/// four clean endpoints first and then judges it at 95% again, so it fails.
/// The report names the correction in every case.
#[test]
fn family_wise_correction_is_applied_and_named() {
    const ENDPOINTS: [&str; 5] = ["POST /a", "POST /b", "POST /c", "POST /d", "POST /e"];
    let cases: Vec<Case> = (0..2000)
        .map(|i| {
            let endpoint = ENDPOINTS[i % 5];
            let body = json!({"label": "cat", "trace_id": format!("t{i}")});
            let shadow = if endpoint == "POST /a" && i / 5 < 30 {
                json!({"label": "dog", "trace_id": format!("t{i}")})
            } else {
                body.clone()
            };
            Case {
                endpoint,
                recorded: body.clone(),
                primary: body,
                shadow: Some(shadow),
                shadow_ms: 2.0,
            }
        })
        .collect();
    let config = |fw: &str| {
        format!("{EXAMPLE_CONFIG}\n").replacen(
            "[gate]\n",
            &format!("[gate]\nfamily_wise = \"{fw}\"\n"),
            1,
        )
    };
    for (fw, code, outcome, level) in [
        ("none", 1, "fail", "95% CI"),
        ("bonferroni", 3, "inconclusive", "99% CI"),
        ("holm", 1, "fail", "95% CI"),
    ] {
        let run = diff(&cases, &config(fw), &[]);
        assert_eq!(run.code, Some(code), "{fw}: {}", run.stdout);
        assert_eq!(run.report["method"]["family_wise"], fw);
        assert_eq!(run.report["method"]["family_size"], 5);
        let a = run.report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["criterion"] == "divergence_rate" && x["endpoint"] == "POST /a")
            .unwrap()
            .clone();
        assert_eq!(a["outcome"], outcome, "{fw}: {a}");
        assert!(a["detail"].as_str().unwrap().contains(level), "{fw}: {a}");
        assert!(run.stdout.contains("method: fixed-sample intervals"));
        if fw == "bonferroni" {
            assert!(a["needed_exchanges"].as_u64().unwrap() > 0, "{a}");
            assert!(
                run.stdout.contains("UNDECIDED divergence_rate [POST /a]"),
                "{}",
                run.stdout
            );
        }
    }
}

/// Past 5,000 distinct endpoints, later ones are reported together as
/// "(other endpoints)" (bounded memory), but each exchange is still
/// compared by the rules of its own endpoint: a rule for an endpoint that
/// comes late must not stop applying because many came before it.
#[test]
fn endpoints_past_the_report_cap_keep_their_own_rules() {
    let config = "[gate]\nmax_divergence_rate = 0.05\nmin_exchanges = 200\n\n[headers]\nignore = [\"date\"]\n\n[[rule]]\nendpoint = \"POST /late\"\npath = \"$.session\"\ncompare = \"ignore\"\n\n[[rule]]\nendpoint = \"(other endpoints)\"\npath = \"$.label\"\ncompare = \"ignore\"\n";
    let roles = [
        ("recorded", TargetRole::Recorded),
        ("primary", TargetRole::Primary),
        ("v2", TargetRole::Shadow),
    ];
    let mut rows = Vec::new();
    for i in 0..5_000u64 {
        let ep = format!("GET /item-{i}");
        for (name, role) in roles {
            rows.push(row(i, name, role, &ep, &json!({"ok": true}), 2.0));
        }
    }
    // 50 answered alike past the cap (the fast path's), then 300 of an
    // endpoint whose session differs on every shadow answer (ignored by its
    // rule), the label on 15 of them.
    for i in 5_000..5_050u64 {
        for (name, role) in roles {
            let mut r = row(i, name, role, "GET /same", &json!({"ok": 1}), 2.0);
            r.response_headers = HeaderList::new();
            r.response_headers
                .push(b"Content-Type", b"application/json");
            rows.push(r);
        }
    }
    for i in 5_050..5_350u64 {
        let label = if i < 5_065 { "bird" } else { "cat" };
        let primary = json!({"label": "cat", "session": "p"});
        let shadow = json!({"label": label, "session": format!("s{i}")});
        rows.push(row(
            i,
            "recorded",
            TargetRole::Recorded,
            "POST /late",
            &primary,
            2.0,
        ));
        rows.push(row(
            i,
            "primary",
            TargetRole::Primary,
            "POST /late",
            &primary,
            2.0,
        ));
        rows.push(row(i, "v2", TargetRole::Shadow, "POST /late", &shadow, 2.0));
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.parquet");
    write_results(&results, &rows, "recorded,primary,v2");
    let run = diff_files(dir, &[results], config, &[]);
    assert!(
        matches!(run.code, Some(0..=3)),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let other = &endpoint(&run.report, "(other endpoints)")["shadows"]["v2"];
    assert_eq!(other["compared"], 350, "{other}");
    assert_eq!(other["divergent"], 15, "{other}");
    assert_eq!(paths(&other["fields"]), ["$.label"], "{other}");
    // Each exchange past the cap counted once; a rule written for the group
    // applies to nothing (above: $.label still differs), and is said so.
    let hints: Vec<&str> = run.report["hints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        hints
            .iter()
            .any(|h| h.starts_with("350 exchanges are reported together")),
        "{hints:?}"
    );
    assert!(
        hints
            .iter()
            .any(|h| h.contains("names \"(other endpoints)\"") && h.contains("applies to nothing")),
        "{hints:?}"
    );
}
