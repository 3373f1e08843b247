//! The `shadowctl` binary: parses arguments, calls the library, maps errors
//! to exit codes. No work happens here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shadowctl::capture::{self, CaptureOptions};

// glibc's malloc keeps freed body buffers (allocated by the packet thread,
// freed by the writer thread) in per-thread arenas, so resident memory grew
// with the input; mimalloc returns them and keeps RSS flat.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes shared by every subcommand (documented in docs/report.md).
mod exit {
    pub const OK: u8 = 0;
    pub const BAD_INPUT: u8 = 2;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "shadowctl",
    version,
    about = "Capture production HTTP traffic, replay it against primary and shadow deployments, and judge the difference."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn pcap/pcapng captures into a Parquet file of HTTP exchanges.
    #[command(
        after_help = "Examples:\n  shadowctl capture --read traffic.pcap --out exchanges.parquet\n  shadowctl capture --read a.pcapng --read b.pcapng --out ex.parquet --max-body 1MiB --stats-json stats.json\n  shadowctl capture --read t.pcap --out ex.parquet --redact-header x-api-key"
    )]
    Capture(CaptureArgs),
}

#[derive(Args)]
struct CaptureArgs {
    /// A pcap or pcapng file (repeat for several; read in order as one capture).
    #[arg(long = "read", value_name = "FILE", required = true)]
    read: Vec<PathBuf>,
    /// The Parquet file to write.
    #[arg(long, value_name = "OUT.parquet")]
    out: PathBuf,
    /// Also redact the values of this header (repeatable).
    #[arg(long = "redact-header", value_name = "NAME")]
    redact_header: Vec<String>,
    /// Keep Authorization, Cookie and other secret header values as captured.
    #[arg(long)]
    keep_secrets: bool,
    /// Store at most this many body bytes per message (e.g. 65536, 1MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "16MiB")]
    max_body: usize,
    /// Connections tracked at once; the least recently active are evicted.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_connections: usize,
    /// Bytes held in total for reassembly and unfinished messages.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "128MiB")]
    max_buffer_bytes: usize,
    /// Out-of-order bytes held per connection direction.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4MiB")]
    max_conn_buffer: usize,
    /// Seconds of capture time after which an idle connection is finished.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,
    /// Write the summary figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Print nothing but errors and warnings.
    #[arg(short, long)]
    quiet: bool,
}

/// Parse "4096", "64KiB", "1MiB", "2GiB", "1MB", "10k".
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 65536 or 1MiB"))?;
    let mult: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // If registration fails we simply cannot be interrupted gracefully.
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

fn run_capture(args: CaptureArgs) -> anyhow::Result<u8> {
    let mut opts = CaptureOptions::new(args.read, args.out.clone());
    if args.keep_secrets {
        opts.redact.clear();
    }
    opts.redact
        .extend(args.redact_header.iter().map(|h| h.to_ascii_lowercase()));
    opts.reassembly.flow.max_body = args.max_body;
    opts.reassembly.max_connections = args.max_connections.max(1);
    opts.reassembly.max_buffer_bytes = args.max_buffer_bytes;
    opts.reassembly.max_conn_buffer = args.max_conn_buffer;
    opts.reassembly.idle_timeout_ns = (args.idle_timeout as i64).saturating_mul(1_000_000_000);
    opts.progress = !args.quiet;
    let stop = interrupt_flag();
    let stats = capture::capture_files(&opts, Some(Arc::clone(&stop)))?;
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&stats)?;
        std::fs::write(path, json)
            .with_context(|| format!("--stats-json {}: cannot write", path.display()))?;
    }
    if !args.quiet {
        print!("{}", stats.summary());
        println!(
            "  written            {} ({} rows)",
            args.out.display(),
            stats.output_rows
        );
    }
    if stop.load(Ordering::Relaxed) {
        eprintln!(
            "interrupted: {} holds what was captured before the stop",
            args.out.display()
        );
        return Ok(exit::INTERRUPTED);
    }
    Ok(exit::OK)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(args) => run_capture(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::BAD_INPUT)
        }
    }
}
