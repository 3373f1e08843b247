//! The judge pool against real judge processes: the Python scripts in
//! `testdata/judges/` and `examples/judges/llm_judge.py`, the latter talking
//! to a stand-in OpenAI-compatible server on 127.0.0.1 started here.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shadowctl::diff::judge::{
    JudgeError, JudgeFailure, JudgePool, JudgeRequest, JudgeSettings, Judgement,
    MAX_RESTARTS_IN_ROW,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> String {
    root()
        .join("testdata/judges")
        .join(name)
        .display()
        .to_string()
}

fn settings(command: &[&str], concurrency: usize, timeout: Duration) -> JudgeSettings {
    JudgeSettings {
        command: command.iter().map(|s| s.to_string()).collect(),
        concurrency,
        timeout,
    }
}

fn request(primary: &str, shadow: &str) -> JudgeRequest {
    JudgeRequest {
        endpoint: "POST /v1/answer".into(),
        path: "$.text".into(),
        request: json!({"question": "what happened?"}),
        primary: primary.into(),
        shadow: shadow.into(),
    }
}

/// The score overlap.py gives: Jaccard index of lowercased \w+ words.
fn jaccard(a: &str, b: &str) -> f64 {
    let words = |s: &str| -> BTreeSet<String> {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (wa, wb) = (words(a), words(b));
    if wa.is_empty() && wb.is_empty() {
        return 1.0;
    }
    wa.intersection(&wb).count() as f64 / wa.union(&wb).count() as f64
}

fn score(j: &Judgement) -> f64 {
    match j {
        Judgement::Score(s) => *s,
        other => panic!("expected a score, got {other:?}"),
    }
}

/// Whether process `pid` is gone. A zombie counts as gone only when
/// `allow_zombie`: our own children must be reaped by us, while an orphaned
/// grandchild is reaped by whatever adopted it.
fn gone(pid: u32, allow_zombie: bool) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised command name.
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    allow_zombie && state.starts_with('Z')
}

/// Pids written as file names into `dir` by the judges, once `n` are
/// there (a judge writes its own at start-up, which may still be under way).
fn pids_in(dir: &Path, n: usize) -> Vec<u32> {
    let read = || -> Vec<u32> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while read().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    read()
}

#[test]
fn scores_come_back_in_order_from_three_judges_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let log_env = format!("JUDGE_LOG={}", log.display());
    let overlap = script("overlap.py");
    let cmd = ["env", &log_env, "JUDGE_DELAY_S=0.1", "python3", &overlap];
    let mut pool = JudgePool::start(&settings(&cmd, 3, Duration::from_secs(20))).unwrap();

    let vocab = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"];
    let pairs: Vec<(String, String)> = (0..20)
        .map(|i| {
            let p: Vec<&str> = vocab.iter().copied().take(1 + i % 7).collect();
            let s: Vec<&str> = vocab.iter().copied().skip(i % 3).take(1 + i % 5).collect();
            (format!("{} w{i}", p.join(" ")), s.join(" "))
        })
        .collect();
    let requests = pairs.iter().map(|(p, s)| request(p, s)).collect();
    let out = pool.judge_all(requests);

    assert_eq!(out.len(), 20);
    for ((p, s), j) in pairs.iter().zip(&out) {
        assert!((score(j) - jaccard(p, s)).abs() < 1e-12, "{p} / {s}: {j:?}");
    }
    let st = pool.stats();
    assert_eq!(
        (st.calls, st.scored, st.failed, st.restarts),
        (20, 20, 0, 0)
    );

    // Each judge handled one request at a time, and they ran side by side.
    let spans: Vec<(u32, f64, f64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 20);
    let pids: BTreeSet<u32> = spans.iter().map(|s| s.0).collect();
    assert_eq!(pids.len(), 3, "three judge processes");
    let busiest = spans
        .iter()
        .map(|&(_, start, _)| {
            spans
                .iter()
                .filter(|&&(_, s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        (2..=3).contains(&busiest),
        "{busiest} requests in flight at once"
    );
}

#[test]
fn a_hanging_request_times_out_and_the_others_are_scored() {
    let hang = script("hang.py");
    let mut pool =
        JudgePool::start(&settings(&["python3", &hang], 2, Duration::from_secs(1))).unwrap();
    let requests: Vec<JudgeRequest> = (0..8)
        .map(|i| {
            let p = if i == 3 {
                "HANG here".to_string()
            } else {
                format!("ok {i}")
            };
            request(&p, &format!("ok {i}"))
        })
        .collect();
    let started = Instant::now();
    let out = pool.judge_all(requests);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    for (i, j) in out.iter().enumerate() {
        if i == 3 {
            assert_eq!(*j, Judgement::Failed(JudgeFailure::Timeout));
        } else {
            assert_eq!(score(j), 1.0, "request {i}");
        }
    }
    let st = pool.stats();
    assert_eq!(
        (st.calls, st.scored, st.failed, st.timeouts, st.restarts),
        (8, 7, 1, 1, 1)
    );

    // The worker that timed out works again for the next batch.
    let again = pool.judge_all((0..4).map(|i| request(&format!("a{i}"), "b")).collect());
    assert!(again.iter().all(|j| score(j) == 0.0), "{again:?}");
    assert_eq!(pool.stats().calls, 12);
}

#[test]
fn a_timeout_kills_what_the_judge_started_too() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let pid_env = format!("JUDGE_PIDFILE={}", pidfile.display());
    // The shell forks Python (it cannot exec it: a command follows), so the
    // process that hangs is the judge's child, not the judge.
    let hang = script("hang.py");
    let cmd = [
        "env",
        &pid_env,
        "sh",
        "-c",
        "python3 \"$0\"; exit $?",
        &hang,
    ];
    let mut pool = JudgePool::start(&settings(&cmd, 1, Duration::from_secs(1))).unwrap();
    let out = pool.judge_all(vec![request("HANG", "x")]);
    assert_eq!(out, [Judgement::Failed(JudgeFailure::Timeout)]);
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    // SIGKILL is delivered before kill(2) returns, but the kernel tears the
    // process down asynchronously: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid, true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(pid, true), "the hanging grandchild {pid} survived");
}

#[test]
fn a_crash_is_counted_and_later_requests_are_scored_after_a_restart() {
    let crash = script("crash.py");
    let mut pool =
        JudgePool::start(&settings(&["python3", &crash], 1, Duration::from_secs(20))).unwrap();
    let out = pool.judge_all(vec![
        request("a b", "a b"),
        request("CRASH", "x"),
        request("a b", "a c"),
        request("x", "y"),
    ]);
    assert_eq!(score(&out[0]), 1.0);
    match &out[1] {
        Judgement::Failed(JudgeFailure::Crashed(why)) => {
            assert!(why.contains("exited with status 3"), "{why}")
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!((score(&out[2]) - 1.0 / 3.0).abs() < 1e-12, "{:?}", out[2]);
    assert_eq!(score(&out[3]), 0.0);
    let st = pool.stats();
    assert_eq!(
        (st.calls, st.scored, st.failed, st.timeouts, st.restarts),
        (4, 3, 1, 0, 1)
    );
}

#[test]
fn a_judge_that_dies_at_once_is_restarted_a_bounded_number_of_times() {
    let mut pool = JudgePool::start(&settings(&["false"], 2, Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let out = pool.judge_all((0..12).map(|i| request(&i.to_string(), "x")).collect());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let whys: Vec<&str> = out
        .iter()
        .map(|j| match j {
            Judgement::Failed(JudgeFailure::Crashed(why)) => why.as_str(),
            other => panic!("expected a crash, got {other:?}"),
        })
        .collect();
    // Each worker: the first process and MAX_RESTARTS_IN_ROW restarts each
    // fail one request; the requests left fail with the reason it gave up.
    let per_worker = MAX_RESTARTS_IN_ROW as usize + 1;
    let exited = whys
        .iter()
        .filter(|w| w.starts_with("judge exited with status 1"))
        .count();
    let gave_up = whys
        .iter()
        .filter(|w| w.contains("not restarted again"))
        .count();
    assert_eq!(
        (exited, gave_up),
        (2 * per_worker, 12 - 2 * per_worker),
        "{whys:#?}"
    );
    let st = pool.stats();
    assert_eq!(
        (st.failed, st.restarts),
        (12, 2 * u64::from(MAX_RESTARTS_IN_ROW))
    );

    // Given up is for good: no more processes are started.
    let more = pool.judge_all(vec![request("a", "b")]);
    assert!(
        matches!(&more[0], Judgement::Failed(JudgeFailure::Crashed(w)) if w.contains("not restarted again"))
    );
    assert_eq!(pool.stats().restarts, 2 * u64::from(MAX_RESTARTS_IN_ROW));
}

#[test]
fn garbage_is_a_bad_answer_and_the_judge_stays_usable() {
    let garbage = script("garbage.py");
    let mut pool = JudgePool::start(&settings(
        &["python3", &garbage],
        1,
        Duration::from_secs(20),
    ))
    .unwrap();
    let markers = [
        "junk", "WRONGID", "RANGE", "NAN", "NOSCORE", "LONG", "REFUSE", "GOOD",
    ];
    let out = pool.judge_all(markers.iter().map(|m| request(m, "x")).collect());
    let why = |i: usize| match &out[i] {
        Judgement::Failed(JudgeFailure::BadAnswer(why)) => why.clone(),
        other => panic!("{}: expected a bad answer, got {other:?}", markers[i]),
    };
    assert!(why(0).starts_with("not JSON"), "{}", why(0));
    assert!(why(1).contains("while waiting for id"), "{}", why(1));
    assert!(why(2).contains("outside 0..1"), "{}", why(2));
    assert!(
        why(3).contains("NaN and Infinity are not JSON"),
        "{}",
        why(3)
    );
    assert!(why(4).starts_with("neither"), "{}", why(4));
    assert!(why(5).starts_with("answer line longer than"), "{}", why(5));
    assert_eq!(
        out[6],
        Judgement::Failed(JudgeFailure::Refused("cannot grade this".into()))
    );
    assert_eq!(out[7], Judgement::Score(0.5));
    let st = pool.stats();
    assert_eq!(
        (st.calls, st.scored, st.failed, st.timeouts, st.restarts),
        (8, 1, 7, 0, 0)
    );
}

/// A banner on stdout costs one request, and a blank line after each
/// answer none: the judge stays in step with its requests.
#[test]
fn a_stray_line_costs_one_request_not_every_later_one() {
    let script = "import sys, json\n\
        print('model loaded', flush=True)\n\
        for line in sys.stdin:\n    r = json.loads(line)\n    \
        print(json.dumps({'id': r['id'], 'score': 0.25}) + '\\n', flush=True)\n";
    let mut pool = JudgePool::start(&settings(
        &["python3", "-c", script],
        1,
        Duration::from_secs(20),
    ))
    .unwrap();
    let out = pool.judge_all((0..5).map(|_| request("a", "b")).collect());
    assert!(
        matches!(&out[0], Judgement::Failed(JudgeFailure::BadAnswer(w)) if w.starts_with("not JSON")),
        "{:?}",
        out[0]
    );
    assert!(
        out[1..].iter().all(|j| *j == Judgement::Score(0.25)),
        "{out:?}"
    );
    let st = pool.stats();
    assert_eq!((st.scored, st.failed, st.restarts), (4, 1, 0));
}

/// Two banner lines cost two requests, and the judge is in step after.
#[test]
fn two_stray_lines_cost_two_requests() {
    let script = "import sys, json\n\
        print('loading model', flush=True)\n\
        print('ready', flush=True)\n\
        for line in sys.stdin:\n    r = json.loads(line)\n    \
        print(json.dumps({'id': r['id'], 'score': 0.25}), flush=True)\n";
    let mut pool = JudgePool::start(&settings(
        &["python3", "-c", script],
        1,
        Duration::from_secs(20),
    ))
    .unwrap();
    let out = pool.judge_all((0..6).map(|_| request("a", "b")).collect());
    assert!(
        out[..2]
            .iter()
            .all(|j| matches!(j, Judgement::Failed(JudgeFailure::BadAnswer(_)))),
        "{out:?}"
    );
    assert!(
        out[2..].iter().all(|j| *j == Judgement::Score(0.25)),
        "{out:?}"
    );
}

/// A judge that numbers its answers its own way (here one below the
/// request's id) gets a `bad_answer` for each at once, not a timeout each.
#[test]
fn answers_with_an_earlier_id_are_bad_answers_not_timeouts() {
    let script = "import sys, json\n\
        for line in sys.stdin:\n    r = json.loads(line)\n    \
        print(json.dumps({'id': r['id'] - 1, 'score': 0.25}), flush=True)\n";
    let mut pool = JudgePool::start(&settings(
        &["python3", "-c", script],
        1,
        Duration::from_secs(20),
    ))
    .unwrap();
    let started = std::time::Instant::now();
    let out = pool.judge_all((0..4).map(|_| request("a", "b")).collect());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    for j in &out {
        assert!(
            matches!(j, Judgement::Failed(JudgeFailure::BadAnswer(w)) if w.contains("while waiting for id")),
            "{out:?}"
        );
    }
    let st = pool.stats();
    assert_eq!((st.failed, st.timeouts, st.restarts), (4, 0, 0));
}

#[test]
fn a_command_that_cannot_start_is_a_clear_error() {
    let cmd = ["/nonexistent/shadowctl-judge", "--flag"];
    let err = JudgePool::start(&settings(&cmd, 2, Duration::from_secs(1)))
        .err()
        .expect("spawning a missing program fails");
    assert!(matches!(err, JudgeError::Spawn { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/shadowctl-judge --flag") && msg.contains("No such file"),
        "{msg}"
    );

    let empty = JudgePool::start(&settings(&[], 2, Duration::from_secs(1)))
        .err()
        .unwrap();
    assert!(
        empty.to_string().contains("judge_command is empty"),
        "{empty}"
    );
}

#[test]
fn dropping_the_pool_ends_and_reaps_every_judge() {
    let dir = tempfile::tempdir().unwrap();
    let pid_env = format!("JUDGE_PIDDIR={}", dir.path().display());
    let overlap = script("overlap.py");
    let cmd = ["env", &pid_env, "python3", &overlap];
    let mut pool = JudgePool::start(&settings(&cmd, 3, Duration::from_secs(20))).unwrap();
    assert_eq!(
        pool.judge_all(vec![request("a", "a")]),
        [Judgement::Score(1.0)]
    );
    let pids = pids_in(dir.path(), 3);
    assert_eq!(pids.len(), 3, "every judge started");
    let started = Instant::now();
    drop(pool);
    // Well-behaved judges exit as soon as their stdin closes.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    for pid in pids {
        assert!(gone(pid, false), "judge {pid} left behind");
    }
}

#[test]
fn dropping_the_pool_kills_judges_that_ignore_their_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let cmd = ["sh", "-c", "touch \"$0/$$\"; exec sleep 30", &dir_arg];
    let pool = JudgePool::start(&settings(&cmd, 2, Duration::from_secs(1))).unwrap();
    let pids = pids_in(dir.path(), 2);
    assert_eq!(pids.len(), 2);
    let started = Instant::now();
    drop(pool);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    for pid in pids {
        assert!(gone(pid, false), "judge {pid} left behind");
    }
}

/// What the stand-in server received for one call.
struct Seen {
    request_line: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Value,
}

/// Read one HTTP/1.1 request: head, then a Content-Length body.
fn read_http(r: &mut impl BufRead) -> Seen {
    let mut request_line = String::new();
    r.read_line(&mut request_line).unwrap();
    let mut headers = Vec::new();
    // Bounded: a request head has far fewer than 100 lines.
    for _ in 0..100 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Seen {
        request_line: request_line.trim_end().to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap(),
    }
}

/// A stand-in OpenAI-compatible server on 127.0.0.1: the i-th connection
/// gets `replies[i]` (status, body). Returns the base URL and what arrived.
fn stand_in(replies: Vec<(u16, String)>) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (status, body) in replies {
            // Bounded: polls until the deadline, then the thread ends.
            let conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut r = BufReader::new(conn);
            let seen = read_http(&mut r);
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let mut conn = r.into_inner();
            conn.write_all(head.as_bytes()).unwrap();
            conn.write_all(body.as_bytes()).unwrap();
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (base, rx)
}

/// A chat.completion whose message says `content`.
fn completion(content: &str) -> (u16, String) {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "judge-model-x",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
    });
    (200, body.to_string())
}

#[test]
fn the_llm_judge_grades_through_an_openai_compatible_server() {
    let (base, seen) = stand_in(vec![
        completion(r#"{"score": 0.85, "reason": "same facts"}"#),
        completion("Sure.\n```json\n{\"score\": 0.3, \"reason\": \"B gives another year\"}\n```\nHope it helps."),
        completion("I cannot grade this."),
        (400, r#"{"error": {"message": "unknown model"}}"#.into()),
        (503, r#"{"error": {"message": "overloaded"}}"#.into()),
        completion(r#"{"score": 0.6, "reason": "retried"}"#),
        (200, "<html>proxy error</html>".into()),
        completion(r#"{"score": 7, "reason": "out of ten"}"#),
    ]);
    let llm_judge = root()
        .join("examples/judges/llm_judge.py")
        .display()
        .to_string();
    let base_env = format!("JUDGE_BASE_URL={base}");
    let cmd = [
        "env",
        &base_env,
        "JUDGE_MODEL=judge-model-x",
        "JUDGE_API_KEY=test-key-123",
        "NO_PROXY=127.0.0.1",
        "no_proxy=127.0.0.1",
        "python3",
        &llm_judge,
    ];
    let mut pool = JudgePool::start(&settings(&cmd, 1, Duration::from_secs(30))).unwrap();
    let mut first = request("The treaty was signed in 1648.", "It was signed in 1648.");
    first.request =
        json!({"messages": [{"role": "user", "content": "When was the treaty signed?"}]});
    let mut requests = vec![first];
    requests.extend((0..6).map(|i| request(&format!("primary {i}"), &format!("shadow {i}"))));
    let out = pool.judge_all(requests);

    assert_eq!(out[0], Judgement::Score(0.85));
    assert_eq!(out[1], Judgement::Score(0.3));
    let refused = |j: &Judgement, needle: &str| match j {
        Judgement::Failed(JudgeFailure::Refused(why)) => assert!(why.contains(needle), "{why}"),
        other => panic!("expected a refusal with {needle:?}, got {other:?}"),
    };
    refused(&out[2], "no JSON grade");
    refused(&out[3], "HTTP 400");
    assert_eq!(out[4], Judgement::Score(0.6), "a 503 is tried again");
    refused(&out[5], "reply is not JSON");
    refused(&out[6], "outside 0..1");
    let st = pool.stats();
    assert_eq!(
        (st.scored, st.failed, st.restarts),
        (3, 4, 0),
        "the judge never crashed"
    );

    let got: Vec<Seen> = (0..8)
        .map(|_| seen.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    let call = &got[0];
    assert_eq!(call.request_line, "POST /v1/chat/completions HTTP/1.1");
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some("Bearer test-key-123"));
    assert_eq!(call.body["model"], "judge-model-x");
    assert_eq!(call.body["temperature"], 0);
    assert_eq!(call.body["messages"][0]["role"], "system");
    let user = call.body["messages"][1]["content"].as_str().unwrap();
    for part in [
        "The treaty was signed in 1648.",
        "It was signed in 1648.",
        "When was the treaty signed?",
        "$.text",
    ] {
        assert!(user.contains(part), "{part:?} not in the prompt: {user}");
    }
}

#[test]
fn the_minimal_judge_in_the_docs_works() {
    let doc = std::fs::read_to_string(root().join("docs/judge.md")).unwrap();
    let code = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/judge.md has a Python example");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("judge.py");
    std::fs::write(&path, code).unwrap();
    let path = path.display().to_string();
    let mut pool =
        JudgePool::start(&settings(&["python3", &path], 1, Duration::from_secs(20))).unwrap();
    let out = pool.judge_all(vec![request("Yes", " yes "), request("yes", "no")]);
    assert_eq!(out, [Judgement::Score(1.0), Judgement::Score(0.0)]);
}
