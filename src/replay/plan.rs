//! Which captured requests are replayed, in what order, and when.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::endpoint::glob;
use crate::schema::{Exchange, ExchangeReader, SchemaError};

/// A `METHOD /path*` pattern: optional method, then a glob over the path
/// (`*` any run of characters, `?` one character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    method: Option<String>,
    path: String,
}

impl Pattern {
    pub fn parse(s: &str) -> Self {
        match s.trim().split_once(' ') {
            Some((m, p)) => Self {
                method: Some(m.to_ascii_uppercase()),
                path: p.trim().to_string(),
            },
            None if s.starts_with('/') || s.contains('*') => Self {
                method: None,
                path: s.trim().to_string(),
            },
            None => Self {
                method: Some(s.trim().to_ascii_uppercase()),
                path: "*".into(),
            },
        }
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && glob(&self.path, path)
    }
}

/// How requests are chosen.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include: Vec<Pattern>,
    pub exclude: Vec<Pattern>,
    pub sample: Option<f64>,
    pub seed: u64,
    /// `--sample-by header:NAME` (lower case name).
    pub sample_by_header: Option<String>,
    /// `--shard K/N` as (K-1, N).
    pub shard: Option<(u64, u64)>,
    /// Shard whole connections (for `--preserve-order`) instead of single
    /// requests.
    pub shard_by_connection: bool,
    pub limit: Option<u64>,
    /// `--until-decided`: requests in a uniformly random order over the
    /// whole capture (seeded by `seed`), so any prefix is a uniform sample.
    pub shuffled: bool,
}

fn hash_of(seed: u64, value: impl Hash) -> u64 {
    // SipHash with fixed keys: the same choice on every run and machine.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(seed, 0x7265_706c_6179);
    value.hash(&mut h);
    h.finish()
}

fn below(hash: u64, fraction: f64) -> bool {
    (hash as f64) < fraction * u64::MAX as f64
}

/// A connection's identity from the exchange alone: its two endpoints
/// (the file's own flow number only when the capture had no addresses).
/// Never the file's position on the command line, so every shard of a run
/// agrees on it whatever order the files are listed in.
fn connection_key(ex: &Exchange) -> (Option<SocketAddr>, Option<SocketAddr>, u64) {
    let flow = if ex.client.is_none() { ex.flow_id } else { 0 };
    (ex.client, ex.server, flow)
}

/// A request's identity: its connection, when it started, its place there.
type RequestKey = ((Option<SocketAddr>, Option<SocketAddr>, u64), i64, u32, u64);

fn request_key(ex: &Exchange) -> RequestKey {
    let id = if ex.client.is_none() {
        ex.exchange_id
    } else {
        0
    };
    (connection_key(ex), ex.request_ts, ex.seq_in_flow, id)
}

impl Selection {
    /// Whether `ex` is replayed: a function of the exchange alone, not of
    /// which file it came from or where that file was listed.
    pub fn keeps(&self, ex: &Exchange) -> bool {
        let path = ex.target.split('?').next().unwrap_or("");
        if !self.include.is_empty() && !self.include.iter().any(|p| p.matches(&ex.method, path)) {
            return false;
        }
        if self.exclude.iter().any(|p| p.matches(&ex.method, path)) {
            return false;
        }
        if let Some((k, n)) = self.shard {
            // By request, which balances shards when a few long keep-alive
            // connections carry the traffic; by connection only when the
            // order within a connection must hold.
            let h = if self.shard_by_connection {
                hash_of(0, connection_key(ex))
            } else {
                hash_of(0, request_key(ex))
            };
            if h % n != k {
                return false;
            }
        }
        if let Some(f) = self.sample {
            let h = match &self.sample_by_header {
                Some(name) => hash_of(self.seed, ex.request_headers.get(name).unwrap_or(b"")),
                None => hash_of(self.seed, request_key(ex)),
            };
            if !below(h, f) {
                return false;
            }
        }
        true
    }
}

/// A request to replay, with where it sits in the recorded timeline.
pub struct Planned {
    pub file: usize,
    pub exchange: Exchange,
    pub endpoint: String,
}

/// A request's place in the shuffled order: a keyed hash of its identity,
/// with a key apart from `--sample`'s.
fn shuffle_rank(seed: u64, ex: &Exchange) -> u64 {
    hash_of(seed ^ 0x7368_7566_666c_6521, request_key(ex))
}

/// Exchanges of the first wave of the shuffled order; each next wave
/// covers twice the hash range, up to `WAVE_MAX` exchanges.
const WAVE_FIRST: f64 = 4096.0;
const WAVE_MAX: f64 = 65_536.0;
/// Bytes a wave holds at most (see [`Waves::narrow`]).
const WAVE_BYTES: usize = 256 << 20;

/// The shuffled order, read in waves: wave w holds the exchanges whose
/// rank falls in its slice of the hash range, sorted by rank. Each wave is
/// one pass over the files and holds only its own exchanges, so memory
/// stays bounded while the order is uniform over the whole capture (not
/// just its first hour): every prefix of it is a uniform random sample.
struct Waves {
    /// Start of the next wave's slice of the hash range; None when done.
    next_from: Option<u64>,
    /// Fraction of the hash range the next wave covers.
    width: f64,
    max_width: f64,
    /// The current wave, highest rank first (popped from the end).
    wave: Vec<(u64, usize, Exchange)>,
    /// [`WAVE_BYTES`], but for tests.
    max_bytes: usize,
}

impl Waves {
    fn new(total: u64) -> Self {
        let total = total.max(1) as f64;
        Self {
            next_from: Some(0),
            width: (WAVE_FIRST / total).min(1.0),
            max_width: (WAVE_MAX / total).min(1.0),
            wave: Vec::new(),
            max_bytes: WAVE_BYTES,
        }
    }

    /// The wave grew past [`WAVE_BYTES`] (large bodies): keep the lower
    /// half of its ranks and end its slice there; the rest of the slice
    /// goes to the next wave. Returns the new end and the bytes kept, or
    /// None when the slice cannot be narrowed (its rows share one rank).
    fn narrow(&mut self, from: u64) -> Option<(u64, usize)> {
        let half = self.wave.len() / 2;
        self.wave.select_nth_unstable_by_key(half, |w| w.0);
        let to = self.wave[half].0;
        if to <= from {
            return None;
        }
        self.wave.retain(|w| w.0 < to);
        // Later waves start from this narrower width.
        self.width /= 2.0;
        Some((to, self.wave.iter().map(|w| w.2.held_bytes()).sum()))
    }

    /// Read the next wave that holds anything; false when none is left.
    fn refill(&mut self, files: &[PathBuf], selection: &Selection) -> Result<bool, SchemaError> {
        while self.wave.is_empty() {
            let Some(from) = self.next_from else {
                return Ok(false);
            };
            let span = (self.width * u64::MAX as f64) as u64;
            let to = from.saturating_add(span.max(1));
            self.next_from = (to < u64::MAX).then_some(to);
            let mut to = to;
            let mut selected = 0u64;
            let mut bytes = 0usize;
            for (i, path) in files.iter().enumerate() {
                for batch in ExchangeReader::open(path)? {
                    for ex in batch? {
                        if !selection.keeps(&ex) {
                            continue;
                        }
                        selected += 1;
                        let rank = shuffle_rank(selection.seed, &ex);
                        if rank >= from && (rank < to || to == u64::MAX) {
                            bytes += ex.held_bytes();
                            self.wave.push((rank, i, ex));
                            if bytes > self.max_bytes {
                                if let Some((end, kept)) = self.narrow(from) {
                                    (to, bytes) = (end, kept);
                                    self.next_from = Some(to);
                                }
                            }
                        }
                    }
                }
            }
            // Sized by what the selection keeps (known after the first
            // pass), not by the files' rows: a 1% sample of a large capture
            // takes as few passes as a small capture.
            let kept = selected.max(1) as f64;
            self.max_width = (WAVE_MAX / kept).min(1.0);
            self.width = (self.width * 2.0)
                .max(WAVE_FIRST / kept)
                .min(self.max_width);
            self.wave.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
        }
        Ok(true)
    }
}

/// Streams selected exchanges from capture files in request order.
///
/// Capture files are written in completion order, which is request order
/// within a connection and nearly so across them; a bounded reorder buffer
/// restores the timeline without holding the whole file.
pub struct Plan {
    /// In order of their first request.
    files: Vec<PathBuf>,
    /// Each file's first request time (`i64::MIN` when unknown: opened at
    /// once), the same order.
    starts: Vec<i64>,
    /// The next file not yet opened.
    file: usize,
    /// Files being read, merged: the one read next is the one furthest
    /// behind, so files that overlap in time (two hosts' captures, a
    /// request finished after its file rotated) interleave, and files that
    /// follow one another are open one or two at a time.
    open: Vec<Source>,
    heap: BinaryHeap<Reverse<Queued>>,
    /// Bytes held by the heap's exchanges.
    heap_bytes: usize,
    /// [`REORDER_BYTES`]; a field so a test can make it small.
    max_heap_bytes: usize,
    /// The files' longest exchange, request to completion (capped at
    /// [`LONGEST_WAITED_NS`]), read up front from their timestamps.
    longest_ns: i64,
    selection: Selection,
    emitted: u64,
    /// Selected requests in total, when known up front (for progress).
    pub total_hint: u64,
    /// The shuffled order, when asked for.
    waves: Option<Waves>,
    /// With several capture files, a number per file put above the low
    /// [`ID_BITS`] of its exchange ids (see [`file_salts`]).
    salts: Vec<u64>,
    /// The names the captures were redacted by (each file's
    /// `capture_stats.redaction`, together), when they say.
    pub capture_redaction: Option<crate::redact::Redaction>,
    /// The `[REDACTED]` values of the captured requests to leave out: those
    /// of the recorded names, or all of them if a file recorded none.
    pub left_out: crate::redact::body::LeftOut,
}

/// The names a capture file says it was redacted by.
fn redaction_of(metadata: &crate::schema::Metadata) -> Option<crate::redact::Redaction> {
    let (_, stats) = metadata
        .iter()
        .find(|(k, _)| k == crate::schema::META_CAPTURE_STATS)?;
    let stats: serde_json::Value = serde_json::from_str(stats).ok()?;
    serde_json::from_value(stats.get("redaction")?.clone()).ok()
}

/// Bits of a capture's own exchange id kept when several capture files are
/// replayed together (ids count from 0 in each file: over a trillion).
pub const ID_BITS: u32 = 40;

/// Each capture file numbers its exchanges from 0, so two files replayed
/// together share ids, and `diff`, which pairs rows by id, would compare
/// one file's request with another's. Above the low [`ID_BITS`], each
/// file's ids get a number drawn from the file itself (not its place on
/// the command line: shards listing the files in another order agree). The
/// same file given twice gets the same number, and `diff` says so.
fn file_salts(files: &[PathBuf]) -> Result<Vec<u64>, SchemaError> {
    if files.len() < 2 {
        return Ok(Vec::new());
    }
    files
        .iter()
        .map(|f| Ok(1 + crate::schema::file_identity(f)? % ((1 << (63 - ID_BITS)) - 1)))
        .collect()
}

/// A capture file being read by the merge.
struct Source {
    file: usize,
    reader: ExchangeReader,
    /// The latest request time read from it so far.
    frontier: i64,
    /// The latest completion read from it so far: rows are written as
    /// they complete, so every row still unread completed after this.
    completed: i64,
}

/// Exchanges held to restore request order, at least (large bodies)...
const REORDER_MIN: usize = 64;
/// ...and while they hold less than [`REORDER_BYTES`]: 4,096 exchanges of
/// 1 MiB bodies held 8 GiB...
const REORDER: usize = 4096;
/// ...and at most, in rows and in bytes, while a long exchange (a minute
/// of LLM stream) may still be unread behind thousands of short ones that
/// completed before it.
const REORDER_MAX: usize = 65_536;
const REORDER_BYTES: usize = 256 << 20;
/// The longest exchange waited for (request to completion).
const LONGEST_WAITED_NS: i64 = 10 * 60 * 1_000_000_000;

/// An exchange waiting in the reorder heap, ordered by (request time,
/// exchange id, file) alone. Boxed in the heap itself: a side map from key
/// to exchange cost a hash insert, a removal and two moves of the whole
/// exchange per row (a tenth of the reading thread's time).
struct Queued {
    key: (i64, u64, usize),
    ex: Box<Exchange>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// About how many of `total` rows a selection keeps (`--sample`, one
/// `--shard` of N), for the progress bar's length and its time estimate.
fn expected(total: u64, s: &Selection) -> u64 {
    let share = s.sample.unwrap_or(1.0) / s.shard.map_or(1.0, |(_, n)| n as f64);
    (total as f64 * share).ceil() as u64
}

impl Plan {
    pub fn open(files: Vec<PathBuf>, selection: Selection) -> Result<Self, SchemaError> {
        let mut total = 0;
        let mut by_start = Vec::with_capacity(files.len());
        let mut longest_ns = 0i64;
        let mut capture_redaction: Option<crate::redact::Redaction> = None;
        let mut every_file_named = true;
        for f in files {
            let r = ExchangeReader::open(&f)?;
            match redaction_of(&r.metadata) {
                Some(names) => {
                    capture_redaction = Some(match capture_redaction {
                        Some(all) => all.union(&names),
                        None => names,
                    });
                }
                None => every_file_named = false,
            }
            total += r.rows;
            longest_ns = longest_ns.max(crate::schema::longest_exchange_ns(&f)?);
            by_start.push((r.earliest_request_ts.unwrap_or(i64::MIN), f));
        }
        // Stable: files without statistics keep the order they were given.
        by_start.sort_by_key(|(start, _)| *start);
        let (starts, files): (Vec<i64>, Vec<PathBuf>) = by_start.into_iter().unzip();
        Ok(Self {
            salts: file_salts(&files)?,
            files,
            starts,
            file: 0,
            open: Vec::new(),
            heap: BinaryHeap::new(),
            heap_bytes: 0,
            max_heap_bytes: REORDER_BYTES,
            longest_ns: longest_ns.min(LONGEST_WAITED_NS),
            total_hint: selection.limit.map_or(expected(total, &selection), |l| {
                l.min(expected(total, &selection))
            }),
            waves: selection.shuffled.then(|| Waves::new(total)),
            selection,
            emitted: 0,
            left_out: crate::redact::body::LeftOut::by(
                capture_redaction.as_ref().filter(|_| every_file_named),
            ),
            capture_redaction,
        })
    }

    /// Whether the heap's first request can go: no unread row can have
    /// requested earlier. Unread rows completed after the sources'
    /// completion marks and took at most the longest exchange seen, and
    /// files not yet opened begin at their first request.
    fn settled(&self) -> bool {
        let Some(Reverse(first)) = self.heap.peek() else {
            return false;
        };
        let unread_from = self
            .open
            .iter()
            .map(|s| s.completed.saturating_sub(self.longest_ns))
            .chain(self.starts.get(self.file).copied())
            .min();
        unread_from.is_none_or(|t| first.key.0 <= t)
    }

    fn fill(&mut self) -> Result<(), SchemaError> {
        while self.heap.len() < REORDER_MIN
            || (self.heap.len() < REORDER && self.heap_bytes < self.max_heap_bytes)
            || (self.heap.len() < REORDER_MAX
                && self.heap_bytes < self.max_heap_bytes
                && !self.settled())
        {
            let behind = (0..self.open.len()).min_by_key(|&i| self.open[i].frontier);
            let next_start = self.starts.get(self.file).copied();
            // The next file begins before every open one has got to.
            if let Some(start) = next_start {
                if behind.is_none_or(|i| start <= self.open[i].frontier) {
                    let reader = ExchangeReader::open(&self.files[self.file])?;
                    self.open.push(Source {
                        file: self.file,
                        reader,
                        frontier: start,
                        completed: start,
                    });
                    self.file += 1;
                    continue;
                }
            }
            let Some(i) = behind else {
                return Ok(());
            };
            let Some(batch) = self.open[i].reader.next() else {
                self.open.swap_remove(i);
                continue;
            };
            let source = &mut self.open[i];
            for ex in batch? {
                source.frontier = source.frontier.max(ex.request_ts);
                let done = ex.response_end_ts.unwrap_or(ex.request_end_ts);
                source.completed = source.completed.max(done);
                if self.selection.keeps(&ex) {
                    self.heap_bytes += ex.held_bytes();
                    let key = (ex.request_ts, ex.exchange_id, source.file);
                    self.heap.push(Reverse(Queued {
                        key,
                        ex: Box::new(ex),
                    }));
                }
            }
        }
        Ok(())
    }

    /// The capture's first request time, from the files' statistics;
    /// None when a file has none.
    pub fn capture_start(&self) -> Option<i64> {
        self.starts.first().copied().filter(|&t| t != i64::MIN)
    }

    /// The next request in recorded order, or None at the end.
    pub fn next_planned(&mut self) -> Result<Option<Planned>, SchemaError> {
        if self.selection.limit.is_some_and(|l| self.emitted >= l) {
            return Ok(None);
        }
        let (file, mut exchange) = match &mut self.waves {
            Some(w) => {
                if !w.refill(&self.files, &self.selection)? {
                    return Ok(None);
                }
                let Some((_, file, ex)) = w.wave.pop() else {
                    return Ok(None);
                };
                (file, ex)
            }
            None => {
                self.fill()?;
                let Some(Reverse(Queued { key, ex })) = self.heap.pop() else {
                    return Ok(None);
                };
                self.heap_bytes = self.heap_bytes.saturating_sub(ex.held_bytes());
                (key.2, *ex)
            }
        };
        self.emitted += 1;
        if let Some(salt) = self.salts.get(file) {
            exchange.exchange_id = salt << ID_BITS | (exchange.exchange_id & ((1 << ID_BITS) - 1));
        }
        Ok(Some(Planned {
            file,
            endpoint: crate::endpoint::endpoint_of(
                &exchange.method,
                &exchange.target,
                exchange.request_headers.get("content-type"),
            ),
            exchange,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_patterns() {
        assert!(glob("/api/*", "/api/v1/x"));
        assert!(glob("*", ""));
        assert!(glob("/a?c", "/abc"));
        assert!(!glob("/api/*", "/other"));
        assert!(Pattern::parse("GET /items/*").matches("GET", "/items/7"));
        assert!(!Pattern::parse("GET /items/*").matches("POST", "/items/7"));
        assert!(Pattern::parse("/health*").matches("HEAD", "/healthz"));
        assert!(Pattern::parse("post").matches("POST", "/anything"));
    }

    fn conn_exchange(conn: u16, seq: u32, flow_id: u64) -> Exchange {
        Exchange {
            flow_id,
            exchange_id: flow_id * 1000 + seq as u64,
            seq_in_flow: seq,
            client: Some(SocketAddr::from(([10, 0, 0, 1], 40000 + conn))),
            server: Some(SocketAddr::from(([10, 0, 0, 2], 80))),
            request_ts: 1_000_000 * seq as i64 + conn as i64,
            method: "GET".into(),
            target: "/".into(),
            ..Default::default()
        }
    }

    fn shard(k: u64, n: u64, by_connection: bool) -> Selection {
        Selection {
            shard: Some((k, n)),
            shard_by_connection: by_connection,
            ..Default::default()
        }
    }

    #[test]
    fn shards_are_a_function_of_the_exchange_not_of_its_file() {
        // The same exchange numbered differently (another file order, another
        // grouping of files) lands in the same shard, and sampling agrees.
        let sample = Selection {
            sample: Some(0.5),
            seed: 3,
            ..Default::default()
        };
        for conn in 0..20 {
            for seq in 0..20 {
                let a = conn_exchange(conn, seq, 5);
                let b = conn_exchange(conn, seq, 900 + conn as u64);
                for by_conn in [false, true] {
                    for k in 0..4 {
                        assert_eq!(
                            shard(k, 4, by_conn).keeps(&a),
                            shard(k, 4, by_conn).keeps(&b)
                        );
                    }
                }
                assert_eq!(sample.keeps(&a), sample.keeps(&b));
            }
        }
    }

    #[test]
    fn shards_by_request_balance_few_long_connections() {
        // Two keep-alive connections of 2000 requests over 8 shards: by
        // request every shard gets its share; by connection at most two are
        // used, and whole connections stay together.
        let all: Vec<Exchange> = (0..2)
            .flat_map(|c| (0..2000).map(move |s| conn_exchange(c, s, c as u64)))
            .collect();
        let counts = |by_conn: bool| -> Vec<usize> {
            (0..8)
                .map(|k| all.iter().filter(|e| shard(k, 8, by_conn).keeps(e)).count())
                .collect()
        };
        let by_request = counts(false);
        assert_eq!(by_request.iter().sum::<usize>(), 4000);
        assert!(
            by_request.iter().all(|&n| (400..=600).contains(&n)),
            "{by_request:?}"
        );
        let by_conn = counts(true);
        assert_eq!(by_conn.iter().sum::<usize>(), 4000);
        assert!(
            by_conn.iter().filter(|&&n| n > 0).count() <= 2,
            "{by_conn:?}"
        );
        assert!(by_conn.iter().all(|&n| n % 2000 == 0), "{by_conn:?}");
    }

    #[test]
    fn shards_partition_and_sampling_is_deterministic() {
        let ex = |flow: u64, id: u64| Exchange {
            flow_id: flow,
            exchange_id: id,
            method: "GET".into(),
            target: "/".into(),
            ..Default::default()
        };
        let all: Vec<Exchange> = (0..300).map(|i| ex(i / 3, i)).collect();
        let mut seen = 0;
        for k in 0..3 {
            let s = shard(k, 3, true);
            let kept: Vec<_> = all.iter().filter(|e| s.keeps(e)).collect();
            // Whole flows stay together.
            for e in &kept {
                assert!(all
                    .iter()
                    .filter(|o| o.flow_id == e.flow_id)
                    .all(|o| s.keeps(o)));
            }
            seen += kept.len();
        }
        assert_eq!(seen, 300);
        let s = Selection {
            sample: Some(0.3),
            seed: 9,
            ..Default::default()
        };
        let a: Vec<u64> = all
            .iter()
            .filter(|e| s.keeps(e))
            .map(|e| e.exchange_id)
            .collect();
        let b: Vec<u64> = all
            .iter()
            .filter(|e| s.keeps(e))
            .map(|e| e.exchange_id)
            .collect();
        assert_eq!(a, b);
        assert!((60..=120).contains(&a.len()), "{}", a.len());
    }

    fn write_capture(path: &std::path::Path, times: impl Iterator<Item = i64>) {
        let mut w = crate::schema::ExchangeFileWriter::create(path, Default::default()).unwrap();
        let rows: Vec<Exchange> = times
            .enumerate()
            .map(|(i, t)| Exchange {
                exchange_id: i as u64,
                request_ts: t,
                method: "GET".into(),
                target: format!("/{t}"),
                ..Default::default()
            })
            .collect();
        for chunk in rows.chunks(1000) {
            w.write(chunk).unwrap();
        }
        w.finish(vec![]).unwrap();
    }

    /// Capture files are merged by time, whatever order they are given
    /// in: two hosts' captures of the same period interleave, and a later
    /// file listed first waits its turn, rather than each being replayed
    /// after the other (a burst of "late" requests).
    #[test]
    fn files_given_in_any_order_are_merged_by_request_time() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.parquet"),
            dir.path().join("b.parquet"),
            dir.path().join("c.parquet"),
        );
        // a: 0..10,000 even; b: odd (the same period, another host);
        // c: after both. Each larger than the reorder window.
        write_capture(&a, (0..10_000).map(|i| 2 * i));
        write_capture(&b, (0..10_000).map(|i| 2 * i + 1));
        write_capture(&c, (0..6_000).map(|i| 20_000 + i));
        let mut plan = Plan::open(vec![c, b, a], Selection::default()).unwrap();
        let mut times = Vec::new();
        while let Some(p) = plan.next_planned().unwrap() {
            times.push(p.exchange.request_ts);
        }
        assert_eq!(times.len(), 26_000);
        assert!(times.windows(2).all(|w| w[0] < w[1]), "in request order");
        assert!(plan.open.len() <= 3);
    }

    /// Rows are written as they complete: a request that took 8 s lies
    /// 8,000 rows behind those of its time, twice the least reorder window.
    /// The plan reads the capture's longest exchange up front and holds
    /// rows long enough to put it back in its place, not 8 s late.
    #[test]
    fn a_long_exchange_written_late_is_planned_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.parquet");
        let ms = 1_000_000i64;
        let mut rows: Vec<Exchange> = (0..10_000i64)
            .map(|i| Exchange {
                exchange_id: i as u64,
                request_ts: i * ms,
                request_end_ts: i * ms,
                response_end_ts: Some(i * ms + ms),
                method: "GET".into(),
                target: format!("/{i}"),
                ..Default::default()
            })
            .collect();
        let long = Exchange {
            exchange_id: 99_999,
            request_ts: 100 * ms + ms / 2,
            request_end_ts: 100 * ms + ms / 2,
            response_end_ts: Some(8_100 * ms),
            method: "POST".into(),
            target: "/v1/chat/completions".into(),
            ..Default::default()
        };
        rows.push(long);
        // Completion order, as capture writes them.
        rows.sort_by_key(|e| e.response_end_ts);
        let mut w = crate::schema::ExchangeFileWriter::create(&path, Default::default()).unwrap();
        w.write(&rows).unwrap();
        w.finish(vec![]).unwrap();
        let mut plan = Plan::open(vec![path], Selection::default()).unwrap();
        let mut times = Vec::new();
        while let Some(p) = plan.next_planned().unwrap() {
            times.push(p.exchange.request_ts);
        }
        assert_eq!(times.len(), 10_001);
        assert!(times.windows(2).all(|w| w[0] < w[1]), "in request order");
        assert!(plan.heap.len() <= REORDER_MAX);
    }

    /// Large exchanges fill the reorder window up to its byte bound, not
    /// its usual 4,096 rows, and still come out in request order.
    #[test]
    fn the_reorder_window_of_large_bodies_keeps_to_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.parquet");
        let rows: Vec<Exchange> = (0..5000u64)
            .map(|i| Exchange {
                exchange_id: i,
                request_ts: i as i64,
                method: "POST".into(),
                request_body: vec![b'x'; 1024],
                ..Default::default()
            })
            .collect();
        let one = rows[0].held_bytes();
        let mut w = crate::schema::ExchangeFileWriter::create(&path, Default::default()).unwrap();
        w.write(&rows).unwrap();
        w.finish(vec![]).unwrap();
        let mut plan = Plan::open(vec![path], Selection::default()).unwrap();
        plan.max_heap_bytes = 1 << 20;
        let mut ids = Vec::new();
        while let Some(p) = plan.next_planned().unwrap() {
            assert!(
                plan.heap_bytes <= plan.max_heap_bytes + 2048 * one,
                "{} bytes held",
                plan.heap_bytes
            );
            ids.push(p.exchange.exchange_id);
        }
        assert_eq!(ids, (0..5000).collect::<Vec<_>>());
    }

    /// Waves of large exchanges are narrowed to stay under their byte
    /// bound, and the shuffled order still holds every exchange once, in
    /// rank order.
    #[test]
    fn waves_of_large_bodies_are_narrowed_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.parquet");
        let rows: Vec<Exchange> = (0..3000u64)
            .map(|i| Exchange {
                exchange_id: i,
                request_ts: i as i64,
                method: "POST".into(),
                target: format!("/{i}"),
                request_body: vec![b'x'; 2000],
                ..Default::default()
            })
            .collect();
        let mut w = crate::schema::ExchangeFileWriter::create(&path, Default::default()).unwrap();
        w.write(&rows).unwrap();
        w.finish(vec![]).unwrap();
        let files = vec![path];
        let selection = Selection::default();
        let mut waves = Waves::new(3000);
        let cap = 600 * (2000 + std::mem::size_of::<Exchange>());
        waves.max_bytes = cap;
        let (mut ranks, mut largest) = (Vec::new(), 0);
        while waves.refill(&files, &selection).unwrap() {
            largest = largest.max(waves.wave.len());
            let total: usize = waves.wave.iter().map(|w| w.2.held_bytes()).sum();
            assert!(total <= cap + waves.wave[0].2.held_bytes(), "{total}");
            while let Some((rank, _, _)) = waves.wave.pop() {
                ranks.push(rank);
            }
        }
        assert_eq!(ranks.len(), 3000, "every exchange once");
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "in rank order");
        assert!(largest <= 601, "{largest}");
    }
}
