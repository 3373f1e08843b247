//! `shadowctl diff`: read results files (shards merged), compare each
//! shadow's answer with the primary's, estimate noise from two primary
//! observations, and judge GO / NO-GO / INCONCLUSIVE.
//!
//! Streaming: rows are grouped by exchange as they come (a group is complete
//! when every target of the run has answered, see `META_TARGETS`) and folded
//! into counters keyed by a *signature* (the set of differing paths). Noise
//! can only be judged once everything is read, so exchange-level divergence
//! is decided at the end from the signatures; memory grows with distinct
//! endpoints and signatures, not with exchanges.

pub mod compare;
pub mod config;
pub mod doc;
mod fast;
pub mod grpc;
pub mod intervals;
pub mod jsonpath;
pub mod judge;
pub mod latency;
mod llm;
pub(crate) mod resources;
pub mod similarity;
pub mod simulation;
pub mod stats;
mod summarize;
pub(crate) mod verdict;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

// Integer-keyed maps touched per row use Fx hashing (SipHash showed in the
// profile); maps keyed by text from traffic keep the default, seeded hasher.
use rustc_hash::FxHashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use crate::report::{Difference, Example, Report};
use crate::schema::{ErrorKind, ReplayResult, ResultsReader, SchemaError, TargetRole};
use compare::{Comparer, Diff, DiffKind, JudgeMode};
use config::Config;
use doc::LazyDoc;
use fast::RowRef;
use latency::LogHist;

/// What `shadowctl diff` is asked to do.
pub struct DiffOptions {
    pub inputs: Vec<PathBuf>,
    pub config: Config,
    /// Examples of divergent exchanges kept for the report.
    pub top: usize,
    /// `--divergences F.jsonl`: every divergent exchange.
    pub divergences: Option<PathBuf>,
}

/// Errors that stop a diff (bad input), exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("{0}: cannot write: {1}")]
    Write(String, std::io::Error),
    #[error("no results to compare: the input files hold no rows")]
    Empty,
    #[error("{0}: results without a primary (no `primary` or `recorded` rows)")]
    NoPrimary(String),
    #[error("judge: {0}")]
    Judge(#[from] judge::JudgeError),
    #[error("{0}: the Parquet reader failed while decoding ({1}); the file may be damaged")]
    Decode(String, String),
    #[error("{second}: exchange {id} of target `{target}` is also in {first}: the same results given twice (or a copy); shards of one run hold different exchanges")]
    Duplicate {
        first: String,
        second: String,
        target: String,
        id: u64,
    },
    #[error("{path}: exchange {id} of target `{target}` has two rows: the same results appended twice, or one capture given twice to replay; every figure would count it twice")]
    Repeated {
        path: String,
        target: String,
        id: u64,
    },
}

/// Exchange ids of one target in one file, as bitmaps of 65,536 ids: ids
/// come from the capture's row numbers, so a run of a million exchanges
/// takes a few hundred kilobytes, not one entry per exchange.
#[derive(Default)]
pub(crate) struct IdSet {
    chunks: FxHashMap<u64, Box<[u64; 1024]>>,
}

impl IdSet {
    /// Add `id`; false when it was there already.
    fn insert(&mut self, id: u64) -> bool {
        let chunk = self
            .chunks
            .entry(id >> 16)
            .or_insert_with(|| Box::new([0; 1024]));
        let bit = id & 0xffff;
        let (word, mask) = (&mut chunk[(bit >> 6) as usize], 1u64 << (bit & 63));
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }

    fn contains(&self, id: u64) -> bool {
        self.chunks
            .get(&(id >> 16))
            .is_some_and(|c| c[((id & 0xffff) >> 6) as usize] & (1 << (id & 63)) != 0)
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// An id in both sets, if any.
    fn common(&self, other: &IdSet) -> Option<u64> {
        for (high, a) in &self.chunks {
            let Some(b) = other.chunks.get(high) else {
                continue;
            };
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                if x & y != 0 {
                    return Some(
                        high << 16 | (i as u64) << 6 | u64::from((x & y).trailing_zeros()),
                    );
                }
            }
        }
        None
    }
}

/// Exchange ids per target name, of one file (names of the run's targets,
/// not text from traffic: Fx hashing, looked up per row).
type FileIds = FxHashMap<String, IdSet>;

/// The same exchange answered by the same target in two files means the
/// same results were given twice: counting them twice would double every
/// figure (and can turn INCONCLUSIVE into NO-GO).
fn check_duplicates(
    earlier: &[(String, FileIds)],
    path: &str,
    ids: &FileIds,
) -> Result<(), DiffError> {
    for (first, seen) in earlier {
        for (target, set) in ids {
            if let Some(id) = seen.get(target).and_then(|s| s.common(set)) {
                return Err(DiffError::Duplicate {
                    first: first.clone(),
                    second: path.to_string(),
                    target: target.clone(),
                    id,
                });
            }
        }
    }
    Ok(())
}

/// Incomplete groups older than this many rows are compared as they are
/// (a file without target metadata, a run cut short), once their late rows
/// can no longer come (see [`LATE_SLACK_NS`]).
const WINDOW_ROWS: u64 = 200_000;
/// A row is written when its answer ends, at most the run's answer
/// deadline after it was due, plus the time it was sent late (lag under
/// overload) and the writer's queue. Only then may an incomplete group be
/// compared without its missing rows: a shadow timing out at 30 s at
/// 10,000 requests/s writes its rows 600,000 rows after the primary's.
const LATE_SLACK_NS: i64 = 60_000_000_000;
/// Incomplete groups held at most, whatever their age: past this, memory
/// wins and the oldest are compared as they are (a late row that comes
/// after is counted as unpaired, never dropped unseen).
const MAX_WAITING_GROUPS: usize = 2_000_000;
/// Examples kept per distinct signature at least (the report picks the top
/// N; with `--top` above it, that many).
const EXAMPLES_PER_SIGNATURE: usize = 3;
/// Distinct signatures with examples, at most.
const MAX_EXAMPLE_SIGNATURES: usize = 5_000;
/// Examples kept in all, at most: each holds the differing values, which
/// may be long (embeddings).
pub(crate) const MAX_EXAMPLES_KEPT: usize = 15_000;

/// Interned strings (paths, endpoints, shadow names) as small ids.
#[derive(Default)]
pub(crate) struct Interner {
    ids: HashMap<String, u32>,
    pub names: Vec<String>,
    last: Option<u32>,
}

impl Interner {
    pub fn id(&mut self, s: &str) -> u32 {
        // Rows come in runs of one endpoint and one shadow: try the last.
        if let Some(&last) = self.last.as_ref() {
            if self.names[last as usize] == s {
                return last;
            }
        }
        if let Some(&i) = self.ids.get(s) {
            self.last = Some(i);
            return i;
        }
        let i = self.names.len() as u32;
        self.ids.insert(s.to_string(), i);
        self.names.push(s.to_string());
        self.last = Some(i);
        i
    }
}

/// Distinct endpoints reported; the exchanges of any more are reported
/// together under [`OTHER_ENDPOINTS`]. Each endpoint holds histograms and
/// tallies per shadow: paths the automatic names do not collapse (user
/// names, slugs) would otherwise grow memory with every new one.
pub(crate) const MAX_ENDPOINTS: usize = 5_000;
pub(crate) const OTHER_ENDPOINTS: &str = "(other endpoints)";

impl Folded {
    /// The name an exchange of `name` is reported under: its own, or, once
    /// [`MAX_ENDPOINTS`] others are known, [`OTHER_ENDPOINTS`].
    pub fn endpoint_name<'a>(&mut self, name: &'a str) -> &'a str {
        let (reported, over) = self.reported_name(name);
        self.endpoints_over_cap += u64::from(over);
        reported
    }

    /// [`Folded::endpoint_name`] without counting the exchange (for a path
    /// that may give it up to the full comparison, which counts it), and
    /// whether it is over the cap.
    pub fn reported_name<'a>(&self, name: &'a str) -> (&'a str, bool) {
        let e = &self.endpoints;
        // Below the cap (every file but a pathological one) nothing is looked up.
        if e.names.len() < MAX_ENDPOINTS || e.ids.contains_key(name) {
            return (name, false);
        }
        (OTHER_ENDPOINTS, true)
    }
}

/// The set of (path, kind) that differed in one comparison, sorted.
pub(crate) type Signature = Vec<(u32, DiffKind)>;

/// Where an exchange falls, for the segment analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cell {
    pub sig: u32,
    /// Primary status class 1..=5, 0 for a transport error.
    pub status_class: u8,
    pub size_bucket: u8,
}

/// Figures for one shadow on one endpoint.
#[derive(Default)]
pub(crate) struct Tally {
    pub compared: u64,
    pub cells: FxHashMap<Cell, u64>,
    pub primary_errors: u64,
    pub shadow_errors: u64,
    /// Exchanges where one side erred and the other did not.
    pub primary_only_errors: u64,
    pub shadow_only_errors: u64,
    pub shadow_usable: u64,
    pub shadow_error_kinds: HashMap<String, u64>,
    pub latency_primary: LogHist,
    pub latency_shadow: LogHist,
    /// Per drift rule: values seen on each side.
    pub drift: HashMap<usize, summarize::DriftAcc>,
    pub llm: llm::LlmTally,
    /// Similarity of the shadow's text to the primary's, per rule path.
    pub similarity: llm::Similarities,
}

/// Primary-vs-primary differences on one endpoint.
#[derive(Default)]
pub(crate) struct NoiseTally {
    pub compared: u64,
    pub sigs: FxHashMap<u32, u64>,
    /// Similarity of the recorded answer's text to the live primary's.
    pub similarity: llm::Similarities,
}

/// Everything folded from the inputs.
#[derive(Default)]
pub(crate) struct Folded {
    pub paths: Interner,
    pub endpoints: Interner,
    pub shadows: Interner,
    pub sigs: Vec<Signature>,
    sig_ids: HashMap<Signature, u32>,
    pub exchanges_per_endpoint: FxHashMap<u32, u64>,
    pub tallies: FxHashMap<(u32, u32), Tally>,
    pub noise: FxHashMap<u32, NoiseTally>,
    pub examples: FxHashMap<(u32, u32, u32), Vec<Example>>,
    pub examples_kept: usize,
    /// Rows of the metrics files given (resource use of the targets).
    pub metrics: Vec<crate::schema::MetricRow>,
    /// When targets answered: collected only when metrics files are given.
    pub times: Option<resources::AnswerTimes>,
    /// An example was not kept for lack of room.
    pub examples_capped: bool,
    pub exchanges: u64,
    pub live_primary: bool,
    pub recorded_primary: bool,
    /// Some input came from `replay --until-decided`: the gate then uses
    /// time-uniform intervals, as the run did.
    pub sequential: bool,
    /// Judgements that failed, per (endpoint, shadow or `recorded`).
    pub judge_failed: HashMap<(u32, String), u64>,
    /// Per endpoint: whether its answers are worth checking for LLM ones.
    llm_probe: FxHashMap<u32, LlmProbe>,
    /// Exchanges folded in place (see `fast`).
    pub fast_folded: u64,
    /// Rows, by target, of exchanges read without a primary row.
    pub unpaired: HashMap<String, u64>,
    /// Shadow requests the replay did not carry out, by shadow and why
    /// (never sent in time, or cut short by a stop).
    pub not_compared: HashMap<String, BTreeMap<&'static str, u64>>,
    /// The signature of "no differences", once seen.
    no_diffs: Option<u32>,
    /// Exchanges reported under [`OTHER_ENDPOINTS`].
    pub endpoints_over_cap: u64,
}

/// An endpoint whose first answers hold no LLM answer is not checked
/// again: telling costs a scan of every body, and endpoints serve one kind.
#[derive(Default)]
struct LlmProbe {
    plain: u32,
    llm: bool,
    /// The exchange last counted: with two shadows an exchange is seen
    /// once per shadow, and counts once.
    last: Option<u64>,
}

/// Exchanges without any LLM answer after which an endpoint is taken as
/// plain.
const LLM_PROBE_EXCHANGES: u32 = 100;

impl LlmProbe {
    fn wanted(&self) -> bool {
        self.llm || self.plain < LLM_PROBE_EXCHANGES
    }

    fn saw(&mut self, exchange: u64, llm: bool) {
        self.llm |= llm;
        if self.last != Some(exchange) {
            self.plain += u32::from(!llm);
            self.last = Some(exchange);
        }
    }
}

impl Folded {
    /// Which intervals the gate uses for these results.
    pub fn method(&self) -> intervals::Method {
        if self.sequential {
            intervals::Method::Sequential
        } else {
            intervals::Method::Fixed
        }
    }

    fn signature(&mut self, diffs: &[Diff]) -> u32 {
        // Most exchanges differ nowhere: their id is kept at hand rather
        // than hashed each time.
        if diffs.is_empty() {
            if let Some(id) = self.no_diffs {
                return id;
            }
        }
        let mut sig: Signature = diffs
            .iter()
            .map(|d| (self.paths.id(&d.path), d.kind))
            .collect();
        sig.sort_unstable();
        sig.dedup();
        if let Some(&id) = self.sig_ids.get(&sig) {
            return id;
        }
        let id = self.sigs.len() as u32;
        if sig.is_empty() {
            self.no_diffs = Some(id);
        }
        self.sigs.push(sig.clone());
        self.sig_ids.insert(sig, id);
        id
    }
}

/// A row the comparison can use: a real answer or a real transport error.
/// Requests never sent, interrupted, or unreplayable are left out.
fn usable(r: &ReplayResult) -> bool {
    match r.error_kind {
        Some(
            ErrorKind::NotSentInTime
            | ErrorKind::Interrupted
            | ErrorKind::RequestTruncated
            | ErrorKind::Unsendable,
        ) => false,
        Some(_) => true,
        None => r.status.is_some(),
    }
}

/// Why the shadow's request of an exchange was not carried out, when the
/// replay (not the capture) is why: never sent in time (the shadow fell
/// behind) or cut short by a stop. Counted, so a shadow judged on the
/// requests that got through says how many did not. A request the capture
/// cut or that could not be sent to any target is not the shadow's.
fn not_carried_out(shadow: &ReplayResult) -> Option<&'static str> {
    match shadow.error_kind {
        Some(k @ (ErrorKind::NotSentInTime | ErrorKind::Interrupted)) => Some(k.as_str()),
        _ => None,
    }
}

/// What the tallies read of an answer: from an owned row, or in place from
/// the columns (`fast`).
pub(crate) trait Answer {
    fn status(&self) -> Option<u16>;
    fn error_kind(&self) -> Option<ErrorKind>;
    fn grpc_status(&self) -> Option<u32>;
    fn latency_ns(&self) -> Option<i64>;
}

impl Answer for ReplayResult {
    fn status(&self) -> Option<u16> {
        self.status
    }

    fn error_kind(&self) -> Option<ErrorKind> {
        self.error_kind
    }

    fn grpc_status(&self) -> Option<u32> {
        grpc::status(&self.response_headers, &self.response_trailers)
    }

    fn latency_ns(&self) -> Option<i64> {
        ReplayResult::latency_ns(self)
    }
}

/// Transport errors, 5xx answers and gRPC statuses that are the server's
/// failure (UNAVAILABLE, INTERNAL, ...) count as errors.
fn is_error(r: &impl Answer) -> bool {
    r.error_kind().is_some() || r.status().is_some_and(|s| s >= 500) || grpc_failure(r).is_some()
}

fn grpc_failure(r: &impl Answer) -> Option<u32> {
    r.grpc_status().filter(|&c| grpc::is_server_error(c))
}

fn error_name(r: &impl Answer) -> String {
    match (r.error_kind(), r.status(), grpc_failure(r)) {
        (Some(k), _, _) => k.as_str().to_string(),
        (None, _, Some(c)) => format!("grpc_{}", grpc::code_name(c)),
        (None, Some(s), None) => format!("http_{}xx", s / 100),
        _ => "none".into(),
    }
}

/// Counts and latencies of one shadow's answer against the primary's.
fn tally_answers(t: &mut Tally, primary: &impl Answer, shadow: &impl Answer, cell: Cell) {
    let (p_err, s_err) = (is_error(primary), is_error(shadow));
    t.compared += 1;
    *t.cells.entry(cell).or_default() += 1;
    t.primary_errors += u64::from(p_err);
    t.primary_only_errors += u64::from(p_err && !s_err);
    t.shadow_only_errors += u64::from(s_err && !p_err);
    if s_err {
        t.shadow_errors += 1;
        *t.shadow_error_kinds.entry(error_name(shadow)).or_default() += 1;
    } else {
        t.shadow_usable += 1;
    }
    // With `--primary recorded` this is the latency the capture saw in
    // production (request end to response end).
    if let Some(ns) = primary.latency_ns() {
        t.latency_primary.record_ns(ns);
    }
    if let Some(ns) = shadow.latency_ns() {
        t.latency_shadow.record_ns(ns);
    }
}

fn size_bucket(len: usize) -> u8 {
    match len {
        0 => 0,
        1..=1023 => 1,
        1024..=10_239 => 2,
        10_240..=102_399 => 3,
        _ => 4,
    }
}

/// Run the whole diff: read, fold, judge.
pub fn diff(opts: &DiffOptions) -> Result<Report, DiffError> {
    let result = diff_inner(opts);
    if let (Err(_), Some(p)) = (&result, &opts.divergences) {
        // A failed run leaves no temporary beside the divergences file.
        let _ = std::fs::remove_file(summarize::Candidates::tmp_path(p));
    }
    result
}

fn diff_inner(opts: &DiffOptions) -> Result<Report, DiffError> {
    let mut folded = Folded::default();
    let mut sink = match &opts.divergences {
        Some(p) => Some(summarize::Candidates::create(p)?),
        None => None,
    };
    let mut comparer = Comparer::new(&opts.config);
    let mut pool = start_judge(&opts.config)?;
    let mut files: Vec<(String, FileIds)> = Vec::new();
    // Metrics files (told apart by their kind) are read first, so the
    // results are folded knowing answer times are wanted.
    let mut results = Vec::new();
    for path in &opts.inputs {
        if crate::schema::file_kind(path)?.as_deref() == Some(crate::schema::METRICS.kind) {
            folded.metrics.extend(crate::schema::read_metrics(path)?);
            folded.times.get_or_insert_with(Default::default);
        } else {
            results.push(path);
        }
    }
    for path in results {
        let mut ctx = FoldCtx {
            opts,
            comparer: &mut comparer,
            folded: &mut folded,
            sink: sink.as_mut(),
            judge: pool.as_mut(),
            in_place: true,
        };
        let ids = fold_file(path, &mut ctx)?;
        let name = path.display().to_string();
        check_duplicates(&files, &name, &ids)?;
        files.push((name, ids));
    }
    if folded.exchanges == 0 {
        return Err(DiffError::Empty);
    }
    let mut report = summarize::report(&folded, opts, sink)?;
    report.judge = pool.map(|p| p.stats().clone());
    Ok(report)
}

/// The judge processes, when a rule asks for them.
fn start_judge(c: &Config) -> Result<Option<judge::JudgePool>, DiffError> {
    if !c.rules.iter().any(|r| r.compare == config::Compare::Judge) {
        return Ok(None);
    }
    let settings = judge::JudgeSettings {
        command: c.judge_command.clone(),
        concurrency: c.judge_concurrency,
        timeout: std::time::Duration::from_secs_f64(c.judge_timeout_s),
    };
    Ok(Some(judge::JudgePool::start(&settings)?))
}

/// What folding needs besides the rows.
struct FoldCtx<'a, 'c> {
    opts: &'a DiffOptions,
    comparer: &'a mut Comparer<'c>,
    folded: &'a mut Folded,
    sink: Option<&'a mut summarize::Candidates>,
    judge: Option<&'a mut judge::JudgePool>,
    /// Fold exchanges whose answers are all equal in place (`fast`).
    in_place: bool,
}

/// Complete groups folded together: with a judge, their judgements are
/// asked for at once, so the judge processes work side by side.
const JUDGE_BATCH: usize = 64;

impl FoldCtx<'_, '_> {
    /// A complete group read in place: folded there when it can be,
    /// otherwise copied out into owned rows for the full comparison.
    fn push_refs(
        &mut self,
        batch: &mut Vec<Vec<ReplayResult>>,
        group: &[RowRef],
    ) -> Result<(), DiffError> {
        if self.in_place && fast::fold_identical(group, self) {
            self.folded.fast_folded += 1;
            return Ok(());
        }
        self.push(batch, group.iter().map(RowRef::to_row).collect())
    }

    fn push(
        &mut self,
        batch: &mut Vec<Vec<ReplayResult>>,
        group: Vec<ReplayResult>,
    ) -> Result<(), DiffError> {
        batch.push(group);
        if self.judge.is_none() || batch.len() >= JUDGE_BATCH {
            self.flush(batch)?;
        }
        Ok(())
    }

    fn flush(&mut self, batch: &mut Vec<Vec<ReplayResult>>) -> Result<(), DiffError> {
        let judged = match self.judge.as_deref_mut() {
            Some(pool) => judge_batch(batch, self.opts, self.comparer, pool),
            None => Vec::new(),
        };
        for (i, g) in batch.drain(..).enumerate() {
            fold_group(g, self, judged.get(i))?;
        }
        Ok(())
    }
}

/// Columns `diff` never reads: request headers, the latencies stored for
/// queries (`diff` derives them from the timestamps, as the rows do), and
/// where a request sat in its connection and when its first byte came
/// (rows read them as zeros and nulls). Decoding them was a tenth of its
/// time, then the int64 ones a twentieth.
const DIFF_SKIPS: &[&str] = &[
    "request_headers",
    "latency_ns",
    "latency_from_due_ns",
    "lag_ns",
    "flow_id",
    "seq_in_flow",
    "first_byte_ts",
];

/// The rows of the exchange being read, while they come one after another.
#[derive(Default)]
struct Run {
    head: Waiting,
    /// Rows it will have, when the file says.
    expected: Option<usize>,
    rows: Vec<RowRef>,
}

impl Run {
    /// An incomplete run waits in `pending` with the others, by age.
    fn park(&mut self, pending: &mut FxHashMap<u64, Vec<RowRef>>, order: &mut VecDeque<Waiting>) {
        if self.rows.is_empty() {
            return;
        }
        pending.insert(self.head.id, std::mem::take(&mut self.rows));
        order.push_back(self.head);
    }
}

/// An exchange by its first row: the row's number in the file, and when
/// the exchange was due.
#[derive(Clone, Copy, Default)]
struct Waiting {
    first: u64,
    due: i64,
    id: u64,
}

/// When an incomplete group's missing rows can no longer come: it is
/// `WINDOW_ROWS` rows old, and (when the file gives the run's answer
/// deadline) the rows read have reached its due time plus that deadline.
struct Window {
    rows: u64,
    deadline_ns: Option<i64>,
    /// The latest answer end read so far (rows come in about that order).
    frontier: i64,
}

impl Window {
    fn over(&self, w: &Waiting, row_no: u64, waiting: usize) -> bool {
        let old = row_no - w.first > self.rows
            && self.deadline_ns.is_none_or(|d| {
                self.frontier.saturating_sub(w.due) > d.saturating_add(LATE_SLACK_NS)
            });
        old || waiting > MAX_WAITING_GROUPS
    }
}

#[cfg(not(test))]
fn window_rows() -> u64 {
    WINDOW_ROWS
}

#[cfg(test)]
thread_local! {
    /// Tests shrink the window so late rows need not be 200,000 rows late.
    static TEST_WINDOW_ROWS: std::cell::Cell<u64> = const { std::cell::Cell::new(WINDOW_ROWS) };
}

#[cfg(test)]
fn window_rows() -> u64 {
    TEST_WINDOW_ROWS.with(std::cell::Cell::get)
}

/// Group the rows of one file by exchange and fold each complete group.
fn fold_file(path: &std::path::Path, ctx: &mut FoldCtx) -> Result<FileIds, DiffError> {
    let reader = ResultsReader::open_without(path, DIFF_SKIPS)?;
    ctx.folded.sequential |= reader.until_decided;
    // A file none of whose rows has a primary is an error whichever place
    // it has among the inputs (its rows would be dropped unseen).
    let exchanges_before = ctx.folded.exchanges;
    let mut ids = FileIds::default();
    let targets = reader.targets.as_ref().map(Vec::len);
    let read_only_shadows = reader.read_only_shadows;
    let mut window = Window {
        rows: window_rows(),
        deadline_ns: reader.answer_deadline_ns,
        frontier: i64::MIN,
    };
    // Decoding Parquet and comparing take about the same time: decode on a
    // second thread, a few batches ahead (bounded, so memory stays flat).
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let decoder = std::thread::spawn(move || {
        let mut reader = reader;
        while let Some(batch) = reader.next_columns() {
            if tx.send(batch.map(std::sync::Arc::new)).is_err() {
                return;
            }
        }
    });
    let mut pending: FxHashMap<u64, Vec<RowRef>> = FxHashMap::default();
    let mut order: VecDeque<Waiting> = VecDeque::new();
    let mut ready: Vec<Vec<ReplayResult>> = Vec::new();
    let mut row_no = 0u64;
    let mut recent = fast::Recent::default();
    // The rows of an exchange usually lie next to each other: the open run
    // is gathered here and goes to `pending` only when the batch ends or
    // another exchange starts before it is complete (one hash lookup per
    // exchange instead of three, and no allocation).
    let mut run = Run::default();
    // Exchanges compared before all their rows came: a row of theirs read
    // later is late, not the start of a new exchange (a late live primary
    // would otherwise count its exchange twice).
    let mut compared_early = IdSet::default();
    for batch in rx {
        let cols = batch?;
        recent.read(&cols);
        for i in 0..cols.len() {
            row_no += 1;
            let id = cols.exchange_id(i);
            let name = cols.target_name(i);
            let fresh = match ids.get_mut(name) {
                Some(set) => set.insert(id),
                None => ids.entry(name.to_string()).or_default().insert(id),
            };
            if !fresh {
                return Err(DiffError::Repeated {
                    path: path.display().to_string(),
                    target: name.to_string(),
                    id,
                });
            }
            window.frontier = window.frontier.max(cols.done_or_due(i));
            let row = RowRef::new(&cols, i);
            // Looked at once per exchange, not per row.
            let expected = || {
                targets
                    .map(|n| crate::schema::rows_of_exchange(n, read_only_shadows, cols.method(i)))
            };
            if run.rows.is_empty() || run.head.id != id {
                if !compared_early.is_empty() && compared_early.contains(id) {
                    fold_late(&row, ctx);
                    continue;
                }
                if let Entry::Occupied(mut group) = pending.entry(id) {
                    group.get_mut().push(row);
                    if expected().is_some_and(|n| group.get().len() >= n) {
                        ctx.push_refs(&mut ready, &group.remove())?;
                    }
                    continue;
                }
                run.park(&mut pending, &mut order);
                run.head = Waiting {
                    first: row_no,
                    due: cols.due_ts(i),
                    id,
                };
                run.expected = expected();
            }
            run.rows.push(row);
            if run.expected.is_some_and(|n| run.rows.len() >= n) {
                ctx.push_refs(&mut ready, &run.rows)?;
                run.rows.clear();
            }
        }
        // Rows waiting past their batch are all in `pending`, where
        // `recent` finds them.
        run.park(&mut pending, &mut order);
        recent
            .release(&mut pending)
            .map_err(|detail| SchemaError::WrongKind {
                path: path.display().to_string(),
                expected: "results",
                detail,
            })?;
        // Old incomplete groups: compare with what is there.
        while let Some(w) = order.front() {
            if !pending.contains_key(&w.id) {
                order.pop_front();
            } else if window.over(w, row_no, pending.len()) {
                let id = w.id;
                order.pop_front();
                if let Some(g) = pending.remove(&id) {
                    compared_early.insert(id);
                    ctx.push_refs(&mut ready, &g)?;
                }
            } else {
                break;
            }
        }
    }
    // A reader that panicked ended the batches early: judging the rows
    // read so far as the whole file could say GO on part of it.
    if let Err(panic) = decoder.join() {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        return Err(DiffError::Decode(path.display().to_string(), what));
    }
    for w in order {
        if let Some(g) = pending.remove(&w.id) {
            ctx.push_refs(&mut ready, &g)?;
        }
    }
    ctx.flush(&mut ready)?;
    if ctx.folded.exchanges == exchanges_before && row_no > 0 {
        return Err(DiffError::NoPrimary(path.display().to_string()));
    }
    Ok(ids)
}

/// A row whose exchange was already compared without it: counted as
/// unpaired (the gate sees it), never compared as an exchange of its own.
fn fold_late(row: &RowRef, ctx: &mut FoldCtx) {
    let row = row.to_row();
    if let Some(times) = &mut ctx.folded.times {
        times.add(std::slice::from_ref(&row));
    }
    *ctx.folded.unpaired.entry(row.target_name).or_default() += 1;
}

/// The rows of one exchange by role.
struct Roles<'r> {
    recorded: Option<&'r ReplayResult>,
    live: Option<&'r ReplayResult>,
    primary: &'r ReplayResult,
    /// Borrowed: a template's name or the row's own, never copied per row.
    endpoint: &'r str,
}

fn roles<'r>(rows: &'r [ReplayResult], opts: &'r DiffOptions) -> Option<Roles<'r>> {
    let recorded = rows.iter().find(|r| r.role == Some(TargetRole::Recorded));
    let live = rows.iter().find(|r| r.role == Some(TargetRole::Primary));
    let primary = live.or(recorded)?;
    let endpoint = config::template_for(
        &opts.config.endpoints.templates,
        &primary.method,
        &primary.target,
    )
    .unwrap_or(primary.endpoint.as_str());
    Some(Roles {
        recorded,
        live,
        primary,
        endpoint,
    })
}

/// Judgements of one exchange: by the other side's name (a shadow, or
/// `recorded` for the noise pair), then by exact path.
type GroupJudgements = HashMap<String, HashMap<String, judge::Judgement>>;

/// Ask the judge about every judged value of a batch of exchanges at once.
fn judge_batch(
    batch: &[Vec<ReplayResult>],
    opts: &DiffOptions,
    comparer: &mut Comparer,
    pool: &mut judge::JudgePool,
) -> Vec<GroupJudgements> {
    let mut requests = Vec::new();
    let mut keys = Vec::new();
    for (i, rows) in batch.iter().enumerate() {
        let Some(r) = roles(rows, opts) else { continue };
        let spec = comparer.endpoint(r.endpoint).doc;
        let pd = LazyDoc::new(r.primary, spec);
        let request = doc::request_value(r.primary);
        let mut pairs: Vec<(&ReplayResult, &ReplayResult, String)> = rows
            .iter()
            .filter(|x| x.role == Some(TargetRole::Shadow))
            .map(|x| (r.primary, x, x.target_name.clone()))
            .collect();
        if let (Some(rec), Some(live)) = (r.recorded, r.live) {
            pairs.push((rec, live, "recorded".into()));
        }
        for (a, b, side) in pairs {
            if !usable(a) || !usable(b) {
                continue;
            }
            let ad = if std::ptr::eq(a, r.primary) {
                None
            } else {
                Some(LazyDoc::new(a, spec))
            };
            let bd = LazyDoc::new(b, spec);
            let mut seen = compare::Observed::default();
            comparer.compare_docs(
                r.endpoint,
                ad.as_ref().unwrap_or(&pd),
                &bd,
                JudgeMode::Collect,
                &mut seen,
            );
            for (exact, rule_path, pv, sv) in seen.judge_wanted {
                keys.push((i, side.clone(), exact));
                requests.push(judge::JudgeRequest {
                    endpoint: r.endpoint.to_string(),
                    path: rule_path,
                    request: request.clone(),
                    primary: pv,
                    shadow: sv,
                });
            }
        }
    }
    let mut out: Vec<GroupJudgements> = (0..batch.len()).map(|_| HashMap::new()).collect();
    for ((i, side, exact), j) in keys.into_iter().zip(pool.judge_all(requests)) {
        out[i].entry(side).or_default().insert(exact, j);
    }
    out
}

/// Compare one exchange: every shadow against the primary, and the live
/// primary against the recorded one (noise).
fn fold_group(
    rows: Vec<ReplayResult>,
    ctx: &mut FoldCtx,
    judged: Option<&GroupJudgements>,
) -> Result<(), DiffError> {
    if let Some(times) = &mut ctx.folded.times {
        times.add(&rows);
    }
    let Some(r) = roles(&rows, ctx.opts) else {
        // Nothing to compare them with; counted so the gate sees them.
        for row in &rows {
            *ctx.folded
                .unpaired
                .entry(row.target_name.clone())
                .or_default() += 1;
        }
        return Ok(());
    };
    let top = ctx.opts.top;
    let (f, comparer) = (&mut *ctx.folded, &mut *ctx.comparer);
    let name = f.endpoint_name(r.endpoint);
    let primary = r.primary;
    let ep = f.endpoints.id(name);
    f.exchanges += 1;
    *f.exchanges_per_endpoint.entry(ep).or_default() += 1;
    f.live_primary |= r.live.is_some();
    f.recorded_primary |= r.live.is_none();
    // Reported under `name`, compared by the rules of its own endpoint.
    let own = r.endpoint;
    let spec = comparer.endpoint(own).doc;
    let pd = LazyDoc::new(primary, spec);
    static NO_JUDGEMENTS: std::sync::LazyLock<HashMap<String, judge::Judgement>> =
        std::sync::LazyLock::new(HashMap::new);
    // With a judge, a pair it was not asked about still may not pass by default.
    let judge_mode = |side: &str| match judged {
        Some(j) => JudgeMode::Score(j.get(side).unwrap_or(&NO_JUDGEMENTS)),
        None => JudgeMode::Off,
    };
    if let (Some(rec), Some(live)) = (r.recorded, r.live) {
        if usable(rec) && usable(live) {
            let rd = LazyDoc::new(rec, spec);
            let mut seen = compare::Observed::default();
            let diffs = comparer.compare_docs(own, &rd, &pd, judge_mode("recorded"), &mut seen);
            let sig = f.signature(&diffs);
            let n = f.noise.entry(ep).or_default();
            n.compared += 1;
            *n.sigs.entry(sig).or_default() += 1;
            for (path, metric, x) in seen.similarities {
                n.similarity.entry((path, metric)).or_default().add(x);
            }
            if seen.judge_failed > 0 {
                *f.judge_failed.entry((ep, "recorded".into())).or_default() += seen.judge_failed;
            }
        }
    }
    let mut sink = ctx.sink.as_deref_mut();
    for shadow in rows.iter().filter(|r| r.role == Some(TargetRole::Shadow)) {
        let sh = f.shadows.id(&shadow.target_name);
        if let Some(why) = not_carried_out(shadow) {
            *f.not_compared
                .entry(shadow.target_name.clone())
                .or_default()
                .entry(why)
                .or_default() += 1;
        }
        if !usable(primary) || !usable(shadow) {
            continue;
        }
        let sd = LazyDoc::new(shadow, spec);
        let mut seen = compare::Observed::default();
        let diffs =
            comparer.compare_docs(own, &pd, &sd, judge_mode(&shadow.target_name), &mut seen);
        let sig = f.signature(&diffs);
        let cell = Cell {
            sig,
            status_class: if primary.error_kind.is_some() {
                0
            } else {
                primary.status.map_or(0, |s| (s / 100).min(5) as u8)
            },
            size_bucket: size_bucket(primary.request_body.len()),
        };
        if seen.judge_failed > 0 {
            *f.judge_failed
                .entry((ep, shadow.target_name.clone()))
                .or_default() += seen.judge_failed;
        }
        f.llm_probe.entry(ep).or_default();
        let t = f.tallies.entry((ep, sh)).or_default();
        tally_answers(t, primary, shadow, cell);
        for (path, metric, x) in seen.similarities {
            t.similarity.entry((path, metric)).or_default().add(x);
        }
        if let Some(probe) = f.llm_probe.get_mut(&ep).filter(|p| p.wanted()) {
            let mut seen_llm = false;
            for (row, doc, side) in [
                (primary, &pd, &mut t.llm.primary),
                (shadow, &sd, &mut t.llm.shadow),
            ] {
                if let Some(a) = doc::maybe_llm(row)
                    .then(|| doc.get().answer.as_ref())
                    .flatten()
                {
                    side.add(row, a);
                    seen_llm = true;
                }
            }
            // Only a plain answer that succeeded tells that the endpoint is
            // no LLM endpoint: warm-up errors (a 503 before the model is
            // loaded) say nothing, and must not turn its LLM figures off.
            let told = |r: &ReplayResult| {
                r.error_kind.is_none()
                    && r.status.is_some_and(|s| (200..300).contains(&s))
                    && !r.response_body.is_empty()
            };
            if seen_llm || (told(primary) && told(shadow)) {
                probe.saw(primary.exchange_id, seen_llm);
            }
        }
        let wanted = &comparer.endpoint(own).drift;
        summarize::fold_drift(&ctx.opts.config, wanted, &pd, &sd, t);
        if diffs.is_empty() {
            continue;
        }
        let example = || Example {
            exchange_id: shadow.exchange_id,
            shadow: shadow.target_name.clone(),
            endpoint: name.to_string(),
            method: primary.method.clone(),
            target: primary.target.clone(),
            primary_status: primary.status,
            shadow_status: shadow.status,
            differences: diffs
                .iter()
                .map(|d| Difference {
                    path: d.path.clone(),
                    kind: d.kind.as_str().to_string(),
                    primary: d.primary.clone(),
                    shadow: d.shadow.clone(),
                })
                .collect(),
        };
        let slot_count = f.examples.len();
        let room = f.examples_kept < MAX_EXAMPLES_KEPT;
        let slot = f.examples.entry((ep, sh, sig));
        let keep = match &slot {
            std::collections::hash_map::Entry::Occupied(o) => {
                o.get().len() < EXAMPLES_PER_SIGNATURE.max(top)
            }
            std::collections::hash_map::Entry::Vacant(_) => slot_count < MAX_EXAMPLE_SIGNATURES,
        };
        if keep && room {
            slot.or_default().push(example());
            f.examples_kept += 1;
        } else if keep || slot_count >= MAX_EXAMPLE_SIGNATURES {
            f.examples_capped = true;
        }
        if let Some(s) = sink.as_deref_mut() {
            s.write(ep, sh, sig, &pd, &sd, &example())?;
        }
    }
    Ok(())
}

/// Read the candidate lines back and keep the divergent ones.
pub(crate) fn filter_lines(
    tmp: &std::path::Path,
    out: &std::path::Path,
    keep: impl Fn(&serde_json::Value) -> Option<serde_json::Value>,
) -> Result<u64, DiffError> {
    let werr = |e| DiffError::Write(out.display().to_string(), e);
    let input = std::fs::File::open(tmp).map_err(werr)?;
    let file = std::fs::File::create(out).map_err(werr)?;
    let mut w = BufWriter::new(file);
    let mut n = 0;
    for line in std::io::BufReader::new(input).lines() {
        let line = line.map_err(werr)?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(v) = keep(&v) {
            serde_json::to_writer(&mut w, &v).map_err(|e| werr(e.into()))?;
            w.write_all(b"\n").map_err(werr)?;
            n += 1;
        }
    }
    w.flush().map_err(werr)?;
    let _ = std::fs::remove_file(tmp);
    Ok(n)
}

/// Results folded as a replay writes them (`replay --until-decided`): the
/// same comparison as `diff`, on the exchanges in the order they were sent,
/// each once all its rows are in, and a verdict at any moment from what was
/// folded so far, with time-uniform intervals.
pub struct Live<'a> {
    opts: &'a DiffOptions,
    comparer: Comparer<'a>,
    folded: Folded,
    /// Exchanges in sending order, with the rows each will have.
    sent: std::sync::mpsc::Receiver<(u64, usize)>,
    order: VecDeque<(u64, usize)>,
    pending: FxHashMap<u64, Vec<ReplayResult>>,
}

impl<'a> Live<'a> {
    pub fn new(opts: &'a DiffOptions, sent: std::sync::mpsc::Receiver<(u64, usize)>) -> Self {
        let folded = Folded {
            sequential: true,
            ..Default::default()
        };
        Self {
            opts,
            comparer: Comparer::new(&opts.config),
            folded,
            sent,
            order: VecDeque::new(),
            pending: FxHashMap::default(),
        }
    }

    /// One row as written. Exchanges are folded from the front of the
    /// sending order while the front one is complete: so what is folded is
    /// always a prefix of that order, and slow answers still in flight hold
    /// back the ones sent after them instead of being left out.
    pub fn add(&mut self, row: ReplayResult) -> Result<(), DiffError> {
        // Sent before any of its rows was made: draining now finds it.
        self.order.extend(self.sent.try_iter());
        self.pending.entry(row.exchange_id).or_default().push(row);
        while let Some(&(id, rows)) = self.order.front() {
            if self.pending.get(&id).is_none_or(|g| g.len() < rows) {
                break;
            }
            self.order.pop_front();
            let Some(g) = self.pending.remove(&id) else {
                break;
            };
            let mut ctx = FoldCtx {
                opts: self.opts,
                comparer: &mut self.comparer,
                folded: &mut self.folded,
                sink: None,
                judge: None,
                in_place: false,
            };
            fold_group(g, &mut ctx, None)?;
        }
        Ok(())
    }

    /// Exchanges compared so far.
    pub fn exchanges(&self) -> u64 {
        self.folded.exchanges
    }

    /// The verdict on what was folded so far.
    pub fn report(&self) -> Result<Report, DiffError> {
        summarize::report(&self.folded, self.opts, None)
    }
}

#[cfg(test)]
mod probe_tests {
    use super::{LlmProbe, LLM_PROBE_EXCHANGES};

    /// With two shadows each exchange is folded twice; the probe still
    /// looks at 100 exchanges before taking an endpoint as plain.
    #[test]
    fn an_exchange_seen_by_two_shadows_counts_once_for_the_llm_probe() {
        let mut p = LlmProbe::default();
        for id in 0..u64::from(LLM_PROBE_EXCHANGES) - 1 {
            p.saw(id, false);
            p.saw(id, false);
        }
        assert!(p.wanted(), "99 exchanges are not yet enough");
        p.saw(99, false);
        assert!(!p.wanted());
        let mut llm = LlmProbe::default();
        llm.saw(0, false);
        llm.saw(0, true);
        assert!(
            llm.wanted() && llm.llm,
            "an LLM answer from either shadow counts"
        );
    }
}

#[cfg(test)]
mod endpoint_cap_tests {
    use super::{Folded, MAX_ENDPOINTS, OTHER_ENDPOINTS};

    /// Unique paths cannot grow the report: past the cap new names are
    /// reported together, and names already known keep their own.
    #[test]
    fn endpoints_past_the_cap_are_reported_together() {
        let mut f = Folded::default();
        for i in 0..MAX_ENDPOINTS {
            let name = format!("GET /users/u{i}");
            let kept = f.endpoint_name(&name).to_string();
            assert_eq!(kept, name);
            f.endpoints.id(&kept);
        }
        assert_eq!(f.endpoint_name("GET /users/new"), OTHER_ENDPOINTS);
        f.endpoints.id(OTHER_ENDPOINTS);
        assert_eq!(f.endpoint_name("GET /users/another"), OTHER_ENDPOINTS);
        assert_eq!(f.endpoint_name("GET /users/u7"), "GET /users/u7");
        assert_eq!(f.endpoint_name(OTHER_ENDPOINTS), OTHER_ENDPOINTS);
        assert_eq!(f.endpoints_over_cap, 2);
        assert_eq!(f.endpoints.names.len(), MAX_ENDPOINTS + 1);
    }
}
