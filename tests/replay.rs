//! `shadowctl replay` against real servers on 127.0.0.1 started here: a raw
//! TCP server that records the exact bytes it receives, and servers that
//! hang, reset or answer 10 MB.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use assert_cmd::Command;
use shadowctl::schema::{
    read_results, ErrorKind, Exchange, ExchangeFileWriter, ReplayResult, TargetRole, WriterConfig,
};

/// How a test server answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 with a small JSON body naming the server.
    Answer(&'static str),
    /// Read the request, then say nothing.
    Hang,
    /// Read the request, then close the connection.
    Reset,
    /// 200 with a body of this many bytes.
    Big(usize),
    /// Answer like `Answer("late")`, this long after the request.
    Late(Duration),
    /// Answer like `Answer("idle")`; close a connection idle this long.
    IdleClose(Duration),
}

/// A raw HTTP/1.1 server on 127.0.0.1 recording every request's bytes.
struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

/// One request's bytes: the head, then a body of Content-Length bytes, or
/// chunks up to the last one and the trailer section after it.
fn read_request(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut len = 0usize;
    let mut chunked = false;
    fn line(r: &mut impl BufRead, raw: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        raw.extend_from_slice(&line);
        Some(line)
    }
    loop {
        let line = line(r, &mut raw)?;
        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
        if let Some(v) = text.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        chunked |= text.starts_with("transfer-encoding:") && text.contains("chunked");
        if line == b"\r\n" {
            break;
        }
    }
    if chunked {
        loop {
            let size = line(r, &mut raw)?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&size).trim(), 16).ok()?;
            if size == 0 {
                // Trailer fields up to the empty line.
                while line(r, &mut raw)? != b"\r\n" {}
                return Some(raw);
            }
            let mut data = vec![0; size + 2];
            r.read_exact(&mut data).ok()?;
            raw.extend_from_slice(&data);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    raw.extend_from_slice(&body);
    Some(raw)
}

/// Answer requests on one connection (plain or TLS) as `b` says.
fn serve<S: Read + Write>(conn: S, b: Behaviour, log: &Mutex<Vec<Vec<u8>>>) {
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        log.lock().unwrap().push(req);
        let w = r.get_mut();
        match b {
            Behaviour::Answer(_) | Behaviour::IdleClose(_) => {
                let name = match b {
                    Behaviour::Answer(name) => name,
                    _ => "idle",
                };
                let body = format!("{{\"server\":\"{name}\"}}");
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Server: {name}\r\n\r\n{body}",
                    body.len()
                );
                let _ = w.flush();
            }
            Behaviour::Hang => std::thread::sleep(Duration::from_secs(5)),
            Behaviour::Late(after) => {
                std::thread::sleep(after);
                let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                let _ = w.flush();
            }
            Behaviour::Reset => return,
            Behaviour::Big(n) => {
                let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let chunk = vec![b'z'; 64 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    if w.write_all(&chunk[..k]).is_err() {
                        return;
                    }
                    left -= k;
                }
            }
        }
    }
}

impl Recorder {
    fn start(b: Behaviour) -> Self {
        Self::start_with(b, serve)
    }

    /// The same server behind TLS with a fresh self-signed certificate for
    /// `localhost`; returns the certificate's PEM too.
    /// An https server that would rather speak h2 (it offers `h2` before
    /// `http/1.1` in ALPN); the protocols it agreed on go to the third value.
    fn start_tls(b: Behaviour) -> (Self, String, Arc<Mutex<Vec<String>>>) {
        use tokio_rustls::rustls;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = key.cert.pem();
        let der =
            rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![key.cert.der().clone()], der)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let alpn = Arc::new(Mutex::new(Vec::new()));
        let agreed = Arc::clone(&alpn);
        let rec = Self::start_with(b, move |mut conn, b, log| {
            if let Behaviour::IdleClose(idle) = b {
                conn.set_read_timeout(Some(idle)).unwrap();
            }
            let Ok(mut session) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                return;
            };
            while session.is_handshaking() {
                if session.complete_io(&mut conn).is_err() {
                    return;
                }
            }
            let proto = session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            agreed
                .lock()
                .unwrap()
                .push(proto.unwrap_or_else(|| "none".into()));
            serve(rustls::StreamOwned::new(session, conn), b, log);
        });
        (rec, pem, alpn)
    }

    fn start_with(
        b: Behaviour,
        handle: impl Fn(TcpStream, Behaviour, &Mutex<Vec<Vec<u8>>>) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let handle = Arc::new(handle);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        std::thread::spawn(move || {
            for conn in listener.incoming().take(10_000) {
                let Ok(conn) = conn else { continue };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (log, handle) = (Arc::clone(&log), Arc::clone(&handle));
                std::thread::spawn(move || handle(conn, b, &log));
            }
        });
        Recorder {
            port,
            requests,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

fn demo_capture(dir: &Path) -> PathBuf {
    pcap_capture(dir, "demo", &[])
}

/// `capture` of `testdata/{name}.pcap`, with the default redaction and
/// `extra` arguments.
fn pcap_capture(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.parquet"));
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("testdata/{name}.pcap"));
    Command::cargo_bin("shadowctl")
        .unwrap()
        .args(["capture", "-q", "--read"])
        .arg(input)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .assert()
        .success();
    out
}

/// A capture of `n` GETs /t/{i} on flow i, each recorded at the same
/// moment, with `Host: prod.example` and a 200, then given its own shape by
/// `shape` (the request end follows the request time it sets).
fn shaped_capture(dir: &Path, name: &str, n: u64, shape: impl Fn(u64, &mut Exchange)) -> PathBuf {
    shaped_capture_with(dir, name, n, vec![], shape)
}

/// [`shaped_capture`] with this file metadata.
fn shaped_capture_with(
    dir: &Path,
    name: &str,
    n: u64,
    meta: Vec<(String, String)>,
    shape: impl Fn(u64, &mut Exchange),
) -> PathBuf {
    let path = dir.join(name);
    let mut w = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
    let rows: Vec<Exchange> = (0..n)
        .map(|i| {
            let mut ex = Exchange {
                exchange_id: i,
                flow_id: i,
                method: "GET".into(),
                target: format!("/t/{i}"),
                http_version: "HTTP/1.1".into(),
                request_ts: T0,
                status: Some(200),
                ..Default::default()
            };
            ex.request_headers.push(b"Host", b"prod.example");
            shape(i, &mut ex);
            ex.request_end_ts = ex.request_ts;
            ex
        })
        .collect();
    w.write(&rows).unwrap();
    w.finish(meta).unwrap();
    path
}

/// The capture clock's origin in these tests.
const T0: i64 = 1_700_000_000_000_000_000;

/// A capture of `n` GETs /t/{i}, recorded `gap_ms` apart, each on its own flow
/// `flow_of(i)`.
fn timed_capture(dir: &Path, n: u64, gap_ms: i64, flow_of: impl Fn(u64) -> u64) -> PathBuf {
    shaped_capture(dir, "timed.parquet", n, |i, ex| {
        ex.flow_id = flow_of(i);
        ex.request_ts = T0 + i as i64 * gap_ms * 1_000_000;
    })
}

fn replay(args: &[&str]) -> (std::process::Output, Vec<ReplayResult>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let run = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("replay")
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("-q")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let rows = if out.exists() {
        read_results(&out).unwrap()
    } else {
        Vec::new()
    };
    (run, rows, dir)
}

fn role(rows: &[ReplayResult], r: TargetRole) -> Vec<&ReplayResult> {
    rows.iter().filter(|x| x.role == Some(r)).collect()
}

/// The rows of the target called `name`.
fn named<'a>(rows: &'a [ReplayResult], name: &str) -> Vec<&'a ReplayResult> {
    rows.iter().filter(|x| x.target_name == name).collect()
}

#[test]
fn requests_arrive_byte_exact_with_host_marker_and_secrets_handled() {
    let dir = tempfile::tempdir().unwrap();
    let cap = demo_capture(dir.path());
    let (primary, shadow) = (
        Recorder::start(Behaviour::Answer("v1")),
        Recorder::start(Behaviour::Answer("v2")),
    );
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &primary.url(),
        "--shadow",
        &format!("v2={}", shadow.url()),
        "--max",
        "--concurrency",
        "1",
        "--include",
        "POST /predict",
        "--header",
        "Authorization: Bearer fresh",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let p = primary.received();
    let s = shadow.received();
    assert_eq!(p.len(), 20);
    assert_eq!(s.len(), 20);
    let first = p
        .iter()
        .find(|r| r.ends_with("{\"text\": \"\"}"))
        .expect("first predict");
    let expected_prefix = format!(
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept-Encoding: identity\r\nContent-Length: 12\r\nContent-Type: application/json\r\nAuthorization: Bearer fresh\r\n",
        primary.port
    );
    assert!(first.starts_with(&expected_prefix), "{first:?}");
    // The Cookie value was redacted at capture: it is not sent at all.
    assert!(
        !first.contains("Cookie") && !first.contains("REDACTED"),
        "{first:?}"
    );
    assert!(!first.contains("x-shadow-replay"));
    assert!(s.iter().all(|r| r.contains("\r\nx-shadow-replay: 1\r\n")));
    assert!(s
        .iter()
        .all(|r| r.contains(&format!("Host: 127.0.0.1:{}\r\n", shadow.port))));
    assert_eq!(role(&rows, TargetRole::Primary).len(), 20);
    assert_eq!(role(&rows, TargetRole::Shadow).len(), 20);
    assert_eq!(role(&rows, TargetRole::Recorded).len(), 20);
    let v2 = role(&rows, TargetRole::Shadow);
    assert!(v2.iter().all(|r| r.status == Some(200)
        && r.response_body == br#"{"server":"v2"}"#
        && r.target_name == "v2"));
    assert!(v2.iter().all(|r| r.endpoint == "POST /predict"));
    let rec = role(&rows, TargetRole::Recorded);
    assert!(rec
        .iter()
        .all(|r| r.response_body.starts_with(b"{\"label\"")));
}

#[test]
fn header_from_env_sends_the_variable_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 3, 0, |i| i);
    let primary = Recorder::start(Behaviour::Answer("v1"));
    let run = |var: Option<&str>| {
        let out = dir
            .path()
            .join(format!("r{}.parquet", var.map_or(0, str::len)));
        let mut cmd = Command::cargo_bin("shadowctl").unwrap();
        cmd.args([
            "replay",
            cap.to_str().unwrap(),
            "--primary",
            &primary.url(),
            "--max",
            "-q",
        ])
        .args([
            "--header-from-env",
            "Authorization=SHADOWCTL_TEST_AUTH",
            "--out",
        ])
        .arg(&out)
        .env_remove("SHADOWCTL_TEST_AUTH")
        .timeout(Duration::from_secs(60));
        if let Some(v) = var {
            cmd.env("SHADOWCTL_TEST_AUTH", v);
        }
        cmd.output().unwrap()
    };
    let ok = run(Some("Bearer s3cret-from-env"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let got = primary.received();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.contains("\r\nAuthorization: Bearer s3cret-from-env\r\n")),
        "{got:?}"
    );
    // Unset: a clear error naming the variable, and nothing sent.
    let unset = run(None);
    assert_eq!(unset.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unset.stderr);
    assert!(err.contains("SHADOWCTL_TEST_AUTH is not set"), "{err}");
    // A replay of the capture to the primary with `extra` flags.
    let with = |extra: &[&str], out: &str| {
        Command::cargo_bin("shadowctl")
            .unwrap()
            .args([
                "replay",
                cap.to_str().unwrap(),
                "--primary",
                &primary.url(),
                "-q",
            ])
            .args(extra)
            .arg("--out")
            .arg(dir.path().join(out))
            .env("SHADOWCTL_TEST_AUTH", "Bearer y")
            .output()
            .unwrap()
    };
    // A name that is not a header name (here with a colon) is refused.
    let odd = with(
        &["--header-from-env", "Auth:x=SHADOWCTL_TEST_AUTH"],
        "odd.parquet",
    );
    assert_eq!(odd.status.code(), Some(2));
    // The same target sampled twice the same way is refused.
    let twice = with(
        &["--pid", "primary=1", "--pid", "primary=1"],
        "twice.parquet",
    );
    assert_eq!(twice.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("sampled twice the same way"));
    // A value that would end the header is refused without being echoed.
    let bad = run(Some("Bearer x\r\nX-Evil: 1"));
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("CR, LF or NUL") && !err.contains("X-Evil"),
        "{err}"
    );
    assert_eq!(primary.received().len(), 3);
}

#[test]
fn recorded_schedule_is_kept_and_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 11, 100, |i| i);
    let target = Recorder::start(Behaviour::Answer("p"));
    for (speed, span_ms) in [("1", 1000.0), ("4", 250.0)] {
        let (run, rows, _d) = replay(&[
            cap.to_str().unwrap(),
            "--primary",
            &target.url(),
            "--speed",
            speed,
        ]);
        assert!(run.status.success());
        let primary = role(&rows, TargetRole::Primary);
        // The schedule itself is exact: due times are the capture's
        // offsets divided by the speed.
        let mut due: Vec<i64> = primary.iter().map(|r| r.due_ts).collect();
        due.sort();
        let span = (due[10] - due[0]) as f64 / 1e6;
        assert!(
            (span - span_ms).abs() < 1.0,
            "speed {speed}: due span {span} ms, want {span_ms}"
        );
        // Sending keeps to it: never early, and on time but for a stall
        // of the machine (a loaded CI host can pause a process for tens of
        // milliseconds, which may delay the one or two requests due then).
        let mut lags: Vec<f64> = primary
            .iter()
            .map(|r| (r.sent_ts.unwrap() - r.due_ts) as f64 / 1e6)
            .collect();
        lags.sort_by(f64::total_cmp);
        assert!(lags[0] >= 0.0, "sent before due: {lags:?}");
        assert!(lags[lags.len() / 2] < 10.0, "median lag: {lags:?}");
        let late = lags.iter().filter(|&&l| l >= 20.0).count();
        assert!(late <= 2, "{late} requests 20 ms late or more: {lags:?}");
        assert!(lags[lags.len() - 1] < 1000.0, "{lags:?}");
    }
}

#[test]
fn fixed_rate_is_evenly_spaced() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 200, 1, |i| i);
    let target = Recorder::start(Behaviour::Answer("p"));
    let summary = dir.path().join("summary.json");
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &target.url(),
        "--rate",
        "400",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let targets = json["targets"].as_array().unwrap();
    let primary = targets.iter().find(|t| t["role"] == "primary").unwrap();
    assert_eq!(primary["requests"], 200);
    let (p50, p99) = (
        primary["p50_ms"].as_f64().unwrap(),
        primary["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 100.0, "{primary}");
    assert!(json["lag_p99_ms"].as_f64().unwrap() < 50.0, "{json}");
    assert!(
        (json["sent_per_s"].as_f64().unwrap() - 400.0).abs() < 20.0,
        "{json}"
    );
    let mut due: Vec<i64> = role(&rows, TargetRole::Primary)
        .iter()
        .map(|r| r.due_ts)
        .collect();
    due.sort();
    assert_eq!(due.len(), 200);
    let span = (due[199] - due[0]) as f64 / 1e9;
    assert!((span - 199.0 / 400.0).abs() < 0.001, "{span}");
    let mut sent: Vec<i64> = role(&rows, TargetRole::Primary)
        .iter()
        .map(|r| r.sent_ts.unwrap())
        .collect();
    sent.sort();
    let achieved = 199.0 / ((sent[199] - sent[0]) as f64 / 1e9);
    assert!(
        (achieved - 400.0).abs() < 400.0 * 0.05,
        "achieved {achieved}/s"
    );
}

#[test]
fn misbehaving_targets_are_data_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 4, 1, |i| i);
    let good = Recorder::start(Behaviour::Answer("ok"));
    let hang = Recorder::start(Behaviour::Hang);
    let reset = Recorder::start(Behaviour::Reset);
    let big = Recorder::start(Behaviour::Big(10 << 20));
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &good.url(),
        "--shadow",
        &format!("hang={}", hang.url()),
        "--shadow",
        &format!("reset={}", reset.url()),
        "--shadow",
        &format!("big={}", big.url()),
        "--shadow",
        &format!("refused=http://127.0.0.1:{refused}"),
        "--rate",
        "100",
        "--timeout",
        "300ms",
        "--max-body",
        "1MiB",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let by = |name: &str| named(&rows, name);
    assert!(by("primary").iter().all(|r| r.status == Some(200)));
    let kind = |name: &str| {
        by(name)
            .iter()
            .map(|r| r.error_kind.map(|k| k.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kind("hang"), vec![Some("timeout"); 4]);
    assert_eq!(kind("reset"), vec![Some("reset"); 4]);
    assert_eq!(kind("refused"), vec![Some("connect_refused"); 4]);
    for r in by("big") {
        assert_eq!(r.status, Some(200));
        assert_eq!(r.response_body.len(), 1 << 20);
        assert_eq!(r.response_body_len, 10 << 20);
        assert!(r.response_body_truncated && r.error_kind.is_none());
    }
}

/// A results file says what `diff` needs to group its rows while reading:
/// how many rows an exchange has (`--read-only` keeps unsafe methods from
/// shadows, whose rows are then absent) and how late a row may come.
#[test]
fn results_say_which_rows_to_expect_and_how_late_they_may_come() {
    let dir = tempfile::tempdir().unwrap();
    let cap = demo_capture(dir.path());
    let (primary, shadow) = (
        Recorder::start(Behaviour::Answer("ok")),
        Recorder::start(Behaviour::Answer("ok")),
    );
    let (run, rows, out) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &primary.url(),
        "--shadow",
        &format!("v2={}", shadow.url()),
        "--read-only",
        "--max",
        "--timeout",
        "7s",
        "--shadow-timeout",
        "9s",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let path = out.path().join("results.parquet");
    let reader = shadowctl::schema::ResultsReader::open(&path).unwrap();
    assert_eq!(reader.answer_deadline_ns, Some(9_000_000_000));
    assert_eq!(reader.read_only_shadows, 1);
    let unsafe_ids: std::collections::HashSet<u64> = role(&rows, TargetRole::Primary)
        .iter()
        .filter(|r| !["GET", "HEAD", "OPTIONS"].contains(&r.method.as_str()))
        .map(|r| r.exchange_id)
        .collect();
    assert!(!unsafe_ids.is_empty(), "the demo has POSTs");
    assert!(named(&rows, "v2")
        .iter()
        .all(|r| !unsafe_ids.contains(&r.exchange_id)));
    // diff pairs every row: nothing is left unpaired.
    let report = dir.path().join("report.json");
    Command::cargo_bin("shadowctl")
        .unwrap()
        .args(["diff", path.to_str().unwrap(), "-q", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        json["exchanges"].as_u64().unwrap() as usize,
        role(&rows, TargetRole::Primary).len()
    );
    assert!(
        json.get("unpaired_answers").is_none(),
        "{}",
        json["unpaired_answers"]
    );
}

/// Under `--rate` each request is written by the scheduler on an idle
/// connection whose own task reads the answer. The timeout still counts
/// from the moment the request was written, for an answer that comes late
/// and for one that never comes, and an answer within it is kept whole.
#[test]
fn timeouts_count_from_the_send_on_connections_waiting_for_their_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 6, 1, |i| i);
    let good = Recorder::start(Behaviour::Answer("ok"));
    let slow = Recorder::start(Behaviour::Late(Duration::from_millis(120)));
    let late = Recorder::start(Behaviour::Late(Duration::from_millis(700)));
    let hang = Recorder::start(Behaviour::Hang);
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &good.url(),
        "--shadow",
        &format!("slow={}", slow.url()),
        "--shadow",
        &format!("late={}", late.url()),
        "--shadow",
        &format!("hang={}", hang.url()),
        "--rate",
        "50",
        "--timeout",
        "400ms",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let by = |name: &str| named(&rows, name);
    let waited = |r: &ReplayResult| (r.done_ts.unwrap() - r.sent_ts.unwrap()) / 1_000_000;
    assert_eq!(by("slow").len(), 6);
    for r in by("slow") {
        assert_eq!(r.status, Some(200), "{r:?}");
        assert!(r.error_kind.is_none(), "{r:?}");
        assert!((115..400).contains(&waited(r)), "{} ms", waited(r));
    }
    for name in ["late", "hang"] {
        assert_eq!(by(name).len(), 6);
        for r in by(name) {
            assert_eq!(r.error_kind.map(|k| k.as_str()), Some("timeout"), "{r:?}");
            assert!((395..650).contains(&waited(r)), "{name}: {} ms", waited(r));
        }
    }
}

/// Capture files number their exchanges from 0: replayed together, their
/// ids are made distinct (the capture's id stays in the low 40 bits), so
/// `diff` never pairs one file's request with another's answer. The same
/// file given twice keeps its clash, and `diff` refuses it by name.
#[test]
fn several_captures_replayed_together_keep_their_exchanges_apart() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cap_a, cap_b) = (
        timed_capture(a.path(), 5, 1, |i| i),
        timed_capture(b.path(), 7, 2, |i| i),
    );
    let args = |caps: &[&Path]| {
        let mut v: Vec<String> = caps.iter().map(|c| c.display().to_string()).collect();
        v.extend(["--primary", "recorded", "--max"].map(String::from));
        v
    };
    let ids = |rows: &[ReplayResult]| {
        let mut v: Vec<u64> = rows.iter().map(|r| r.exchange_id).collect();
        v.sort();
        v
    };
    let run_with = |caps: &[&Path]| {
        let a = args(caps);
        replay(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (run, rows, dir) = run_with(&[&cap_a, &cap_b]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = ids(&rows);
    assert_eq!(got.len(), 12);
    assert!(got.windows(2).all(|w| w[0] != w[1]), "{got:?}");
    let mut low: Vec<u64> = got.iter().map(|i| i & ((1 << 40) - 1)).collect();
    low.sort();
    assert_eq!(low, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6]);
    // The other order on the command line gives the same ids (shards).
    let (_, again, _d) = run_with(&[&cap_b, &cap_a]);
    assert_eq!(ids(&again), got);
    let diff = |results: &Path| {
        Command::cargo_bin("shadowctl")
            .unwrap()
            .args(["diff", results.to_str().unwrap(), "-q"])
            .output()
            .unwrap()
    };
    let out = diff(&dir.path().join("results.parquet"));
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, twice) = run_with(&[&cap_a, &cap_a]);
    let out = diff(&twice.path().join("results.parquet"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has two rows"));
}

#[test]
fn recorded_primary_needs_no_live_primary() {
    let dir = tempfile::tempdir().unwrap();
    let cap = demo_capture(dir.path());
    let shadow = Recorder::start(Behaviour::Answer("v2"));
    let summary = dir.path().join("summary.json");
    let (run, rows, out) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        "recorded",
        "--shadow",
        &shadow.url(),
        "--max",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    assert_eq!(role(&rows, TargetRole::Recorded).len(), 45);
    assert_eq!(role(&rows, TargetRole::Shadow).len(), 45);
    assert!(role(&rows, TargetRole::Primary).is_empty());
    // Recorded rows carry the capture's latency, but no schedule lag or
    // latency from due: those would mix capture time with the replay's clock.
    let file = std::fs::File::open(out.path().join("results.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let (mut recorded, mut live) = (0, 0);
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let (role_col, lag, from_due, latency) = (
            col("role"),
            col("lag_ns"),
            col("latency_from_due_ns"),
            col("latency_ns"),
        );
        let roles = role_col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            if roles.value(i) == "recorded" {
                recorded += 1;
                assert!(lag.is_null(i) && from_due.is_null(i), "row {i}");
                assert!(latency.is_valid(i), "row {i}");
            } else {
                live += 1;
                assert!(lag.is_valid(i) && from_due.is_valid(i), "row {i}");
            }
        }
    }
    assert_eq!((recorded, live), (45, 45));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let rec = json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "recorded")
        .unwrap()
        .clone();
    assert!(rec["p50_ms"].as_f64().unwrap() > 0.0, "{rec}");
    assert_eq!(rec["p99_from_due_ms"].as_f64(), Some(0.0), "{rec}");
}

#[test]
fn shards_together_equal_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 90, 0, |i| i / 3);
    let target = Recorder::start(Behaviour::Answer("p"));
    let mut all = Vec::new();
    for k in 1..=3 {
        let shard = format!("{k}/3");
        let (run, rows, _d) = replay(&[
            cap.to_str().unwrap(),
            "--primary",
            &target.url(),
            "--max",
            "--shard",
            &shard,
        ]);
        assert!(run.status.success());
        let ids: Vec<u64> = role(&rows, TargetRole::Primary)
            .iter()
            .map(|r| r.exchange_id)
            .collect();
        assert!(
            !ids.is_empty() && ids.len() < 90,
            "shard {shard}: {}",
            ids.len()
        );
        all.extend(ids);
    }
    all.sort();
    assert_eq!(all, (0..90).collect::<Vec<_>>());
}

/// A capture file of `conns` keep-alive connections with `per_conn`
/// requests each, targets `/c{conn}/{seq}`, client ports from `first_port`.
fn connections_capture(
    dir: &Path,
    name: &str,
    first_port: u16,
    conns: u16,
    per_conn: u32,
) -> PathBuf {
    let path = dir.join(name);
    let mut w = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
    let mut rows = Vec::new();
    for c in 0..conns {
        for seq in 0..per_conn {
            let mut ex = Exchange {
                exchange_id: rows.len() as u64,
                flow_id: c as u64,
                seq_in_flow: seq,
                client: Some(std::net::SocketAddr::from(([10, 1, 0, 1], first_port + c))),
                server: Some(std::net::SocketAddr::from(([10, 1, 0, 2], 8080))),
                method: "GET".into(),
                target: format!("/c{}/{seq}", first_port + c),
                http_version: "HTTP/1.1".into(),
                request_ts: 1_700_000_000_000_000_000 + (seq as i64 * 1000 + c as i64) * 1000,
                status: Some(200),
                ..Default::default()
            };
            ex.request_end_ts = ex.request_ts;
            ex.request_headers.push(b"Host", b"prod.example");
            rows.push(ex);
        }
    }
    rows.sort_by_key(|e| e.request_ts);
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
    path
}

#[test]
fn shards_do_not_depend_on_file_order_and_split_long_connections() {
    // Two files, two long keep-alive connections each; every shard lists
    // the files in another order. Together the shards replay each request
    // exactly once, and each of 4 shards gets a fair part of 4 connections.
    let dir = tempfile::tempdir().unwrap();
    let a = connections_capture(dir.path(), "a.parquet", 40000, 2, 100);
    let b = connections_capture(dir.path(), "b.parquet", 50000, 2, 100);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let target = Recorder::start(Behaviour::Answer("p"));
    let url = target.url();
    let mut all = Vec::new();
    for (k, files) in [(1, [a, b]), (2, [b, a]), (3, [a, b]), (4, [b, a])] {
        let shard = format!("{k}/4");
        let mut args = files.to_vec();
        args.extend(["--primary", &url, "--max", "--shard", &shard]);
        let (run, rows, _d) = replay(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let targets: Vec<String> = role(&rows, TargetRole::Primary)
            .iter()
            .map(|r| r.target.clone())
            .collect();
        assert!(
            (60..=140).contains(&targets.len()),
            "shard {shard}: {} of 400",
            targets.len()
        );
        all.extend(targets);
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, 400, "a request replayed twice or left out");
    assert_eq!(all.len(), 400);
}

#[test]
fn ctrl_c_mid_run_leaves_a_valid_file_and_exit_130() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 1000, 10, |i| i);
    let target = Recorder::start(Behaviour::Answer("p"));
    let out = dir.path().join("r.parquet");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .args([
            "replay",
            cap.to_str().unwrap(),
            "--primary",
            &target.url(),
            "-q",
            "--out",
        ])
        .arg(&out)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let rows = read_results(&out).unwrap();
    let live = role(&rows, TargetRole::Primary).len();
    assert!(live > 50 && live < 1000, "{live}");
    assert!(role(&rows, TargetRole::Primary)
        .iter()
        .all(|r| r.status == Some(200)));
}

#[test]
fn bad_input_is_exit_2() {
    let (run, _, _d) = replay(&["/nonexistent.parquet", "--primary", "http://127.0.0.1:1"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("/nonexistent.parquet"));
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let (run, _, _d) = replay(&[readme.to_str().unwrap(), "--primary", "http://127.0.0.1:1"]);
    assert_eq!(run.status.code(), Some(2));
}

/// Resource readings under a name no target has are kept (a sidecar may
/// be watched too), and said: a typo would leave the real target
/// unmeasured with no word of why.
#[test]
fn sampling_a_name_no_target_has_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let capture = demo_capture(dir.path());
    // stderr of a one-request replay sampling this process as `name`.
    let stderr_sampling = |name: &str| {
        let pid = format!("{name}={}", std::process::id());
        let (run, _, _d) = replay(&[
            capture.to_str().unwrap(),
            "--primary",
            "http://127.0.0.1:1",
            "--shadow",
            "v2=http://127.0.0.1:1",
            "--pid",
            &pid,
            "--limit",
            "1",
        ]);
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let err = stderr_sampling("v3");
    let warning = "no target is called `v3` (the targets are primary, v2)";
    assert!(err.contains(warning), "{err}");
    let err = stderr_sampling("v2");
    assert!(!err.contains("no target is called"), "{err}");
}

#[test]
fn preserve_order_keeps_each_connection_sequential_on_one_socket() {
    let dir = tempfile::tempdir().unwrap();
    // 4 recorded connections of 5 requests each, all due at once.
    let cap = timed_capture(dir.path(), 20, 0, |i| i % 4);
    let target = Recorder::start(Behaviour::Answer("p"));
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &target.url(),
        "--rate",
        "2000",
        "--preserve-order",
    ]);
    assert!(run.status.success());
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 20);
    for flow in 0..4 {
        let mut reqs: Vec<&&ReplayResult> = live.iter().filter(|r| r.flow_id == flow).collect();
        reqs.sort_by_key(|r| r.exchange_id);
        // Each request is sent only after the previous one was answered.
        for w in reqs.windows(2) {
            assert!(
                w[1].sent_ts.unwrap() >= w[0].done_ts.unwrap(),
                "flow {flow} out of order"
            );
        }
    }
    // One TCP connection per recorded connection: the server saw the
    // requests of a flow in order.
    let got = target.received();
    for flow in 0..4u64 {
        let order: Vec<u64> = got
            .iter()
            .filter_map(|r| r.split(' ').nth(1)?.strip_prefix("/t/")?.parse().ok())
            .filter(|i: &u64| i % 4 == flow)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
    }
}

/// A capture rotated between two requests of one keep-alive connection:
/// with `--preserve-order` the second, in the next file, still waits for
/// the first one's answer (a POST then its GET must not cross).
#[test]
fn preserve_order_keeps_a_connection_whole_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let client: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let server: std::net::SocketAddr = "10.0.0.2:80".parse().unwrap();
    let on_one_connection = |ex: &mut Exchange| {
        ex.flow_id = 3;
        ex.client = Some(client);
        ex.server = Some(server);
    };
    let first = shaped_capture(dir.path(), "cap-0001.parquet", 1, |_, ex| {
        on_one_connection(ex)
    });
    let second = shaped_capture(dir.path(), "cap-0002.parquet", 1, |_, ex| {
        on_one_connection(ex);
        ex.exchange_id = 1;
        ex.seq_in_flow = 1;
        ex.target = "/t/1".into();
        ex.request_ts = T0 + 20_000_000;
    });
    let slow = Recorder::start(Behaviour::Late(Duration::from_millis(300)));
    let (run, rows, _d) = replay(&[
        first.to_str().unwrap(),
        second.to_str().unwrap(),
        "--primary",
        &slow.url(),
        "--preserve-order",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    // Each file's exchange ids are made unique by the replay: by target.
    let at = |target: &str| {
        live.iter()
            .find(|r| r.target == target)
            .unwrap_or_else(|| panic!("no row for {target}: {rows:#?}"))
    };
    assert_eq!(
        (at("/t/0").status, at("/t/1").status),
        (Some(200), Some(200))
    );
    assert!(
        at("/t/1").sent_ts.unwrap() >= at("/t/0").done_ts.unwrap(),
        "the second request went before the first was answered"
    );
}

/// What [`ok_server`] tells of its connections (numbered as accepted).
enum Conn<'a> {
    Opened,
    Request(usize, &'a [u8]),
    Closed,
}

/// A server on 127.0.0.1 answering every request `200 ok` on up to
/// `connections` connections, telling `on` of each; returns its port.
fn ok_server(connections: usize, on: impl Fn(Conn<'_>) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let on = Arc::new(on);
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().take(connections).enumerate() {
            let Ok(mut conn) = conn else { return };
            let on = Arc::clone(&on);
            on(Conn::Opened);
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                while let Some(req) = read_request(&mut r) {
                    on(Conn::Request(n, &req));
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
                on(Conn::Closed);
            });
        }
    });
    port
}

/// `--preserve-order` runs a lane per recorded connection; a lane ends once
/// idle, closing its socket, so a capture of many short connections does
/// not keep them all open (the open-files limit).
#[test]
fn preserve_order_closes_the_connections_of_idle_lanes() {
    let dir = tempfile::tempdir().unwrap();
    // 40 short recorded connections at once, then one more 3.5 s later
    // and another after it (the run, and its lanes, go on past the 41st).
    let path = shaped_capture(dir.path(), "lanes.parquet", 42, |i, ex| {
        if i >= 40 {
            ex.request_ts = T0 + (i as i64 - 38) * 1_750_000_000;
        }
    });
    // Open connections, and how many were open when the last request came.
    let open = Arc::new(Mutex::new(0usize));
    let at_last = Arc::new(Mutex::new(None::<usize>));
    let port = {
        let (open, at_last) = (Arc::clone(&open), Arc::clone(&at_last));
        ok_server(200, move |event| match event {
            Conn::Opened => *open.lock().unwrap() += 1,
            Conn::Request(_, req) if req.starts_with(b"GET /t/40 ") => {
                *at_last.lock().unwrap() = Some(*open.lock().unwrap());
            }
            Conn::Request(..) => {}
            Conn::Closed => *open.lock().unwrap() -= 1,
        })
    };
    let (run, rows, _d) = replay(&[
        path.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{port}"),
        "--preserve-order",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 42);
    assert!(live.iter().all(|r| r.status == Some(200)));
    let open_then = at_last.lock().unwrap().expect("the last request arrived");
    // Its own connection, and perhaps one whose close is still on its way:
    // not the 40 lanes that went idle 3.5 s before.
    assert!(open_then <= 3, "{open_then} connections still open");
}

/// At the end of the capture a request in flight gets its own --timeout,
/// not the drain timeout (meant for Ctrl-C): a slow last answer is
/// recorded, not left out as interrupted.
#[test]
fn the_last_requests_get_their_timeout_not_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 2, 0, |i| i);
    let slow = Recorder::start(Behaviour::Late(Duration::from_millis(1500)));
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &slow.url(),
        "--timeout",
        "4s",
        "--drain-timeout",
        "300ms",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 2);
    for r in live {
        assert_eq!(r.error_kind, None, "{:?}", r.error_detail);
        assert_eq!(r.status, Some(200));
    }
}

/// A captured request whose fields would end a header early (HTTP/2
/// capture records what it saw, unchecked) is not sent: the row says
/// `unsendable`, and the target sees no smuggled request.
#[test]
fn captured_bytes_that_would_smuggle_a_request_are_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = shaped_capture(dir.path(), "smuggle.parquet", 3, |i, ex| {
        ex.http_version = "HTTP/2".into();
        ex.request_ts = T0 + i as i64;
        ex.request_headers = Default::default();
        ex.request_headers.push(b":authority", b"prod.example");
        match i {
            1 => ex
                .request_headers
                .push(b"x-note", b"a\r\n\r\nGET /admin HTTP/1.1\r\nHost: x"),
            2 => ex.target = "/t/2 HTTP/1.1\r\nHost: x\r\n\r\nGET /admin".into(),
            _ => {}
        }
    });
    let target = Recorder::start(Behaviour::Answer("p"));
    let (run, rows, _d) = replay(&[
        path.to_str().unwrap(),
        "--primary",
        &target.url(),
        "--http1",
        "--max",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut live = role(&rows, TargetRole::Primary);
    live.sort_by_key(|r| r.exchange_id);
    assert_eq!(live.len(), 3);
    assert_eq!(live[0].status, Some(200));
    for r in &live[1..] {
        assert_eq!(r.error_kind, Some(ErrorKind::Unsendable), "{r:?}");
        assert_eq!(r.sent_ts, None);
    }
    let got = target.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got.iter().all(|r| !r.contains("/admin")));
}

/// With --shard, the clock starts at the capture's first request, not the
/// shard's: a shard whose first request came 1.2 s into the capture sends
/// it 1.2 s into the run, in step with the other shards.
#[test]
fn shards_keep_the_captures_clock() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 4, 1200, |i| i);
    let target = Recorder::start(Behaviour::Answer("p"));
    let mut checked = 0;
    for k in ["1/2", "2/2"] {
        let launched = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let (run, rows, _d) = replay(&[
            cap.to_str().unwrap(),
            "--primary",
            &target.url(),
            "--shard",
            k,
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let live = role(&rows, TargetRole::Primary);
        let first = live.iter().map(|r| r.exchange_id).min().unwrap();
        let due = live.iter().map(|r| r.due_ts).min().unwrap();
        // Each request is due at its place in the capture (1.2 s apart),
        // counted from the run's start, whichever shard holds it.
        let offset_ms = (due - launched) / 1_000_000;
        assert!(
            offset_ms >= first as i64 * 1200 - 50,
            "shard {k}: first request {first} due {offset_ms} ms into the run"
        );
        checked += usize::from(first > 0);
    }
    assert_eq!(checked, 1, "one shard starts later than the capture");
}

/// A gap of hours in the capture (a clock that jumped) is said at once,
/// instead of looking like a hang.
#[test]
fn a_long_gap_in_the_capture_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let path = shaped_capture(dir.path(), "gap.parquet", 2, |i, ex| {
        ex.request_ts = T0 + i as i64 * 7_200_000_000_000;
    });
    let target = Recorder::start(Behaviour::Answer("p"));
    let (run, rows, _d) = replay(&[
        path.to_str().unwrap(),
        "--primary",
        &target.url(),
        "--max-duration",
        "1s",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("the next request is due in 2.0 h"),
        "{stderr}"
    );
    assert_eq!(role(&rows, TargetRole::Primary).len(), 1);
}

#[test]
fn health_check_fails_fast_on_a_down_target() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 3, 0, |i| i);
    let up = Recorder::start(Behaviour::Answer("p"));
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (run, _, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &up.url(),
        "--shadow",
        &format!("http://127.0.0.1:{down}"),
        "--health-path",
        "/healthz",
        "--health-timeout",
        "1s",
    ]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("failed its health check") && err.contains(&down.to_string()),
        "{err}"
    );
    assert!(
        up.received().iter().all(|r| r.starts_with("GET /healthz ")),
        "no replay traffic after a failed check"
    );
}

/// Answers every request with `status` (and a tiny body), on `listener`;
/// with `idle`, closes a connection that sends nothing for that long (a
/// keep-alive timeout). Returns the count of requests received.
fn small_server(listener: TcpListener, status: u16, idle: Option<Duration>) -> Arc<Mutex<usize>> {
    let seen = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { return };
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                conn.set_read_timeout(idle).unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                // A read that times out (idle) ends the loop and closes.
                while read_request(&mut r).is_some() {
                    *counter.lock().unwrap() += 1;
                    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
                    if conn.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    seen
}

/// A raw HTTP/1 server on 127.0.0.1; returns its port. `answer(conn, k,
/// request, stream)` is called for the `k`-th request of the `conn`-th
/// connection accepted; false closes that connection.
fn raw_server(
    answer: impl Fn(usize, usize, &[u8], &mut TcpStream) -> bool + Send + Sync + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().take(1000).enumerate() {
            let Ok(mut conn) = conn else { return };
            let answer = Arc::clone(&answer);
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut k = 0;
                while let Some(req) = read_request(&mut r) {
                    if !answer(n, k, &req, &mut conn) {
                        return;
                    }
                    k += 1;
                }
            });
        }
    });
    port
}

#[test]
fn health_check_requires_2xx_and_names_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 3, 0, |i| i);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    small_server(listener, 404, None);
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{port}"),
        "--health-path",
        "/wrong",
        "--health-timeout",
        "600ms",
    ]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("target primary") && err.contains("answered 404, not 2xx"),
        "{err}"
    );
    assert!(rows.is_empty());
}

#[test]
fn health_check_waits_for_a_target_that_is_still_starting() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 3, 0, |i| i);
    // A free port that nothing listens on yet; the target binds it 700 ms in.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            small_server(l, 200, None);
        }
    });
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{port}"),
        "--health-path",
        "/healthz",
        "--health-timeout",
        "20s",
        "--max",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|r| r.status == Some(200)));
}

#[test]
fn idle_connections_the_server_closed_are_not_used_and_nothing_is_sent_twice() {
    // A server with a 100 ms keep-alive timeout (nginx has 75 s, many
    // Python servers 5 s) and requests 400 ms apart: every pooled
    // connection is closed by the time the next request is due. Each
    // request must reach the server once, and be answered.
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 4, 400, |_| 0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = small_server(listener, 200, Some(Duration::from_millis(100)));
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{port}"),
        "--concurrency",
        "4",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 4);
    assert!(
        live.iter()
            .all(|r| r.status == Some(200) && r.error_kind.is_none()),
        "{:?}",
        live.iter()
            .map(|r| (&r.status, &r.error_detail))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        *seen.lock().unwrap(),
        4,
        "a request reached the server twice"
    );
}

#[test]
fn https_targets_are_verified_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cap = demo_capture(dir.path());
    let (server, pem, alpn) = Recorder::start_tls(Behaviour::Answer("tls"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("https://localhost:{}", server.port);
    let common = [cap.to_str().unwrap(), "--primary", "recorded", "--max"];

    // Trusted through --ca-cert: every request is answered over TLS.
    let mut args = common.to_vec();
    args.extend(["--shadow", &url, "--ca-cert", ca.to_str().unwrap()]);
    let (run, rows, _d) = replay(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shadow = role(&rows, TargetRole::Shadow);
    assert_eq!(shadow.len(), 45);
    assert!(shadow.iter().all(|r| r.status == Some(200)
        && (r.response_body == br#"{"server":"tls"}"# || r.method == "HEAD")));
    let got = server.received();
    assert_eq!(got.len(), 45);
    let host = format!("\r\nHost: localhost:{}\r\n", server.port);
    assert!(got.iter().all(|r| r.contains(&host)));
    // The server prefers h2; replay offers only http/1.1, so that is agreed.
    let agreed = alpn.lock().unwrap().clone();
    assert!(
        !agreed.is_empty() && agreed.iter().all(|p| p == "http/1.1"),
        "{agreed:?}"
    );

    // Not trusted: each request is a `tls` error, and the run still completes.
    let mut args = common.to_vec();
    args.extend(["--shadow", &url, "--limit", "3"]);
    let (run, rows, _d) = replay(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shadow = role(&rows, TargetRole::Shadow);
    assert_eq!(shadow.len(), 3);
    assert!(shadow.iter().all(|r| r.error_kind == Some(ErrorKind::Tls)
        && r.error_detail
            .as_deref()
            .unwrap_or("")
            .contains("certificate")));

    // --insecure accepts the self-signed certificate.
    let mut args = common.to_vec();
    args.extend(["--shadow", &url, "--limit", "3", "--insecure"]);
    let (run, rows, _d) = replay(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(role(&rows, TargetRole::Shadow)
        .iter()
        .all(|r| r.status == Some(200)));

    // An unreadable --ca-cert is bad input.
    let mut args = common.to_vec();
    args.extend(["--shadow", &url, "--ca-cert", "/nonexistent.pem"]);
    let (run, _, _d) = replay(&args);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--ca-cert /nonexistent.pem"));
}

#[test]
fn ctrl_c_under_max_with_a_hanging_target_respects_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 200, 1, |i| i);
    let (ok, hang) = (
        Recorder::start(Behaviour::Answer("p")),
        Recorder::start(Behaviour::Hang),
    );
    let out = dir.path().join("r.parquet");
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .args(["replay", cap.to_str().unwrap(), "--primary", &ok.url()])
        .args(["--shadow", &hang.url(), "--max", "--concurrency", "4"])
        .args([
            "--timeout",
            "30s",
            "--drain-timeout",
            "500ms",
            "-q",
            "--out",
        ])
        .arg(&out)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Not the 30 s timeout: Ctrl-C + the drain timeout, then cancel.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let rows = read_results(&out).unwrap();
    let shadow = role(&rows, TargetRole::Shadow);
    assert_eq!(shadow.len(), 4, "one request per worker was in flight");
    assert!(shadow
        .iter()
        .all(|r| r.error_kind == Some(ErrorKind::Interrupted)));
    assert_eq!(role(&rows, TargetRole::Primary).len(), 4);
}

/// `--until-decided` against identical and different shadows: it stops as
/// soon as the gate is decided (GO, then NO-GO), exits like `diff`, sends a
/// uniform sample of the whole capture (not its first part), and `diff` of
/// the results it wrote gives the same verdict.
#[test]
fn until_decided_stops_when_decided_on_a_uniform_sample_and_diff_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 3000, 1, |i| i);
    let config = dir.path().join("gate.toml");
    // Latency is not the subject here (a p99 needs hundreds of answers).
    std::fs::write(
        &config,
        "[gate]\nmax_divergence_rate = 0.05\nmax_error_rate_increase = 0.05\nmax_p99_latency_ratio = inf\n",
    )
    .unwrap();
    let primary = Recorder::start(Behaviour::Answer("a"));
    let same = Recorder::start(Behaviour::Answer("a"));
    let other = Recorder::start(Behaviour::Answer("b"));
    for (shadow, code, verdict) in [(&same, 0, "GO"), (&other, 1, "NO-GO")] {
        let summary = dir.path().join(format!("{verdict}.json"));
        let (run, rows, d) = replay(&[
            cap.to_str().unwrap(),
            "--primary",
            &primary.url(),
            "--shadow",
            &format!("v2={}", shadow.url()),
            "--rate",
            "2000",
            "--until-decided",
            "--config",
            config.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(code), "{stderr}");
        // Quiet (-q), it still says its verdict, as `diff -q` does.
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert_eq!(stdout, format!("verdict: {verdict}\n"));
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        let u = &s["until_decided"];
        assert_eq!(u["verdict"], verdict, "{u}");
        assert_eq!(u["stopped"], "decided", "{u}");
        assert!(u["decided_after"].as_u64().unwrap() >= 200, "{u}"); // min_exchanges
                                                                     // Stopped early: far fewer than the 3,000 captured were sent.
        let ids: Vec<u64> = role(&rows, TargetRole::Primary)
            .iter()
            .map(|r| r.exchange_id)
            .collect();
        assert!((200..2000).contains(&ids.len()), "{} sent", ids.len());
        // ...and those spread over the whole capture: in every tenth of it.
        let mut tenths = [0usize; 10];
        for id in &ids {
            tenths[(*id as usize * 10 / 3000).min(9)] += 1;
        }
        let even = ids.len() as f64 / 10.0;
        assert!(
            tenths.iter().all(|&n| (n as f64) > even * 0.4),
            "{tenths:?}"
        );
        // A later diff of the same file says the same, with the same method.
        let json = d.path().join("report.json");
        let out = Command::cargo_bin("shadowctl")
            .unwrap()
            .arg("diff")
            .arg(d.path().join("results.parquet"))
            .arg("--config")
            .arg(&config)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(r["verdict"], verdict);
        assert_eq!(r["method"]["intervals"], "sequential");
        assert_eq!(r["exchanges"], u["exchanges"]);
    }
}

/// A rare endpoint whose every answer diverges: the overall rate (4%)
/// passes the gate early, but a `diff` of the whole capture would judge the
/// endpoint (120 exchanges) and say NO-GO, so the run must not stop on a
/// GO before that endpoint has enough exchanges to be judged.
#[test]
fn until_decided_does_not_say_go_before_a_rare_endpoint_is_judged() {
    let dir = tempfile::tempdir().unwrap();
    let path = shaped_capture(dir.path(), "rare.parquet", 3000, |i, ex| {
        ex.request_ts = T0 + i as i64 * 1_000_000;
        if i % 25 == 0 {
            ex.target = "/rare".into();
        }
    });
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        "[gate]\nmax_divergence_rate = 0.10\nmax_error_rate_increase = 0.05\nmax_p99_latency_ratio = inf\n",
    )
    .unwrap();
    let answer = |body: &'static str| {
        move |_: usize, _: usize, _: &[u8], s: &mut TcpStream| {
            let a = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(a.as_bytes()).is_ok()
        }
    };
    let primary = raw_server(answer("{\"v\":\"a\"}"));
    let shadow = raw_server(|_, _, req: &[u8], s: &mut TcpStream| {
        let body = if req.starts_with(b"GET /rare ") {
            "{\"v\":\"b\"}"
        } else {
            "{\"v\":\"a\"}"
        };
        let a = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(a.as_bytes()).is_ok()
    });
    let summary = dir.path().join("summary.json");
    let (run, _rows, _d) = replay(&[
        path.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{primary}"),
        "--shadow",
        &format!("v2=http://127.0.0.1:{shadow}"),
        "--rate",
        "3000",
        "--until-decided",
        "--config",
        config.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let u = &s["until_decided"];
    assert_eq!(u["verdict"], "NO-GO", "{u} {stderr}");
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        u["reasons"].to_string().contains("GET /rare"),
        "the rare endpoint decided: {u}"
    );
}

#[test]
fn until_decided_refuses_recorded_timing_and_says_when_the_capture_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 50, 1, |i| i);
    let primary = Recorder::start(Behaviour::Answer("a"));
    let (run, _, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &primary.url(),
        "--shadow",
        &primary.url(),
        "--until-decided",
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--rate R or --max"));
    // 50 exchanges cannot reach min_exchanges: the capture runs out,
    // INCONCLUSIVE (exit 3), and the summary says so.
    let summary = dir.path().join("s.json");
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &primary.url(),
        "--shadow",
        &primary.url(),
        "--until-decided",
        "--max",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(3));
    assert_eq!(role(&rows, TargetRole::Primary).len(), 50);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["until_decided"]["stopped"], "capture exhausted");
    assert_eq!(s["until_decided"]["verdict"], "INCONCLUSIVE");
}

/// Two requests of `method` on one recorded connection, 100 ms apart.
fn two_on_one_flow(dir: &Path, method: &str) -> PathBuf {
    let path = dir.join(format!("{method}.parquet"));
    let mut w = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
    let rows: Vec<Exchange> = (0..2u64)
        .map(|i| {
            let mut ex = Exchange {
                exchange_id: i,
                flow_id: 7,
                seq_in_flow: i as u32,
                method: method.into(),
                target: format!("/t/{i}"),
                http_version: "HTTP/1.1".into(),
                request_ts: 1_700_000_000_000_000_000 + i as i64 * 100_000_000,
                status: Some(200),
                ..Default::default()
            };
            ex.request_end_ts = ex.request_ts;
            ex.request_headers.push(b"Host", b"prod.example");
            if method == "POST" {
                ex.request_headers.push(b"Content-Length", b"2");
                ex.request_body = b"{}".to_vec();
            }
            ex
        })
        .collect();
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
    path
}

#[test]
fn a_request_whose_reused_connection_closes_unanswered_is_sent_again_only_if_repeatable() {
    // The first connection answers its first request, then reads the
    // second and closes without a word (a server that died on it). A GET
    // may be sent again; a POST may already have been acted on, so it is
    // not, and its row says so.
    for method in ["GET", "POST"] {
        let dir = tempfile::tempdir().unwrap();
        let cap = two_on_one_flow(dir.path(), method);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let port = raw_server(move |conn, k, req, stream| {
            let line = String::from_utf8_lossy(req)
                .lines()
                .next()
                .unwrap()
                .to_owned();
            log.lock().unwrap().push(line);
            if conn == 0 && k == 1 {
                return false; // read it, then close unanswered
            }
            let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            stream.write_all(ok.as_bytes()).is_ok()
        });
        let (run, rows, _d) = replay(&[
            cap.to_str().unwrap(),
            "--primary",
            &format!("http://127.0.0.1:{port}"),
            "--concurrency",
            "1",
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let mut live = role(&rows, TargetRole::Primary);
        live.sort_by_key(|r| r.exchange_id);
        let got = seen.lock().unwrap().clone();
        let line = |i: u32| format!("{method} /t/{i} HTTP/1.1");
        assert_eq!(live[0].status, Some(200), "{method}");
        if method == "GET" {
            assert_eq!(got, [line(0), line(1), line(1)]);
            assert_eq!(live[1].status, Some(200), "{:?}", live[1].error_detail);
        } else {
            assert_eq!(got, [line(0), line(1)], "the POST reached the server twice");
            assert_eq!(live[1].error_kind, Some(ErrorKind::Reset));
            let detail = live[1].error_detail.as_deref().unwrap_or("");
            assert!(detail.contains("not sent again"), "{detail}");
        }
    }
}

#[test]
fn an_interim_answer_neither_starts_the_idle_limit_nor_counts_as_the_first_byte() {
    // 100 Continue at once, the answer 1.2 s later: the idle limit of
    // 400 ms runs only once the answer has begun, and the time to the
    // first byte is the answer's.
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 1, 0, |i| i);
    let port = raw_server(|_, _, _, stream| {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        std::thread::sleep(Duration::from_millis(1200));
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        stream.write_all(ok.as_bytes()).is_ok()
    });
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{port}"),
        "--stream-idle-timeout",
        "400ms",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 1);
    let r = &live[0];
    assert_eq!(
        (r.status, r.error_kind),
        (Some(200), None),
        "{:?}",
        r.error_detail
    );
    assert_eq!(r.response_body, b"ok");
    let ttfb_ms = (r.first_byte_ts.unwrap() - r.sent_ts.unwrap()) / 1_000_000;
    assert!(ttfb_ms >= 1000, "first byte after {ttfb_ms} ms");
}

#[test]
fn a_tls_connection_the_server_closed_while_idle_is_not_used() {
    // The server drops a connection idle for 30 ms; the second POST comes
    // 100 ms after the first. It must go on a new connection and be
    // answered: a POST found its connection dead would not be sent again.
    let dir = tempfile::tempdir().unwrap();
    let cap = two_on_one_flow(dir.path(), "POST");
    let (server, pem, _alpn) = Recorder::start_tls(Behaviour::IdleClose(Duration::from_millis(30)));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("https://localhost:{}", server.port);
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &url,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--concurrency",
        "1",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 2);
    for r in &live {
        assert_eq!(
            (r.status, r.error_kind),
            (Some(200), None),
            "{:?}",
            r.error_detail
        );
    }
    assert_eq!(server.received().len(), 2);
}

#[test]
fn secrets_in_live_answers_are_redacted_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cap = timed_capture(dir.path(), 2, 0, |i| i);
    let port = raw_server(|_, _, _, stream| {
        let answer = "HTTP/1.1 200 OK\r\nSet-Cookie: sid=s3cret\r\nX-Auth-Token: t0ken\r\nX-Other: v\r\nLocation: /next?access_token=abc&page=2\r\nContent-Length: 2\r\n\r\nok";
        stream.write_all(answer.as_bytes()).is_ok()
    });
    let url = format!("http://127.0.0.1:{port}");
    for keep in [false, true] {
        let mut args = vec![cap.to_str().unwrap(), "--primary", &url];
        if keep {
            args.push("--keep-secrets");
        }
        let (run, rows, _d) = replay(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let live = role(&rows, TargetRole::Primary);
        assert_eq!(live.len(), 2);
        for r in live {
            let h = &r.response_headers;
            let (cookie, token) = if keep {
                (&b"sid=s3cret"[..], &b"t0ken"[..])
            } else {
                (&b"[REDACTED]"[..], &b"[REDACTED]"[..])
            };
            assert_eq!(
                h.get("set-cookie"),
                Some(cookie),
                "keep {keep}: {:?} {:?}",
                r.status,
                r.error_detail
            );
            assert_eq!(h.get("x-auth-token"), Some(token), "keep {keep}");
            assert_eq!(h.get("x-other"), Some(&b"v"[..]));
            // A redirect's token is redacted like a captured one's.
            let location = if keep {
                &b"/next?access_token=abc&page=2"[..]
            } else {
                &b"/next?access_token=[REDACTED]&page=2"[..]
            };
            assert_eq!(h.get("location"), Some(location), "keep {keep}");
        }
    }
}

/// A results file on a disk that fills up mid-run: the replay stops with
/// the writer's own error (not "the results writer stopped"), and the file
/// is closed over every row written before, footer and all. Mounting a
/// small tmpfs needs root, as the live capture tests do.
#[test]
fn a_full_disk_keeps_the_results_written_before_it_filled() {
    let Some(disk) = common::Tmpfs::mount("16m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Recorded answers of 16 KiB that zstd cannot shrink: 32 MiB in all.
    let cap = shaped_capture(dir.path(), "big.parquet", 2000, |i, ex| {
        let mut x = i + 1;
        ex.response_body = (0..16 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
    });
    let shadow = Recorder::start(Behaviour::Answer("s"));
    let out = disk.path().join("results.parquet");
    let run = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("replay")
        .arg(&cap)
        .args(["--primary", "recorded", "--shadow", &shadow.url()])
        .args(["--rate", "20000", "-q", "--out"])
        .arg(&out)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("the disk is nearly full"), "{err}");
    let rows = read_results(&out).unwrap();
    assert!(!rows.is_empty());
    assert!(rows.len() < 4000, "{} rows", rows.len());
    let recorded = role(&rows, TargetRole::Recorded);
    assert!(recorded.iter().all(|r| r.response_body.len() == 16 << 10));
}

/// A request captured with trailers reaches the target chunked, with its
/// trailers after the body, byte for byte; a redacted one is left out and
/// counted; the next request on the same connection is read whole after it.
#[test]
fn request_trailers_reach_the_target_after_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path(), "trailers.parquet", 2, |i, ex| {
        ex.method = "POST".into();
        ex.flow_id = 1;
        ex.seq_in_flow = i as u32;
        ex.request_body = format!("payload-{i}").into_bytes();
        ex.request_headers.push(b"Transfer-Encoding", b"chunked");
        ex.request_headers.push(b"Trailer", b"X-Checksum");
        ex.request_trailers
            .push(b"X-Checksum", format!("sum{i}").as_bytes());
        ex.request_trailers.push(b"X-Token", b"[REDACTED]");
    });
    let target = Recorder::start(Behaviour::Answer("v1"));
    let summary = dir.path().join("summary.json");
    let (run, rows, _d) = replay(&[
        cap.to_str().unwrap(),
        "--primary",
        &target.url(),
        "--max",
        "--concurrency",
        "1",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut got = target.received();
    got.sort();
    let want: Vec<String> = (0..2)
        .map(|i| {
            format!(
                "POST /t/{i} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nTrailer: X-Checksum\r\n\
                 Transfer-Encoding: chunked\r\n\r\n9\r\npayload-{i}\r\n0\r\nX-Checksum: sum{i}\r\n\r\n",
                target.port
            )
        })
        .collect();
    assert_eq!(got, want);
    let conns = target.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(conns, 1, "both requests on one keep-alive connection");
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|r| r.status == Some(200)), "{live:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(summary["dropped_redacted_values"], 2, "{summary}");
}

/// Replay leaves out only the `[REDACTED]` values of the names the capture
/// recorded that it redacted by: one that is data (a prompt scrubbed before
/// it reached the service) is sent as captured. With a file that recorded
/// no names among the captures, every such value is left out.
#[test]
fn only_values_the_capture_redacted_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let stats = r#"{"redaction": {"headers": ["authorization"], "query": ["api_key"], "body": ["password"]}}"#;
    let shape = |_: u64, ex: &mut Exchange| {
        ex.method = "POST".into();
        ex.target = "/v1/chat?api_key=[REDACTED]&tag=[REDACTED]".into();
        ex.request_headers.push(b"Authorization", b"[REDACTED]");
        ex.request_headers.push(b"X-Note", b"[REDACTED]");
        ex.request_headers
            .push(b"Content-Type", b"application/json");
        ex.request_body = br#"{"prompt":"[REDACTED]","password":"[REDACTED]"}"#.to_vec();
    };
    let named = shaped_capture_with(
        dir.path(),
        "named.parquet",
        1,
        vec![("shadowctl.capture_stats".into(), stats.into())],
        shape,
    );
    let unnamed = shaped_capture(dir.path(), "unnamed.parquet", 1, shape);
    let sent = |captures: &[&Path]| {
        let target = Recorder::start(Behaviour::Answer("v1"));
        let mut args: Vec<String> = captures.iter().map(|c| c.display().to_string()).collect();
        args.extend(["--primary".into(), target.url(), "--max".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (run, _, _d) = replay(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        target.received()
    };
    let got = sent(&[&named]);
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert!(
        req.starts_with("POST /v1/chat?tag=[REDACTED] HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        !req.contains("Authorization") && req.contains("\r\nX-Note: [REDACTED]\r\n"),
        "{req}"
    );
    assert!(
        req.ends_with("\r\n\r\n{\"prompt\":\"[REDACTED]\"}"),
        "{req}"
    );
    let got = sent(&[&named, &unnamed]);
    assert_eq!(got.len(), 2);
    for req in &got {
        assert!(req.starts_with("POST /v1/chat HTTP/1.1\r\n"), "{req}");
        assert!(
            !req.contains("X-Note") && req.ends_with("\r\n\r\n{}"),
            "{req}"
        );
    }
}

/// Body secrets redacted at capture are never sent as `[REDACTED]`: the
/// JSON member or form field is left out, the length follows the body
/// sent, and each is counted; secrets in the live answers' JSON bodies are
/// redacted in the results unless `--keep-secrets`, by the default names
/// and by those the capture was given (`--redact-body-field`,
/// `--redact-header`), which the capture file records.
#[test]
fn body_secrets_are_left_out_of_requests_and_redacted_in_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cap = pcap_capture(
        dir.path(),
        "secrets",
        &[
            "--redact-body-field",
            "session_hint",
            "--redact-header",
            "X-Live",
        ],
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let port = raw_server(move |_, _, req, stream| {
        log.lock()
            .unwrap()
            .push(String::from_utf8_lossy(req).into_owned());
        let body = r#"{"access_token": "live-made-up", "session_hint": "h1", "n": 1}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Live: v\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).is_ok()
    });
    let url = format!("http://127.0.0.1:{port}");
    for keep in [false, true] {
        seen.lock().unwrap().clear();
        let summary = dir.path().join(format!("summary-{keep}.json"));
        let mut args = vec![
            cap.to_str().unwrap(),
            "--primary",
            &url,
            "--max",
            "--concurrency",
            "1",
            "--summary-json",
            summary.to_str().unwrap(),
        ];
        if keep {
            args.push("--keep-secrets");
        }
        let (run, rows, _d) = replay(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let mut got = seen.lock().unwrap().clone();
        got.sort();
        let sent = |path: &str| {
            got.iter()
                .find(|r| r.starts_with(&format!("POST {path} ")))
                .unwrap_or_else(|| panic!("{path} not sent: {got:?}"))
                .clone()
        };
        let ends = |path: &str, body: &str| {
            let r = sent(path);
            assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{r:?}");
            assert!(
                r.contains(&format!("Content-Length: {}\r\n", body.len())),
                "{r:?}"
            );
        };
        // The redacted values stay left out even with --keep-secrets: the
        // capture holds no secret to send.
        ends(
            "/oauth/token",
            "grant_type=password&username=ann&client_id=app&scope=read",
        );
        ends("/login", r#"{"user": "ann", "remember": true}"#);
        ends(
            "/v1/completions",
            r#"{"prompt": "Say hello", "max_tokens": 1, "logprobs": 1}"#,
        );
        assert!(got.iter().all(|r| !r.contains("REDACTED")), "{got:?}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(summary["dropped_redacted_values"], 3, "{summary}");
        let live = role(&rows, TargetRole::Primary);
        assert_eq!(live.len(), 3);
        let (token, hint, header) = if keep {
            ("live-made-up", "h1", "v")
        } else {
            ("[REDACTED]", "[REDACTED]", "[REDACTED]")
        };
        let want = format!(r#"{{"access_token": "{token}", "session_hint": "{hint}", "n": 1}}"#);
        for r in live {
            assert_eq!(
                String::from_utf8_lossy(&r.response_body),
                want,
                "keep {keep}"
            );
            assert_eq!(r.response_headers.get("x-live"), Some(header.as_bytes()));
        }
    }
}

/// Replay frames each body itself: `--header` cannot add a second framing
/// (a Content-Length beside chunked, a Transfer-Encoding beside a length),
/// which would make the target read the connection differently.
#[test]
fn a_header_that_would_reframe_the_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path(), "one.parquet", 1, |_, _| {});
    for field in ["Content-Length: 3", "transfer-encoding: chunked"] {
        let (run, rows, _d) = replay(&[
            cap.to_str().unwrap(),
            "--primary",
            "http://127.0.0.1:1",
            "--header",
            field,
        ]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{err}");
        assert!(err.contains("framing"), "{err}");
        assert!(rows.is_empty());
    }
}

/// `--preserve-order`: a recorded connection whose next request comes after
/// its lane went idle (2 s) gets a new lane, on a new connection, that
/// starts once the old one is done: its requests still arrive in order,
/// each after the previous answer.
#[test]
fn preserve_order_hands_an_idle_connection_over_to_a_new_lane_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // One recorded connection: two requests, then two more 6 s later (the
    // lane goes idle 2 s after its last answer: room for a slow machine).
    let path = shaped_capture(dir.path(), "handover.parquet", 4, |i, ex| {
        ex.flow_id = 7;
        ex.seq_in_flow = i as u32;
        let gap = if i >= 2 { 6_000_000_000 } else { 0 };
        ex.request_ts = T0 + gap + i as i64 * 50_000_000;
    });
    // (connection, path) in the order requests arrive.
    let seen = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let port = {
        let seen = Arc::clone(&seen);
        ok_server(20, move |event| {
            if let Conn::Request(n, req) = event {
                let line = String::from_utf8_lossy(req);
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push((n, path));
            }
        })
    };
    let (run, rows, _d) = replay(&[
        path.to_str().unwrap(),
        "--primary",
        &format!("http://127.0.0.1:{port}"),
        "--preserve-order",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let live = role(&rows, TargetRole::Primary);
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|r| r.status == Some(200)), "{live:?}");
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(paths, ["/t/0", "/t/1", "/t/2", "/t/3"]);
    // The first two on one connection, the last two on another, later one.
    let conns: Vec<usize> = seen.iter().map(|(c, _)| *c).collect();
    assert!(
        conns[0] == conns[1] && conns[2] == conns[3] && conns[2] > conns[1],
        "{conns:?}"
    );
}
