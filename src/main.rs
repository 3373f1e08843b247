//! The `shadowctl` binary: parses arguments, calls the library, maps errors
//! to exit codes. No work happens here.

use std::io::Write;
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

/// Replay frees and reallocates its buffers at a high rate. mimalloc gave
/// freed pages back to the system after 10 ms, and each one came back as a
/// page fault that zeroed a 2 MiB huge page: a tenth of `replay --max`'s
/// CPU (perf), and 5-10x the page faults. Replay is short-lived and runs
/// beside the targets, not on a production host: it keeps its pages.
/// (Capture keeps the default, so a long live capture gives memory back
/// after a burst.) `MIMALLOC_PURGE_DELAY` still overrides this.
fn keep_freed_pages() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an allocator option, which mimalloc reads atomically.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, -1) }
}

/// No transparent huge pages for replay and capture. mimalloc asks for them
/// on its arenas, and replay's churn of buffers faulted in thousands of fresh
/// 2 MiB pages a run, each zeroed whole by the kernel: a fifth of
/// `replay --max`'s samples in `clear_page_erms` (perf), on a VM with THP set
/// to `madvise`. Without them: 3.4-3.8 s of CPU instead of 4.4-4.9 s for the
/// same 200,000 answers, and 20% more requests a second (docs/scale.md).
/// Capture hands every exchange to its writer thread, which frees it: the
/// same churn, a tenth of `capture --read`'s samples zeroing huge pages, and
/// half its system time. Small pages also keep a live capture's RSS lower.
/// This is what mimalloc's own `MIMALLOC_ALLOW_THP=0` does, set here because
/// mimalloc reads its options before `main`.
fn no_huge_pages() {
    // SAFETY: a process flag with integer arguments; failure leaves THP on.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Exit codes shared by every subcommand (documented in README.md).
mod exit {
    pub const OK: u8 = 0;
    pub const BAD_INPUT: u8 = 2;
    pub const INTERRUPTED: u8 = 130;
}

/// `--version`: the tool and the Parquet schema versions it reads and writes.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncapture (exchanges) schema 1\nresults schema 1\nmetrics schema 1"
);

#[derive(Parser)]
#[command(
    name = "shadowctl",
    version,
    long_version = LONG_VERSION,
    about = "Capture production HTTP traffic, replay it against primary and shadow deployments, and judge the difference."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More detail: `diff` lists every criterion in its summary, not only
    /// those that did not pass (capture and replay print the same either way).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Capture HTTP exchanges live from a network interface, or read them from pcap/pcapng
    /// files, into Parquet.
    #[command(
        after_help = "Examples:\n  shadowctl capture --read traffic.pcap --out exchanges.parquet\n  shadowctl capture --read a.pcapng --read b.pcapng --out ex.parquet --max-body 1MiB --stats-json stats.json\n  shadowctl capture --read t.pcap --out ex.parquet --redact-header x-api-key"
    )]
    Capture(CaptureArgs),
    /// Send captured requests to a primary and shadows; record what each answered.
    #[command(
        after_help = "Examples:\n  shadowctl replay exchanges.parquet --primary http://127.0.0.1:8080 --shadow http://127.0.0.1:8081 --out results.parquet\n  shadowctl replay cap/*.parquet --primary recorded --shadow v2=http://staging:8080 --speed 4 --out results.parquet\n  shadowctl replay ex.parquet --primary http://p:80 --shadow http://s:80 --rate 500 --limit 10000 --header-from-env Authorization=SHADOW_AUTH --out r.parquet\n  shadowctl replay ex.parquet --primary http://p:80 --header \"Authorization: Bearer $TOKEN\" --out r.parquet"
    )]
    Replay(Box<ReplayArgs>),
    /// Compare primary and shadow answers and judge GO / NO-GO / INCONCLUSIVE.
    #[command(
        after_help = "Examples:\n  shadowctl diff results.parquet\n  shadowctl diff results.parquet --config shadow.toml --markdown summary.md --html report.html --json report.json\n  shadowctl diff shard-*.parquet --config shadow.toml --junit junit.xml --divergences divergent.jsonl --top 20\n\nExit codes: 0 GO, 1 NO-GO, 3 INCONCLUSIVE, 2 bad input or usage."
    )]
    Diff(DiffArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(
        after_help = "Example:\n  shadowctl completions bash > /etc/bash_completion.d/shadowctl"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(after_help = "Example:\n  shadowctl man > shadowctl.1 && man ./shadowctl.1")]
    Man,
}

#[derive(Args)]
struct ReplayArgs {
    /// Capture files written by `shadowctl capture`.
    #[arg(required = true, value_name = "CAPTURE.parquet")]
    captures: Vec<PathBuf>,
    /// The primary: a URL (http[s]://host:port[/base]), or `recorded` to use the captured responses.
    #[arg(long, value_name = "URL|recorded")]
    primary: String,
    /// A shadow: [NAME=]URL (repeatable).
    #[arg(long = "shadow", value_name = "[NAME=]URL")]
    shadow: Vec<String>,
    /// The results Parquet file to write.
    #[arg(long, value_name = "RESULTS.parquet")]
    out: PathBuf,
    /// Replay the recorded timing divided by this factor (default 1).
    #[arg(long, value_name = "X", conflicts_with_all = ["rate", "max"])]
    speed: Option<f64>,
    /// Send this many requests per second, evenly spaced.
    #[arg(long, value_name = "N", conflicts_with = "max")]
    rate: Option<f64>,
    /// Send as fast as --concurrency allows.
    #[arg(long)]
    max: bool,
    /// Requests in flight per target at most (1 to 100000).
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// Time for a complete answer, per request (e.g. 10s, 500ms).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "10s")]
    timeout: std::time::Duration,
    /// Timeout for shadows (default: --timeout).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    shadow_timeout: Option<std::time::Duration>,
    /// Cut an answer (a streamed LLM answer, say) that started and then sent
    /// nothing for this long; recorded as error `stream_idle`.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    stream_idle_timeout: std::time::Duration,
    /// Replay this fraction of requests (uniform; see --seed).
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    sample: Option<f64>,
    /// Seed for --sample.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Sample consistently by a key: header:NAME.
    #[arg(long, value_name = "header:NAME")]
    sample_by: Option<String>,
    /// Only requests matching 'METHOD /path-glob' or '/path-glob' (repeatable).
    #[arg(long, value_name = "PATTERN")]
    include: Vec<String>,
    /// Leave out requests matching the pattern (repeatable).
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Replay at most N requests.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Set a header on every request (replaces same-name ones): 'Name: value'.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    header: Vec<String>,
    /// Set header NAME on every request to the value of environment variable VAR, so a
    /// token never appears on a command line: --header-from-env Authorization=SHADOW_AUTH.
    #[arg(long = "header-from-env", value_name = "NAME=VAR")]
    header_from_env: Vec<String>,
    /// Remove a header from every request (repeatable).
    #[arg(long = "drop-header", value_name = "NAME")]
    drop_header: Vec<String>,
    /// Send the captured Host instead of the target's.
    #[arg(long)]
    keep_host: bool,
    /// The header marking shadow traffic.
    #[arg(
        long,
        value_name = "'NAME: VALUE'",
        default_value = "x-shadow-replay: 1"
    )]
    marker: String,
    /// Do not mark shadow traffic.
    #[arg(long)]
    no_marker: bool,
    /// Send only GET, HEAD and OPTIONS to shadows.
    #[arg(long)]
    read_only: bool,
    /// Keep Set-Cookie, Authorization and other secret headers of the live
    /// answers as they came (they are redacted by default).
    #[arg(long)]
    keep_secrets: bool,
    /// Requests of one recorded connection go in order over one connection per target
    /// (closed after 2 s without a request; the next request opens another).
    #[arg(long)]
    preserve_order: bool,
    /// Send every request over HTTP/1.1, including those captured as HTTP/2.
    #[arg(long, conflicts_with = "http2")]
    http1: bool,
    /// Send every request over HTTP/2 (h2c with prior knowledge for http://,
    /// ALPN h2 for https://), including those captured as HTTP/1. Without
    /// either flag each request goes as it was captured.
    #[arg(long)]
    http2: bool,
    /// Before replaying, wait until every target answers GET PATH with a 2xx status;
    /// stop with the target's name and its answer if one does not within --health-timeout.
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// How long --health-path waits for a target to become healthy (tries every 250 ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    health_timeout: std::time::Duration,
    /// Trust these PEM certificates for https:// targets, besides the system's (repeatable).
    #[arg(long = "ca-cert", value_name = "PEM")]
    ca_cert: Vec<PathBuf>,
    /// Accept any certificate from https:// targets (self-signed staging hosts).
    #[arg(long)]
    insecure: bool,
    /// Replay a disjoint part K/N: split by request (by connection with --preserve-order),
    /// the same whatever the order or grouping of the capture files.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    shard: Option<(u64, u64)>,
    /// Stored bytes per response body at most.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "16MiB")]
    max_body: usize,
    /// After Ctrl-C or --max-duration, wait this long for requests in flight (at the
    /// end of the capture, or when --until-decided decides, each gets its --timeout).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "5s")]
    drain_timeout: std::time::Duration,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Sample a target's resource use from a Prometheus endpoint (repeatable):
    /// NAME=URL, NAME being `primary` or a shadow's name (process_*, container_*, DCGM, Triton).
    #[arg(long = "metrics", value_name = "NAME=URL")]
    metrics: Vec<String>,
    /// Keep only the series of a target's --metrics endpoint that match a PromQL
    /// selector (repeatable): NAME=SELECTOR, e.g. 'primary={pod=~"model-v1-.*"}' to
    /// take the target's containers from a node-wide endpoint (kubelet's cAdvisor).
    #[arg(long = "metrics-select", value_name = "NAME=SELECTOR")]
    metrics_select: Vec<String>,
    /// Sample a local process and its children from /proc (repeatable): NAME=PID.
    #[arg(long = "pid", value_name = "NAME=PID")]
    pid: Vec<String>,
    /// Sample a cgroup v2 directory (a container) (repeatable): NAME=PATH.
    #[arg(long = "cgroup", value_name = "NAME=PATH")]
    cgroup: Vec<String>,
    /// How often resource use is sampled.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    metrics_interval: std::time::Duration,
    /// Also take this metric family from --metrics endpoints (repeatable; labels kept).
    #[arg(long = "metrics-family", value_name = "NAME")]
    metrics_family: Vec<String>,
    /// Where samples go [default: OUT with .metrics.parquet for .parquet].
    #[arg(long, value_name = "FILE")]
    metrics_out: Option<PathBuf>,
    /// Evaluate the gate of --config as answers come in, and stop sending as soon as
    /// the verdict is decided (a failure, or every criterion passed); exits like diff
    /// (0 GO, 1 NO-GO, 3 INCONCLUSIVE). Requests go in a random order; needs --rate or --max.
    #[arg(long)]
    until_decided: bool,
    /// The gate for --until-decided (see docs/config.md; defaults without it).
    #[arg(long, value_name = "FILE", requires = "until_decided")]
    config: Option<PathBuf>,
    /// Stop sending after this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_duration: Option<std::time::Duration>,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct CaptureArgs {
    /// A pcap or pcapng file (repeat for several; read in order as one capture).
    #[arg(
        long = "read",
        value_name = "FILE",
        required_unless_present = "interface",
        conflicts_with = "interface"
    )]
    read: Vec<PathBuf>,
    /// Capture live from this network interface (`any` for all) with libpcap.
    #[arg(long, value_name = "IF")]
    interface: Option<String>,
    /// Where to write: a .parquet file, or (live capture) a directory of rotated files.
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Live: capture TCP on this port (repeatable); builds the BPF filter.
    #[arg(long = "port", value_name = "N", requires = "interface")]
    port: Vec<u16>,
    /// Live: a BPF filter expression (combined with --port by "and").
    #[arg(long, value_name = "EXPR", requires = "interface")]
    bpf: Option<String>,
    /// Live: bytes kept per packet (the default keeps whole packets on
    /// common MTUs and with segmentation offload).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 262_144,
        requires = "interface"
    )]
    snaplen: i32,
    /// Live: kernel capture buffer size.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "32MiB", requires = "interface")]
    buffer_size: usize,
    /// Live: start a new file after this many seconds.
    #[arg(long, value_name = "SECS", requires = "interface")]
    rotate_secs: Option<u64>,
    /// Live: start a new file after this many bytes (checked every 32 exchanges).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "interface")]
    rotate_bytes: Option<usize>,
    /// Live: start a new file after exactly this many exchanges.
    #[arg(long, value_name = "N", requires = "interface")]
    rotate_rows: Option<u64>,
    /// Live: stop after this long (seconds, or with a unit: 90s, 5m).
    #[arg(long, value_name = "SECS", value_parser = parse_duration, requires = "interface")]
    duration: Option<std::time::Duration>,
    /// Live: stop after this many exchanges.
    #[arg(long, value_name = "N", requires = "interface")]
    max_exchanges: Option<u64>,
    /// Keep this fraction of connections (0..1], chosen by a hash of the connection.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    sample: Option<f64>,
    /// Also redact the values of this header (repeatable).
    #[arg(long = "redact-header", value_name = "NAME")]
    redact_header: Vec<String>,
    /// Also redact the value of this query parameter, in the target and in
    /// Referer/Location URLs (repeatable; api_key, access_token, token, key,
    /// sig, signature, presigned S3/GCS signatures and more by default).
    #[arg(long = "redact-query", value_name = "NAME")]
    redact_query: Vec<String>,
    /// Also redact the string value of this JSON member, or this field of a
    /// URL-encoded form, in bodies (repeatable; case, `_` and `-` ignored;
    /// password, client_secret, access_token, refresh_token, id_token,
    /// api_key and more by default).
    #[arg(long = "redact-body-field", value_name = "NAME")]
    redact_body_field: Vec<String>,
    /// Keep Authorization, Cookie, API-key headers, query credentials and
    /// body secrets as captured.
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
    /// Out-of-order bytes held per connection direction (each held segment
    /// counts 96 bytes beside its data).
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s or m)")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too long"))
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("'{s}' is not K/N with 1 <= K <= N");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (u64, u64) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok((k - 1, n))
}

/// `--metrics/--pid/--cgroup NAME=...` as sampler options (None without any).
fn metrics_options(
    args: &ReplayArgs,
) -> anyhow::Result<Option<shadowctl::replay::sampler::SamplerOptions>> {
    use shadowctl::replay::sampler::{SamplerOptions, Source};
    let named = |flag: &str, spec: &str| -> anyhow::Result<(String, String)> {
        let (name, value) = spec
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty() && !n.contains('/'))
            .with_context(|| {
                format!("{flag} {spec}: expected NAME=VALUE, NAME being primary or a shadow's name")
            })?;
        Ok((name.to_string(), value.to_string()))
    };
    let mut selectors = std::collections::BTreeMap::new();
    for spec in &args.metrics_select {
        let (name, text) = named("--metrics-select", spec)?;
        let selector = shadowctl::proto::prometheus::Selector::parse(&text)
            .map_err(|e| anyhow::anyhow!("--metrics-select {name}: {e}"))?;
        anyhow::ensure!(
            selectors.insert(name.clone(), selector).is_none(),
            "--metrics-select {name} is given twice: put every matcher in one selector"
        );
        anyhow::ensure!(
            args.metrics
                .iter()
                .any(|m| m.split_once('=').is_some_and(|(n, _)| n == name)),
            "--metrics-select {name}: {name} has no --metrics endpoint to select from"
        );
    }
    let mut sources = Vec::new();
    for spec in &args.metrics {
        let (name, url) = named("--metrics", spec)?;
        let select = selectors.get(&name).cloned();
        sources.push((name, Source::Prometheus(url, select)));
    }
    for spec in &args.pid {
        let (name, pid) = named("--pid", spec)?;
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("--pid {spec}: {pid} is not a process id"))?;
        anyhow::ensure!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "--pid {spec}: no process {pid} (is it running, and in this PID namespace?)"
        );
        sources.push((name, Source::Pid(pid)));
    }
    for spec in &args.cgroup {
        let (name, dir) = named("--cgroup", spec)?;
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            dir.join("cpu.stat").exists(),
            "--cgroup {spec}: {} has no cpu.stat (a cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/x.service)",
            dir.display()
        );
        sources.push((name, Source::Cgroup(dir)));
    }
    // Two sources of one kind for one name would interleave two counters in
    // one series (every switch a false restart): one each.
    for (i, (name, source)) in sources.iter().enumerate() {
        let kind = std::mem::discriminant(source);
        if sources[..i]
            .iter()
            .any(|(n, s)| n == name && std::mem::discriminant(s) == kind)
        {
            anyhow::bail!(
                "{name} is sampled twice the same way (--metrics, --pid or --cgroup): give each target one source of each kind"
            );
        }
    }
    if sources.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        args.metrics_interval >= std::time::Duration::from_millis(10),
        "--metrics-interval {:?}: at least 10ms",
        args.metrics_interval
    );
    let out = args.metrics_out.clone().unwrap_or_else(|| {
        let stem = args.out.to_string_lossy();
        PathBuf::from(match stem.strip_suffix(".parquet") {
            Some(base) => format!("{base}.metrics.parquet"),
            None => format!("{stem}.metrics.parquet"),
        })
    });
    Ok(Some(SamplerOptions {
        sources,
        interval: args.metrics_interval,
        families: args.metrics_family.clone(),
        out,
        tls: shadowctl::replay::tls::TlsOptions {
            ca_certs: args.ca_cert.clone(),
            insecure: args.insecure,
        },
    }))
}

/// `--header` values, then `--header-from-env NAME=VAR` ones read from the
/// environment (an unset or empty variable is an error: sending a request
/// without the credential the user meant to add would fail confusingly).
fn headers_to_set(header: &[String], from_env: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut set: Vec<(String, String)> = header
        .iter()
        .map(|h| parse_header("--header", h))
        .collect::<anyhow::Result<_>>()?;
    for spec in from_env {
        let Some((name, var)) = spec.split_once('=').filter(|(n, _)| !n.contains(':')) else {
            anyhow::bail!(
                "--header-from-env {spec:?}: expected NAME=VAR, e.g. Authorization=SHADOW_AUTH"
            );
        };
        let value = std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "--header-from-env {spec}: environment variable {var} is not set (or not UTF-8)"
            )
        })?;
        if value.trim_matches([' ', '\t']).is_empty() {
            anyhow::bail!("--header-from-env {spec}: environment variable {var} is empty");
        }
        // The same checks as --header, without echoing the secret value.
        let (name, _) = parse_header("--header-from-env", &format!("{name}: x"))?;
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            anyhow::bail!("--header-from-env {spec}: the value of {var} holds CR, LF or NUL, which would end the header");
        }
        set.push((name, value.trim_matches([' ', '\t']).to_string()));
    }
    Ok(set)
}

fn parse_header(flag: &str, s: &str) -> anyhow::Result<(String, String)> {
    shadowctl::replay::request::parse_header_field(flag, s).map_err(anyhow::Error::msg)
}

/// Refuse outputs that would destroy an input or are not files, before any
/// work (see `shadowctl::outpath`).
fn check_outputs(
    outputs: &[(&str, Option<&std::path::Path>)],
    inputs: &[&std::path::Path],
) -> anyhow::Result<()> {
    let outputs: Vec<(&str, &std::path::Path)> = outputs
        .iter()
        .filter_map(|(flag, p)| p.map(|p| (*flag, p)))
        .collect();
    shadowctl::outpath::check_outputs(&outputs, inputs)?;
    Ok(())
}

/// The error and its causes on one line, each said once: a cause whose text
/// its parent already quotes ("{path}: {io error}") is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace(['\r', '\n'], " ")
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("'{s}' is not a fraction in (0, 1]")),
    }
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

/// SIGINT, SIGTERM and SIGHUP (a dropped ssh session) stop gracefully: the
/// output gets its footer.
fn interrupt_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // If registration fails we simply cannot be interrupted gracefully.
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    if let Ok(signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        std::thread::spawn(move || exit_on_second_signal(signals));
    }
    flag
}

/// A second SIGINT or SIGTERM, at least this long after the first signal,
/// exits at once: for a stop stuck on a hung disk.
const SECOND_SIGNAL_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Sooner repeats are not a second signal, and neither is a hangup: a
/// dropped ssh session delivers SIGHUP twice within milliseconds (bash
/// passes it on to its jobs, then the kernel sends it to the foreground
/// group), and exiting then lost the open output file. The run's own stop
/// (a decided gate, --max-duration) does not count either.
fn exit_on_second_signal(mut signals: signal_hook::iterator::Signals) {
    use signal_hook::consts::SIGHUP;
    let mut first: Option<std::time::Instant> = None;
    for sig in signals.forever() {
        match first {
            None => first = Some(std::time::Instant::now()),
            Some(t) if sig != SIGHUP && t.elapsed() >= SECOND_SIGNAL_AFTER => {
                // stderr may be gone (a closed terminal): never panic here.
                let _ = writeln!(
                    std::io::stderr(),
                    "shadowctl: second signal: exiting without finishing the output"
                );
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
            Some(_) => {}
        }
    }
}

fn reassembly_config(args: &CaptureArgs) -> capture::ReassemblyConfig {
    let mut r = capture::ReassemblyConfig::default();
    r.flow.max_body = args.max_body;
    r.max_connections = args.max_connections.max(1);
    r.max_buffer_bytes = args.max_buffer_bytes;
    r.max_conn_buffer = args.max_conn_buffer;
    r.idle_timeout_ns = (args.idle_timeout as i64).saturating_mul(1_000_000_000);
    r
}

fn redaction(args: &CaptureArgs) -> capture::Redaction {
    let mut r = if args.keep_secrets {
        capture::Redaction::none()
    } else {
        capture::Redaction::default()
    };
    r.headers
        .extend(args.redact_header.iter().map(|h| h.to_ascii_lowercase()));
    r.query
        .extend(args.redact_query.iter().map(|q| q.to_ascii_lowercase()));
    r.body.extend(
        args.redact_body_field
            .iter()
            .map(|b| b.to_ascii_lowercase()),
    );
    r
}

fn run_capture(args: CaptureArgs) -> anyhow::Result<u8> {
    no_huge_pages();
    let live_dir = args.interface.is_some() && args.out.extension().is_none_or(|e| e != "parquet");
    let rotates =
        args.rotate_secs.is_some() || args.rotate_bytes.is_some() || args.rotate_rows.is_some();
    if rotates && !live_dir {
        // Silently writing one file would break whoever ships rotated files.
        anyhow::bail!(
            "--rotate-secs/--rotate-bytes/--rotate-rows rotate the files of a live capture (--interface) written into a directory given as --out, not the single file {}",
            args.out.display()
        );
    }
    let inputs: Vec<&std::path::Path> = args.read.iter().map(PathBuf::as_path).collect();
    check_outputs(
        &[
            ("--out", (!live_dir).then_some(args.out.as_path())),
            ("--stats-json", args.stats_json.as_deref()),
        ],
        &inputs,
    )?;
    let stop = interrupt_flag();
    let run = match &args.interface {
        Some(interface) => {
            capture::live::capture_live(&live_options(&args, interface), Arc::clone(&stop))
        }
        None => {
            let mut opts = CaptureOptions::new(args.read.clone(), args.out.clone());
            opts.redact = redaction(&args);
            opts.reassembly = reassembly_config(&args);
            opts.progress = !args.quiet;
            opts.sample = args.sample;
            capture::capture_files(&opts, Some(Arc::clone(&stop))).map(|mut stats| {
                stats.output_files = vec![args.out.display().to_string()];
                stats
            })
        }
    };
    let stats = match run {
        Ok(stats) => stats,
        // Failed once running: the figures until then still go out, so a
        // monitor reading --stats-json learns what happened and what the
        // files already written hold.
        Err(capture::CaptureError::Failed(failed)) => {
            let capture::Failed { cause, stats } = *failed;
            // The capture's own error is the one to report, whatever
            // becomes of the stats file (often on the same full disk).
            if let Err(e) = write_capture_stats(&args, &stats) {
                eprintln!("warning: {e:#}");
            }
            if stats.output_rows > 0 {
                eprintln!(
                    "capture failed after writing {} rows, complete and readable, to {}",
                    stats.output_rows,
                    stats.output_files.join(", ")
                );
            }
            return Err(cause.into());
        }
        Err(e) => return Err(e.into()),
    };
    write_capture_stats(&args, &stats)?;
    if !args.quiet {
        print!("{}", stats.summary());
        println!(
            "  written            {} rows in {}",
            stats.output_rows,
            stats.output_files.join(", ")
        );
    }
    // A stop is how a live capture ends; for files it cuts the input short.
    if args.interface.is_none() && stop.load(Ordering::Relaxed) {
        eprintln!(
            "interrupted: {} holds what was captured before the stop",
            args.out.display()
        );
        return Ok(exit::INTERRUPTED);
    }
    Ok(exit::OK)
}

/// `--stats-json`, when asked for.
fn write_capture_stats(args: &CaptureArgs, stats: &capture::CaptureStats) -> anyhow::Result<()> {
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(stats)?;
        shadowctl::outpath::write_file(path, json.as_bytes())
            .with_context(|| format!("--stats-json {}: cannot write", path.display()))?;
    }
    Ok(())
}

/// Rotation of a live capture into a directory when no --rotate-* is given.
const DEFAULT_ROTATE_SECS: u64 = 600;

fn live_options(args: &CaptureArgs, interface: &str) -> capture::live::LiveOptions {
    use capture::output::{OutputSpec, Rotation};
    let single = args.out.extension().is_some_and(|e| e == "parquet");
    let output = if single {
        OutputSpec::File(args.out.clone())
    } else {
        let asked =
            args.rotate_secs.is_some() || args.rotate_bytes.is_some() || args.rotate_rows.is_some();
        OutputSpec::Dir {
            dir: args.out.clone(),
            rotation: Rotation {
                // Unless told otherwise, a new file every ten minutes: what
                // a kill -9 or a power cut can cost is the open file only.
                secs: args.rotate_secs.or((!asked).then_some(DEFAULT_ROTATE_SECS)),
                bytes: args.rotate_bytes.map(|b| b as u64),
                rows: args.rotate_rows,
            },
        }
    };
    capture::live::LiveOptions {
        interface: interface.to_string(),
        ports: args.port.clone(),
        bpf: args.bpf.clone(),
        snaplen: args.snaplen,
        buffer_bytes: i32::try_from(args.buffer_size).unwrap_or(i32::MAX),
        duration: args.duration,
        max_exchanges: args.max_exchanges,
        sample: args.sample,
        output,
        reassembly: reassembly_config(args),
        redact: redaction(args),
        writer: Default::default(),
        queue: 16,
    }
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<u8> {
    use shadowctl::replay::{self, plan, request::RequestRules, ReplayOptions, Timing};
    keep_freed_pages();
    no_huge_pages();
    let timing = match (args.speed, args.rate, args.max) {
        (_, _, true) => Timing::Max,
        (_, Some(r), _) if r > 0.0 => Timing::Rate(r),
        (_, Some(r), _) => anyhow::bail!("--rate {r}: must be above 0"),
        (Some(x), _, _) if x > 0.0 => Timing::Speed(x),
        (Some(x), _, _) => anyhow::bail!("--speed {x}: must be above 0"),
        _ => Timing::Speed(1.0),
    };
    let sample_by_header = match &args.sample_by {
        Some(s) => Some(
            s.strip_prefix("header:")
                .with_context(|| format!("--sample-by {s}: expected header:NAME"))?
                .to_ascii_lowercase(),
        ),
        None => None,
    };
    for c in &args.captures {
        anyhow::ensure!(c.exists(), "{}: no such capture file", c.display());
    }
    let metrics = metrics_options(&args)?;
    let inputs: Vec<&std::path::Path> = args
        .captures
        .iter()
        .chain(&args.ca_cert)
        .map(PathBuf::as_path)
        .collect();
    check_outputs(
        &[
            ("--out", Some(args.out.as_path())),
            ("--summary-json", args.summary_json.as_deref()),
            ("--metrics-out", metrics.as_ref().map(|m| m.out.as_path())),
        ],
        &inputs,
    )?;
    let primary = (args.primary != "recorded").then(|| args.primary.clone());
    let opts = ReplayOptions {
        captures: args.captures.clone(),
        primary,
        shadows: args.shadow.clone(),
        out: args.out.clone(),
        timing,
        concurrency: args.concurrency,
        timeout: args.timeout,
        shadow_timeout: args.shadow_timeout.unwrap_or(args.timeout),
        stream_idle_timeout: args.stream_idle_timeout,
        selection: plan::Selection {
            include: args
                .include
                .iter()
                .map(|p| plan::Pattern::parse(p))
                .collect(),
            exclude: args
                .exclude
                .iter()
                .map(|p| plan::Pattern::parse(p))
                .collect(),
            sample: args.sample.or(args.sample_by.as_ref().map(|_| 1.0)),
            seed: args.seed,
            sample_by_header,
            shard: args.shard,
            shard_by_connection: args.preserve_order,
            limit: args.limit,
            shuffled: args.until_decided,
        },
        rules: RequestRules {
            keep_host: args.keep_host,
            set: headers_to_set(&args.header, &args.header_from_env)?,
            drop: args
                .drop_header
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            // Set from the capture's recorded names once it is open.
            left_out: Default::default(),
        },
        marker: if args.no_marker {
            None
        } else {
            Some(parse_header("--marker", &args.marker)?)
        },
        read_only: args.read_only,
        keep_secrets: args.keep_secrets,
        max_body: args.max_body,
        drain_timeout: args.drain_timeout,
        progress: !args.quiet,
        preserve_order: args.preserve_order,
        http: match (args.http1, args.http2) {
            (true, _) => replay::HttpChoice::Http1,
            (_, true) => replay::HttpChoice::Http2,
            _ => replay::HttpChoice::AsCaptured,
        },
        health_path: args.health_path.clone(),
        health_timeout: args.health_timeout,
        tls: replay::tls::TlsOptions {
            ca_certs: args.ca_cert.clone(),
            insecure: args.insecure,
        },
        metrics,
        until_decided: match (args.until_decided, &args.config) {
            (false, _) => None,
            (true, None) => Some(Default::default()),
            (true, Some(path)) => Some(shadowctl::diff::config::Config::load(path)?),
        },
        max_duration: args.max_duration,
    };
    let stop = interrupt_flag();
    let summary = replay::replay(opts, Arc::clone(&stop))?;
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        shadowctl::outpath::write_file(path, json.as_bytes())
            .with_context(|| format!("--summary-json {}: cannot write", path.display()))?;
    }
    if !args.quiet {
        print!("{}", summary.render());
        println!(
            "  written            {} rows in {}",
            summary.rows,
            args.out.display()
        );
    } else if let Some(d) = &summary.until_decided {
        // As `diff -q`: the verdict, on one line, whatever else is quiet.
        println!("verdict: {}", d.verdict);
    }
    Ok(match &summary.until_decided {
        _ if summary.interrupted => exit::INTERRUPTED,
        // --until-decided ends like `diff`: 0 GO, 1 NO-GO, 3 INCONCLUSIVE
        // (2 when its final verdict could not be computed).
        Some(d) => d.exit_code() as u8,
        None => exit::OK,
    })
}

#[derive(Args)]
struct DiffArgs {
    /// Results files written by `shadowctl replay` (several = shards of one run), and
    /// the metrics files it wrote beside them (RESULTS.metrics.parquet), in any order.
    #[arg(required = true, value_name = "RESULTS.parquet")]
    results: Vec<PathBuf>,
    /// Gate thresholds and comparison rules (see docs/config.md).
    #[arg(long, value_name = "shadow.toml")]
    config: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the Markdown report (for a pull-request comment or job summary).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write the self-contained HTML report.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write JUnit XML (one test case per criterion).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write every divergent exchange as JSON lines.
    #[arg(long, value_name = "F.jsonl")]
    divergences: Option<PathBuf>,
    /// Divergent exchanges shown as examples.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Print only the verdict line.
    #[arg(short, long)]
    quiet: bool,
}

fn write_report(path: &std::path::Path, text: &str, flag: &str) -> anyhow::Result<()> {
    shadowctl::outpath::write_file(path, text.as_bytes())
        .with_context(|| format!("{flag} {}: cannot write", path.display()))
}

fn run_diff(args: DiffArgs, verbose: u8) -> anyhow::Result<u8> {
    use shadowctl::diff::{config::Config, diff, DiffOptions};
    use shadowctl::report;
    use std::io::IsTerminal;
    let inputs: Vec<&std::path::Path> = args
        .results
        .iter()
        .chain(&args.config)
        .map(PathBuf::as_path)
        .collect();
    check_outputs(
        &[
            ("--json", args.json.as_deref()),
            ("--markdown", args.markdown.as_deref()),
            ("--html", args.html.as_deref()),
            ("--junit", args.junit.as_deref()),
            ("--divergences", args.divergences.as_deref()),
        ],
        &inputs,
    )?;
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let opts = DiffOptions {
        inputs: args.results.clone(),
        config,
        top: args.top,
        divergences: args.divergences.clone(),
    };
    let r = diff(&opts)?;
    // The verdict first: a report that cannot be written (exit 2) must not
    // hide the verdict from the log.
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if args.quiet {
        println!("verdict: {}", r.verdict.as_str());
    } else {
        print!("{}", report::terminal::render(&r, colour, verbose > 0));
    }
    if let Some(p) = &args.json {
        write_report(p, &serde_json::to_string_pretty(&r)?, "--json")?;
    }
    if let Some(p) = &args.markdown {
        write_report(p, &report::markdown::render(&r), "--markdown")?;
    }
    if let Some(p) = &args.html {
        write_report(p, &report::html::render(&r), "--html")?;
    }
    if let Some(p) = &args.junit {
        write_report(p, &report::junit::render(&r), "--junit")?;
    }
    Ok(r.verdict.exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(args) => run_capture(args),
        Command::Replay(args) => run_replay(*args),
        Command::Diff(args) => run_diff(args, cli.verbose),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "shadowctl", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")
                .map(|()| exit::OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit::BAD_INPUT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once_on_one_line() {
        // As SchemaError::Io prints: "{path}: {source}", with the source
        // also in the chain; a disk-full error wrapped twice more.
        #[derive(Debug, thiserror::Error)]
        #[error("{path}: {source}")]
        struct Io {
            path: String,
            source: std::io::Error,
        }
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = anyhow::Error::new(Io {
            path: "o.parquet".into(),
            source: io,
        })
        .context("o.parquet: No space left on device (os error 28)");
        let line = one_line(&e);
        assert_eq!(line.matches("No space left").count(), 1, "{line}");
        assert!(line.starts_with("o.parquet"), "{line}");
        let e = anyhow::anyhow!("a\nb").context("c");
        assert_eq!(one_line(&e), "c: a b");
    }
}
