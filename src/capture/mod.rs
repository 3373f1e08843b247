//! `shadowctl capture`: packets -> TCP streams -> HTTP exchanges -> Parquet.
//!
//! The packet loop (decode, reassemble, frame HTTP) runs on the calling
//! thread; Parquet encoding runs on a writer thread fed through a bounded
//! queue, so the two use both cores and memory stays bounded.

pub mod flow;
pub mod h2;
pub mod link;
pub mod live;
pub mod net;
pub mod output;
mod pairing;
pub mod reassembly;
pub mod source;
pub mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::schema::{Exchange, SchemaError, WriterConfig, REDACTED};
use output::{OutputSpec, OutputWriter, StatsSnapshot, WriteResult, Written};
use reassembly::Reassembler;
pub use reassembly::ReassemblyConfig;
use source::{CaptureFile, RawPacket};
pub use stats::CaptureStats;

use crate::redact::{redact_message, redact_url_fields, URL_FIELDS};
pub use crate::redact::{redact_query, Redaction, DEFAULT_REDACTED_QUERY};
pub use crate::schema::DEFAULT_REDACTED;

/// Errors of the capture stage.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}: cannot open: {1}")]
    Open(String, std::io::Error),
    #[error("{0}: cannot read captures from {1}")]
    NotAFile(String, &'static str),
    #[error("{0}: not a pcap or pcapng file ({1})")]
    NotACapture(String, String),
    #[error(transparent)]
    Output(#[from] SchemaError),
    #[error("the Parquet writer stopped unexpectedly")]
    WriterGone,
    #[error(transparent)]
    Live(#[from] live::LiveError),
    /// A failure after capture began, with what it saw and wrote until then.
    #[error("{}", .0.cause)]
    Failed(Box<Failed>),
}

/// A capture that failed once running: the cause, and its figures until
/// then (`stats.error` holds the cause's text), so `--stats-json` and the
/// summary still say what was captured and written.
#[derive(Debug)]
pub struct Failed {
    pub cause: CaptureError,
    pub stats: CaptureStats,
}

impl CaptureError {
    /// `self` with the figures of the run it ended.
    pub(crate) fn with_stats(self, mut stats: CaptureStats) -> Self {
        stats.error = Some(self.to_string());
        CaptureError::Failed(Box::new(Failed { cause: self, stats }))
    }
}

/// What `capture --read` is asked to do.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub reassembly: ReassemblyConfig,
    pub redact: Redaction,
    pub writer: WriterConfig,
    pub progress: bool,
    /// Keep this fraction of connections (`--sample`).
    pub sample: Option<f64>,
}

impl CaptureOptions {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> Self {
        Self {
            inputs,
            out,
            reassembly: ReassemblyConfig::default(),
            redact: Redaction::default(),
            writer: WriterConfig::default(),
            progress: false,
            sample: None,
        }
    }
}

/// Exchanges sent to the writer per message, at most...
const BATCH: usize = 1024;
/// ...or fewer when their bodies reach this many bytes, so the queue to the
/// writer stays small however large the bodies are.
const BATCH_BYTES: usize = 4 << 20;

/// Bytes a live capture may have queued for the writer. The queue is
/// bounded in batches too, but one batch can hold bodies of up to twice
/// `--max-body` each, so batches alone would let it grow to gigabytes.
const QUEUE_BYTES: usize = 64 << 20;

/// The writer thread stopped on an error: why, and the files it left
/// complete on disk with their rows.
#[derive(Debug)]
pub(crate) struct WriterFailed {
    pub cause: CaptureError,
    pub kept: Written,
}

impl From<Box<WriterFailed>> for CaptureError {
    fn from(w: Box<WriterFailed>) -> Self {
        w.cause
    }
}

impl From<CaptureError> for Box<WriterFailed> {
    fn from(cause: CaptureError) -> Self {
        Box::new(WriterFailed {
            cause,
            kept: (Vec::new(), 0),
        })
    }
}

enum ToWriter {
    /// Rows, and the bytes they were counted as in the queue.
    Rows(Vec<Exchange>, usize),
    Finish,
    /// The run failed: drop the open file (its temporary is removed), so
    /// what the user had under the output name stays as it was.
    Abort,
}

/// The Parquet writer thread: encodes and rotates files, so the packet loop
/// never waits on compression.
pub(crate) struct WriterThread {
    /// Both taken only by `finish`, `abort` or `Drop`.
    tx: Option<SyncSender<ToWriter>>,
    handle: Option<JoinHandle<WriteResult>>,
    /// Rotated files in a directory: kept (with footers) if the packet loop
    /// unwinds; a single output file is given up, as on any failed run.
    keep_on_drop: bool,
    /// Rows refused because the queue was full (live capture only).
    pub dropped_rows: u64,
    /// Bytes of the rows offered and not yet written (see [`QUEUE_BYTES`]).
    queued_bytes: Arc<AtomicUsize>,
}

impl WriterThread {
    /// A writer redacting by `redaction` (see [`write_loop`]); `stats`
    /// go into each file's footer, with the count of values redacted.
    pub(crate) fn spawn(
        output: OutputSpec,
        config: WriterConfig,
        stats: StatsSnapshot,
        queue: usize,
        redaction: Redaction,
    ) -> Result<Self, CaptureError> {
        let keep_on_drop = matches!(output, OutputSpec::Dir { .. });
        let writer = OutputWriter::new(output, config, stats)?;
        let (tx, rx) = sync_channel(queue);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&queued_bytes);
        let handle = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || write_loop(writer, rx, &written, &redaction))
            .map_err(|e| CaptureError::Open("parquet-writer thread".into(), e))?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
            keep_on_drop,
            dropped_rows: 0,
            queued_bytes,
        })
    }

    /// Keep the open file (with its footer) even for a single output file
    /// if the packet loop unwinds: a live capture cannot be run again, so
    /// what it wrote is worth more than a clean slate.
    pub(crate) fn keep_on_unwind(&mut self) {
        self.keep_on_drop = true;
    }

    fn tx(&self) -> &SyncSender<ToWriter> {
        self.tx
            .as_ref()
            .expect("only finish, abort and drop take it")
    }

    /// Close the queue and wait for the writer: its footers are written.
    fn join(&mut self) -> Result<Written, Box<WriterFailed>> {
        drop(self.tx.take());
        let Some(h) = self.handle.take() else {
            return Err(CaptureError::WriterGone.into());
        };
        match h.join() {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(failed)) => {
                let (e, kept) = *failed;
                Err(Box::new(WriterFailed {
                    cause: e.into(),
                    kept,
                }))
            }
            Err(_) => Err(CaptureError::WriterGone.into()),
        }
    }

    /// Queue rows, waiting for room (reading files: nothing may be lost).
    pub(crate) fn send(&self, rows: Vec<Exchange>) -> Result<(), CaptureError> {
        let bytes = rows_bytes(&rows);
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.tx()
            .send(ToWriter::Rows(rows, bytes))
            .map_err(|_| CaptureError::WriterGone)
    }

    /// Queue rows without waiting (live capture: the packet loop must not
    /// block); rows that do not fit, in batches or in [`QUEUE_BYTES`], are
    /// counted as dropped. One batch always fits an empty queue.
    pub(crate) fn offer(&mut self, rows: Vec<Exchange>) -> Result<(), CaptureError> {
        // A writer that stopped on an error (a full disk) left its queued
        // bytes counted: without this its death read as a slow writer.
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            return Err(CaptureError::WriterGone);
        }
        let n = rows.len() as u64;
        let bytes = rows_bytes(&rows);
        if !queue_admits(self.queued_bytes.load(Ordering::Acquire), bytes) {
            self.dropped_rows += n;
            return Ok(());
        }
        // Counted before the send, so the writer never subtracts first.
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        match self.tx().try_send(ToWriter::Rows(rows, bytes)) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                self.dropped_rows += n;
                Ok(())
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(CaptureError::WriterGone),
        }
    }

    /// Give up the open file (see [`ToWriter::Abort`]) and wait for the
    /// writer to have removed it.
    /// Returns the writer's own error, if it had stopped on one, with
    /// what it kept.
    pub(crate) fn abort(mut self) -> Result<(), Box<WriterFailed>> {
        let _ = self.tx().send(ToWriter::Abort);
        self.join()?;
        Ok(())
    }

    /// Close the files; returns the files and the rows written, or why the
    /// writer stopped and what it left complete.
    pub(crate) fn finish(mut self) -> Result<Written, Box<WriterFailed>> {
        let sent = self.tx().send(ToWriter::Finish);
        let out = self.join()?;
        sent.map_err(|_| CaptureError::WriterGone)?;
        Ok(out)
    }
}

/// A packet loop that unwinds (a panic) still waits for the writer, so the
/// open rotated file gets its footer (or a single file is given up)
/// before the process ends, never cut off half-written.
impl Drop for WriterThread {
    fn drop(&mut self) {
        if self.handle.is_some() {
            if !self.keep_on_drop {
                let _ = self.tx().send(ToWriter::Abort);
            }
            let _ = self.join();
        }
    }
}

/// Redact every row by `redaction`; how many values in each row.
pub fn redact_rows(rows: &mut [Exchange], redaction: &Redaction) -> Vec<u64> {
    let (names, query) = (&redaction.headers, &redaction.query);
    let body_names = redaction.body_names();
    let mut counts = Vec::with_capacity(rows.len());
    for ex in rows {
        let mut n = 0;
        n += redact_message(&ex.request_headers, &mut ex.request_body, &body_names);
        n += redact_message(&ex.response_headers, &mut ex.response_body, &body_names);
        if !query.is_empty() {
            let (target, k) = redact_query(&ex.target, query);
            if let Some(t) = target {
                ex.target = t;
            }
            n += k;
            // HTTP/2 keeps the target in its `:path` field too (counted once).
            if k > 0 && ex.http_version == "HTTP/2" {
                redact_url_fields(&mut ex.request_headers, &[":path"], query);
            }
            n += redact_url_fields(&mut ex.request_headers, &URL_FIELDS, query);
            n += redact_url_fields(&mut ex.response_headers, &URL_FIELDS, query);
        }
        for h in [
            &mut ex.request_headers,
            &mut ex.response_headers,
            &mut ex.request_trailers,
            &mut ex.response_trailers,
        ] {
            n += h.redact(names, REDACTED) as u64;
        }
        counts.push(n);
    }
    counts
}

/// The statistics a file gets if it is closed before any are taken (a
/// failed run, a live file rotated in its first second): at least the
/// names it was redacted by, which replay redacts live answers by too.
pub(crate) fn seeded_snapshot(redaction: &Redaction) -> StatsSnapshot {
    StatsSnapshot::new(CaptureStats {
        redaction: Some(redaction.clone()),
        ..Default::default()
    })
}

/// Redact a batch on the writer thread; the values redacted in each row.
/// A panic in the hand-written scanners must not cost the files written so
/// far (the thread would unwind and drop its open file): the batch is then
/// left out, unwritten, and the loss said.
fn redact_batch(rows: &mut [Exchange], redaction: &Redaction) -> Option<Vec<u64>> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        redact_rows(rows, redaction)
    }));
    if run.is_err() {
        // Not eprintln!: it panics when stderr is gone.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "warning: redaction failed on a batch of {} exchanges (a bug in shadowctl; please report it): they were not written",
            rows.len()
        );
    }
    run.ok()
}

/// Whether a live batch of `bytes` may join `held` queued bytes.
fn queue_admits(held: usize, bytes: usize) -> bool {
    held == 0 || held.saturating_add(bytes) <= QUEUE_BYTES
}

/// What a batch of rows holds in memory (see [`QUEUE_BYTES`]).
fn rows_bytes(rows: &[Exchange]) -> usize {
    rows.iter().map(Exchange::held_bytes).sum()
}

/// Encodes the rows it is sent. Secrets are redacted here, before any
/// encoding, rather than on the packet loop: that loop bounds capture's
/// speed and the writer had time to spare (docs/scale.md).
fn write_loop(
    mut writer: OutputWriter,
    rx: Receiver<ToWriter>,
    queued_bytes: &AtomicUsize,
    redaction: &Redaction,
) -> WriteResult {
    // A sender dropped without Finish (an error upstream) still gets footers.
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(ToWriter::Rows(mut rows, bytes)) => {
                let written = match redact_batch(&mut rows, redaction) {
                    Some(counts) => writer.write_redacted(&rows, &counts),
                    None => Ok(()),
                };
                queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                if let Err(e) = written {
                    // A full disk or a vanished directory: keep what can be
                    // kept, then say what happened, and what is kept.
                    let kept = writer.salvage(&e);
                    return Err(Box::new((e, kept)));
                }
            }
            Ok(ToWriter::Finish) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(ToWriter::Abort) => return Ok((Vec::new(), 0)),
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Closing a rotated file can fail too (its footer on a full disk).
        if let Err(e) = writer.tick() {
            let kept = writer.salvage(&e);
            return Err(Box::new((e, kept)));
        }
    }
    writer.finish()
}

/// The packet loop shared by file and live sources.
pub struct Pipeline {
    reassembler: Reassembler,
    defrag: net::Defragmenter,
    pub stats: CaptureStats,
    next_exchange_id: u64,
    /// Keep a connection when the hash of its endpoints is below this.
    sample_below: Option<u64>,
}

impl Pipeline {
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            reassembler: Reassembler::new(config),
            defrag: net::Defragmenter::new(4096),
            stats: CaptureStats::default(),
            next_exchange_id: 0,
            sample_below: None,
        }
    }

    /// Keep only `fraction` of the connections, chosen by a hash of their
    /// endpoints, so kept connections are whole and uniformly spread.
    pub fn sample(&mut self, fraction: f64) {
        let f = fraction.clamp(0.0, 1.0);
        self.sample_below = (f < 1.0).then_some((f * u64::MAX as f64) as u64);
    }

    fn sampled_out(&self, seg: &net::Segment<'_>) -> bool {
        let Some(below) = self.sample_below else {
            return false;
        };
        use std::hash::{Hash, Hasher};
        let (a, b) = if seg.src <= seg.dst {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        // SipHash with fixed keys: the same connection is chosen on every run
        // and on every host.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(0x5348_4144_4f57, 0x0043_544c);
        (a, b).hash(&mut h);
        h.finish() >= below
    }

    /// Exchanges completed so far (written or waiting).
    pub fn exchanges_so_far(&self) -> u64 {
        self.stats.exchanges + self.reassembler.pending_exchanges() as u64
    }

    /// Process one frame.
    pub fn packet(&mut self, p: &RawPacket<'_>) {
        self.stats.packets += 1;
        self.stats.packet_bytes += p.data.len() as u64;
        if (p.orig_len as usize) > p.data.len() {
            self.stats.packets_cut_by_snaplen += 1;
        }
        let ip = match link::ip_payload(p.linktype, p.data) {
            Ok(ip) => ip,
            Err(reason) => return self.stats.skip(reason),
        };
        self.defrag.tick(p.ts_ns);
        match net::decode(ip, p.ts_ns, &mut self.defrag) {
            Ok(Some(seg)) if self.sampled_out(&seg) => self.stats.sampled_out_segments += 1,
            Ok(Some(seg)) => self.reassembler.segment(&seg, p.ts_ns, &mut self.stats),
            Ok(None) => self.stats.skip(link::SkipReason::IpFragmentPending),
            Err(reason) => self.stats.skip(reason),
        }
    }

    /// Completed exchanges, numbered, once at least `min` are ready or
    /// their bodies pass [`BATCH_BYTES`]. Not yet redacted: the writer
    /// thread does that (see [`write_loop`]).
    pub fn ready(&mut self, min: usize) -> Option<Vec<Exchange>> {
        let n = self.reassembler.pending_exchanges();
        if n == 0 || (n < min && self.reassembler.pending_bytes() < BATCH_BYTES) {
            return None;
        }
        let mut rows = self.reassembler.take_exchanges();
        for ex in &mut rows {
            ex.exchange_id = self.next_exchange_id;
            self.next_exchange_id += 1;
        }
        self.stats.add_exchanges(&rows);
        Some(rows)
    }

    /// End of input: finish every connection.
    pub fn finish(&mut self) -> Option<Vec<Exchange>> {
        self.reassembler.finish(&mut self.stats);
        self.stats.ip_fragments_dropped = self.defrag.dropped;
        self.ready(1)
    }
}

/// Run `capture --read`: every input in order, as one continuous capture.
/// `stop` (Ctrl-C) ends reading early; the output is still completed.
pub fn capture_files(
    opts: &CaptureOptions,
    stop: Option<Arc<AtomicBool>>,
) -> Result<CaptureStats, CaptureError> {
    // Open everything first so a bad input fails before any output exists.
    let files: Vec<CaptureFile> = opts
        .inputs
        .iter()
        .map(|p| CaptureFile::open(p))
        .collect::<Result<_, _>>()?;
    let total: u64 = files.iter().map(CaptureFile::len).sum();
    let snapshot = seeded_snapshot(&opts.redact);
    let writer = WriterThread::spawn(
        OutputSpec::File(opts.out.clone()),
        opts.writer.clone(),
        snapshot.clone(),
        2,
        opts.redact.clone(),
    )?;
    let (mut stats, read) = read_all(opts, &files, total, &writer, stop);
    match read {
        Ok(()) => {
            snapshot.set(&stats);
            let finished = writer.finish();
            // Final now that the writer has ended.
            stats.redacted_values = snapshot.redacted_values();
            match finished {
                Ok((_, rows)) => {
                    stats.output_rows = rows;
                    Ok(stats)
                }
                Err(w) => Err(w.cause.with_stats(with_output(stats, w.kept))),
            }
        }
        Err(e) => {
            // A failed run writes nothing: the previous output stays
            // (unless the writer had kept rows from before a full disk).
            let own = writer.abort();
            // The writer's own error says more than "the writer stopped".
            let (cause, written) = match (e, own) {
                (CaptureError::WriterGone, Err(own)) => (own.cause, own.kept),
                (e, Err(own)) => (e, own.kept),
                (e, Ok(())) => (e, Written::default()),
            };
            stats.redacted_values = snapshot.redacted_values();
            Err(cause.with_stats(with_output(stats, written)))
        }
    }
}

/// `stats` with the files the writer completed, and their rows.
pub(crate) fn with_output(mut stats: CaptureStats, (files, rows): Written) -> CaptureStats {
    stats.output_rows = rows;
    stats.output_files = files.iter().map(|f| f.display().to_string()).collect();
    stats
}

/// The packet loop of [`capture_files`] over every input, feeding `writer`:
/// its figures, and how it ended.
fn read_all(
    opts: &CaptureOptions,
    files: &[CaptureFile],
    total: u64,
    writer: &WriterThread,
    stop: Option<Arc<AtomicBool>>,
) -> (CaptureStats, Result<(), CaptureError>) {
    let mut pipeline = Pipeline::new(opts.reassembly);
    let read = read_into(&mut pipeline, opts, files, total, writer, stop);
    (pipeline.stats, read)
}

fn read_into(
    pipeline: &mut Pipeline,
    opts: &CaptureOptions,
    files: &[CaptureFile],
    total: u64,
    writer: &WriterThread,
    stop: Option<Arc<AtomicBool>>,
) -> Result<(), CaptureError> {
    pipeline.stats.redaction = Some(opts.redact.clone());
    if let Some(f) = opts.sample {
        pipeline.sample(f);
    }
    pipeline.stats.files = files.len() as u64;
    pipeline.stats.input_bytes = total;
    let bar = crate::progress::bar(
        total,
        "{spinner} {bytes}/{total_bytes} {binary_bytes_per_sec} [{wide_bar}] {eta} {msg}",
        opts.progress,
    );
    let stopped = || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
    let mut done_before = 0u64;
    let mut send_error = None;
    for file in files {
        if stopped() {
            break;
        }
        let mut last_tick = 0u64;
        let outcome = file.for_each_packet(
            |p, offset| {
                if send_error.is_some() {
                    return;
                }
                pipeline.packet(&p);
                if let Some(rows) = pipeline.ready(BATCH) {
                    if let Err(e) = writer.send(rows) {
                        send_error = Some(e);
                    }
                }
                if offset - last_tick > 4 << 20 {
                    last_tick = offset;
                    bar.set_position(done_before + offset);
                }
            },
            &stopped,
        )?;
        done_before += file.len();
        if let Some(why) = outcome.damaged {
            let msg = format!("{}: {why}; read {} packets", file.name(), outcome.packets);
            bar.suspend(|| eprintln!("warning: {msg}"));
            pipeline.stats.damaged_files.push(msg);
        }
        if send_error.is_some() {
            break;
        }
    }
    bar.finish_and_clear();
    if let Some(rows) = pipeline.finish() {
        if send_error.is_none() {
            if let Err(e) = writer.send(rows) {
                send_error = Some(e);
            }
        }
    }
    match send_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_all(rows: &mut [Exchange], redaction: &Redaction) -> u64 {
        redact_rows(rows, redaction).iter().sum()
    }

    /// A writer thread with the default redaction and no statistics.
    fn writer(spec: OutputSpec, queue: usize) -> WriterThread {
        WriterThread::spawn(
            spec,
            Default::default(),
            Default::default(),
            queue,
            Redaction::default(),
        )
        .unwrap()
    }

    /// The live queue is bounded in bytes: one large batch always goes,
    /// a second that would pass the bound is refused, and what the writer
    /// wrote is given back.
    #[test]
    fn the_live_queue_is_bounded_in_bytes() {
        assert!(queue_admits(0, 40 << 20));
        assert!(queue_admits(0, 400 << 20));
        assert!(!queue_admits(40 << 20, 40 << 20));
        assert!(queue_admits(40 << 20, 20 << 20));
        assert!(!queue_admits(usize::MAX - 1, 2));

        let dir = tempfile::tempdir().unwrap();
        let spec = OutputSpec::File(dir.path().join("out.parquet"));
        let mut w = writer(spec, 16);
        let big = Exchange {
            response_body: vec![b'x'; 40 << 20],
            ..Default::default()
        };
        // Held as if the writer were still busy with an earlier batch.
        w.queued_bytes.fetch_add(30 << 20, Ordering::AcqRel);
        w.offer(vec![big.clone()]).unwrap();
        assert_eq!(w.dropped_rows, 1, "40 MiB on 30 MiB queued passes 64 MiB");
        w.queued_bytes.fetch_sub(30 << 20, Ordering::AcqRel);
        w.offer(vec![big]).unwrap();
        assert_eq!(w.dropped_rows, 1, "an empty queue takes any batch");
        let queued = Arc::clone(&w.queued_bytes);
        let (_, rows) = w.finish().unwrap();
        assert_eq!(rows, 1);
        assert_eq!(
            queued.load(Ordering::Acquire),
            0,
            "the writer gave its bytes back"
        );
    }

    /// The writer thread redacts, and each file's footer counts the values
    /// of the rows written up to it, one batch split between files too.
    #[test]
    fn the_writer_redacts_and_each_footer_counts_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let spec = OutputSpec::Dir {
            dir: dir.path().to_path_buf(),
            rotation: output::Rotation {
                rows: Some(2),
                ..Default::default()
            },
        };
        let stats = StatsSnapshot::default();
        let w = WriterThread::spawn(
            spec,
            Default::default(),
            stats.clone(),
            4,
            Redaction::default(),
        )
        .unwrap();
        let rows: Vec<Exchange> = (0..3)
            .map(|i| {
                let mut ex = Exchange {
                    exchange_id: i,
                    ..Default::default()
                };
                ex.request_headers.push(b"Authorization", b"Bearer t0ken");
                ex
            })
            .collect();
        w.send(rows).unwrap();
        let (mut files, n) = w.finish().unwrap();
        assert_eq!((files.len(), n), (2, 3));
        assert_eq!(stats.redacted_values(), 3);
        files.sort();
        let mut counted = Vec::new();
        for f in &files {
            let (rows, meta) = crate::schema::read_exchanges(f).unwrap();
            assert!(rows
                .iter()
                .all(|r| r.request_headers.get("authorization") == Some(REDACTED.as_bytes())));
            let (_, json) = meta
                .iter()
                .find(|(k, _)| k == crate::schema::META_CAPTURE_STATS)
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            counted.push((rows.len(), v["redacted_values"].as_u64().unwrap()));
        }
        assert_eq!(counted, [(2, 2), (1, 3)]);
    }

    /// A directory of rotated files of one row each.
    fn one_row_files(dir: &std::path::Path) -> OutputSpec {
        OutputSpec::Dir {
            dir: dir.to_path_buf(),
            rotation: output::Rotation {
                rows: Some(1),
                ..Default::default()
            },
        }
    }

    /// The output directory removed mid-run: the writer's own error is what
    /// the capture reports, and the files already written stay.
    #[test]
    fn a_writer_that_fails_says_why_and_keeps_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spec = one_row_files(&out);
        let w = writer(spec, 4);
        let row = |id| Exchange {
            exchange_id: id,
            method: "GET".into(),
            ..Default::default()
        };
        w.send(vec![row(0)]).unwrap();
        w.send(vec![row(1)]).unwrap();
        // Both rows are in closed files once the next one is asked for.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let parquet = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .map(|r| {
                    r.filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .path()
                            .extension()
                            .is_some_and(|x| x == "parquet")
                    })
                    .count()
                })
                .unwrap_or(0)
        };
        while parquet(&out) < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let kept = dir.path().join("kept");
        std::fs::rename(&out, &kept).unwrap();
        let _ = w.send(vec![row(2)]);
        let _ = w.send(vec![row(3)]);
        let failed = w.finish().unwrap_err();
        let err = failed.cause.to_string();
        assert!(err.contains("No such file"), "{err}");
        assert!(parquet(&kept) >= 1);
        for f in std::fs::read_dir(&kept).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "parquet") {
                assert_eq!(crate::schema::read_exchanges(&f).unwrap().0.len(), 1);
            }
        }
    }

    /// A live capture whose packet loop panics keeps its single output file,
    /// footer and rows; reading files, the half-written output is given up.
    #[test]
    fn a_live_writer_keeps_its_single_file_when_the_loop_unwinds() {
        for live in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("live.parquet");
            let spec = OutputSpec::File(path.clone());
            let mut w = writer(spec, 4);
            if live {
                w.keep_on_unwind();
            }
            let row = Exchange {
                exchange_id: 7,
                method: "GET".into(),
                ..Default::default()
            };
            w.offer(vec![row]).unwrap();
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _w = w;
                panic!("the packet loop failed");
            }));
            assert!(unwound.is_err());
            if live {
                let (rows, _) = crate::schema::read_exchanges(&path).unwrap();
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].exchange_id, 7);
            } else {
                assert!(!path.exists());
            }
        }
    }

    /// A writer that stopped on an error is reported as gone by the next
    /// offer, not taken for a slow one whose rows are dropped.
    #[test]
    fn an_offer_to_a_dead_writer_says_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spec = one_row_files(&out);
        let mut w = writer(spec, 4);
        std::fs::remove_dir_all(&out).unwrap();
        let row = |id| Exchange {
            exchange_id: id,
            method: "GET".into(),
            ..Default::default()
        };
        w.offer(vec![row(0)]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !w.handle.as_ref().unwrap().is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A backlog the dead writer never gave back, as after a failure
        // with batches still queued: a big batch no longer fits under it.
        w.queued_bytes.fetch_add(60 << 20, Ordering::AcqRel);
        let big = Exchange {
            response_body: vec![b'x'; 10 << 20],
            ..row(1)
        };
        assert!(
            matches!(w.offer(vec![big]), Err(CaptureError::WriterGone)),
            "dropped rows: {}",
            w.dropped_rows
        );
        assert!(w.finish().is_err());
    }

    #[test]
    fn http2_path_fields_and_lower_case_secrets_are_redacted() {
        let mut h = crate::schema::HeaderList::new();
        h.push(b":method", b"GET");
        h.push(b":path", b"/m?token=s3cret&x=1");
        h.push(b"authorization", b"Bearer s3cret");
        let mut rows = vec![Exchange {
            target: "/m?token=s3cret&x=1".into(),
            http_version: "HTTP/2".into(),
            request_headers: h,
            ..Default::default()
        }];
        let n = redact_all(&mut rows, &Redaction::default());
        assert_eq!(n, 2, "the query value (counted once) and the header");
        let ex = &rows[0];
        assert_eq!(ex.target, "/m?token=[REDACTED]&x=1");
        assert_eq!(
            ex.request_headers.get(":path"),
            Some(&b"/m?token=[REDACTED]&x=1"[..])
        );
        assert_eq!(
            ex.request_headers.get("authorization"),
            Some(&b"[REDACTED]"[..])
        );
    }

    #[test]
    fn urls_in_referer_and_location_and_presigned_urls_are_redacted() {
        let mut req = crate::schema::HeaderList::new();
        req.push(
            b"Referer",
            b"https://app.example/cb?code=1&access_token=s3cret",
        );
        let mut resp = crate::schema::HeaderList::new();
        resp.push(
            b"Location",
            b"https://b.s3.amazonaws.com/o?X-Amz-Credential=AKIA&X-Amz-Signature=abc&X-Amz-Expires=60",
        );
        resp.push(b"Content-Type", b"text/plain?token=not-a-url-field");
        let mut rows = vec![Exchange {
            target: "/dl".into(),
            http_version: "HTTP/1.1".into(),
            request_headers: req,
            response_headers: resp,
            ..Default::default()
        }];
        assert_eq!(redact_all(&mut rows, &Redaction::default()), 3);
        let ex = &rows[0];
        assert_eq!(
            ex.request_headers.get("referer"),
            Some(&b"https://app.example/cb?code=1&access_token=[REDACTED]"[..])
        );
        assert_eq!(
            ex.response_headers.get("location"),
            Some(&b"https://b.s3.amazonaws.com/o?X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]&X-Amz-Expires=60"[..])
        );
        assert_eq!(
            ex.response_headers.get("content-type"),
            Some(&b"text/plain?token=not-a-url-field"[..])
        );
        // --keep-secrets keeps them.
        let mut kept = rows.clone();
        kept[0].request_headers = crate::schema::HeaderList::new();
        kept[0].request_headers.push(b"referer", b"/x?token=t");
        assert_eq!(redact_all(&mut kept, &Redaction::none()), 0);
    }

    #[test]
    fn query_credentials_are_redacted_by_name_whatever_their_case() {
        let names = Redaction::default().query;
        let (t, n) = redact_query("/v1/x?API_KEY=abc&limit=5&token=t0k#top", &names);
        assert_eq!(
            (t.as_deref(), n),
            (
                Some("/v1/x?API_KEY=[REDACTED]&limit=5&token=[REDACTED]#top"),
                2
            )
        );
        // Names that only contain a default name, empty values and targets
        // without a query are left as they are.
        for same in ["/a?monkey=1&tokens=2", "/a?key=", "/a", "/a?key"] {
            assert_eq!(redact_query(same, &names), (None, 0), "{same}");
        }
        assert_eq!(
            redact_query("/a?key=1", &Redaction::none().query),
            (None, 0)
        );
    }

    #[test]
    fn common_api_key_headers_are_redacted_by_default_and_idempotency_keys_kept() {
        let mut ex = Exchange {
            target: "/pay?access_token=xyz".into(),
            ..Default::default()
        };
        for (n, v) in [
            ("X-Api-Key", "k1"),
            ("Ocp-Apim-Subscription-Key", "k2"),
            ("X-Goog-Api-Key", "k3"),
            ("Idempotency-Key", "order-7"),
        ] {
            ex.request_headers.push(n.as_bytes(), v.as_bytes());
        }
        let mut rows = vec![ex];
        assert_eq!(redact_all(&mut rows, &Redaction::default()), 4);
        let h = &rows[0].request_headers;
        assert_eq!(h.get("x-api-key"), Some(REDACTED.as_bytes()));
        assert_eq!(h.get("idempotency-key"), Some(&b"order-7"[..]));
        assert_eq!(rows[0].target, "/pay?access_token=[REDACTED]");
    }
}
