//! `compare = "judge"`: an external command scores how well a shadow's
//! answer agrees with the primary's, for fields no built-in measure can
//! judge (generated text that may say the same thing in other words).
//!
//! The judge is a long-lived child process speaking one JSON object per
//! line (the protocol is in `docs/judge.md`). A judge such as an LLM call
//! takes seconds per answer, so the pool keeps `concurrency` children and
//! gives each one request at a time: a judge can be a plain sequential
//! script, and concurrency comes from running several of them.
//!
//! Nothing a judge does stops the diff: a timeout, a crash or a bad line is
//! a [`JudgeFailure`] for that request, counted by the caller and never a
//! pass. Only a settings mistake or a command that cannot start at all is a
//! [`JudgeError`].
//!
//! Each child runs in its own process group so that a timeout kills what it
//! started too (a judge wrapped in `sh -c`, `uv run` or `npx` is a tree).
//! Its stderr is passed through to ours rather than captured: a judge is one
//! process for thousands of requests, so its log cannot be attributed to the
//! request that failed, and users need to see it live (a missing API key, a
//! rate limit) while the diff runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Judge processes run side by side when the config does not say.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Time a judge has for one answer when the config does not say: an LLM
/// call under load can take tens of seconds, and a judge that needs longer
/// is stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Restarts of one worker in a row without a single answer in between
/// before it stops restarting. A judge that dies at start-up (missing
/// script, missing API key) would otherwise be spawned once per request;
/// an answer of any kind resets the count, so a judge that crashes on a few
/// inputs keeps working.
pub const MAX_RESTARTS_IN_ROW: u32 = 3;

/// Longest answer line accepted. A score and a reason fit in far less; a
/// judge writing without newlines must not grow our memory without end.
const MAX_LINE: usize = 1 << 20;

/// After a judge closes its stdout, how long it has to exit on its own
/// before it is killed (so its exit status can tell why it stopped).
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// When the pool is dropped, how long the judges have to exit after their
/// stdin closes, all together, before the rest are killed.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// Polling step while waiting for a child to exit (std has no timed wait).
const POLL: Duration = Duration::from_millis(10);

/// Characters of a bad answer quoted in its failure message.
const EXCERPT_CHARS: usize = 200;

/// How to run the judge.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSettings {
    /// Program and arguments, e.g. `["python3", "judge.py"]` (no shell).
    pub command: Vec<String>,
    /// Judge processes, each answering one request at a time.
    pub concurrency: usize,
    /// Time for one answer, counted from the moment the request is written
    /// (so it includes the start-up of a judge that was just restarted).
    pub timeout: Duration,
}

impl JudgeSettings {
    /// `command` with the default concurrency and timeout.
    pub fn new(command: Vec<String>) -> Self {
        JudgeSettings {
            command,
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    fn check(&self) -> Result<(), JudgeError> {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err(JudgeError::EmptyCommand);
        }
        if self.concurrency == 0 {
            return Err(JudgeError::ZeroConcurrency);
        }
        if self.timeout.is_zero() {
            return Err(JudgeError::ZeroTimeout);
        }
        Ok(())
    }
}

/// One pair for the judge: what was asked, and the two answers (the values
/// at the rule's path).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JudgeRequest {
    /// Endpoint name, e.g. `POST /v1/chat/completions`.
    pub endpoint: String,
    /// JSON path of the rule, e.g. `$.text`.
    pub path: String,
    /// The request body (JSON, or a string for other bodies).
    pub request: Value,
    pub primary: Value,
    pub shadow: Value,
}

/// The judge's verdict on one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Agreement from 0 (none) to 1 (same meaning), used like a similarity.
    Score(f64),
    /// No score: never a pass, the caller counts it.
    Failed(JudgeFailure),
}

/// Why a request got no score.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeFailure {
    /// No answer within the timeout; the judge was killed and restarted.
    Timeout,
    /// The judge exited (or could not be restarted) before answering.
    Crashed(String),
    /// An answer line that is not JSON, has the wrong id, no score, or a
    /// score outside 0..=1.
    BadAnswer(String),
    /// The judge answered `{"error": ...}`: it could not grade this pair.
    Refused(String),
}

impl JudgeFailure {
    /// Stable name of the kind, for reports and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            JudgeFailure::Timeout => "timeout",
            JudgeFailure::Crashed(_) => "crashed",
            JudgeFailure::BadAnswer(_) => "bad_answer",
            JudgeFailure::Refused(_) => "refused",
        }
    }
}

impl std::fmt::Display for JudgeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JudgeFailure::Timeout => f.write_str("judge timed out"),
            JudgeFailure::Crashed(why) => write!(f, "judge crashed: {why}"),
            JudgeFailure::BadAnswer(why) => write!(f, "bad judge answer: {why}"),
            JudgeFailure::Refused(why) => write!(f, "judge refused: {why}"),
        }
    }
}

/// Counters over the pool's life.
#[derive(Default, Clone, Debug, serde::Serialize)]
pub struct JudgeStats {
    /// Requests handed to [`JudgePool::judge_all`].
    pub calls: u64,
    pub scored: u64,
    /// Requests without a score (timeouts included).
    pub failed: u64,
    pub timeouts: u64,
    /// Judge processes started again after a timeout or an exit.
    pub restarts: u64,
}

/// What keeps the judge from running at all.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("judge_command is empty: give the program and its arguments, e.g. [\"python3\", \"judge.py\"]")]
    EmptyCommand,
    #[error("judge_concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("judge_timeout_s must be more than 0")]
    ZeroTimeout,
    #[error("cannot start judge command `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// `concurrency` judge processes, kept for the whole diff.
pub struct JudgePool {
    workers: Vec<Worker>,
    timeout: Duration,
    /// Id of the next request; ids are unique over the pool's life so that
    /// a judge's own log can be matched with ours.
    next_id: u64,
    stats: JudgeStats,
}

impl JudgePool {
    /// Start every judge process. A command that cannot be spawned is an
    /// error here rather than a failure per request; one that starts and
    /// then exits shows up as [`JudgeFailure::Crashed`].
    pub fn start(settings: &JudgeSettings) -> Result<Self, JudgeError> {
        settings.check()?;
        let mut workers = Vec::with_capacity(settings.concurrency);
        for _ in 0..settings.concurrency {
            // On an error, the workers started so far are dropped, which
            // stops their processes.
            let running =
                Running::spawn(&settings.command).map_err(|source| JudgeError::Spawn {
                    command: settings.command.join(" "),
                    source,
                })?;
            workers.push(Worker::new(settings.command.clone(), running));
        }
        Ok(JudgePool {
            workers,
            timeout: settings.timeout,
            next_id: 1,
            stats: JudgeStats::default(),
        })
    }

    /// Judge every request, answers in the same order. Each worker takes
    /// the next request not yet taken, so at most `concurrency` are in
    /// flight and a slow answer delays only its own worker.
    pub fn judge_all(&mut self, requests: Vec<JudgeRequest>) -> Vec<Judgement> {
        if requests.is_empty() {
            return Vec::new();
        }
        let first_id = self.next_id;
        self.next_id += requests.len() as u64;
        let next = AtomicUsize::new(0);
        let timeout = self.timeout;
        let done: Vec<(usize, Judgement)> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .map(|w| s.spawn(|| w.work(&requests, &next, first_id, timeout)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let out = self.in_order(requests.len(), done);
        self.count(&out);
        out
    }

    /// Counters so far.
    pub fn stats(&self) -> &JudgeStats {
        &self.stats
    }

    /// Place answers by request index. A request no worker took (every
    /// worker gave up before reaching it) fails with the reason they gave.
    fn in_order(&self, n: usize, done: Vec<(usize, Judgement)>) -> Vec<Judgement> {
        let mut out: Vec<Option<Judgement>> = vec![None; n];
        for (i, j) in done {
            out[i] = Some(j);
        }
        let why = self.workers.iter().find_map(|w| w.gave_up.clone());
        out.into_iter()
            .map(|j| {
                j.unwrap_or_else(|| {
                    let why = why
                        .clone()
                        .unwrap_or_else(|| "no judge process left".into());
                    Judgement::Failed(JudgeFailure::Crashed(why))
                })
            })
            .collect()
    }

    fn count(&mut self, out: &[Judgement]) {
        let s = &mut self.stats;
        s.calls += out.len() as u64;
        for j in out {
            match j {
                Judgement::Score(_) => s.scored += 1,
                Judgement::Failed(f) => {
                    s.failed += 1;
                    s.timeouts += u64::from(*f == JudgeFailure::Timeout);
                }
            }
        }
        s.restarts = self.workers.iter().map(|w| w.restarts).sum();
    }
}

impl Drop for JudgePool {
    /// Close every stdin first so the judges finish together, give them
    /// [`DROP_GRACE`] to exit, then kill and reap the rest: no process or
    /// zombie outlives the pool.
    fn drop(&mut self) {
        let mut running: Vec<Running> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.proc.take())
            .collect();
        for r in &mut running {
            r.close_stdin();
        }
        let deadline = Instant::now() + DROP_GRACE;
        for r in &mut running {
            r.reap_by(deadline);
        }
    }
}

/// One slot of the pool: a judge process, replaced when it dies.
struct Worker {
    command: Vec<String>,
    /// `None` once given up, or when a replacement could not be started
    /// (the next request tries again).
    proc: Option<Running>,
    restarts: u64,
    /// Timeouts and exits since the last answer.
    failures_in_row: u32,
    /// Set once the worker stops restarting; it then takes no requests.
    gave_up: Option<String>,
}

impl Worker {
    fn new(command: Vec<String>, running: Running) -> Self {
        Worker {
            command,
            proc: Some(running),
            restarts: 0,
            failures_in_row: 0,
            gave_up: None,
        }
    }

    /// Take requests until none is left or this worker gives up. Bounded:
    /// every turn takes a fresh index, at most `requests.len()` in all.
    fn work(
        &mut self,
        requests: &[JudgeRequest],
        next: &AtomicUsize,
        first_id: u64,
        timeout: Duration,
    ) -> Vec<(usize, Judgement)> {
        let mut done = Vec::new();
        while self.gave_up.is_none() {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(request) = requests.get(i) else {
                break;
            };
            done.push((i, self.judge(first_id + i as u64, request, timeout)));
        }
        done
    }

    fn judge(&mut self, id: u64, request: &JudgeRequest, timeout: Duration) -> Judgement {
        let running = match self.running() {
            Ok(r) => r,
            Err(why) => return self.failed(JudgeFailure::Crashed(why)),
        };
        running.send(wire_line(id, request));
        let deadline = Instant::now() + timeout;
        // Lines that answer nothing (a blank line after each answer, the
        // answer a stray line displaced) are passed over within the same
        // deadline: taken as answers, they would put every later answer
        // one request out of step, where a stray line must cost one.
        let mut line = Err(RecvTimeoutError::Timeout);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            line = running.from_stdout.recv_timeout(left);
            if !matches!(&line, Ok(Line::Text(text)) if is_noise(text, &mut running.displaced)) {
                break;
            }
            line = Err(RecvTimeoutError::Timeout);
        }
        match line {
            Ok(line) => {
                let (judgement, stray) = match line {
                    Line::Text(text) => {
                        let j = parse_answer(&text, id);
                        // A line with no id (a banner, a log line) took
                        // this request's place; one with another id is
                        // the judge's (wrong) answer.
                        let bad = matches!(j, Judgement::Failed(JudgeFailure::BadAnswer(_)));
                        (j, bad && answered_id(&text).is_none())
                    }
                    Line::TooLong => (
                        Judgement::Failed(JudgeFailure::BadAnswer(format!(
                            "answer line longer than {MAX_LINE} bytes"
                        ))),
                        false,
                    ),
                };
                if stray {
                    // Bounded: a judge that only ever prints banners is
                    // not answering at all.
                    if running.displaced.len() >= MAX_DISPLACED {
                        running.displaced.remove(0);
                    }
                    running.displaced.push(id);
                }
                self.failures_in_row = 0;
                judgement
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(mut r) = self.proc.take() {
                    r.kill();
                }
                self.failed(JudgeFailure::Timeout)
            }
            // The reader stops only at end of file: the judge closed its
            // stdout, which in practice means it exited.
            Err(RecvTimeoutError::Disconnected) => {
                let why = self
                    .proc
                    .take()
                    .map_or_else(String::new, |mut r| r.reap_after_exit());
                self.failed(JudgeFailure::Crashed(why))
            }
        }
    }

    /// The live process, started again if restarting it right after the
    /// last failure did not work.
    fn running(&mut self) -> Result<&mut Running, String> {
        if self.proc.is_none() {
            self.restart()?;
        }
        Ok(self.proc.as_mut().expect("set above"))
    }

    fn restart(&mut self) -> Result<(), String> {
        let running = Running::spawn(&self.command)
            .map_err(|e| format!("cannot restart `{}`: {e}", self.command.join(" ")))?;
        self.restarts += 1;
        self.proc = Some(running);
        Ok(())
    }

    /// Record a failure that cost the process and start its replacement, or
    /// give up after too many in a row.
    fn failed(&mut self, failure: JudgeFailure) -> Judgement {
        self.failures_in_row += 1;
        if self.failures_in_row > MAX_RESTARTS_IN_ROW {
            let last = match &failure {
                JudgeFailure::Timeout => "no answer within the timeout".to_string(),
                JudgeFailure::Crashed(why)
                | JudgeFailure::BadAnswer(why)
                | JudgeFailure::Refused(why) => why.clone(),
            };
            self.gave_up = Some(format!(
                "judge restarted {MAX_RESTARTS_IN_ROW} times in a row without answering, not restarted again; last: {last}"
            ));
        } else {
            // Started now, the replacement loads (an interpreter, a model)
            // while it is idle rather than inside the next request's timeout.
            // If it cannot start, the next request tries again and says why.
            let _ = self.restart();
        }
        Judgement::Failed(failure)
    }
}

/// A line from a judge's stdout.
enum Line {
    /// Without its line ending.
    Text(Vec<u8>),
    /// Longer than [`MAX_LINE`]; its bytes were skipped.
    TooLong,
}

/// A running judge process and the threads moving its lines.
///
/// Writing happens on a thread of its own: a judge that stops reading would
/// otherwise block us in `write` once the pipe is full, beyond any timeout.
/// Killing the judge closes the pipe and ends that thread.
struct Running {
    child: Child,
    /// Dropping it closes the judge's stdin (its cue to exit).
    to_stdin: Option<Sender<Vec<u8>>>,
    from_stdout: Receiver<Line>,
    /// Whether the process has been waited for (then its pid may be reused,
    /// and its process group must not be signalled any more).
    reaped: bool,
    /// Requests whose answers stray lines displaced (each was given such a
    /// line, a `bad_answer`): their real answers, as they come, answer
    /// nothing. Several banner lines in a row displace several.
    displaced: Vec<u64>,
}

impl Running {
    fn spawn(command: &[String]) -> std::io::Result<Running> {
        let (program, args) = command
            .split_first()
            .expect("checked non-empty in settings");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (to_stdin, lines_in) = mpsc::channel();
        // Bounded: a judge that floods stdout is held back by its pipe,
        // not buffered here without end (lines are up to 1 MiB each).
        let (lines_out, from_stdout) = mpsc::sync_channel(4);
        let threads = std::thread::Builder::new()
            .name("judge-stdin".into())
            .spawn(move || feed(stdin, lines_in))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("judge-stdout".into())
                    .spawn(move || read_lines(stdout, lines_out))
            });
        let mut running = Running {
            child,
            to_stdin: Some(to_stdin),
            from_stdout,
            reaped: false,
            displaced: Vec::new(),
        };
        match threads {
            Ok(_) => Ok(running),
            Err(e) => {
                running.kill();
                Err(e)
            }
        }
    }

    /// Hand a line to the writer thread. If the judge already stopped
    /// reading, the line is lost and its closed stdout tells why.
    fn send(&mut self, line: Vec<u8>) {
        if let Some(tx) = &self.to_stdin {
            let _ = tx.send(line);
        }
    }

    fn close_stdin(&mut self) {
        self.to_stdin = None;
    }

    /// The judge closed its stdout: reap it and say how it ended.
    fn reap_after_exit(&mut self) -> String {
        self.close_stdin();
        match self.reap_by(Instant::now() + EXIT_GRACE) {
            Some(status) => format!(
                "judge {} before answering (its stderr may say why)",
                describe(status)
            ),
            None => "judge closed its stdout but kept running; killed".into(),
        }
    }

    /// Wait until `deadline` for the judge to exit; kill it if it has not.
    /// `Some` with its status if it exited by itself.
    fn reap_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        // Bounded: one poll per POLL step until the deadline.
        while !self.reaped {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => break,
            }
        }
        self.kill();
        None
    }

    /// SIGKILL the judge and everything it started, then reap it.
    fn kill(&mut self) {
        self.close_stdin();
        if self.reaped {
            return;
        }
        // The judge leads its own process group (see `spawn`), and until it
        // is reaped its pid, and so the group id, cannot be reused by an
        // unrelated process.
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        if unsafe { libc::kill(group, libc::SIGKILL) } != 0 {
            let _ = self.child.kill();
        }
        // SIGKILL cannot be caught, so this wait returns once the kernel
        // has torn the process down.
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Running {
    /// Only a safety net (a pool that failed half-way through `start`): the
    /// pool's own drop lets judges exit by themselves first.
    fn drop(&mut self) {
        self.kill();
    }
}

/// "exited with status 3" / "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".into(),
    }
}

/// Writer thread: lines to the judge's stdin. Ends when the pool drops the
/// sender (which closes stdin) or the judge has gone (write fails: Rust
/// ignores SIGPIPE, so a closed pipe is an error, not a signal).
fn feed(mut stdin: ChildStdin, lines: Receiver<Vec<u8>>) {
    for line in lines {
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            break;
        }
    }
}

/// Reader thread: the judge's stdout as lines. Ends at end of file (the
/// judge exited or was killed) or when the pool no longer listens.
fn read_lines(stdout: ChildStdout, lines: SyncSender<Line>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let Some(line) = next_line(&mut reader) else {
            return;
        };
        if lines.send(line).is_err() {
            return;
        }
    }
}

/// The next line, at most [`MAX_LINE`] bytes kept; `None` at end of file.
fn next_line(reader: &mut impl BufRead) -> Option<Line> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .ok()?;
    if n == 0 {
        return None;
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > MAX_LINE {
        skip_line(reader);
        return Some(Line::TooLong);
    }
    Some(Line::Text(buf))
}

/// Drop bytes up to and including the next newline. Bounded by the judge's
/// output: it ends at the newline or at end of file.
fn skip_line(reader: &mut impl BufRead) {
    loop {
        let Ok(buf) = reader.fill_buf() else { return };
        if buf.is_empty() {
            return;
        }
        let (used, found) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        reader.consume(used);
        if found {
            return;
        }
    }
}

/// The request as one protocol line.
fn wire_line(id: u64, request: &JudgeRequest) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        id: u64,
        #[serde(flatten)]
        request: &'a JudgeRequest,
    }
    // Strings and `Value`s (whose maps have string keys) always serialize.
    let mut line = serde_json::to_vec(&Wire { id, request }).expect("JSON values serialize");
    line.push(b'\n');
    line
}

/// A line that answers nothing: blank, or the late answer of a request a
/// stray line `displaced` (taken off the list; any other id is a
/// `bad_answer`, not skipped:
/// a judge that numbers its answers its own way would otherwise wait out
/// every timeout).
fn is_noise(line: &[u8], displaced: &mut Vec<u64>) -> bool {
    let text = line.trim_ascii();
    if text.is_empty() {
        return true;
    }
    if displaced.is_empty() {
        return false;
    }
    let Some(at) = answered_id(text).and_then(|id| displaced.iter().position(|&d| d == id)) else {
        return false;
    };
    displaced.remove(at);
    true
}

/// Displaced requests remembered at once (see `Running::displaced`).
const MAX_DISPLACED: usize = 64;

/// The `id` a line gives, if it is a JSON object that has one.
fn answered_id(line: &[u8]) -> Option<u64> {
    let text = line.trim_ascii();
    if text.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Value>(text)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_u64))
}

fn parse_answer(line: &[u8], id: u64) -> Judgement {
    read_answer(line, id).unwrap_or_else(|why| Judgement::Failed(JudgeFailure::BadAnswer(why)))
}

fn read_answer(line: &[u8], want: u64) -> Result<Judgement, String> {
    let text = String::from_utf8_lossy(line);
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        let hint = if text.contains("NaN") || text.contains("Infinity") {
            " (NaN and Infinity are not JSON)"
        } else {
            ""
        };
        format!("not JSON{hint}: {e}: {}", excerpt(&text))
    })?;
    let answer = value
        .as_object()
        .ok_or_else(|| format!("not a JSON object: {}", excerpt(&text)))?;
    match answer.get("id").and_then(Value::as_u64) {
        Some(id) if id == want => {}
        Some(id) => {
            return Err(format!(
                "answer for id {id} while waiting for id {want} (a judge answers each request once, in order, and writes nothing else to stdout)"
            ))
        }
        None => return Err(format!("no numeric \"id\": {}", excerpt(&text))),
    }
    // `null` counts as absent: some judges write both keys every time.
    let present = |key| answer.get(key).filter(|v| !v.is_null());
    if let Some(error) = present("error") {
        return Ok(Judgement::Failed(JudgeFailure::Refused(error_text(error))));
    }
    let score = present("score")
        .ok_or_else(|| format!("neither \"score\" nor \"error\": {}", excerpt(&text)))?;
    let score = score
        .as_f64()
        .ok_or_else(|| format!("score is not a number: {}", excerpt(&score.to_string())))?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("score {score} is outside 0..1"));
    }
    Ok(Judgement::Score(score))
}

fn error_text(error: &Value) -> String {
    let text = match error {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.trim().is_empty() {
        "(no reason given)".into()
    } else {
        excerpt(&text)
    }
}

/// The start of `text`, for messages.
fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(j: Judgement) -> String {
        match j {
            Judgement::Failed(JudgeFailure::BadAnswer(why)) => why,
            other => panic!("expected BadAnswer, got {other:?}"),
        }
    }

    #[test]
    fn answers_with_score_or_error() {
        assert_eq!(
            parse_answer(br#"{"id": 7, "score": 0.25, "reason": "close"}"#, 7),
            Judgement::Score(0.25)
        );
        assert_eq!(
            parse_answer(br#"{"id":7,"score":1}"#, 7),
            Judgement::Score(1.0)
        );
        assert_eq!(
            parse_answer(br#"{"id":7,"score":0}"#, 7),
            Judgement::Score(0.0)
        );
        assert_eq!(
            parse_answer(br#"{"id":7,"error":"rate limited","score":null}"#, 7),
            Judgement::Failed(JudgeFailure::Refused("rate limited".into()))
        );
        // An error wins over a score: the judge says the score is not to be trusted.
        assert_eq!(
            parse_answer(br#"{"id":7,"score":0.9,"error":{"code":429}}"#, 7),
            Judgement::Failed(JudgeFailure::Refused(r#"{"code":429}"#.into()))
        );
        assert_eq!(
            parse_answer(br#"{"id":7,"error":""}"#, 7),
            Judgement::Failed(JudgeFailure::Refused("(no reason given)".into()))
        );
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        assert!(bad(parse_answer(b"hello", 1)).starts_with("not JSON"));
        assert!(bad(parse_answer(br#"{"id":1,"score":NaN}"#, 1)).contains("NaN and Infinity"));
        assert!(bad(parse_answer(b"[1]", 1)).starts_with("not a JSON object"));
        assert!(bad(parse_answer(br#"{"score":0.5}"#, 1)).starts_with("no numeric \"id\""));
        assert!(bad(parse_answer(br#"{"id":"1","score":0.5}"#, 1)).starts_with("no numeric"));
        assert!(bad(parse_answer(br#"{"id":2,"score":0.5}"#, 1))
            .starts_with("answer for id 2 while waiting for id 1"));
        assert!(bad(parse_answer(br#"{"id":1}"#, 1)).starts_with("neither"));
        assert!(
            bad(parse_answer(br#"{"id":1,"score":"0.5"}"#, 1)).starts_with("score is not a number")
        );
        assert_eq!(
            bad(parse_answer(br#"{"id":1,"score":1.5}"#, 1)),
            "score 1.5 is outside 0..1"
        );
        assert_eq!(
            bad(parse_answer(br#"{"id":1,"score":-0.1}"#, 1)),
            "score -0.1 is outside 0..1"
        );
        assert!(bad(parse_answer(b"\xff\xfe", 1)).starts_with("not JSON"));
    }

    #[test]
    fn excerpts_are_cut_on_characters() {
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend(b"\nthree");
        let mut r = std::io::Cursor::new(input);
        let text = |l: Option<Line>| match l {
            Some(Line::Text(t)) => String::from_utf8(t).unwrap(),
            Some(Line::TooLong) => "<too long>".into(),
            None => "<eof>".into(),
        };
        assert_eq!(text(next_line(&mut r)), "one");
        assert_eq!(text(next_line(&mut r)), "two");
        assert_eq!(text(next_line(&mut r)), "<too long>");
        assert_eq!(text(next_line(&mut r)), "three");
        assert_eq!(text(next_line(&mut r)), "<eof>");
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        let mut input = vec![b'y'; MAX_LINE];
        input.push(b'\n');
        let mut r = std::io::Cursor::new(input);
        assert!(matches!(next_line(&mut r), Some(Line::Text(t)) if t.len() == MAX_LINE));
        assert!(next_line(&mut r).is_none());
    }

    #[test]
    fn requests_go_out_as_one_line_with_their_id() {
        let r = JudgeRequest {
            endpoint: "POST /chat".into(),
            path: "$.text".into(),
            request: serde_json::json!({"q": "line\nbreak"}),
            primary: "a".into(),
            shadow: serde_json::json!(null),
        };
        let line = wire_line(42, &r);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 42, "endpoint": "POST /chat", "path": "$.text",
                "request": {"q": "line\nbreak"}, "primary": "a", "shadow": null})
        );
    }

    #[test]
    fn settings_are_checked() {
        let ok = JudgeSettings::new(vec!["true".into()]);
        assert!(ok.check().is_ok());
        assert_eq!((ok.concurrency, ok.timeout), (4, Duration::from_secs(60)));
        let empty = JudgeSettings::new(vec![]);
        assert!(matches!(empty.check(), Err(JudgeError::EmptyCommand)));
        let blank = JudgeSettings::new(vec![String::new()]);
        assert!(matches!(blank.check(), Err(JudgeError::EmptyCommand)));
        let zero = JudgeSettings {
            concurrency: 0,
            ..ok.clone()
        };
        assert!(matches!(zero.check(), Err(JudgeError::ZeroConcurrency)));
        let instant = JudgeSettings {
            timeout: Duration::ZERO,
            ..ok
        };
        assert!(matches!(instant.check(), Err(JudgeError::ZeroTimeout)));
    }

    #[test]
    fn failure_kinds_are_stable() {
        let kinds: Vec<&str> = [
            JudgeFailure::Timeout,
            JudgeFailure::Crashed(String::new()),
            JudgeFailure::BadAnswer(String::new()),
            JudgeFailure::Refused(String::new()),
        ]
        .iter()
        .map(JudgeFailure::kind)
        .collect();
        assert_eq!(kinds, ["timeout", "crashed", "bad_answer", "refused"]);
    }
}
