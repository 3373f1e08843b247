//! One TCP connection seen as HTTP: two framers (one per direction) and the
//! pairing of requests with responses, in order, into [`Exchange`]s.

use std::net::SocketAddr;

use super::h2::{H2Conn, H2Counters};
use super::pairing::Pairing;
use crate::proto::http1::{
    looks_like_request_line, looks_like_status_line, memchr, request_framing, response_framing,
    End, Framing, Head, Looks, MessageParser, Role, Sink, StartLine,
};
use crate::schema::{Exchange, HeaderList, IncompleteReason};
use crate::text::latin1;

/// Bytes a direction may skip looking for HTTP before the connection is
/// declared non-HTTP (when it was picked up mid-stream).
const SNIFF_LIMIT: u64 = 64 * 1024;

/// A partial head or frame past the memory cap is dropped only above this
/// size (see `HttpFlow::settle`).
const SHED_MIN: usize = 16 * 1024;

/// Memory shared by all connections: what is held, and the cap.
#[derive(Debug)]
pub struct Budget {
    pub held: usize,
    pub max: usize,
    /// Bodies cut short because the total cap was reached.
    pub memory_truncated: u64,
    /// Partial heads, HTTP/2 frames and header blocks (with that direction's
    /// HPACK table) dropped because the total cap was reached.
    pub memory_dropped_buffers: u64,
    /// Interim (1xx) answers past [`MAX_INTERIM`] of one exchange, whose
    /// statuses were not kept.
    pub interim_dropped: u64,
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

/// The sink the framers report to: pairing plus the shared memory budget.
struct Ctx<'a> {
    p: &'a mut Pairing,
    budget: &'a mut Budget,
}

pub(super) fn append(
    body: &mut Vec<u8>,
    truncated: &mut bool,
    data: &[u8],
    max: usize,
    budget: &mut Budget,
    cut: &mut bool,
) {
    // A body cut once (at the memory cap or at --max-body) stays cut:
    // bytes stored after room freed up would close the cut silently, the
    // stored body no longer a prefix of the real one. (After a hole in the
    // stream the bytes that follow are kept, and the exchange says so.)
    if *cut {
        return;
    }
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
        *cut = true;
    }
    body.extend_from_slice(&data[..take]);
    budget.held += take;
}

/// What one arrival time costs (see [`note_response_arrival`]).
const ARRIVAL_BYTES: usize = std::mem::size_of::<(u64, i64)>();

/// Note when the response body reached its stored length, charging a new
/// entry to the budget: every response keeps one a packet until it ends
/// (about 1% of a download's bytes; as much again as the bytes of an LLM
/// token stream of one small event a packet). Past the cap the body is cut
/// first, and a cut body adds no entries, so each open response passes the
/// cap by one entry at most.
pub(super) fn note_response_arrival(ex: &mut Exchange, ts: i64, budget: &mut Budget) {
    let stored = ex.response_body.len() as u64;
    // Nothing stored yet (a body cut at its first packet): no time to keep.
    if stored == 0 {
        return;
    }
    if crate::proto::events::note_arrival(&mut ex.response_arrivals, stored, ts) {
        budget.held += ARRIVAL_BYTES;
        ex.arrivals_charged += ARRIVAL_BYTES;
    }
}

/// Interim (1xx) answers kept per exchange: a server may send any number,
/// and a hostile one could grow the list without end.
const MAX_INTERIM: usize = 32;

/// Keep an interim answer's status, up to [`MAX_INTERIM`] (the first ones;
/// the final answer is what replay and diff use); the others are counted.
pub(super) fn note_interim(ex: &mut Exchange, status: u16, budget: &mut Budget) {
    if ex.interim_statuses.len() < MAX_INTERIM {
        ex.interim_statuses.push(status);
    } else {
        budget.interim_dropped += 1;
    }
}

impl Sink for Ctx<'_> {
    fn head(&mut self, role: Role, head: Head, ts: i64, offset: u64) -> Framing {
        match role {
            Role::Request => request_head(self.p, head, ts, offset),
            Role::Response => response_head(self.p, head, ts, offset, self.budget),
        }
    }

    fn body(&mut self, role: Role, data: &[u8], ts: i64) {
        let max = self.p.limits.max_body;
        let Some(ex) = self.p.active(role == Role::Request) else {
            return;
        };
        let [request_cut, response_cut] = &mut ex.bodies_cut;
        let (body, len, truncated, cut) = match role {
            Role::Request => (
                &mut ex.request_body,
                &mut ex.request_body_len,
                &mut ex.request_body_truncated,
                request_cut,
            ),
            Role::Response => (
                &mut ex.response_body,
                &mut ex.response_body_len,
                &mut ex.response_body_truncated,
                response_cut,
            ),
        };
        *len += data.len() as u64;
        append(body, truncated, data, max, self.budget, cut);
        if role == Role::Response {
            note_response_arrival(ex, ts, self.budget);
        }
    }

    fn body_gap(&mut self, role: Role, len: u64) {
        let Some(ex) = self.p.active(role == Role::Request) else {
            return;
        };
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
        if let Some(ex) = self.p.active(role == Role::Request) {
            match role {
                Role::Request => ex.request_trailers = trailers,
                Role::Response => ex.response_trailers = trailers,
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
            Role::Request => self
                .p
                .end_request(ts, reason(RequestGap, RequestMalformed, RequestCut)),
            Role::Response => self
                .p
                .end_response(ts, reason(ResponseGap, ResponseMalformed, ResponseCut)),
        }
        self.p.emit_ready(self.budget);
    }

    fn problem(&mut self, role: Role, detail: String) {
        let reason = match role {
            Role::Request => IncompleteReason::RequestMalformed,
            Role::Response => IncompleteReason::ResponseMalformed,
        };
        match self.p.active(role == Role::Request) {
            Some(ex) => {
                ex.incomplete.get_or_insert(reason);
                ex.malformed_detail.get_or_insert(detail);
            }
            // Between messages: what should have been the next response.
            None if role == Role::Response => self.p.unreadable_response(detail),
            None => {}
        }
    }

    fn lost(&mut self, role: Role, offset: u64, certain: bool) {
        match role {
            Role::Request => self.p.lost_requests(offset, certain),
            Role::Response => self.p.lost_responses(offset, certain),
        }
        self.p.emit_ready(self.budget);
    }
}

fn request_head(p: &mut Pairing, head: Head, ts: i64, start_off: u64) -> Framing {
    // A body whose framing headers a strict server would read otherwise (or
    // reject) runs to the next request line: its bytes stay in this row.
    let framing = match request_framing(&head) {
        Framing::None | Framing::Length(0) if !head.framing_unsure => Framing::None,
        _ if head.framing_unsure => Framing::UntilNextHead,
        f => f,
    };
    let StartLine::Request {
        method,
        target,
        version,
    } = head.line
    else {
        return Framing::None;
    };
    let host = head.headers.get("host").map(|h| latin1(h).into_owned());
    let ex = Exchange {
        flow_id: p.flow_id,
        client: p.client,
        server: p.server,
        request_ts: ts,
        request_end_ts: ts,
        method,
        target,
        http_version: version,
        host,
        request_headers: head.headers,
        incomplete: head
            .problem
            .is_some()
            .then_some(IncompleteReason::RequestMalformed),
        malformed_detail: head.problem,
        ..Default::default()
    };
    // No room is reserved from Content-Length: a body takes memory only as
    // its bytes arrive, so heads that announce large bodies cost nothing.
    p.push_request(ex, start_off);
    framing
}

fn response_head(p: &mut Pairing, head: Head, ts: i64, off: u64, budget: &mut Budget) -> Framing {
    let StartLine::Response {
        ref version,
        status,
        ref reason,
    } = head.line
    else {
        return Framing::None;
    };
    let interim = (100..200).contains(&status) && status != 101;
    let placed = p.response_head(ts, off, interim, budget);
    // Whether a body follows depends on the request's method (HEAD,
    // CONNECT): when that request is uncertain, so is the framing.
    let sure = placed.framing_sure && !head.framing_unsure;
    let framing_for = |method: Option<&str>| match response_framing(&head, method) {
        Framing::Length(_) | Framing::Chunked | Framing::UntilClose if !sure => {
            Framing::UntilNextHead
        }
        f if !placed.framing_sure && method == Some("HEAD") => {
            match response_framing(&head, None) {
                Framing::None => f,
                _ => Framing::UntilNextHead,
            }
        }
        f => f,
    };
    let Some(i) = placed.item else {
        // An answer to no request seen (the capture began after it was
        // sent): its method is unknown, and after a HEAD a Content-Length
        // frames nothing (RFC 9110 section 9.3.2). Its body runs to the
        // next status line, so it cannot swallow the answers after it.
        return match framing_for(None) {
            Framing::Length(_) | Framing::Chunked | Framing::UntilClose => Framing::UntilNextHead,
            f => f,
        };
    };
    let ex = &mut p.item(i).ex;
    let framing = framing_for(Some(&ex.method));
    if interim {
        note_interim(ex, status, budget);
        return framing;
    }
    ex.status = Some(status);
    ex.reason = Some(reason.clone());
    ex.response_version = Some(version.clone());
    ex.response_ts = Some(ts);
    ex.response_end_ts = Some(ts);
    ex.response_headers = head.headers;
    if let Some(problem) = head.problem {
        ex.incomplete
            .get_or_insert(IncompleteReason::ResponseMalformed);
        ex.malformed_detail.get_or_insert(problem);
    }
    if framing == Framing::Tunnel {
        ex.upgraded = true;
        let h2c = status == 101 && upgrades_to_h2c(&ex.response_headers);
        p.tunnel = true;
        p.h2c = h2c;
    }
    framing
}

/// Whether a 101 switches to HTTP/2 in cleartext (`Upgrade: h2c`).
fn upgrades_to_h2c(headers: &HeaderList) -> bool {
    headers.get_all("upgrade").any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    })
}

/// Which kind of start line comes first in `data` (looking at line starts
/// within the first few KiB), if any.
fn sniff_role(data: &[u8]) -> Option<Role> {
    // A first segment holding only the start of a line ("POST", "HTTP/1."),
    // as clients that write a request in pieces send it.
    match (
        looks_like_request_line(data, false),
        looks_like_status_line(data),
    ) {
        (Looks::NeedMore, Looks::No) if memchr(b'\n', data).is_none() => {
            return Some(Role::Request)
        }
        (Looks::No, Looks::NeedMore) => return Some(Role::Response),
        _ => {}
    }
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

/// A TCP connection parsed as HTTP.
pub struct HttpFlow {
    endpoints: [SocketAddr; 2],
    client_side: Option<usize>,
    clean_start: [Option<bool>; 2],
    parsers: [Option<MessageParser>; 2],
    pairing: Pairing,
    non_http: bool,
    /// Bytes of each direction's stream passed on so far (gaps included):
    /// the offsets TCP acknowledgements are compared with.
    fed: [u64; 2],
    /// The acknowledgement carried by each direction's latest bytes.
    last_ack: [Option<u64>; 2],
    /// The connection speaks HTTP/2 (from its start, after an h2c upgrade,
    /// or since it was picked up).
    h2: Option<Box<H2Conn>>,
    /// Roles came from the TCP handshake, not a guess.
    roles_known: bool,
    /// [`Self::buffered`] as last charged to the budget.
    charged: usize,
}

impl HttpFlow {
    pub fn new(flow_id: u64, endpoints: [SocketAddr; 2], limits: FlowLimits) -> Self {
        Self {
            endpoints,
            client_side: None,
            clean_start: [None, None],
            parsers: [None, None],
            pairing: Pairing::new(flow_id, limits),
            fed: [0, 0],
            last_ack: [None, None],
            non_http: false,
            h2: None,
            roles_known: false,
            charged: 0,
        }
    }

    /// TCP handshake told us which side is the client.
    pub fn set_client(&mut self, side: usize) {
        if self.client_side.is_none() {
            self.assign(side);
            self.roles_known = true;
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
        self.h2.is_none() && (self.non_http || self.pairing.tunnel)
    }

    pub fn has_http(&self) -> bool {
        self.heads() > 0 || self.h2.as_ref().is_some_and(|h| h.has_http())
    }

    pub fn counters(&self) -> FlowCounters {
        let mut c = self.pairing.counters;
        if let Some(h2) = &self.h2 {
            let (_, f) = h2.counters();
            c.orphan_responses += f.orphan_responses;
            c.lost_responses += f.lost_responses;
            c.lost_requests += f.lost_requests;
        }
        c
    }

    /// HTTP/2 figures, when the connection speaks it.
    pub fn h2_counters(&self) -> Option<H2Counters> {
        self.h2.as_ref().map(|h| h.counters().0)
    }

    /// Heads over the size limit, in both directions.
    pub fn oversize_heads(&self) -> u64 {
        self.parsers
            .iter()
            .flatten()
            .map(|p| p.oversize_heads)
            .sum()
    }

    /// Bytes held in partial heads (and HTTP/2 frames and tables).
    pub fn buffered(&self) -> usize {
        let h1: usize = self
            .parsers
            .iter()
            .flatten()
            .map(MessageParser::buffered)
            .sum();
        h1 + self.h2.as_ref().map_or(0, |h| h.buffered())
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
        let at = self.fed[side];
        self.parsers[side]
            .get_or_insert_with(|| MessageParser::new(role, mid_stream, at).keeping_broken_bodies())
    }

    /// Bytes of `side`'s stream, in order. `peer_ack`: the other stream's
    /// offset acknowledged by the segment that carried them (evidence for
    /// pairing: what the sender had received when it sent these bytes).
    pub fn data(
        &mut self,
        side: usize,
        data: &[u8],
        ts: i64,
        peer_ack: Option<u64>,
        budget: &mut Budget,
    ) {
        let before = self.uncharge(side, budget);
        self.feed(side, data, ts, peer_ack, budget);
        self.settle(side, before, ts, budget);
    }

    fn feed(
        &mut self,
        side: usize,
        data: &[u8],
        ts: i64,
        peer_ack: Option<u64>,
        budget: &mut Budget,
    ) {
        if let Some(h2) = &mut self.h2 {
            if self.fed[side] == 0 && self.clean_start[side] == Some(true) {
                h2.at_boundary(side);
            }
            h2.data(side, data, ts, budget);
            self.fed[side] += data.len() as u64;
            return;
        }
        if self.is_finished() {
            return;
        }
        // Not only a direction's first segment: a capture started in the
        // middle of a large DATA frame on both sides meets its first frame
        // boundary later. Until an HTTP/1 head is read, and while the
        // bytes may still be HTTP at all.
        if self.heads() == 0 && !self.is_non_http() && H2Conn::looks_like_h2(data) {
            self.start_h2(side, data, ts, budget);
            return;
        }
        if self.client_side.is_none() {
            self.sniff_roles(side, data);
        }
        self.pairing.peer_ack = peer_ack;
        self.pairing.server_seen = self.fed[1 - side];
        self.last_ack[side] = peer_ack;
        let before = self.fed[side];
        self.with_parser(side, budget, |p, ctx| p.feed(data, ts, ctx));
        self.fed[side] += data.len() as u64;
        if self.pairing.h2c {
            self.after_h2c_upgrade(side, data, before, ts, budget);
        }
        self.after_input();
    }

    /// The connection opened as HTTP/2 (prior knowledge, or picked up
    /// mid-way at a frame boundary).
    fn start_h2(&mut self, side: usize, data: &[u8], ts: i64, budget: &mut Budget) {
        let client = self.roles_known.then_some(self.client_side).flatten();
        let mut h2 = H2Conn::new(
            self.pairing.flow_id,
            self.endpoints,
            client,
            self.pairing.limits,
        );
        if self.fed[side] == 0 && self.clean_start[side] == Some(true) {
            h2.at_boundary(side);
        }
        h2.data(side, data, ts, budget);
        self.fed[side] += data.len() as u64;
        self.h2 = Some(Box::new(h2));
        // The HTTP/1 parsers that looked for a start line before are done
        // with: what they hold would stay charged to the budget.
        self.parsers
            .iter_mut()
            .flatten()
            .for_each(MessageParser::kill);
    }

    /// A 101 switched to h2c: the upgrading request becomes stream 1, and
    /// the server's bytes after the 101 are HTTP/2 frames.
    fn after_h2c_upgrade(
        &mut self,
        side: usize,
        data: &[u8],
        before: u64,
        ts: i64,
        budget: &mut Budget,
    ) {
        let Some(client) = self.client_side else {
            return;
        };
        let server = 1 - client;
        let Some(at) = self.parsers[server]
            .as_ref()
            .and_then(MessageParser::stopped_at)
        else {
            return;
        };
        self.pairing.drain(budget);
        let mut h2 = H2Conn::new(
            self.pairing.flow_id,
            self.endpoints,
            Some(client),
            self.pairing.limits,
        );
        if let Some(i) = self.pairing.done.iter().rposition(|e| e.upgraded) {
            let ex = self.pairing.done.remove(i);
            h2.upgraded_request(ex, budget);
        }
        // The server's next byte after the 101 starts its SETTINGS frame.
        h2.at_boundary(server);
        if side == server {
            let skip = at.saturating_sub(before) as usize;
            if let Some(rest) = data.get(skip..).filter(|r| !r.is_empty()) {
                h2.data(server, rest, ts, budget);
            }
        }
        self.parsers
            .iter_mut()
            .flatten()
            .for_each(MessageParser::kill);
        self.h2 = Some(Box::new(h2));
    }

    /// `len` bytes of `side`'s stream were not captured.
    pub fn gap(&mut self, side: usize, len: u64, ts: i64, budget: &mut Budget) {
        let before = self.uncharge(side, budget);
        self.lose(side, len, ts, budget);
        self.settle(side, before, ts, budget);
    }

    /// Take what the parsers hold off the budget while they are fed: a
    /// partial head or frame being completed is not counted twice against
    /// the body or headers it becomes. Returns `side`'s partial bytes.
    fn uncharge(&mut self, side: usize, budget: &mut Budget) -> usize {
        budget.held = budget.held.saturating_sub(self.charged);
        self.charged = 0;
        self.partial(side)
    }

    /// Charge what the parsers hold (partial heads and frames, header
    /// blocks, HPACK tables) to the shared budget. Per connection they are
    /// bounded (256 KiB a head, 1 MiB a frame or block), but a hundred
    /// thousand connections each holding one would pass any cap. So past
    /// the cap a direction whose partial message grew past [`SHED_MIN`]
    /// drops it, as if those bytes had not been captured: its message is
    /// marked (a gap), the parser looks for the next start, and it is
    /// counted. Smaller holdings (the tail kept while looking for a start
    /// line, a chunk-size line, an HPACK table) stay charged, not dropped:
    /// dropping them would lose messages on every segment for little.
    fn settle(&mut self, side: usize, before: usize, ts: i64, budget: &mut Budget) {
        self.recharge(budget);
        let partial = self.partial(side);
        if budget.held > budget.max && partial > SHED_MIN && partial > before {
            budget.memory_dropped_buffers += 1;
            self.lose(side, 0, ts, budget);
            self.recharge(budget);
        }
    }

    fn recharge(&mut self, budget: &mut Budget) {
        let now = self.buffered();
        budget.held = budget.held.saturating_sub(self.charged) + now;
        self.charged = now;
    }

    /// Bytes of a partial message `side` holds.
    fn partial(&self, side: usize) -> usize {
        match &self.h2 {
            Some(h2) => h2.partial(side),
            None => self.parsers[side]
                .as_ref()
                .map_or(0, MessageParser::buffered),
        }
    }

    fn lose(&mut self, side: usize, len: u64, ts: i64, budget: &mut Budget) {
        if let Some(h2) = &mut self.h2 {
            h2.gap(side, len, ts);
            self.fed[side] += len;
            return;
        }
        if self.is_finished() || self.client_side.is_none() {
            self.fed[side] += len;
            return;
        }
        // A head cut by the loss is reported now: with the acknowledgement
        // of the last bytes it had.
        self.pairing.peer_ack = self.last_ack[side];
        self.pairing.server_seen = self.fed[1 - side];
        self.with_parser(side, budget, |p, ctx| p.gap(len, ts, ctx));
        self.fed[side] += len;
        if Some(side) != self.client_side {
            self.pairing.lost_until(self.fed[side]);
        }
        self.after_input();
    }

    /// `side`'s stream ended with its sender's FIN.
    pub fn end(&mut self, side: usize, ts: i64, budget: &mut Budget) {
        self.end_as(side, ts, true, budget);
    }

    /// `side`'s stream ended: `closed` by its sender (FIN), or not (a
    /// reset, the end of the capture, idle expiry, eviction), which cuts a
    /// body that runs to the close.
    pub fn end_as(&mut self, side: usize, ts: i64, closed: bool, budget: &mut Budget) {
        if self.h2.is_some() {
            // Streams still open are cut when the connection is finished.
            return;
        }
        if self.client_side.is_none() || self.parsers[side].is_none() {
            return;
        }
        self.with_parser(side, budget, |p, ctx| p.finish(ts, closed, ctx));
        self.recharge(budget);
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
                    // A direction still open here was not closed by its
                    // sender (it was reset, evicted, or the capture ended).
                    p.finish(
                        ts,
                        false,
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
        if let Some(h2) = &mut self.h2 {
            h2.finish(ts, budget);
        }
        self.recharge(budget);
    }

    /// Exchanges completed since the last call.
    pub fn take_done(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.pairing.done);
        if let Some(h2) = &mut self.h2 {
            h2.take_done(out);
        }
    }
}
