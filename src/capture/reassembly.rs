//! TCP stream reassembly for both directions of every connection.
//!
//! Written by hand: the crates that reassemble TCP either group packets by
//! ACK number (losing data, as GoReplay does) or are unmaintained. Each
//! direction keeps the next expected sequence number and a bounded map of
//! out-of-order bytes. A hole becomes a gap (reported to the HTTP parser,
//! which resynchronises) when the peer acknowledges data past it, when the
//! buffer limits are reached, or when the connection ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;

use super::flow::{Budget, FlowLimits, HttpFlow};
use super::net::Segment;
use super::stats::CaptureStats;
use crate::schema::Exchange;

/// Limits of the reassembler.
#[derive(Clone, Copy, Debug)]
pub struct ReassemblyConfig {
    pub max_connections: usize,
    /// Out-of-order bytes held per direction before a hole is given up.
    pub max_conn_buffer: usize,
    /// Bytes held in total (out-of-order data and message bodies).
    pub max_buffer_bytes: usize,
    /// A connection idle this long (capture time) is finished.
    pub idle_timeout_ns: i64,
    pub flow: FlowLimits,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_conn_buffer: 4 << 20,
            max_buffer_bytes: 128 << 20,
            idle_timeout_ns: 300 * 1_000_000_000,
            flow: FlowLimits {
                max_body: 16 << 20,
                max_pending: 4096,
            },
        }
    }
}

/// Bytes at a stream offset: data, then possibly bytes that were not captured.
struct Chunk {
    data: Vec<u8>,
    missing: u32,
    ts: i64,
    peer_ack: Option<u64>,
}

/// What a held chunk costs beside its data (the chunk, its allocation and
/// its tree entry), charged to the limits: a flood of one-byte segments
/// (or of segments with no captured byte) must not hold a hundred times
/// the limit.
const CHUNK_OVERHEAD: usize = 96;

impl Chunk {
    /// Bytes charged to the buffer limits while it is held.
    fn held(&self) -> usize {
        self.data.len() + CHUNK_OVERHEAD
    }
}

/// One direction of a connection.
#[derive(Default)]
struct HalfStream {
    /// Next expected sequence number, once known.
    next_seq: Option<u32>,
    /// Stream offset of `next_seq`.
    next_off: u64,
    isn: Option<u32>,
    ooo: BTreeMap<u64, Chunk>,
    ooo_bytes: usize,
    fin_off: Option<u64>,
    ended: bool,
    /// Before this direction's first byte was seen: the first point of it
    /// the peer acknowledged. A stream picked up without its SYN starts
    /// there, so bytes the peer had received but the capture missed (the
    /// head of the first response) are a gap, not the stream's start.
    acked_by_peer: Option<u32>,
    /// And the latest: past the first, the peer received bytes of this
    /// direction that the capture never saw.
    acked_by_peer_last: Option<u32>,
}

impl HalfStream {
    /// Stream offset of `seq`, relative to what was delivered (may be behind).
    fn offset_of(&self, seq: u32, next: u32) -> i64 {
        self.next_off as i64 + i64::from(seq.wrapping_sub(next) as i32)
    }
}

struct Connection {
    endpoints: [SocketAddr; 2],
    half: [HalfStream; 2],
    flow: HttpFlow,
    last_ns: i64,
    /// Both directions ended or reset; kept briefly to absorb late packets.
    closed: bool,
}

type Key = (SocketAddr, SocketAddr);

/// Whether `seq` is far from where this direction's stream is.
fn out_of_window(h: &HalfStream, seq: u32) -> bool {
    h.next_seq
        .is_some_and(|n| i64::from(seq.wrapping_sub(n) as i32).abs() > MAX_WINDOW)
}

fn key(a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// The connection table.
pub struct Reassembler {
    conns: FxHashMap<Key, Connection>,
    config: ReassemblyConfig,
    budget: Budget,
    next_flow_id: u64,
    last_sweep_ns: i64,
    now_ns: i64,
    out: Vec<Exchange>,
    out_bytes: usize,
}

/// Move a flow's finished exchanges to `out`, counting their body bytes.
fn collect(flow: &mut HttpFlow, out: &mut Vec<Exchange>, bytes: &mut usize) {
    let from = out.len();
    flow.take_done(out);
    *bytes += out[from..]
        .iter()
        .map(|e| e.request_body.len() + e.response_body.len())
        .sum::<usize>();
}

/// Keep closed connections this long to recognise their late packets.
const TOMBSTONE_NS: i64 = 30 * 1_000_000_000;

impl Reassembler {
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            conns: FxHashMap::default(),
            budget: Budget {
                held: 0,
                max: config.max_buffer_bytes,
                memory_truncated: 0,
                memory_dropped_buffers: 0,
                interim_dropped: 0,
            },
            config,
            next_flow_id: 0,
            last_sweep_ns: i64::MIN,
            now_ns: i64::MIN,
            out: Vec::new(),
            out_bytes: 0,
        }
    }

    /// Exchanges completed so far (the caller takes them).
    pub fn take_exchanges(&mut self) -> Vec<Exchange> {
        self.out_bytes = 0;
        // The next batch starts at this one's size: growing from empty
        // moved every exchange (hundreds of bytes each) again at each
        // doubling, 2% of the parser thread.
        // At most two batches' worth: a burst (an idle sweep finishing
        // thousands of connections) must not keep a huge reservation.
        let room = self.out.len().min(2 * super::BATCH);
        std::mem::replace(&mut self.out, Vec::with_capacity(room))
    }

    pub fn pending_exchanges(&self) -> usize {
        self.out.len()
    }

    /// Body bytes of the completed exchanges not taken yet.
    pub fn pending_bytes(&self) -> usize {
        self.out_bytes
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held for reassembly and unfinished messages.
    pub fn held_bytes(&self) -> usize {
        self.budget.held
    }

    pub fn segment(&mut self, seg: &Segment<'_>, ts: i64, stats: &mut CaptureStats) {
        stats.tcp_segments += 1;
        self.now_ns = self.now_ns.max(ts);
        if self.now_ns.saturating_sub(self.last_sweep_ns) > 1_000_000_000 {
            self.last_sweep_ns = self.now_ns;
            self.sweep(stats);
        }
        let k = key(seg.src, seg.dst);
        let has_data = !seg.payload.is_empty() || seg.missing > 0;
        let starts_new = seg.flags.syn && !seg.flags.ack;
        if let Some(c) = self.conns.get(&k) {
            let side = usize::from(c.endpoints[0] != seg.src);
            // A new connection on the same ports: a SYN with another ISN
            // (or, for a stream picked up without its SYN, far from it), or
            // (its SYN lost) data far from a half-closed old stream.
            let h = &c.half[side];
            let reused = (starts_new
                && (c.closed
                    || h.isn
                        .map_or_else(|| out_of_window(h, seg.seq), |isn| isn != seg.seq)))
                || (has_data
                    && !c.closed
                    && c.half.iter().any(|h| h.ended || h.fin_off.is_some())
                    && out_of_window(&c.half[side], seg.seq));
            if reused {
                stats.port_reuse += 1;
                self.close(k, ts, stats);
                self.conns.remove(&k);
            } else if c.closed {
                stats.late_segments += 1;
                return;
            }
        }
        if !self.conns.contains_key(&k) {
            if !(has_data || seg.flags.syn) || seg.flags.rst {
                stats.segments_without_connection += 1;
                return;
            }
            self.make_room(stats);
            let endpoints = [seg.src, seg.dst];
            let flow = HttpFlow::new(self.next_flow_id, endpoints, self.config.flow);
            self.next_flow_id += 1;
            stats.connections += 1;
            self.conns.insert(
                k,
                Connection {
                    endpoints,
                    half: Default::default(),
                    flow,
                    last_ns: ts,
                    closed: false,
                },
            );
        }
        self.on_segment(k, seg, ts, stats);
    }

    fn on_segment(&mut self, k: Key, seg: &Segment<'_>, ts: i64, stats: &mut CaptureStats) {
        let cfg = self.config;
        let budget = &mut self.budget;
        let c = self.conns.get_mut(&k).expect("inserted above");
        c.last_ns = ts;
        let side = usize::from(c.endpoints[0] != seg.src);
        if seg.flags.rst && out_of_window(&c.half[side], seg.seq) {
            // A reset far from its sender's stream (RFC 5961 section 3):
            // no stack would take it, so it neither ends nor acknowledges.
            stats.out_of_window_segments += 1;
            return;
        }
        if seg.flags.syn {
            let client = if seg.flags.ack { 1 - side } else { side };
            c.flow.set_client(client);
            c.half[side].isn.get_or_insert(seg.seq);
        }
        let data_seq = seg.seq.wrapping_add(u32::from(seg.flags.syn));
        if seg.flags.ack && c.half[1 - side].next_seq.is_none() {
            // The first acknowledgement is the earliest point: acks only grow.
            c.half[1 - side].acked_by_peer.get_or_insert(seg.ack);
            c.half[1 - side].acked_by_peer_last = Some(seg.ack);
        }
        let h = &mut c.half[side];
        if h.next_seq.is_none() && (seg.flags.syn || !seg.payload.is_empty() || seg.missing > 0) {
            let missed = h.acked_by_peer.filter(|&a| {
                !seg.flags.syn
                    && (1..=MAX_UNSEEN_ACK).contains(&i64::from(data_seq.wrapping_sub(a) as i32))
            });
            h.next_seq = Some(missed.unwrap_or(data_seq));
            c.flow.set_clean_start(side, seg.flags.syn);
        }
        // The ACK speaks of what the sender had received before sending this
        // segment, so settle the other direction's holes first: a request
        // lost there must be known before this response is paired.
        if seg.flags.ack {
            ack_gaps(c, 1 - side, seg.ack, ts, budget, stats);
        }
        if !c.flow.is_finished() {
            deliver(c, side, data_seq, seg, ts, cfg, budget, stats);
        }
        if seg.flags.fin {
            let h = &mut c.half[side];
            if let Some(next) = h.next_seq {
                let len = seg.payload.len() as u32 + seg.missing;
                let off = h.offset_of(data_seq.wrapping_add(len), next);
                h.fin_off = Some(off.max(0) as u64);
            }
        }
        check_fin(c, side, ts, budget);
        let rst = seg.flags.rst;
        collect(&mut c.flow, &mut self.out, &mut self.out_bytes);
        let both_ended = c.half.iter().all(|h| h.ended);
        if rst || both_ended {
            self.close(k, ts, stats);
        }
    }

    /// Finish a connection: give up its holes, end both directions, emit.
    fn close(&mut self, k: Key, ts: i64, stats: &mut CaptureStats) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        if c.closed {
            return;
        }
        for side in 0..2 {
            unseen_stream(c, side, ts, &mut self.budget, stats);
            flush_holes(c, side, ts, &mut self.budget, stats);
        }
        c.flow.finish(ts, &mut self.budget);
        collect(&mut c.flow, &mut self.out, &mut self.out_bytes);
        stats.add_flow(&c.flow);
        c.closed = true;
        for h in &mut c.half {
            self.budget.held = self.budget.held.saturating_sub(h.ooo_bytes);
            h.ooo.clear();
            h.ooo_bytes = 0;
        }
    }

    /// Finish idle connections and forget old closed ones.
    fn sweep(&mut self, stats: &mut CaptureStats) {
        let now = self.now_ns;
        let idle: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let age = now.saturating_sub(c.last_ns);
                (c.closed && age > TOMBSTONE_NS) || (!c.closed && age > self.config.idle_timeout_ns)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            if !self.conns[&k].closed {
                stats.expired_connections += 1;
            }
            self.close(k, now, stats);
            self.conns.remove(&k);
        }
    }

    /// Keep the table under its limit: drop closed connections first, then
    /// finish the least recently active live ones, until a tenth of the
    /// table is free. Stopping as soon as one entry was free would scan the
    /// whole table again for nearly every new connection.
    fn make_room(&mut self, stats: &mut CaptureStats) {
        let max = self.config.max_connections;
        if self.conns.len() < max {
            return;
        }
        self.conns.retain(|_, c| !c.closed);
        let keep = max - (max / 10).max(1).min(max);
        if self.conns.len() <= keep {
            return;
        }
        let mut ages: Vec<(i64, Key)> = self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        let n = ages.len() - keep;
        ages.select_nth_unstable(n - 1);
        let now = self.now_ns;
        for (_, k) in ages.into_iter().take(n) {
            stats.evicted_connections += 1;
            self.close(k, now, stats);
            self.conns.remove(&k);
        }
    }

    /// End of input: finish every connection.
    pub fn finish(&mut self, stats: &mut CaptureStats) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        let now = self.now_ns;
        for k in keys {
            self.close(k, now, stats);
        }
        self.conns.clear();
        stats.memory_truncated_bodies = self.budget.memory_truncated;
        stats.memory_dropped_buffers = self.budget.memory_dropped_buffers;
        stats.interim_answers_dropped = self.budget.interim_dropped;
    }
}

#[allow(clippy::too_many_arguments)]
fn deliver(
    c: &mut Connection,
    side: usize,
    data_seq: u32,
    seg: &Segment<'_>,
    ts: i64,
    cfg: ReassemblyConfig,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    if seg.payload.is_empty() && seg.missing == 0 {
        return;
    }
    let peer_ack = seg
        .flags
        .ack
        .then(|| {
            let p = &c.half[1 - side];
            p.next_seq.map(|n| p.offset_of(seg.ack, n).max(0) as u64)
        })
        .flatten();
    let h = &mut c.half[side];
    let Some(next) = h.next_seq else { return };
    let off = h.offset_of(data_seq, next);
    let len = seg.payload.len() as i64 + i64::from(seg.missing);
    if off - h.next_off as i64 > MAX_WINDOW {
        // Far beyond anything in flight: not this stream (a reused port
        // whose SYN was lost, or garbage). Counted, never a giant gap.
        stats.out_of_window_segments += 1;
        return;
    }
    if off + len <= h.next_off as i64 {
        stats.retransmitted_segments += 1;
        return;
    }
    if off > h.next_off as i64 {
        // A hole before this segment: hold it until the hole fills or is given up.
        stats.out_of_order_segments += 1;
        let size = seg.payload.len() + CHUNK_OVERHEAD;
        let over = |h: &HalfStream, budget: &Budget| {
            h.ooo_bytes + size > cfg.max_conn_buffer || budget.held + size > budget.max
        };
        if over(h, budget) {
            // Over a limit: give up holes, the first first (or the one
            // before this segment), until it fits or is in order, so memory
            // stays bounded. A loop: each hole may free only a byte, and a
            // retry per hole would take stack per hole.
            while over(&c.half[side], budget) && (c.half[side].next_off as i64) < off {
                stats.buffer_overflow_gaps += 1;
                let until = c.half[side]
                    .ooo
                    .first_key_value()
                    .map_or(off as u64, |(&k, _)| k.min(off as u64));
                skip_to(c, side, until, ts, budget, stats);
                drain_ooo(c, side, i64::MIN, budget, stats);
            }
            // Once more, and only once: it now fits, or is in order.
            return deliver(c, side, data_seq, seg, ts, cfg, budget, stats);
        }
        let chunk = Chunk {
            data: seg.payload.to_vec(),
            missing: seg.missing,
            ts,
            peer_ack,
        };
        // Captured bytes first, then the span with bytes not captured.
        let worth = |c: &Chunk| (c.data.len(), c.data.len() + c.missing as usize);
        match h.ooo.entry(off as u64) {
            // Sent again from the same offset: keep the copy with more
            // captured bytes (a re-segmented retransmission may carry less,
            // or one cut by the snap length, and the bytes past it were
            // captured once already).
            std::collections::btree_map::Entry::Occupied(mut held) => {
                if worth(&chunk) > worth(held.get()) {
                    let old = held.get().held();
                    h.ooo_bytes = h.ooo_bytes - old + chunk.held();
                    budget.held = budget.held - old + chunk.held();
                    held.insert(chunk);
                }
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                h.ooo_bytes += chunk.held();
                budget.held += chunk.held();
                slot.insert(chunk);
            }
        }
        return;
    }
    // In order (possibly overlapping what was delivered): pass on the new part.
    let skip = (h.next_off as i64 - off) as usize;
    if skip > 0 {
        stats.overlapping_segments += 1;
    }
    let piece = Piece {
        data: &seg.payload,
        missing: seg.missing,
        ts,
        peer_ack,
    };
    feed_part(c, side, piece, skip, budget, stats);
    drain_ooo(c, side, ts, budget, stats);
}

/// Bytes to pass on: captured data, then `missing` bytes not captured.
struct Piece<'a> {
    data: &'a [u8],
    missing: u32,
    ts: i64,
    peer_ack: Option<u64>,
}

/// Feed a piece minus its first `skip` bytes.
fn feed_part(
    c: &mut Connection,
    side: usize,
    piece: Piece<'_>,
    skip: usize,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    let Piece {
        data,
        missing,
        ts,
        peer_ack,
    } = piece;
    let h = &mut c.half[side];
    let total = data.len() + missing as usize;
    if skip >= total {
        return;
    }
    let fresh = data.get(skip..).unwrap_or(&[]);
    let lost = (total - skip - fresh.len()) as u64;
    h.next_off += (total - skip) as u64;
    h.next_seq = h.next_seq.map(|s| s.wrapping_add((total - skip) as u32));
    if !fresh.is_empty() {
        c.flow.data(side, fresh, ts, peer_ack, budget);
    }
    if lost > 0 {
        stats.gaps += 1;
        stats.gap_bytes += lost;
        c.flow.gap(side, lost, ts, budget);
    }
}

/// Deliver held segments that are now in order. Their bytes could be read
/// only once the hole before them was `filled_at` (i64::MIN when it was
/// given up instead), and each not before the one delivered before it: a
/// message they end ends then, not before its start.
fn drain_ooo(
    c: &mut Connection,
    side: usize,
    mut filled_at: i64,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    loop {
        let h = &mut c.half[side];
        let Some(entry) = h.ooo.first_entry() else {
            return;
        };
        if *entry.key() > h.next_off {
            return;
        }
        let off = *entry.key();
        let chunk = entry.remove();
        h.ooo_bytes -= chunk.held();
        budget.held = budget.held.saturating_sub(chunk.held());
        let skip = (h.next_off - off) as usize;
        filled_at = filled_at.max(chunk.ts);
        let piece = Piece {
            data: &chunk.data,
            missing: chunk.missing,
            ts: filled_at,
            peer_ack: chunk.peer_ack,
        };
        feed_part(c, side, piece, skip, budget, stats);
    }
}

/// Declare the first hole of `side` lost and deliver what follows it.
fn give_up_first_hole(
    c: &mut Connection,
    side: usize,
    ts: i64,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    let Some((&first, _)) = c.half[side].ooo.first_key_value() else {
        return;
    };
    skip_to(c, side, first, ts, budget, stats);
    drain_ooo(c, side, i64::MIN, budget, stats);
}

/// Declare the bytes from the next expected offset up to `until` lost.
fn skip_to(
    c: &mut Connection,
    side: usize,
    until: u64,
    ts: i64,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    let h = &mut c.half[side];
    if until <= h.next_off {
        return;
    }
    let len = until - h.next_off;
    h.next_off = until;
    h.next_seq = h.next_seq.map(|s| s.wrapping_add(len as u32));
    stats.gaps += 1;
    stats.gap_bytes += len;
    c.flow.gap(side, len, ts, budget);
}

/// A direction of which no byte was captured, although its peer
/// acknowledged some (a lone response lost whole): a gap, so the request it
/// answered is flagged rather than written as unanswered.
fn unseen_stream(
    c: &mut Connection,
    side: usize,
    ts: i64,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    let h = &mut c.half[side];
    let (Some(first), Some(last), None) = (h.acked_by_peer, h.acked_by_peer_last, h.next_seq)
    else {
        return;
    };
    let len = i64::from(last.wrapping_sub(first) as i32);
    if (1..=MAX_UNSEEN_ACK).contains(&len) && !h.ended {
        h.next_seq = Some(first);
        c.flow.set_clean_start(side, false);
        skip_to(c, side, len as u64, ts, budget, stats);
    }
}

/// Give up every hole of `side` (the connection is ending).
fn flush_holes(
    c: &mut Connection,
    side: usize,
    ts: i64,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    while !c.half[side].ooo.is_empty() {
        give_up_first_hole(c, side, ts, budget, stats);
    }
    // Bytes acknowledged before the FIN but never seen.
    if let Some(fin) = c.half[side].fin_off.filter(|_| !c.half[side].ended) {
        skip_to(c, side, fin, ts, budget, stats);
    }
    // Closed only if its sender's FIN was seen; else reset, expired,
    // evicted, or the capture ended.
    let closed = c.half[side].fin_off.is_some();
    end_side(c, side, ts, closed, budget);
}

/// The peer acknowledged bytes of `side` up to `ack`: holes before that are lost.
fn ack_gaps(
    c: &mut Connection,
    side: usize,
    ack: u32,
    ts: i64,
    budget: &mut Budget,
    stats: &mut CaptureStats,
) {
    // Every hole before the acknowledged point is lost, not just the first:
    // data held behind a later hole must reach the parser before the
    // segment carrying this ack (a request before its response).
    loop {
        let h = &c.half[side];
        let Some(next) = h.next_seq else { return };
        // A FIN takes a sequence number but holds no byte: acknowledging
        // it acknowledges nothing past the stream's end.
        let acked = h.offset_of(ack, next);
        let acked = h.fin_off.map_or(acked, |f| acked.min(f as i64));
        if acked <= h.next_off as i64 || h.ended {
            return;
        }
        match h.ooo.first_key_value() {
            // Acknowledged past a hole: the hole is certainly lost.
            Some((&first, _)) if acked >= first as i64 => {
                give_up_first_hole(c, side, ts, budget, stats);
                check_fin(c, side, ts, budget);
            }
            Some(_) => return,
            // Acknowledged bytes we never saw (and, in capture order, never
            // will): lost now, so the next response does not pair with the
            // wrong request. A wild ack (beyond any sane window) is ignored.
            None if acked - (h.next_off as i64) <= MAX_UNSEEN_ACK => {
                let until = acked as u64;
                skip_to(c, side, until, ts, budget, stats);
                return;
            }
            None => return,
        }
    }
}

/// Farthest ahead of the next expected byte a segment may start.
const MAX_WINDOW: i64 = 32 << 20;

/// Largest run of acknowledged-but-unseen bytes taken as a loss.
const MAX_UNSEEN_ACK: i64 = 16 << 20;

fn check_fin(c: &mut Connection, side: usize, ts: i64, budget: &mut Budget) {
    let h = &c.half[side];
    if h.fin_off.is_some_and(|f| h.next_off >= f) && !h.ended {
        end_side(c, side, ts, true, budget);
    }
}

fn end_side(c: &mut Connection, side: usize, ts: i64, closed: bool, budget: &mut Budget) {
    if !c.half[side].ended {
        c.half[side].ended = true;
        c.flow.end_as(side, ts, closed, budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::net::Flags;
    use proptest::prelude::*;
    use std::borrow::Cow;

    const C: &str = "192.0.2.1:50000";
    const S: &str = "192.0.2.2:8080";

    #[derive(Clone)]
    struct Seg {
        from_client: bool,
        seq: u32,
        ack: u32,
        data: Vec<u8>,
        flags: Flags,
    }

    fn handshake(cisn: u32, sisn: u32) -> Vec<Seg> {
        let f = |syn, ack| Flags {
            syn,
            ack,
            ..Default::default()
        };
        vec![
            Seg {
                from_client: true,
                seq: cisn,
                ack: 0,
                data: vec![],
                flags: f(true, false),
            },
            Seg {
                from_client: false,
                seq: sisn,
                ack: cisn.wrapping_add(1),
                data: vec![],
                flags: f(true, true),
            },
        ]
    }

    /// Cut a stream into segments of the given sizes, starting at `isn + 1`.
    /// Each segment acknowledges `ack` (what the sender had received).
    fn cut(stream: &[u8], isn: u32, ack: u32, from_client: bool, sizes: &[usize]) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut at = 0;
        for s in sizes.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + s).min(stream.len());
            out.push(Seg {
                from_client,
                seq: isn.wrapping_add(1).wrapping_add(at as u32),
                ack,
                data: stream[at..end].to_vec(),
                flags: Flags {
                    ack: true,
                    ..Default::default()
                },
            });
            at = end;
        }
        out
    }

    fn feed(segs: &[Seg]) -> (Vec<Exchange>, CaptureStats) {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let mut stats = CaptureStats::default();
        for (i, s) in segs.iter().enumerate() {
            let (src, dst) = if s.from_client { (C, S) } else { (S, C) };
            let seg = Segment {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                seq: s.seq,
                ack: s.ack,
                flags: s.flags,
                payload: Cow::Borrowed(&s.data),
                missing: 0,
            };
            r.segment(&seg, i as i64, &mut stats);
        }
        r.finish(&mut stats);
        (r.take_exchanges(), stats)
    }

    fn streams(n: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for i in 0..n {
            let body = format!("body-{i}-").repeat(i % 7 + 1);
            c.extend_from_slice(
                format!(
                    "POST /r/{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            let reply = format!("reply {i}");
            s.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                )
                .as_bytes(),
            );
        }
        (c, s)
    }

    type Key4 = (String, Vec<u8>, Option<u16>, Vec<u8>);

    fn key(out: &[Exchange]) -> Vec<Key4> {
        let mut k: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.target.clone(),
                    e.request_body.clone(),
                    e.status,
                    e.response_body.clone(),
                )
            })
            .collect();
        k.sort();
        k
    }

    /// Request i, then its response, and so on (keep-alive, not pipelined),
    /// each segment acknowledging what its sender had received.
    fn conversation(cisn: u32, sisn: u32, sizes: &[usize]) -> Vec<Seg> {
        let mut segs = handshake(cisn, sisn);
        let (mut c_at, mut s_at) = (0u32, 0u32);
        for i in 0..6 {
            let (c, s) = one_exchange(i);
            let c_isn = cisn.wrapping_add(c_at);
            let s_isn = sisn.wrapping_add(s_at);
            segs.extend(cut(
                &c,
                c_isn,
                sisn.wrapping_add(1).wrapping_add(s_at),
                true,
                sizes,
            ));
            c_at += c.len() as u32;
            segs.extend(cut(
                &s,
                s_isn,
                cisn.wrapping_add(1).wrapping_add(c_at),
                false,
                sizes,
            ));
            s_at += s.len() as u32;
        }
        segs
    }

    fn one_exchange(i: usize) -> (Vec<u8>, Vec<u8>) {
        let body = format!("body-{i}-").repeat(i % 7 + 1);
        let reply = format!("reply {i}");
        (
            format!(
                "POST /r/{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            )
            .into_bytes(),
        )
    }

    #[test]
    fn a_reset_far_outside_the_stream_ends_nothing() {
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let end = 101 + req.len() as u32;
        let rst = |seq: u32| Seg {
            from_client: true,
            seq,
            ack: 501,
            data: vec![],
            flags: Flags {
                rst: true,
                ..Default::default()
            },
        };
        // The conversation with a reset at `seq` between request and answer.
        let with_reset = |seq: u32| {
            let mut segs = handshake(100, 500);
            segs.extend(cut(req, 100, 501, true, &[100]));
            segs.push(rst(seq));
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            segs.extend(cut(answer, 500, end, false, &[100]));
            feed(&segs)
        };
        let (got, stats) = with_reset(end.wrapping_add(1 << 30));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, Some(200));
        assert_eq!(stats.out_of_window_segments, 1);
        // In the stream, a reset ends the connection: the answer after it
        // is late.
        let (got, stats) = with_reset(end);
        assert!(got.iter().all(|e| e.status.is_none()), "{got:?}");
        assert_eq!(stats.late_segments, 1);
    }

    #[test]
    fn a_new_connection_on_the_ports_of_one_picked_up_mid_stream_is_its_own() {
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        // No handshake seen, and no FIN or RST: the capture began and the
        // old connection's end was lost.
        let mut segs = cut(req, 100, 501, true, &[100]);
        segs.extend(cut(resp, 500, 101 + req.len() as u32, false, &[100]));
        let (cisn, sisn) = (100u32.wrapping_add(1 << 31), 7_000);
        segs.extend(handshake(cisn, sisn));
        segs.extend(cut(req, cisn, sisn + 1, true, &[100]));
        segs.extend(cut(resp, sisn, cisn + 1 + req.len() as u32, false, &[100]));
        let (got, stats) = feed(&segs);
        assert_eq!(stats.port_reuse, 1, "{stats:?}");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|e| e.status == Some(200)));
        assert_ne!(got[0].flow_id, got[1].flow_id);
    }

    #[test]
    fn acknowledging_a_fin_behind_a_hole_loses_only_the_hole() {
        let req = b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        let mut segs = handshake(100, 500);
        let parts = cut(req, 100, 501, true, &[20, 100]);
        segs.push(parts[1].clone()); // the first part is never captured
        let end = 101 + req.len() as u32;
        segs.push(Seg {
            from_client: true,
            seq: end,
            ack: 501,
            data: vec![],
            flags: Flags {
                fin: true,
                ack: true,
                ..Default::default()
            },
        });
        // The server acknowledges everything, the FIN included.
        segs.extend(cut(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            500,
            end + 1,
            false,
            &[100],
        ));
        let (_, stats) = feed(&segs);
        assert_eq!((stats.gaps, stats.gap_bytes), (1, 20), "{stats:?}");
    }

    #[test]
    fn a_message_completed_by_a_late_segment_ends_when_it_came() {
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
        let mut segs = handshake(100, 500);
        segs.extend(cut(req, 100, 501, true, &[req.len()]));
        let mut answer = cut(resp, 500, 101 + req.len() as u32, false, &[20, 100]);
        answer.reverse(); // its head is lost and comes again after the rest
        segs.extend(answer);
        let (got, _) = feed(&segs);
        assert_eq!(got.len(), 1);
        // The head came at 4 (after the body's end at 3): the answer could
        // be read whole only then.
        assert_eq!(
            (got[0].response_ts, got[0].response_end_ts),
            (Some(4), Some(4))
        );
    }

    proptest! {
        /// Reordered, duplicated and overlapping segments give the same
        /// exchanges as in-order delivery, across sequence-number wrap.
        #[test]
        fn reordering_and_duplicates_do_not_change_the_result(
            cisn in prop_oneof![Just(u32::MAX - 50), any::<u32>()],
            sisn in any::<u32>(),
            sizes in proptest::collection::vec(1usize..60, 1..8),
            swaps in proptest::collection::vec((0usize..200, 0usize..200), 0..30),
            dups in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let ordered = conversation(cisn, sisn, &sizes);
            let (expected, _) = feed(&ordered);
            prop_assert_eq!(expected.len(), 6);
            let mut segs = conversation(cisn, sisn, &sizes);
            // Local reordering, as networks do it: a segment moves a few
            // places, past others of the same direction.
            let n = segs.len();
            for (a, b) in swaps {
                let i = 2 + a % (n - 2);
                let j = (i + 1 + b % 3).min(n - 1);
                if (i..=j).all(|k| segs[k].from_client == segs[i].from_client) {
                    segs.swap(i, j);
                }
            }
            for d in dups {
                let i = 2 + d % (n - 2);
                let copy = segs[i].clone();
                segs.insert(i, copy);
            }
            // An overlapping retransmission: two neighbours merged into one segment.
            if let Some(pos) = (2..segs.len() - 1).find(|&i| ordered.len() > 3 && segs[i].from_client && segs[i + 1].from_client && segs[i].seq.wrapping_add(segs[i].data.len() as u32) == segs[i + 1].seq) {
                let mut merged = segs[pos].data.clone();
                merged.extend_from_slice(&segs[pos + 1].data);
                segs.push(Seg { data: merged, ..segs[pos].clone() });
            }
            let (got, _) = feed(&segs);
            prop_assert_eq!(key(&got), key(&expected));
            // Held segments end a message no earlier than it started.
            for e in &got {
                prop_assert!(e.request_end_ts >= e.request_ts, "{:?}", e);
                if let (Some(start), Some(end)) = (e.response_ts, e.response_end_ts) {
                    prop_assert!(end >= start, "{:?}", e);
                }
            }
        }

        /// A dropped segment costs at most the exchanges it touches; the
        /// others come out intact and nothing panics.
        #[test]
        fn lost_segments_are_gaps_not_crashes(
            sizes in proptest::collection::vec(5usize..80, 1..6),
            drop in 2usize..100,
        ) {
            let (expected, _) = feed(&conversation(1000, 5000, &sizes));
            let mut segs = conversation(1000, 5000, &sizes);
            let i = 2 + drop % (segs.len() - 2);
            segs.remove(i);
            let (got, _) = feed(&segs);
            let want = key(&expected);
            let intact = key(&got).into_iter().filter(|k| want.contains(k)).count();
            // One lost segment damages at most two exchanges (one message may
            // straddle two) plus the one whose start it held.
            prop_assert!(intact + 3 >= want.len(), "intact {intact} of {}: got {:?}\nwant {:?}", want.len(), key(&got), want);
        }
    }

    /// One generated exchange: request and response bytes, and what the
    /// row must hold if it is written complete.
    struct Made {
        request: Vec<u8>,
        response: Vec<u8>,
        target: String,
        status: u16,
        body: Vec<u8>,
    }

    fn make_exchange(i: usize, shape: u8) -> Made {
        let target = format!("/p/{i}");
        let body = format!("answer-{i}-").repeat(usize::from(shape % 5) + 1);
        let status = 200 + (i % 3) as u16;
        let (request, response, body) = match shape % 6 {
            // HEAD: a Content-Length without a body; framing depends on the pair.
            0 => (
                format!("HEAD {target} HTTP/1.1\r\nHost: h\r\n\r\n"),
                format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                ),
                String::new(),
            ),
            1 => (
                format!("GET {target} HTTP/1.1\r\n\r\n"),
                format!(
                    "HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                ),
                body,
            ),
            2 => (
                format!("POST {target} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
                "HTTP/1.1 204 X\r\n\r\n".to_string(),
                String::new(),
            ),
            _ => {
                let req_body = format!("q{i}").repeat(usize::from(shape));
                (
                    format!(
                        "POST {target} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{req_body}",
                        req_body.len()
                    ),
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                    body,
                )
            }
        };
        let status = if shape % 6 == 2 { 204 } else { status };
        Made {
            request: request.into_bytes(),
            response: response.into_bytes(),
            target,
            status,
            body: body.into_bytes(),
        }
    }

    /// A connection: requests sent in bursts of `burst` (1 = the client waits
    /// for each answer), each burst answered in order; data segments cut at
    /// `sizes`, each acknowledging what its sender had received; the
    /// receiver acknowledges each burst with a pure ACK; FIN from both.
    fn generated(made: &[Made], burst: usize, sizes: &[usize]) -> Vec<Seg> {
        let (cisn, sisn) = (7_000u32, 90_000u32);
        let mut segs = handshake(cisn, sisn);
        let (mut c_at, mut s_at) = (0u32, 0u32);
        let pure_ack = |from_client: bool, seq: u32, ack: u32| Seg {
            from_client,
            seq,
            ack,
            data: vec![],
            flags: Flags {
                ack: true,
                ..Default::default()
            },
        };
        for group in made.chunks(burst) {
            let c: Vec<u8> = group.iter().flat_map(|m| m.request.clone()).collect();
            let s_ack = sisn.wrapping_add(1).wrapping_add(s_at);
            segs.extend(cut(&c, cisn.wrapping_add(c_at), s_ack, true, sizes));
            c_at += c.len() as u32;
            let c_ack = cisn.wrapping_add(1).wrapping_add(c_at);
            segs.push(pure_ack(
                false,
                sisn.wrapping_add(1).wrapping_add(s_at),
                c_ack,
            ));
            for m in group {
                segs.extend(cut(
                    &m.response,
                    sisn.wrapping_add(s_at),
                    c_ack,
                    false,
                    sizes,
                ));
                s_at += m.response.len() as u32;
            }
            let s_ack = sisn.wrapping_add(1).wrapping_add(s_at);
            segs.push(pure_ack(
                true,
                cisn.wrapping_add(1).wrapping_add(c_at),
                s_ack,
            ));
        }
        let fin = |from_client: bool, seq: u32, ack: u32| Seg {
            flags: Flags {
                ack: true,
                fin: true,
                ..Default::default()
            },
            ..pure_ack(from_client, seq, ack)
        };
        let (c_end, s_end) = (
            cisn.wrapping_add(1).wrapping_add(c_at),
            sisn.wrapping_add(1).wrapping_add(s_at),
        );
        segs.push(fin(true, c_end, s_end));
        segs.push(fin(false, s_end, c_end.wrapping_add(1)));
        segs
    }

    /// Feed a generated connection after dropping, duplicating and swapping
    /// segments; also says whether data was dropped, and where.
    fn damaged(
        made: &[Made],
        burst: usize,
        sizes: &[usize],
        drops: &[u16],
        dups: &[u16],
        swaps: &[(u16, usize)],
    ) -> (Vec<Exchange>, CaptureStats, bool, Vec<usize>) {
        let mut segs = generated(made, burst, sizes);
        // The handshake and the FINs stay; anything between may go.
        let first = 2;
        let body = first..segs.len() - 2;
        let mut dropped_data = false;
        let mut drop_at: Vec<usize> = drops
            .iter()
            .map(|&d| body.start + usize::from(d) % body.len())
            .collect();
        drop_at.sort_unstable();
        drop_at.dedup();
        for &i in drop_at.iter().rev() {
            dropped_data |= !segs[i].data.is_empty();
            segs.remove(i);
        }
        let inner = first..segs.len() - 2;
        for &d in dups {
            if inner.is_empty() {
                break;
            }
            let i = inner.start + usize::from(d) % inner.len();
            let copy = segs[i].clone();
            segs.insert(i + 1, copy);
        }
        for &(a, by) in swaps {
            let inner = first..segs.len() - 2;
            if inner.len() < 2 {
                break;
            }
            let i = inner.start + usize::from(a) % inner.len();
            let j = (i + by).min(inner.end - 1);
            // Networks reorder within a direction; a capture never sees
            // an answer before what it answers.
            if (i..=j).all(|k| segs[k].from_client == segs[i].from_client) {
                segs.swap(i, j);
            }
        }
        let (out, stats) = feed(&segs);
        (out, stats, dropped_data, drop_at)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PAIRING_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
        ))]
        /// Whatever is lost, duplicated or reordered, a row written complete
        /// holds exactly the request and response the generator paired, no
        /// request is written twice, and every loss is counted.
        #[test]
        fn pairing_after_loss_is_never_wrong(
            shapes in proptest::collection::vec(any::<u8>(), 1..14),
            pipelined in any::<bool>(),
            burst in 2usize..5,
            sizes in proptest::collection::vec(1usize..70, 1..6),
            drops in proptest::collection::vec(any::<u16>(), 0..6),
            dups in proptest::collection::vec(any::<u16>(), 0..3),
            swaps in proptest::collection::vec((any::<u16>(), 1usize..4), 0..4),
        ) {
            let made: Vec<Made> = shapes.iter().enumerate().map(|(i, &s)| make_exchange(i, s)).collect();
            let burst = if pipelined { burst } else { 1 };
            let (out, stats, dropped_data, drop_at) = damaged(&made, burst, &sizes, &drops, &dups, &swaps);
            let mut seen = std::collections::HashSet::new();
            for e in &out {
                // A start line cut by a loss inside its target ("POST /")
                // is kept, flagged; any whole request is written once.
                let named = !e.http_version.is_empty() && made.iter().any(|m| m.target == e.target);
                prop_assert!(!named || seen.insert(e.target.clone()), "{} written twice", e.target);
                if e.incomplete.is_some() {
                    continue;
                }
                let m = made.iter().find(|m| m.target == e.target);
                prop_assert!(m.is_some(), "unknown target {}", e.target);
                let m = m.unwrap();
                prop_assert_eq!(e.status, Some(m.status), "{} carries another status", &e.target);
                prop_assert_eq!(&e.response_body, &m.body, "{} carries another body", &e.target);
            }
            if dropped_data {
                prop_assert!(stats.gaps > 0, "a lost data segment was not counted: {stats:?}");
            }
            if drop_at.is_empty() {
                prop_assert_eq!(out.len(), made.len());
                prop_assert!(out.iter().all(|e| e.incomplete.is_none()), "{out:?}");
            }
        }
    }

    #[test]
    fn port_reuse_starts_a_new_flow() {
        let (c, s) = streams(1);
        let mut segs = handshake(100, 900);
        let end = |isn: u32| isn + 1 + c.len() as u32;
        segs.extend(cut(&c, 100, 901, true, &[1000]));
        segs.extend(cut(&s, 900, end(100), false, &[1000]));
        segs.extend(handshake(77_777, 55_555));
        segs.extend(cut(&c, 77_777, 55_556, true, &[1000]));
        segs.extend(cut(&s, 55_555, end(77_777), false, &[1000]));
        let (out, stats) = feed(&segs);
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].flow_id, out[1].flow_id);
        assert_eq!(stats.port_reuse, 1);
        assert!(out
            .iter()
            .all(|e| e.status == Some(200) && e.incomplete.is_none()));
    }

    #[test]
    fn mid_stream_pickup_and_syn_data() {
        let (c, s) = streams(2);
        let ((c0, s0), (c1, _)) = (one_exchange(0), one_exchange(1));
        // No handshake at all, and the capture starts inside the first
        // request (byte 10 at seq 110); each answer acknowledges its request.
        let mut segs = cut(&c[10..], 109, 901, true, &[1000]);
        segs.extend(cut(
            &s[..s0.len()],
            900,
            100 + c0.len() as u32,
            false,
            &[1000],
        ));
        let s1_isn = 900 + s0.len() as u32;
        let end = 100 + (c0.len() + c1.len()) as u32;
        segs.extend(cut(&s[s0.len()..], s1_isn, end, false, &[1000]));
        let (out, stats) = feed(&segs);
        assert_eq!(
            out.len(),
            1,
            "the cut first request is skipped: {out:?} {stats:?}"
        );
        assert_eq!(out[0].target, "/r/1");
        assert_eq!(out[0].status, Some(200));
        // Its own answer: the first one answered the request cut by the start.
        assert_eq!(out[0].response_body, b"reply 1");
        assert!(out[0].incomplete.is_none());
        // TCP Fast Open: the request travels in the SYN.
        let mut tfo = vec![Seg {
            from_client: true,
            seq: 10,
            ack: 0,
            data: c.clone(),
            flags: Flags {
                syn: true,
                ..Default::default()
            },
        }];
        tfo.push(Seg {
            from_client: false,
            seq: 20,
            ack: 0,
            data: vec![],
            flags: Flags {
                syn: true,
                ack: true,
                ..Default::default()
            },
        });
        tfo.extend(cut(&s, 20, 11 + c.len() as u32, false, &[1000]));
        let (out, _) = feed(&tfo);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn idle_connections_expire_and_holes_overflow_into_counted_gaps() {
        let mut r = Reassembler::new(ReassemblyConfig {
            idle_timeout_ns: 5_000_000_000,
            max_conn_buffer: 100,
            ..Default::default()
        });
        let mut stats = CaptureStats::default();
        let seg = |src: &str, seq: u32, data: &'static [u8]| Segment {
            src: src.parse().unwrap(),
            dst: S.parse().unwrap(),
            seq,
            ack: 0,
            flags: Flags::default(),
            payload: Cow::Borrowed(data),
            missing: 0,
        };
        // A request, then 10 s of silence: the connection is finished.
        r.segment(&seg(C, 1, b"GET /idle HTTP/1.1\r\n\r\n"), 0, &mut stats);
        r.segment(
            &seg("192.0.2.9:1", 1, b"GET /other HTTP/1.1\r\n\r\n"),
            10_000_000_000,
            &mut stats,
        );
        assert_eq!(stats.expired_connections, 1);
        assert!(r
            .take_exchanges()
            .iter()
            .any(|e| e.target == "/idle" && e.status.is_none()));
        // Out-of-order data beyond the per-direction limit becomes a gap.
        let mut seq = 1000;
        for _ in 0..10 {
            seq += 200;
            r.segment(
                &seg("192.0.2.9:1", seq, &[b'x'; 60]),
                10_000_000_001,
                &mut stats,
            );
        }
        assert!(
            stats.buffer_overflow_gaps > 0 && stats.gaps > 0,
            "{stats:?}"
        );
        r.finish(&mut stats);
    }

    /// Thousands of one-byte holes, then a segment that needs room: they are
    /// given up in a loop. A retry per hole took a stack frame (and a copy
    /// of the segment) per hole, and overflowed the stack.
    #[test]
    fn a_segment_over_the_limit_gives_up_many_holes_without_recursing() {
        // Room for 99,999 one-byte chunks, each charged its overhead.
        let max = 99_999 * (1 + CHUNK_OVERHEAD) + 10;
        let mut r = Reassembler::new(ReassemblyConfig {
            max_conn_buffer: max,
            ..Default::default()
        });
        let mut stats = CaptureStats::default();
        let seg = |seq: u32, payload: Cow<'static, [u8]>| Segment {
            src: "192.0.2.10:1".parse().unwrap(),
            dst: S.parse().unwrap(),
            seq,
            ack: 0,
            flags: Flags::default(),
            payload,
            missing: 0,
        };
        let head: &'static [u8] = b"POST /big HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n";
        r.segment(&seg(1, Cow::Borrowed(head)), 0, &mut stats);
        let body = 1 + head.len() as u32;
        // 99,999 bytes held, each behind a one-byte hole.
        for i in 0..99_999u32 {
            r.segment(&seg(body + 1 + 2 * i, Cow::Borrowed(b"x")), 1, &mut stats);
        }
        assert_eq!(stats.buffer_overflow_gaps, 0, "{stats:?}");
        let far = body + 2 * 100_000;
        // Room for 30,000 chunks' worth: as many holes given up, first first.
        let big = 30_000 * (1 + CHUNK_OVERHEAD) - CHUNK_OVERHEAD;
        r.segment(&seg(far, Cow::Owned(vec![b'y'; big])), 2, &mut stats);
        assert!(
            (29_000..=31_000).contains(&stats.buffer_overflow_gaps),
            "{stats:?}"
        );
        let held: usize = r
            .conns
            .values()
            .flat_map(|c| c.half.iter().map(|h| h.ooo_bytes))
            .sum();
        assert!(held > 0 && held <= max, "{held} bytes held");
        // One-byte segments are charged what holding them costs: a 10 kB
        // limit holds about a hundred, not ten thousand.
        let mut small = Reassembler::new(ReassemblyConfig {
            max_conn_buffer: 10_000,
            ..Default::default()
        });
        small.segment(&seg(1, Cow::Borrowed(head)), 0, &mut stats);
        for i in 0..10_000u32 {
            small.segment(&seg(body + 1 + 2 * i, Cow::Borrowed(b"x")), 1, &mut stats);
        }
        let chunks: usize = small.conns.values().map(|c| c.half[0].ooo.len()).sum();
        assert!(
            chunks <= 10_000 / (1 + CHUNK_OVERHEAD),
            "{chunks} chunks held"
        );
        r.finish(&mut stats);
        assert!(r.take_exchanges().iter().any(|e| e.target == "/big"));
    }

    /// Held: bytes 20..50; then a retransmission of 20..30 alone at the
    /// same offset, then 5..20 fills the hole. The longer copy is kept.
    #[test]
    fn a_shorter_retransmission_does_not_replace_a_longer_held_segment() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let mut stats = CaptureStats::default();
        let req: &'static [u8] = b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        let seg = |at: usize, to: usize| Segment {
            src: C.parse().unwrap(),
            dst: S.parse().unwrap(),
            seq: 1 + at as u32,
            ack: 0,
            flags: Flags::default(),
            payload: Cow::Borrowed(&req[at..to]),
            missing: 0,
        };
        for (at, to) in [(0, 5), (20, req.len()), (20, 30), (5, 20)] {
            r.segment(&seg(at, to), 1, &mut stats);
        }
        r.finish(&mut stats);
        let out = r.take_exchanges();
        assert_eq!(stats.gaps, 0, "{stats:?}");
        let e = out.iter().find(|e| e.target == "/a").expect("the request");
        assert_eq!(e.request_body, b"0123456789");
    }

    /// A full table where a closed connection frees one entry: room is
    /// made for a tenth of the table at once, not one entry per scan.
    #[test]
    fn a_full_table_makes_room_for_a_tenth_at_once() {
        let mut r = Reassembler::new(ReassemblyConfig {
            max_connections: 100,
            ..Default::default()
        });
        let mut stats = CaptureStats::default();
        let seg = |port: u16, rst: bool| Segment {
            src: SocketAddr::new("192.0.2.1".parse().unwrap(), 10_000 + port),
            dst: S.parse().unwrap(),
            seq: 1,
            ack: 0,
            flags: Flags {
                rst,
                ..Default::default()
            },
            payload: Cow::Borrowed(if rst { b"" } else { b"GET / HTTP/1.1\r\n\r\n" }),
            missing: 0,
        };
        for port in 0..100u16 {
            r.segment(&seg(port, false), i64::from(port), &mut stats);
        }
        r.segment(&seg(0, true), 200, &mut stats);
        assert_eq!(r.connections(), 100, "the reset one is kept a while");
        r.segment(&seg(500, false), 300, &mut stats);
        assert_eq!(stats.evicted_connections, 9, "{stats:?}");
        assert_eq!(r.connections(), 91);
        r.finish(&mut stats);
    }

    /// A body that runs to the close, ended by the server's FIN, by a
    /// reset, or by the end of the capture: only the FIN makes it whole.
    #[test]
    fn a_body_to_the_close_is_whole_only_after_the_servers_fin() {
        let req: &[u8] = b"GET /events HTTP/1.1\r\n\r\n";
        let resp: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: 1\n\n";
        let (after_req, after_resp) = (101 + req.len() as u32, 901 + resp.len() as u32);
        for end in ["fin", "rst", "capture"] {
            let mut segs = handshake(100, 900);
            segs.extend(cut(req, 100, 901, true, &[req.len()]));
            segs.extend(cut(resp, 900, after_req, false, &[resp.len()]));
            let (from_client, seq, ack, flags) = match end {
                "fin" => (
                    false,
                    after_resp,
                    after_req,
                    Flags {
                        fin: true,
                        ack: true,
                        ..Default::default()
                    },
                ),
                _ => (
                    true,
                    after_req,
                    0,
                    Flags {
                        rst: true,
                        ..Default::default()
                    },
                ),
            };
            if end != "capture" {
                segs.push(Seg {
                    from_client,
                    seq,
                    ack,
                    data: vec![],
                    flags,
                });
            }
            let (out, _) = feed(&segs);
            let e = out.iter().find(|e| e.target == "/events").expect(end);
            assert_eq!(e.response_body, b"data: 1\n\n", "{end}");
            let cut_short = Some(crate::schema::IncompleteReason::ResponseCut);
            let want = if end == "fin" { None } else { cut_short };
            assert_eq!(e.incomplete, want, "{end}: {e:?}");
        }
    }

    /// Segments of many connections, each from its own client port.
    fn seg_from(port: u16, to_server: bool, seq: u32, data: &[u8]) -> Segment<'_> {
        let client = SocketAddr::new("192.0.2.1".parse().unwrap(), port);
        let server: SocketAddr = S.parse().unwrap();
        let (src, dst) = if to_server {
            (client, server)
        } else {
            (server, client)
        };
        Segment {
            src,
            dst,
            seq,
            ack: 0,
            flags: Flags::default(),
            payload: Cow::Borrowed(data),
            missing: 0,
        }
    }

    /// More pipelined requests than `max_pending` wait for answers: the
    /// oldest are given up, and the answers that come later are never
    /// filed under the wrong request (each answer names its request).
    #[test]
    fn past_max_pending_the_oldest_requests_are_given_up_never_mispaired() {
        let mut r = Reassembler::new(ReassemblyConfig {
            flow: FlowLimits {
                max_body: 1 << 20,
                max_pending: 4,
            },
            ..Default::default()
        });
        let mut stats = CaptureStats::default();
        let (mut cseq, mut sseq) = (1u32, 1u32);
        for i in 0..10 {
            let req = format!("GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n");
            r.segment(&seg_from(40_000, true, cseq, req.as_bytes()), i, &mut stats);
            cseq += req.len() as u32;
        }
        for i in 0..10 {
            let body = format!("/r{i}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            r.segment(
                &seg_from(40_000, false, sseq, resp.as_bytes()),
                100 + i,
                &mut stats,
            );
            sseq += resp.len() as u32;
        }
        r.finish(&mut stats);
        let out = r.take_exchanges();
        assert_eq!(out.len(), 10, "every request is written: {out:?}");
        let answered: Vec<&Exchange> = out.iter().filter(|e| e.status.is_some()).collect();
        for e in &out {
            if e.status.is_some() && e.incomplete.is_none() {
                assert_eq!(e.response_body, e.target.as_bytes(), "{e:?}");
            }
        }
        let given_up = out.iter().filter(|e| e.status.is_none()).count();
        assert!(given_up >= 6, "{given_up} given up: {out:?}");
        assert!(answered.len() <= 4);
    }

    /// A reassembler whose parsers may hold `max` bytes in all.
    fn capped(max: usize) -> (Reassembler, CaptureStats) {
        let r = Reassembler::new(ReassemblyConfig {
            max_buffer_bytes: max,
            ..Default::default()
        });
        (r, CaptureStats::default())
    }

    /// Partial heads count against `--max-buffer-bytes`: forty connections
    /// each holding 20 KiB of an unfinished head held 800 KiB past a 64 KiB
    /// cap. Past the cap a head is dropped and its request marked, never
    /// completed with someone else's bytes; the rest pair as usual.
    #[test]
    fn partial_heads_count_against_the_memory_cap() {
        let max = 64 << 10;
        let (mut r, mut stats) = capped(max);
        let pad = vec![b'a'; 20 << 10];
        let heads: Vec<Vec<u8>> = (0..40u16)
            .map(|i| [format!("GET /{i} HTTP/1.1\r\nX-Pad: ").as_bytes(), &pad].concat())
            .collect();
        for (i, head) in heads.iter().enumerate() {
            r.segment(&seg_from(20_000 + i as u16, true, 1, head), 1, &mut stats);
            assert!(r.held_bytes() <= max, "{} held", r.held_bytes());
        }
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for (i, head) in heads.iter().enumerate() {
            let port = 20_000 + i as u16;
            r.segment(
                &seg_from(port, true, 1 + head.len() as u32, b"\r\n\r\n"),
                2,
                &mut stats,
            );
            r.segment(&seg_from(port, false, 1, response), 3, &mut stats);
            assert!(r.held_bytes() <= max, "{} held", r.held_bytes());
        }
        r.finish(&mut stats);
        assert_eq!(r.held_bytes(), 0, "all released at the end");
        assert!(stats.memory_dropped_buffers >= 30, "{stats:?}");
        let out = r.take_exchanges();
        let whole: Vec<&Exchange> = out.iter().filter(|e| e.incomplete.is_none()).collect();
        assert!(
            whole.len() >= 3,
            "the heads that fit are kept: {}",
            whole.len()
        );
        for e in &whole {
            let port = e.client.unwrap().port() - 20_000;
            assert_eq!(e.target, format!("/{port}"));
            assert_eq!(e.status, Some(200));
            assert_eq!(
                e.request_headers.get("x-pad").map(<[u8]>::len),
                Some(20 << 10)
            );
        }
    }

    /// The arrival times kept for an event stream (one a packet) count
    /// against `--max-buffer-bytes` with its bytes: a token stream of one
    /// small event a packet held more again than the cap beside it. Past
    /// the cap the body is cut (by one entry's 16 bytes at most over it)
    /// and every event kept has its time.
    #[test]
    fn event_arrival_times_count_against_the_memory_cap() {
        let max = 12_000;
        let (mut r, mut stats) = capped(max);
        let req = b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n";
        r.segment(&seg_from(40_000, true, 1, req), 1, &mut stats);
        let event = b"data: tok\n\n";
        let n = 1000;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n",
            n * event.len()
        );
        r.segment(&seg_from(40_000, false, 1, head.as_bytes()), 2, &mut stats);
        let mut seq = 1 + head.len() as u32;
        let mut peak = 0;
        for i in 0..n {
            let ts = 1_000 * (3 + i as i64);
            r.segment(&seg_from(40_000, false, seq, event), ts, &mut stats);
            seq += event.len() as u32;
            peak = peak.max(r.held_bytes());
        }
        assert!(peak <= max + 16, "{peak} held");
        r.finish(&mut stats);
        assert_eq!(r.held_bytes(), 0, "all released at the end");
        let out = r.take_exchanges();
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert!(e.response_body_truncated, "{e:?}");
        assert_eq!(stats.memory_truncated_bodies, 1);
        // Each event kept costs its 11 bytes and its 16-byte time (the
        // cut one's too, and one entry over the cap): 445 of the 1,000.
        let kept = e.response_event_offsets_ns.as_ref().unwrap().len();
        assert!(
            (max - 100..=max + 27 + 16).contains(&(kept * 27)),
            "{kept} events kept"
        );
    }

    /// A body cut at the memory cap stays cut when room frees up later:
    /// storing the bytes that came after would close the hole silently.
    #[test]
    fn a_body_cut_at_the_memory_cap_stays_a_prefix() {
        let max = 10_500;
        let (mut r, mut stats) = capped(max);
        let body_b: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for (port, path, len) in [(41_000u16, "/a", 10_000usize), (41_001, "/b", 3000)] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
            r.segment(&seg_from(port, true, 1, req.as_bytes()), 1, &mut stats);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            r.segment(&seg_from(port, false, 1, head.as_bytes()), 2, &mut stats);
        }
        let head_len =
            |len: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").len() as u32;
        let (a0, b0) = (1 + head_len(10_000), 1 + head_len(3000));
        r.segment(&seg_from(41_000, false, a0, &[b'a'; 9000]), 3, &mut stats);
        r.segment(&seg_from(41_001, false, b0, &body_b[..2000]), 4, &mut stats);
        // A completes and lets its memory go; then the rest of B comes.
        r.segment(
            &seg_from(41_000, false, a0 + 9000, &[b'a'; 1000]),
            5,
            &mut stats,
        );
        r.segment(
            &seg_from(41_001, false, b0 + 2000, &body_b[2000..]),
            6,
            &mut stats,
        );
        r.finish(&mut stats);
        let out = r.take_exchanges();
        let b = out.iter().find(|e| e.target == "/b").unwrap();
        assert!(b.response_body_truncated);
        assert!(b.response_body.len() < 2000, "{}", b.response_body.len());
        assert!(
            body_b.starts_with(&b.response_body),
            "the stored body is not a prefix"
        );
        assert_eq!(b.response_body_len, 3000);
    }

    /// The same for HTTP/2: partial header blocks (and the HPACK tables)
    /// are charged, and a direction past the cap drops its partial frame.
    #[test]
    fn partial_http2_frames_count_against_the_memory_cap() {
        let max = 64 << 10;
        let (mut r, mut stats) = capped(max);
        // A HEADERS frame announcing 40 KiB, of which 24 KiB arrive.
        let len: u32 = 40 << 10;
        let mut bytes = crate::proto::h2::PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
        bytes.extend_from_slice(&len.to_be_bytes()[1..]);
        bytes.extend_from_slice(&[1, 0x4 | 0x1, 0, 0, 0, 1]);
        bytes.extend(std::iter::repeat_n(0x82u8, 24 << 10)); // ":method: GET", indexed
        for i in 0..20u16 {
            r.segment(&seg_from(30_000 + i, true, 1, &bytes), 1, &mut stats);
            assert!(r.held_bytes() <= max, "{} held", r.held_bytes());
        }
        r.finish(&mut stats);
        assert_eq!(r.held_bytes(), 0);
        assert!(stats.memory_dropped_buffers >= 10, "{stats:?}");
    }

    #[test]
    fn connection_cap_evicts_and_counts() {
        let mut r = Reassembler::new(ReassemblyConfig {
            max_connections: 10,
            ..Default::default()
        });
        let mut stats = CaptureStats::default();
        for port in 0..50u16 {
            let seg = Segment {
                src: SocketAddr::new("192.0.2.1".parse().unwrap(), 10_000 + port),
                dst: S.parse().unwrap(),
                seq: 1,
                ack: 0,
                flags: Flags::default(),
                payload: Cow::Borrowed(b"GET / HTTP/1.1\r\n\r\n"),
                missing: 0,
            };
            r.segment(&seg, i64::from(port), &mut stats);
            assert!(r.connections() <= 10);
        }
        r.finish(&mut stats);
        assert!(stats.evicted_connections >= 40);
        assert_eq!(
            r.take_exchanges().len(),
            50,
            "evicted requests are still written"
        );
    }
}
