//! One TCP connection seen as HTTP: two framers (one per direction) and the
//! pairing of requests with responses, in order, into [`Exchange`]s.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::http::{
    looks_like_request_line, looks_like_status_line, memchr, request_framing, response_framing,
    End, Framing, Head, Looks, MessageParser, Role, Sink, StartLine,
};
use crate::schema::{Exchange, HeaderList, IncompleteReason};
use crate::text::latin1;

/// Bytes a direction may skip looking for HTTP before the connection is
/// declared non-HTTP (when it was picked up mid-stream).
const SNIFF_LIMIT: u64 = 64 * 1024;

/// Memory shared by all connections: what is held, and the cap.
#[derive(Debug)]
pub struct Budget {
    pub held: usize,
    pub max: usize,
    /// Bodies cut short because the total cap was reached.
    pub memory_truncated: u64,
}

/// Per-connection limits.
#[derive(Clone, Copy, Debug)]
pub struct FlowLimits {
    /// Stored body bytes per message.
    pub max_body: usize,
    /// Requests waiting for responses; beyond it the oldest gives up.
    pub max_pending: usize,
}

/// Counters a flow adds to the run's statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowCounters {
    pub orphan_responses: u64,
    pub lost_responses: u64,
    pub lost_requests: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resp {
    Waiting,
    Receiving,
    Done,
}

struct Pending {
    ex: Exchange,
    req_done: bool,
    resp: Resp,
    /// Where the request starts in the client's stream.
    start_off: u64,
    /// Stands for a request lost in a gap, so that its response (if seen,
    /// or lost too) does not pair with the next request. Never written.
    phantom: bool,
}

/// Pairs requests with responses in order.
struct Pairing {
    flow_id: u64,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
    queue: VecDeque<Pending>,
    /// Index in `queue` of the first exchange still waiting for its response.
    awaiting: usize,
    /// Index of the exchange receiving response bytes, if any.
    resp_active: Option<usize>,
    /// Whether the newest request is still receiving bytes.
    req_open: bool,
    next_seq: u32,
    /// Responses lost before any request they could answer was seen.
    lost_unpaired: u32,
    /// Client-stream offset the server had acknowledged when it sent the
    /// bytes being parsed (from TCP), if known.
    peer_ack: Option<u64>,
    tunnel: bool,
    done: Vec<Exchange>,
    counters: FlowCounters,
    limits: FlowLimits,
}

/// The sink the framers report to: pairing plus the shared memory budget.
struct Ctx<'a> {
    p: &'a mut Pairing,
    budget: &'a mut Budget,
}

fn append(body: &mut Vec<u8>, truncated: &mut bool, data: &[u8], max: usize, budget: &mut Budget) {
    let room = max.saturating_sub(body.len());
    let mut take = data.len().min(room);
    if budget.held + take > budget.max {
        take = budget.max.saturating_sub(budget.held).min(take);
        if !*truncated {
            budget.memory_truncated += 1;
        }
    }
    if take < data.len() {
        *truncated = true;
    }
    body.extend_from_slice(&data[..take]);
    budget.held += take;
}

impl Sink for Ctx<'_> {
    fn head(&mut self, role: Role, head: Head, ts: i64, offset: u64) -> Framing {
        match role {
            Role::Request => self.p.request_head(head, ts, offset),
            Role::Response => self.p.response_head(head, ts),
        }
    }

    fn body(&mut self, role: Role, data: &[u8]) {
        let max = self.p.limits.max_body;
        let Some(p) = self.p.active(role) else { return };
        let ex = &mut p.ex;
        match role {
            Role::Request => {
                ex.request_body_len += data.len() as u64;
                append(
                    &mut ex.request_body,
                    &mut ex.request_body_truncated,
                    data,
                    max,
                    self.budget,
                );
            }
            Role::Response => {
                ex.response_body_len += data.len() as u64;
                append(
                    &mut ex.response_body,
                    &mut ex.response_body_truncated,
                    data,
                    max,
                    self.budget,
                );
            }
        }
    }

    fn body_gap(&mut self, role: Role, len: u64) {
        let Some(p) = self.p.active(role) else { return };
        let ex = &mut p.ex;
        match role {
            Role::Request => {
                ex.request_body_len += len;
                ex.request_body_truncated = true;
                ex.incomplete.get_or_insert(IncompleteReason::RequestGap);
            }
            Role::Response => {
                ex.response_body_len += len;
                ex.response_body_truncated = true;
                ex.incomplete.get_or_insert(IncompleteReason::ResponseGap);
            }
        }
    }

    fn trailers(&mut self, role: Role, trailers: HeaderList) {
        if let Some(p) = self.p.active(role) {
            match role {
                Role::Request => p.ex.request_trailers = trailers,
                Role::Response => p.ex.response_trailers = trailers,
            }
        }
    }

    fn end(&mut self, role: Role, ts: i64, how: End) {
        use IncompleteReason::*;
        let reason = |gap, malformed, cut| match how {
            End::Complete => None,
            End::Gap => Some(gap),
            End::Malformed => Some(malformed),
            End::Cut => Some(cut),
        };
        match role {
            Role::Request => {
                if !self.p.req_open {
                    return;
                }
                self.p.req_open = false;
                if let Some(p) = self.p.queue.back_mut() {
                    p.req_done = true;
                    p.ex.request_end_ts = ts;
                    if let Some(r) = reason(RequestGap, RequestMalformed, RequestCut) {
                        p.ex.incomplete.get_or_insert(r);
                    }
                }
            }
            Role::Response => {
                let Some(i) = self.p.resp_active.take() else {
                    return;
                };
                let p = &mut self.p.queue[i];
                p.resp = Resp::Done;
                p.ex.response_end_ts = Some(ts);
                if let Some(r) = reason(ResponseGap, ResponseMalformed, ResponseCut) {
                    p.ex.incomplete.get_or_insert(r);
                }
            }
        }
        self.p.emit_ready(self.budget);
    }

    fn lost(&mut self, role: Role) {
        match role {
            Role::Request => {
                self.p.counters.lost_requests += 1;
                if self.p.lost_unpaired > 0 {
                    // Its response was already lost too: the pair is gone.
                    self.p.lost_unpaired -= 1;
                } else if !self.p.req_open {
                    self.p.queue.push_back(Pending {
                        ex: Exchange {
                            request_ts: i64::MIN,
                            ..Default::default()
                        },
                        req_done: true,
                        resp: Resp::Waiting,
                        start_off: 0,
                        phantom: true,
                    });
                }
            }
            Role::Response => {
                // The response for the oldest waiting request was never seen
                // whole: give up on it so later responses pair correctly.
                if self.p.resp_active.is_none() && self.p.awaiting < self.p.queue.len() {
                    let p = &mut self.p.queue[self.p.awaiting];
                    p.resp = Resp::Done;
                    p.ex.incomplete.get_or_insert(IncompleteReason::ResponseGap);
                    self.p.awaiting += 1;
                    self.p.counters.lost_responses += 1;
                    self.p.emit_ready(self.budget);
                } else if self.p.awaiting >= self.p.queue.len() {
                    // No request seen to answer: it was lost too, and its gap
                    // has not been noticed yet.
                    self.p.lost_unpaired += 1;
                }
            }
        }
    }
}

impl Pairing {
    fn active(&mut self, role: Role) -> Option<&mut Pending> {
        match role {
            Role::Request if self.req_open => self.queue.back_mut(),
            Role::Request => None,
            Role::Response => self.resp_active.map(|i| &mut self.queue[i]),
        }
    }

    fn request_head(&mut self, head: Head, ts: i64, start_off: u64) -> Framing {
        let framing = request_framing(&head);
        let StartLine::Request {
            method,
            target,
            version,
        } = head.line
        else {
            return Framing::None;
        };
        let host = head.headers.get("host").map(|h| latin1(h).into_owned());
        let mut ex = Exchange {
            flow_id: self.flow_id,
            seq_in_flow: self.next_seq,
            client: self.client,
            server: self.server,
            request_ts: ts,
            request_end_ts: ts,
            method,
            target,
            http_version: version,
            host,
            request_headers: head.headers,
            ..Default::default()
        };
        // Sized once from the framing: no regrowth copies for large bodies.
        ex.request_body
            .reserve(body_hint(framing, self.limits.max_body));
        self.next_seq += 1;
        self.queue.push_back(Pending {
            ex,
            req_done: false,
            resp: Resp::Waiting,
            start_off,
            phantom: false,
        });
        self.req_open = true;
        framing
    }

    fn response_head(&mut self, head: Head, ts: i64) -> Framing {
        let StartLine::Response {
            ref version,
            status,
            ref reason,
        } = head.line
        else {
            return Framing::None;
        };
        // A response cannot answer a request sent after it, nor one whose
        // first byte the server had not acknowledged when it answered.
        let peer_ack = self.peer_ack;
        let waiting = self.queue.get(self.awaiting).filter(|p| {
            p.ex.request_ts <= ts && peer_ack.is_none_or(|a| p.phantom || p.start_off < a)
        });
        let Some(waiting) = waiting else {
            // No request to answer (or only later ones): a response whose
            // request was not captured.
            if !(100..200).contains(&status) {
                self.counters.orphan_responses += 1;
            }
            return response_framing(&head, None);
        };
        let method = waiting.ex.method.clone();
        let framing = response_framing(&head, Some(&method));
        if (100..200).contains(&status) && status != 101 {
            self.queue[self.awaiting].ex.interim_statuses.push(status);
            return framing;
        }
        let i = self.awaiting;
        let ex = &mut self.queue[i].ex;
        ex.status = Some(status);
        ex.reason = Some(reason.clone());
        ex.response_version = Some(version.clone());
        ex.response_ts = Some(ts);
        ex.response_end_ts = Some(ts);
        if framing == Framing::Tunnel {
            ex.upgraded = true;
            self.tunnel = true;
        }
        ex.response_headers = head.headers;
        ex.response_body
            .reserve(body_hint(framing, self.limits.max_body));
        self.queue[i].resp = Resp::Receiving;
        self.resp_active = Some(i);
        self.awaiting += 1;
        framing
    }

    /// Move finished exchanges at the front of the queue to `done`.
    fn emit_ready(&mut self, budget: &mut Budget) {
        while self.queue.len() > self.limits.max_pending && self.awaiting == 0 {
            // Too many unanswered requests: the oldest is given up as unanswered.
            self.queue[0].resp = Resp::Done;
            self.queue[0].req_done = true;
            self.awaiting = 1;
            self.counters.lost_responses += 1;
        }
        while let Some(front) = self.queue.front() {
            if !(front.req_done && front.resp == Resp::Done) {
                break;
            }
            let p = self.queue.pop_front().expect("front exists");
            self.awaiting = self.awaiting.saturating_sub(1);
            self.resp_active = self.resp_active.map(|i| i - 1);
            self.release(p, budget);
        }
    }

    fn release(&mut self, p: Pending, budget: &mut Budget) {
        let ex = p.ex;
        budget.held = budget
            .held
            .saturating_sub(ex.request_body.len() + ex.response_body.len());
        if p.phantom {
            self.counters.orphan_responses += u64::from(ex.status.is_some());
        } else {
            self.done.push(ex);
        }
    }

    /// Emit everything still queued (the connection is over).
    fn drain(&mut self, budget: &mut Budget) {
        while let Some(mut p) = self.queue.pop_front() {
            if !p.req_done {
                p.ex.incomplete.get_or_insert(IncompleteReason::RequestCut);
            }
            if p.resp == Resp::Receiving {
                p.ex.incomplete.get_or_insert(IncompleteReason::ResponseCut);
            }
            self.release(p, budget);
        }
        self.awaiting = 0;
        self.resp_active = None;
        self.req_open = false;
    }
}

/// Which kind of start line comes first in `data` (looking at line starts
/// within the first few KiB), if any.
fn sniff_role(data: &[u8]) -> Option<Role> {
    let window = &data[..data.len().min(4096)];
    let mut at = 0;
    while at < window.len() {
        let rest = &window[at..];
        if looks_like_status_line(rest) == Looks::Yes {
            return Some(Role::Response);
        }
        if looks_like_request_line(rest, false) == Looks::Yes {
            return Some(Role::Request);
        }
        at += memchr(b'\n', rest)? + 1;
    }
    None
}

/// Bytes to reserve for a body: its declared length, within the cap (and
/// within 16 MiB, so a lying Content-Length cannot reserve gigabytes).
fn body_hint(framing: Framing, max_body: usize) -> usize {
    match framing {
        Framing::Length(n) => (n as usize).min(max_body).min(16 << 20),
        _ => 0,
    }
}

/// A TCP connection parsed as HTTP.
pub struct HttpFlow {
    endpoints: [SocketAddr; 2],
    client_side: Option<usize>,
    clean_start: [Option<bool>; 2],
    parsers: [Option<MessageParser>; 2],
    pairing: Pairing,
    non_http: bool,
}

impl HttpFlow {
    pub fn new(flow_id: u64, endpoints: [SocketAddr; 2], limits: FlowLimits) -> Self {
        Self {
            endpoints,
            client_side: None,
            clean_start: [None, None],
            parsers: [None, None],
            pairing: Pairing {
                flow_id,
                client: None,
                server: None,
                queue: VecDeque::new(),
                awaiting: 0,
                resp_active: None,
                req_open: false,
                next_seq: 0,
                lost_unpaired: 0,
                peer_ack: None,
                tunnel: false,
                done: Vec::new(),
                counters: FlowCounters::default(),
                limits,
            },
            non_http: false,
        }
    }

    /// TCP handshake told us which side is the client.
    pub fn set_client(&mut self, side: usize) {
        if self.client_side.is_none() {
            self.assign(side);
        }
    }

    /// Whether `side`'s stream starts at its beginning (SYN seen) or mid-way.
    pub fn set_clean_start(&mut self, side: usize, clean: bool) {
        if self.clean_start[side].is_none() {
            self.clean_start[side] = Some(clean);
        }
    }

    pub fn is_non_http(&self) -> bool {
        self.non_http
    }

    /// Whether the connection carries no more HTTP (non-HTTP or upgraded).
    pub fn is_finished(&self) -> bool {
        self.non_http || self.pairing.tunnel
    }

    pub fn has_http(&self) -> bool {
        self.heads() > 0
    }

    pub fn counters(&self) -> FlowCounters {
        self.pairing.counters
    }

    /// Bytes held in partial heads.
    pub fn buffered(&self) -> usize {
        self.parsers
            .iter()
            .flatten()
            .map(MessageParser::buffered)
            .sum()
    }

    fn heads(&self) -> u64 {
        self.parsers.iter().flatten().map(|p| p.heads).sum()
    }

    fn assign(&mut self, client: usize) {
        self.client_side = Some(client);
        self.pairing.client = Some(self.endpoints[client]);
        self.pairing.server = Some(self.endpoints[1 - client]);
    }

    /// Decide roles from the first bytes of `side` when the handshake did not:
    /// the first line that is a strict start line tells, else the ports do.
    fn sniff_roles(&mut self, side: usize, data: &[u8]) {
        let other = 1 - side;
        let client = match sniff_role(data) {
            Some(Role::Request) => side,
            Some(Role::Response) => other,
            // Ephemeral (higher) ports are usually clients.
            None if self.endpoints[side].port() >= self.endpoints[other].port() => side,
            None => other,
        };
        self.assign(client);
    }

    fn parser(&mut self, side: usize) -> &mut MessageParser {
        let role = if Some(side) == self.client_side {
            Role::Request
        } else {
            Role::Response
        };
        let mid_stream = !self.clean_start[side].unwrap_or(false);
        self.parsers[side].get_or_insert_with(|| MessageParser::new(role, mid_stream))
    }

    /// Bytes of `side`'s stream, in order. `peer_ack`: the other stream's
    /// offset acknowledged by the segment that carried them.
    pub fn data(
        &mut self,
        side: usize,
        data: &[u8],
        ts: i64,
        peer_ack: Option<u64>,
        budget: &mut Budget,
    ) {
        if self.is_finished() {
            return;
        }
        self.pairing.peer_ack = peer_ack.filter(|_| Some(side) != self.client_side);
        if self.client_side.is_none() {
            self.sniff_roles(side, data);
        }
        self.with_parser(side, budget, |p, ctx| p.feed(data, ts, ctx));
        self.after_input();
    }

    /// `len` bytes of `side`'s stream were not captured.
    pub fn gap(&mut self, side: usize, len: u64, ts: i64, budget: &mut Budget) {
        if self.is_finished() || self.client_side.is_none() {
            return;
        }
        self.with_parser(side, budget, |p, ctx| p.gap(len, ts, ctx));
        self.after_input();
    }

    /// `side`'s stream ended.
    pub fn end(&mut self, side: usize, ts: i64, budget: &mut Budget) {
        if self.client_side.is_none() || self.parsers[side].is_none() {
            return;
        }
        self.with_parser(side, budget, |p, ctx| p.finish(ts, ctx));
    }

    fn with_parser(
        &mut self,
        side: usize,
        budget: &mut Budget,
        f: impl FnOnce(&mut MessageParser, &mut Ctx<'_>),
    ) {
        self.parser(side);
        let mut parser = self.parsers[side].take().expect("created above");
        f(
            &mut parser,
            &mut Ctx {
                p: &mut self.pairing,
                budget,
            },
        );
        self.parsers[side] = Some(parser);
    }

    fn after_input(&mut self) {
        if self.pairing.tunnel {
            self.parsers
                .iter_mut()
                .flatten()
                .for_each(MessageParser::kill);
            return;
        }
        if self.heads() > 0 {
            return;
        }
        let clean_failure = self.parsers.iter().enumerate().any(|(side, p)| {
            p.as_ref()
                .is_some_and(|p| p.malformed > 0 && self.clean_start[side] == Some(true))
        });
        let sniffed_enough = self
            .parsers
            .iter()
            .flatten()
            .any(|p| p.skipped_bytes > SNIFF_LIMIT);
        if clean_failure || sniffed_enough {
            self.non_http = true;
            self.parsers
                .iter_mut()
                .flatten()
                .for_each(MessageParser::kill);
        }
    }

    /// The connection is over: end both directions and emit what is left.
    pub fn finish(&mut self, ts: i64, budget: &mut Budget) {
        if let Some(client) = self.client_side {
            // Requests first, so a response cut by the end can still pair.
            for side in [client, 1 - client] {
                if let Some(mut p) = self.parsers[side].take() {
                    p.finish(
                        ts,
                        &mut Ctx {
                            p: &mut self.pairing,
                            budget,
                        },
                    );
                    self.parsers[side] = Some(p);
                }
            }
        }
        self.pairing.drain(budget);
    }

    /// Exchanges completed since the last call.
    pub fn take_done(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.pairing.done);
    }
}
