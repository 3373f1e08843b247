//! `shadowctl replay`: send captured requests to a primary and shadows on
//! the recorded schedule (or a fixed rate, or as fast as allowed), and record
//! what each answered and when.
//!
//! Open model: request i is due at start + offset(i). The scheduler never
//! waits on a target; each (request, target) runs in its own task that takes
//! one of the target's `--concurrency` permits. A target that falls too far
//! behind gets `not_sent_in_time` results instead of an ever-growing queue.

pub mod client;
pub mod decide;
pub mod h2;
mod parked;
pub mod plan;
mod priority;
pub mod request;
pub mod sampler;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::diff::DiffOptions;
use crate::schema::{
    results_to_batch, ErrorKind, Exchange, ParquetFileWriter, ReplayResult, SchemaError,
    TargetRole, WriterConfig, REDACTED, RESULTS,
};
use client::{now_ns, Target};
use plan::{Plan, Planned, Selection};
use request::{build, Destination, RequestRules};

/// How requests are spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Timing {
    /// The recorded inter-arrival times divided by this factor.
    Speed(f64),
    /// Evenly spaced at this many requests per second.
    Rate(f64),
    /// As fast as `--concurrency` allows.
    Max,
}

/// What `shadowctl replay` is asked to do.
pub struct ReplayOptions {
    pub captures: Vec<PathBuf>,
    /// `None` means `--primary recorded`.
    pub primary: Option<String>,
    pub shadows: Vec<String>,
    pub out: PathBuf,
    pub timing: Timing,
    pub concurrency: usize,
    pub timeout: Duration,
    pub shadow_timeout: Duration,
    /// `--stream-idle-timeout`: an answer that started, then went silent
    /// this long, is cut and recorded as `stream_idle`.
    pub stream_idle_timeout: Duration,
    pub selection: Selection,
    pub rules: RequestRules,
    pub marker: Option<(String, String)>,
    pub read_only: bool,
    /// Keep secret header values of live answers as they came.
    pub keep_secrets: bool,
    pub max_body: usize,
    pub drain_timeout: Duration,
    pub progress: bool,
    pub preserve_order: bool,
    /// `--health-path`: checked on every live target before the run.
    pub health_path: Option<String>,
    /// `--health-timeout`: how long a target may take to become healthy.
    pub health_timeout: Duration,
    /// Trust settings for `https://` targets.
    pub tls: tls::TlsOptions,
    /// `--metrics/--pid/--cgroup`: resource use sampled during the run.
    pub metrics: Option<sampler::SamplerOptions>,
    /// `--until-decided`: the gate (from `--config`) evaluated while
    /// sending, which stops once the verdict is decided.
    pub until_decided: Option<crate::diff::config::Config>,
    /// `--max-duration`: stop sending after this long.
    pub max_duration: Option<Duration>,
    /// `--http1` / `--http2`: one protocol for every request, instead of
    /// the one each was captured with.
    pub http: HttpChoice,
}

/// Which HTTP version a request is sent with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpChoice {
    /// As captured: HTTP/2 streams (and h2c upgrades) over HTTP/2, the rest
    /// over HTTP/1.1.
    #[default]
    AsCaptured,
    Http1,
    Http2,
}

impl HttpChoice {
    fn http2_for(self, ex: &Exchange) -> bool {
        match self {
            Self::Http1 => false,
            Self::Http2 => true,
            Self::AsCaptured => {
                ex.http_version == "HTTP/2"
                    || (ex.upgraded && ex.response_version.as_deref() == Some("HTTP/2"))
            }
        }
    }
}

/// A request as it goes out.
enum Outgoing {
    Http1(Vec<u8>),
    Http2(Box<h2::H2Request>),
    /// Not sent, and why (see [`request::unsendable`]).
    Unsendable(String),
}

/// Build one request for one target; returns it and the count of redacted
/// values left out.
fn outgoing(shared: &Shared, target: &Target, ex: &Exchange) -> (Outgoing, u32) {
    if let Some(why) = request::unsendable(ex) {
        return (Outgoing::Unsendable(why), 0);
    }
    let dest = destination(shared, target);
    if shared.opts.http.http2_for(ex) {
        return match request::build_h2(ex, &dest, &shared.opts.rules, target.https) {
            Ok((req, dropped)) => (Outgoing::Http2(Box::new(req)), dropped),
            Err(why) => (Outgoing::Unsendable(why), 0),
        };
    }
    let built = build(ex, &dest, &shared.opts.rules);
    (Outgoing::Http1(built.bytes), built.dropped_redacted)
}

/// Errors that stop a replay before or while it runs (target errors do not).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("{0}")]
    Target(#[from] client::TargetError),
    #[error("the results writer stopped unexpectedly")]
    WriterGone,
    #[error("{0}")]
    Unhealthy(String),
    /// An option that cannot work (exit code 2).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Metrics(#[from] sampler::SamplerError),
}

/// Figures per target for the closing summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TargetSummary {
    pub name: String,
    pub role: &'static str,
    pub requests: u64,
    pub status_classes: [u64; 6],
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p99_from_due_ms: f64,
    #[serde(skip)]
    latencies: Quantiles,
    #[serde(skip)]
    from_due: Quantiles,
}

/// What a replay did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReplaySummary {
    pub planned: u64,
    pub elapsed_s: f64,
    pub sent_per_s: f64,
    /// `sent_per_s` over the live targets: the rate the user asked for.
    pub sent_per_s_per_target: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub dropped_redacted_values: u64,
    pub skipped_read_only: u64,
    pub interrupted: bool,
    pub targets: Vec<TargetSummary>,
    pub rows: u64,
    /// Resource sampling, when asked for.
    pub metrics: Option<sampler::SamplerSummary>,
    /// Why the metrics file could not be completed, if so.
    pub metrics_error: Option<String>,
    /// `--until-decided`: the verdict and why sending stopped.
    pub until_decided: Option<decide::Decision>,
    #[serde(skip)]
    lags: Quantiles,
    #[serde(skip)]
    first_sent: i64,
    #[serde(skip)]
    last_sent: i64,
}

/// Nanosecond durations summarised in a histogram (3 significant digits),
/// so memory stays the same however many requests a replay sends.
#[derive(Clone, Debug)]
struct Quantiles(hdrhistogram::Histogram<u64>);

impl Default for Quantiles {
    fn default() -> Self {
        // 1 ns to one day; these bounds are valid, so this cannot fail.
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, 86_400_000_000_000, 3)
                .expect("valid bounds"),
        )
    }
}

impl Quantiles {
    fn record(&mut self, ns: i64) {
        self.0.saturating_record(ns.max(1) as u64);
    }

    fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1e6
    }

    fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            0.0
        } else {
            self.0.max() as f64 / 1e6
        }
    }
}

impl ReplaySummary {
    fn add(&mut self, r: &ReplayResult) {
        self.rows += 1;
        let t = match self
            .targets
            .iter_mut()
            .position(|t| t.name == r.target_name)
        {
            Some(i) => &mut self.targets[i],
            None => {
                self.targets.push(TargetSummary {
                    name: r.target_name.clone(),
                    role: r.role.map_or("primary", TargetRole::as_str),
                    ..Default::default()
                });
                self.targets.last_mut().expect("just pushed")
            }
        };
        t.requests += 1;
        if let Some(s) = r.status {
            t.status_classes[usize::from((s / 100).min(5))] += 1;
        }
        if let Some(e) = r.error_kind {
            *t.errors.entry(e.as_str()).or_default() += 1;
        }
        // Recorded rows: the capture's own latency (end of request to end of
        // response); they have no schedule lag and no latency from due.
        if let Some(l) = r.latency_ns() {
            t.latencies.record(l);
        }
        if let Some(l) = r.latency_from_due_ns() {
            t.from_due.record(l);
        }
        if let (Some(lag), Some(s)) = (r.lag_ns(), r.sent_ts) {
            self.lags.record(lag);
            self.first_sent = if self.first_sent == 0 {
                s
            } else {
                self.first_sent.min(s)
            };
            self.last_sent = self.last_sent.max(s);
        }
    }

    fn live_targets(&self) -> usize {
        self.targets.iter().filter(|t| t.role != "recorded").count()
    }

    fn close(&mut self) {
        for t in &mut self.targets {
            t.p50_ms = t.latencies.ms(0.5);
            t.p95_ms = t.latencies.ms(0.95);
            t.p99_ms = t.latencies.ms(0.99);
            t.p99_from_due_ms = t.from_due.ms(0.99);
        }
        self.lag_p50_ms = self.lags.ms(0.5);
        self.lag_p99_ms = self.lags.ms(0.99);
        self.lag_max_ms = self.lags.max_ms();
    }

    /// The closing summary for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "replay summary: {} requests in {:.2} s ({:.0}/s to each of {} target(s)), schedule lag p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
            self.planned, self.elapsed_s, self.sent_per_s_per_target, self.live_targets(), self.lag_p50_ms, self.lag_p99_ms, self.lag_max_ms
        );
        let _ = writeln!(
            s,
            "  {:<16} {:<9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9}  errors",
            "target", "role", "requests", "2xx", "3xx", "4xx", "5xx", "p50 ms", "p95 ms", "p99 ms"
        );
        for t in &self.targets {
            let errors: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                s,
                "  {:<16} {:<9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9.3} {:>9.3} {:>9.3}  {}",
                t.name,
                t.role,
                t.requests,
                t.status_classes[2],
                t.status_classes[3],
                t.status_classes[4],
                t.status_classes[5],
                t.p50_ms,
                t.p95_ms,
                t.p99_ms,
                if errors.is_empty() {
                    "-".to_string()
                } else {
                    errors.join(", ")
                }
            );
        }
        if self.dropped_redacted_values > 0 {
            let _ = writeln!(
                s,
                "  {} redacted values were left out of the requests (give fresh header values with --header)",
                self.dropped_redacted_values
            );
        }
        if let Some(e) = &self.metrics_error {
            let _ = writeln!(
                s,
                "  metrics: sampling failed: {e} (the results are complete)"
            );
        }
        if let Some(m) = &self.metrics {
            let failed: Vec<String> = m.failures.iter().map(|(t, n)| format!("{t} {n}")).collect();
            let _ = writeln!(
                s,
                "  metrics: {} samples from {} scrapes in {}; failed or late scrapes: {}",
                m.samples,
                m.scrapes,
                m.path,
                if failed.is_empty() {
                    "none".to_string()
                } else {
                    failed.join(", ")
                }
            );
            for (target, n) in &m.samples_by_target {
                if *n == 0 {
                    let _ = writeln!(
                        s,
                        "  metrics: {target} gave no sample of the families sampled: its resources will not be measured (check --metrics-select and --metrics-family)"
                    );
                }
            }
        }
        if self.skipped_read_only > 0 {
            let _ = writeln!(
                s,
                "  {} non-read-only requests not sent to shadows (--read-only)",
                self.skipped_read_only
            );
        }
        if let Some(d) = &self.until_decided {
            let when = match d.decided_after {
                Some(n) => format!(", decided after {n} exchanges"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "until decided: {} on {} exchanges; stopped: {}{when} ({} looks at the gate)",
                d.verdict, d.exchanges, d.stopped, d.looks
            );
            if let Some(e) = &d.error {
                let _ = writeln!(s, "  no verdict: {e}");
            }
            for r in &d.reasons {
                let _ = writeln!(s, "  {r}");
            }
        }
        s
    }
}

/// Live counters for the progress bar.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    in_flight: AtomicU64,
    errors: AtomicU64,
    lag_ns: AtomicU64,
}

/// The request side of a result row, for one target.
fn row_for(p: &Planned, name: &str, role: TargetRole, due_ts: i64) -> ReplayResult {
    let ex = &p.exchange;
    ReplayResult {
        exchange_id: ex.exchange_id,
        flow_id: ex.flow_id,
        seq_in_flow: ex.seq_in_flow,
        target_name: name.to_string(),
        role: Some(role),
        method: ex.method.clone(),
        target: ex.target.clone(),
        endpoint: p.endpoint.clone(),
        request_headers: ex.request_headers.clone(),
        request_body: ex.request_body.clone(),
        due_ts,
        ..Default::default()
    }
}

/// A result row from one answer.
fn result_row(p: &Planned, target: &Target, due_ts: i64, a: client::Answer) -> ReplayResult {
    ReplayResult {
        sent_ts: a.sent_ts,
        first_byte_ts: a.first_byte_ts,
        done_ts: a.done_ts,
        status: a.status,
        response_headers: a.headers,
        response_trailers: a.trailers,
        response_body: a.body,
        response_body_len: a.body_len,
        response_body_truncated: a.truncated,
        error_kind: a.error.as_ref().map(|e| e.0),
        error_detail: a.error.map(|e| e.1),
        event_offsets_ns: a.event_offsets_ns,
        first_token_ts: a.first_token_ts,
        ..row_for(p, &target.name, target.role, due_ts)
    }
}

/// The captured stream's event times, moved to the recorded row's clock
/// (from the end of the request, as `sent_ts`), and its first token.
fn recorded_stream(ex: &Exchange, body: &[u8]) -> (Option<Vec<i64>>, Option<i64>) {
    let (Some(offsets), Some(start)) = (&ex.response_event_offsets_ns, ex.response_ts) else {
        return (None, None);
    };
    let h = &ex.response_headers;
    let events = crate::proto::events::stream_events(
        h.get("content-type"),
        h.get("content-encoding"),
        body,
        &[],
        0,
    )
    .unwrap_or_default();
    // --max-body may have cut the body: only the events still in it.
    let n = events.len().min(offsets.len());
    let first = crate::llm::first_content_event(&events[..n]).map(|i| start + offsets[i]);
    let shift = start - ex.request_end_ts;
    let moved = offsets[..n].iter().map(|o| o + shift).collect();
    (Some(moved), first)
}

/// The captured response as a result row (`--primary recorded`, or the
/// second primary observation beside a live primary).
fn recorded_row(p: &Planned, due_ts: i64, max_body: usize) -> ReplayResult {
    let ex: &Exchange = &p.exchange;
    let mut body = ex.response_body.clone();
    // Cut only what the live answer would be cut at: a body within the
    // limit on the wire may be stored a few bytes over it when a redacted
    // secret was shorter than `[REDACTED]`, and is kept whole, like the
    // live answer redacted the same way.
    if ex.response_body_len > max_body as u64 {
        body.truncate(max_body);
    }
    let (event_offsets_ns, first_token_ts) = recorded_stream(ex, &body);
    ReplayResult {
        event_offsets_ns,
        first_token_ts,
        sent_ts: Some(ex.request_end_ts),
        first_byte_ts: ex.response_ts,
        done_ts: ex.response_end_ts,
        status: ex.status,
        response_headers: ex.response_headers.clone(),
        response_trailers: ex.response_trailers.clone(),
        response_body_truncated: ex.response_body_truncated || body.len() < ex.response_body.len(),
        response_body: body,
        response_body_len: ex.response_body_len,
        error_detail: ex
            .status
            .is_none()
            .then(|| "no response in the capture".to_string()),
        ..row_for(p, "recorded", TargetRole::Recorded, due_ts)
    }
}

/// Requests waiting for a permit, per target, before new ones are given up.
const MAX_WAITING_FACTOR: u64 = 16;

/// Rows the results writer turns into one Arrow batch. Larger batches
/// saved under 1% of a recorded replay's instructions (callgrind: 2,048
/// rows against 512) and make each write a longer burst beside the
/// scheduler at `--rate`.
const WRITE_BATCH: usize = 512;
/// ...or fewer, once their bodies reach this many bytes: an Arrow `Binary`
/// column addresses at most 2 GiB, and 512 rows of large bodies pass it.
const WRITE_BATCH_BYTES: usize = 256 << 20;

/// How long the results writer sleeps when it has caught up (the queue holds
/// 4096 rows: about 140 ms of 10,000 requests/s to two targets, three rows
/// per request with the recorded one).
const WRITER_POLL: Duration = Duration::from_millis(2);

#[derive(Clone)]
struct Shared {
    targets: Vec<(Arc<Target>, Arc<AtomicU64>)>,
    /// Set when the drain timeout passes: in-flight requests give up.
    cancel: tokio::sync::watch::Receiver<bool>,
    opts: Arc<ReplayOptionsCore>,
    counters: Arc<Counters>,
    results: mpsc::Sender<ReplayResult>,
    /// The results writer's priority (see [`priority::Background`]).
    writer: Arc<priority::Background>,
    /// Idle connections parked on their own tasks, per target (same order).
    parked: Arc<Vec<parked::Parking>>,
    /// `--until-decided`: each exchange as it is sent, with the rows it will
    /// have, so the gate is looked at on a prefix of the sending order.
    dispatched: Option<std::sync::mpsc::Sender<(u64, usize)>>,
}

impl Shared {
    /// Say that `p` is being sent: the recorded row plus one per target
    /// that gets it (`--read-only` keeps unsafe methods from shadows).
    fn dispatch(&self, p: &Planned) {
        let Some(tx) = &self.dispatched else {
            return;
        };
        let shadows = self
            .targets
            .iter()
            .filter(|(t, _)| t.role == TargetRole::Shadow)
            .count();
        let skipped = if self.opts.read_only { shadows } else { 0 };
        let rows =
            crate::schema::rows_of_exchange(1 + self.targets.len(), skipped, &p.exchange.method);
        let _ = tx.send((p.exchange.exchange_id, rows));
    }
}

/// The parts of the options the request tasks need.
struct ReplayOptionsCore {
    rules: RequestRules,
    marker: Option<(String, String)>,
    read_only: bool,
    max_body: usize,
    timeout: Duration,
    shadow_timeout: Duration,
    concurrency: usize,
    closed_loop: bool,
    http: HttpChoice,
    /// What is redacted in live answers: headers, the query of the URLs in
    /// `Location` and `Content-Location` (a redirect can carry a fresh
    /// token), and secrets in JSON and form bodies (a token endpoint's).
    redact: crate::redact::Redaction,
    redact_body: crate::redact::BodyNames,
}

/// Run a replay. `stop` (Ctrl-C) ends scheduling; in-flight requests get
/// `drain_timeout` to finish; the results file is always completed.
pub fn replay(opts: ReplayOptions, stop: Arc<AtomicBool>) -> Result<ReplaySummary, ReplayError> {
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| SchemaError::Io {
            path: "tokio runtime".into(),
            source: e,
        })?;
    // Sampling starts before the first request and takes a last sample
    // after the last answer; it runs on its own thread.
    let sampler = opts
        .metrics
        .clone()
        .map(sampler::Sampler::start)
        .transpose()?;
    let gate = opts.until_decided.clone();
    let results_path = opts.out.clone();
    // The run itself is a task on a worker, so the request tasks it spawns
    // go to that worker's local queue instead of the slower remote queue.
    let result = runtime.block_on(async move {
        tokio::spawn(run(opts, stop))
            .await
            .map_err(|_| ReplayError::WriterGone)?
    });
    // The metrics file is completed whatever became of the run.
    let metrics = match sampler {
        Some(s) if result.is_err() => {
            s.abandon();
            Ok(None)
        }
        s => s.map(sampler::Sampler::finish).transpose(),
    };
    let mut summary = result?;
    // The results are complete: a metrics file that could not be finished
    // is said, not a reason to lose the run.
    match metrics {
        Ok(m) => summary.metrics = m,
        Err(e) => summary.metrics_error = Some(e.to_string()),
    }
    if let (Some(config), Some(d)) = (gate, summary.until_decided.take()) {
        let metrics = summary.metrics.as_ref().map(|m| PathBuf::from(&m.path));
        summary.until_decided = Some(decide::final_verdict(
            &results_path,
            metrics.as_deref(),
            &config,
            d,
        ));
    }
    Ok(summary)
}

/// More requests in flight than any server or this host's ports could
/// take (and past the async semaphore's own limit, where it would panic).
const MAX_CONCURRENCY: usize = 100_000;

/// Refuse options that cannot work before anything is opened or sent.
fn validate(opts: &ReplayOptions) -> Result<(), ReplayError> {
    let bad = |m: String| Err(ReplayError::Invalid(m));
    if opts.concurrency == 0 {
        return bad("--concurrency 0: at least one request must be allowed in flight".into());
    }
    if opts.concurrency > MAX_CONCURRENCY {
        return bad(format!(
            "--concurrency {}: at most {MAX_CONCURRENCY} requests in flight per target",
            opts.concurrency
        ));
    }
    if opts.stream_idle_timeout.is_zero() {
        return bad("--stream-idle-timeout 0: every answer would stall at once".into());
    }
    if opts.timeout.is_zero() || opts.shadow_timeout.is_zero() {
        return bad("--timeout / --shadow-timeout 0: no answer could ever arrive in time".into());
    }
    for (name, value) in opts.rules.set.iter().chain(opts.marker.as_ref()) {
        request::parse_header_field("--header/--marker", &format!("{name}: {value}"))
            .map_err(ReplayError::Invalid)?;
        // Replay frames each body itself: a second framing field would make
        // the target read the body, and the requests after it on the
        // connection, differently from what was sent.
        if ["content-length", "transfer-encoding"].contains(&name.to_ascii_lowercase().as_str()) {
            return bad(format!(
                "--header/--marker {name}: replay sets the body's framing itself (Content-Length, or chunked for requests with trailers); another would desynchronise the connection"
            ));
        }
    }
    if let Some(c) = &opts.until_decided {
        if let Timing::Speed(_) = opts.timing {
            return bad("--until-decided sends requests in a random order (a uniform sample at every moment), so recorded timing means nothing: give --rate R or --max".into());
        }
        if opts.preserve_order {
            return bad("--until-decided and --preserve-order: a random order cannot keep connections in order".into());
        }
        if c.rules
            .iter()
            .any(|r| r.compare == crate::diff::config::Compare::Judge)
        {
            return bad("--until-decided with compare = \"judge\" rules: the judge is not run while replaying; replay, then diff".into());
        }
    }
    if opts.max_duration.is_some_and(|d| d.is_zero()) {
        return bad("--max-duration 0: nothing could be sent".into());
    }
    for name in &opts.rules.drop {
        if !request::is_token(name) {
            return bad(format!(
                "--drop-header '{}': not an HTTP header name",
                name.escape_debug()
            ));
        }
    }
    Ok(())
}

/// Target names are how `diff` tells answers apart: two shadows with one
/// name would be mixed into one, and `primary` / `recorded` are taken.
fn check_names(targets: &[Target]) -> Result<(), ReplayError> {
    for (i, t) in targets.iter().enumerate() {
        if t.role == TargetRole::Shadow && matches!(t.name.as_str(), "primary" | "recorded") {
            return Err(ReplayError::Invalid(format!(
                "--shadow {}=...: the name `{}` is reserved; choose another",
                t.name, t.name
            )));
        }
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(ReplayError::Invalid(format!(
                "--shadow: the name `{}` is given twice; name each shadow differently (NAME=URL)",
                t.name
            )));
        }
        if t.name.contains(',') || t.name.trim() != t.name || t.name.is_empty() {
            return Err(ReplayError::Invalid(format!(
                "--shadow '{}=...': a name has no commas or surrounding spaces",
                t.name
            )));
        }
    }
    Ok(())
}

/// `--metrics/--pid/--cgroup NAME=...` for a name no target has is
/// recorded (a database or sidecar may be watched beside the targets), and
/// said: a typo, or `shadow` where the shadows are `shadow1` and `shadow2`,
/// would otherwise leave the real target unmeasured and its resource
/// criteria INCONCLUSIVE with no word of why.
fn warn_unknown_sampled_names(opts: &ReplayOptions, targets: &[Target]) {
    let Some(m) = &opts.metrics else {
        return;
    };
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    for (name, _) in &m.sources {
        if !names.contains(&name.as_str()) {
            eprintln!(
                "warning: --metrics/--pid/--cgroup {name}=...: no target is called `{name}` (the targets are {}); its readings are recorded, but no criterion judges them",
                names.join(", ")
            );
        }
    }
}

async fn run(opts: ReplayOptions, stop: Arc<AtomicBool>) -> Result<ReplaySummary, ReplayError> {
    validate(&opts)?;
    let mut targets = Vec::new();
    if let Some(p) = &opts.primary {
        targets.push(Target::parse(
            p,
            TargetRole::Primary,
            "primary",
            opts.concurrency,
        )?);
    }
    for (i, s) in opts.shadows.iter().enumerate() {
        let default = if opts.shadows.len() == 1 {
            "shadow".to_string()
        } else {
            format!("shadow{}", i + 1)
        };
        targets.push(Target::parse(
            s,
            TargetRole::Shadow,
            &default,
            opts.concurrency,
        )?);
    }
    check_names(&targets)?;
    warn_unknown_sampled_names(&opts, &targets);
    for t in &mut targets {
        t.stream_idle = opts.stream_idle_timeout;
    }
    if targets.iter().any(|t| t.https) {
        let connector = tls::connector(&opts.tls)?;
        let connector_h2 = tls::connector_h2(&opts.tls)?;
        for t in targets.iter_mut().filter(|t| t.https) {
            t.set_tls(connector.clone(), connector_h2.clone())?;
        }
    }
    if let Some(path) = &opts.health_path {
        for t in &targets {
            health_check(t, path, opts.health_timeout).await?;
        }
    }
    let mut selection = opts.selection.clone();
    // A stop at any moment must leave a uniform sample of the capture.
    selection.shuffled |= opts.until_decided.is_some();
    let plan = Plan::open(opts.captures.clone(), selection)?;
    // Live answers are redacted like the captured ones: by the defaults
    // and by every name the capture was asked to redact.
    let redaction = match (&plan.capture_redaction, opts.keep_secrets) {
        (_, true) => crate::redact::Redaction::none(),
        (Some(names), false) => crate::redact::Redaction::default().union(names),
        (None, false) => crate::redact::Redaction::default(),
    };
    if opts.timing != Timing::Max && !opts.preserve_order {
        // One connection per permit (bounded): with fewer, a burst after a
        // stall found no idle connection and its requests waited for a
        // worker to open one.
        let warm = opts.concurrency.min(256);
        let _ = tokio::time::timeout(
            opts.timeout.min(Duration::from_secs(5)),
            futures_util::future::join_all(targets.iter().map(|t| t.warm(warm))),
        )
        .await;
    }
    let (tx, mut rx) = mpsc::channel::<ReplayResult>(4096);
    let out = opts.out.clone();
    // Which rows to expect per exchange, so `diff` can group them while streaming.
    let names: Vec<String> = std::iter::once("recorded".to_string())
        .chain(targets.iter().map(|t| t.name.clone()))
        .collect();
    let targets_meta = (crate::schema::META_TARGETS.to_string(), names.join(","));
    let mut meta = vec![targets_meta];
    // So `diff` knows when an exchange's rows are all there, and how long
    // a late one may take (see the keys).
    let longest = opts.timeout.max(opts.shadow_timeout);
    meta.push((
        crate::schema::META_ANSWER_DEADLINE_MS.to_string(),
        longest.as_millis().to_string(),
    ));
    let shadows = targets
        .iter()
        .filter(|t| t.role == TargetRole::Shadow)
        .count();
    if opts.read_only && shadows > 0 {
        meta.push((
            crate::schema::META_READ_ONLY_SHADOWS.to_string(),
            shadows.to_string(),
        ));
    }
    if opts.until_decided.is_some() {
        meta.push((
            crate::schema::META_UNTIL_DECIDED.to_string(),
            "true".to_string(),
        ));
    }
    // --until-decided: the writer folds every row and looks at the gate.
    let gate = opts.until_decided.clone().map(|config| DiffOptions {
        inputs: vec![opts.out.clone()],
        config,
        top: 0,
        divergences: None,
    });
    let (dispatch_tx, dispatch_rx) = match gate {
        Some(_) => {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let decided = Arc::new(AtomicBool::new(false));
    let (decided_w, stop_w) = (Arc::clone(&decided), Arc::clone(&stop));
    let writer_bg = Arc::new(priority::Background::default());
    let (bg, may_idle) = (Arc::clone(&writer_bg), opts.timing != Timing::Max);
    // Set when the run fails: the results file is then dropped unfinished
    // (its .partial removed), so it never replaces what `--out` held.
    let failed = Arc::new(AtomicBool::new(false));
    let writer_failed = Arc::clone(&failed);
    let planned = plan.total_hint;
    let writer = tokio::task::spawn_blocking(move || -> Result<ReplaySummary, SchemaError> {
        let _entered = bg.enter(may_idle);
        let mut file = ParquetFileWriter::create(
            &out,
            crate::schema::results_schema(),
            RESULTS,
            WriterConfig::default(),
        )?;
        let mut summary = ReplaySummary::default();
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut batch_bytes = 0usize;
        let mut looker = gate
            .as_ref()
            .zip(dispatch_rx)
            .map(|(o, rx)| decide::Looker::new(o, rx, planned));
        // Polled rather than parked on: a parked receiver must be woken (a
        // futex call) by every request task and by the scheduler, per row.
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    summary.add(&r);
                    if looker.as_mut().is_some_and(|l| l.add(&r)) {
                        decided_w.store(true, Ordering::Relaxed);
                        stop_w.store(true, Ordering::Relaxed);
                    }
                    batch_bytes += r.request_body.len() + r.response_body.len();
                    batch.push(r);
                    if batch.len() >= WRITE_BATCH || batch_bytes >= WRITE_BATCH_BYTES {
                        if let Err(e) = write_rows(&mut file, &mut batch) {
                            return Err(keep_on_full_disk(file, e, meta.clone()));
                        }
                        batch_bytes = 0;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    bg.set_urgent(false);
                    std::thread::sleep(WRITER_POLL);
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        if writer_failed.load(Ordering::Relaxed) {
            drop(file);
            return Ok(summary);
        }
        if let Err(e) = write_rows(&mut file, &mut batch) {
            return Err(keep_on_full_disk(file, e, meta));
        }
        file.finish(meta)?;
        summary.close();
        summary.until_decided = looker.map(|l| decide::Decision {
            looks: l.looks,
            decided_after: l.decided_after,
            ..Default::default()
        });
        Ok(summary)
    });
    let counters = Arc::new(Counters::default());
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let cancel_tx = Arc::new(cancel_tx);
    let parked = Arc::new(targets.iter().map(|_| parked::Parking::default()).collect());
    let shared = Shared {
        cancel,
        targets: targets
            .into_iter()
            .map(|t| (Arc::new(t), Arc::new(AtomicU64::new(0))))
            .collect(),
        opts: Arc::new(ReplayOptionsCore {
            rules: RequestRules {
                left_out: plan.left_out.clone(),
                ..opts.rules.clone()
            },
            marker: opts.marker.clone(),
            read_only: opts.read_only,
            max_body: opts.max_body,
            timeout: opts.timeout,
            shadow_timeout: opts.shadow_timeout,
            concurrency: opts.concurrency,
            closed_loop: opts.timing == Timing::Max,
            http: opts.http,
            redact: redaction.clone(),
            redact_body: redaction.body_names(),
        }),
        counters: Arc::clone(&counters),
        results: tx,
        writer: writer_bg,
        parked,
        dispatched: dispatch_tx,
    };
    let bar = crate::progress::bar(
        plan.total_hint,
        "{spinner} [{wide_bar}] {pos}/{len} eta {eta} {msg}",
        opts.progress,
    );
    let ticker = spawn_ticker(
        bar.clone(),
        Arc::clone(&counters),
        shared.targets.iter().map(|(t, _)| Arc::clone(t)).collect(),
    );
    let started = std::time::Instant::now();
    let drain_timeout = opts.drain_timeout;
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = opts.max_duration.map(|d| {
        let (stop, timed_out) = (Arc::clone(&stop), Arc::clone(&timed_out));
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            timed_out.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        })
    });
    let limit = opts.selection.limit;
    let outcome: Result<(u64, u64, u64, bool), ReplayError> =
        if opts.timing == Timing::Max && !opts.preserve_order {
            // Workers finish their request before noticing Ctrl-C: give them
            // the drain timeout, then cancel what is still in flight.
            let (stop2, cancel2) = (Arc::clone(&stop), Arc::clone(&cancel_tx));
            let watchdog = tokio::spawn(async move {
                while !stop2.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(drain_timeout).await;
                let _ = cancel2.send(true);
            });
            let outcome = closed_loop(plan, &opts, &shared, &stop).await;
            watchdog.abort();
            outcome
        } else {
            if !opts.preserve_order {
                parked::start_all(&shared);
            }
            let sched_shared = shared.clone();
            let handle = tokio::runtime::Handle::current();
            // The schedule runs on a thread of its own (a blocking-pool thread)
            // so that busy workers and tokio's millisecond timers cannot make
            // it late.
            tokio::task::spawn_blocking(move || {
                priority::precise_sleeps();
                let plan_bg = Arc::new(priority::Background::default());
                let queue = prefetch(plan, Arc::clone(&plan_bg), true);
                handle.block_on(schedule(queue, &plan_bg, &opts, &sched_shared, &stop))
            })
            .await
            .map_err(|_| ReplayError::WriterGone)
            .and_then(|r| r)
        };
    let (planned, dropped, skipped, interrupted) = match outcome {
        Ok(v) => v,
        Err(e) => {
            // Stop what is in flight, let the writer drop its file, then
            // say what failed: the output path keeps what it held.
            failed.store(true, Ordering::Relaxed);
            let _ = cancel_tx.send(true);
            while counters.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ticker.abort();
            bar.finish_and_clear();
            drop(shared);
            let written = writer.await;
            // The writer's own failure (a full disk) is the cause; the
            // scheduler only saw that it had gone.
            if let (ReplayError::WriterGone, Ok(Err(cause))) = (&e, written) {
                return Err(cause.into());
            }
            return Err(e);
        }
    };
    // Nobody watches the results queue while draining: no more idling.
    shared.writer.set_urgent(true);
    // Drain: wait for in-flight requests. After Ctrl-C or --max-duration
    // at most the drain timeout; at the end of the capture or a decision,
    // until each has had its own --timeout. Cut sooner, the slow answers
    // would be recorded as interrupted and left out of the verdict, which
    // would then see the shadow faster than it is.
    let cut_short =
        timed_out.load(Ordering::Relaxed) || (interrupted && !decided.load(Ordering::Relaxed));
    let opts_drain = if cut_short {
        drain_timeout
    } else {
        longest + Duration::from_secs(1)
    };
    let deadline = Instant::now() + opts_drain;
    while counters.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What is still in flight is recorded as interrupted, then we finish.
    let _ = cancel_tx.send(true);
    while counters.in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    drop(shared);
    let mut summary = writer.await.map_err(|_| ReplayError::WriterGone)??;
    summary.planned = planned;
    summary.elapsed_s = elapsed;
    // Over the span of actual sends (start-up and draining excluded).
    let span = summary.last_sent.saturating_sub(summary.first_sent) as f64 / 1e9;
    summary.sent_per_s = if span > 0.0 {
        counters.sent.load(Ordering::Relaxed).saturating_sub(1) as f64 / span
    } else {
        0.0
    };
    summary.sent_per_s_per_target = summary.sent_per_s / summary.live_targets().max(1) as f64;
    if let Some(t) = timer {
        t.abort();
    }
    let (decided, timed_out) = (
        decided.load(Ordering::Relaxed),
        timed_out.load(Ordering::Relaxed),
    );
    summary.dropped_redacted_values = dropped;
    summary.skipped_read_only = skipped;
    // Stopping because the gate decided or time was up is not an interruption.
    summary.interrupted = interrupted && !decided && !timed_out;
    if let Some(d) = &mut summary.until_decided {
        d.stopped = if decided {
            "decided"
        } else if timed_out {
            "--max-duration reached"
        } else if interrupted {
            "interrupted"
        } else if limit.is_some_and(|l| planned >= l) {
            "--limit reached"
        } else {
            "capture exhausted"
        }
        .into();
    }
    Ok(summary)
}

/// `--max` (without `--preserve-order`): `--concurrency` workers, each with
/// its own connection to every target, take the next request as soon as
/// their previous one is answered by all targets, and send it to all of them
/// at once (the closed model of oha or wrk). No per-request task, permit or
/// scheduler wake-up: under `--max` those cost more than the request itself.
async fn closed_loop(
    plan: Plan,
    opts: &ReplayOptions,
    shared: &Shared,
    stop: &Arc<AtomicBool>,
) -> Result<(u64, u64, u64, bool), ReplayError> {
    let bg = Arc::new(priority::Background::default());
    // A plain mutex taken only for a try_recv: with an async mutex the 64
    // workers queued on it and every release woke the next one.
    let queue = Arc::new(std::sync::Mutex::new(prefetch(plan, bg, false)));
    let tally = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let failure = Arc::new(std::sync::Mutex::new(None));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        let (queue, tally, failure) = (queue.clone(), tally.clone(), failure.clone());
        let (shared, stop) = (shared.clone(), Arc::clone(stop));
        workers.spawn(async move {
            let mut ctxs: Vec<TaskCtx> = shared
                .targets
                .iter()
                .map(|_| TaskCtx::new(&shared))
                .collect();
            let mut conns: Vec<Option<tls::Conn>> = shared.targets.iter().map(|_| None).collect();
            while !stop.load(Ordering::Relaxed) {
                let p = match next_planned(&queue).await {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                    None => return,
                };
                tally[0].fetch_add(1, Ordering::Relaxed);
                let p = Arc::new(p);
                shared.dispatch(&p);
                let due_ts = now_ns();
                if shared
                    .results
                    .send(recorded_row(&p, due_ts, shared.opts.max_body))
                    .await
                    .is_err()
                {
                    return;
                }
                let jobs: Vec<Option<Job>> = shared
                    .targets
                    .iter()
                    .map(|(target, waiting)| {
                        if target.role == TargetRole::Shadow
                            && shared.opts.read_only
                            && crate::schema::kept_from_shadows(&p.exchange.method)
                        {
                            tally[2].fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                        let (request, dropped) = outgoing(&shared, target, &p.exchange);
                        tally[1].fetch_add(u64::from(dropped), Ordering::Relaxed);
                        let job = Job {
                            p: Arc::clone(&p),
                            target: Arc::clone(target),
                            waiting: Arc::clone(waiting),
                            request,
                            due_ts,
                            pre: None,
                        };
                        count_in(&job, &shared.counters);
                        Some(job)
                    })
                    .collect();
                let sends = ctxs
                    .iter_mut()
                    .zip(conns.iter_mut())
                    .zip(jobs)
                    .filter_map(|((ctx, conn), job)| Some(ctx.perform(job?, Some(conn))));
                futures_util::future::join_all(sends).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    let get = |i: usize| tally[i].load(Ordering::Relaxed);
    Ok((get(0), get(1), get(2), stop.load(Ordering::Relaxed)))
}

/// The next request for a closed-loop worker; None when the plan is done.
/// When the decoder is behind, the worker waits a tick and tries again.
async fn next_planned(queue: &std::sync::Mutex<PlanQueue>) -> Option<Result<Planned, ReplayError>> {
    loop {
        let got = match queue.lock() {
            Ok(mut q) => q.try_recv(),
            Err(_) => return None, // a worker panicked: end the run
        };
        match got {
            Ok(item) => return Some(item),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    }
}

/// Where a request for `target` goes, with the shadow marker when due.
fn destination<'a>(shared: &'a Shared, target: &'a Target) -> Destination<'a> {
    let marker = (target.role == TargetRole::Shadow)
        .then_some(shared.opts.marker.as_ref())
        .flatten();
    Destination {
        authority: &target.authority,
        base_path: &target.base_path,
        marker,
    }
}

/// Wait for `due` on the scheduler's own thread: a thread sleep wakes
/// within tens of microseconds (a kernel high-resolution timer), where a
/// tokio timer has millisecond granularity and fires late when the workers
/// are busy. The wait is cut in slices so that a stop (Ctrl-C, SIGTERM) is
/// seen within one slice even when the next request is hours away.
/// Returns whether it slept, or `None` when `stop` was raised meanwhile.
fn wait_until(due: Instant, stop: &AtomicBool) -> Option<bool> {
    const SLICE: Duration = Duration::from_millis(50);
    let mut slept = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        if due <= now {
            return Some(slept);
        }
        std::thread::sleep((due - now).min(SLICE));
        slept = true;
    }
}

/// Read the plan on a thread of its own, a few thousand requests ahead, so
/// decoding a Parquet row group never delays a due request.
/// `bg` is the thread's priority; the consumer makes it urgent when the
/// queue runs low, the thread itself lets it rest once the queue is nearly
/// full again.
fn prefetch(mut plan: Plan, bg: Arc<priority::Background>, may_idle: bool) -> PlanQueue {
    let capture_start = plan.capture_start();
    let (tx, rx) = mpsc::channel(PLAN_AHEAD / PLAN_CHUNK);
    std::thread::spawn(move || {
        let _entered = bg.enter(may_idle);
        loop {
            if tx.capacity() * 8 < tx.max_capacity() {
                bg.set_urgent(false);
            }
            let mut chunk = Vec::with_capacity(PLAN_CHUNK);
            let (mut end, mut bytes) = (false, 0);
            while chunk.len() < PLAN_CHUNK && bytes < PLAN_CHUNK_BYTES && !end {
                match plan.next_planned() {
                    Ok(Some(p)) => {
                        bytes += p.exchange.held_bytes();
                        chunk.push(Ok(p));
                    }
                    Ok(None) => end = true,
                    Err(e) => {
                        chunk.push(Err(e.into()));
                        end = true;
                    }
                }
            }
            if (!chunk.is_empty() && tx.blocking_send(chunk).is_err()) || end {
                return;
            }
        }
    });
    PlanQueue {
        rx,
        chunk: Vec::new().into_iter(),
        capture_start,
    }
}

/// Requests decoded ahead of sending, at most.
const PLAN_AHEAD: usize = 4096;

/// Requests the prefetch thread sends at a time.
const PLAN_CHUNK: usize = 64;
/// ...or fewer, once they hold this many bytes: the queue then holds at
/// most `PLAN_AHEAD / PLAN_CHUNK` times this (256 MiB) plus a request,
/// where 4,096 requests of 1 MiB bodies held 8 GiB.
const PLAN_CHUNK_BYTES: usize = 4 << 20;

/// The planned requests, as the prefetch thread sends them: in chunks, so
/// the channel is used (and that thread, waiting for room, is woken) once
/// per chunk rather than once per request. Per request, that wake-up was
/// half of the futex calls of a `--max` replay.
struct PlanQueue {
    rx: mpsc::Receiver<Vec<Result<Planned, ReplayError>>>,
    chunk: std::vec::IntoIter<Result<Planned, ReplayError>>,
    /// The capture's first request time, when every file's is known.
    capture_start: Option<i64>,
}

impl PlanQueue {
    async fn recv(&mut self) -> Option<Result<Planned, ReplayError>> {
        loop {
            if let Some(p) = self.chunk.next() {
                return Some(p);
            }
            self.chunk = self.rx.recv().await?.into_iter();
        }
    }

    fn try_recv(&mut self) -> Result<Result<Planned, ReplayError>, mpsc::error::TryRecvError> {
        loop {
            if let Some(p) = self.chunk.next() {
                return Ok(p);
            }
            self.chunk = self.rx.try_recv()?.into_iter();
        }
    }
}

/// `--health-path`: wait until every target answers 2xx there (a target
/// that is still starting gets until `--health-timeout`), else stop with the
/// target's name and its last answer, before any request is replayed.
async fn health_check(t: &Target, path: &str, timeout: Duration) -> Result<(), ReplayError> {
    let request = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.base_path, t.authority
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0u32;
    let problem = loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let a = t
            .exchange(
                None,
                request.as_bytes(),
                "GET",
                left.clamp(Duration::from_millis(100), Duration::from_secs(5)),
                64 * 1024,
            )
            .await;
        let problem = match (&a.error, a.status) {
            (None, Some(s)) if (200..300).contains(&s) => return Ok(()),
            (Some((_, detail)), _) => detail.clone(),
            (None, Some(s)) => format!("answered {s}, not 2xx"),
            (None, None) => "no answer".into(),
        };
        // Bounded: one try per 250 ms until the deadline.
        let pause = Duration::from_millis(250);
        if tokio::time::Instant::now() + pause >= deadline {
            break problem;
        }
        tokio::time::sleep(pause).await;
    };
    Err(ReplayError::Unhealthy(format!(
        "target {} ({}://{}{}{path}) failed its health check after {attempts} tries in {:.0} s: {problem}; start it, fix the URL or the path, raise --health-timeout, or leave out --health-path",
        t.name,
        if t.https { "https" } else { "http" },
        t.authority,
        t.base_path,
        timeout.as_secs_f64(),
    )))
}

/// A full disk refuses rows before any of them is written, so the results
/// so far can still be closed, footer and all (see `check_room`): the run
/// stops with its error, and keeps what it recorded.
fn keep_on_full_disk(
    file: ParquetFileWriter,
    e: SchemaError,
    meta: Vec<(String, String)>,
) -> SchemaError {
    if matches!(e, SchemaError::DiskFull { .. }) && file.rows() > 0 {
        let _ = file.finish(meta);
    }
    e
}

fn write_rows(
    file: &mut ParquetFileWriter,
    rows: &mut Vec<ReplayResult>,
) -> Result<(), SchemaError> {
    if rows.is_empty() {
        return Ok(());
    }
    let batch = results_to_batch(rows).map_err(|source| SchemaError::Arrow {
        path: "results".into(),
        source,
    })?;
    rows.clear();
    file.write_batch(&batch)
}

/// A wait for the next request longer than this is said (once).
const LONG_GAP: Duration = Duration::from_secs(3600);

/// Walk the plan and dispatch every request to every target at its due time.
/// Returns (planned, dropped redacted values, skipped read-only, interrupted).
async fn schedule(
    mut queue: PlanQueue,
    plan_bg: &priority::Background,
    opts: &ReplayOptions,
    shared: &Shared,
    stop: &AtomicBool,
) -> Result<(u64, u64, u64, bool), ReplayError> {
    // Start once the plan's first requests are decoded: decoding the first
    // row groups while the first requests go out made those requests late.
    let mut next = queue.recv().await;
    let ready_by = Instant::now() + Duration::from_millis(500);
    while queue.rx.capacity() > 0 && !queue.rx.is_closed() && Instant::now() < ready_by {
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now() + Duration::from_millis(20);
    let start_wall = now_ns() + 20_000_000;
    let (mut n, mut dropped, mut skipped) = (0u64, 0u64, 0u64);
    // Each shard holds other requests, so its first one is not the
    // capture's: with --shard the clock starts at the capture's first
    // request, and the shards of a run stay in step.
    let mut first_ts = opts.selection.shard.and(queue.capture_start);
    let mut gap_warned = false;
    let mut lanes = Lanes::default();
    let mut behind = 0u64;
    while let Some(item) = next {
        let p = item?;
        if stop.load(Ordering::Relaxed) {
            return Ok((n, dropped, skipped, true));
        }
        let offset = match opts.timing {
            Timing::Speed(x) => {
                let first = *first_ts.get_or_insert(p.exchange.request_ts);
                let since = p.exchange.request_ts.saturating_sub(first).max(0);
                Duration::from_nanos((since as f64 / x) as u64)
            }
            Timing::Rate(r) => Duration::from_nanos((n as f64 * 1e9 / r) as u64),
            Timing::Max => Duration::ZERO,
        };
        // A far-future request (`--speed 1e-9`, a stray timestamp) must
        // not overflow the clock: it is simply never reached.
        let due = start
            .checked_add(offset)
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400));
        let due_ts =
            start_wall.saturating_add(i64::try_from(offset.as_nanos()).unwrap_or(i64::MAX));
        if opts.timing != Timing::Max {
            let ahead = due.saturating_duration_since(Instant::now());
            if ahead > LONG_GAP && !std::mem::replace(&mut gap_warned, true) {
                // A stray timestamp (a clock that jumped) would otherwise
                // look like a hang.
                eprintln!(
                    "warning: the next request is due in {:.1} h (a gap in the capture); \
                     Ctrl-C stops with what was sent, --max-duration bounds the run, --rate ignores the gaps",
                    ahead.as_secs_f64() / 3600.0
                );
            }
            let Some(slept) = wait_until(due, stop) else {
                return Ok((n, dropped, skipped, true));
            };
            if slept {
                behind = 0;
            } else {
                behind += 1;
                // Running behind without sleeping: let other threads (the
                // ones answering) have the CPU now and then.
                if behind.is_multiple_of(32) {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
        n += 1;
        let p = Arc::new(p);
        shared.dispatch(&p);
        for (ti, (target, waiting)) in shared.targets.iter().enumerate() {
            if target.role == TargetRole::Shadow
                && shared.opts.read_only
                && crate::schema::kept_from_shadows(&p.exchange.method)
            {
                skipped += 1;
                continue;
            }
            let (request, dropped_here) = outgoing(shared, target, &p.exchange);
            dropped += u64::from(dropped_here);
            let mut due_ts = due_ts;
            if shared.opts.closed_loop {
                // As fast as allowed: wait here for a permit (closed model);
                // a request is due when it gets one, so lag stays meaningful.
                let permit = target
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| ReplayError::WriterGone)?;
                permit.forget();
                due_ts = now_ns();
            } else if waiting.load(Ordering::Relaxed)
                >= MAX_WAITING_FACTOR * shared.opts.concurrency as u64
            {
                let mut row = result_row(&p, target, due_ts, client::Answer::default());
                row.error_kind = Some(ErrorKind::NotSentInTime);
                row.error_detail = Some("target saturated: too many requests waiting".into());
                let _ = shared.results.send(row).await;
                continue;
            }
            // Written here, at its due time, unless it must wait its turn
            // (`--preserve-order`, the closed model) or cannot be sent.
            let now = !(opts.preserve_order
                || shared.opts.closed_loop
                || p.exchange.request_body_truncated);
            let job = Job {
                p: Arc::clone(&p),
                target: Arc::clone(target),
                waiting: Arc::clone(waiting),
                request,
                due_ts,
                pre: None,
            };
            if opts.preserve_order {
                count_in(&job, &shared.counters);
                lanes.send(shared, lane_key(&p, ti), job);
            } else if now {
                if let Some(mut job) = parked::post(shared, ti, job) {
                    if let Outgoing::Http1(bytes) = &job.request {
                        job.pre = presend(target, bytes);
                    }
                    spawn_request(shared, job);
                }
            } else {
                spawn_request(shared, job);
            }
        }
        // The recorded response is always kept: it is the primary with
        // `--primary recorded`, and a noise estimate beside a live one.
        // Written after the requests went out, so it never delays them.
        let row = recorded_row(&p, due_ts, opts.max_body);
        match shared.results.try_send(row) {
            Ok(()) => {}
            // The writer is behind: hand the row to a task instead of
            // waiting here.
            Err(mpsc::error::TrySendError::Full(row)) => {
                let tx = shared.results.clone();
                tokio::spawn(async move { tx.send(row).await });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ReplayError::WriterGone),
        }
        // The bulk threads are called to the front before we would wait
        // for them (see priority::Background).
        if queue.rx.len() * 4 < queue.rx.max_capacity() {
            plan_bg.set_urgent(true);
        }
        if shared.results.capacity() * 2 < shared.results.max_capacity() {
            shared.writer.set_urgent(true);
        }
        next = queue.recv().await;
    }
    Ok((n, dropped, skipped, stop.load(Ordering::Relaxed)))
}

/// Send on the scheduler's thread when a permit and an idle connection are
/// free right now (see [`Target::try_send_now`]); otherwise the request task
/// does it.
fn presend(target: &Target, bytes: &[u8]) -> Option<client::Presend> {
    let permit = target.permits.try_acquire().ok()?;
    let sent = target.try_send_now(bytes)?;
    permit.forget();
    Some(sent)
}

/// One request for one target.
struct Job {
    p: Arc<Planned>,
    target: Arc<Target>,
    waiting: Arc<AtomicU64>,
    request: Outgoing,
    due_ts: i64,
    /// Already sent by the scheduler (holding one of the target's permits).
    pre: Option<client::Presend>,
}

/// What a request task needs from the run.
struct TaskCtx {
    opts: Arc<ReplayOptionsCore>,
    counters: Arc<Counters>,
    results: mpsc::Sender<ReplayResult>,
    cancel: tokio::sync::watch::Receiver<bool>,
    /// The deadline timer, kept from one request to the next.
    clock: client::Clock,
}

impl TaskCtx {
    fn new(shared: &Shared) -> Self {
        Self {
            opts: Arc::clone(&shared.opts),
            counters: Arc::clone(&shared.counters),
            results: shared.results.clone(),
            cancel: shared.cancel.clone(),
            clock: client::Clock::default(),
        }
    }

    /// Send one request (over `own` or the pool), record the result.
    async fn perform(&mut self, job: Job, own: Option<&mut Option<tls::Conn>>) {
        let Job {
            p,
            target,
            waiting,
            request,
            due_ts,
            pre,
        } = job;
        let TaskCtx {
            opts,
            counters,
            results,
            cancel,
            clock,
        } = self;
        let work = async {
            if !opts.closed_loop && pre.is_none() {
                if let Ok(permit) = target.permits.acquire().await {
                    permit.forget();
                }
            }
            waiting.fetch_sub(1, Ordering::Relaxed);
            let unsent = match &request {
                _ if p.exchange.request_body_truncated => Some((
                    ErrorKind::RequestTruncated,
                    "the captured body was truncated (--max-body at capture)".into(),
                )),
                Outgoing::Unsendable(why) => {
                    Some((ErrorKind::Unsendable, format!("not sent: {why}")))
                }
                _ => None,
            };
            if let Some(error) = unsent {
                target.permits.add_permits(1);
                return client::Answer {
                    error: Some(error),
                    ..Default::default()
                };
            }
            let timeout = if target.role == TargetRole::Shadow {
                opts.shadow_timeout
            } else {
                opts.timeout
            };
            counters.sent.fetch_add(1, Ordering::Relaxed);
            let answer = match request {
                Outgoing::Http1(bytes) => {
                    let ask = client::Ask {
                        request: &bytes,
                        method: &p.exchange.method,
                        timeout,
                        max_body: opts.max_body,
                    };
                    target.exchange_after(pre, own, ask, clock).await
                }
                // Streams share connections: `--preserve-order` keeps the
                // order of sending, not a connection per recorded one.
                Outgoing::Http2(req) => {
                    target
                        .exchange_h2(*req, timeout, opts.max_body, clock)
                        .await
                }
                // Answered above, without a send.
                Outgoing::Unsendable(why) => client::Answer {
                    error: Some((ErrorKind::Unsendable, why)),
                    ..Default::default()
                },
            };
            target.permits.add_permits(1);
            answer
        };
        let answer = tokio::select! {
            a = work => a,
            _ = cancel.wait_for(|c| *c) => client::Answer {
                error: Some((ErrorKind::Interrupted, "stopped before the answer came (--drain-timeout)".into())),
                ..Default::default()
            },
        };
        if let Some(s) = answer.sent_ts {
            counters
                .lag_ns
                .store((s - due_ts).max(0) as u64, Ordering::Relaxed);
        }
        if answer.error.is_some() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            target.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut row = result_row(&p, &target, due_ts, answer);
        // A target's answer may carry secrets too (a Set-Cookie, a token
        // issued to the credentials sent with --header-from-env): kept out
        // of the results and the reports like captured ones.
        let redact = &self.opts.redact;
        for h in [&mut row.response_headers, &mut row.response_trailers] {
            h.redact(&redact.headers, REDACTED);
            crate::redact::redact_url_fields(h, &crate::redact::URL_FIELDS, &redact.query);
        }
        crate::redact::redact_message(
            &row.response_headers,
            &mut row.response_body,
            &self.opts.redact_body,
        );
        let _ = results.send(row).await;
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn count_in(job: &Job, counters: &Counters) {
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    job.waiting.fetch_add(1, Ordering::Relaxed);
}

/// Send a request on its own task over the target's shared pool.
fn spawn_request(shared: &Shared, job: Job) {
    count_in(&job, &shared.counters);
    let mut ctx = TaskCtx::new(shared);
    tokio::spawn(async move { ctx.perform(job, None).await });
}

/// `--preserve-order`: the requests of one recorded connection go, in order,
/// over one connection per target, each after the previous one's answer.
/// A lane ends once idle this long, closing its connection: the capture
/// does not say when a recorded connection is over, and a capture of many
/// short connections would otherwise hold a socket (and a task) per
/// recorded connection per target until the run ends: 50,000 connections
/// pass any open-files limit. The next request of the connection starts a
/// new lane, on a new connection.
const LANE_IDLE: Duration = Duration::from_secs(2);

/// A lane's key: its recorded connection and the target. Rotated capture
/// files of one run continue its flows, so a connection is known by its
/// endpoints wherever they were recorded (a rotation between two of its
/// requests must not split it); only without them by file and flow.
type LaneKey = (
    Option<usize>,
    (Option<SocketAddr>, Option<SocketAddr>, u64),
    usize,
);

fn lane_key(p: &Planned, target: usize) -> LaneKey {
    let ex = &p.exchange;
    let file = ex.client.is_none().then_some(p.file);
    // The flow id too: a client port reused for a new connection is
    // another connection (rotated files of one run keep flow ids).
    (file, (ex.client, ex.server, ex.flow_id), target)
}

/// The lanes of a run. A lane ends once idle; the next request of its
/// connection starts another, which waits for the old one to be done, so
/// a capture of millions of short connections does not keep a task each.
#[derive(Default)]
struct Lanes {
    map: std::collections::HashMap<LaneKey, Lane>,
    /// Ended lanes are pruned when the map reaches this size.
    prune_at: usize,
}

struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    /// Fires (or is dropped) when the lane's task has performed its last job.
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Lanes {
    fn send(&mut self, shared: &Shared, key: LaneKey, job: Job) {
        if self.map.len() >= self.prune_at {
            self.map.retain(|_, l| !l.ended());
            self.prune_at = (self.map.len() * 2).max(1024);
        }
        let lane = self
            .map
            .entry(key)
            .or_insert_with(|| Lane::start(shared, None));
        if let Err(mpsc::error::SendError(job)) = lane.tx.send(job) {
            // Ended while idle: a new lane, once the old one is done.
            let (_, old_done) = tokio::sync::oneshot::channel();
            let old_done = std::mem::replace(&mut lane.done, old_done);
            *lane = Lane::start(shared, Some(old_done));
            let _ = lane.tx.send(job);
        }
    }
}

impl Lane {
    fn start(shared: &Shared, after: Option<tokio::sync::oneshot::Receiver<()>>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let mut ctx = TaskCtx::new(shared);
        tokio::spawn(async move {
            if let Some(after) = after {
                let _ = after.await;
            }
            let mut conn = None;
            loop {
                match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
                    Ok(Some(job)) => ctx.perform(job, Some(&mut conn)).await,
                    Ok(None) => break,
                    Err(_idle) => {
                        // Jobs sent before the close are still ours.
                        rx.close();
                        while let Some(job) = rx.recv().await {
                            ctx.perform(job, Some(&mut conn)).await;
                        }
                        break;
                    }
                }
            }
            let _ = done_tx.send(());
        });
        Self { tx, done }
    }

    /// Its task is over: pruning it cannot reorder its connection.
    fn ended(&mut self) -> bool {
        !matches!(
            self.done.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        )
    }
}

/// Raise the soft limit of open files to the hard one, as Go programs
/// (GoReplay among them) do at start: replay holds a socket per request
/// in flight per target, and the usual soft limit of 1,024 is below a
/// `--concurrency 1000` run to two targets.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        // An unlimited hard limit is refused by Linux (above nr_open).
        let want = lim.rlim_max.min(1 << 20);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn spawn_ticker(
    bar: indicatif::ProgressBar,
    c: Arc<Counters>,
    targets: Vec<Arc<Target>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let sent = c.sent.load(Ordering::Relaxed);
            bar.set_position(sent / targets.len().max(1) as u64);
            // Errors per target: a shadow failing is the news, not the total.
            let errors: Vec<String> = targets
                .iter()
                .map(|t| format!("{} {}", t.name, t.errors.load(Ordering::Relaxed)))
                .collect();
            bar.set_message(format!(
                "{}/s sent, {} in flight, errors: {}, lag {:.1} ms",
                (sent - last) * 4,
                c.in_flight.load(Ordering::Relaxed),
                errors.join(", "),
                c.lag_ns.load(Ordering::Relaxed) as f64 / 1e6
            ));
            last = sent;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded answer is cut where the live one would be: by its length
    /// on the wire, not by its stored bytes, which a redacted secret
    /// shorter than `[REDACTED]` made longer.
    #[test]
    fn a_recorded_answer_is_cut_by_its_wire_length() {
        let planned = |stored: &[u8], wire: u64| Planned {
            file: 0,
            exchange: Exchange {
                response_body: stored.to_vec(),
                response_body_len: wire,
                status: Some(200),
                ..Default::default()
            },
            endpoint: "POST /login".into(),
        };
        let grown = br#"{"password":"[REDACTED]"}"#; // {"password":"x"}: 16 on the wire
        let row = recorded_row(&planned(grown, 16), 0, 20);
        assert_eq!(row.response_body, grown);
        assert!(!row.response_body_truncated);
        let row = recorded_row(&planned(grown, 30), 0, 20);
        assert_eq!(row.response_body, grown[..20]);
        assert!(row.response_body_truncated);
    }

    /// A target whose endpoint gave no sample (a selector that matched
    /// nothing) is named, not left to a silent "not measured" in diff.
    #[test]
    fn a_sampled_target_without_samples_is_named() {
        let mut metrics = sampler::SamplerSummary {
            scrapes: 20,
            samples: 40,
            ..Default::default()
        };
        metrics.samples_by_target.insert("primary".into(), 40);
        metrics.samples_by_target.insert("v2".into(), 0);
        let summary = ReplaySummary {
            metrics: Some(metrics),
            ..Default::default()
        };
        let text = summary.render();
        assert!(
            text.contains("metrics: v2 gave no sample of the families sampled"),
            "{text}"
        );
        assert!(!text.contains("primary gave no sample"), "{text}");
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on a local struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let hard = lim.rlim_max.min(1 << 20);
        // Lowered a little first (not so far that tests running beside
        // this one run out), so the raise has something to do.
        lim.rlim_cur = hard - 1;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        super::raise_open_files_limit();
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, hard);
    }
}
