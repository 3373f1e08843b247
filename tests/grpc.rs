//! gRPC end to end with real grpcio servers (testdata/grpc): a capture of
//! grpcio traffic is replayed over h2c to a live primary and a shadow that
//! differs in known ways, and diff finds exactly those differences, with
//! the descriptor set and without it. Live capture of gRPC on loopback too.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowctl::schema::read_exchanges;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shadowctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadowctl"))
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A grpcio model server (`primary` or `shadow`), on a free port; another
/// test may take the port first, so a few are tried.
fn server(python: &Path, variant: &str) -> Server {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python)
            .arg(root().join("testdata/grpc/grpc_server.py"))
            .args([&port.to_string(), variant])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("grpc server did not start");
        if line.starts_with("listening") {
            return Server(child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("grpc server did not start on any of 5 ports");
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

/// The primary's connections of the grpcio capture (what a capture on the
/// primary's host holds).
fn primary_capture(dir: &Path) -> PathBuf {
    let out = dir.join("capture.parquet");
    let (code, err) = run(shadowctl()
        .args(["capture", "--read"])
        .arg(root().join("testdata/h2/grpc-primary.pcap"))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    out
}

/// The primary's capture replayed to a primary and a shadow server; the
/// results file.
fn replay_capture(dir: &Path, primary: &Server, shadow: &Server) -> PathBuf {
    let capture = primary_capture(dir);
    let results = dir.join("results.parquet");
    let (code, err) = run(shadowctl()
        .arg("replay")
        .arg(&capture)
        .args(["--primary", &format!("http://127.0.0.1:{}", primary.1)])
        .args(["--shadow", &format!("http://127.0.0.1:{}", shadow.1)])
        .arg("--out")
        .arg(&results)
        .arg("--quiet"));
    assert_eq!(code, 0, "{err}");
    results
}

fn diff_json(results: &Path, config: &Path, dir: &Path) -> Value {
    let report = dir.join(format!(
        "{}.json",
        config.file_stem().unwrap().to_string_lossy()
    ));
    let (code, err) = run(shadowctl()
        .arg("diff")
        .arg(results)
        .arg("--config")
        .arg(config)
        .arg("--json")
        .arg(&report));
    assert_eq!(code, 1, "NO-GO expected: {err}");
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

fn endpoint<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
}

fn field_paths(e: &Value) -> Vec<String> {
    e["shadows"]["shadow"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn grpc_capture_replays_over_h2c_and_diff_finds_the_known_differences() {
    let Some(python) = common::python_with(&["grpc", "grpc_tools"]) else {
        return;
    };
    let (primary, shadow) = (server(&python, "primary"), server(&python, "shadow"));
    let dir = tempfile::tempdir().unwrap();
    let results = replay_capture(dir.path(), &primary, &shadow);
    let rows = shadowctl::schema::read_results(&results).unwrap();
    // 60 Predict and 15 Generate calls in the capture, to two live targets.
    let live: Vec<_> = rows
        .iter()
        .filter(|r| r.target_name != "recorded")
        .collect();
    assert_eq!(live.len(), 150);
    for r in &live {
        assert!(r.error_kind.is_none(), "{r:?}");
        assert_eq!(r.status, Some(200));
        assert!(
            r.endpoint.starts_with("gRPC shadowtest.v1.Model/"),
            "{}",
            r.endpoint
        );
        let grpc = shadowctl::diff::grpc::status(&r.response_headers, &r.response_trailers);
        // Every fifth Predict asks top_k 7, which the shadow refuses.
        let refused =
            r.target_name == "shadow" && r.endpoint.ends_with("Predict") && grpc == Some(14);
        assert!(grpc == Some(0) || refused, "{r:?}");
    }
    let unavailable = live
        .iter()
        .filter(|r| {
            shadowctl::diff::grpc::status(&r.response_headers, &r.response_trailers) == Some(14)
        })
        .count();
    assert_eq!(unavailable, 12);

    // With descriptors: fields by name, the score change within tolerance.
    let with = diff_json(
        &results,
        &root().join("testdata/grpc/shadow.toml"),
        dir.path(),
    );
    let predict = endpoint(&with, "gRPC shadowtest.v1.Model/Predict");
    let s = &predict["shadows"]["shadow"];
    assert_eq!(
        s["errors"]["shadow"], 12,
        "UNAVAILABLE counts as an error: {s}"
    );
    assert_eq!(s["errors"]["primary"], 0);
    assert_eq!(s["errors"]["shadow_by_kind"]["grpc_UNAVAILABLE"], 12, "{s}");
    // Scores are within the 1% tolerance and embeddings equal: only the
    // version differs, and the status where the shadow refused (like an
    // HTTP status, it is both an error and a difference).
    assert_eq!(field_paths(predict), vec!["$.model_version", "grpc-status"]);
    assert_eq!(s["divergent"], 60, "every Predict: v2, or UNAVAILABLE");
    let generate = endpoint(&with, "gRPC shadowtest.v1.Model/Generate");
    // A list of messages; prompts with "shadow-diff" get another 2nd token.
    assert_eq!(field_paths(generate), vec!["$[*].text"]);
    assert_eq!(generate["shadows"]["shadow"]["divergent"], 8, "{generate}");

    // Without descriptors: the same differences, by field number.
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        "[gate]\nmax_p99_latency_ratio = inf\nmin_exchanges = 50\n",
    )
    .unwrap();
    let without = diff_json(&results, &bare, dir.path());
    let predict = endpoint(&without, "gRPC shadowtest.v1.Model/Predict");
    let paths = field_paths(predict);
    // model_version is field 2; scores (predictions = 1, score = 2) are
    // fixed32 bits without the schema, so their 0.2% change shows.
    assert_eq!(paths, vec![r#"$["1"][*]["2"]"#, r#"$["2"]"#, "grpc-status"]);
    let generate = endpoint(&without, "gRPC shadowtest.v1.Model/Generate");
    assert_eq!(
        field_paths(generate),
        vec![r#"$[*]["1"]"#],
        "Token.text is field 1"
    );
}

/// A shadow that answers with gzip-compressed messages (grpcio's server
/// compression, for clients that accept it, as the recorded ones do): the
/// diff decodes them and finds the same differences as against the plain
/// shadow, no more.
#[test]
fn gzip_compressed_grpc_answers_are_decoded_and_compared_like_plain_ones() {
    let Some(python) = common::python_with(&["grpc", "grpc_tools"]) else {
        return;
    };
    // Long labels on both sides, so that gzip makes Predict's answers
    // smaller and grpcio does compress them.
    let (primary, shadow) = (
        server(&python, "primary-long"),
        server(&python, "shadow-gzip"),
    );
    let dir = tempfile::tempdir().unwrap();
    let results = replay_capture(dir.path(), &primary, &shadow);
    let rows = shadowctl::schema::read_results(&results).unwrap();
    // The shadow's answers that carry messages say gzip. grpcio sends a
    // message uncompressed when gzip would not make it smaller (Generate's
    // short tokens), so the first message's compressed flag is checked on
    // Predict's answers only.
    let answered: Vec<_> = rows
        .iter()
        .filter(|r| r.target_name == "shadow" && !r.response_body.is_empty())
        .collect();
    assert_eq!(answered.len(), 60 - 12 + 15, "Predict answered, Generate");
    for r in &answered {
        assert_eq!(
            r.response_headers.get("grpc-encoding"),
            Some(&b"gzip"[..]),
            "{r:?}"
        );
        if r.endpoint.ends_with("Predict") {
            assert_eq!(r.response_body[0], 1, "compressed flag: {r:?}");
        }
    }
    for r in rows.iter().filter(|r| r.target_name == "primary") {
        assert!(
            r.response_body.is_empty() || r.response_body[0] == 0,
            "{r:?}"
        );
    }
    let report = diff_json(
        &results,
        &root().join("testdata/grpc/shadow.toml"),
        dir.path(),
    );
    let predict = endpoint(&report, "gRPC shadowtest.v1.Model/Predict");
    assert_eq!(field_paths(predict), vec!["$.model_version", "grpc-status"]);
    assert_eq!(predict["shadows"]["shadow"]["divergent"], 60);
    assert_eq!(predict["shadows"]["shadow"]["errors"]["shadow"], 12);
    let generate = endpoint(&report, "gRPC shadowtest.v1.Model/Generate");
    assert_eq!(field_paths(generate), vec!["$[*].text"]);
    assert_eq!(generate["shadows"]["shadow"]["divergent"], 8, "{generate}");
}

#[test]
fn grpc_is_captured_live_on_loopback() {
    // SAFETY: geteuid has no preconditions.
    if std::env::var_os("SHADOWCTL_SKIP_LIVE").is_some() || unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("SHADOWCTL_SKIP_LIVE").is_some(),
            "live capture needs root (or SHADOWCTL_SKIP_LIVE=1)"
        );
        return;
    }
    let Some(python) = common::python_with(&["grpc", "grpc_tools"]) else {
        return;
    };
    let primary = server(&python, "primary");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.parquet");
    let mut capture = shadowctl()
        .args([
            "capture",
            "--interface",
            "lo",
            "--port",
            &primary.1.to_string(),
            "--out",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = capture.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("capturing on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("capture did not start");
    let client = Command::new(&python)
        .arg(root().join("testdata/grpc/grpc_client.py"))
        .args([&primary.1.to_string(), "20"])
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&client.stdout).trim(), "done 25");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while capture.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "capture did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = read_exchanges(&out).unwrap().0;
    assert_eq!(rows.len(), 25, "20 Predict and 5 Generate calls");
    for r in &rows {
        assert!(r.incomplete.is_none(), "{r:?}");
        assert_eq!(r.http_version, "HTTP/2");
        assert_eq!(r.stream_id.unwrap() % 2, 1, "client streams are odd");
        assert_eq!(
            shadowctl::diff::grpc::status(&r.response_headers, &r.response_trailers),
            Some(0)
        );
        let messages = shadowctl::proto::h2::grpc::messages(&r.response_body, None).unwrap();
        let want = if r.target.ends_with("Generate") { 5 } else { 1 };
        assert_eq!(messages.len(), want, "{r:?}");
    }
}
