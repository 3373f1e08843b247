//! `shadowctl capture`: packets -> TCP streams -> HTTP exchanges -> Parquet.
//!
//! The packet loop (decode, reassemble, frame HTTP) runs on the calling
//! thread; Parquet encoding runs on a writer thread fed through a bounded
//! queue, so the two use both cores and memory stays bounded.

pub mod flow;
pub mod http;
pub mod link;
pub mod net;
pub mod reassembly;
pub mod source;
pub mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::schema::{
    Exchange, ExchangeFileWriter, SchemaError, WriterConfig, META_CAPTURE_STATS, REDACTED,
};
use reassembly::Reassembler;
pub use reassembly::ReassemblyConfig;
use source::{CaptureFile, RawPacket};
pub use stats::CaptureStats;

/// Headers whose values are secrets unless `--keep-secrets`.
pub const DEFAULT_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Errors of the capture stage.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}: cannot open: {1}")]
    Open(String, std::io::Error),
    #[error("{0}: not a pcap or pcapng file ({1})")]
    NotACapture(String, String),
    #[error(transparent)]
    Output(#[from] SchemaError),
    #[error("the Parquet writer stopped unexpectedly")]
    WriterGone,
}

/// What `capture --read` is asked to do.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub reassembly: ReassemblyConfig,
    /// Header names (lower case) whose values are replaced by [`REDACTED`].
    pub redact: Vec<String>,
    pub writer: WriterConfig,
    pub progress: bool,
}

impl CaptureOptions {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> Self {
        Self {
            inputs,
            out,
            reassembly: ReassemblyConfig::default(),
            redact: DEFAULT_REDACTED.iter().map(|s| s.to_string()).collect(),
            writer: WriterConfig::default(),
            progress: false,
        }
    }
}

/// Exchanges sent to the writer per message, at most...
const BATCH: usize = 1024;
/// ...or fewer when their bodies reach this many bytes, so the queue to the
/// writer stays small however large the bodies are.
const BATCH_BYTES: usize = 4 << 20;

enum ToWriter {
    Rows(Vec<Exchange>),
    Finish(Vec<(String, String)>),
}

struct WriterThread {
    tx: SyncSender<ToWriter>,
    handle: JoinHandle<Result<(PathBuf, u64, u64), SchemaError>>,
}

impl WriterThread {
    fn spawn(opts: &CaptureOptions) -> Result<Self, CaptureError> {
        let writer = ExchangeFileWriter::create(&opts.out, opts.writer.clone())?;
        let redact = opts.redact.clone();
        let (tx, rx) = sync_channel(2);
        let handle = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || write_loop(writer, rx, &redact))
            .map_err(|e| CaptureError::Open("parquet-writer thread".into(), e))?;
        Ok(Self { tx, handle })
    }

    fn send(&self, rows: Vec<Exchange>) -> Result<(), CaptureError> {
        self.tx
            .send(ToWriter::Rows(rows))
            .map_err(|_| CaptureError::WriterGone)
    }

    /// Close the file; returns (path, rows, redacted values).
    fn finish(self, meta: Vec<(String, String)>) -> Result<(PathBuf, u64, u64), CaptureError> {
        let sent = self.tx.send(ToWriter::Finish(meta));
        drop(self.tx);
        let result = self.handle.join().map_err(|_| CaptureError::WriterGone)?;
        let out = result?;
        sent.map_err(|_| CaptureError::WriterGone)?;
        Ok(out)
    }
}

fn write_loop(
    mut writer: ExchangeFileWriter,
    rx: Receiver<ToWriter>,
    redact: &[String],
) -> Result<(PathBuf, u64, u64), SchemaError> {
    let mut redacted = 0u64;
    let mut meta = Vec::new();
    // A sender dropped without Finish (an error upstream) still gets a footer.
    while let Ok(msg) = rx.recv() {
        match msg {
            ToWriter::Rows(mut rows) => {
                for ex in &mut rows {
                    redacted += ex.request_headers.redact(redact, REDACTED) as u64;
                    redacted += ex.response_headers.redact(redact, REDACTED) as u64;
                    redacted += ex.request_trailers.redact(redact, REDACTED) as u64;
                    redacted += ex.response_trailers.redact(redact, REDACTED) as u64;
                }
                writer.write(&rows)?;
            }
            ToWriter::Finish(m) => {
                meta = m;
                break;
            }
        }
    }
    let rows = writer.rows();
    let path = writer.finish(meta)?;
    Ok((path, rows, redacted))
}

/// The packet loop shared by file and live sources.
pub struct Pipeline {
    reassembler: Reassembler,
    defrag: net::Defragmenter,
    pub stats: CaptureStats,
    next_exchange_id: u64,
}

impl Pipeline {
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            reassembler: Reassembler::new(config),
            defrag: net::Defragmenter::new(4096),
            stats: CaptureStats::default(),
            next_exchange_id: 0,
        }
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
        match net::decode(ip, p.ts_ns, &mut self.defrag) {
            Ok(Some(seg)) => self.reassembler.segment(&seg, p.ts_ns, &mut self.stats),
            Ok(None) => self.stats.skip(link::SkipReason::IpFragmentPending),
            Err(reason) => self.stats.skip(reason),
        }
    }

    /// Completed exchanges, numbered, once at least `min` are ready or
    /// their bodies pass [`BATCH_BYTES`].
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

fn progress_bar(total: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {binary_bytes_per_sec} [{wide_bar}] {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
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
    let writer = WriterThread::spawn(opts)?;
    let mut pipeline = Pipeline::new(opts.reassembly);
    pipeline.stats.files = files.len() as u64;
    pipeline.stats.input_bytes = total;
    let bar = progress_bar(total, opts.progress);
    let stopped = || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
    let mut done_before = 0u64;
    let mut send_error = None;
    for file in &files {
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
            let msg = format!(
                "{}: {why}; kept the {} packets before it",
                file.name(),
                outcome.packets
            );
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
    let mut stats = pipeline.stats;
    let meta = vec![(
        META_CAPTURE_STATS.to_string(),
        serde_json::to_string(&stats).unwrap_or_default(),
    )];
    let finished = writer.finish(meta);
    if let Some(e) = send_error {
        // The writer's own error says more than "the writer stopped".
        finished?;
        return Err(e);
    }
    let (_, rows, redacted) = finished?;
    stats.output_rows = rows;
    stats.redacted_values = redacted;
    Ok(stats)
}
