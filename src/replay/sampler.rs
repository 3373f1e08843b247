//! What each target costs while it is replayed to: samples of CPU, memory,
//! GPU and the metric families it exposes, from a Prometheus endpoint
//! (`--metrics`), a local process tree (`--pid`) or a cgroup v2 directory
//! (`--cgroup`), every `--metrics-interval`, into a metrics Parquet file.
//!
//! Sampling runs on a thread of its own with its own small runtime, so a
//! slow or hanging scrape never delays a request: each scrape has the
//! interval as its deadline, and a late or failed one is a row saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{now_ns, Target};
use crate::proto::prometheus;
use crate::schema::{
    metrics_schema, metrics_to_batch, MetricKind, MetricRow, ParquetFileWriter, SchemaError,
    TargetRole, WriterConfig, METRICS,
};

/// Families taken from a Prometheus endpoint by default: process and
/// container CPU and memory, open files, and NVIDIA GPUs (DCGM exporter,
/// Triton).
pub const DEFAULT_FAMILIES: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
];

/// Where one target's resource use is read.
#[derive(Clone, Debug)]
pub enum Source {
    /// A Prometheus endpoint URL, and the series to keep from it
    /// (`--metrics-select`: the target's own on a node-wide endpoint).
    Prometheus(String, Option<prometheus::Selector>),
    /// A local process and its descendants.
    Pid(u32),
    /// A cgroup v2 directory.
    Cgroup(PathBuf),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Prometheus(..) => "prometheus",
            Self::Pid(_) => "pid",
            Self::Cgroup(_) => "cgroup",
        }
    }
}

/// What `replay` samples, and where it writes.
#[derive(Clone, Debug)]
pub struct SamplerOptions {
    /// (target name, source).
    pub sources: Vec<(String, Source)>,
    pub interval: Duration,
    /// `--metrics-family`: more families from Prometheus endpoints.
    pub families: Vec<String>,
    pub out: PathBuf,
    pub tls: super::tls::TlsOptions,
}

/// Why sampling could not start.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("--metrics: {1}")]
    Url(String, String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("metrics sampler: {0}")]
    Thread(String),
}

/// What sampling did, for the replay summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SamplerSummary {
    pub path: String,
    /// Readings of a source (scrapes of an endpoint, reads of /proc or a cgroup).
    pub scrapes: u64,
    pub samples: u64,
    /// Failed or late scrapes per target.
    pub failures: BTreeMap<String, u64>,
    /// Samples per sampled target (0 for one that gave none: a
    /// `--metrics-select` that matched nothing, families it lacks).
    pub samples_by_target: BTreeMap<String, u64>,
}

/// A running sampler; [`Sampler::finish`] takes a last sample and closes
/// the file.
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<SamplerSummary, SchemaError>>,
    /// Cleared by [`Sampler::abandon`]: the file is dropped, not finished.
    keep: Arc<AtomicBool>,
}

struct Probe {
    target: String,
    source: Source,
    /// For Prometheus sources: the HTTP client of the endpoint.
    client: Option<Target>,
}

impl Sampler {
    pub fn start(opts: SamplerOptions) -> Result<Self, SamplerError> {
        let mut probes = Vec::new();
        for (target, source) in &opts.sources {
            probes.push(Probe {
                target: target.clone(),
                source: source.clone(),
                client: match source {
                    Source::Prometheus(url, _) => Some(scrape_client(url, &opts.tls)?),
                    _ => None,
                },
            });
        }
        let mut writer = ParquetFileWriter::create(
            &opts.out,
            metrics_schema(),
            METRICS,
            WriterConfig::default(),
        )?;
        let (stop, mut flag) = tokio::sync::watch::channel(false);
        let keep = Arc::new(AtomicBool::new(true));
        let kept = Arc::clone(&keep);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| SchemaError::Io {
                        path: opts.out.display().to_string(),
                        source: e,
                    })?;
                let summary = rt.block_on(run(&probes, &opts, &mut flag, &mut writer));
                if !kept.load(Ordering::Relaxed) {
                    drop(writer); // its temporary file goes; the path keeps what it held
                    return Ok(SamplerSummary::default());
                }
                let path = writer.finish(vec![])?;
                Ok(SamplerSummary {
                    path: path.display().to_string(),
                    ..summary
                })
            })
            .map_err(|e| SamplerError::Thread(e.to_string()))?;
        Ok(Self { stop, thread, keep })
    }

    /// Stop without writing the file: a replay that failed leaves its
    /// results path as it was, and the metrics path must match it, or a
    /// later `diff` would read resources of a run that never was.
    pub fn abandon(self) {
        self.keep.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }

    /// Take the last sample, write the footer, and say what was done.
    pub fn finish(self) -> Result<SamplerSummary, SamplerError> {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .map_err(|_| SamplerError::Thread("the sampling thread panicked".into()))?
            .map_err(SamplerError::from)
    }
}

fn scrape_client(url: &str, tls: &super::tls::TlsOptions) -> Result<Target, SamplerError> {
    let mut t = Target::parse(url, TargetRole::Primary, "metrics", 4)
        .map_err(|e| SamplerError::Url(url.into(), e.to_string()))?;
    if t.https {
        let connector =
            super::tls::connector(tls).map_err(|e| SamplerError::Url(url.into(), e.to_string()))?;
        t.set_tls(connector.clone(), connector)
            .map_err(|e| SamplerError::Url(url.into(), e.to_string()))?;
    }
    Ok(t)
}

/// Sample every interval until stopped, then once more.
async fn run(
    probes: &[Probe],
    opts: &SamplerOptions,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    writer: &mut ParquetFileWriter,
) -> SamplerSummary {
    let mut summary = SamplerSummary::default();
    for p in probes {
        summary
            .samples_by_target
            .entry(p.target.clone())
            .or_default();
    }
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut first = true;
    loop {
        // The first tick is at once; a stop cuts the wait short.
        // A dropped sender (the replay unwound) also means: last sample.
        let gone = tokio::select! {
            _ = tick.tick() => false,
            changed = stop.changed() => changed.is_err(),
        };
        let last = gone || *stop.borrow();
        let at = if first { "first" } else { "last" };
        let rounds = probes
            .iter()
            .map(|p| sample_once(p, opts, first || last, at));
        let rows: Vec<MetricRow> = futures_util::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
            .collect();
        count(&rows, &mut summary);
        summary.scrapes += probes.len() as u64;
        // A write failure (disk full) ends sampling; replay goes on and
        // the file keeps what was written.
        let written = metrics_to_batch(&rows)
            .ok()
            .is_some_and(|batch| writer.write_batch(&batch).is_ok());
        first = false;
        if last || !written {
            break;
        }
    }
    summary
}

fn count(rows: &[MetricRow], s: &mut SamplerSummary) {
    for r in rows {
        match r.kind {
            MetricKind::Sample => {
                s.samples += 1;
                *s.samples_by_target.entry(r.target.clone()).or_default() += 1;
            }
            MetricKind::Error => *s.failures.entry(r.target.clone()).or_default() += 1,
            MetricKind::Family => {}
        }
    }
}

/// One reading of one source: its samples, or one error row.
async fn sample_once(p: &Probe, opts: &SamplerOptions, families: bool, at: &str) -> Vec<MetricRow> {
    let ts = now_ns();
    let started = Instant::now();
    let result = match &p.source {
        Source::Prometheus(_, select) => {
            let client = p.client.as_ref().expect("prometheus probes have a client");
            scrape(client, opts, select.as_ref(), families, at).await
        }
        Source::Pid(pid) => read_process_tree(*pid),
        Source::Cgroup(dir) => read_cgroup(dir),
    };
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let row = |kind, family: String, labels, value, detail| MetricRow {
        ts,
        target: p.target.clone(),
        source: p.source.name().into(),
        kind,
        family,
        labels,
        value,
        detail,
        scrape_ms: Some(ms),
    };
    match result {
        Ok(found) => found
            .into_iter()
            .map(|f| row(f.kind, f.family, f.labels, f.value, f.detail))
            .collect(),
        Err(why) => vec![row(
            MetricKind::Error,
            String::new(),
            Vec::new(),
            None,
            Some(why),
        )],
    }
}

/// A reading before it becomes a row.
#[derive(Debug)]
struct Reading {
    kind: MetricKind,
    family: String,
    labels: Vec<(String, String)>,
    value: Option<f64>,
    detail: Option<String>,
}

fn sample(family: &str, labels: Vec<(String, String)>, value: f64) -> Reading {
    Reading {
        kind: MetricKind::Sample,
        family: family.into(),
        labels,
        value: Some(value),
        detail: None,
    }
}

async fn scrape(
    client: &Target,
    opts: &SamplerOptions,
    select: Option<&prometheus::Selector>,
    families: bool,
    at: &str,
) -> Result<Vec<Reading>, String> {
    let path = if client.base_path.is_empty() {
        "/metrics"
    } else {
        client.base_path.as_str()
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain;version=0.0.4;q=1.0, application/openmetrics-text;version=1.0.0;q=0.5, */*;q=0.1\r\nAccept-Encoding: gzip\r\nUser-Agent: shadowctl-metrics\r\n\r\n",
        client.authority
    );
    // The next scrape is due in one interval: a scrape that takes longer is
    // a failure, not a reason to fall behind.
    let a = client
        .exchange(
            None,
            request.as_bytes(),
            "GET",
            opts.interval.max(Duration::from_millis(50)),
            64 << 20,
        )
        .await;
    match &a.error {
        Some((crate::schema::ErrorKind::Timeout, _)) => {
            return Err(format!(
                "scrape failed: no answer within {:?} (a scrape may take one --metrics-interval, at least 50ms)",
                opts.interval.max(Duration::from_millis(50))
            ))
        }
        Some((_, detail)) => return Err(format!("scrape failed: {detail}")),
        None => {}
    }
    match a.status {
        Some(200) => {}
        Some(s) => return Err(format!("scrape answered {s}, not 200")),
        None => return Err("scrape got no status".into()),
    }
    // A cut exposition would still parse, its last line's value cut short
    // (`1.234e9` read as `1.23`) and the families after it missing.
    if a.truncated {
        return Err(format!(
            "scrape body of {} bytes, over the 64 MiB read: not used (a cut exposition gives wrong values)",
            a.body_len
        ));
    }
    let gzip = a
        .headers
        .get("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"gzip"));
    let body = if gzip {
        // Bounded: a body that inflates beyond 256 MiB is not used.
        const MAX_INFLATED: u64 = 256 << 20;
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(flate2::read::GzDecoder::new(&a.body[..]), MAX_INFLATED + 1),
            &mut out,
        )
        .map_err(|e| format!("gzip body: {e}"))?;
        if out.len() as u64 > MAX_INFLATED {
            return Err("gzip body inflates beyond 256 MiB: not used".into());
        }
        String::from_utf8_lossy(&out).into_owned()
    } else {
        String::from_utf8_lossy(&a.body).into_owned()
    };
    let e = prometheus::parse(&body);
    if e.samples.is_empty() && e.bad_lines > 0 {
        return Err(format!(
            "not the Prometheus exposition format ({} unreadable lines, first: {:?})",
            e.bad_lines,
            e.first_bad.unwrap_or_default()
        ));
    }
    let mut out: Vec<Reading> = e
        .samples
        .into_iter()
        .filter(|s| wanted(&s.name, &opts.families))
        .filter(|s| select.is_none_or(|sel| sel.matches(&s.name, &s.labels)))
        .map(|s| sample(&s.name, s.labels, s.value))
        .collect();
    if families {
        out.extend(e.families.iter().map(|(name, f)| {
            Reading {
                kind: MetricKind::Family,
                family: name.clone(),
                labels: Vec::new(),
                value: None,
                detail: Some(
                    serde_json::json!({"scrape": at, "type": f.kind, "labels": f.label_names})
                        .to_string(),
                ),
            }
        }));
    }
    Ok(out)
}

/// A default family, or one asked for with `--metrics-family` (by its
/// sample name or its family name: `x` takes `x_bucket`, `x_total`, ...).
fn wanted(name: &str, extra: &[String]) -> bool {
    if DEFAULT_FAMILIES.contains(&name) || extra.iter().any(|f| f == name) {
        return true;
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .any(|base| extra.iter().any(|f| f == base))
}

/// A process and all its descendants, from /proc: CPU time (with the time
/// of children that ended and were waited for by a member), resident memory, threads
/// and open files, summed. Pre-fork servers (gunicorn, uvicorn workers)
/// are counted whole.
fn read_process_tree(root: u32) -> Result<Vec<Reading>, String> {
    proc_stat(root).ok_or_else(|| format!("process {root} is gone"))?;
    let tree = descendants(root);
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
        )
    };
    // Every member's stat first, in one quick pass: a worker reaped while
    // the slower reads below ran would be missing here while its time is
    // not yet in its parent's (see `diff`'s counting of such dips).
    let stats: Vec<_> = std::iter::once(root)
        .chain(tree)
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect();
    // PSS where every member's can be read (it needs ptrace access), else
    // RSS for all: one measure per reading, named in the `measure` label so
    // that `diff` never sets one target's PSS against another's RSS.
    let pss: Option<Vec<f64>> = stats
        .iter()
        .map(|(pid, s)| match pss_bytes(*pid) {
            Some(v) => Some(v),
            // A zombie, or gone since its stat was read: it holds no
            // memory, and must not turn the whole tree to RSS.
            None if s.rss_pages == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                Some(0.0)
            }
            None => None,
        })
        .collect();
    let measure = if pss.is_some() { "pss" } else { "rss" };
    let rss: f64 = match &pss {
        Some(p) => p.iter().sum(),
        None => stats.iter().map(|(_, s)| s.rss_pages as f64 * page).sum(),
    };
    let (mut cpu, mut threads, mut fds) = (0.0, 0.0, 0.0);
    for (pid, s) in stats {
        // Each member's own time and that of the children it waited for:
        // a grandchild reaped by a worker stays counted (in the worker's
        // cutime), and once the worker is reaped its whole time moves to
        // its parent's, counted once.
        cpu += (s.utime + s.stime + s.cutime + s.cstime) as f64;
        threads += s.threads as f64;
        fds += std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) as f64;
    }
    Ok(vec![
        sample("process_cpu_seconds_total", Vec::new(), cpu / ticks),
        sample(
            "process_resident_memory_bytes",
            vec![("measure".into(), measure.into())],
            rss,
        ),
        sample("process_threads", Vec::new(), threads),
        sample("process_open_fds", Vec::new(), fds),
    ])
}

/// A process's proportional set size: each shared page divided among the
/// processes that map it, so eight workers sharing a preloaded model count
/// it once, where their RSS would count it eight times. None where
/// `smaps_rollup` cannot be read (kernels before 4.14, no permission).
fn pss_bytes(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(kb * 1024.0)
}

/// CPU seconds and resident bytes of one process (no children), from
/// /proc: what a service reports about itself on `/metrics`.
pub fn own_usage(pid: u32) -> Option<(f64, f64)> {
    let s = proc_stat(pid)?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
        )
    };
    Some((
        (s.utime + s.stime) as f64 / ticks,
        s.rss_pages as f64 * page,
    ))
}

struct ProcStat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    threads: u64,
    rss_pages: u64,
}

/// `/proc/PID/stat`; the command name may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    // Fields from the state (field 3 of stat(5)) on.
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: n(4)? as u32,
        utime: n(14)?,
        stime: n(15)?,
        cutime: n(16)?,
        cstime: n(17)?,
        threads: n(20)?,
        rss_pages: n(24)?,
    })
}

fn descendants(root: u32) -> Vec<u32> {
    children_files(root).unwrap_or_else(|| descendants_by_scan(root))
}

/// Descendants from `/proc/PID/task/TID/children` (Linux 3.5+ with
/// CONFIG_PROC_CHILDREN): a few small reads instead of reading the stat
/// file of every process on the machine ten times a second. None when the
/// kernel does not offer the files.
fn children_files(root: u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    let mut offered = false;
    // Bounded: each pid is visited once, and there are finitely many.
    while let Some(p) = frontier.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            offered = true;
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if child != root && !out.contains(&child) {
                    out.push(child);
                    frontier.push(child);
                }
            }
        }
    }
    offered.then_some(out)
}

/// Descendants by reading every process's parent from /proc.
fn descendants_by_scan(root: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(s) = proc_stat(pid) {
                parent.push((pid, s.ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    // Bounded: each pid is added once, and there are finitely many.
    while let Some(p) = frontier.pop() {
        for &(child, pp) in &parent {
            if pp == p && child != root && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// A cgroup v2 directory: CPU (`cpu.stat` usage_usec), memory
/// (`memory.current` less inactive file cache, as cAdvisor's working set),
/// and `memory.peak` where the kernel has it.
fn read_cgroup(dir: &Path) -> Result<Vec<Reading>, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let cpu = read("cpu.stat").map_err(|e| format!("{}/cpu.stat: {e}", dir.display()))?;
    let usage = stat_value(&cpu, "usage_usec")
        .ok_or_else(|| format!("{}/cpu.stat has no usage_usec", dir.display()))?;
    let mut out = vec![sample(
        "container_cpu_usage_seconds_total",
        Vec::new(),
        usage / 1e6,
    )];
    if let Ok(current) = read("memory.current") {
        if let Ok(bytes) = current.trim().parse::<f64>() {
            let inactive = read("memory.stat")
                .ok()
                .and_then(|s| stat_value(&s, "inactive_file"))
                .unwrap_or(0.0);
            out.push(sample(
                "container_memory_working_set_bytes",
                Vec::new(),
                (bytes - inactive).max(0.0),
            ));
        }
    }
    if let Some(peak) = read("memory.peak")
        .ok()
        .and_then(|p| p.trim().parse::<f64>().ok())
    {
        out.push(sample("container_memory_peak_bytes", Vec::new(), peak));
    }
    Ok(out)
}

fn stat_value(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exposition over the 64 MiB read is a failed scrape, not a cut
    /// one read as whole.
    #[tokio::test]
    async fn an_exposition_over_the_limit_is_a_failed_scrape() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 4096]);
            let line = b"process_resident_memory_bytes 123456789\n";
            let n = (65 << 20) / line.len() + 1;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, s);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                n * line.len()
            );
            let _ = w.write_all(head.as_bytes());
            for _ in 0..n {
                if w.write_all(line).is_err() {
                    break;
                }
            }
            let _ = w.flush();
        });
        let opts = SamplerOptions {
            sources: Vec::new(),
            interval: Duration::from_secs(30),
            families: Vec::new(),
            out: PathBuf::from("unused.parquet"),
            tls: Default::default(),
        };
        let client = scrape_client(&format!("http://{addr}/metrics"), &opts.tls).unwrap();
        let err = scrape(&client, &opts, None, false, "t").await.unwrap_err();
        assert!(err.contains("over the 64 MiB read"), "{err}");
    }

    #[test]
    fn stat_lines_with_odd_command_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 7 3 20 0 4 0 100 123456 789 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.ppid, s.utime, s.stime, s.cutime, s.cstime),
            (1, 150, 25, 7, 3)
        );
        assert_eq!((s.threads, s.rss_pages), (4, 789));
    }

    #[test]
    fn our_own_process_is_read() {
        // A child that exited and was not waited for: a zombie in the
        // tree, whose memory cannot be read; the tree stays PSS.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", zombie.id())).unwrap();
            if stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z')
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = read_process_tree(std::process::id()).unwrap();
        let _ = zombie.wait();
        let get = |f: &str| r.iter().find(|x| x.family == f).unwrap().value.unwrap();
        let memory = r
            .iter()
            .find(|x| x.family == "process_resident_memory_bytes")
            .unwrap();
        assert_eq!(memory.labels, [("measure".to_string(), "pss".to_string())]);
        assert!(get("process_resident_memory_bytes") > 1e6);
        assert!(get("process_threads") >= 1.0);
        assert!(get("process_open_fds") >= 3.0);
        assert!(read_process_tree(u32::MAX - 1)
            .unwrap_err()
            .contains("is gone"));
    }

    /// Four processes sharing 64 MB copied on write count it about once.
    #[test]
    fn shared_pages_of_a_process_tree_count_once() {
        use std::io::{BufRead, BufReader};
        let script = "import os, sys, time\n\
            b = bytearray(b'x' * (64 << 20))\n\
            for _ in range(3):\n    if os.fork() == 0:\n        time.sleep(20); os._exit(0)\n\
            print('ready', flush=True); time.sleep(20)\n";
        let mut tree = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(tree.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let r = read_process_tree(tree.id());
        let children = descendants(tree.id());
        for &pid in &children {
            // SAFETY: kill has no memory preconditions; these are our children.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let members = children.len();
        let _ = tree.kill();
        let _ = tree.wait();
        assert_eq!(line.trim(), "ready");
        assert_eq!(members, 3);
        let mb = r
            .unwrap()
            .iter()
            .find(|x| x.family == "process_resident_memory_bytes")
            .unwrap()
            .value
            .unwrap()
            / 1e6;
        // RSS summed would be over 4 x 67 MB.
        assert!(mb > 60.0 && mb < 150.0, "{mb} MB");
    }

    #[test]
    fn children_are_found_both_ways() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let by_scan = descendants_by_scan(me);
        let by_files = children_files(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(by_scan.contains(&child.id()), "{by_scan:?}");
        if let Some(found) = by_files {
            assert!(found.contains(&child.id()), "{found:?}");
        }
    }

    #[test]
    fn families_asked_for_by_family_or_sample_name() {
        let extra = vec!["model_request_seconds".to_string(), "x_total".to_string()];
        assert!(wanted("process_cpu_seconds_total", &[]));
        assert!(wanted("model_request_seconds_bucket", &extra));
        assert!(wanted("x_total", &extra));
        assert!(!wanted("go_goroutines", &extra));
    }

    #[test]
    fn cgroup_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("memory.current"), "104857600\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 1\ninactive_file 4857600\n",
        )
        .unwrap();
        let r = read_cgroup(dir.path()).unwrap();
        let get = |f: &str| r.iter().find(|x| x.family == f).map(|x| x.value.unwrap());
        assert_eq!(get("container_cpu_usage_seconds_total"), Some(2.5));
        assert_eq!(
            get("container_memory_working_set_bytes"),
            Some(100_000_000.0)
        );
        assert_eq!(get("container_memory_peak_bytes"), None);
        assert!(read_cgroup(&dir.path().join("nope")).is_err());
    }
}
