//! One TCP connection seen as HTTP/2 (cleartext: prior knowledge, an
//! `Upgrade: h2c`, or picked up mid-connection): each stream becomes one
//! [`Exchange`], its request from the client's HEADERS (pseudo-headers
//! kept), its response from the server's, bodies from DATA, trailers from
//! the last HEADERS.
//!
//! Pairing is by stream id, so unlike HTTP/1 a loss never moves an answer
//! to another request: after lost bytes the direction looks for the next
//! frame boundary, its HPACK table is forgotten (later blocks that refer
//! to it are `hpack_unknown`), and the streams it was carrying are marked.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::flow::{append, note_interim, Budget, FlowCounters, FlowLimits};
use crate::proto::h2::hpack::{self, Decoder};
use crate::proto::h2::{error_name, starts_with_frames, Frame, FrameReader, PREFACE};
use crate::schema::{Exchange, HeaderList, IncompleteReason};
use crate::text::latin1;

/// How one direction finds its frames.
#[derive(Debug)]
enum Sync {
    /// Not yet at a frame boundary: each segment is tried as a start (the
    /// client preface, or plausible frames). `then`: an earlier segment
    /// began with one plausible frame longer than itself, which would end
    /// this many bytes further on; a plausible frame there confirms both.
    Searching {
        then: Option<usize>,
    },
    Reading(FrameReader),
}

impl Sync {
    const SEARCHING: Sync = Sync::Searching { then: None };
}

/// Where frames start in a searching direction's next bytes `data`, if
/// they can be told: where the frame an earlier segment began would end,
/// when a plausible frame starts there; or at `data`'s start, when it
/// opens with plausible frames. Otherwise `then` notes where to look next
/// (`data` may begin a frame longer than itself).
fn frame_start(then: &mut Option<usize>, data: &[u8]) -> Option<usize> {
    if let Some(skip) = then.take() {
        if skip >= data.len() {
            *then = Some(skip - data.len());
            return None;
        }
        if crate::proto::h2::plausible_frame_end(&data[skip..]).is_some() {
            return Some(skip);
        }
    }
    if starts_with_frames(data) {
        return Some(0);
    }
    *then = crate::proto::h2::plausible_frame_end(data)
        .filter(|&end| end > data.len())
        .map(|end| end - data.len());
    None
}

/// A stream being recorded.
#[derive(Debug)]
struct Stream {
    ex: Exchange,
    req_done: bool,
    resp_done: bool,
    /// The final (non-1xx) response head was seen: later HEADERS are trailers.
    final_seen: bool,
    /// Decoded header bytes counted for it (see [`State::account`]).
    heads: usize,
}

/// What a frame did, for the connection's owner.
#[derive(Debug, Default, Clone, Copy)]
pub struct H2Counters {
    /// Streams answered whose request was never seen (started before the
    /// capture, or in lost bytes).
    pub unseen_requests: u64,
    /// Header blocks with fields from HPACK entries never seen.
    pub hpack_unknown_blocks: u64,
    /// Bytes skipped looking for a frame boundary.
    pub skipped_bytes: u64,
    /// Frames read.
    pub frames: u64,
    /// Header blocks for no stream the capture holds that do not start a
    /// request (trailers of a stream already closed, or opened before the
    /// capture), and promises of a stream id already in use: dropped.
    pub stray_blocks: u64,
    /// Open streams given up because their decoded headers passed the
    /// per-connection cap or the total memory cap.
    pub streams_over_memory: u64,
}

/// Decoded header bytes the open streams of one connection may hold (a
/// header block can decode to about 1 MiB from a few hundred bytes by
/// referring to a large table entry over and over).
const MAX_HEAD_BYTES: usize = 16 << 20;

/// A request ended without its END_STREAM (a reset, GOAWAY, the end of
/// the connection): the body held may lack bytes, so it is flagged
/// truncated and replay will not send it as if it were whole.
fn cut_request(s: &mut Stream, ts: i64) {
    s.req_done = true;
    s.ex.request_end_ts = ts;
    s.ex.request_body_truncated = true;
    s.ex.incomplete.get_or_insert(IncompleteReason::RequestCut);
}

/// A response ended without its END_STREAM: once its final head was seen,
/// the body held may lack its end (a gRPC stream cancelled mid-way), so it
/// is never compared as if whole.
fn cut_response(s: &mut Stream) {
    if s.final_seen {
        s.ex.response_body_truncated = true;
    }
}

/// The state frames update (apart from the readers, so a reader can feed it).
struct State {
    flow_id: u64,
    endpoints: [SocketAddr; 2],
    client_side: Option<usize>,
    hpack: [Decoder; 2],
    /// A lower table size a side asked of the other's encoder, in force
    /// once that encoder acknowledges it (RFC 9113 6.5.3): until then it
    /// may still send size updates up to the old limit.
    lowered: [Option<usize>; 2],
    streams: BTreeMap<u32, Stream>,
    /// The open streams' ids by their `seq_in_flow`, oldest first: stream
    /// ids do not tell age (a pushed stream's even id is lower than the
    /// request that caused it), and the bounds give up the oldest.
    by_age: BTreeMap<u32, u32>,
    next_seq: u32,
    limits: FlowLimits,
    done: Vec<Exchange>,
    counters: H2Counters,
    flow_counters: FlowCounters,
    /// Decoded header bytes held by the open streams (also in the budget).
    head_bytes: usize,
}

/// An HTTP/2 connection being recorded.
pub struct H2Conn {
    sync: [Sync; 2],
    st: State,
}

impl H2Conn {
    /// `client_side`: known from the TCP handshake or an HTTP/1 upgrade;
    /// None when picked up mid-way (then the first request or response
    /// head tells).
    pub fn new(
        flow_id: u64,
        endpoints: [SocketAddr; 2],
        client_side: Option<usize>,
        limits: FlowLimits,
    ) -> Self {
        Self {
            sync: [Sync::SEARCHING, Sync::SEARCHING],
            st: State {
                flow_id,
                endpoints,
                client_side,
                hpack: [Decoder::new(), Decoder::new()],
                lowered: [None, None],
                streams: BTreeMap::new(),
                by_age: BTreeMap::new(),
                next_seq: 0,
                limits,
                done: Vec::new(),
                counters: H2Counters::default(),
                flow_counters: FlowCounters::default(),
                head_bytes: 0,
            },
        }
    }

    /// Whether bytes that open a direction look like HTTP/2: the client
    /// preface, or frames.
    pub fn looks_like_h2(data: &[u8]) -> bool {
        let n = data.len().min(PREFACE.len());
        (n >= 4 && data[..n] == PREFACE[..n]) || starts_with_frames(data)
    }

    /// An HTTP/1.1 request that upgraded the connection (`Upgrade: h2c`,
    /// answered 101): it is stream 1, answered over HTTP/2.
    pub fn upgraded_request(&mut self, mut ex: Exchange, budget: &mut Budget) {
        // Its body was released when HTTP/1 let go of it; it is held again.
        // The 101 had no body (a tunnel follows it), so nothing of a
        // response is held: the HTTP/2 answer starts from nothing.
        budget.held += ex.request_body.len();
        debug_assert!(ex.response_body.is_empty() && ex.arrivals_charged == 0);
        ex.response_body = Vec::new();
        ex.response_body_len = 0;
        ex.response_arrivals = Vec::new();
        ex.arrivals_charged = 0;
        ex.bodies_cut[1] = false;
        ex.status = None;
        ex.reason = None;
        ex.response_version = None;
        ex.response_ts = None;
        ex.response_end_ts = None;
        ex.response_headers = HeaderList::new();
        ex.upgraded = true;
        ex.stream_id = Some(1);
        self.st.next_seq = ex.seq_in_flow + 1;
        self.st.hold(
            1,
            Stream {
                ex,
                req_done: true,
                resp_done: false,
                final_seen: false,
                heads: 0,
            },
        );
        self.st.account(1, budget);
    }

    pub fn counters(&self) -> (H2Counters, FlowCounters) {
        let mut c = self.st.counters;
        c.frames = self
            .sync
            .iter()
            .map(|s| match s {
                Sync::Reading(r) => r.frames,
                Sync::Searching { .. } => 0,
            })
            .sum();
        (c, self.st.flow_counters)
    }

    pub fn has_http(&self) -> bool {
        self.st.next_seq > 0
    }

    /// Bytes held: partial frames, header blocks and HPACK tables.
    pub fn buffered(&self) -> usize {
        let readers: usize = self
            .sync
            .iter()
            .map(|s| match s {
                Sync::Reading(r) => r.buffered(),
                Sync::Searching { .. } => 0,
            })
            .sum();
        readers + self.st.hpack.iter().map(Decoder::held).sum::<usize>()
    }

    /// Bytes of a partial frame or header block `side` holds (not its
    /// HPACK table, which is state, not a part of a message).
    pub fn partial(&self, side: usize) -> usize {
        match &self.sync[side] {
            Sync::Reading(r) => r.buffered(),
            Sync::Searching { .. } => 0,
        }
    }

    /// `side` is the server and its next byte starts a frame: its stream
    /// was seen from the SYN, or it follows a 101. Without this its first
    /// segments went through the search for a boundary, which skips a
    /// segment that holds one frame and the start of the next (SETTINGS and
    /// the first HEADERS), and the stream's answer was lost unmarked.
    pub fn at_boundary(&mut self, side: usize) {
        let server = self.st.client_side.is_some_and(|c| c != side);
        if server && matches!(self.sync[side], Sync::Searching { then: None }) {
            self.sync[side] = Sync::Reading(FrameReader::new(false));
        }
    }

    /// Bytes of `side`'s stream, in order.
    pub fn data(&mut self, side: usize, data: &[u8], ts: i64, budget: &mut Budget) {
        let mut data = data;
        if let Sync::Searching { then } = &mut self.sync[side] {
            let n = data.len().min(PREFACE.len());
            if n >= 4 && data[..n] == PREFACE[..n] {
                self.sync[side] = Sync::Reading(FrameReader::new(true));
                if self.st.client_side.is_none() {
                    self.st.client_side = Some(side);
                }
            } else if let Some(at) = frame_start(then, data) {
                self.st.counters.skipped_bytes += at as u64;
                data = &data[at..];
                self.sync[side] = Sync::Reading(FrameReader::new(false));
                // Picked up mid-way: the SETTINGS that bound this side's
                // table may never have been seen.
                self.st.hpack[side].limit_unknown();
            } else {
                self.st.counters.skipped_bytes += data.len() as u64;
                return;
            }
        }
        let Sync::Reading(reader) = &mut self.sync[side] else {
            return;
        };
        let st = &mut self.st;
        let r = reader.feed(data, &mut |f| st.frame(side, f, ts, budget));
        if let Err(detail) = r {
            // A protocol error: the framing can no longer be trusted.
            self.lost(side, ts, Some(detail));
        }
    }

    /// `len` bytes of `side`'s stream were not captured.
    pub fn gap(&mut self, side: usize, _len: u64, ts: i64) {
        self.lost(side, ts, None);
    }

    /// Frames of `side` were lost (a gap, or bytes that broke the framing):
    /// look for the next boundary, forget the HPACK table, mark its streams.
    fn lost(&mut self, side: usize, _ts: i64, detail: Option<String>) {
        self.sync[side] = Sync::SEARCHING;
        self.st.hpack[side].clear();
        let client = self.st.client_side == Some(side);
        let reason = match (client, &detail) {
            (true, None) => IncompleteReason::RequestGap,
            (false, None) => IncompleteReason::ResponseGap,
            (true, Some(_)) => IncompleteReason::RequestMalformed,
            (false, Some(_)) => IncompleteReason::ResponseMalformed,
        };
        for s in self.st.streams.values_mut() {
            let open = if client { !s.req_done } else { !s.resp_done };
            if open {
                // Its body may lack what was lost: never replayed as whole.
                if client {
                    s.ex.request_body_truncated = true;
                } else if s.final_seen {
                    s.ex.response_body_truncated = true;
                }
                s.ex.incomplete.get_or_insert(reason);
                if let Some(d) = &detail {
                    s.ex.malformed_detail.get_or_insert_with(|| d.clone());
                }
            }
        }
    }

    /// The connection is over: every stream still open is emitted, cut.
    pub fn finish(&mut self, ts: i64, budget: &mut Budget) {
        // Nothing more is decoded: the tables and partial frames go.
        for side in 0..2 {
            self.sync[side] = Sync::SEARCHING;
            self.st.hpack[side].clear();
        }
        let streams = std::mem::take(&mut self.st.streams);
        self.st.by_age.clear();
        for (_, mut s) in streams {
            if !s.req_done {
                let end = s.ex.request_end_ts.max(s.ex.request_ts);
                cut_request(&mut s, end);
            }
            if !s.resp_done {
                cut_response(&mut s);
                s.ex.incomplete.get_or_insert(IncompleteReason::ResponseCut);
                if s.ex.response_ts.is_some() {
                    s.ex.response_end_ts = Some(ts);
                    super::pairing::event_offsets(&mut s.ex, ts);
                }
            }
            self.st.release(s, budget);
        }
    }

    /// Exchanges completed since the last call.
    pub fn take_done(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.st.done);
    }
}

impl State {
    fn frame(&mut self, side: usize, f: Frame<'_>, ts: i64, budget: &mut Budget) {
        match f {
            Frame::Headers {
                stream,
                block,
                end_stream,
            } => self.headers(side, stream, block, end_stream, ts, budget),
            Frame::PushPromise {
                promised, block, ..
            } => self.push_promise(side, promised, block, ts, budget),
            Frame::Data {
                stream,
                data,
                end_stream,
            } => self.data(side, stream, data, end_stream, ts, budget),
            Frame::RstStream { stream, code } => self.reset(side, stream, code, ts, budget),
            Frame::GoAway { last_stream, code } => self.goaway(side, last_stream, code, ts, budget),
            // The table size a side allows is for the blocks it receives:
            // a larger one holds at once, a smaller one once acknowledged.
            Frame::HeaderTableSize(n) => {
                let (n, d) = (n as usize, 1 - side);
                if n >= self.hpack[d].limit() {
                    self.hpack[d].set_limit(n);
                    self.lowered[d] = None;
                } else {
                    self.lowered[d] = Some(n);
                }
            }
            Frame::SettingsAck => {
                if let Some(n) = self.lowered[side].take() {
                    self.hpack[side].set_limit(n);
                }
            }
            Frame::Other => {}
        }
    }

    fn decode(&mut self, side: usize, block: &[u8]) -> Decoded {
        let mut list = HeaderList::new();
        let mut unknown = 0;
        let r = self.hpack[side].decode_with(block, |n, v| match (n, v) {
            (Some(n), Some(v)) => list.push(n, v),
            _ => unknown += 1,
        });
        if unknown > 0 {
            self.counters.hpack_unknown_blocks += 1;
        }
        match r {
            Ok(()) => Decoded {
                list,
                unknown,
                error: None,
            },
            Err(e) => Decoded {
                list: HeaderList::new(),
                unknown: 0,
                error: Some(e),
            },
        }
    }

    fn headers(
        &mut self,
        side: usize,
        id: u32,
        block: &[u8],
        end: bool,
        ts: i64,
        budget: &mut Budget,
    ) {
        let d = self.decode(side, block);
        if self.client_side.is_none() {
            // Picked up mid-way: the first head that says what it is tells.
            self.client_side = match () {
                _ if d.has(":method") => Some(side),
                _ if d.has(":status") => Some(1 - side),
                _ => return,
            };
        }
        if self.client_side == Some(side) {
            self.request_headers(id, d, end, ts, budget);
        } else {
            self.response_headers(id, d, end, ts, budget);
        }
    }

    fn request_headers(
        &mut self,
        id: u32,
        mut d: Decoded,
        end: bool,
        ts: i64,
        budget: &mut Budget,
    ) {
        if let Some(s) = self.streams.get_mut(&id) {
            // A second block from the client: its trailers.
            if !s.req_done {
                s.ex.request_trailers = d.take_list();
                d.flag(&mut s.ex, IncompleteReason::RequestMalformed);
                if end {
                    s.req_done = true;
                    s.ex.request_end_ts = ts;
                }
            }
            self.account(id, budget);
            self.emit_if_done(id, budget);
            return;
        }
        if !d.has(":method") && d.unknown == 0 && d.error.is_none() {
            // Read in full and not a request: the trailers of a stream
            // already emitted (say after the server's RST_STREAM NO_ERROR)
            // or opened before the capture. It is no new exchange.
            self.counters.stray_blocks += 1;
            return;
        }
        let mut ex = self.new_exchange(&mut d, ts);
        ex.stream_id = Some(id);
        d.flag(&mut ex, IncompleteReason::RequestMalformed);
        if id.is_multiple_of(2) {
            // A server would refuse it (a connection error): kept, flagged.
            ex.incomplete
                .get_or_insert(IncompleteReason::RequestMalformed);
            ex.malformed_detail.get_or_insert_with(|| {
                format!(
                    "request on stream {id}: a client's streams are odd (RFC 9113 section 5.1.1)"
                )
            });
        }
        self.open(id, ex, end, budget);
    }

    fn new_exchange(&mut self, d: &mut Decoded, ts: i64) -> Exchange {
        let pseudo = |n: &str| d.get(n).map(|v| latin1(v).into_owned());
        let method = pseudo(":method").unwrap_or_default();
        let authority = pseudo(":authority");
        let target = match pseudo(":path") {
            Some(p) => p,
            // CONNECT names its authority instead of a path. Any other
            // request without a readable :path (an HPACK entry never seen)
            // keeps an empty target: a made-up one would file it under
            // another endpoint.
            None if method == "CONNECT" => authority.clone().unwrap_or_default(),
            None => String::new(),
        };
        let client = self.client_side.map(|c| self.endpoints[c]);
        let server = self.client_side.map(|c| self.endpoints[1 - c]);
        let seq = self.next_seq;
        self.next_seq += 1;
        Exchange {
            flow_id: self.flow_id,
            seq_in_flow: seq,
            client,
            server,
            request_ts: ts,
            request_end_ts: ts,
            method,
            target,
            http_version: "HTTP/2".into(),
            host: authority.or_else(|| d.get("host").map(|v| latin1(v).into_owned())),
            request_headers: d.take_list(),
            ..Default::default()
        }
    }

    fn open(&mut self, id: u32, ex: Exchange, end: bool, budget: &mut Budget) {
        if self.streams.contains_key(&id) {
            // A promise of an id in use (a faulty or hostile server): the
            // stream that has it keeps it.
            self.counters.stray_blocks += 1;
            return;
        }
        self.hold(
            id,
            Stream {
                ex,
                req_done: end,
                resp_done: false,
                final_seen: false,
                heads: 0,
            },
        );
        self.account(id, budget);
        // Bounded: past the limit the oldest open stream is given up.
        if self.streams.len() > self.limits.max_pending {
            if let Some(s) = self.oldest().and_then(|id| self.cut(id)) {
                self.release(s, budget);
            }
        }
    }

    fn hold(&mut self, id: u32, s: Stream) {
        self.by_age.insert(s.ex.seq_in_flow, id);
        self.streams.insert(id, s);
    }

    fn take(&mut self, id: u32) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        self.by_age.remove(&s.ex.seq_in_flow);
        Some(s)
    }

    /// The open stream opened first.
    fn oldest(&self) -> Option<u32> {
        self.by_age.values().next().copied()
    }

    /// Take stream `id` out, marked cut: it is given up before its end.
    fn cut(&mut self, id: u32) -> Option<Stream> {
        let mut s = self.take(id)?;
        if !s.resp_done {
            cut_response(&mut s);
        }
        self.flow_counters.lost_responses += 1;
        s.ex.incomplete.get_or_insert(if s.req_done {
            IncompleteReason::ResponseCut
        } else {
            IncompleteReason::RequestCut
        });
        Some(s)
    }

    fn response_headers(
        &mut self,
        id: u32,
        mut d: Decoded,
        end: bool,
        ts: i64,
        budget: &mut Budget,
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.flow_counters.orphan_responses += 1;
            self.counters.unseen_requests += 1;
            return;
        };
        if s.final_seen {
            s.ex.response_trailers = d.take_list();
        } else {
            let status = d
                .get(":status")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
            match status {
                Some(st) if (100..200).contains(&st) => {
                    note_interim(&mut s.ex, st, budget);
                    d.flag(&mut s.ex, IncompleteReason::ResponseMalformed);
                    if end {
                        // No final answer can follow (RFC 9113 8.1: malformed).
                        s.ex.incomplete
                            .get_or_insert(IncompleteReason::ResponseMalformed);
                        s.ex.malformed_detail
                            .get_or_insert_with(|| format!("{st} response with END_STREAM"));
                        self.end_response(id, ts);
                    }
                    self.account(id, budget);
                    self.emit_if_done(id, budget);
                    return;
                }
                _ => {}
            }
            s.final_seen = true;
            s.ex.status = status;
            s.ex.response_version = Some("HTTP/2".into());
            s.ex.response_ts = Some(ts);
            s.ex.response_end_ts = Some(ts);
            s.ex.response_headers = d.take_list();
            if status.is_none() && d.unknown == 0 && d.error.is_none() {
                s.ex.incomplete
                    .get_or_insert(IncompleteReason::ResponseMalformed);
                s.ex.malformed_detail
                    .get_or_insert_with(|| "response without :status".into());
            }
        }
        d.flag(&mut s.ex, IncompleteReason::ResponseMalformed);
        if end {
            self.end_response(id, ts);
        }
        self.account(id, budget);
        self.emit_if_done(id, budget);
    }

    fn push_promise(
        &mut self,
        side: usize,
        promised: u32,
        block: &[u8],
        ts: i64,
        budget: &mut Budget,
    ) {
        // Decoded in any case: the block changes the server's table.
        let mut d = self.decode(side, block);
        if self.client_side != Some(1 - side) {
            return;
        }
        // Only the server's own (even, nonzero) ids can be promised: an odd
        // one would take over a stream the client opens later, and pair the
        // client's request with the pushed answer.
        if promised == 0 || promised % 2 == 1 {
            self.counters.stray_blocks += 1;
            return;
        }
        let mut ex = self.new_exchange(&mut d, ts);
        ex.stream_id = Some(promised);
        d.flag(&mut ex, IncompleteReason::RequestMalformed);
        self.open(promised, ex, true, budget);
    }

    fn data(&mut self, side: usize, id: u32, data: &[u8], end: bool, ts: i64, budget: &mut Budget) {
        let client = self.client_side == Some(side);
        let max = self.limits.max_body;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let ex = &mut s.ex;
        if client && !s.req_done {
            ex.request_body_len += data.len() as u64;
            append(
                &mut ex.request_body,
                &mut ex.request_body_truncated,
                data,
                max,
                budget,
                &mut ex.bodies_cut[0],
            );
            if end {
                s.req_done = true;
                ex.request_end_ts = ts;
            }
        } else if !client && s.final_seen && !s.resp_done {
            ex.response_body_len += data.len() as u64;
            append(
                &mut ex.response_body,
                &mut ex.response_body_truncated,
                data,
                max,
                budget,
                &mut ex.bodies_cut[1],
            );
            super::flow::note_response_arrival(ex, ts, budget);
            ex.response_end_ts = Some(ts);
            if end {
                self.end_response(id, ts);
            }
        }
        self.emit_if_done(id, budget);
    }

    fn end_response(&mut self, id: u32, ts: i64) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.resp_done = true;
            s.ex.response_end_ts = Some(ts);
            super::pairing::event_offsets(&mut s.ex, ts);
        }
    }

    fn reset(&mut self, side: usize, id: u32, code: u32, ts: i64, budget: &mut Budget) {
        let who = if self.client_side == Some(side) {
            "client"
        } else {
            "server"
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // RFC 9113 section 8.1: a server may reset with NO_ERROR a request
        // it no longer needs once its answer is complete.
        if !(code == 0 && s.resp_done) {
            let detail = format!("RST_STREAM {} from the {who}", error_name(code));
            mark_fate(&mut s.ex, IncompleteReason::StreamReset, detail);
        }
        if !s.req_done {
            cut_request(s, ts);
        }
        if !s.resp_done {
            cut_response(s);
            self.end_response(id, ts);
        }
        self.emit_if_done(id, budget);
    }

    fn goaway(&mut self, side: usize, last: u32, code: u32, ts: i64, budget: &mut Budget) {
        // Streams the other side opened above `last` were not processed.
        let opened_by_peer = |id: u32| (id % 2 == 1) == (self.client_side != Some(side));
        let unprocessed: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last && opened_by_peer(id))
            .collect();
        for id in unprocessed {
            if let Some(s) = self.streams.get_mut(&id) {
                let detail = format!(
                    "GOAWAY {} with last stream {last}: not processed",
                    error_name(code)
                );
                mark_fate(&mut s.ex, IncompleteReason::GoAway, detail);
                if !s.req_done {
                    cut_request(s, ts);
                }
                if !s.resp_done {
                    cut_response(s);
                }
            }
            self.end_response(id, ts);
            self.emit_if_done(id, budget);
        }
    }

    fn emit_if_done(&mut self, id: u32, budget: &mut Budget) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.req_done && s.resp_done)
        {
            let s = self.take(id).expect("present");
            self.release(s, budget);
        }
    }

    fn release(&mut self, s: Stream, budget: &mut Budget) {
        let ex = s.ex;
        let charged =
            ex.request_body.len() + ex.response_body.len() + s.heads + ex.arrivals_charged;
        debug_assert!(budget.held >= charged, "released more than was held");
        budget.held = budget.held.saturating_sub(charged);
        self.head_bytes = self.head_bytes.saturating_sub(s.heads);
        self.done.push(ex);
    }

    /// Count stream `id`'s decoded headers in the connection's and the
    /// total memory, and keep both within bounds: past the total cap the
    /// stream is given up, past the connection's the oldest streams are.
    fn account(&mut self, id: u32, budget: &mut Budget) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let ex = &s.ex;
        let now = ex.request_headers.heap_bytes()
            + ex.request_trailers.heap_bytes()
            + ex.response_headers.heap_bytes()
            + ex.response_trailers.heap_bytes();
        let before = std::mem::replace(&mut s.heads, now);
        budget.held = (budget.held + now).saturating_sub(before);
        self.head_bytes = (self.head_bytes + now).saturating_sub(before);
        if now > before && budget.held > budget.max {
            self.give_up(id, budget);
        }
        while self.head_bytes > MAX_HEAD_BYTES {
            let Some(oldest) = self.oldest() else {
                break;
            };
            self.give_up(oldest, budget);
        }
    }

    /// Emit stream `id` now, cut, because its headers would take more
    /// memory than allowed.
    fn give_up(&mut self, id: u32, budget: &mut Budget) {
        let Some(mut s) = self.cut(id) else {
            return;
        };
        self.counters.streams_over_memory += 1;
        s.ex.malformed_detail.get_or_insert_with(|| {
            format!(
                "given up: decoded headers over the memory cap ({} MiB a connection, or --max-buffer-bytes)",
                MAX_HEAD_BYTES >> 20
            )
        });
        self.release(s, budget);
    }
}

/// A decoded header block.
struct Decoded {
    /// The fields known in full, in order (pseudo-headers included).
    list: HeaderList,
    /// Fields with a name or value from HPACK entries never seen.
    unknown: usize,
    error: Option<hpack::HpackError>,
}

impl Decoded {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.list.get(name)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn take_list(&mut self) -> HeaderList {
        std::mem::take(&mut self.list)
    }

    /// Mark the exchange for what this block could not give.
    fn flag(&self, ex: &mut Exchange, malformed: IncompleteReason) {
        if let Some(e) = &self.error {
            ex.incomplete.get_or_insert(malformed);
            ex.malformed_detail.get_or_insert_with(|| e.to_string());
        } else if self.unknown > 0 {
            ex.incomplete.get_or_insert(IncompleteReason::HpackUnknown);
            let n = self.unknown;
            ex.malformed_detail.get_or_insert_with(|| {
                format!("{n} header field(s) from HPACK table entries the capture never saw")
            });
        }
    }
}

/// What ended a stream (a reset, a GOAWAY) is its incomplete reason, over
/// `hpack_unknown`: on a connection picked up mid-way nearly every row has
/// an unseen table entry (gRPC indexes `content-type`), and a refused or
/// cancelled stream read as a header problem only. Both details are kept.
fn mark_fate(ex: &mut Exchange, reason: IncompleteReason, detail: String) {
    if ex.incomplete == Some(IncompleteReason::HpackUnknown) {
        ex.incomplete = Some(reason);
        ex.malformed_detail = Some(match ex.malformed_detail.take() {
            Some(d) => format!("{detail}; {d}"),
            None => detail,
        });
        return;
    }
    ex.incomplete.get_or_insert(reason);
    ex.malformed_detail.get_or_insert(detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A header block of literal fields without indexing (no table use).
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            out.push(0);
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
            out.push(v.len() as u8);
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;

    fn request(stream: u32, end: bool) -> Vec<u8> {
        let b = block(&[
            (":method", "POST"),
            (":path", "/m"),
            (":scheme", "http"),
            (":authority", "a"),
        ]);
        frame(
            1,
            END_HEADERS | if end { END_STREAM } else { 0 },
            stream,
            &b,
        )
    }

    fn response(stream: u32, status: &str, end: bool) -> Vec<u8> {
        frame(
            1,
            END_HEADERS | if end { END_STREAM } else { 0 },
            stream,
            &block(&[(":status", status)]),
        )
    }

    struct Conn {
        c: H2Conn,
        budget: Budget,
        ts: i64,
    }

    impl Conn {
        /// From the client's preface on.
        fn new() -> Self {
            let mut c = Self::picked_up();
            c.client(crate::proto::h2::PREFACE);
            c
        }

        /// Picked up mid-way: no preface, no SETTINGS seen.
        fn picked_up() -> Self {
            let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let b: SocketAddr = "127.0.0.1:50051".parse().unwrap();
            let limits = FlowLimits {
                max_body: 1 << 20,
                max_pending: 16,
            };
            let budget = Budget {
                held: 0,
                max: 1 << 30,
                memory_truncated: 0,
                memory_dropped_buffers: 0,
                interim_dropped: 0,
            };
            let c = H2Conn::new(7, [a, b], Some(0), limits);
            Self { c, budget, ts: 0 }
        }

        fn client(&mut self, bytes: &[u8]) {
            self.ts += 1;
            self.c.data(0, bytes, self.ts, &mut self.budget);
        }

        fn server(&mut self, bytes: &[u8]) {
            self.ts += 1;
            self.c.data(1, bytes, self.ts, &mut self.budget);
        }

        fn done(&mut self) -> Vec<Exchange> {
            let mut out = Vec::new();
            self.c.take_done(&mut out);
            out
        }
    }

    #[test]
    fn a_stream_with_interim_body_and_trailers() {
        let mut c = Conn::new();
        c.client(&request(1, false));
        c.client(&frame(0, END_STREAM, 1, b"req"));
        let mut s = response(1, "100", false);
        s.extend(response(1, "200", false));
        s.extend(frame(0, 0, 1, b"hello "));
        s.extend(frame(0, 0, 1, b"world"));
        s.extend(frame(
            1,
            END_HEADERS | END_STREAM,
            1,
            &block(&[("grpc-status", "0")]),
        ));
        c.server(&s);
        let out = c.done();
        assert_eq!(out.len(), 1);
        let ex = &out[0];
        assert_eq!(
            (ex.method.as_str(), ex.target.as_str(), ex.host.as_deref()),
            ("POST", "/m", Some("a"))
        );
        assert_eq!(ex.interim_statuses, vec![100]);
        assert_eq!(ex.status, Some(200));
        assert_eq!(ex.request_body, b"req");
        assert_eq!(ex.response_body, b"hello world");
        assert_eq!(ex.response_trailers.get("grpc-status"), Some(&b"0"[..]));
        assert_eq!(ex.stream_id, Some(1));
        assert!(ex.incomplete.is_none());
        assert_eq!(c.budget.held, 0, "bodies released when emitted");
    }

    /// A server seen from its first byte: a segment with SETTINGS and the
    /// first bytes of the HEADERS that follows is read, not searched past.
    #[test]
    fn a_server_read_from_its_first_byte_keeps_a_frame_split_across_segments() {
        for hinted in [true, false] {
            let mut c = Conn::new();
            if hinted {
                c.c.at_boundary(1);
            }
            c.client(&request(1, true));
            let mut a = frame(4, 0, 0, b"");
            let head = response(1, "200", false);
            a.extend_from_slice(&head[..5]);
            let mut b = head[5..].to_vec();
            b.extend(frame(0, END_STREAM, 1, b"hi"));
            c.server(&a);
            c.server(&b);
            let out = c.done();
            if hinted {
                assert_eq!(out.len(), 1);
                assert_eq!(
                    (out[0].status, &out[0].response_body[..]),
                    (Some(200), &b"hi"[..])
                );
                assert!(out[0].incomplete.is_none());
            } else {
                // Searched for a boundary, both segments are skipped.
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn resets_and_goaway_mark_the_streams_they_end() {
        let mut c = Conn::new();
        c.client(&request(1, true));
        c.client(&request(3, true));
        c.client(&request(5, true));
        // The client gives up on 1; the server answers 3 fully, then resets
        // it with NO_ERROR (allowed, not a failure); GOAWAY says 5 was not
        // processed.
        c.client(&frame(3, 0, 1, &8u32.to_be_bytes()));
        let mut s = response(3, "200", true);
        s.extend(frame(3, 0, 3, &0u32.to_be_bytes()));
        let mut goaway = 3u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        s.extend(frame(7, 0, 0, &goaway));
        c.server(&s);
        let mut out = c.done();
        out.sort_by_key(|e| e.stream_id);
        let reasons: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.stream_id.unwrap(),
                    e.incomplete,
                    e.malformed_detail.clone(),
                )
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    1,
                    Some(IncompleteReason::StreamReset),
                    Some("RST_STREAM CANCEL from the client".into())
                ),
                (3, None, None),
                (
                    5,
                    Some(IncompleteReason::GoAway),
                    Some("GOAWAY NO_ERROR with last stream 3: not processed".into())
                ),
            ]
        );
    }

    #[test]
    fn unanswered_streams_are_cut_at_the_end_and_open_streams_are_bounded() {
        let mut c = Conn::new();
        for id in (1..=41).step_by(2) {
            c.client(&request(id, true));
        }
        // 21 requests, 16 may wait: the five oldest were given up.
        let given_up = c.done();
        assert_eq!(given_up.len(), 5);
        assert!(given_up
            .iter()
            .all(|e| e.incomplete == Some(IncompleteReason::ResponseCut)));
        assert_eq!(c.c.counters().1.lost_responses, 5);
        c.server(&response(41, "200", false));
        c.c.finish(100, &mut c.budget);
        let rest = c.done();
        assert_eq!(rest.len(), 16);
        let last = rest.iter().find(|e| e.stream_id == Some(41)).unwrap();
        assert_eq!(last.status, Some(200));
        assert_eq!(last.incomplete, Some(IncompleteReason::ResponseCut));
    }

    #[test]
    fn a_protocol_error_marks_open_streams_and_reading_resumes_at_a_frame_boundary() {
        let mut c = Conn::new();
        c.client(&request(1, true));
        // A CONTINUATION out of place: the server's framing is broken.
        c.server(&frame(9, END_HEADERS, 1, b""));
        // The next segment starts with frames again.
        let mut s = response(1, "200", true);
        s.extend(frame(6, 0, 0, &[0; 8]));
        c.server(&s);
        let out = c.done();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Some(200));
        assert_eq!(out[0].incomplete, Some(IncompleteReason::ResponseMalformed));
        assert!(out[0]
            .malformed_detail
            .as_deref()
            .unwrap()
            .contains("CONTINUATION"));
    }

    /// An HPACK integer with a 7-bit prefix (RFC 7541 5.1), `high` the
    /// pattern's top bit.
    fn int7(high: u8, mut n: usize) -> Vec<u8> {
        if n < 127 {
            return vec![high | n as u8];
        }
        let mut out = vec![high | 127];
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 128);
            n /= 128;
        }
        out.push(n as u8);
        out
    }

    #[test]
    fn trailers_after_a_finished_stream_are_no_new_exchange() {
        let mut c = Conn::new();
        c.client(&request(1, false));
        c.client(&frame(0, 0, 1, b"part"));
        // The server answers in full and resets with NO_ERROR; the client's
        // trailers were already on their way.
        let mut s = response(1, "200", true);
        s.extend(frame(3, 0, 1, &0u32.to_be_bytes()));
        c.server(&s);
        c.client(&frame(
            1,
            END_HEADERS | END_STREAM,
            1,
            &block(&[("x-checksum", "9")]),
        ));
        c.c.finish(100, &mut c.budget);
        let out = c.done();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].method.as_str(), out[0].status), ("POST", Some(200)));
        assert_eq!(c.c.counters().0.stray_blocks, 1);
        // The reset came before the request's END_STREAM: its body may
        // lack bytes, so replay must not send "part" as the whole body.
        assert!(out[0].request_body_truncated);
        assert_eq!(out[0].incomplete, Some(IncompleteReason::RequestCut));
    }

    #[test]
    fn a_request_cut_by_a_reset_or_the_end_is_flagged_truncated() {
        let mut c = Conn::new();
        c.client(&request(1, false));
        c.client(&frame(0, 0, 1, b"upload, first part"));
        c.client(&frame(3, 0, 1, &8u32.to_be_bytes())); // CANCEL
        c.client(&request(3, false));
        c.client(&frame(0, 0, 3, b"never finished"));
        c.c.finish(100, &mut c.budget);
        let out = c.done();
        assert_eq!(out.len(), 2, "{out:?}");
        for ex in &out {
            assert!(ex.request_body_truncated, "{ex:?}");
            assert!(ex.incomplete.is_some());
        }
    }

    /// A response body cut by a reset, a GOAWAY or the end of the capture
    /// lacks its end: flagged, so it is never compared as whole. A body
    /// that ended before a NO_ERROR reset is whole.
    #[test]
    fn a_response_cut_by_a_reset_or_the_end_is_flagged_truncated() {
        let mut c = Conn::new();
        for id in [1, 3, 5] {
            c.client(&request(id, true));
            c.server(&response(id, "200", false));
            c.server(&frame(0, 0, id, b"first message of a stream"));
        }
        c.client(&frame(3, 0, 1, &8u32.to_be_bytes())); // CANCEL by the client
        c.server(&frame(0, END_STREAM, 3, b""));
        c.server(&frame(3, 0, 3, &0u32.to_be_bytes())); // NO_ERROR after the end
        c.c.finish(100, &mut c.budget);
        let mut out = c.done();
        out.sort_by_key(|e| e.stream_id);
        let flags: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.stream_id.unwrap(),
                    e.response_body_truncated,
                    e.incomplete,
                )
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                (1, true, Some(IncompleteReason::StreamReset)),
                (3, false, None),
                (5, true, Some(IncompleteReason::ResponseCut)),
            ]
        );
    }

    /// Stream frames on stream 0 break the connection (RFC 9113 section
    /// 6): the open streams are marked and no row is made of the frame.
    #[test]
    fn a_stream_frame_on_stream_zero_is_a_protocol_error() {
        let mut c = Conn::new();
        c.client(&request(1, false));
        c.client(&request(0, true));
        c.server(&response(1, "200", true));
        c.c.finish(100, &mut c.budget);
        let out = c.done();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].stream_id, Some(1));
        assert_eq!(out[0].incomplete, Some(IncompleteReason::RequestMalformed));
        assert_eq!(
            out[0].malformed_detail.as_deref(),
            Some("frame type 1 on stream 0")
        );
    }

    /// A client's streams are odd: a request on an even id is kept, flagged.
    #[test]
    fn a_request_on_an_even_stream_is_flagged() {
        let mut c = Conn::new();
        c.client(&request(2, true));
        c.server(&response(2, "200", true));
        let out = c.done();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].incomplete, Some(IncompleteReason::RequestMalformed));
        assert!(out[0]
            .malformed_detail
            .as_deref()
            .is_some_and(|d| d.contains("stream 2")));
    }

    #[test]
    fn a_promise_of_an_odd_id_does_not_take_the_clients_stream() {
        let mut c = Conn::new();
        c.client(&request(1, true));
        // The server promises stream 5, an id only the client may open.
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend(block(&[(":method", "GET"), (":path", "/pushed")]));
        c.server(&frame(5, END_HEADERS, 1, &p));
        c.client(&request(5, true));
        c.server(&response(1, "200", true));
        c.server(&response(5, "404", true));
        let mut out = c.done();
        out.sort_by_key(|e| e.stream_id);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].stream_id, Some(5));
        assert_ne!(out[1].target, "/pushed", "the client's own request");
        assert_eq!(out[1].status, Some(404));
        assert_eq!(c.c.counters().0.stray_blocks, 1);
    }

    /// A connection picked up mid-way: a table size update above the
    /// default 4,096 (its SETTINGS were not seen) is taken, and the block's
    /// fields with it.
    #[test]
    fn a_size_update_past_the_default_is_taken_when_settings_were_not_seen() {
        // Size update to 65,536, then :method GET, :scheme http, :path /.
        let head = frame(
            1,
            END_HEADERS | END_STREAM,
            1,
            &[0x3f, 0xe1, 0xff, 0x03, 0x82, 0x86, 0x84],
        );
        let mut c = Conn::picked_up();
        c.client(&head);
        c.server(&response(1, "200", true));
        let out = c.done();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].method.as_str(), out[0].target.as_str()),
            ("GET", "/")
        );
        assert_eq!(out[0].status, Some(200));
        assert!(out[0].incomplete.is_none(), "{:?}", out[0].incomplete);
    }

    /// A stream whose request named an unseen table entry, then was
    /// refused: the refusal is its reason, and both details are kept.
    #[test]
    fn a_reset_is_not_hidden_by_an_unseen_table_entry() {
        let mut c = Conn::new();
        let mut b = block(&[(":method", "POST"), (":authority", "a")]);
        b.push(0x80 | 62);
        c.client(&frame(1, END_HEADERS | END_STREAM, 1, &b));
        c.server(&frame(3, 0, 1, &7u32.to_be_bytes()));
        let out = c.done();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incomplete, Some(IncompleteReason::StreamReset));
        let detail = out[0].malformed_detail.as_deref().unwrap_or("");
        assert!(detail.contains("REFUSED_STREAM"), "{detail}");
        assert!(detail.contains("header field"), "{detail}");
    }

    #[test]
    fn a_path_from_an_unseen_table_entry_is_left_empty_not_made_up() {
        let mut c = Conn::new();
        // :path refers to dynamic entry 62, which this capture never saw.
        let mut b = block(&[(":method", "POST"), (":authority", "model.svc:8080")]);
        b.push(0x80 | 62);
        c.client(&frame(1, END_HEADERS | END_STREAM, 1, &b));
        c.server(&response(1, "200", true));
        let out = c.done();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].target, "");
        assert_eq!(out[0].host.as_deref(), Some("model.svc:8080"));
        assert_eq!(out[0].incomplete, Some(IncompleteReason::HpackUnknown));
    }

    #[test]
    fn a_gap_marks_the_bodies_it_may_have_cut() {
        let mut c = Conn::new();
        c.client(&request(1, false));
        c.client(&frame(0, 0, 1, b"first half "));
        c.c.gap(0, 1000, 50);
        c.c.finish(100, &mut c.budget);
        let out = c.done();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request_body, b"first half ");
        assert!(out[0].request_body_truncated, "never replayed as whole");
        assert_eq!(out[0].incomplete, Some(IncompleteReason::RequestGap));
    }

    /// A smaller header table asked for binds the other side's encoder
    /// only once it acknowledges the SETTINGS: a size update up to the old
    /// limit before that is within the rules.
    #[test]
    fn a_lower_table_size_holds_once_acknowledged() {
        let mut c = Conn::new();
        // The client allows the server's encoder no table at all.
        c.client(&frame(4, 0, 0, &[0, 1, 0, 0, 0, 0]));
        c.client(&request(1, true));
        c.client(&request(3, true));
        // Before its ACK: a size update to 20, then :status 200 (static).
        let answer = |id| frame(1, END_HEADERS | END_STREAM, id, &[0x20 | 20, 0x88]);
        c.server(&answer(1));
        c.server(&frame(4, 1, 0, &[]));
        c.server(&answer(3));
        let mut out = c.done();
        out.sort_by_key(|e| e.stream_id);
        assert_eq!(out[0].status, Some(200), "{:?}", out[0]);
        assert!(out[0].incomplete.is_none(), "{:?}", out[0].incomplete);
        // After it, the same update breaks the agreed limit.
        c.c.finish(100, &mut c.budget);
        out.extend(c.done());
        let late = out.iter().find(|e| e.stream_id == Some(3)).unwrap();
        assert!(late.incomplete.is_some(), "{late:?}");
    }

    /// After a gap, the first whole segment may start with a DATA frame
    /// many segments long: frames are found again where it ends.
    #[test]
    fn after_a_gap_frames_are_found_again_behind_a_frame_longer_than_a_segment() {
        let mut c = Conn::new();
        c.client(&request(1, true));
        c.client(&request(3, true));
        c.server(&response(1, "200", false));
        c.c.gap(1, 3000, 10);
        // 5,000 bytes of DATA on stream 1, cut into 1,400-byte segments;
        // the last one also holds stream 3's whole answer.
        let mut bytes = frame(0, END_STREAM, 1, &[b'x'; 5000]);
        bytes.extend(response(3, "204", true));
        for seg in bytes.chunks(1400) {
            c.server(seg);
        }
        c.c.finish(100, &mut c.budget);
        let mut out = c.done();
        out.sort_by_key(|e| e.stream_id);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].incomplete, Some(IncompleteReason::ResponseGap));
        assert_eq!(out[1].stream_id, Some(3));
        assert_eq!(out[1].status, Some(204), "{:?}", out[1]);
        // Open while bytes were lost: flagged, though read whole after.
        assert_eq!(out[1].incomplete, Some(IncompleteReason::ResponseGap));
        assert_eq!(c.c.counters().0.skipped_bytes, 5009);
    }

    /// A segment that merely looks like the start of a long frame is not
    /// taken on trust: the bytes where that frame would end must be a
    /// frame too.
    #[test]
    fn a_long_frame_not_followed_by_a_frame_is_not_taken_as_a_boundary() {
        let mut then = None;
        let mut seg = frame(0, 0, 1, &[0u8; 4000]);
        seg.truncate(1400);
        assert_eq!(frame_start(&mut then, &seg), None);
        assert_eq!(then, Some(4009 - 1400));
        assert_eq!(frame_start(&mut then, &[7u8; 1400]), None);
        assert_eq!(then, Some(4009 - 2800));
        // Where the frame would end: garbage, not a frame header.
        assert_eq!(frame_start(&mut then, &[0xffu8; 1400]), None);
        assert_eq!(then, None);
    }

    #[test]
    fn a_promise_of_an_id_in_use_does_not_replace_its_stream() {
        let mut c = Conn::new();
        c.client(&request(1, true));
        let promise = |path: &str| {
            let mut p = 2u32.to_be_bytes().to_vec();
            p.extend(block(&[
                (":method", "GET"),
                (":path", path),
                (":scheme", "http"),
                (":authority", "a"),
            ]));
            frame(5, END_HEADERS, 1, &p)
        };
        let mut s = promise("/style.css");
        s.extend(promise("/other.js"));
        s.extend(response(2, "200", false));
        s.extend(frame(0, END_STREAM, 2, b"css"));
        s.extend(response(1, "200", true));
        c.server(&s);
        let mut out = c.done();
        out.sort_by_key(|e| e.stream_id);
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.stream_id, e.target.as_str(), e.response_body.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "/m", &b""[..]),
                (Some(2), "/style.css", &b"css"[..])
            ]
        );
        assert_eq!(c.c.counters().0.stray_blocks, 1);
    }

    #[test]
    fn past_the_stream_limit_the_oldest_stream_goes_even_if_a_push_has_a_lower_id() {
        let mut c = Conn::new();
        // 16 requests wait (the limit), from stream 5 up to 35.
        for id in (5..=35).step_by(2) {
            c.client(&request(id, true));
        }
        assert!(c.done().is_empty());
        // The server promises stream 2 on stream 35: the newest stream has
        // the lowest id, and the oldest (5) is the one to give up.
        let mut p = 2u32.to_be_bytes().to_vec();
        p.extend(block(&[
            (":method", "GET"),
            (":path", "/pushed.css"),
            (":scheme", "http"),
            (":authority", "a"),
        ]));
        c.server(&frame(5, END_HEADERS, 35, &p));
        let given_up = c.done();
        let ids: Vec<_> = given_up.iter().map(|e| e.stream_id).collect();
        assert_eq!(ids, vec![Some(5)]);
        c.server(&response(2, "200", true));
        let pushed = c.done();
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].target, "/pushed.css");
        assert_eq!(pushed[0].incomplete, None);
    }

    #[test]
    fn decoded_headers_are_counted_and_capped_per_connection() {
        let mut c = Conn::new();
        c.c.st.limits.max_pending = 4096;
        // One 4,000-byte value enters the client's table; each request then
        // names it 200 times: 800 KB decoded from a 250-byte block.
        let big = "v".repeat(4000);
        let mut first = block(&[
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "a"),
        ]);
        first.push(0x40);
        first.extend(int7(0, 5));
        first.extend_from_slice(b"x-big");
        first.extend(int7(0, big.len()));
        first.extend_from_slice(big.as_bytes());
        c.client(&frame(1, END_HEADERS | END_STREAM, 1, &first));
        let mut id = 3;
        for _ in 0..40 {
            let mut b = block(&[
                (":method", "GET"),
                (":path", "/"),
                (":scheme", "http"),
                (":authority", "a"),
            ]);
            b.extend(std::iter::repeat_n(0x80 | 62, 200));
            c.client(&frame(1, END_HEADERS | END_STREAM, id, &b));
            id += 2;
            assert!(c.c.st.head_bytes <= MAX_HEAD_BYTES);
            assert!(c.budget.held <= MAX_HEAD_BYTES + (1 << 20));
        }
        let given_up = c.done();
        assert!(given_up.len() >= 15, "{}", given_up.len());
        assert!(given_up.iter().all(|e| e.incomplete.is_some()));
        assert_eq!(c.c.counters().0.streams_over_memory, given_up.len() as u64);
        c.c.finish(100, &mut c.budget);
        assert_eq!(c.budget.held, 0, "all of it released once emitted");
        assert_eq!(c.c.st.head_bytes, 0);
    }

    #[test]
    fn an_interim_answer_that_ends_the_stream_ends_it_marked() {
        let mut c = Conn::new();
        c.client(&request(1, true));
        c.server(&response(1, "103", true));
        let out = c.done();
        assert_eq!(
            out.len(),
            1,
            "emitted at once, not at the end of the capture"
        );
        assert_eq!(out[0].interim_statuses, vec![103]);
        assert_eq!(out[0].status, None);
        assert_eq!(out[0].incomplete, Some(IncompleteReason::ResponseMalformed));
        assert_eq!(
            out[0].malformed_detail.as_deref(),
            Some("103 response with END_STREAM")
        );
    }
}
