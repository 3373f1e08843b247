//! Replay over HTTP/2 with the `h2` crate (docs/decisions/0002-http2-replay.md):
//! h2c with prior knowledge for `http://` targets, ALPN `h2` for `https://`.
//! A few connections per target carry many concurrent streams each; `h2`
//! keeps to the server's SETTINGS (concurrent streams, flow-control
//! windows), and we give back receive window as bodies are read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;

use super::client::{
    now_ns, stalled, stream_timing, timed_out, Answer, Clock, Target, HARD_BODY_CAP,
};
use super::tls::Conn;
use crate::proto::h2::error_name;
use crate::schema::{ErrorKind, HeaderList};

/// Streams per connection we aim for before opening another (servers
/// commonly allow 100 or more).
const STREAMS_PER_CONNECTION: usize = 64;
const MAX_CONNECTIONS: usize = 16;

/// A request ready for `h2`: head without body, and the body.
pub struct H2Request {
    pub head: http::Request<()>,
    pub body: Bytes,
    /// The captured request trailers, sent after the body.
    pub trailers: Option<http::HeaderMap>,
}

/// One target's HTTP/2 connections.
pub struct H2Pool {
    /// Taken only to clone or replace a sender, never across an await.
    slots: Vec<std::sync::Mutex<Slot>>,
    /// Held while a slot's connection is opened, so one opens at a time.
    opening: Vec<tokio::sync::Mutex<()>>,
    next: AtomicUsize,
    /// Connections opened so far (a server that closes them shows here).
    pub opened: AtomicU64,
}

#[derive(Default)]
struct Slot {
    send: Option<SendRequest<Bytes>>,
    generation: u64,
}

impl H2Pool {
    pub fn new(concurrency: usize) -> Self {
        let n = concurrency
            .div_ceil(STREAMS_PER_CONNECTION)
            .clamp(1, MAX_CONNECTIONS);
        Self {
            slots: (0..n).map(|_| Default::default()).collect(),
            opening: (0..n).map(|_| Default::default()).collect(),
            next: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
        }
    }
}

/// How an `h2` error is recorded.
fn classify(e: &h2::Error) -> (ErrorKind, String) {
    if let Some(io) = e.get_io() {
        return (
            super::client::io_kind(io),
            format!("HTTP/2 connection: {io}"),
        );
    }
    let reason = e
        .reason()
        .map_or_else(|| "?".to_string(), |r| error_name(u32::from(r)));
    if e.is_go_away() && e.is_remote() {
        return (
            ErrorKind::GoAway,
            format!("GOAWAY {reason} from the server"),
        );
    }
    if e.is_go_away() {
        // `h2` ended the connection itself: the server broke the protocol.
        return (
            ErrorKind::MalformedResponse,
            format!("the server broke HTTP/2 ({reason}); the connection was closed"),
        );
    }
    match e.reason() {
        Some(h2::Reason::REFUSED_STREAM) => (
            ErrorKind::RefusedStream,
            "RST_STREAM REFUSED_STREAM: the server did not process it".into(),
        ),
        Some(_) if e.is_remote() => (
            ErrorKind::StreamReset,
            format!("RST_STREAM {reason} from the server"),
        ),
        _ => (ErrorKind::MalformedResponse, format!("HTTP/2: {e}")),
    }
}

/// Whether the connection an error came from is done for.
fn connection_lost(e: &h2::Error) -> bool {
    e.is_io() || e.is_go_away() || (e.reason().is_some() && !e.is_reset())
}

impl Target {
    /// Slot `i`, under a plain lock held for a clone or a swap: an async
    /// lock per request queued the 64 workers on it, and every release woke
    /// the next one.
    fn slot(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.h2.slots[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open sender of slot `i`, if any.
    fn open_sender(&self, i: usize) -> Option<(SendRequest<Bytes>, usize, u64)> {
        let slot = self.slot(i);
        slot.send.as_ref().map(|s| (s.clone(), i, slot.generation))
    }

    /// A connection's sender: an open one, or a new connection.
    async fn h2_sender(&self) -> Result<(SendRequest<Bytes>, usize, u64), (ErrorKind, String)> {
        let pool = &self.h2;
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len();
        if let Some(open) = self.open_sender(i) {
            return Ok(open);
        }
        let _opening = pool.opening[i].lock().await;
        if let Some(open) = self.open_sender(i) {
            return Ok(open); // opened while this request waited
        }
        let io = self.connect_h2().await?;
        let (send, connection) = h2::client::Builder::new()
            // Large windows: a replay reads every answer at once, and the
            // 64 KiB defaults would pace big answers by round trips.
            .initial_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| classify(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        pool.opened.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.slot(i);
        slot.generation += 1;
        slot.send = Some(send.clone());
        Ok((send, i, slot.generation))
    }

    /// An error's record; a connection it broke is forgotten (unless a
    /// newer one already took its slot), so the next request opens another.
    fn h2_failed(&self, e: h2::Error, i: usize, generation: u64) -> (ErrorKind, String) {
        if connection_lost(&e) {
            let mut slot = self.slot(i);
            if slot.generation == generation {
                slot.send = None;
            }
        }
        classify(&e)
    }

    async fn connect_h2(&self) -> Result<Conn, (ErrorKind, String)> {
        let conn = self
            .open(&self.tls_h2, super::client::Alpn::H2)
            .await
            .map_err(|(k, d)| (k, format!("connect to {}: {d}", self.authority)))?;
        let Conn::Tls(tls) = &conn else {
            return Ok(conn);
        };
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err((
                ErrorKind::Tls,
                format!(
                    "{} did not agree to HTTP/2 (ALPN h2); replay it with --http1",
                    self.authority
                ),
            ));
        }
        Ok(conn)
    }

    /// Send one request as an HTTP/2 stream and read its answer, within
    /// `timeout` in all (reads keep what came by then).
    /// Every wait is on the worker's `clock` (see [`Clock::within`]).
    pub async fn exchange_h2(
        &self,
        req: H2Request,
        timeout: Duration,
        max_body: usize,
        clock: &mut Clock,
    ) -> Answer {
        let deadline = tokio::time::Instant::now() + timeout;
        let started = now_ns();
        let mut answer = Answer::default();
        let mut retried = false;
        let ready = loop {
            let Some(sender) = clock.within(deadline, self.h2_sender()).await else {
                return timed_out(started, timeout);
            };
            let (send, slot, generation) = match sender {
                Ok(s) => s,
                Err(e) => {
                    answer.error = Some(e);
                    return answer;
                }
            };
            // Waits while the server's concurrent-stream limit is reached.
            match clock.within(deadline, send.ready()).await {
                Some(Ok(send)) => break (send, slot, generation),
                Some(Err(e)) => {
                    let lost = connection_lost(&e);
                    let error = self.h2_failed(e, slot, generation);
                    // Nothing was sent. A server ends connections with a
                    // GOAWAY after finishing their last streams (nginx
                    // every 1,000 requests, Envoy, grpc-go's max age): the
                    // next request goes over a new connection, once.
                    if lost && !retried {
                        retried = true;
                        continue;
                    }
                    answer.error = Some(error);
                    return answer;
                }
                None => {
                    answer.error = Some((
                        ErrorKind::Timeout,
                        "no HTTP/2 stream free before --timeout".into(),
                    ));
                    return answer;
                }
            }
        };
        self.stream(ready, req, max_body, deadline, clock, &mut answer)
            .await;
        answer
    }

    async fn stream(
        &self,
        (mut send, slot, generation): (SendRequest<Bytes>, usize, u64),
        req: H2Request,
        max_body: usize,
        deadline: tokio::time::Instant,
        clock: &mut Clock,
        answer: &mut Answer,
    ) {
        answer.sent_ts = Some(now_ns());
        let end = req.body.is_empty() && req.trailers.is_none();
        let (response, mut body_tx) = match send.send_request(req.head, end) {
            Ok(x) => x,
            Err(e) => {
                answer.error = Some(self.h2_failed(e, slot, generation));
                return;
            }
        };
        // Held by `h2` until the server's window lets them out.
        let sent = match req.trailers {
            _ if end => Ok(()),
            None => body_tx.send_data(req.body, true),
            Some(t) if req.body.is_empty() => body_tx.send_trailers(t),
            Some(t) => body_tx
                .send_data(req.body, false)
                .and_then(|()| body_tx.send_trailers(t)),
        };
        if let Err(e) = sent {
            answer.error = Some(classify(&e));
            return;
        }
        let response = match clock.within(deadline, response).await {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                answer.error = Some(self.h2_failed(e, slot, generation));
                return;
            }
            None => {
                answer.error = Some((ErrorKind::Timeout, "no answer within --timeout".into()));
                return;
            }
        };
        answer.first_byte_ts = Some(now_ns());
        let (head, mut body) = response.into_parts();
        answer.status = Some(head.status.as_u16());
        answer.headers = header_list(Some(head.status.as_str()), &head.headers);
        let mut arrivals = Vec::new();
        loop {
            let until = deadline.min(tokio::time::Instant::now() + self.stream_idle);
            let chunk = match clock.within(until, body.data()).await {
                Some(Some(Ok(c))) => c,
                Some(None) => break,
                Some(Some(Err(e))) => {
                    answer.error = Some(classify(&e));
                    break;
                }
                None => {
                    answer.error = Some(stalled(deadline, self.stream_idle, ""));
                    break;
                }
            };
            let _ = body.flow_control().release_capacity(chunk.len());
            answer.body_len += chunk.len() as u64;
            let room = max_body.saturating_sub(answer.body.len());
            answer
                .body
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            // Merged like HTTP/1's: one entry per arrival time and length,
            // not one per DATA frame (a stream of tiny frames past
            // --max-body would grow it to millions).
            crate::proto::events::note_arrival(&mut arrivals, answer.body.len() as u64, now_ns());
            if answer.body_len > HARD_BODY_CAP {
                answer.error = Some((
                    ErrorKind::OversizeBody,
                    format!("body over {HARD_BODY_CAP} bytes"),
                ));
                break;
            }
        }
        if answer.error.is_none() {
            match clock.within(deadline, body.trailers()).await {
                Some(Ok(Some(t))) => answer.trailers = header_list(None, &t),
                Some(Ok(None)) => {}
                Some(Err(e)) => answer.error = Some(classify(&e)),
                None => {
                    answer.error = Some((ErrorKind::Timeout, "no trailers within --timeout".into()))
                }
            }
        }
        answer.truncated = answer.body_len > answer.body.len() as u64;
        answer.done_ts = Some(now_ns());
        stream_timing(answer, &arrivals);
    }
}

/// Header fields as captured rows hold them: `:status` first, as sent.
fn header_list(status: Option<&str>, map: &http::HeaderMap) -> HeaderList {
    let mut out = HeaderList::with_capacity(map.len() + 1, 64 * (map.len() + 1));
    if let Some(s) = status {
        out.push(b":status", s.as_bytes());
    }
    for (n, v) in map {
        out.push(n.as_str().as_bytes(), v.as_bytes());
    }
    out
}
