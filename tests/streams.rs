//! Event streams end to end: a real streaming HTTP/1.1 server on 127.0.0.1
//! (OpenAI-style chat completion SSE and Ollama-style NDJSON, chunked or
//! close-delimited, paced, split, batched, cut and stalled) that records when
//! each event left it; replay's `event_offsets_ns`, `first_token_ts` and
//! `--stream-idle-timeout`, and live capture's `response_event_offsets_ns`,
//! are checked against those times. The live capture test needs root (CI
//! runs as root); set SHADOWCTL_SKIP_LIVE=1 to skip it elsewhere.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use assert_cmd::Command;
use serde_json::{json, Value};
use shadowctl::schema::{
    read_exchanges, read_results, ErrorKind, Exchange, ExchangeFileWriter, IncompleteReason,
    ReplayResult, TargetRole, WriterConfig,
};

/// The pause between the server's writes, so each event has its own time.
const GAP: Duration = Duration::from_millis(15);
/// How long the stalling stream says nothing (longer than the replay's idle
/// limit of 300 ms, bounded).
const STALL: Duration = Duration::from_secs(2);
/// A recorded event time may differ from the server's write time by this.
const TOLERANCE_NS: i64 = 2_000_000;
/// The content pieces, cycled: non-ASCII, quotes and a newline inside JSON.
const PIECES: [&str; 5] = [
    "Hello",
    ", wörld",
    " \"quoted\"",
    "\nsecond line",
    " ✓ end.",
];

/// Timing assertions share two cores: the tests of this file run one at a
/// time so a live capture does not delay a replay's reads.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Nanoseconds on this process's monotonic clock. Replay's times are checked
/// as intervals on it: replay anchors its own clock to the wall once, so a
/// wall-clock step during a run (NTP, a resumed VM) would move replay's
/// absolute times away from the server's wall times (seen in CI: 2-11 ms).
fn mono_ns() -> i64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as i64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    /// `POST /v1/chat/completions`: OpenAI chat completion chunks as SSE.
    OpenAi,
    /// `POST /api/generate`: Ollama's NDJSON.
    Ollama,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One event per write, `GAP` apart.
    Paced,
    /// Each event in two writes `GAP` apart: even events split in the middle,
    /// odd ones just before their last byte (the line end that completes them).
    Split,
    /// Three events per write.
    Batch,
    /// Three whole events, then half of the fourth, then the connection closes.
    Cut,
    /// Two events, then nothing for `STALL`, then the connection closes.
    Stall,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Paced,
        Mode::Split,
        Mode::Batch,
        Mode::Cut,
        Mode::Stall,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Mode::Paced => "paced",
            Mode::Split => "split",
            Mode::Batch => "batch",
            Mode::Cut => "cut",
            Mode::Stall => "stall",
        }
    }
}

/// One stream the server is asked for; all of it is in the request target.
#[derive(Clone, Copy, Debug)]
struct Case {
    api: Api,
    chunked: bool,
    mode: Mode,
    /// Content events.
    n: usize,
}

impl Case {
    fn new(api: Api, chunked: bool, mode: Mode, n: usize) -> Self {
        Case {
            api,
            chunked,
            mode,
            n,
        }
    }

    /// The request target; `id` makes it unique, so it keys the server's log.
    fn target(&self, id: &str) -> String {
        let path = match self.api {
            Api::OpenAi => "/v1/chat/completions",
            Api::Ollama => "/api/generate",
        };
        let te = if self.chunked { "chunked" } else { "close" };
        format!(
            "{path}?te={te}&mode={}&n={}&id={id}",
            self.mode.as_str(),
            self.n
        )
    }

    fn parse(target: &str) -> Option<Case> {
        let (path, query) = target.split_once('?')?;
        let api = match path {
            "/v1/chat/completions" => Api::OpenAi,
            "/api/generate" => Api::Ollama,
            _ => return None,
        };
        let q: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
        let chunked = match *q.get("te")? {
            "chunked" => true,
            "close" => false,
            _ => return None,
        };
        let mode = *q.get("mode")?;
        let mode = *Mode::ALL.iter().find(|m| m.as_str() == mode)?;
        let n = q.get("n")?.parse().ok().filter(|n| (1..=50).contains(n))?;
        Some(Case::new(api, chunked, mode, n))
    }

    fn content_type(&self) -> &'static str {
        match self.api {
            Api::OpenAi => "text/event-stream",
            Api::Ollama => "application/x-ndjson",
        }
    }
}

/// The events of one stream, as bytes on the wire.
struct Script {
    events: Vec<Vec<u8>>,
    /// The generated text each event carries, if any.
    pieces: Vec<Option<String>>,
    /// The event that reports the output token count, and the count.
    usage_event: usize,
    output_tokens: u64,
}

fn script(api: Api, n: usize) -> Script {
    let pieces: Vec<String> = (0..n)
        .map(|i| PIECES[i % PIECES.len()].to_string())
        .collect();
    let output_tokens = 100 + n as u64;
    let mut events = Vec::new();
    let mut carried = Vec::new();
    match api {
        Api::OpenAi => {
            let chunk = |choices: Value| {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": "m", "choices": choices})
            };
            let mut values = vec![chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            )];
            carried.push(None);
            for p in &pieces {
                values.push(chunk(
                    json!([{"index": 0, "delta": {"content": p}, "finish_reason": null}]),
                ));
                carried.push(Some(p.clone()));
            }
            values.push(chunk(
                json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            ));
            let mut usage = chunk(json!([]));
            usage["usage"] = json!({"prompt_tokens": 7, "completion_tokens": output_tokens,
                                    "total_tokens": 7 + output_tokens});
            values.push(usage);
            carried.extend([None, None, None]);
            events = values
                .iter()
                .map(|v| format!("data: {v}\n\n").into_bytes())
                .collect();
            events.push(b"data: [DONE]\n\n".to_vec());
        }
        Api::Ollama => {
            for p in &pieces {
                let v = json!({"model": "m", "created_at": "2026-01-01T00:00:00Z",
                               "response": p, "done": false});
                events.push(format!("{v}\n").into_bytes());
                carried.push(Some(p.clone()));
            }
            let v = json!({"model": "m", "created_at": "2026-01-01T00:00:01Z", "response": "",
                           "done": true, "done_reason": "stop", "prompt_eval_count": 7,
                           "eval_count": output_tokens});
            events.push(format!("{v}\n").into_bytes());
            carried.push(None);
        }
    }
    Script {
        usage_event: match api {
            Api::OpenAi => n + 2,
            Api::Ollama => n,
        },
        events,
        pieces: carried,
        output_tokens,
    }
}

/// What the server sent for one request.
#[derive(Clone, Debug, Default)]
struct Sent {
    /// When the write of the response head returned (ns since epoch).
    head_ts: i64,
    /// The same on [`mono_ns`], and when the request had been read.
    head_mono: i64,
    asked_mono: i64,
    /// [`Sent::event_ts`] and [`Sent::first_content_ts`] on [`mono_ns`].
    event_mono: Vec<i64>,
    first_content_mono: Option<i64>,
    /// Per whole event, when the write that completed it returned.
    event_ts: Vec<i64>,
    /// The body bytes written (de-chunked), half events included.
    body: Vec<u8>,
    /// The text of the whole events.
    text: String,
    /// Whole events that carried text.
    content_events: usize,
    /// Write time of the first event with text.
    first_content_ts: Option<i64>,
    /// The output token count, once the event reporting it was sent.
    output_tokens: Option<u64>,
}

/// Request target to what was sent for it, in the order requests came.
type Log = Arc<Mutex<HashMap<String, Vec<Sent>>>>;

/// Writes one response body, framing each write and logging the events it
/// completes.
struct Body<'a> {
    w: &'a mut TcpStream,
    chunked: bool,
    script: &'a Script,
    log: &'a Log,
    target: &'a str,
    /// Index of this response in `log[target]`.
    slot: usize,
    /// Events completed so far.
    done: usize,
}

impl Body<'_> {
    /// Write `bytes` in one write call; they complete `completes` events.
    fn write(&mut self, bytes: &[u8], completes: usize) -> std::io::Result<()> {
        let framed = if self.chunked {
            let mut f = format!("{:x}\r\n", bytes.len()).into_bytes();
            f.extend_from_slice(bytes);
            f.extend_from_slice(b"\r\n");
            f
        } else {
            bytes.to_vec()
        };
        self.w.write_all(&framed)?;
        let (ts, mono) = (now_ns(), mono_ns());
        let mut log = self.log.lock().unwrap();
        let sent = &mut log.get_mut(self.target).unwrap()[self.slot];
        sent.body.extend_from_slice(bytes);
        for _ in 0..completes {
            let i = self.done;
            self.done += 1;
            sent.event_ts.push(ts);
            sent.event_mono.push(mono);
            if let Some(p) = &self.script.pieces[i] {
                sent.text.push_str(p);
                sent.content_events += 1;
                sent.first_content_ts.get_or_insert(ts);
                sent.first_content_mono.get_or_insert(mono);
            }
            if i == self.script.usage_event {
                sent.output_tokens = Some(self.script.output_tokens);
            }
        }
        Ok(())
    }
}

/// Answer one request; Ok(true) when the connection may carry another.
fn answer(
    w: &mut TcpStream,
    case: Case,
    target: &str,
    log: &Log,
    asked_mono: i64,
) -> std::io::Result<bool> {
    let s = script(case.api, case.n);
    let framing = if case.chunked {
        "Transfer-Encoding: chunked"
    } else {
        "Connection: close"
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nCache-Control: no-cache\r\n{framing}\r\n\r\n",
        case.content_type()
    );
    w.write_all(head.as_bytes())?;
    let (head_ts, head_mono) = (now_ns(), mono_ns());
    let slot = {
        let mut log = log.lock().unwrap();
        let list = log.entry(target.to_string()).or_default();
        list.push(Sent {
            head_ts,
            head_mono,
            asked_mono,
            ..Default::default()
        });
        list.len() - 1
    };
    let chunked = case.chunked;
    let mut body = Body {
        w,
        chunked,
        script: &s,
        log,
        target,
        slot,
        done: 0,
    };
    std::thread::sleep(GAP);
    match case.mode {
        Mode::Paced => {
            for ev in &s.events {
                body.write(ev, 1)?;
                std::thread::sleep(GAP);
            }
        }
        Mode::Split => {
            for (i, ev) in s.events.iter().enumerate() {
                let at = if i % 2 == 0 {
                    ev.len() / 2
                } else {
                    ev.len() - 1
                };
                body.write(&ev[..at], 0)?;
                std::thread::sleep(GAP);
                body.write(&ev[at..], 1)?;
                std::thread::sleep(GAP);
            }
        }
        Mode::Batch => {
            for group in s.events.chunks(3) {
                body.write(&group.concat(), group.len())?;
                std::thread::sleep(GAP);
            }
        }
        Mode::Cut => {
            for ev in &s.events[..3] {
                body.write(ev, 1)?;
                std::thread::sleep(GAP);
            }
            let half = &s.events[3];
            body.write(&half[..half.len() / 2], 0)?;
            return Ok(false);
        }
        Mode::Stall => {
            for ev in &s.events[..2] {
                body.write(ev, 1)?;
                std::thread::sleep(GAP);
            }
            std::thread::sleep(STALL);
            return Ok(false);
        }
    }
    if !chunked {
        return Ok(false);
    }
    body.w.write_all(b"0\r\n\r\n")?;
    Ok(true)
}

/// Read one request; its target.
fn read_request(r: &mut impl BufRead) -> Option<String> {
    let mut target = None;
    let mut len = 0usize;
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if target.is_none() {
            target = Some(line.split(' ').nth(1)?.to_string());
            continue;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if line == "\r\n" {
            let mut body = vec![0; len];
            r.read_exact(&mut body).ok()?;
            return target;
        }
    }
    None
}

fn serve(conn: TcpStream, log: Log) {
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(conn);
    for _ in 0..100 {
        let Some(target) = read_request(&mut r) else {
            return;
        };
        let asked_mono = mono_ns();
        let w = r.get_mut();
        let Some(case) = Case::parse(&target) else {
            let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        match answer(w, case, &target, &log, asked_mono) {
            Ok(true) => {}
            // Dropping the socket closes it: a close-delimited body ends,
            // a cut or stalled one stops where it was.
            _ => return,
        }
    }
}

/// The streaming server on 127.0.0.1, one thread per connection.
struct Server {
    port: u16,
    log: Log,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Log = Arc::default();
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for conn in listener.incoming().take(200) {
                let Ok(conn) = conn else { continue };
                let log = Arc::clone(&shared);
                std::thread::spawn(move || serve(conn, log));
            }
        });
        Server { port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What was sent for the `nth` request to `target`.
    fn sent(&self, target: &str, nth: usize) -> Sent {
        let log = self.log.lock().unwrap();
        let list = log
            .get(target)
            .unwrap_or_else(|| panic!("the server never answered {target}"));
        list.get(nth)
            .unwrap_or_else(|| panic!("{target} answered {} times, not {}", list.len(), nth + 1))
            .clone()
    }

    fn times_asked(&self, target: &str) -> usize {
        self.log.lock().unwrap().get(target).map_or(0, Vec::len)
    }
}

const REQUEST_BODY: &[u8] = br#"{"model":"m","stream":true,"prompt":"Say hello"}"#;

/// A capture file of one POST per target, each on its own connection, the
/// i-th recorded `at_ms[i]` after the first.
fn capture_file(dir: &Path, requests: &[(String, i64)]) -> PathBuf {
    let path = dir.join("capture.parquet");
    let mut w = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
    let rows: Vec<Exchange> = requests
        .iter()
        .enumerate()
        .map(|(i, (target, at_ms))| {
            let mut ex = Exchange {
                exchange_id: i as u64,
                flow_id: i as u64,
                method: "POST".into(),
                target: target.clone(),
                http_version: "HTTP/1.1".into(),
                request_ts: 1_700_000_000_000_000_000 + at_ms * 1_000_000,
                request_body: REQUEST_BODY.to_vec(),
                request_body_len: REQUEST_BODY.len() as u64,
                ..Default::default()
            };
            ex.request_end_ts = ex.request_ts;
            ex.request_headers.push(b"Host", b"llm.example");
            ex.request_headers
                .push(b"Content-Type", b"application/json");
            ex.request_headers
                .push(b"Content-Length", REQUEST_BODY.len().to_string().as_bytes());
            ex
        })
        .collect();
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
    path
}

/// Run `shadowctl replay CAPTURE ARGS --out …`: its rows and how long it took.
fn replay(capture: &Path, args: &[&str]) -> (Vec<ReplayResult>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let started = Instant::now();
    let run = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("replay")
        .arg(capture)
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("-q")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        run.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    (read_results(&out).unwrap(), took)
}

fn row<'a>(rows: &'a [ReplayResult], role: TargetRole, target: &str) -> &'a ReplayResult {
    let found: Vec<&ReplayResult> = rows
        .iter()
        .filter(|r| r.role == Some(role) && r.target == target)
        .collect();
    assert_eq!(found.len(), 1, "{role:?} rows for {target}");
    found[0]
}

fn assert_near(what: &str, got: i64, want: i64) {
    let off = got - want;
    assert!(
        off.abs() <= TOLERANCE_NS,
        "{what}: recorded {got}, server wrote at {want} ({:.3} ms off)",
        off as f64 / 1e6
    );
}

/// Read times in replay are when the reading task woke up, not kernel
/// times: on this 2-core VM a sleeper wakes more than 1.4 ms late for about
/// 0.1% of its wake-ups even when idle (../shared/NOTES.md). So a replay
/// time may exceed the tolerance up to this bound, at most
/// [`LATE_WAKEUPS_ALLOWED`] wake-ups per test (`check_late_wakeups`).
const LATE_BOUND_NS: i64 = 10_000_000;
const LATE_WAKEUPS_ALLOWED: usize = 3;
static LATE_WAKEUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static LAST_LATE_READ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn assert_read_near(what: &str, got: i64, want: i64) {
    let off = got - want;
    if off.abs() <= TOLERANCE_NS {
        return;
    }
    assert!(
        off.abs() <= LATE_BOUND_NS,
        "{what}: read at {got}, server wrote at {want} ({:.3} ms off)",
        off as f64 / 1e6
    );
    eprintln!("{what}: a late wake-up, {:.3} ms off", off as f64 / 1e6);
    // Events read together share one wake-up: count it once.
    let previous = LAST_LATE_READ.swap(got, std::sync::atomic::Ordering::SeqCst);
    if previous != got {
        LATE_WAKEUPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// At most a few late wake-ups since the last call.
fn check_late_wakeups() {
    let late = LATE_WAKEUPS.swap(0, std::sync::atomic::Ordering::SeqCst);
    assert!(
        late <= LATE_WAKEUPS_ALLOWED,
        "{late} replay read times beyond the tolerance (at most {LATE_WAKEUPS_ALLOWED})"
    );
}

/// Event times against the server's writes, on one clock; `read`: replay's
/// read times (see [`assert_read_near`]), else packet times.
fn assert_event_times(what: &str, times: &[i64], written: &[i64], read: bool) {
    assert_eq!(
        times.len(),
        written.len(),
        "{what}: events recorded vs whole events the server sent"
    );
    for (i, (&got, &want)) in times.iter().zip(written).enumerate() {
        let what = format!("{what}: event {i}");
        if read {
            assert_read_near(&what, got, want);
        } else {
            assert_near(&what, got, want);
        }
    }
}

/// The body assembles to the text and token count the server sent.
fn assert_answer(what: &str, content_type: Option<&[u8]>, body: &[u8], case: Case, sent: &Sent) {
    let a = shadowctl::llm::assemble(content_type, body, None)
        .unwrap_or_else(|| panic!("{what}: the body does not assemble"));
    let api = match case.api {
        Api::OpenAi => shadowctl::llm::Api::OpenAiChat,
        Api::Ollama => shadowctl::llm::Api::Ollama,
    };
    assert_eq!(a.api, api, "{what}");
    assert!(a.streamed, "{what}");
    assert_eq!(a.text.as_deref(), Some(sent.text.as_str()), "{what}: text");
    assert_eq!(
        a.to_json()["usage"]["output_tokens"],
        json!(sent.output_tokens),
        "{what}: output tokens"
    );
    assert_eq!(a.events, sent.event_ts.len(), "{what}: events");
    assert_eq!(
        a.content_events.len(),
        sent.content_events,
        "{what}: content events"
    );
    let finished = sent.output_tokens.is_some();
    assert_eq!(
        a.finish_reason.as_deref(),
        finished.then_some("stop"),
        "{what}: finish reason"
    );
}

/// A replayed row against what the server sent for it.
///
/// Compared as intervals (see [`mono_ns`]) from the request: replay's time
/// since sending it against the server's since reading it, to the first
/// byte (the head written), to each event and to the first token. The
/// request's own trip (a server thread woken late to read it, a connection
/// accepted) moves every figure of the row alike: it is checked once, as
/// the smallest difference, and taken out, so each read is then checked on
/// its own and one late wake-up moves one figure.
fn assert_replayed(what: &str, r: &ReplayResult, case: Case, sent: &Sent) {
    assert_eq!(r.status, Some(200), "{what}");
    let sent_ts = r.sent_ts.unwrap();
    let offsets = r
        .event_offsets_ns
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no event offsets"));
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "{what}: {offsets:?}"
    );
    let since = |t: i64| t - sent.asked_mono;
    let first_byte = (r.first_byte_ts.unwrap() - sent_ts, since(sent.head_mono));
    // The first token is the first content chunk, not the role-only one
    // (written GAP earlier).
    let first_token = (
        r.first_token_ts.unwrap() - sent_ts,
        since(sent.first_content_mono.unwrap()),
    );
    let written: Vec<i64> = sent.event_mono.iter().map(|&t| since(t)).collect();
    let trip = offsets
        .iter()
        .zip(&written)
        .map(|(got, want)| got - want)
        .chain([first_byte.0 - first_byte.1, first_token.0 - first_token.1])
        .min()
        .unwrap();
    assert_read_near(&format!("{what}: the request's trip"), trip, 0);
    assert_read_near(
        &format!("{what}: wait for the first byte"),
        first_byte.0 - trip,
        first_byte.1,
    );
    let times: Vec<i64> = offsets.iter().map(|o| o - trip).collect();
    assert_event_times(what, &times, &written, true);
    assert_read_near(
        &format!("{what}: first token"),
        first_token.0 - trip,
        first_token.1,
    );
    assert_eq!(r.response_body, sent.body, "{what}: body");
    assert_eq!(r.response_body_len, sent.body.len() as u64, "{what}");
    assert!(!r.response_body_truncated, "{what}");
    let ct = r.response_headers.get("content-type");
    assert_eq!(ct, Some(case.content_type().as_bytes()), "{what}");
    assert_answer(what, ct, &r.response_body, case, sent);
}

#[test]
fn replayed_streams_keep_each_events_arrival_and_the_first_token() {
    let _serial = serial();
    LATE_WAKEUPS.store(0, std::sync::atomic::Ordering::SeqCst);
    let server = Server::start();
    use Api::*;
    use Mode::*;
    // (id, case, the row's error kind)
    let cases = [
        ("sse-chunked", Case::new(OpenAi, true, Paced, 5), None),
        ("sse-close", Case::new(OpenAi, false, Paced, 4), None),
        ("ndjson-chunked", Case::new(Ollama, true, Paced, 5), None),
        ("ndjson-close", Case::new(Ollama, false, Paced, 4), None),
        ("sse-split", Case::new(OpenAi, true, Split, 3), None),
        ("ndjson-split", Case::new(Ollama, false, Split, 3), None),
        ("sse-batch", Case::new(OpenAi, true, Batch, 6), None),
        ("ndjson-batch", Case::new(Ollama, true, Batch, 5), None),
        // Chunked: the missing end of the body is seen; the whole events stay.
        (
            "sse-cut-chunked",
            Case::new(OpenAi, true, Cut, 4),
            Some(ErrorKind::Reset),
        ),
        // Close-delimited: the close ends the body (HTTP cannot tell); the
        // half line is no event.
        ("ndjson-cut-close", Case::new(Ollama, false, Cut, 4), None),
    ];
    let dir = tempfile::tempdir().unwrap();
    // 300 ms apart: one stream at a time (the longest takes ~260 ms).
    let requests: Vec<(String, i64)> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, case, _))| (case.target(id), i as i64 * 300))
        .collect();
    let cap = capture_file(dir.path(), &requests);
    let (rows, _) = replay(&cap, &["--primary", &server.url()]);
    assert_eq!(
        rows.iter()
            .filter(|r| r.role == Some(TargetRole::Primary))
            .count(),
        cases.len()
    );
    for (id, case, error) in cases {
        let target = case.target(id);
        let r = row(&rows, TargetRole::Primary, &target);
        assert_eq!(r.error_kind, error, "{id}: {:?}", r.error_detail);
        let sent = server.sent(&target, 0);
        let whole = match (case.api, case.mode) {
            (_, Cut) => 3,
            (OpenAi, _) => case.n + 4,
            (Ollama, _) => case.n + 1,
        };
        assert_eq!(sent.event_ts.len(), whole, "{id}: the server's own count");
        assert_replayed(id, r, case, &sent);
        assert_eq!(server.times_asked(&target), 1, "{id}");
    }
    check_late_wakeups();
}

#[test]
fn a_stalled_stream_is_cut_after_the_idle_timeout_and_others_go_on() {
    let _serial = serial();
    LATE_WAKEUPS.store(0, std::sync::atomic::Ordering::SeqCst);
    let server = Server::start();
    let stalled = Case::new(Api::OpenAi, true, Mode::Stall, 4);
    let healthy = Case::new(Api::OpenAi, true, Mode::Paced, 4);
    let (stalled_t, healthy_t) = (stalled.target("stall"), healthy.target("healthy"));
    let dir = tempfile::tempdir().unwrap();
    // The healthy stream is sent 20 ms after the stalled one, while it is open.
    let cap = capture_file(
        dir.path(),
        &[(stalled_t.clone(), 0), (healthy_t.clone(), 20)],
    );
    let (rows, took) = replay(
        &cap,
        &["--primary", &server.url(), "--stream-idle-timeout", "300ms"],
    );
    // The server stalls for 2 s; the replay did not wait for it.
    assert!(took < Duration::from_millis(1800), "replay took {took:?}");

    let r = row(&rows, TargetRole::Primary, &stalled_t);
    assert_eq!(
        r.error_kind,
        Some(ErrorKind::StreamIdle),
        "{:?}",
        r.error_detail
    );
    let sent = server.sent(&stalled_t, 0);
    assert_eq!(sent.event_ts.len(), 2);
    // The two events that came are kept: their times, first token and body.
    assert_replayed("stalled", r, stalled, &sent);
    assert_eq!(
        shadowctl::llm::assemble(Some(b"text/event-stream"), &r.response_body, None)
            .unwrap()
            .text
            .as_deref(),
        Some(PIECES[0])
    );
    // Cut by the idle limit: about 300 ms after the last byte came.
    let silence =
        (r.done_ts.unwrap() - r.sent_ts.unwrap()) - (sent.event_mono[1] - sent.asked_mono);
    assert!(
        (300_000_000..700_000_000).contains(&silence),
        "cut {:.1} ms after the last event",
        silence as f64 / 1e6
    );

    let h = row(&rows, TargetRole::Primary, &healthy_t);
    assert_eq!(h.error_kind, None, "{:?}", h.error_detail);
    assert_replayed("healthy", h, healthy, &server.sent(&healthy_t, 0));
    // It ran while the stalled stream was open, and finished first.
    assert!(h.sent_ts.unwrap() < r.done_ts.unwrap());
    assert!(h.done_ts.unwrap() < r.done_ts.unwrap());
    check_late_wakeups();
}

// ---- live capture ------------------------------------------------------

fn skip_live() -> bool {
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

/// A live capture, killed if a failing test leaves it running.
struct Capture(Child);

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a live capture on lo and wait until it says it is capturing.
fn start_capture(args: &[&str]) -> Capture {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .args(["capture", "--interface", "lo"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Capture(child);
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

/// SIGINT, then wait at most 5 s for a clean exit.
fn stop_capture(Capture(child): &mut Capture) {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "capture exited with {status:?}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "capture did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test client: POSTs and reads answers, chunked or close-delimited.
struct Client(BufReader<TcpStream>);

impl Client {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        Client(BufReader::new(s))
    }

    /// Send a POST to `target`; the body read and whether its framing ended.
    fn post(&mut self, target: &str) -> (Vec<u8>, bool) {
        let mut req = format!(
            "POST {target} HTTP/1.1\r\nHost: llm.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            REQUEST_BODY.len()
        )
        .into_bytes();
        req.extend_from_slice(REQUEST_BODY);
        self.0.get_mut().write_all(&req).unwrap();
        let r = &mut self.0;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200 "), "{line:?}");
        let mut chunked = false;
        for _ in 0..50 {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
        }
        let mut body = Vec::new();
        if !chunked {
            r.read_to_end(&mut body).unwrap();
            return (body, true);
        }
        for _ in 0..10_000 {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return (body, false);
            }
            let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
            if size == 0 {
                line.clear();
                r.read_line(&mut line).unwrap();
                return (body, true);
            }
            let mut chunk = vec![0; size + 2];
            if r.read_exact(&mut chunk).is_err() {
                return (body, false);
            }
            body.extend_from_slice(&chunk[..size]);
        }
        panic!("more than 10000 chunks");
    }
}

#[test]
fn live_capture_times_each_complete_event_from_its_packets() {
    let _serial = serial();
    LATE_WAKEUPS.store(0, std::sync::atomic::Ordering::SeqCst);
    if skip_live() {
        return;
    }
    use Api::*;
    use Mode::*;
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.parquet");
    let port = server.port.to_string();
    let mut cap = start_capture(&["--port", &port, "--out", out.to_str().unwrap()]);

    // Connections, each with the streams asked on it in order: (id, case).
    let connections: Vec<Vec<(&str, Case)>> = vec![
        // Keep-alive: three chunked streams on one connection.
        vec![
            ("a-sse-paced", Case::new(OpenAi, true, Paced, 4)),
            ("a-ndjson-split", Case::new(Ollama, true, Split, 3)),
            ("a-sse-batch", Case::new(OpenAi, true, Batch, 6)),
        ],
        vec![("b-sse-close", Case::new(OpenAi, false, Paced, 4))],
        vec![("c-ndjson-close-batch", Case::new(Ollama, false, Batch, 5))],
        vec![("d-sse-split-close", Case::new(OpenAi, false, Split, 3))],
        vec![("e-sse-cut-chunked", Case::new(OpenAi, true, Cut, 4))],
        vec![("f-ndjson-cut-close", Case::new(Ollama, false, Cut, 4))],
    ];
    let mut asked = Vec::new();
    for conn in &connections {
        let mut c = Client::connect(server.port);
        for &(id, case) in conn {
            let target = case.target(id);
            let (body, ended) = c.post(&target);
            // Only chunked framing can show that a body was cut.
            let cut = case.mode == Cut && case.chunked;
            assert_eq!(ended, !cut, "{id}: the client saw the end");
            asked.push((id, case, target, body));
        }
    }
    // Let the last packets reach the capture before stopping it.
    std::thread::sleep(Duration::from_millis(500));
    stop_capture(&mut cap);

    let (rows, _) = read_exchanges(&out).unwrap();
    assert_eq!(rows.len(), asked.len(), "{rows:#?}");
    for (id, case, target, client_body) in &asked {
        let sent = server.sent(target, 0);
        assert_eq!(client_body, &sent.body, "{id}: what the client read");
        let found: Vec<&Exchange> = rows.iter().filter(|r| &r.target == target).collect();
        assert_eq!(found.len(), 1, "{id}");
        let ex = found[0];
        let what = format!("{id} (captured)");
        assert_eq!(ex.status, Some(200), "{what}");
        let expected = match (case.mode, case.chunked) {
            // The chunked framing shows the body was cut.
            (Cut, true) => Some(IncompleteReason::ResponseCut),
            // A close-delimited body ends at the close, cut or not.
            _ => None,
        };
        assert_eq!(ex.incomplete, expected, "{what}");
        let whole = match (case.api, case.mode) {
            (_, Cut) => 3,
            (OpenAi, _) => case.n + 4,
            (Ollama, _) => case.n + 1,
        };
        assert_eq!(sent.event_ts.len(), whole, "{what}: the server's own count");
        let start = ex.response_ts.unwrap();
        assert_near(&format!("{what}: response_ts"), start, sent.head_ts);
        let offsets = ex
            .response_event_offsets_ns
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: no event offsets"));
        let times: Vec<i64> = offsets.iter().map(|o| start + o).collect();
        assert_event_times(&what, &times, &sent.event_ts, false);
        assert_eq!(ex.response_body, sent.body, "{what}: body");
        let ct = ex.response_headers.get("content-type");
        assert_answer(&what, ct, &ex.response_body, *case, &sent);
    }

    // Replayed from this capture: the recorded rows carry the captured
    // times moved to their clock, and the live shadow's times are its own.
    let (results, _) = replay(
        &out,
        &[
            "--primary",
            "recorded",
            "--shadow",
            &server.url(),
            "--max",
            "--concurrency",
            "1",
        ],
    );
    for (id, case, target, _) in &asked {
        let ex = rows.iter().find(|r| &r.target == target).unwrap();
        let rec = row(&results, TargetRole::Recorded, target);
        let (start, offsets) = (
            ex.response_ts.unwrap(),
            ex.response_event_offsets_ns.clone().unwrap(),
        );
        let sent_ts = rec.sent_ts.unwrap();
        let moved: Vec<i64> = rec
            .event_offsets_ns
            .as_deref()
            .unwrap_or_else(|| panic!("{id}: recorded row has no event offsets"))
            .iter()
            .map(|o| sent_ts + o)
            .collect();
        let captured: Vec<i64> = offsets.iter().map(|o| start + o).collect();
        assert_eq!(moved, captured, "{id}: recorded event times");
        let first = server.sent(target, 0).first_content_ts.unwrap();
        assert_near(
            &format!("{id}: recorded first_token_ts"),
            rec.first_token_ts.unwrap(),
            first,
        );
        let shadow = row(&results, TargetRole::Shadow, target);
        let error = (case.mode == Cut && case.chunked).then_some(ErrorKind::Reset);
        assert_eq!(shadow.error_kind, error, "{id}: {:?}", shadow.error_detail);
        assert_replayed(
            &format!("{id} (shadow)"),
            shadow,
            *case,
            &server.sent(target, 1),
        );
    }
    check_late_wakeups();
}

/// The last step: `diff` on replayed streams assembles them (answers from
/// the same server agree, whatever their chunk ids) and reports the LLM
/// figures the server produced.
#[test]
fn diff_assembles_and_times_the_replayed_streams() {
    let _serial = serial();
    LATE_WAKEUPS.store(0, std::sync::atomic::Ordering::SeqCst);
    use Api::*;
    use Mode::*;
    let server = Server::start();
    let cases = [
        ("d-sse-chunked", Case::new(OpenAi, true, Paced, 4)),
        ("d-sse-close", Case::new(OpenAi, false, Paced, 6)),
        ("d-ndjson", Case::new(Ollama, true, Paced, 5)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let requests: Vec<(String, i64)> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, c))| (c.target(id), i as i64 * 200))
        .collect();
    let cap = capture_file(dir.path(), &requests);
    let results = dir.path().join("results.parquet");
    let url = server.url();
    let shadow = format!("v2={url}");
    let run = |args: &[&str]| {
        Command::cargo_bin("shadowctl")
            .unwrap()
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap()
    };
    let replay = run(&[
        "replay",
        cap.to_str().unwrap(),
        "--primary",
        &url,
        "--shadow",
        &shadow,
        "--out",
        results.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let json = dir.path().join("report.json");
    let diff = run(&[
        "diff",
        results.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]);
    // Three exchanges are too few to decide (INCONCLUSIVE), never bad input.
    assert_eq!(
        diff.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["exchanges"], 3);
    assert_eq!(
        r["overall"]["v2"]["divergent"], 0,
        "{}",
        r["overall"]["v2"]["fields"]
    );
    let llm = |endpoint: &str| {
        let e = r["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no {endpoint} in {}", r["endpoints"]));
        e["shadows"]["v2"]["llm"].clone()
    };
    let gap_ms = GAP.as_secs_f64() * 1e3;
    for (endpoint, answers, tokens) in [
        ("POST /v1/chat/completions", 2, (104.0 + 106.0) / 2.0),
        ("POST /api/generate", 1, 105.0),
    ] {
        let l = llm(endpoint);
        for side in ["primary", "shadow"] {
            assert_eq!(l["streamed"][side], answers, "{endpoint} {side}: {l}");
            assert_eq!(
                l["finish_reasons"][side]["stop"], answers,
                "{endpoint} {side}"
            );
            assert_eq!(
                l["output_tokens"][side]["mean"], tokens,
                "{endpoint} {side}"
            );
            // The server paces its content events GAP apart: the gaps diff
            // reports are GAP, and the first token comes within a GAP or
            // two of the request (role chunk first, then content).
            let gap = l["inter_token_ms"][side]["p50"].as_f64().unwrap();
            assert!(
                (gap - gap_ms).abs() < 2.0 + 0.02 * gap_ms,
                "{endpoint} {side}: gap {gap}"
            );
            let ttft = l["ttft_ms"][side]["p50"].as_f64().unwrap();
            assert!(
                ttft > 0.0 && ttft < 3.0 * gap_ms,
                "{endpoint} {side}: ttft {ttft}"
            );
        }
    }
    check_late_wakeups();
}
