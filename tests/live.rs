//! `shadowctl capture --interface lo` against a real HTTP server on 127.0.0.1,
//! with a real client on real sockets. Needs root (CI runs as root); set
//! SHADOWCTL_SKIP_LIVE=1 to skip on a machine where you are not.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shadowctl::schema::{read_exchanges, Exchange};

fn skip() -> bool {
    if std::env::var_os("SHADOWCTL_SKIP_LIVE").is_some() {
        eprintln!("SHADOWCTL_SKIP_LIVE set: live capture tests skipped");
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "live capture tests need root (or set SHADOWCTL_SKIP_LIVE=1)"
    );
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The fixture server (Python's http.server, HTTP/1.1 keep-alive).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Tests run side by side and a free port is only free when asked:
    /// another test's server may take it first. A server that could not
    /// bind has exited (while the port answers for the other one), so try
    /// another port, a few times.
    fn start() -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::try_start() {
                return server;
            }
        }
        panic!("fixture server did not start on any of 5 ports");
    }

    fn try_start() -> Option<Self> {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fixture_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // "listening" once bound; end of output if it could not bind.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fixture server did not start");
        if !line.starts_with("listening") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Server { child, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shadowctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadowctl"))
}

/// Start a live capture and wait until it says it is capturing.
fn start_capture(args: &[&str]) -> Child {
    let mut child = shadowctl()
        .args(["capture", "--interface", "lo"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("capturing on") {
                let _ = tx.send(());
            }
            eprintln!("[capture] {line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("capture did not start");
    child
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wait for exit, at most `limit`; returns the status and the time it took.
fn wait(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "capture did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read one response (the fixture server always sends Content-Length).
fn response(stream: &mut BufReader<TcpStream>, head_request: bool) -> (u16, Vec<u8>) {
    let mut status_line = String::new();
    stream.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; if head_request { 0 } else { len }];
    stream.read_exact(&mut body).unwrap();
    (status, body)
}

struct Client(BufReader<TcpStream>);

impl Client {
    fn connect(port: u16) -> Self {
        Client(BufReader::new(
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
        ))
    }

    fn send(&mut self, raw: &[u8], head: bool) -> (u16, Vec<u8>) {
        self.0.get_mut().write_all(raw).unwrap();
        response(&mut self.0, head)
    }

    fn post(&mut self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        self.send(&raw, false)
    }
}

fn rows_in(paths: &[PathBuf]) -> Vec<Exchange> {
    paths
        .iter()
        .flat_map(|p| read_exchanges(p).unwrap().0)
        .collect()
}

#[test]
fn captures_every_request_with_exact_bodies_and_stops_on_sigint() {
    if skip() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.parquet");
    let port = server.port.to_string();
    let mut cap = start_capture(&["--port", &port, "--out", out.to_str().unwrap()]);

    let mut c = Client::connect(server.port);
    let mut sent: Vec<(String, Vec<u8>, u16, Vec<u8>)> = Vec::new();
    for i in 0..5 {
        let body = format!("{{\"text\": \"{}\"}}", "w".repeat(i * 10)).into_bytes();
        let (status, resp) = c.post("/predict", &body);
        sent.push(("/predict".into(), body, status, resp));
        let raw = format!("GET /items/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        let (status, resp) = c.send(raw.as_bytes(), false);
        sent.push((format!("/items/{i}"), vec![], status, resp));
    }
    let (status, resp) = c.send(b"HEAD /items/7 HTTP/1.1\r\nHost: t\r\n\r\n", true);
    assert_eq!(status, 200);
    sent.push(("/items/7".into(), vec![], status, resp));
    let chunked = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n chunks\r\n0\r\n\r\n";
    let (status, resp) = c.send(chunked, false);
    sent.push(("/upload".into(), b"hello chunks".to_vec(), status, resp));
    let mega: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let (status, resp) = c.post("/upload", &mega);
    assert_eq!(resp, br#"{"received": 1048576}"#);
    sent.push(("/upload".into(), mega, status, resp));
    drop(c);
    // Let the last packets reach the capture before stopping it.
    std::thread::sleep(Duration::from_millis(500));

    signal(&cap, libc::SIGINT);
    let (status, took) = wait(&mut cap, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    let rows = rows_in(&[out]);
    assert_eq!(rows.len(), sent.len(), "{rows:#?}");
    for (target, body, status, resp) in &sent {
        let found = rows.iter().any(|r| {
            &r.target == target
                && &r.request_body == body
                && r.status == Some(*status)
                && &r.response_body == resp
        });
        assert!(found, "missing {target} ({} bytes) -> {status}", body.len());
    }
    assert!(rows.iter().all(|r| r.incomplete.is_none()));
}

#[test]
fn rotation_files_are_valid_and_together_hold_everything() {
    if skip() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rot");
    let port = server.port.to_string();
    let mut cap = start_capture(&[
        "--port",
        &port,
        "--out",
        out.to_str().unwrap(),
        "--rotate-secs",
        "1",
    ]);
    let mut c = Client::connect(server.port);
    let n = 45;
    for i in 0..n {
        let raw = format!("GET /items/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.send(raw.as_bytes(), false).0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&cap, libc::SIGTERM);
    let (status, took) = wait(&mut cap, Duration::from_secs(5));
    assert!(
        status.success() && took < Duration::from_secs(2),
        "{status:?} {took:?}"
    );
    // The summary names the live input, not "files 0 (0.0 MB)".
    let mut summary = String::new();
    cap.stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(
        summary.contains("input              live interface") && !summary.contains("files  "),
        "{summary}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{files:?}"
    );
    assert!(files.len() >= 3, "expected several files, got {files:?}");
    let rows = rows_in(&files);
    let mut targets: Vec<String> = rows.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    targets.dedup();
    assert_eq!(rows.len(), n);
    assert_eq!(targets.len(), n);
}

#[test]
fn duration_stops_a_quiet_capture_with_a_valid_file() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quiet.parquet");
    let port = free_port().to_string();
    let mut cap = start_capture(&[
        "--port",
        &port,
        "--out",
        out.to_str().unwrap(),
        "--duration",
        "1",
    ]);
    let (status, _) = wait(&mut cap, Duration::from_secs(4));
    assert!(status.success());
    assert_eq!(rows_in(&[out]).len(), 0);
}

/// A dropped ssh session delivers SIGHUP twice within milliseconds; the
/// second must not cut the stop short: the file keeps its footer and rows.
#[test]
fn a_double_hangup_still_finishes_the_file() {
    if skip() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hup.parquet");
    let port = server.port.to_string();
    let mut cap = start_capture(&["--port", &port, "--out", out.to_str().unwrap()]);
    let mut c = Client::connect(server.port);
    let (status, _) = c.send(b"GET /items/1 HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!(status, 200);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    signal(&cap, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(5));
    signal(&cap, libc::SIGHUP);
    let (status, _) = wait(&mut cap, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let rows = rows_in(&[out]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].target, "/items/1");
}

#[test]
fn sigkill_leaves_only_complete_files_under_final_names() {
    if skip() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed");
    let port = server.port.to_string();
    let mut cap = start_capture(&[
        "--port",
        &port,
        "--out",
        out.to_str().unwrap(),
        "--rotate-secs",
        "1",
    ]);
    let mut c = Client::connect(server.port);
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(2600) {
        let raw = format!("GET /items/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send(raw.as_bytes(), false);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&cap, libc::SIGKILL);
    let _ = wait(&mut cap, Duration::from_secs(5));
    let finals: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(
        !finals.is_empty(),
        "no complete file after 2.6 s with 1 s rotation"
    );
    let rows = rows_in(&finals);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.status == Some(200)));
}

#[test]
fn bad_filter_and_unknown_interface_are_clear_errors() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.parquet");
    let run = shadowctl()
        .args(["capture", "--interface", "lo", "--bpf", "tcp port", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("invalid filter 'tcp port'"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let run = shadowctl()
        .args(["capture", "--interface", "nosuch0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("'nosuch0' does not exist"), "{err}");
}

#[test]
fn missing_permission_says_what_to_do() {
    if skip() {
        return;
    }
    // Drop to user "nobody" with no capabilities.
    let run = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_shadowctl"))
        .args([
            "capture",
            "--interface",
            "lo",
            "--out",
            "/tmp/shadowctl-nobody.parquet",
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("no permission") && err.contains("setcap cap_net_raw,cap_net_admin"),
        "{err}"
    );
}

#[test]
fn any_interface_max_exchanges_and_loss_counters() {
    if skip() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("any.parquet");
    let stats = dir.path().join("stats.json");
    let port = server.port.to_string();
    let mut cap = shadowctl()
        .args([
            "capture",
            "--interface",
            "any",
            "--port",
            &port,
            "--max-exchanges",
            "5",
            "-q",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--stats-json")
        .arg(&stats)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // No "capturing on" line with -q is not guaranteed; give libpcap a moment.
    std::thread::sleep(Duration::from_millis(700));
    let mut c = Client::connect(server.port);
    for i in 0..10 {
        let raw = format!("GET /items/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.send(raw.as_bytes(), false).0, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // It stops by itself once 5 exchanges are complete.
    let (status, _) = wait(&mut cap, Duration::from_secs(5));
    assert!(status.success());
    let (rows, meta) = read_exchanges(&out).unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows
        .iter()
        .all(|r| r.status == Some(200) && r.target.starts_with("/items/")));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(json["kernel_received"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["kernel_dropped"], 0);
    assert_eq!(json["writer_dropped_exchanges"], 0);
    let in_file = meta
        .iter()
        .find(|(k, _)| k == "shadowctl.capture_stats")
        .expect("stats in the file");
    assert!(in_file.1.contains("kernel_dropped"));
}

/// Issue 17, point 2: API-key headers and credentials in the query string
/// never reach the capture file, unless `--keep-secrets`.
#[test]
fn api_keys_in_headers_and_query_strings_are_redacted_by_default() {
    if skip() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let port = server.port.to_string();
    let request = b"GET /items/3?api_key=s3cr3t-q&limit=5 HTTP/1.1\r\nHost: t\r\nX-Api-Key: k-s3cr3t-h\r\nIdempotency-Key: order-77\r\n\r\n";
    // Two captures of the same request at once: by default and with
    // --keep-secrets (one connection, so the server is asked once).
    let outs: Vec<PathBuf> = [false, true]
        .iter()
        .map(|keep| dir.path().join(format!("keep-{keep}.parquet")))
        .collect();
    let mut caps: Vec<Child> = outs
        .iter()
        .zip([false, true])
        .map(|(out, keep)| {
            let mut args = vec!["--port", &port, "--out", out.to_str().unwrap()];
            if keep {
                args.push("--keep-secrets");
            }
            start_capture(&args)
        })
        .collect();
    let mut c = Client::connect(server.port);
    let (status, _) = c.send(request, false);
    assert_eq!(status, 200);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    for cap in &mut caps {
        signal(cap, libc::SIGINT);
        let (status, _) = wait(cap, Duration::from_secs(5));
        assert!(status.success(), "{status:?}");
    }
    let redacted = &rows_in(&outs[..1])[0];
    assert_eq!(redacted.target, "/items/3?api_key=[REDACTED]&limit=5");
    let h = &redacted.request_headers;
    assert_eq!(h.get("x-api-key"), Some(&b"[REDACTED]"[..]));
    assert_eq!(h.get("idempotency-key"), Some(&b"order-77"[..]));
    // Not in the file's bytes at all (the kept file shows these short
    // values are stored readable, so their absence means something).
    let bytes = |p: &PathBuf| std::fs::read(p).unwrap();
    for secret in [&b"s3cr3t-q"[..], b"k-s3cr3t-h"] {
        assert!(memchr::memmem::find(&bytes(&outs[0]), secret).is_none());
        assert!(memchr::memmem::find(&bytes(&outs[1]), secret).is_some());
    }
    let kept = &rows_in(&outs[1..])[0];
    assert_eq!(kept.target, "/items/3?api_key=s3cr3t-q&limit=5");
    assert_eq!(
        kept.request_headers.get("x-api-key"),
        Some(&b"k-s3cr3t-h"[..])
    );
}

/// Frames of a pcap file sent onto an interface (AF_PACKET), as tcpreplay
/// would: `python3 -c SEND_FRAMES file.pcap iface` (classic little-endian
/// pcap, Ethernet).
const SEND_FRAMES: &str = r#"
import socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[2], 0))
off = 24
while off + 16 <= len(data):
    _, _, incl, _ = struct.unpack("<IIII", data[off:off + 16])
    s.send(data[off + 16:off + 16 + incl])
    off += 16 + incl
"#;

/// The interface a live capture reads disappears mid-run (a veth pair in a
/// network namespace of the test's own): the capture says why it stopped,
/// exits 2, and what it captured before is in complete files, and in
/// `--stats-json`, which names the error.
#[test]
fn an_interface_that_disappears_ends_the_capture_with_its_figures_kept() {
    if skip() {
        return;
    }
    let veth = "ip link add v0 type veth peer name v1";
    let able = Command::new("unshare")
        .args(["-n", "sh", "-c", veth])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        able,
        "this test makes a veth pair in a network namespace of its own: it needs root, unshare and ip (or set SHADOWCTL_SKIP_LIVE=1)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (out, stats, err) = (
        dir.path().join("out"),
        dir.path().join("stats.json"),
        dir.path().join("stderr"),
    );
    let pcap = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/small.pcap");
    let script = format!(
        r#"{veth} && ip link set v0 up && ip link set v1 up
"$BIN" capture --interface v0 --out "$OUT" --stats-json "$STATS" 2> "$ERR" &
pid=$!
for _ in $(seq 100); do grep -q "capturing on" "$ERR" && break; sleep 0.1; done
sleep 0.3
python3 -c "$SEND" "$PCAP" v1
sleep 1.5
ip link del v0
for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -KILL $pid 2>/dev/null
wait $pid
echo "rc=$?""#
    );
    let run = Command::new("timeout")
        .args(["60", "unshare", "-n", "sh", "-c", &script])
        .env("BIN", env!("CARGO_BIN_EXE_shadowctl"))
        .env("OUT", &out)
        .env("STATS", &stats)
        .env("ERR", &err)
        .env("SEND", SEND_FRAMES)
        .env("PCAP", &pcap)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        said.contains("rc=2"),
        "{said}\n{stderr}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stderr.contains("interface disappeared")
            && stderr.contains("capture failed after writing 10 rows"),
        "{stderr}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // The same exchanges as reading the file (its last request has no
    // answer in it).
    let read = dir.path().join("read.parquet");
    let st = shadowctl()
        .args(["capture", "-q", "--read"])
        .arg(&pcap)
        .arg("--out")
        .arg(&read)
        .status()
        .unwrap();
    assert!(st.success());
    let key = |r: &Exchange| {
        (
            r.method.clone(),
            r.target.clone(),
            r.status,
            r.response_body.clone(),
        )
    };
    let want: Vec<_> = rows_in(&[read]).iter().map(key).collect();
    let got: Vec<_> = rows_in(&files).iter().map(key).collect();
    assert_eq!(got.len(), 10, "small.pcap holds 10 exchanges");
    assert_eq!(got, want);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats written")).unwrap();
    assert_eq!(json["output_rows"], 10, "{json}");
    assert_eq!(json["exchanges"], 10, "{json}");
    assert_eq!(json["output_files"].as_array().unwrap().len(), files.len());
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("interface disappeared"),
        "{json}"
    );
}
