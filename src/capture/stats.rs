//! What a capture run saw, kept, skipped and lost.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::flow::HttpFlow;
use super::link::SkipReason;
use crate::schema::Exchange;

/// Figures of one capture run, printed as the summary and written by `--stats-json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureStats {
    pub files: u64,
    pub input_bytes: u64,
    pub packets: u64,
    pub packet_bytes: u64,
    /// Frames whose capture length was below their wire length (snaplen).
    pub packets_cut_by_snaplen: u64,
    /// Packets not used, by reason.
    pub packets_skipped: BTreeMap<&'static str, u64>,
    pub tcp_segments: u64,
    pub connections: u64,
    pub http_connections: u64,
    pub non_http_connections: u64,
    /// Connections that carried neither HTTP nor anything we could classify.
    pub silent_connections: u64,
    pub exchanges: u64,
    pub incomplete_exchanges: u64,
    /// Exchanges flagged because a message departs from RFC 9112
    /// (`request_malformed` / `response_malformed`).
    pub malformed_exchanges: u64,
    /// Exchanges written `pairing_uncertain` (loss hid which answer is whose).
    pub pairing_uncertain_exchanges: u64,
    /// Message heads over the 256 KiB limit (kept to the last whole line
    /// that fits, flagged).
    pub oversize_heads: u64,
    pub requests_without_response: u64,
    /// Responses whose request was not captured (not written).
    pub responses_without_request: u64,
    /// Message starts lost in gaps or garbage, by direction.
    pub requests_lost: u64,
    pub responses_lost: u64,
    pub truncated_bodies: u64,
    pub memory_truncated_bodies: u64,
    /// Partial heads and HTTP/2 frames dropped (their messages marked as
    /// gaps) because `--max-buffer-bytes` was reached.
    pub memory_dropped_buffers: u64,
    pub retransmitted_segments: u64,
    pub overlapping_segments: u64,
    pub out_of_order_segments: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub buffer_overflow_gaps: u64,
    pub expired_connections: u64,
    pub evicted_connections: u64,
    pub port_reuse: u64,
    pub late_segments: u64,
    /// Segments far outside their stream's window (dropped, not gaps).
    pub out_of_window_segments: u64,
    pub segments_without_connection: u64,
    pub ip_fragments_dropped: u64,
    pub redacted_values: u64,
    /// The names whose values were redacted (headers, query parameters,
    /// body fields); replay redacts live answers by them too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redaction: Option<crate::redact::Redaction>,
    /// Files that ended mid-record or held a damaged record, with where.
    pub damaged_files: Vec<String>,
    pub output_rows: u64,
    /// Exchanges completed after `--max-exchanges` was reached (not written).
    pub exchanges_over_limit: u64,
    /// Live capture: packets the kernel passed the filter, and dropped.
    pub kernel_received: u64,
    pub kernel_dropped: u64,
    pub interface_dropped: u64,
    /// Live capture: exchanges dropped because the writer fell behind.
    pub writer_dropped_exchanges: u64,
    /// Segments of connections left out by `--sample`.
    pub sampled_out_segments: u64,
    /// Output files written (live capture with rotation may write several).
    pub output_files: Vec<String>,
    /// Connections that spoke HTTP/2.
    pub http2_connections: u64,
    /// HTTP/2 header blocks with fields from HPACK entries never seen.
    pub hpack_unknown_blocks: u64,
    /// HTTP/2 bytes skipped looking for a frame boundary (mid-connection
    /// start, after loss).
    pub http2_skipped_bytes: u64,
    /// HTTP/2 header blocks for no known stream that start no request, and
    /// promises of an id in use (dropped).
    pub http2_stray_blocks: u64,
    /// HTTP/2 streams given up because their headers passed a memory cap.
    pub http2_streams_over_memory: u64,
    /// Interim (1xx) answers past the 32 kept per exchange: their statuses
    /// are not in `interim_statuses`.
    pub interim_answers_dropped: u64,
    /// Why the capture ended in failure (the interface went away, the disk
    /// filled): the figures above are what it saw and wrote until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CaptureStats {
    pub fn skip(&mut self, reason: SkipReason) {
        *self.packets_skipped.entry(reason.as_str()).or_default() += 1;
    }

    /// Count a finished connection.
    pub fn add_flow(&mut self, flow: &HttpFlow) {
        let c = flow.counters();
        self.responses_without_request += c.orphan_responses;
        self.responses_lost += c.lost_responses;
        self.requests_lost += c.lost_requests;
        self.oversize_heads += flow.oversize_heads();
        if let Some(h) = flow.h2_counters() {
            self.http2_connections += 1;
            self.hpack_unknown_blocks += h.hpack_unknown_blocks;
            self.http2_skipped_bytes += h.skipped_bytes;
            self.http2_stray_blocks += h.stray_blocks;
            self.http2_streams_over_memory += h.streams_over_memory;
        }
        if flow.has_http() {
            self.http_connections += 1;
        } else if flow.is_non_http() {
            self.non_http_connections += 1;
        } else {
            self.silent_connections += 1;
        }
    }

    /// Count exchanges about to be written.
    pub fn add_exchanges(&mut self, rows: &[Exchange]) {
        for ex in rows {
            self.exchanges += 1;
            self.incomplete_exchanges += u64::from(ex.incomplete.is_some());
            use crate::schema::IncompleteReason::*;
            self.malformed_exchanges += u64::from(matches!(
                ex.incomplete,
                Some(RequestMalformed | ResponseMalformed)
            ));
            self.pairing_uncertain_exchanges += u64::from(ex.incomplete == Some(PairingUncertain));
            self.requests_without_response += u64::from(ex.status.is_none());
            self.truncated_bodies +=
                u64::from(ex.request_body_truncated) + u64::from(ex.response_body_truncated);
        }
    }

    /// The closing summary for people.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mb = self.input_bytes as f64 / 1e6;
        let _ = writeln!(s, "capture summary");
        if self.files > 0 {
            let _ = writeln!(s, "  files              {} ({mb:.1} MB)", self.files);
        } else {
            // Live: no input files; the packets line below says what came.
            let _ = writeln!(s, "  input              live interface");
        }
        let _ = writeln!(
            s,
            "  packets            {} ({} bytes, {} cut by snaplen)",
            self.packets, self.packet_bytes, self.packets_cut_by_snaplen
        );
        let _ = writeln!(
            s,
            "  connections        {} ({} HTTP, {} non-HTTP, {} without payload)",
            self.connections,
            self.http_connections,
            self.non_http_connections,
            self.silent_connections
        );
        if self.http2_connections > 0 {
            let _ = writeln!(
                s,
                "  http/2             {} connections, {} header blocks with unknown HPACK entries, {} bytes skipped to a frame boundary, {} stray header blocks dropped, {} streams given up over the header memory cap",
                self.http2_connections,
                self.hpack_unknown_blocks,
                self.http2_skipped_bytes,
                self.http2_stray_blocks,
                self.http2_streams_over_memory
            );
        }
        let _ = writeln!(s, "  exchanges          {}", self.exchanges);
        let _ = writeln!(s, "  incomplete         {}", self.incomplete_exchanges);
        if self.malformed_exchanges + self.pairing_uncertain_exchanges + self.oversize_heads > 0 {
            let _ = writeln!(
                s,
                "    of which        {} malformed ({} heads over 256 KiB), {} pairing uncertain",
                self.malformed_exchanges, self.oversize_heads, self.pairing_uncertain_exchanges
            );
        }
        let _ = writeln!(s, "  without response   {}", self.requests_without_response);
        let _ = writeln!(
            s,
            "  responses without request {}",
            self.responses_without_request
        );
        let _ = writeln!(
            s,
            "  tcp                {} segments, {} retransmitted, {} out of order, {} gaps ({} bytes)",
            self.tcp_segments,
            self.retransmitted_segments,
            self.out_of_order_segments,
            self.gaps,
            self.gap_bytes
        );
        let _ = writeln!(
            s,
            "  limits             {} expired, {} evicted connections, {} overflow gaps, {} bodies truncated",
            self.expired_connections,
            self.evicted_connections,
            self.buffer_overflow_gaps,
            self.truncated_bodies
        );
        if self.memory_truncated_bodies + self.memory_dropped_buffers > 0 {
            let _ = writeln!(
                s,
                "  memory cap         {} bodies cut, {} partial heads or frames dropped (--max-buffer-bytes)",
                self.memory_truncated_bodies, self.memory_dropped_buffers
            );
        }
        if self.interim_answers_dropped > 0 {
            let _ = writeln!(
                s,
                "  interim answers    {} past the 32 kept per exchange (statuses not stored)",
                self.interim_answers_dropped
            );
        }
        if !self.packets_skipped.is_empty() {
            let reasons: Vec<String> = self
                .packets_skipped
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "  packets skipped    {}", reasons.join(", "));
        }
        if self.redacted_values > 0 {
            let _ = writeln!(s, "  redacted values    {}", self.redacted_values);
        }
        if self.kernel_received > 0 || self.kernel_dropped > 0 {
            let _ = writeln!(
                s,
                "  kernel             {} received, {} dropped, {} dropped by the interface",
                self.kernel_received, self.kernel_dropped, self.interface_dropped
            );
        }
        if self.writer_dropped_exchanges > 0 {
            let _ = writeln!(
                s,
                "  writer behind      {} exchanges dropped",
                self.writer_dropped_exchanges
            );
        }
        if self.sampled_out_segments > 0 {
            let _ = writeln!(
                s,
                "  sampled out        {} segments",
                self.sampled_out_segments
            );
        }
        for d in &self.damaged_files {
            let _ = writeln!(s, "  damaged input      {d}");
        }
        s
    }
}
