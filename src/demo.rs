//! The demo's two model-serving services (primary v1, shadow v2) and the
//! client that sends them traffic. Used by `examples/demo_service.rs`, the
//! demo script and the end-to-end test, so all three run the same code.
//!
//! The API: `POST /predict` {"text"} -> {"label", "score", "request_id"};
//! `POST /embed` {"text"} -> {"embedding": [8 floats], "request_id"};
//! `GET /items/{id}` -> {"id", "name", "price", "request_id"};
//! `POST /v1/chat/completions` (OpenAI shape, `stream: true`) -> a
//! server-sent event stream of chat.completion.chunk events, one word per
//! event, with a usage chunk and `[DONE]`.
//! Answers are a pure function of the request, except `request_id` (a
//! per-process counter: noise that `diff` must recognise).
//!
//! v2's deliberate regressions (documented in docs/demo.md):
//! - about 12% of `/predict` inputs get the other label, always positive
//!   to negative, so the label distribution drifts (60/40 to about 48/52);
//! - `/embed` takes 4 ms longer;
//! - `/predict` and `/embed` spend 4 times the CPU (0.4 ms against 0.1);
//! - its `/metrics` lacks v1's `demo_model_load_seconds`;
//! - about 6% of `/items/{id}` answers lack `price`;
//! - chat: the first token comes 4.5x later (though the rest streams 2.5x
//!   as fast, so the whole answer ends sooner), the wording moves away from
//!   v1's (a quarter of the words differ, beyond v1's own sampling noise),
//!   about 6% of answers are rewritten outright and 2% are cut short.
//!
//! Chat answers are sampled like a real model at temperature > 0: each
//! answer of either version swaps about 8% of its words at random, so two
//! answers of v1 to the same question differ too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which version a service plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// FNV-1a: a stable hash so answers are the same on every run and machine.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn text_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Words the demo's chat model answers with.
const WORDS: &[&str] = &[
    "the",
    "shadow",
    "replay",
    "compares",
    "every",
    "answer",
    "with",
    "primary",
    "traffic",
    "latency",
    "model",
    "tokens",
    "stream",
    "first",
    "quickly",
    "careful",
    "rollout",
    "safe",
    "candidate",
    "version",
    "differs",
    "slightly",
    "because",
    "sampling",
    "adds",
    "noise",
    "so",
    "judge",
    "against",
    "itself",
    "before",
    "deciding",
];
/// What sampling or v2's style put in a word's place.
const ALT_WORDS: &[&str] = &[
    "a", "mirror", "rerun", "weighs", "each", "reply", "beside", "stable", "requests", "delay",
    "network", "pieces", "flow", "earliest", "fast", "prudent", "launch", "sound",
];

/// A chat answer: the words, and why generation stopped.
fn chat_answer(v: Version, prompt: &str, rid: u64) -> (Vec<&'static str>, &'static str) {
    let ph = fnv(prompt.as_bytes());
    let n = 24 + (ph % 12) as usize;
    let rewritten = v == Version::V2 && (ph >> 16) % 100 < 6;
    let cut = v == Version::V2 && (ph >> 16) % 100 >= 6 && (ph >> 16) % 100 < 8;
    let seed = if rewritten { ph ^ 0x5bd1_e995 } else { ph };
    let mut words: Vec<&'static str> = (0..n)
        .map(|i| {
            let w = fnv(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat());
            // v2's own style: every fourth word its own choice.
            if v == Version::V2 && !rewritten && i % 4 == 3 {
                return ALT_WORDS[(w % ALT_WORDS.len() as u64) as usize];
            }
            WORDS[(w % WORDS.len() as u64) as usize]
        })
        .collect();
    for (i, w) in words.iter_mut().enumerate() {
        let r = fnv(&[rid.to_le_bytes(), (i as u64).to_le_bytes()].concat());
        if r % 100 < 8 {
            *w = ALT_WORDS[((r >> 8) % ALT_WORDS.len() as u64) as usize];
        }
    }
    if cut {
        words.truncate(n / 2);
        return (words, "length");
    }
    (words, "stop")
}

/// The events of a streamed chat answer, each with the pause before it.
/// `seed` makes the sampling of this process its own.
fn chat_stream(v: Version, body: &[u8], rid: u64, seed: u64) -> Vec<(Duration, String)> {
    let prompt = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|b| b["messages"][0]["content"].as_str().map(str::to_string))
        .unwrap_or_default();
    let (words, finish) = chat_answer(v, &prompt, rid ^ seed);
    let (first, gap) = match v {
        Version::V1 => (Duration::from_millis(10), Duration::from_micros(2500)),
        Version::V2 => (Duration::from_millis(45), Duration::from_millis(1)),
    };
    let id = format!("chatcmpl-{rid}");
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let c = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000 + rid,
            "model": "demo-chat",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    };
    let mut out = vec![(
        Duration::ZERO,
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ),
    )];
    for (i, w) in words.iter().enumerate() {
        let piece = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        let pause = if i == 0 { first } else { gap };
        out.push((pause, chunk(serde_json::json!({"content": piece}), None)));
    }
    out.push((Duration::ZERO, chunk(serde_json::json!({}), Some(finish))));
    let usage = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000 + rid,
        "model": "demo-chat", "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": words.len(), "total_tokens": 12 + words.len()},
    });
    out.push((Duration::ZERO, format!("data: {usage}\n\n")));
    out.push((Duration::ZERO, "data: [DONE]\n\n".to_string()));
    out
}

/// (status, JSON body, extra delay) for one request.
fn answer(v: Version, method: &str, path: &str, body: &[u8], rid: u64) -> (u16, String, Duration) {
    let h = fnv(body);
    match (method, path) {
        ("POST", "/predict") => {
            let text = text_of(body);
            let positive = fnv(text.as_bytes()) % 100 < 60;
            // One way only (positive to negative), so the labels drift
            // (60/40 to about 48/52), not just disagree.
            let flipped = v == Version::V2 && positive && (fnv(text.as_bytes()) >> 8) % 100 < 20;
            let label = if positive != flipped {
                "positive"
            } else {
                "negative"
            };
            let score = (fnv(text.as_bytes()) % 10_000) as f64 / 10_000.0;
            let b = serde_json::json!({"label": label, "score": score, "model": "sentiment", "request_id": rid});
            (200, b.to_string(), Duration::ZERO)
        }
        ("POST", "/embed") => {
            let e: Vec<f64> = (0..8)
                .map(|i| ((h >> (i * 8)) & 0xff) as f64 / 255.0 - 0.5)
                .collect();
            let delay = if v == Version::V2 {
                Duration::from_millis(4)
            } else {
                Duration::ZERO
            };
            let b = serde_json::json!({"embedding": e, "dim": 8, "request_id": rid});
            (200, b.to_string(), delay)
        }
        ("GET", p) if p.starts_with("/items/") => {
            let id = &p["/items/".len()..];
            let Ok(n) = id.parse::<u64>() else {
                return (404, r#"{"error":"no such item"}"#.into(), Duration::ZERO);
            };
            let mut b = serde_json::json!({
                "id": n, "name": format!("item {n}"), "price": (n % 97) as f64 + 0.99,
                "request_id": rid,
            });
            if v == Version::V2 && fnv(id.as_bytes()) % 100 < 6 {
                if let Some(m) = b.as_object_mut() {
                    m.remove("price");
                }
            }
            (200, b.to_string(), Duration::ZERO)
        }
        _ => (404, r#"{"error":"not found"}"#.into(), Duration::ZERO),
    }
}

/// A running service; stops when dropped.
pub struct Service {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Start a service on 127.0.0.1:`port` (0: any free port).
pub fn start(v: Version, port: u16) -> std::io::Result<Service> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let port = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(1));
    let cpu_ns = Arc::new(AtomicU64::new(0));
    // Sampling differs from process to process, as a real model's does:
    // two runs of v1 never give the same chat answers.
    let seed =
        fnv(&format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).into_bytes());
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if flag.load(Ordering::Relaxed) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let (counter, flag, cpu) =
                (Arc::clone(&counter), Arc::clone(&flag), Arc::clone(&cpu_ns));
            std::thread::spawn(move || serve_connection(v, conn, (&counter, &cpu), &flag, seed));
        }
    });
    Ok(Service { port, stop })
}

/// `counters`: requests served, and CPU ns its connection threads spent.
fn serve_connection(
    v: Version,
    conn: TcpStream,
    counters: (&AtomicU64, &AtomicU64),
    stop: &AtomicBool,
    seed: u64,
) {
    let (counter, cpu_ns) = counters;
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    while !stop.load(Ordering::Relaxed) {
        let Some((method, path, body, close)) = read_request(&mut r) else {
            return;
        };
        if method == "GET" && path == "/metrics" {
            let text = metrics_text(
                v,
                counter.load(Ordering::Relaxed),
                cpu_ns.load(Ordering::Relaxed),
            );
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                text.len()
            );
            if w.write_all(head.as_bytes()).is_err()
                || w.write_all(text.as_bytes()).is_err()
                || close
            {
                return;
            }
            continue;
        }
        let rid = counter.fetch_add(1, Ordering::Relaxed);
        let started = thread_cpu();
        let _spent = Spent(started, cpu_ns);
        if method == "POST" && (path == "/predict" || path == "/embed") {
            // The "model": v2 needs 4 times the CPU per inference.
            burn_cpu(Duration::from_micros(if v == Version::V2 {
                400
            } else {
                100
            }));
        }
        if method == "POST" && path == "/v1/chat/completions" {
            if write_stream(v, &mut w, &body, rid, seed).is_err() || close {
                return;
            }
            continue;
        }
        let (status, body, delay) = answer(v, &method, &path, &body, rid);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {rid}\r\nServer: demo-{}\r\n\r\n",
            body.len(),
            if v == Version::V1 { "v1" } else { "v2" }
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(body.as_bytes()).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; the clock id is constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Adds the CPU time a request took to its service's total when dropped
/// (whatever way the handling ends).
struct Spent<'a>(Duration, &'a AtomicU64);

impl Drop for Spent<'_> {
    fn drop(&mut self) {
        let ns = thread_cpu().saturating_sub(self.0).as_nanos() as u64;
        self.1.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Spin for `d` of this thread's CPU time.
fn burn_cpu(d: Duration) {
    let now = thread_cpu;
    let end = now() + d;
    let mut x = 1u64;
    // Bounded: thread CPU time always advances while we spin.
    while now() < end {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// The service's own telemetry in the Prometheus text format: the CPU its
/// request threads spent (not the whole process's: the end-to-end test runs
/// v1 and v2 in one process), the process's memory, requests served, and
/// (v1 only: v2 forgot it, as telemetry parity shows) the time its model
/// took to load.
fn metrics_text(v: Version, served: u64, cpu_ns: u64) -> String {
    let rss = crate::replay::sampler::own_usage(std::process::id()).map_or(0.0, |u| u.1);
    let cpu = cpu_ns as f64 / 1e9;
    let mut t = format!(
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n# TYPE demo_requests_total counter\ndemo_requests_total {served}\n"
    );
    if v == Version::V1 {
        t.push_str("# TYPE demo_model_load_seconds gauge\ndemo_model_load_seconds 0.25\n");
    }
    t
}

/// A streamed chat answer, chunked, each event written when its pause is
/// over (so capture and replay see real token timing).
fn write_stream(
    v: Version,
    w: &mut TcpStream,
    body: &[u8],
    rid: u64,
    seed: u64,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nX-Request-Id: {rid}\r\nServer: demo-{}\r\n\r\n",
        if v == Version::V1 { "v1" } else { "v2" }
    );
    w.write_all(head.as_bytes())?;
    for (pause, event) in chat_stream(v, body, rid, seed) {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        w.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
    }
    w.write_all(b"0\r\n\r\n")
}

/// (method, path, body, connection: close) of the next request.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>, bool)> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            if head == b"\r\n" {
                head.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head).ok()?;
    let (method, path) = (req.method?.to_string(), req.path?.to_string());
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let close = header("connection").as_deref() == Some("close");
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body).ok()?;
    Some((method, path, body, close))
}

/// The demo's request mix, deterministic: request `i` of a run.
pub fn request(i: u64) -> (String, String, String) {
    match i % 10 {
        0..=2 => (
            "POST".into(),
            "/predict".into(),
            format!(
                r#"{{"text": "review number {} is {}"}}"#,
                i,
                ["great", "awful", "fine", "meh"][(i % 4) as usize]
            ),
        ),
        3 | 4 => (
            "POST".into(),
            "/v1/chat/completions".into(),
            format!(
                r#"{{"model": "demo-chat", "stream": true, "stream_options": {{"include_usage": true}}, "messages": [{{"role": "user", "content": "question {} about {}"}}]}}"#,
                i,
                ["rollouts", "latency", "noise", "tokens"][(i % 4) as usize]
            ),
        ),
        5..=7 => (
            "GET".into(),
            format!("/items/{}", 1000 + (i * 7919) % 5000),
            String::new(),
        ),
        _ => (
            "POST".into(),
            "/embed".into(),
            format!(r#"{{"text": "sentence {i}"}}"#),
        ),
    }
}

/// Send `n` requests of the mix to 127.0.0.1:`port` over `conns` keep-alive
/// connections; returns how many got an answer.
pub fn load(port: u16, n: u64, conns: u64) -> std::io::Result<u64> {
    let conns = conns.clamp(1, 64);
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || -> std::io::Result<u64> {
                let s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut w = s.try_clone()?;
                let mut r = BufReader::new(s);
                let mut ok = 0;
                for i in (c..n).step_by(conns as usize) {
                    let (m, p, b) = request(i);
                    let ct = if b.is_empty() { "" } else { "Content-Type: application/json\r\n" };
                    write!(w, "{m} {p} HTTP/1.1\r\nHost: demo.local\r\nUser-Agent: demo-load\r\nAuthorization: Bearer demo-secret-{c}\r\n{ct}Content-Length: {}\r\n\r\n{b}", b.len())?;
                    ok += u64::from(read_response(&mut r).is_some());
                }
                Ok(ok)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| std::io::Error::other("load thread panicked"))??;
    }
    Ok(total)
}

fn read_response(r: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if r.read_until(b'\n', &mut head).ok()? == 0 {
            return None;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head).ok()?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").as_deref() == Some("chunked") {
        // Bounded by the read timeout and the chunk count.
        for _ in 0..100_000 {
            let mut line = String::new();
            r.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim(), 16).ok()?;
            let mut data = vec![0; size + 2];
            r.read_exact(&mut data).ok()?;
            if size == 0 {
                return resp.code;
            }
        }
        return None;
    }
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    resp.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_differs_from_v1_only_where_documented() {
        let (mut flips, mut missing, mut back) = (0, 0, 0);
        let (mut positive_v1, mut positive_v2) = (0, 0);
        for i in 0..2000 {
            let text = format!(r#"{{"text": "t{i}"}}"#);
            let (_, a, _) = answer(Version::V1, "POST", "/predict", text.as_bytes(), 1);
            let (_, b, _) = answer(Version::V2, "POST", "/predict", text.as_bytes(), 1);
            flips += u32::from(a != b);
            positive_v1 += u32::from(a.contains("\"positive\""));
            positive_v2 += u32::from(b.contains("\"positive\""));
            back += u32::from(a.contains("\"negative\"") && b.contains("\"positive\""));
            let p = format!("/items/{i}");
            let (_, a, _) = answer(Version::V1, "GET", &p, b"", 1);
            let (_, b, _) = answer(Version::V2, "GET", &p, b"", 1);
            missing += u32::from(a != b && !b.contains("price"));
        }
        assert!(
            (180..=300).contains(&flips),
            "{flips} of 2000 labels flipped"
        );
        // The flips go one way: the label distribution moves.
        assert_eq!(back, 0);
        assert_eq!(positive_v1 - positive_v2, flips);
        assert!(
            (60..=180).contains(&missing),
            "{missing} of 2000 prices missing"
        );
        let (_, _, d1) = answer(Version::V1, "POST", "/embed", b"{}", 1);
        let (_, _, d2) = answer(Version::V2, "POST", "/embed", b"{}", 1);
        assert_eq!((d1, d2), (Duration::ZERO, Duration::from_millis(4)));
    }

    #[test]
    fn services_answer_real_requests() {
        let v1 = start(Version::V1, 0).unwrap();
        assert_eq!(load(v1.port, 50, 4).unwrap(), 50);
    }
}
