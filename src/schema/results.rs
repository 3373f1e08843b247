//! The results schema: one row per exchange and target, written by `replay`
//! and read by `diff`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::exchange::{header_column, header_list_type, offsets_column, offsets_type, ts_type};
use super::result_columns::ResultColumns;
use super::{FileKind, HeaderList};

/// Version of the results schema.
pub const RESULTS_SCHEMA_VERSION: &str = "1";

pub const RESULTS: FileKind = FileKind {
    kind: "results",
    version: RESULTS_SCHEMA_VERSION,
    bulky_columns: &["request_body", "response_body"],
    // Each value is new or repeats only across one exchange's few rows.
    unique_columns: &[
        "exchange_id",
        "due_ts",
        "sent_ts",
        "first_byte_ts",
        "done_ts",
        "first_token_ts",
    ],
};

/// What a target is in a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetRole {
    /// The stable version, replayed live.
    Primary,
    /// A candidate version.
    Shadow,
    /// The response recorded in the capture (a second primary observation).
    Recorded,
}

impl TargetRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Shadow => "shadow",
            Self::Recorded => "recorded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "primary" => Some(Self::Primary),
            "shadow" => Some(Self::Shadow),
            "recorded" => Some(Self::Recorded),
            _ => None,
        }
    }
}

/// Why a request got no (complete) answer. Errors are data: the run goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    ConnectRefused,
    ConnectTimeout,
    Timeout,
    Reset,
    MalformedResponse,
    OversizeBody,
    Tls,
    Io,
    /// The schedule could not send it in time (target saturated).
    NotSentInTime,
    /// The captured request body was truncated, so it cannot be replayed faithfully.
    RequestTruncated,
    /// The run was stopped before the answer came.
    Interrupted,
    /// The answer started but then no byte came for `--stream-idle-timeout`.
    StreamIdle,
    /// HTTP/2: the server reset the stream (`RST_STREAM`; the code is in
    /// the detail).
    StreamReset,
    /// HTTP/2: the server refused the stream (`REFUSED_STREAM`): it was not
    /// processed and could be retried.
    RefusedStream,
    /// HTTP/2: the server closed the connection with `GOAWAY` before
    /// answering.
    GoAway,
    /// The captured request cannot be sent as recorded (bytes that would
    /// end a header early, no target): not sent, never smuggled.
    Unsendable,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::MalformedResponse => "malformed_response",
            Self::OversizeBody => "oversize_body",
            Self::Tls => "tls",
            Self::Io => "io",
            Self::NotSentInTime => "not_sent_in_time",
            Self::RequestTruncated => "request_truncated",
            Self::Interrupted => "interrupted",
            Self::StreamIdle => "stream_idle",
            Self::StreamReset => "stream_reset",
            Self::RefusedStream => "refused_stream",
            Self::GoAway => "goaway",
            Self::Unsendable => "unsendable",
        }
    }
}

/// What one target answered to one request.
#[derive(Clone, Debug, Default)]
pub struct ReplayResult {
    pub exchange_id: u64,
    pub flow_id: u64,
    pub seq_in_flow: u32,
    pub target_name: String,
    pub role: Option<TargetRole>,
    pub method: String,
    pub target: String,
    pub endpoint: String,
    pub request_headers: HeaderList,
    pub request_body: Vec<u8>,
    /// When the schedule wanted it sent, when it was sent, first and last
    /// response byte (ns since epoch).
    pub due_ts: i64,
    pub sent_ts: Option<i64>,
    pub first_byte_ts: Option<i64>,
    pub done_ts: Option<i64>,
    pub status: Option<u16>,
    pub response_headers: HeaderList,
    /// Trailers (HTTP/2, and HTTP/1 chunked): gRPC's status is here.
    pub response_trailers: HeaderList,
    pub response_body: Vec<u8>,
    pub response_body_len: u64,
    pub response_body_truncated: bool,
    pub error_kind: Option<ErrorKind>,
    pub error_detail: Option<String>,
    /// Event streams: when each event arrived, in ns after `sent_ts`.
    pub event_offsets_ns: Option<Vec<i64>>,
    /// Event streams: arrival of the first event that carried generated
    /// content (an LLM's first token).
    pub first_token_ts: Option<i64>,
}

impl ReplayResult {
    /// Latency from the actual send to the last byte.
    pub fn latency_ns(&self) -> Option<i64> {
        Some(self.done_ts? - self.sent_ts?)
    }

    /// Latency from the due time (corrected for coordinated omission).
    /// None for recorded rows: their times are the capture's, their due time
    /// the replay's schedule, and the difference means nothing.
    pub fn latency_from_due_ns(&self) -> Option<i64> {
        if self.role == Some(TargetRole::Recorded) {
            return None;
        }
        Some(self.done_ts? - self.due_ts)
    }

    /// How late the request was sent after its due time (none for recorded
    /// rows, which were not sent).
    pub fn lag_ns(&self) -> Option<i64> {
        if self.role == Some(TargetRole::Recorded) {
            return None;
        }
        Some(self.sent_ts? - self.due_ts)
    }
}

pub fn results_schema() -> SchemaRef {
    use DataType::*;
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    Arc::new(Schema::new(vec![
        f("exchange_id", UInt64, false),
        f("flow_id", UInt64, false),
        f("seq_in_flow", UInt32, false),
        f("target_name", Utf8, false),
        f("role", Utf8, false),
        f("method", Utf8, false),
        f("target", Utf8, false),
        f("endpoint", Utf8, false),
        f("request_headers", header_list_type(), false),
        f("request_body", Binary, false),
        f("due_ts", ts_type(), false),
        f("sent_ts", ts_type(), true),
        f("first_byte_ts", ts_type(), true),
        f("done_ts", ts_type(), true),
        f("latency_ns", Int64, true),
        f("latency_from_due_ns", Int64, true),
        f("lag_ns", Int64, true),
        f("status", UInt16, true),
        f("response_headers", header_list_type(), false),
        f("response_body", Binary, false),
        f("response_body_len", UInt64, false),
        f("response_body_truncated", Boolean, false),
        f("error_kind", Utf8, true),
        f("error_detail", Utf8, true),
        f("first_token_ts", ts_type(), true),
        f("event_offsets_ns", offsets_type(), true),
        f("response_trailers", header_list_type(), false),
    ]))
}

pub fn results_to_batch(rows: &[ReplayResult]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = rows.len();
    // Builders are sized from the rows: growing them showed in the profile.
    let text = |f: &dyn Fn(&ReplayResult) -> Option<&str>| {
        let bytes = rows.iter().map(|r| f(r).map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let ts = |f: &dyn Fn(&ReplayResult) -> Option<i64>| {
        let mut b = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let int = |f: &dyn Fn(&ReplayResult) -> Option<i64>| {
        let mut b = arrow::array::Int64Builder::with_capacity(n);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let u64s = |f: &dyn Fn(&ReplayResult) -> u64| {
        let mut b = UInt64Builder::with_capacity(n);
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let bin = |f: &dyn Fn(&ReplayResult) -> &[u8]| {
        let bytes = rows.iter().map(|r| f(r).len()).sum();
        let mut b = BinaryBuilder::with_capacity(n, bytes);
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let mut seq = UInt32Builder::with_capacity(n);
    rows.iter().for_each(|r| seq.append_value(r.seq_in_flow));
    let mut status = UInt16Builder::with_capacity(n);
    rows.iter().for_each(|r| status.append_option(r.status));
    let mut trunc = BooleanBuilder::with_capacity(n);
    rows.iter()
        .for_each(|r| trunc.append_value(r.response_body_truncated));
    let columns: Vec<ArrayRef> = vec![
        u64s(&|r| r.exchange_id),
        u64s(&|r| r.flow_id),
        Arc::new(seq.finish()),
        text(&|r| Some(&r.target_name)),
        text(&|r| Some(r.role.map_or("primary", TargetRole::as_str))),
        text(&|r| Some(&r.method)),
        text(&|r| Some(&r.target)),
        text(&|r| Some(&r.endpoint)),
        header_column(rows.iter().map(|r| &r.request_headers), n),
        bin(&|r| &r.request_body),
        ts(&|r| Some(r.due_ts)),
        ts(&|r| r.sent_ts),
        ts(&|r| r.first_byte_ts),
        ts(&|r| r.done_ts),
        int(&|r| r.latency_ns()),
        int(&|r| r.latency_from_due_ns()),
        int(&|r| r.lag_ns()),
        Arc::new(status.finish()),
        header_column(rows.iter().map(|r| &r.response_headers), n),
        bin(&|r| &r.response_body),
        u64s(&|r| r.response_body_len),
        Arc::new(trunc.finish()),
        text(&|r| r.error_kind.map(ErrorKind::as_str)),
        text(&|r| r.error_detail.as_deref()),
        ts(&|r| r.first_token_ts),
        offsets_column(rows.iter().map(|r| r.event_offsets_ns.as_deref())),
        header_column(rows.iter().map(|r| &r.response_trailers), n),
    ];
    RecordBatch::try_new(results_schema(), columns)
}

/// Read every row of a results file (diff streams; tests read whole files).
/// Reads a results file batch by batch (memory bounded by the batch size).
pub struct ResultsReader {
    inner: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    path: String,
    /// Rows in the file (from its footer).
    pub rows: u64,
    /// Target names of the run (`recorded` first), when the file says.
    pub targets: Option<Vec<String>>,
    /// Written by `replay --until-decided`.
    pub until_decided: bool,
    /// Shadows that got no unsafe methods (`--read-only`): so many rows
    /// fewer for those exchanges.
    pub read_only_shadows: usize,
    /// How late, at most, a row may come after its exchange was due
    /// (nanoseconds), when the file says.
    pub answer_deadline_ns: Option<i64>,
    skip: &'static [&'static str],
}

impl ResultsReader {
    /// Open a results file; anything else (a capture, a foreign Parquet file)
    /// is refused with a message naming the file.
    pub fn open(path: &std::path::Path) -> Result<Self, super::SchemaError> {
        Self::open_without(path, &[])
    }

    /// Open leaving out the listed columns: `request_headers` (its rows
    /// then hold no request headers) and the derived latency columns, which
    /// rows compute from their timestamps anyway.
    pub fn open_without(
        path: &std::path::Path,
        skip: &'static [&'static str],
    ) -> Result<Self, super::SchemaError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| super::SchemaError::Io {
            path: name.clone(),
            source,
        })?;
        let err = |e: parquet::errors::ParquetError| super::SchemaError::Parquet {
            path: name.clone(),
            source: e,
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(err)?;
        let meta = |key: &str| {
            builder
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|k| k.key == key))
                .and_then(|k| k.value.clone())
        };
        let kind = super::parquet_io::kind_in(builder.metadata());
        let until_decided = meta(super::META_UNTIL_DECIDED).as_deref() == Some("true");
        let read_only_shadows = meta(super::META_READ_ONLY_SHADOWS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let answer_deadline_ns = meta(super::META_ANSWER_DEADLINE_MS)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|ms| ms.saturating_mul(1_000_000));
        let targets =
            meta(super::META_TARGETS).map(|t| t.split(',').map(str::to_string).collect::<Vec<_>>());
        if kind.as_deref() != Some(RESULTS.kind) {
            return Err(super::SchemaError::WrongKind {
                path: name,
                expected: "results",
                detail: match kind {
                    Some(k) => format!("its kind is `{k}`"),
                    None => "no shadowctl metadata".into(),
                },
            });
        }
        // Derived from the timestamps when written; never read back. The
        // stream columns came later: older files lack them.
        let derived = [
            "latency_ns",
            "latency_from_due_ns",
            "lag_ns",
            "first_token_ts",
            "event_offsets_ns",
            "response_trailers",
        ];
        super::parquet_io::check_version(builder.metadata(), &RESULTS, &name)?;
        super::parquet_io::check_columns(&name, &results_schema(), builder.schema(), &derived)?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        // Columns the reader was asked to leave out are not decoded at all.
        let keep: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !skip.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let mask =
            parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), keep.iter().copied());
        let batch = super::parquet_io::read_batch_rows(builder.metadata());
        let inner = builder
            .with_projection(mask)
            .with_batch_size(batch)
            .build()
            .map_err(err)?;
        Ok(Self {
            inner,
            path: name,
            rows,
            targets,
            until_decided,
            read_only_shadows,
            answer_deadline_ns,
            skip,
        })
    }
}

impl ResultsReader {
    /// The next batch, read in place (see [`ResultColumns`]).
    pub fn next_columns(&mut self) -> Option<Result<ResultColumns, super::SchemaError>> {
        let batch = self.inner.next()?;
        Some(
            batch
                .map_err(|source| super::SchemaError::Arrow {
                    path: self.path.clone(),
                    source,
                })
                .and_then(|b| {
                    ResultColumns::new(&b, self.skip).map_err(|detail| {
                        super::SchemaError::WrongKind {
                            path: self.path.clone(),
                            expected: "results",
                            detail,
                        }
                    })
                }),
        )
    }
}

impl Iterator for ResultsReader {
    type Item = Result<Vec<ReplayResult>, super::SchemaError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.next_columns()?
                .map(|c| (0..c.len()).map(|i| c.row(i)).collect()),
        )
    }
}

/// Read a whole results file (small files and tests; `diff` streams).
pub fn read_results(path: &std::path::Path) -> Result<Vec<ReplayResult>, super::SchemaError> {
    let mut out = Vec::new();
    for batch in ResultsReader::open(path)? {
        out.extend(batch?);
    }
    Ok(out)
}

impl ErrorKind {
    pub fn parse(s: &str) -> Option<Self> {
        use ErrorKind::*;
        [
            ConnectRefused,
            ConnectTimeout,
            Timeout,
            Reset,
            MalformedResponse,
            OversizeBody,
            Tls,
            Io,
            NotSentInTime,
            RequestTruncated,
            Interrupted,
            StreamIdle,
            StreamReset,
            RefusedStream,
            GoAway,
            Unsendable,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}
