//! The demo's pipeline as a test: the bundled capture of demo traffic is
//! replayed against the demo services (v1 primary, v2 shadow with seeded
//! regressions) started here on 127.0.0.1, and `diff` must say NO-GO naming
//! each regression, and GO when v1 is replayed against itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use shadowctl::demo::{start, Version};

fn shadowctl(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("shadowctl")
        .unwrap()
        .args(args)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap()
}

fn testdata(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
        .display()
        .to_string()
}

/// The pipelines measure latency (the p99 gate): one at a time, so that two
/// replays sharing the 2 cores do not make each other's tail.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// capture -> replay (primary v1, shadow `shadow`) -> diff; the report and exit code.
fn pipeline(dir: &Path, shadow: Version) -> (Option<i32>, Value, String) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cap = dir.join("exchanges.parquet");
    let out = shadowctl(&[
        "capture",
        "-q",
        "--read",
        &testdata("demo-services.pcap"),
        "--out",
        cap.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v1, v2) = (start(Version::V1, 0).unwrap(), start(shadow, 0).unwrap());
    let results: PathBuf = dir.join("results.parquet");
    let out = shadowctl(&[
        "replay",
        cap.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{}", v1.port),
        "--shadow",
        &format!("v2=http://127.0.0.1:{}", v2.port),
        "--rate",
        "1000",
        "--out",
        results.to_str().unwrap(),
        "-q",
        "--metrics",
        &format!("primary=http://127.0.0.1:{}/metrics", v1.port),
        "--metrics",
        &format!("v2=http://127.0.0.1:{}/metrics", v2.port),
        "--metrics-interval",
        "100ms",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = dir.join("report.json");
    let metrics = dir.join("results.metrics.parquet");
    let out = shadowctl(&[
        "diff",
        results.to_str().unwrap(),
        metrics.to_str().unwrap(),
        "--config",
        &testdata("demo-shadow.toml"),
        "--json",
        json.to_str().unwrap(),
    ]);
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A latency regression is named: failed, or (300 answers bound a p99 from
/// above only loosely) undecided with its ratio over the limit and the
/// number of exchanges that would decide it.
/// The criterion did not pass and its observed ratio is above the limit:
/// failed, or inconclusive (300 answers cannot always bound a p99; on a
/// loaded CI host the projection of how many more would decide may be
/// absent too, so it is not required).
fn latency_named(r: &Value, criterion: &str, endpoint: &str) -> bool {
    failed(r, criterion, endpoint).is_some_and(|x| {
        x["outcome"] == "fail"
            || x["outcome"] == "inconclusive"
                && x["observed"].as_f64().unwrap_or(0.0) > x["threshold"].as_f64().unwrap()
    })
}

fn failed<'a>(r: &'a Value, criterion: &str, endpoint: &str) -> Option<&'a Value> {
    r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["criterion"] == criterion && x["endpoint"] == endpoint && x["passed"] == false)
}

fn shadow_stats<'a>(r: &'a Value, endpoint: &str) -> &'a Value {
    let e = r["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap();
    &e["shadows"]["v2"]
}

/// Whether the machine, not the code, was slow during a run: the primary
/// (v1, unchanged) answered `/embed` (0.1 ms of work, no delay) at a p99
/// above 2.5 ms, or its first chat token (seeded at 10 ms) three times slower
/// than seeded. The latency checks below would then measure the stall (a
/// run whose both sides had 12 ms tails hid v2's 4 ms under a p99 ratio of
/// 1.22); such a run is repeated, at most three times in all.
fn stalled(r: &Value) -> bool {
    let embed = shadow_stats(r, "POST /embed")["latency_ms"]["primary"]["p99"]
        .as_f64()
        .unwrap_or(0.0);
    let ttft = shadow_stats(r, "POST /v1/chat/completions")["llm"]["ttft_ms"]["primary"]["p99"]
        .as_f64()
        .unwrap_or(0.0);
    // v2's /embed is seeded 4 ms slower, so a primary p99 above 2.5 ms
    // (its own is a fraction of a millisecond) already hides the ratio.
    embed > 2.5 || ttft > 30.0
}

#[test]
fn v2_is_no_go_with_each_seeded_regression_named() {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let run = pipeline(dir.path(), Version::V2);
        let calm = !stalled(&run.1);
        runs.push(run);
        if calm {
            break;
        }
        eprintln!(
            "the machine stalled during this run (primary p99 far above its seeded latency): again"
        );
    }
    let (code, r, stdout) = runs.pop().unwrap();
    assert!(
        !stalled(&r),
        "the machine stalled in three runs in a row:\n{stdout}"
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(r["verdict"], "NO-GO");
    assert_eq!(r["exchanges"], 1500);
    // 4 times the CPU per inference, measured through the services' own
    // /metrics; and a metric family v2 forgot.
    let cpu = |t: &str| r["resources"][t]["cpu_ms_per_request"].as_f64().unwrap();
    assert!(cpu("v2") / cpu("primary") > 1.3, "{}", r["resources"]);
    assert!(
        r["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["criterion"] == "cpu_per_request_ratio" && x["outcome"] == "fail"),
        "{stdout}"
    );
    assert_eq!(
        r["telemetry"]["v2"]["missing_in_shadow"],
        serde_json::json!(["demo_model_load_seconds"])
    );
    // Changed labels on POST /predict.
    assert!(
        failed(&r, "divergence_rate", "POST /predict").is_some(),
        "{stdout}"
    );
    let predict = shadow_stats(&r, "POST /predict");
    assert_eq!(predict["fields"][0]["path"], "$.label");
    // The flips go one way, so the label distribution drifts: a chi-square
    // test tells it from chance, and the terminal says so.
    let label = predict["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "$.label")
        .unwrap();
    let p = label["chi_square"][1].as_f64().unwrap();
    assert!(p < 0.01, "{label}");
    assert!(label["psi"].as_f64().unwrap() > 0.02, "{label}");
    assert!(stdout.contains("drift $.label (categorical)"), "{stdout}");
    // A field that sometimes goes missing on GET /items/{id}.
    assert!(
        failed(&r, "divergence_rate", "GET /items/{id}").is_some(),
        "{stdout}"
    );
    let items = shadow_stats(&r, "GET /items/{id}");
    assert_eq!(items["missing_fields"][0]["path"], "$.price");
    // Slower on POST /embed, and only there.
    assert!(
        latency_named(&r, "p99_latency_ratio", "POST /embed"),
        "{stdout}"
    );
    assert!(failed(&r, "divergence_rate", "POST /embed").is_none());
    // The request id differs on every answer: named as noise, never counted.
    let noise: Vec<&str> = predict["noise_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(noise, ["$.request_id"]);
    assert!(predict["fields"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["path"] != "$.request_id"));
    // The streamed chat: the first token comes 4.5x later (far enough
    // that a stall of the shared machine in both tails keeps the p99 ratio
    // above 1.5), though the whole
    // answer ends sooner (tokens stream faster), and the wording moves away
    // from v1's more than v1's sampled answers move from each other.
    let chat_ep = "POST /v1/chat/completions";
    assert!(latency_named(&r, "ttft_p99_ratio", chat_ep), "{stdout}");
    assert!(failed(&r, "similarity_drop", chat_ep).is_some(), "{stdout}");
    assert!(
        failed(&r, "p99_latency_ratio", chat_ep).is_none_or(|x| x["outcome"] != "fail"),
        "{stdout}"
    );
    let chat = shadow_stats(&r, chat_ep);
    let llm = &chat["llm"];
    assert_eq!(llm["streamed"]["primary"], 300, "{llm}");
    assert_eq!(llm["streamed"]["shadow"], 300, "{llm}");
    assert!(
        llm["tokens_per_second_ratio"].as_f64().unwrap() > 1.2,
        "{llm}"
    );
    assert_eq!(llm["finish_reasons"]["primary"]["stop"], 300, "{llm}");
    let sim = &chat["similarity"][0];
    assert_eq!(sim["path"], "$.text");
    assert!(sim["drop_ci"][0].as_f64().unwrap() > 0.05, "{sim}");
    // Text that differs in every answer of v1 too is noise, not divergence;
    // what is left is v2's rewrites and cut-short answers.
    let cut: u64 = llm["finish_reasons"]["shadow"]["length"]
        .as_u64()
        .unwrap_or(0);
    assert!((1..=15).contains(&cut), "{llm}");
}

#[test]
fn v1_against_itself_is_go() {
    let dir = tempfile::tempdir().unwrap();
    let (code, r, stdout) = pipeline(dir.path(), Version::V1);
    // Nothing fails. 300 answers per endpoint bound a p99 from above only
    // by their slowest few, so a latency gate may still be undecided;
    // anything else undecided is not. It says how many exchanges would
    // decide it, unless one slow answer (a busy CI machine) put the
    // observed ratio beyond the limit: then it says no count would.
    let open: Vec<&Value> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["outcome"] != "pass")
        .collect();
    for x in &open {
        assert_eq!(x["outcome"], "inconclusive", "{stdout}");
        assert!(
            ["p99_latency_ratio", "ttft_p99_ratio"].contains(&x["criterion"].as_str().unwrap()),
            "{stdout}"
        );
        let detail = x["detail"].as_str().unwrap();
        assert!(
            x["needed_exchanges"].as_u64().is_some()
                || detail.contains("no number of exchanges would decide"),
            "{stdout}"
        );
    }
    let (want_code, want) = if open.is_empty() {
        (0, "GO")
    } else {
        (3, "INCONCLUSIVE")
    };
    assert_eq!(code, Some(want_code), "{stdout}");
    assert_eq!(r["verdict"], want);
    assert_eq!(r["overall"]["v2"]["divergent"], 0, "{stdout}");
    // The same code costs the same: the CPU gate passes, no family missing.
    let cpu = |t: &str| r["resources"][t]["cpu_ms_per_request"].as_f64().unwrap();
    assert!(
        (cpu("v2") / cpu("primary") - 1.0).abs() < 0.3,
        "{}",
        r["resources"]
    );
    assert_eq!(
        r["telemetry"]["v2"]["missing_in_shadow"],
        serde_json::json!([])
    );
    // Sampled chat answers differ from each other, yet v1 passes against
    // itself: the similarity gate compares it with its own noise.
    let chat = shadow_stats(&r, "POST /v1/chat/completions");
    let sim = &chat["similarity"][0];
    assert!(sim["shadow"]["p50"].as_f64().unwrap() < 0.99, "{sim}");
    assert!(sim["drop_ci"][1].as_f64().unwrap() < 0.05, "{sim}");
}
