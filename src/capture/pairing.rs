//! Which response answers which request on one connection.
//!
//! HTTP/1 answers requests in order, so while nothing is lost responses pair
//! in order and the pairing is exact ("in sync"). A loss that may hide whole
//! messages (a gap at or across a message boundary, in either direction)
//! breaks the count. From then on a response is attributed to a request only
//! on evidence, and written flagged `pairing_uncertain` otherwise: a wrong
//! pair marked complete would make `diff` blame the shadow for what the
//! capture did. The evidence rules are described in docs/architecture.md
//! ("Pairing after loss"); in short:
//!
//! - a response cannot answer a request the server had not received when it
//!   sent it (its TCP acknowledgement of the client's stream, `A`), nor one
//!   sent after it was captured;
//! - a loss that hit a message boundary of the response stream hid at least
//!   one response, so the oldest unanswered requests were answered there;
//! - with one candidate left the pairing is certain, and back in sync;
//! - on a connection never seen pipelining, the response answers the newest
//!   request the server had received (`A`), when the client's own
//!   acknowledgement shows it sent that request after every earlier answer
//!   had reached it, and the server's stream between the last certain pair
//!   and that moment holds room (seen responses or lost bytes) for an answer
//!   to every request in between.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::flow::{Budget, FlowCounters, FlowLimits};
use crate::schema::{Exchange, IncompleteReason};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resp {
    Waiting,
    Receiving,
    Done,
}

/// What stands in the request order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Seen,
    /// Requests lost in a client-side gap: at least `min` of them (0 when
    /// the gap may have held none). Never written.
    Lost {
        min: u8,
    },
}

/// How a response came to be attached to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    None,
    Certain,
    Uncertain,
}

pub(super) struct Item {
    pub ex: Exchange,
    pub req_done: bool,
    pub resp: Resp,
    kind: Kind,
    attach: Attach,
    /// Its fate is decided: no later response can be attributed to it.
    settled: bool,
    /// Where the request starts in the client's stream.
    start_off: u64,
    /// Offset of the server's stream the client had acknowledged when it
    /// sent the request (TCP), if known.
    client_ack: Option<u64>,
}

/// Pairs requests with responses on one connection.
pub(super) struct Pairing {
    pub flow_id: u64,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    queue: VecDeque<Item>,
    /// In sync: index of the next request to be answered.
    next: usize,
    /// Index of the item receiving response bytes, if any.
    resp_active: Option<usize>,
    /// Whether the newest request is still receiving bytes.
    pub req_open: bool,
    next_seq: u32,
    in_sync: bool,
    /// The client was seen sending a request before the previous answer
    /// was complete: the newest-request rule does not hold for it.
    pipelined: bool,
    /// Requests seen, in sync, sent only once every earlier answer was
    /// complete: the evidence that the client waits for answers.
    waited: u32,
    /// Since the pairing left sync: responses known to have started in lost
    /// bytes, plus final responses seen.
    answers_since: usize,
    /// Final response heads seen since the last certain pair (bounded;
    /// `heads_overflow` when cut).
    heads_since: Vec<HeadSeen>,
    heads_overflow: bool,
    /// Server-stream ranges lost since the last certain pair (bounded too).
    gaps_since: Vec<(u64, u64)>,
    /// The client's acknowledgement with its newest request, when no lost
    /// request came after it: an equal one with the next request means it
    /// sent both without receiving anything between, so it pipelines.
    last_request_ack: Option<u64>,
    /// Likewise for the server: two answers in a row sent with the same
    /// acknowledgement mean it had both requests before answering the
    /// first, so the client pipelines.
    last_response_ack: Option<u64>,
    /// Bytes of the server's stream passed on so far (losses included).
    pub server_seen: u64,
    /// A final answer was seen since the newest request.
    answered_since_request: bool,
    /// Acknowledgement carried by the segment being parsed: the peer's
    /// stream offset (client's for responses, server's for requests).
    pub peer_ack: Option<u64>,
    pub tunnel: bool,
    /// The tunnel is HTTP/2 (101 with `Upgrade: h2c`).
    pub h2c: bool,
    pub done: Vec<Exchange>,
    pub counters: FlowCounters,
    pub limits: FlowLimits,
}

/// Requests seen waiting for the previous answer before the newest-request
/// rule applies.
const MIN_WAITED: u32 = 2;

/// Response heads remembered while out of sync.
const MAX_HEADS_SINCE: usize = 1024;

/// A final response head seen out of sync.
#[derive(Clone, Copy)]
struct HeadSeen {
    /// Where it starts in the server's stream.
    off: u64,
    /// The client's stream the server had received when it sent it.
    ack: Option<u64>,
}

/// Where a response goes.
enum Choice {
    Item(usize, Attach),
    /// Answers a request that was not captured (lost, or before the capture).
    Orphan,
}

/// Where a response went, and whether its framing can be trusted: a body's
/// presence depends on the request's method (HEAD, CONNECT), unknown when
/// the request is.
pub(super) struct Placed {
    pub item: Option<usize>,
    pub framing_sure: bool,
}

impl Pairing {
    pub fn new(flow_id: u64, limits: FlowLimits) -> Self {
        Self {
            flow_id,
            client: None,
            server: None,
            queue: VecDeque::new(),
            next: 0,
            resp_active: None,
            req_open: false,
            next_seq: 0,
            in_sync: true,
            pipelined: false,
            waited: 0,
            answers_since: 0,
            heads_since: Vec::new(),
            heads_overflow: false,
            gaps_since: Vec::new(),
            last_request_ack: None,
            last_response_ack: None,
            server_seen: 0,
            answered_since_request: false,
            peer_ack: None,
            tunnel: false,
            h2c: false,
            done: Vec::new(),
            counters: FlowCounters::default(),
            limits,
        }
    }

    /// The exchange receiving bytes of `request` (true) or response.
    pub fn active(&mut self, request: bool) -> Option<&mut Exchange> {
        if request {
            return if self.req_open {
                self.queue.back_mut().map(|p| &mut p.ex)
            } else {
                None
            };
        }
        self.resp_active.map(|i| &mut self.queue[i].ex)
    }

    /// A request head was parsed.
    pub fn push_request(&mut self, ex: Exchange, start_off: u64) {
        // In sync, an answer still owed when the next request arrives means
        // the client pipelines.
        if self.in_sync && (self.next < self.queue.len() || self.resp_active.is_some()) {
            self.pipelined = true;
        } else if self.answered_since_request
            && self.peer_ack.is_some_and(|a| a >= self.server_seen)
        {
            // An answer came, and the client had every byte the server sent
            // when it sent this request: it waited.
            self.waited += 1;
        }
        self.answered_since_request = false;
        if self.peer_ack.is_some() && self.last_request_ack == self.peer_ack {
            self.pipelined = true;
        }
        self.last_request_ack = self.peer_ack;
        let mut ex = ex;
        ex.seq_in_flow = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Item {
            ex,
            req_done: false,
            resp: Resp::Waiting,
            kind: Kind::Seen,
            attach: Attach::None,
            settled: false,
            start_off,
            client_ack: self.peer_ack,
        });
        self.req_open = true;
    }

    /// The newest request ended.
    pub fn end_request(&mut self, ts: i64, reason: Option<IncompleteReason>) {
        if !self.req_open {
            return;
        }
        self.req_open = false;
        if let Some(p) = self.queue.back_mut() {
            p.req_done = true;
            p.ex.request_end_ts = ts;
            if let Some(r) = reason {
                p.ex.incomplete.get_or_insert(r);
            }
        }
    }

    /// Bytes of the client's stream from `offset` on were lost where a
    /// request could start: `certain` when a request start surely was.
    pub fn lost_requests(&mut self, offset: u64, certain: bool) {
        self.counters.lost_requests += u64::from(certain);
        self.last_request_ack = None;
        self.leave_sync();
        if self.req_open {
            return;
        }
        self.queue.push_back(Item {
            ex: Exchange::default(),
            req_done: true,
            resp: Resp::Waiting,
            kind: Kind::Lost {
                min: u8::from(certain),
            },
            attach: Attach::None,
            settled: false,
            start_off: offset,
            client_ack: None,
        });
    }

    /// Where the next response should start, the server sent something a
    /// strict reader cannot take for one. While in sync, it stands where
    /// the answer to the next request should: that request is flagged
    /// (its answer unreadable); the count of answers is then unknown.
    pub fn unreadable_response(&mut self, detail: String) {
        if !self.in_sync {
            return;
        }
        if let Some(p) = self.queue.get_mut(self.next) {
            if p.kind == Kind::Seen {
                p.ex.incomplete
                    .get_or_insert(IncompleteReason::ResponseMalformed);
                p.ex.malformed_detail.get_or_insert(detail);
            }
        }
    }

    /// Bytes of the server's stream from `offset` on were lost where a
    /// response could start: `certain` when a response start surely was.
    pub fn lost_responses(&mut self, offset: u64, certain: bool) {
        self.leave_sync();
        self.last_response_ack = None;
        if self.gaps_since.len() < MAX_HEADS_SINCE {
            self.gaps_since.push((offset, offset + 1));
        } else {
            self.heads_overflow = true;
        }
        // A lost "100 Continue" would not answer anything: only count a
        // lost answer when no request waits for one.
        let expects = self.unsettled().any(|i| {
            self.queue[i].kind == Kind::Seen
                && self.queue[i].ex.request_headers.get("expect").is_some()
        });
        if certain && !expects {
            self.answers_since += 1;
        }
    }

    fn leave_sync(&mut self) {
        if self.in_sync {
            // Every pair so far is certain: evidence starts afresh.
            self.in_sync = false;
            self.answers_since = 0;
            self.heads_since.clear();
            self.heads_overflow = false;
            self.gaps_since.clear();
        }
    }

    fn first_unsettled(&self) -> usize {
        self.queue
            .iter()
            .position(|p| !p.settled)
            .unwrap_or(self.queue.len())
    }

    fn unsettled(&self) -> std::ops::Range<usize> {
        self.first_unsettled()..self.queue.len()
    }

    /// A response head at server-stream offset `off`, captured at `ts`.
    /// Returns the method of the request it answers, if attributed.
    pub fn response_head(
        &mut self,
        ts: i64,
        off: u64,
        interim: bool,
        budget: &mut Budget,
    ) -> Placed {
        if interim {
            // Interim answers are kept only where the pairing is exact.
            let item = match self.in_order(ts) {
                Choice::Item(i, _) if self.in_sync => Some(i),
                _ => None,
            };
            return Placed {
                item,
                framing_sure: true,
            };
        }
        if self.peer_ack.is_some() && self.last_response_ack == self.peer_ack {
            self.pipelined = true;
        }
        self.answered_since_request = true;
        self.last_response_ack = self.peer_ack;
        if self
            .queue
            .get(self.next)
            .is_some_and(|p| p.kind != Kind::Seen)
        {
            self.leave_sync();
        }
        let (choice, framing_sure) = if self.in_sync {
            (self.in_order(ts), true)
        } else {
            self.on_evidence(ts, off)
        };
        let item = self.place(choice, off, budget);
        Placed { item, framing_sure }
    }

    fn place(&mut self, choice: Choice, off: u64, budget: &mut Budget) -> Option<usize> {
        match choice {
            Choice::Orphan => {
                self.counters.orphan_responses += 1;
                self.note_head(off);
                self.resp_active = None;
                None
            }
            Choice::Item(i, attach) => {
                if self.queue[i].attach == Attach::Uncertain {
                    // A better-founded answer replaces a guess.
                    detach(&mut self.queue[i].ex, budget);
                }
                if attach == Attach::Certain {
                    if !self.in_sync {
                        self.resync_at(i, budget);
                    }
                    self.next = i + 1;
                    self.queue[i].settled = true;
                } else {
                    self.note_head(off);
                }
                self.queue[i].attach = attach;
                self.open_response(i);
                Some(i)
            }
        }
    }

    fn open_response(&mut self, i: usize) {
        self.queue[i].resp = Resp::Receiving;
        self.resp_active = Some(i);
    }

    fn note_head(&mut self, off: u64) {
        if self.in_sync {
            return;
        }
        self.answers_since += 1;
        if self.heads_since.len() < MAX_HEADS_SINCE {
            self.heads_since.push(HeadSeen {
                off,
                ack: self.peer_ack,
            });
        } else {
            self.heads_overflow = true;
        }
    }

    /// Whether the server had received request `i` when it sent a response
    /// captured at `ts` acknowledging the client's stream up to `ack`.
    fn received(&self, i: usize, ts: i64) -> bool {
        let p = &self.queue[i];
        let ts_ok = p.kind != Kind::Seen || p.ex.request_ts <= ts;
        ts_ok && self.peer_ack.is_none_or(|a| p.start_off < a)
    }

    fn in_order(&mut self, ts: i64) -> Choice {
        match self.queue.get(self.next) {
            Some(p) if p.kind == Kind::Seen && self.received(self.next, ts) => {
                Choice::Item(self.next, Attach::Certain)
            }
            // A response to a request before the capture started.
            _ => Choice::Orphan,
        }
    }

    /// Out of sync: attribute a response at server offset `off` on
    /// evidence; also whether its framing is the same whichever candidate
    /// it answers.
    fn on_evidence(&mut self, ts: i64, off: u64) -> (Choice, bool) {
        let range = self.unsettled();
        let lo = self.lowest_answerable(range.clone());
        let cands: Vec<usize> = (lo..range.end).filter(|&i| self.received(i, ts)).collect();
        if cands.is_empty() {
            return (Choice::Orphan, true);
        }
        let framing_sure = self.same_framing(&cands);
        let newest = self
            .newest_received(range.clone(), ts)
            .map(|q| self.skip_empty_losses(range.start, q, off));
        if let Some(q) = newest {
            if self.queue[q].kind != Kind::Seen && !self.pipelined {
                // The server's newest request was lost: so is the pair.
                return (Choice::Orphan, framing_sure);
            }
            if q >= lo && self.newest_rule_holds(range.start, q, off) {
                return (Choice::Item(q, Attach::Certain), true);
            }
        }
        let seen: Vec<usize> = cands
            .iter()
            .copied()
            .filter(|&i| self.queue[i].kind == Kind::Seen)
            .collect();
        let choice = match seen.as_slice() {
            [] => Choice::Orphan,
            [only] if cands.len() == 1 => Choice::Item(*only, Attach::Certain),
            _ => {
                // The likelier answer: the newest request on a client that
                // waits for answers, the oldest one on a pipelining client.
                let newest = newest.filter(|q| !self.pipelined && seen.contains(q));
                Choice::Item(newest.unwrap_or(seen[0]), Attach::Uncertain)
            }
        };
        (choice, framing_sure)
    }

    /// Whether every candidate frames a response alike: no lost request
    /// (its method is unknown) and the same answer to "HEAD?" and
    /// "CONNECT?".
    fn same_framing(&self, cands: &[usize]) -> bool {
        let class = |i: usize| {
            let p = &self.queue[i];
            (p.kind == Kind::Seen).then(|| (p.ex.method == "HEAD", p.ex.method == "CONNECT"))
        };
        let first = class(cands[0]);
        first.is_some() && cands.iter().all(|&i| class(i) == first)
    }

    /// The lowest index the next response can answer: each response known
    /// to be lost or seen since the loss answered one request, in order; a
    /// run of lost requests may absorb any number of them.
    fn lowest_answerable(&self, range: std::ops::Range<usize>) -> usize {
        let mut answers = self.answers_since;
        for i in range.clone() {
            if matches!(self.queue[i].kind, Kind::Lost { .. }) || answers == 0 {
                return i;
            }
            answers -= 1;
        }
        range.end
    }

    fn newest_received(&self, range: std::ops::Range<usize>, ts: i64) -> Option<usize> {
        self.peer_ack?;
        range.rev().find(|&i| self.received(i, ts))
    }

    /// The newest-request rule for request `q` and a response at server
    /// offset `off` (see the module comment).
    fn newest_rule_holds(&self, first: usize, q: usize, off: u64) -> bool {
        // Only for a client seen waiting for answers (twice, so that the
        // first request of a pipelined burst is not taken for it).
        if self.pipelined || self.waited < MIN_WAITED || self.heads_overflow {
            return false;
        }
        if self.heads_since.windows(2).any(|w| w[0].off > w[1].off) {
            return false;
        }
        let Some(sent_after) = self.queue[q].client_ack else {
            return false;
        };
        // The client had this very response when it sent q: not q's answer.
        if sent_after > off {
            return false;
        }
        self.room_for_answers(first, q, sent_after)
    }

    /// Whether the server's stream since the last certain pair holds, before
    /// `until`, an answer for every request from `first` up to `q` (not
    /// included), in order: each answer at or after the point the client
    /// had reached when it sent that request (it cannot have been received
    /// before the request was sent), in a seen response head or lost bytes.
    fn room_for_answers(&self, first: usize, q: usize, sent_after: u64) -> bool {
        let mut cursor = 0u64;
        let mut floor = 0u64;
        let mut heads = self.heads_since.iter().map(|h| h.off).peekable();
        for j in first..q {
            let p = &self.queue[j];
            // A waiting client had the whole answer to this request before
            // it sent the next request it was seen sending.
            let until = (j + 1..q)
                .filter_map(|k| {
                    let p = &self.queue[k];
                    (p.kind == Kind::Seen).then_some(p.client_ack).flatten()
                })
                .next()
                .unwrap_or(sent_after)
                .min(sent_after);
            // A waiting client sent this request after every answer the
            // server gave before receiving it: its answer comes later.
            let answered_before = self
                .heads_since
                .iter()
                .filter(|h| h.ack.is_some_and(|a| a <= p.start_off))
                .map(|h| h.off + 1)
                .max()
                .unwrap_or(0);
            floor = floor.max(answered_before);
            let need = match p.kind {
                Kind::Seen => {
                    floor = p.client_ack.unwrap_or(floor).max(floor);
                    1
                }
                // Sent after the request before it: answered after its floor.
                Kind::Lost { min } => usize::from(min.max(self.must_hold_request(j))),
            };
            for _ in 0..need {
                let from = cursor.max(floor);
                while heads.next_if(|&h| h < from).is_some() {}
                let head = heads.peek().copied().filter(|&h| h < until);
                let gap = self
                    .gaps_since
                    .iter()
                    .filter(|&&(_, end)| end > from)
                    .map(|&(start, _)| start.max(from))
                    .filter(|&at| at < until)
                    .min();
                let at = match (head, gap) {
                    (Some(h), Some(g)) => h.min(g),
                    (Some(h), None) => h,
                    (None, Some(g)) => g,
                    (None, None) => return false,
                };
                if head == Some(at) {
                    heads.next();
                }
                cursor = at + 1;
            }
        }
        true
    }

    /// The newest request the server had received, passing over lost
    /// client bytes that need not hold one (the tail of the request before
    /// them) when, for a client that waits for answers, that request's own
    /// answer has no room before this response: then the bytes were its
    /// tail and this response is its answer.
    fn skip_empty_losses(&self, first: usize, mut q: usize, off: u64) -> usize {
        while q > first
            && matches!(self.queue[q].kind, Kind::Lost { min: 0 })
            && self.must_hold_request(q) == 0
            && self.queue[q - 1].kind == Kind::Seen
            && !self.room_for_answers(first, q, off)
        {
            q -= 1;
        }
        q
    }

    /// Whether lost client bytes at item `j` must hold a request start if
    /// the client waits for each answer: the server answered some request
    /// before it had received them (a head's acknowledgement at or before
    /// them), and no request starts between that point and them. A waiting
    /// client sends nothing after a request until its answer, so they
    /// begin a later request.
    fn must_hold_request(&self, j: usize) -> u8 {
        let at = self.queue[j].start_off;
        let starts = |from: u64| {
            self.queue
                .iter()
                .any(|p| p.start_off >= from && p.start_off < at)
        };
        u8::from(
            self.heads_since
                .iter()
                .filter_map(|h| h.ack)
                .any(|a| a <= at && !starts(a)),
        )
    }

    /// The server's stream lost bytes up to `end` in the loss last noted.
    pub fn lost_until(&mut self, end: u64) {
        if let Some(last) = self.gaps_since.last_mut() {
            last.1 = last.1.max(end);
        }
    }

    /// Response `i` is attributed with certainty: every request before it
    /// is decided, and the pairing is in sync again.
    fn resync_at(&mut self, i: usize, budget: &mut Budget) {
        let unplaced = !self.heads_since.is_empty();
        for j in self.first_unsettled()..i {
            let p = &mut self.queue[j];
            p.settled = true;
            match (p.kind, p.attach) {
                (Kind::Lost { .. }, _) => {}
                (_, Attach::Uncertain) => {
                    p.ex.incomplete
                        .get_or_insert(IncompleteReason::PairingUncertain);
                }
                _ => {
                    // Its answer was lost, or seen but not placeable.
                    p.resp = Resp::Done;
                    p.ex.incomplete.get_or_insert(if unplaced {
                        IncompleteReason::PairingUncertain
                    } else {
                        IncompleteReason::ResponseGap
                    });
                    self.counters.lost_responses += 1;
                }
            }
        }
        // Guesses for later requests were answers sent before this one:
        // wrong, since answers come in order.
        for j in i + 1..self.queue.len() {
            if self.queue[j].attach == Attach::Uncertain {
                detach(&mut self.queue[j].ex, budget);
                self.queue[j].attach = Attach::None;
                self.queue[j].resp = Resp::Waiting;
            }
        }
        // Lost requests after it keep the count of answers unknown.
        self.in_sync = !self.queue.iter().skip(i + 1).any(|p| p.kind != Kind::Seen);
        self.answers_since = 0;
        self.heads_since.clear();
        self.heads_overflow = false;
        self.gaps_since.clear();
    }

    /// The response being received ended.
    pub fn end_response(&mut self, ts: i64, reason: Option<IncompleteReason>) {
        let Some(i) = self.resp_active.take() else {
            return;
        };
        let p = &mut self.queue[i];
        p.resp = Resp::Done;
        p.ex.response_end_ts = Some(ts);
        if let Some(r) = reason {
            p.ex.incomplete.get_or_insert(r);
        }
        event_offsets(&mut p.ex, ts);
    }

    /// Move finished exchanges at the front of the queue to `done`.
    pub fn emit_ready(&mut self, budget: &mut Budget) {
        while self.queue.len() > self.limits.max_pending {
            // Too many unanswered requests: the oldest is given up, and the
            // count of answers can no longer be trusted.
            let Some(i) = self.queue.iter().position(|p| !p.settled) else {
                break;
            };
            self.give_up(i);
            self.leave_sync();
            if self.next <= i {
                self.next = i + 1;
            }
        }
        while let Some(front) = self.queue.front() {
            if !(front.settled && front.req_done && front.resp != Resp::Receiving) {
                break;
            }
            let p = self.queue.pop_front().expect("front exists");
            self.next = self.next.saturating_sub(1);
            self.resp_active = self.resp_active.map(|i| i - 1);
            self.release(p, budget);
        }
    }

    fn give_up(&mut self, i: usize) {
        let p = &mut self.queue[i];
        p.settled = true;
        p.req_done = true;
        if p.kind == Kind::Seen {
            match p.attach {
                Attach::Uncertain => {
                    p.ex.incomplete
                        .get_or_insert(IncompleteReason::PairingUncertain);
                }
                Attach::None => {
                    p.resp = Resp::Done;
                    self.counters.lost_responses += 1;
                    if !self.in_sync {
                        p.ex.incomplete.get_or_insert(IncompleteReason::ResponseGap);
                    }
                }
                Attach::Certain => {}
            }
        }
    }

    fn release(&mut self, p: Item, budget: &mut Budget) {
        let ex = p.ex;
        let charged = ex.request_body.len() + ex.response_body.len() + ex.arrivals_charged;
        debug_assert!(budget.held >= charged, "released more than was held");
        budget.held = budget.held.saturating_sub(charged);
        if p.kind == Kind::Seen {
            self.done.push(ex);
        }
    }

    /// Emit everything still queued (the connection is over).
    pub fn drain(&mut self, budget: &mut Budget) {
        let uncertain = !self.in_sync && !self.heads_since.is_empty();
        while let Some(mut p) = self.queue.pop_front() {
            if !p.req_done {
                p.ex.incomplete.get_or_insert(IncompleteReason::RequestCut);
            }
            if p.resp == Resp::Receiving {
                p.ex.incomplete.get_or_insert(IncompleteReason::ResponseCut);
            }
            if !p.settled && p.kind == Kind::Seen {
                match p.attach {
                    Attach::Uncertain => {
                        p.ex.incomplete
                            .get_or_insert(IncompleteReason::PairingUncertain);
                    }
                    Attach::None if uncertain => {
                        p.ex.incomplete
                            .get_or_insert(IncompleteReason::PairingUncertain);
                    }
                    Attach::None if !self.in_sync => {
                        p.ex.incomplete.get_or_insert(IncompleteReason::ResponseGap);
                    }
                    _ => {}
                }
            }
            self.release(p, budget);
        }
        self.next = 0;
        self.resp_active = None;
        self.req_open = false;
    }

    /// The request item at `i` (for a response's framing and fields).
    pub fn item(&mut self, i: usize) -> &mut Item {
        &mut self.queue[i]
    }
}

/// Forget a response attached by guess, to attach the right one.
fn detach(ex: &mut Exchange, budget: &mut Budget) {
    budget.held = budget
        .held
        .saturating_sub(ex.response_body.len() + std::mem::take(&mut ex.arrivals_charged));
    ex.status = None;
    ex.reason = None;
    ex.response_version = None;
    ex.response_ts = None;
    ex.response_end_ts = None;
    ex.response_headers = Default::default();
    ex.response_trailers = Default::default();
    ex.response_body = Vec::new();
    ex.response_body_len = 0;
    ex.response_body_truncated = false;
    ex.bodies_cut[1] = false;
    ex.response_event_offsets_ns = None;
    ex.response_arrivals = Vec::new();
    ex.upgraded = false;
    if matches!(
        ex.incomplete,
        Some(
            IncompleteReason::ResponseGap
                | IncompleteReason::ResponseCut
                | IncompleteReason::ResponseMalformed
        )
    ) {
        ex.incomplete = None;
    }
}

/// An event-stream response gets the arrival time of each event (from the
/// packets that carried it), relative to its first byte.
pub(super) fn event_offsets(ex: &mut Exchange, end_ts: i64) {
    let arrivals = std::mem::take(&mut ex.response_arrivals);
    let Some(start) = ex.response_ts else {
        return;
    };
    let h = &ex.response_headers;
    let events = crate::proto::events::stream_events(
        h.get("content-type"),
        h.get("content-encoding"),
        &ex.response_body,
        &arrivals,
        end_ts,
    );
    ex.response_event_offsets_ns = events.map(|ev| ev.iter().map(|e| e.ts - start).collect());
}
