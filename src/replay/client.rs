//! A minimal HTTP/1.1 client for replay: writes the request bytes as built,
//! reads the answer with the same framer the capture stage uses, keeps
//! connections alive per target. No redirects, proxies, decompression or
//! retries (one exception: a request that may be repeated, written on a
//! pooled connection that the server had already closed, with no byte of
//! answer, is written again once on a new connection; that is a stale
//! connection, not a target error. Idle connections are checked before
//! use, so this happens only when a close races the write).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::tls::Conn;
use crate::proto::http1::{
    response_framing, strict, End, Framing, Head, MessageParser, Role, Sink, StartLine,
};
use crate::schema::{ErrorKind, HeaderList, TargetRole};

/// A replay destination parsed from `--primary` / `--shadow`.
pub struct Target {
    pub name: String,
    pub role: TargetRole,
    pub host: String,
    pub port: u16,
    /// `host:port` for the Host header.
    pub authority: String,
    pub base_path: String,
    /// `https://`: connections are wrapped in TLS with this connector.
    pub https: bool,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The same with ALPN `h2`, for requests sent over HTTP/2.
    pub(super) tls_h2: Option<(TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<Conn>>,
    /// HTTP/2 connections (opened when a request needs one).
    pub(super) h2: super::h2::H2Pool,
    /// Requests in flight at most (`--concurrency`).
    pub permits: Semaphore,
    /// Answers with an error so far (for the progress bar).
    pub errors: std::sync::atomic::AtomicU64,
    /// An answer that started and then sent nothing for this long is cut
    /// (`--stream-idle-timeout`): a stalled stream, not a slow one.
    pub stream_idle: Duration,
}

/// Why a target URL is not usable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

impl Target {
    /// Parse `[NAME=]http[s]://host[:port][/base]`. An https target needs
    /// [`Target::set_tls`] before use.
    pub fn parse(
        spec: &str,
        role: TargetRole,
        default_name: &str,
        concurrency: usize,
    ) -> Result<Self, TargetError> {
        let (name, url) = match spec.split_once('=') {
            Some((n, u)) if !n.contains('/') && !n.is_empty() => (n.to_string(), u),
            _ => (default_name.to_string(), spec),
        };
        let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(TargetError(format!(
                "{url}: expected http://host[:port][/path] or https://host[:port][/path]"
            )));
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // Credentials in the URL are refused rather than guessed at: they
        // belong in a header the user writes (`--header 'Authorization: Basic ...'`).
        if authority.contains('@') {
            return Err(TargetError(format!(
                "{url}: user information (user:password@) in a target URL is not supported; send credentials with --header 'Authorization: ...'"
            )));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| TargetError(format!("{url}: cannot read host and port")))?;
        if port == 0 {
            return Err(TargetError(format!(
                "{url}: port 0 is not a port to connect to"
            )));
        }
        let host_ok = !host.is_empty()
            && if authority.starts_with('[') {
                host.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                host.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            };
        if !host_ok {
            return Err(TargetError(format!(
                "{url}: '{}' is not a host name or IP address",
                host.escape_debug()
            )));
        }
        Ok(Self {
            name,
            role,
            host,
            port,
            authority: authority.to_string(),
            base_path: base.trim_end_matches('/').to_string(),
            https,
            tls: None,
            tls_h2: None,
            idle: Mutex::new(Vec::new()),
            h2: super::h2::H2Pool::new(concurrency),
            permits: Semaphore::new(concurrency.max(1)),
            errors: Default::default(),
            stream_idle: Duration::from_secs(30),
        })
    }
}

impl Target {
    /// Give an https target the TLS connector (shared by all targets).
    pub fn set_tls(
        &mut self,
        connector: TlsConnector,
        h2: TlsConnector,
    ) -> Result<(), TargetError> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| TargetError(format!("{}: not a TLS server name: {e}", self.authority)))?;
        self.tls = Some((connector, name.clone()));
        self.tls_h2 = Some((h2, name));
        Ok(())
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        let port = p
            .strip_prefix(':')
            .map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_string(), default_port)),
        None => None,
    }
}

/// A request the scheduler already wrote (maybe partly) on a pooled connection.
pub struct Presend {
    conn: Conn,
    sent_ts: i64,
    /// The same moment on the monotonic clock: `--timeout` counts from it.
    sent_at: tokio::time::Instant,
    written: usize,
}

impl Presend {
    /// `written` bytes of a request written on `conn` at `sent_ts`
    /// (`sent_at`).
    pub(super) fn new(
        conn: Conn,
        (sent_ts, sent_at): (i64, tokio::time::Instant),
        written: usize,
    ) -> Self {
        Self {
            conn,
            sent_ts,
            sent_at,
            written,
        }
    }
}

/// What a target answered (or why it did not).
#[derive(Debug, Default)]
pub struct Answer {
    pub sent_ts: Option<i64>,
    pub first_byte_ts: Option<i64>,
    pub done_ts: Option<i64>,
    pub status: Option<u16>,
    pub headers: HeaderList,
    pub trailers: HeaderList,
    pub body: Vec<u8>,
    pub body_len: u64,
    pub truncated: bool,
    pub error: Option<(ErrorKind, String)>,
    /// Event streams: arrival of each event, ns after `sent_ts`.
    pub event_offsets_ns: Option<Vec<i64>>,
    pub first_token_ts: Option<i64>,
}

/// Nanoseconds since the Unix epoch, read from the monotonic clock after
/// one reading of the wall clock: a clock step (NTP, a VM resumed) in the
/// middle of a run must not give a negative gap between two tokens or a
/// negative latency.
pub fn now_ns() -> i64 {
    static ANCHOR: std::sync::OnceLock<(i64, std::time::Instant)> = std::sync::OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        (wall, std::time::Instant::now())
    });
    wall.saturating_add(at.elapsed().as_nanos() as i64)
}

/// Collects the final response from the framer.
struct Collect<'a> {
    method: &'a str,
    head: Option<Head>,
    interim_open: bool,
    body: Vec<u8>,
    body_len: u64,
    max_body: usize,
    end: Option<End>,
    close_after: bool,
    /// When the final answer's head came (interim 1xx answers do not count).
    head_ts: Option<i64>,
    /// A head whose length cannot be trusted (RFC 9112 section 6.3).
    framing_error: Option<String>,
    /// (stored body length, read time) as the body came: event timing.
    arrivals: Vec<(u64, i64)>,
    trailers: HeaderList,
}

impl Sink for Collect<'_> {
    fn head(&mut self, _: Role, head: Head, ts: i64, _: u64) -> Framing {
        // A head after the answer ended answers no request of ours: the
        // connection is out of step and is not used again.
        if self.end.is_some() {
            self.close_after = true;
            return Framing::None;
        }
        let mut framing = response_framing(&head, Some(self.method));
        if let StartLine::Response {
            status,
            ref version,
            ..
        } = head.line
        {
            if (100..200).contains(&status) && status != 101 {
                self.interim_open = true;
                return framing;
            }
            self.close_after = matches!(framing, Framing::UntilClose | Framing::Tunnel)
                || head.framing_unsure
                || closes(&head.headers, version);
            if let Some(bad) = invalid_length(&head).filter(|_| framing != Framing::None) {
                // RFC 9112 section 6.3: the answer's end is unknown, so it
                // is discarded and the connection closed.
                self.framing_error = Some(bad);
                framing = Framing::None;
            }
        }
        self.head_ts = Some(ts);
        self.head = Some(head);
        framing
    }

    fn body(&mut self, _: Role, data: &[u8], ts: i64) {
        if self.end.is_some() {
            self.close_after = true; // more body than its length said
            return;
        }
        self.body_len += data.len() as u64;
        let room = self.max_body.saturating_sub(self.body.len());
        self.body.extend_from_slice(&data[..data.len().min(room)]);
        crate::proto::events::note_arrival(&mut self.arrivals, self.body.len() as u64, ts);
    }

    fn body_gap(&mut self, _: Role, _: u64) {}

    fn trailers(&mut self, _: Role, trailers: HeaderList) {
        if self.end.is_none() {
            self.trailers = trailers;
        }
    }

    fn end(&mut self, _: Role, _: i64, how: End) {
        if self.interim_open {
            self.interim_open = false;
        } else {
            // The first answer's end stands; bytes after it only close.
            self.end.get_or_insert(how);
        }
    }

    // The end that follows says malformed; the reason is not recorded.
    fn problem(&mut self, _: Role, _: String) {
        if self.end.is_some() {
            self.close_after = true;
        }
    }

    fn lost(&mut self, _: Role, _: u64, _: bool) {
        if self.end.is_some() {
            self.close_after = true;
        }
        self.end.get_or_insert(End::Malformed);
    }
}

/// Whether an answer's `Connection` field (every line, every token) or
/// its HTTP/1.0 version says the connection closes after it.
fn closes(headers: &HeaderList, version: &str) -> bool {
    let tokens = || {
        headers
            .get_all("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    let has = |t: &[u8]| tokens().any(|x| x.eq_ignore_ascii_case(t));
    has(b"close") || (version == "HTTP/1.0" && !has(b"keep-alive"))
}

/// Why an answer's length cannot be known: Content-Length lines that are
/// not one number (RFC 9112 section 6.3), and no Transfer-Encoding to frame
/// it instead. The shared framer reads such a body to the close or by its
/// first line, as capture must; a client discards it.
fn invalid_length(head: &Head) -> Option<String> {
    let h = &head.headers;
    if h.get("transfer-encoding").is_some() || strict::content_lengths_agree(h) {
        return None;
    }
    let shown: Vec<String> = h
        .get_all("content-length")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    Some(format!(
        "invalid Content-Length {:?}: the answer's length is unknown (RFC 9112 6.3), so it is not kept",
        shown.join(" / ")
    ))
}

/// What reading one more chunk of an answer led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    More,
    Done,
    /// The body passed the hard cap: stop reading, drop the connection.
    Oversize,
}

/// Turns the bytes of one answer into an [`Answer`]: the framer shared with
/// capture plus the rules of a client (interim 1xx skipped, HEAD bodies,
/// keep-alive). Sans-I/O, so the fuzz target drives the same code.
pub struct ResponseReader<'a> {
    parser: MessageParser,
    sink: Collect<'a>,
}

impl<'a> ResponseReader<'a> {
    pub fn new(method: &'a str, max_body: usize) -> Self {
        Self {
            parser: MessageParser::new(Role::Response, false, 0),
            sink: Collect {
                method,
                head: None,
                interim_open: false,
                body: Vec::new(),
                body_len: 0,
                max_body,
                end: None,
                close_after: false,
                head_ts: None,
                framing_error: None,
                arrivals: Vec::new(),
                trailers: HeaderList::new(),
            },
        }
    }

    /// Read `data`, which arrived at `ts` (ns since epoch).
    pub fn feed(&mut self, data: &[u8], ts: i64) -> Step {
        self.parser.feed(data, ts, &mut self.sink);
        if self.sink.end.is_some() {
            // Part of a further message came with this one: out of step.
            if self.parser.buffered() > 0 {
                self.sink.close_after = true;
            }
            return Step::Done;
        }
        if self.sink.body_len > (self.sink.max_body as u64).max(HARD_BODY_CAP) {
            self.sink.close_after = true;
            return Step::Oversize;
        }
        Step::More
    }

    /// Body bytes read so far.
    pub fn body_len(&self) -> u64 {
        self.sink.body_len
    }

    /// Whether the final answer's head has come (interim 1xx ones aside).
    pub fn answering(&self) -> bool {
        self.sink.head.is_some()
    }

    /// The connection closed.
    pub fn finish(&mut self) {
        self.parser.finish(now_ns(), true, &mut self.sink);
    }

    /// Fill `answer` with what was read; an answer that ended early or
    /// could not be parsed becomes its error (unless one is already set).
    /// Returns whether the connection may carry another request.
    pub fn settle(mut self, answer: &mut Answer) -> bool {
        let sink = &mut self.sink;
        if let Some(head) = sink.head.take() {
            if let StartLine::Response { status, .. } = head.line {
                answer.status = Some(status);
            }
            answer.headers = head.headers;
            answer.first_byte_ts = sink.head_ts;
        }
        if let Some(bad) = sink.framing_error.take() {
            answer
                .error
                .get_or_insert((ErrorKind::MalformedResponse, bad));
            return false;
        }
        answer.trailers = std::mem::take(&mut sink.trailers);
        answer.truncated = sink.body_len > sink.body.len() as u64;
        answer.body_len = sink.body_len;
        answer.body = std::mem::take(&mut sink.body);
        stream_timing(answer, &sink.arrivals);
        match sink.end {
            Some(End::Complete) => answer.error.is_none() && !sink.close_after,
            Some(_) if answer.error.is_none() => {
                let kind = if answer.status.is_some() {
                    ErrorKind::Reset
                } else {
                    ErrorKind::MalformedResponse
                };
                answer.error = Some((kind, "the answer ended early or could not be parsed".into()));
                false
            }
            None if answer.error.is_none() => {
                answer.error = Some((
                    ErrorKind::Reset,
                    "connection closed before a complete answer".into(),
                ));
                false
            }
            _ => false,
        }
    }
}

/// An event-stream answer: when each event arrived (after the send) and
/// when the first one with generated content did.
pub(super) fn stream_timing(answer: &mut Answer, arrivals: &[(u64, i64)]) {
    let (Some(sent), Some(&(_, last))) = (answer.sent_ts, arrivals.last()) else {
        return;
    };
    let h = &answer.headers;
    let Some(events) = crate::proto::events::stream_events(
        h.get("content-type"),
        h.get("content-encoding"),
        &answer.body,
        arrivals,
        answer.done_ts.unwrap_or(last),
    ) else {
        return;
    };
    answer.first_token_ts = crate::llm::first_content_event(&events).map(|i| events[i].ts);
    answer.event_offsets_ns = Some(events.iter().map(|e| e.ts - sent).collect());
}

/// Read a whole answer arriving in `chunks`, then the connection closing
/// (the fuzz target's entry; the client reads from a socket instead).
pub fn parse_response(chunks: &[&[u8]], method: &str, max_body: usize) -> Answer {
    let mut reader = ResponseReader::new(method, max_body);
    let mut answer = Answer::default();
    let mut done = false;
    for c in chunks {
        match reader.feed(c, now_ns()) {
            Step::More => {}
            Step::Done => {
                done = true;
                break;
            }
            Step::Oversize => {
                answer.error = Some((ErrorKind::OversizeBody, "oversize".into()));
                done = true;
                break;
            }
        }
    }
    if !done {
        reader.finish();
    }
    reader.settle(&mut answer);
    answer
}

/// A request's deadline timer, reused from one request to the next by a
/// closed-loop worker (see [`Clock::within`]).
pub struct Clock(std::pin::Pin<Box<tokio::time::Sleep>>);

impl Default for Clock {
    fn default() -> Self {
        Self(Box::pin(tokio::time::sleep(Duration::ZERO)))
    }
}

impl Clock {
    /// `work`'s output, or None if `at` comes first. Tokio puts a timer in
    /// its shared wheel, under a lock, when the timer is first waited on,
    /// and takes the lock again when it is dropped; moving a timer that is
    /// already in the wheel to a later time takes no lock. Under `--max`,
    /// new timers per request took that lock four times a request (it
    /// showed in the CPU profile); one timer per worker, moved forward from
    /// request to request, mostly avoids it.
    pub async fn within<F: std::future::Future>(
        &mut self,
        at: tokio::time::Instant,
        work: F,
    ) -> Option<F::Output> {
        self.0.as_mut().reset(at);
        tokio::select! {
            biased;
            out = work => Some(out),
            _ = self.0.as_mut() => None,
        }
    }
}

/// Why no byte came before `until`: the whole answer's `--timeout` ran
/// out, or (before it) the answer went idle for `--stream-idle-timeout`.
pub(super) fn stalled(
    deadline: tokio::time::Instant,
    idle: Duration,
    after: &str,
) -> (ErrorKind, String) {
    if tokio::time::Instant::now() >= deadline {
        (
            ErrorKind::Timeout,
            "no complete answer within --timeout".into(),
        )
    } else {
        (
            ErrorKind::StreamIdle,
            format!("the answer stalled: no byte for {idle:?}{after}"),
        )
    }
}

pub(super) fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ErrorKind::ConnectRefused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ErrorKind::Reset
        }
        K::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Io,
    }
}

/// Whether an idle pooled connection can still carry a request: a server
/// that closed it while idle (its keep-alive timeout) has left an end of
/// file to read. Checking costs one non-blocking read and saves writing a
/// request into a dead socket; for a close that races the write, the resend
/// on a fresh connection stays (for requests that may be repeated, see
/// [`stale`]).
pub(super) fn still_open(conn: &mut Conn) -> bool {
    let mut probe = [0u8; 1];
    match conn {
        // Ok(0): closed; Ok(n): bytes nobody asked for, so the connection
        // is out of step; WouldBlock: idle and open.
        Conn::Plain(stream) => {
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        // A TLS read that does not wait: it takes in the records an idle
        // connection may hold (session tickets, a close_notify), which a
        // raw socket read would steal from the TLS layer. Pending: idle
        // and open; anything else (end, error, bytes) is not.
        Conn::Tls(tls) => {
            use futures_util::FutureExt;
            let mut buf = tokio::io::ReadBuf::new(&mut probe);
            let mut tls = std::pin::Pin::new(&mut **tls);
            std::future::poll_fn(|cx| tokio::io::AsyncRead::poll_read(tls.as_mut(), cx, &mut buf))
                .now_or_never()
                .is_none()
        }
    }
}

/// Bytes read beyond `--max-body` before giving up on a response.
pub(super) const HARD_BODY_CAP: u64 = 256 << 20;

/// Which connection an attempt uses.
enum Via {
    /// The one the request was already (partly) written on.
    Present(Presend),
    /// An idle pooled one if there is one (or the `--preserve-order` one).
    Pool,
    /// A newly opened one.
    Fresh,
}

/// What to send to a target and how long to wait for its answer.
pub struct Ask<'a> {
    pub request: &'a [u8],
    /// The request's method (a HEAD answer has no body).
    pub method: &'a str,
    pub timeout: Duration,
    /// Body bytes kept at most.
    pub max_body: usize,
}

/// One request's settings across its attempts.
struct Call<'a> {
    request: &'a [u8],
    method: &'a str,
    max_body: usize,
    deadline: tokio::time::Instant,
    timeout: Duration,
    /// When the first attempt began (the send time of one that never got
    /// a connection or never finished writing).
    started: i64,
}

impl Call<'_> {
    /// Connecting or writing outlasted the deadline.
    fn timed_out(&self) -> Attempt {
        Attempt::Done(Box::new(timed_out(self.started, self.timeout)))
    }
}

/// The answer to a request that got no connection, or was not sent in
/// full, within `timeout` of `started`.
pub(super) fn timed_out(started: i64, timeout: Duration) -> Answer {
    Answer {
        sent_ts: Some(started),
        error: Some((
            ErrorKind::Timeout,
            format!("no complete answer within {timeout:?}"),
        )),
        ..Default::default()
    }
}

enum Attempt {
    Done(Box<Answer>),
    /// A pooled connection was already closed: try a fresh one.
    Stale,
}

impl Target {
    async fn connection(&self) -> Result<(Conn, bool), (ErrorKind, String)> {
        while let Some(mut c) = self.pop_idle() {
            if still_open(&mut c) {
                return Ok((c, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    fn pop_idle(&self) -> Option<Conn> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    async fn connect(&self) -> Result<Conn, (ErrorKind, String)> {
        self.open(&self.tls, Alpn::Http1).await
    }

    /// A new connection, wrapped in TLS with `tls` (which offers `alpn`)
    /// for an https target.
    pub(super) async fn open(
        &self,
        tls: &Option<(TlsConnector, ServerName<'static>)>,
        alpn: Alpn,
    ) -> Result<Conn, (ErrorKind, String)> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| (io_kind(&e), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        if !self.https {
            return Ok(Conn::Plain(stream));
        }
        let Some((connector, name)) = tls else {
            return Err((ErrorKind::Tls, "https target without TLS settings".into()));
        };
        let tls = connector
            .connect(name.clone(), stream)
            .await
            .map_err(|e| (ErrorKind::Tls, handshake_failed(&e, alpn)))?;
        Ok(Conn::Tls(Box::new(tls)))
    }

    /// Open up to `n` connections ahead of the run, so the first requests
    /// do not wait for handshakes (failures are left for the requests to
    /// record).
    pub async fn warm(&self, n: usize) {
        let opened = futures_util::future::join_all((0..n).map(|_| self.connect())).await;
        for conn in opened.into_iter().flatten() {
            self.recycle(conn);
        }
    }

    /// The idle plain connections, taken out of the pool (TLS ones stay).
    pub(super) fn take_idle_plain(&self) -> Vec<TcpStream> {
        let Ok(mut idle) = self.idle.lock() else {
            return Vec::new();
        };
        let mut plain = Vec::new();
        let kept = std::mem::take(&mut *idle);
        for c in kept {
            match c {
                Conn::Plain(s) => plain.push(s),
                tls @ Conn::Tls(_) => idle.push(tls),
            }
        }
        plain
    }

    fn recycle(&self, stream: Conn) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < 1024 {
                v.push(stream);
            }
        }
    }

    /// Send `request` and read the answer, within `timeout` in all. With
    /// `own`, the request goes over that connection (opened if empty) instead
    /// of the shared pool: `--preserve-order` keeps one per recorded connection.
    /// Send `request` now, from the calling thread (the scheduler's), on an
    /// idle pooled plain connection, if one is free and the socket takes the
    /// bytes without blocking. The answer is then read by [`Target::exchange`]
    /// on a worker; the send time is exact whatever the workers are doing.
    pub fn try_send_now(&self, request: &[u8]) -> Option<Presend> {
        let conn = std::iter::from_fn(|| self.pop_idle())
            .find_map(|mut c| still_open(&mut c).then_some(c))?;
        let Conn::Plain(stream) = &conn else {
            self.recycle(conn);
            return None;
        };
        let sent = (now_ns(), tokio::time::Instant::now());
        match stream.try_write(request) {
            Ok(written) => Some(Presend::new(conn, sent, written)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.recycle(conn);
                None
            }
            // Broken: dropped; the worker path opens a new connection.
            Err(_) => None,
        }
    }

    pub async fn exchange(
        &self,
        mut own: Option<&mut Option<Conn>>,
        request: &[u8],
        method: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Answer {
        let ask = Ask {
            request,
            method,
            timeout,
            max_body,
        };
        self.exchange_after(None, own.take(), ask, &mut Clock::default())
            .await
    }

    /// [`Target::exchange`], continuing a request already (partly) sent by
    /// [`Target::try_send_now`].
    pub async fn exchange_after(
        &self,
        mut pre: Option<Presend>,
        mut own: Option<&mut Option<Conn>>,
        ask: Ask<'_>,
        clock: &mut Clock,
    ) -> Answer {
        let Ask {
            request,
            method,
            timeout,
            max_body,
        } = ask;
        // Connecting, writing and each read wait on `clock` until the
        // deadline; reads then stop and keep what came (a long stream cut by
        // --timeout still shows its events).
        // A request already written (by the scheduler) has been waiting
        // for its answer since then.
        let deadline = pre
            .as_ref()
            .map_or_else(tokio::time::Instant::now, |p| p.sent_at)
            + timeout;
        let first = match pre.take() {
            Some(p) => Via::Present(p),
            None => Via::Pool,
        };
        let mut call = Call {
            request,
            method,
            max_body,
            deadline,
            timeout,
            started: now_ns(),
        };
        // The resend after a stale connection goes over a new one, never
        // another pooled one that may have gone stale the same way.
        for via in [first, Via::Fresh] {
            match self
                .attempt(via, own.as_deref_mut(), &mut call, clock)
                .await
            {
                Attempt::Done(a) => return *a,
                Attempt::Stale => continue,
            }
        }
        Answer {
            error: Some((
                ErrorKind::Reset,
                "connection closed before any answer".into(),
            )),
            ..Default::default()
        }
    }

    async fn attempt(
        &self,
        via: Via,
        mut own: Option<&mut Option<Conn>>,
        call: &mut Call<'_>,
        clock: &mut Clock,
    ) -> Attempt {
        let &mut Call {
            request,
            method,
            max_body,
            deadline,
            ..
        } = call;
        let mut answer = Answer::default();
        let (mut stream, reused, sent_ts, done) = match via {
            Via::Present(p) => (p.conn, true, p.sent_ts, p.written),
            Via::Pool | Via::Fresh => {
                let held = own.as_deref_mut().and_then(Option::take);
                let fresh = matches!(via, Via::Fresh);
                let conn = match held {
                    Some(s) => Ok((s, true)),
                    None if own.is_some() || fresh => {
                        match clock.within(deadline, self.connect()).await {
                            Some(c) => c.map(|s| (s, false)),
                            None => return call.timed_out(),
                        }
                    }
                    None => match clock.within(deadline, self.connection()).await {
                        Some(c) => c,
                        None => return call.timed_out(),
                    },
                };
                match conn {
                    Ok((s, reused)) => (s, reused, now_ns(), 0),
                    Err((kind, detail)) => {
                        answer.error =
                            Some((kind, format!("connect to {}: {detail}", self.authority)));
                        return Attempt::Done(Box::new(answer));
                    }
                }
            }
        };
        answer.sent_ts = Some(sent_ts);
        let write = async {
            stream
                .write_all(&request[done.min(request.len())..])
                .await?;
            stream.flush().await
        };
        let Some(written) = clock.within(deadline, write).await else {
            return call.timed_out();
        };
        if let Err(e) = written {
            // The server closed before taking the whole request, so it
            // cannot have acted on it: sending it again is safe.
            if reused {
                return Attempt::Stale;
            }
            answer.error = Some((io_kind(&e), format!("write: {e}")));
            return Attempt::Done(Box::new(answer));
        }
        let mut reader = ResponseReader::new(method, max_body);
        // Uninitialised capacity, filled by read_buf: zeroing a 64 KiB
        // buffer per request was the largest single cost under --max.
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut got_any = false;
        loop {
            buf.clear();
            // Before the answer's head only the deadline applies (a model
            // may think long, after a 100 Continue too); after it, a
            // silence longer than the idle limit is a stalled stream.
            let until = if reader.answering() {
                deadline.min(tokio::time::Instant::now() + self.stream_idle)
            } else {
                deadline
            };
            let read = match clock.within(until, stream.read_buf(&mut buf)).await {
                Some(r) => r,
                None => {
                    let after = format!(" after {} body bytes", reader.body_len());
                    answer.error = Some(stalled(deadline, self.stream_idle, &after));
                    break;
                }
            };
            match read {
                Ok(0) => {
                    if !got_any && reused {
                        return stale(method, answer);
                    }
                    reader.finish();
                    break;
                }
                Ok(n) => {
                    got_any = true;
                    let step = reader.feed(&buf[..n], now_ns());
                    if n == buf.capacity() && buf.capacity() < 256 * 1024 {
                        buf.reserve(buf.capacity()); // a big answer: read more at a time
                    }
                    match step {
                        Step::More => {}
                        Step::Done => break,
                        Step::Oversize => {
                            answer.error = Some((
                                ErrorKind::OversizeBody,
                                format!("body over {HARD_BODY_CAP} bytes"),
                            ));
                            break;
                        }
                    }
                }
                Err(e) => {
                    if !got_any && reused {
                        return stale(method, answer);
                    }
                    answer.error = Some((io_kind(&e), format!("read: {e}")));
                    break;
                }
            }
        }
        answer.done_ts = Some(now_ns());
        if reader.settle(&mut answer) {
            match own {
                Some(slot) => *slot = Some(stream),
                None => self.recycle(stream),
            }
        }
        Attempt::Done(Box::new(answer))
    }
}

/// A reused connection closed after the whole request was written and
/// before any answer: usually the server had closed it as idle, but it may
/// have taken the request and died. Only a request that may be repeated
/// (RFC 9110 section 9.2.2) is sent again; a POST is not, since the
/// target may have acted on it once already.
fn stale(method: &str, mut answer: Answer) -> Attempt {
    if matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    ) {
        return Attempt::Stale;
    }
    answer.error = Some((
        ErrorKind::Reset,
        format!(
            "a reused connection closed after the {method} was sent and before any answer; \
             not sent again, since the target may have acted on it"
        ),
    ));
    answer.done_ts = Some(now_ns());
    Attempt::Done(Box::new(answer))
}

/// The one protocol a connection offers in ALPN.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Alpn {
    Http1,
    H2,
}

/// Why a TLS handshake failed. A server that refuses the protocol offered
/// in ALPN (a fatal `no_application_protocol` alert, as strict servers
/// send) is told apart, with the flag that offers the other one.
fn handshake_failed(e: &std::io::Error, alpn: Alpn) -> String {
    use tokio_rustls::rustls;
    let refused = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        == Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol,
        ));
    match (refused, alpn) {
        (true, Alpn::H2) => {
            format!("the server did not agree to HTTP/2 (ALPN h2: {e}); replay it with --http1")
        }
        (true, Alpn::Http1) => format!(
            "the server did not agree to HTTP/1.1 (ALPN http/1.1: {e}); replay it with --http2"
        ),
        (false, _) => format!("TLS handshake: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_never_goes_back() {
        let mut last = now_ns();
        for _ in 0..10_000 {
            let t = now_ns();
            assert!(t >= last, "{t} < {last}");
            last = t;
        }
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((last - wall).abs() < 5_000_000_000, "{last} vs {wall}");
    }

    #[test]
    fn a_reused_clock_cuts_each_wait_at_its_own_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let at = |ms| tokio::time::Instant::now() + Duration::from_millis(ms);
            let never = std::future::pending::<()>;
            let mut clock = Clock::default();
            assert_eq!(clock.within(at(5_000), async { 1 }).await, Some(1));
            // Moved later, then cut there.
            let t = std::time::Instant::now();
            assert_eq!(clock.within(at(30), never()).await, None);
            assert!(t.elapsed() >= Duration::from_millis(25));
            // Moved earlier than the time it was last set to: still on time.
            clock.within(at(60_000), async {}).await;
            let t = std::time::Instant::now();
            assert_eq!(clock.within(at(30), never()).await, None);
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
            // After firing, it waits again.
            assert_eq!(clock.within(at(5_000), async { 2 }).await, Some(2));
        });
    }

    #[test]
    fn responses_split_anywhere_read_the_same() {
        let raw: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for cut in 0..raw.len() {
            let a = parse_response(&[&raw[..cut], &raw[cut..]], "GET", 1 << 20);
            assert_eq!(
                (a.status, a.body.as_slice()),
                (Some(200), &b"abc"[..]),
                "cut at {cut}"
            );
            assert!(a.error.is_none());
        }
        let a = parse_response(&[b"garbage\r\n\r\n"], "GET", 1 << 20);
        assert_eq!(a.error.map(|e| e.0), Some(ErrorKind::MalformedResponse));
        let a = parse_response(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"],
            "GET",
            1,
        );
        assert_eq!((a.body_len, a.truncated), (2, true));
        assert!(a.error.is_some(), "ended early");
    }

    /// An answer read from `chunks` (each at its own time, 1000 ns apart)
    /// and whether its connection could carry another request.
    fn read(chunks: &[&[u8]], method: &str) -> (Answer, bool) {
        let mut reader = ResponseReader::new(method, 1 << 20);
        let mut done = false;
        for (i, c) in chunks.iter().enumerate() {
            if reader.feed(c, 1000 * (i as i64 + 1)) == Step::Done {
                done = true;
                break;
            }
        }
        if !done {
            reader.finish();
        }
        let mut answer = Answer::default();
        let reuse = reader.settle(&mut answer);
        (answer, reuse)
    }

    #[test]
    fn bytes_after_an_answer_neither_change_it_nor_leave_the_connection_in_use() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab";
        let (a, reuse) = read(&[ok], "GET");
        assert_eq!(
            (a.status, a.body.as_slice(), reuse),
            (Some(200), &b"ab"[..], true)
        );
        for extra in [
            &b"HTTP/1.1 500 No\r\nContent-Length: 3\r\n\r\nxyz"[..],
            b"HTTP/1.1 5",
            b"c",
        ] {
            let both = [ok, extra].concat();
            let (a, reuse) = read(&[&both], "GET");
            let shown = String::from_utf8_lossy(extra);
            assert_eq!(a.status, Some(200), "{shown}");
            assert_eq!(a.body, b"ab", "{shown}");
            assert_eq!(a.headers.get("content-length"), Some(&b"2"[..]), "{shown}");
            assert!(a.error.is_none() && !reuse, "{shown}: {:?}", a.error);
        }
        // A body sent to a HEAD request is not the next answer either.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let (a, reuse) = read(&[head], "HEAD");
        assert_eq!((a.status, a.body_len, reuse), (Some(200), 0, false));
    }

    #[test]
    fn an_answer_of_unknown_length_is_discarded_and_its_connection_closed() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello.."[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        ] {
            let (a, reuse) = read(&[head], "GET");
            let (kind, detail) = a.error.expect("an error");
            assert_eq!(kind, ErrorKind::MalformedResponse);
            assert!(detail.contains("invalid Content-Length"), "{detail}");
            assert!(a.body.is_empty() && !reuse);
        }
        // Both Transfer-Encoding and Content-Length: chunked frames it, but
        // the connection is not trusted with another request.
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (a, reuse) = read(&[both], "GET");
        assert_eq!((a.body.as_slice(), reuse), (&b"ok"[..], false));
        assert!(a.error.is_none());
    }

    #[test]
    fn every_connection_token_is_heard_and_tunnels_are_not_pooled() {
        let cases: [(&[u8], bool); 5] = [
            (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", false),
        ];
        for (raw, want) in cases {
            let (a, reuse) = read(&[raw], "GET");
            assert!(a.status.is_some(), "{a:?}");
            assert_eq!(reuse, want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn the_first_byte_is_the_final_answers_not_an_interim_ones() {
        let (a, _) = read(
            &[
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
            "GET",
        );
        assert_eq!((a.status, a.first_byte_ts), (Some(200), Some(2000)));
    }

    #[test]
    fn parses_target_specs() {
        let t = Target::parse(
            "v2=http://127.0.0.1:8081/api/",
            TargetRole::Shadow,
            "shadow",
            4,
        )
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.host.as_str(), t.port),
            ("v2", "127.0.0.1", 8081)
        );
        assert_eq!(t.base_path, "/api");
        let t = Target::parse("http://[::1]:9000", TargetRole::Primary, "primary", 4).unwrap();
        assert_eq!(
            (
                t.name.as_str(),
                t.host.as_str(),
                t.port,
                t.authority.as_str()
            ),
            ("primary", "::1", 9000, "[::1]:9000")
        );
        assert!(Target::parse("ftp://x", TargetRole::Primary, "p", 1).is_err());
        for bad in [
            "http://user:pw@127.0.0.1:8080",
            "http://127.0.0.1:0",
            "http://bad host:80",
            "http://[::1:80",
            "http://[zz]:80",
        ] {
            let e = Target::parse(bad, TargetRole::Primary, "p", 1).err();
            assert!(e.is_some(), "{bad} accepted");
        }
    }
}
