//! What the shadow costs, end to end: real Python services built on
//! `prometheus_client` (testdata/metrics_app.py) are replayed to while
//! `replay` samples them through their `/metrics` endpoints or through
//! /proc, and `diff` judges CPU per answer, memory growth and telemetry.
//! The shadow burns twice the CPU per request (10 ms against 5 ms of its
//! thread's CPU time), leaks memory at 4 MB/s, and forgot a metric family.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Std, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use shadowctl::schema::{
    read_metrics, Exchange, ExchangeFileWriter, MetricKind, MetricRow, WriterConfig,
};

/// The tests here run one at a time: each runs two services that burn CPU
/// on purpose, and two such pairs at once would overload a 2-core machine
/// and measure the overload.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running metrics_app.py, killed when dropped.
struct App {
    child: Child,
    port: u16,
}

impl App {
    fn start(python: &Path, args: &[&str]) -> App {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/metrics_app.py");
        let mut child = Std::new(python)
            .arg(script)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("metrics_app said {line:?}"));
        App { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` POST /predict requests 20 ms apart on four connections.
fn predict_capture(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("capture.parquet");
    let mut w = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
    let rows: Vec<Exchange> = (0..n)
        .map(|i| {
            let body = format!(r#"{{"text": "t{i}"}}"#).into_bytes();
            let mut ex = Exchange {
                exchange_id: i,
                flow_id: i % 4,
                seq_in_flow: (i / 4) as u32,
                method: "POST".into(),
                target: "/predict".into(),
                http_version: "HTTP/1.1".into(),
                request_ts: 1_700_000_000_000_000_000 + i as i64 * 20_000_000,
                request_body_len: body.len() as u64,
                request_body: body,
                status: Some(200),
                ..Default::default()
            };
            ex.request_end_ts = ex.request_ts;
            ex.request_headers.push(b"Host", b"model.example");
            ex.request_headers
                .push(b"Content-Type", b"application/json");
            ex
        })
        .collect();
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
    path
}

/// Replay `capture` to the two apps at 50/s with `sampling` flags; returns
/// the results file, its metrics file and replay's stdout.
fn replay(
    dir: &Path,
    capture: &Path,
    p: &App,
    s: &App,
    sampling: &[String],
) -> (PathBuf, PathBuf, String) {
    let out = dir.join("results.parquet");
    let run = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("replay")
        .arg(capture)
        .args([
            "--primary",
            &p.url(""),
            "--shadow",
            &format!("v2={}", s.url("")),
        ])
        .args(["--rate", "50", "--metrics-interval", "200ms", "--out"])
        .arg(&out)
        .args(sampling)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    (out, dir.join("results.metrics.parquet"), stdout)
}

fn diff(dir: &Path, files: &[&Path], config: &str) -> (Option<i32>, Value, String) {
    let cfg = dir.join("shadow.toml");
    std::fs::write(&cfg, config).unwrap();
    let json = dir.join("report.json");
    let run = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("diff")
        .args(files)
        .arg("--config")
        .arg(&cfg)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(dir.join("report.html"))
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (
        run.status.code(),
        report,
        String::from_utf8_lossy(&run.stdout).into_owned(),
    )
}

const CONFIG: &str = "[gate]\nmin_exchanges = 100\nmax_memory_growth_mb_per_hour = 1000\nrequire_telemetry_parity = true\n";

/// The shadow's true leak rate in MB/h: the least-squares slope of the
/// bytes it says it leaked (its `model_leaked_bytes` gauge, read in the
/// same scrapes as its memory) over the window diff fits, after warm-up.
fn true_leak_mb_per_hour(rows: &[MetricRow]) -> f64 {
    let leaked: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| {
            r.target == "v2" && r.family == "model_leaked_bytes" && r.kind == MetricKind::Sample
        })
        .map(|r| (r.ts as f64 / 3.6e12, r.value.unwrap() / 1e6))
        .collect();
    assert!(leaked.len() > 10, "{} readings of the leak", leaked.len());
    let (first, last) = (leaked[0].0, leaked[leaked.len() - 1].0);
    let kept: Vec<&(f64, f64)> = leaked
        .iter()
        .filter(|p| p.0 >= first + (last - first) / 5.0)
        .collect();
    let n = kept.len() as f64;
    let (mx, my) = (
        kept.iter().map(|p| p.0).sum::<f64>() / n,
        kept.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = kept.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = kept.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

fn reason<'a>(report: &'a Value, criterion: &str) -> &'a Value {
    report["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["criterion"] == criterion)
        .unwrap_or_else(|| panic!("no {criterion} reason"))
}

fn cpu_ratio(report: &Value) -> f64 {
    let r = &report["resources"];
    r["v2"]["cpu_ms_per_request"].as_f64().unwrap()
        / r["primary"]["cpu_ms_per_request"].as_f64().unwrap()
}

#[test]
fn cpu_leak_and_missing_telemetry_through_prometheus_endpoints() {
    let Some(python) = common::python_with(&["prometheus_client"]) else {
        return;
    };
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let capture = predict_capture(dir.path(), 400);
    let p = App::start(&python, &["--variant", "primary"]);
    let s = App::start(&python, &["--variant", "shadow", "--leak-mb-per-s", "4"]);
    let sampling = [
        format!("--metrics=primary={}", p.url("/metrics")),
        format!("--metrics=v2={}", s.url("/metrics")),
        "--metrics-family=model_leaked_bytes".to_string(),
    ];
    let (results, metrics, stdout) = replay(dir.path(), &capture, &p, &s, &sampling);
    let rows = read_metrics(&metrics).unwrap();
    // A scrape may be late now and then on a busy machine (both services
    // burn CPU); most must succeed.
    let failed = rows.iter().filter(|r| r.kind == MetricKind::Error).count();
    assert!(failed <= 5, "{failed} failed scrapes\n{stdout}");
    let (code, report, out) = diff(dir.path(), &[&results, &metrics], CONFIG);
    assert_eq!(code, Some(1), "{out}");
    // CPU per answer: 10 ms against 5 ms of burning, within 20%.
    let ratio = cpu_ratio(&report);
    assert!((ratio / 2.0 - 1.0).abs() < 0.2, "CPU ratio {ratio}\n{out}");
    assert_eq!(reason(&report, "cpu_per_request_ratio")["outcome"], "fail");
    // The leak: the shadow's interval holds the true leak rate, give or
    // take what the interpreter grows by itself beside it (up to 1% of the
    // rate here; the primary, with no leak, grows under 0.2 MB per second).
    let truth = true_leak_mb_per_hour(&rows) * (49.0 * 4096.0) / (49.0 * 4096.0 - 64.0);
    let ci = |t: &str| {
        let g = &report["resources"][t]["memory_growth_mb_per_hour"]["ci"];
        (g[0].as_f64().unwrap(), g[1].as_f64().unwrap())
    };
    let ((slo, shi), (plo, phi)) = (ci("v2"), ci("primary"));
    assert!(
        slo <= truth * 1.01 && truth * 0.995 <= shi,
        "true leak {truth:.0} MB/h against shadow {slo:.0}..{shi:.0} (primary {plo:.0}..{phi:.0})\n{out}"
    );
    assert_eq!(reason(&report, "memory_growth")["outcome"], "fail");
    // No leak in the primary: its growth interval stays below the limit
    // the shadow fails (1000 MB/h).
    assert!(phi < 1000.0, "primary growth {plo:.0}..{phi:.0}\n{out}");
    // The family the shadow forgot is named, and parity (required) fails.
    assert_eq!(
        report["telemetry"]["v2"]["missing_in_shadow"],
        serde_json::json!(["model_predictions"])
    );
    assert_eq!(reason(&report, "telemetry_parity")["outcome"], "fail");
    assert!(
        out.contains("telemetry v2: missing model_predictions"),
        "{out}"
    );
    // The HTML report draws CPU and memory over time.
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("CPU cores over the replay") && html.contains("<polyline"));
}

/// A node-wide cAdvisor endpoint (kubelet's `/metrics/cadvisor` layout,
/// served by a prometheus_client app): `--metrics-select` keeps the
/// target's pod, and diff sums its containers only, not the pod's own
/// cgroup or its pause container beside them, and not the exporter's own
/// `process_*`, so the CPU per answer is the container's own: 5 ms burnt a
/// request, not twice that, and the shadow's 10 ms against it.
#[test]
fn container_cpu_from_a_node_wide_cadvisor_endpoint_is_the_selected_pods() {
    let Some(python) = common::python_with(&["prometheus_client"]) else {
        return;
    };
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let capture = predict_capture(dir.path(), 300);
    let p = App::start(
        &python,
        &["--variant", "primary", "--cadvisor", "model-v1-0"],
    );
    let s = App::start(
        &python,
        &["--variant", "shadow", "--cadvisor", "model-v2-0"],
    );
    let sampling = [
        format!("--metrics=primary={}", p.url("/metrics")),
        format!("--metrics=v2={}", s.url("/metrics")),
        r#"--metrics-select=primary={pod="model-v1-0"}"#.to_string(),
        // Lets the root cgroup and the exporter's own process_* through.
        r#"--metrics-select=v2={pod!~"other-\\d+"}"#.to_string(),
    ];
    let (results, metrics, stdout) = replay(dir.path(), &capture, &p, &s, &sampling);
    let rows = read_metrics(&metrics).unwrap();
    let pods: std::collections::BTreeSet<(&str, &str)> = rows
        .iter()
        .filter(|r| r.kind == MetricKind::Sample && r.family.starts_with("container_"))
        .map(|r| {
            let pod = r
                .labels
                .iter()
                .find(|(k, _)| k == "pod")
                .map_or("", |(_, v)| v.as_str());
            (r.target.as_str(), pod)
        })
        .collect();
    // The neighbour is never kept; for the primary, nor the root cgroup.
    assert_eq!(
        pods.into_iter().collect::<Vec<_>>(),
        [("primary", "model-v1-0"), ("v2", ""), ("v2", "model-v2-0")],
        "{stdout}"
    );
    let (_, report, out) = diff(
        dir.path(),
        &[&results, &metrics],
        "[gate]\nmin_exchanges = 100\n",
    );
    let res = &report["resources"];
    let primary = res["primary"]["cpu_ms_per_request"].as_f64().unwrap();
    // 5 ms burnt, plus the interpreter's own work for each request; the
    // pod cgroup summed in would make it 10 or more.
    assert!((5.0..8.0).contains(&primary), "primary {primary} ms\n{out}");
    let ratio = cpu_ratio(&report);
    assert!((ratio / 2.0 - 1.0).abs() < 0.2, "CPU ratio {ratio}\n{out}");
    // The container's resident memory (about 25-40 MB): not the pod
    // cgroup's or the pause container's beside it (100 MB more each), nor
    // the exporter's own 50 MB.
    let mb = res["primary"]["memory_peak_mb"].as_f64().unwrap();
    assert!((10.0..80.0).contains(&mb), "memory {mb} MB\n{out}");
}

#[test]
fn cpu_and_leak_through_the_process_tree() {
    let Some(python) = common::python_with(&["prometheus_client"]) else {
        return;
    };
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let capture = predict_capture(dir.path(), 400);
    let p = App::start(&python, &["--variant", "primary"]);
    let s = App::start(&python, &["--variant", "shadow", "--leak-mb-per-s", "4"]);
    let sampling = [
        format!("--pid=primary={}", p.child.id()),
        format!("--pid=v2={}", s.child.id()),
    ];
    let (results, metrics, _) = replay(dir.path(), &capture, &p, &s, &sampling);
    let (_, report, out) = diff(dir.path(), &[&results, &metrics], CONFIG);
    assert_eq!(report["resources"]["v2"]["source"], "pid");
    // The apps run as this user: every member's PSS can be read.
    for t in ["primary", "v2"] {
        assert_eq!(report["resources"][t]["memory_measure"], "pss", "{t}");
    }
    let ratio = cpu_ratio(&report);
    assert!((ratio / 2.0 - 1.0).abs() < 0.2, "CPU ratio {ratio}\n{out}");
    // 4 MB/s is 14,400 MB/h; /proc sees the same pages.
    let g = &report["resources"]["v2"]["memory_growth_mb_per_hour"];
    let slope = g["slope"].as_f64().unwrap();
    assert!((slope / 14_400.0 - 1.0).abs() < 0.1, "{g}\n{out}");
    assert_eq!(reason(&report, "memory_growth")["outcome"], "fail");
    // No telemetry from /proc: parity cannot be judged, and says so.
    assert_eq!(
        reason(&report, "telemetry_parity")["outcome"],
        "inconclusive"
    );
}

#[test]
fn a_hanging_or_garbage_metrics_endpoint_never_stops_the_replay() {
    let Some(python) = common::python_with(&["prometheus_client"]) else {
        return;
    };
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let capture = predict_capture(dir.path(), 100);
    let p = App::start(
        &python,
        &["--variant", "primary", "--metrics-mode", "garbage"],
    );
    let s = App::start(&python, &["--variant", "shadow", "--metrics-mode", "hang"]);
    let sampling = [
        format!("--metrics=primary={}", p.url("/metrics")),
        format!("--metrics=v2={}", s.url("/metrics")),
    ];
    let (results, metrics, stdout) = replay(dir.path(), &capture, &p, &s, &sampling);
    // Every request answered, on schedule, and the failures counted.
    let answered = shadowctl::schema::read_results(&results)
        .unwrap()
        .iter()
        .filter(|r| r.target_name != "recorded" && r.status == Some(200))
        .count();
    assert_eq!(answered, 200, "{stdout}");
    let rows = read_metrics(&metrics).unwrap();
    let errors = |t: &str| {
        rows.iter()
            .filter(|r| r.target == t && r.kind == MetricKind::Error)
            .map(|r| r.detail.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let (garbage, hang) = (errors("primary"), errors("v2"));
    let said = |v: &[String], what: &str| v.iter().filter(|d| d.contains(what)).count();
    assert!(
        said(&garbage, "not the Prometheus exposition format") >= 5,
        "{garbage:?}"
    );
    assert!(
        said(&hang, "scrape failed: no answer within 200ms") >= 5,
        "{hang:?}"
    );
    // Nothing else was recorded for them.
    assert!(rows.iter().all(|r| r.kind == MetricKind::Error), "{rows:?}");
    assert!(
        stdout.contains("failed or late scrapes: primary") && stdout.contains("v2 "),
        "{stdout}"
    );
    // diff says nothing could be measured rather than judging on nothing.
    let (_, report, out) = diff(dir.path(), &[&results, &metrics], CONFIG);
    assert_eq!(
        reason(&report, "cpu_per_request_ratio")["outcome"],
        "inconclusive",
        "{out}"
    );
}

/// A replay refused after sampling began leaves both outputs as they were:
/// a new metrics file beside old results would be read as one run.
#[test]
fn a_refused_replay_keeps_the_previous_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let capture = predict_capture(dir.path(), 5);
    let (out, metrics) = (
        dir.path().join("results.parquet"),
        dir.path().join("results.metrics.parquet"),
    );
    std::fs::write(&out, b"previous results").unwrap();
    std::fs::write(&metrics, b"previous metrics").unwrap();
    let run = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("replay")
        .arg(&capture)
        .args(["--primary", "http://127.0.0.1:1"])
        // `primary` is taken: refused once the targets are read.
        .args(["--shadow", "primary=http://127.0.0.1:1"])
        .args(["--metrics", "primary=http://127.0.0.1:1/metrics", "--out"])
        .arg(&out)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("reserved"), "{err}");
    assert_eq!(std::fs::read(&metrics).unwrap(), b"previous metrics");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous results");
    // No temporary file left beside them.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("results"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A cgroup v2 directory with CPU accounting on this machine: the unified
/// hierarchy's root (or its hybrid mount). Containers see their own.
fn cgroup_v2_dir() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("cpu.stat").exists())
}

#[test]
fn a_cgroup_is_sampled_from_its_files() {
    let Some(python) = common::python_with(&["prometheus_client"]) else {
        return;
    };
    let _turn = turn();
    let Some(cgroup) = cgroup_v2_dir() else {
        eprintln!("skipped: no cgroup v2 cpu.stat on this machine");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let capture = predict_capture(dir.path(), 100);
    let p = App::start(&python, &["--variant", "primary"]);
    let s = App::start(&python, &["--variant", "shadow"]);
    let sampling = [format!("--cgroup=primary={}", cgroup.display())];
    let (results, metrics, _) = replay(dir.path(), &capture, &p, &s, &sampling);
    let cpu: Vec<f64> = read_metrics(&metrics)
        .unwrap()
        .iter()
        .filter(|r| r.family == "container_cpu_usage_seconds_total")
        .map(|r| r.value.unwrap())
        .collect();
    // Two seconds of 200 ms readings of a counter that only grows (the
    // services burn CPU meanwhile); a busy machine may skip a few ticks.
    assert!(cpu.len() >= 6, "{cpu:?}");
    assert!(
        cpu.windows(2).all(|w| w[1] >= w[0]) && cpu[cpu.len() - 1] > cpu[0],
        "{cpu:?}"
    );
    let (_, report, out) = diff(dir.path(), &[&results, &metrics], CONFIG);
    let primary = &report["resources"]["primary"];
    assert_eq!(primary["source"], "cgroup", "{out}");
    assert!(
        primary["cpu_cores"]["mean"].as_f64().unwrap() > 0.0,
        "{primary}"
    );
    // Only the primary was sampled: the CPU gate cannot compare, and says so.
    assert!(report["resources"].get("v2").is_none());
    let cpu = reason(&report, "cpu_per_request_ratio");
    assert_eq!(cpu["outcome"], "inconclusive", "{cpu}");
    assert!(
        cpu["detail"]
            .as_str()
            .unwrap()
            .contains("not measured on both sides"),
        "{cpu}"
    );
}
