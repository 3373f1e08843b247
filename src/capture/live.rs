//! `shadowctl capture --interface`: live capture with libpcap.
//!
//! The handle is non-blocking and waited on with poll(2) in short slices, so
//! a stop (signal, `--duration`, `--max-exchanges`) is noticed within a
//! fraction of a second even when no packet matches the filter. Packets are
//! processed on this thread; Parquet encoding runs on the writer thread behind
//! a bounded queue that is never waited on: what does not fit is counted.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::output::{OutputSpec, StatsSnapshot};
use super::source::RawPacket;
use super::{CaptureError, CaptureStats, Pipeline, ReassemblyConfig, WriterThread};
use crate::schema::{Exchange, WriterConfig};

/// What `capture --interface` is asked to do.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub interface: String,
    pub ports: Vec<u16>,
    pub bpf: Option<String>,
    pub snaplen: i32,
    pub buffer_bytes: i32,
    pub duration: Option<Duration>,
    pub max_exchanges: Option<u64>,
    pub sample: Option<f64>,
    pub output: OutputSpec,
    pub reassembly: ReassemblyConfig,
    pub redact: super::Redaction,
    pub writer: WriterConfig,
    /// Writer queue length in batches.
    pub queue: usize,
}

/// Why a live capture could not start; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("interface '{0}' does not exist (list them with `ip link` or `tcpdump -D`)")]
    NoSuchInterface(String),
    #[error("no permission to capture on '{0}': run as root, or grant the binary CAP_NET_RAW and CAP_NET_ADMIN: sudo setcap cap_net_raw,cap_net_admin=eip $(command -v shadowctl)")]
    Permission(String),
    #[error("invalid filter '{expr}': {detail}")]
    Filter { expr: String, detail: String },
    #[error("libpcap on '{interface}': {detail}")]
    Pcap { interface: String, detail: String },
}

/// The BPF expression for `--port` and `--bpf` together.
pub fn filter_expression(ports: &[u16], bpf: Option<&str>) -> Option<String> {
    let ports = (!ports.is_empty()).then(|| {
        let list: Vec<String> = ports.iter().map(|p| format!("tcp port {p}")).collect();
        format!("({})", list.join(" or "))
    });
    match (ports, bpf) {
        (Some(p), Some(b)) => Some(format!("{p} and ({b})")),
        (Some(p), None) => Some(p),
        (None, Some(b)) => Some(b.to_string()),
        (None, None) => Some("tcp".to_string()),
    }
}

fn classify(interface: &str, e: pcap::Error) -> LiveError {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    if lower.contains("no such device") || lower.contains("doesn't exist") {
        LiveError::NoSuchInterface(interface.to_string())
    } else if lower.contains("permission") || lower.contains("operation not permitted") {
        LiveError::Permission(interface.to_string())
    } else {
        LiveError::Pcap {
            interface: interface.to_string(),
            detail,
        }
    }
}

fn open(opts: &LiveOptions) -> Result<pcap::Capture<pcap::Active>, LiveError> {
    let iface = &opts.interface;
    let inactive = pcap::Capture::from_device(iface.as_str()).map_err(|e| classify(iface, e))?;
    // Not immediate mode: libpcap then falls back to TPACKET_V2, whose ring
    // has one fixed slot per packet sized for the snaplen (256 slots in a
    // 64 MiB buffer at 256 KiB), and drops under load. TPACKET_V3 packs
    // packets densely in blocks, as tcpdump does; a block is handed over when
    // full or after the timeout, and we only need the packets, not low latency.
    let mut cap = inactive
        .immediate_mode(false)
        .timeout(100)
        .snaplen(opts.snaplen)
        .buffer_size(opts.buffer_bytes)
        .precision(pcap::Precision::Nano)
        .promisc(false)
        .open()
        .map_err(|e| classify(iface, e))?;
    if let Some(expr) = filter_expression(&opts.ports, opts.bpf.as_deref()) {
        cap.filter(&expr, true).map_err(|e| LiveError::Filter {
            expr: expr.clone(),
            detail: e.to_string(),
        })?;
    }
    cap.setnonblock().map_err(|e| classify(iface, e))
}

/// Wait until the handle is readable or `ms` pass.
fn wait_readable(fd: i32, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack; the result only paces the loop.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}

struct Loop {
    pipeline: Pipeline,
    writer: WriterThread,
    snapshot: StatsSnapshot,
    max_exchanges: Option<u64>,
    /// Exchanges handed to the writer so far.
    handed: u64,
    warned_drops: u64,
    /// libpcap's last (received, dropped, interface dropped) readings.
    pcap_seen: [u32; 3],
}

impl Loop {
    /// Hand completed exchanges to the writer, up to `--max-exchanges`.
    fn flush(&mut self, min: usize) -> Result<(), CaptureError> {
        let Some(mut rows) = self.pipeline.ready(min) else {
            return Ok(());
        };
        self.cap(&mut rows);
        self.offer(rows)
    }

    /// Keep the output to `--max-exchanges`; what completes beyond is counted.
    fn cap(&mut self, rows: &mut Vec<Exchange>) {
        if let Some(max) = self.max_exchanges {
            let keep = max.saturating_sub(self.handed) as usize;
            self.pipeline.stats.exchanges_over_limit += rows.len().saturating_sub(keep) as u64;
            rows.truncate(keep);
        }
        self.handed += rows.len() as u64;
    }

    fn offer(&mut self, rows: Vec<Exchange>) -> Result<(), CaptureError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.writer.offer(rows)
    }

    fn done(&self) -> bool {
        self.max_exchanges
            .is_some_and(|m| self.handed >= m || self.pipeline.exchanges_so_far() >= m)
    }

    fn kernel_stats(&mut self, cap: &mut pcap::Capture<pcap::Active>) {
        if let Ok(s) = cap.stats() {
            // libpcap's counters are 32-bit and wrap (after about 70 minutes
            // at a million packets a second): counted as increments.
            let now = [s.received, s.dropped, s.if_dropped];
            let st = &mut self.pipeline.stats;
            let totals = [
                &mut st.kernel_received,
                &mut st.kernel_dropped,
                &mut st.interface_dropped,
            ];
            for ((total, last), now) in totals.into_iter().zip(&mut self.pcap_seen).zip(now) {
                *total += u64::from(now.wrapping_sub(*last));
                *last = now;
            }
        }
        let st = &mut self.pipeline.stats;
        st.writer_dropped_exchanges = self.writer.dropped_rows;
        let lost = st.kernel_dropped + st.interface_dropped + st.writer_dropped_exchanges;
        if lost > self.warned_drops {
            // Not eprintln!: it panics when stderr is gone (a hung-up
            // terminal, a dead `| tee`), and the capture must outlive that.
            let _ = writeln!(
                std::io::stderr(),
                "warning: losing traffic: {} packets dropped by the kernel, {} by the interface, {} exchanges by a slow writer (raise --buffer-size, narrow the filter, or --sample)",
                st.kernel_dropped, st.interface_dropped, st.writer_dropped_exchanges
            );
            self.warned_drops = lost;
        }
        st.redacted_values = self.snapshot.redacted_values();
        self.snapshot.set(st);
    }
}

/// A libpcap packet as the pipeline takes it (nanosecond timestamps: the
/// handle is opened with nanosecond precision).
fn raw_packet<'a>(p: &pcap::Packet<'a>, linktype: i32) -> RawPacket<'a> {
    let h = p.header;
    // libc's time fields are i64 on this platform; the casts keep others building.
    #[allow(clippy::unnecessary_cast)]
    let ts_ns = h.ts.tv_sec as i64 * 1_000_000_000 + h.ts.tv_usec as i64;
    RawPacket {
        ts_ns,
        linktype,
        interface: 0,
        data: p.data,
        orig_len: h.len,
    }
}

/// After a stop, process what the kernel already captured (bounded in time),
/// so requests sent just before the stop are not lost.
fn drain_ring(cap: &mut pcap::Capture<pcap::Active>, linktype: i32, pipeline: &mut Pipeline) {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut idle_rounds = 0;
    while Instant::now() < deadline && idle_rounds < 3 {
        match cap.next_packet() {
            Ok(p) => {
                idle_rounds = 0;
                pipeline.packet(&raw_packet(&p, linktype));
            }
            Err(_) => {
                idle_rounds += 1;
                wait_readable(cap.as_raw_fd(), 50);
            }
        }
    }
}

/// Capture from a network interface until stopped. Returns the statistics.
pub fn capture_live(
    opts: &LiveOptions,
    stop: Arc<AtomicBool>,
) -> Result<CaptureStats, CaptureError> {
    let mut cap = open(opts)?;
    let linktype = cap.get_datalink().0;
    // Announced on stderr so people and scripts know capture has begun.
    eprintln!(
        "capturing on {} (filter '{}'); stop with Ctrl-C",
        opts.interface,
        filter_expression(&opts.ports, opts.bpf.as_deref()).unwrap_or_default()
    );
    let snapshot = super::seeded_snapshot(&opts.redact);
    let mut writer = WriterThread::spawn(
        opts.output.clone(),
        opts.writer.clone(),
        snapshot.clone(),
        opts.queue,
        opts.redact.clone(),
    )?;
    writer.keep_on_unwind();
    let mut pipeline = Pipeline::new(opts.reassembly);
    pipeline.stats.redaction = Some(opts.redact.clone());
    if let Some(f) = opts.sample {
        pipeline.sample(f);
    }
    let mut lp = Loop {
        pipeline,
        writer,
        snapshot,
        max_exchanges: opts.max_exchanges,
        handed: 0,
        warned_drops: 0,
        pcap_seen: [0; 3],
    };
    let started = Instant::now();
    let fd = cap.as_raw_fd();
    let mut last_second = Instant::now();
    let mut last_flush = Instant::now();
    let mut result = Ok(());
    loop {
        if stop.load(Ordering::Relaxed)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
            || lp.done()
        {
            break;
        }
        match cap.next_packet() {
            Ok(p) => {
                lp.pipeline.packet(&raw_packet(&p, linktype));
                if let Err(e) = lp.flush(super::BATCH) {
                    result = Err(e);
                    break;
                }
            }
            Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => {
                wait_readable(fd, 100);
            }
            Err(e) => {
                result = Err(CaptureError::Live(classify(&opts.interface, e)));
                break;
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(250) {
            last_flush = Instant::now();
            // Exchanges reach the writer four times a second, so files fill
            // and rotate on time even under light traffic.
            if let Err(e) = lp.flush(1) {
                result = Err(e);
                break;
            }
        }
        if last_second.elapsed() >= Duration::from_secs(1) {
            last_second = Instant::now();
            lp.kernel_stats(&mut cap);
        }
    }
    drain_ring(&mut cap, linktype, &mut lp.pipeline);
    lp.kernel_stats(&mut cap);
    let mut sent = Ok(());
    if let Some(mut rows) = lp.pipeline.finish() {
        lp.cap(&mut rows);
        // The last rows wait for room: stopping must not lose them.
        sent = lp.writer.send(rows);
    }
    lp.kernel_stats(&mut cap);
    let mut stats = lp.pipeline.stats;
    // Always joined: a writer that stopped (a full disk) is the cause to
    // report, not the "writer gone" the packet loop then saw.
    let finished = lp.writer.finish();
    stats.redacted_values = lp.snapshot.redacted_values();
    let stats = match finished {
        Ok(done) => super::with_output(stats, done),
        Err(w) => return Err(w.cause.with_stats(super::with_output(stats, w.kept))),
    };
    // The files are complete either way; the figures say what they hold.
    match result.and(sent) {
        Ok(()) => Ok(stats),
        Err(e) => Err(e.with_stats(stats)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine_ports_and_bpf() {
        assert_eq!(filter_expression(&[], None).as_deref(), Some("tcp"));
        assert_eq!(
            filter_expression(&[80, 8080], None).as_deref(),
            Some("(tcp port 80 or tcp port 8080)")
        );
        assert_eq!(
            filter_expression(&[80], Some("host 10.0.0.1")).as_deref(),
            Some("(tcp port 80) and (host 10.0.0.1)")
        );
    }
}
