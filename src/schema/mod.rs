//! Parquet layouts shared by every stage. Column names are a public interface
//! (documented in `docs/schema.md`); change them only with a schema version bump.

mod exchange;
mod headers;
mod metrics;
mod parquet_io;
mod result_columns;
mod results;

pub use exchange::{exchange_schema, exchanges_to_batch, Exchange, IncompleteReason};
pub use headers::HeaderList;
pub use metrics::{
    metrics_schema, metrics_to_batch, read_metrics, MetricKind, MetricRow, METRICS,
    METRICS_SCHEMA_VERSION,
};
pub use parquet_io::{
    file_identity, file_kind, longest_exchange_ns, read_exchanges, ExchangeFileWriter,
    ExchangeReader, FileKind, Metadata, ParquetFileWriter, WriterConfig,
};
pub use result_columns::ResultColumns;
pub use results::{
    read_results, results_schema, results_to_batch, ErrorKind, ReplayResult, ResultsReader,
    TargetRole, RESULTS, RESULTS_SCHEMA_VERSION,
};

/// Version of the capture (exchanges) schema, stored under [`META_SCHEMA_VERSION`].
pub const EXCHANGE_SCHEMA_VERSION: &str = "1";
/// Key-value metadata key holding the schema version.
pub const META_SCHEMA_VERSION: &str = "shadowctl.schema_version";
/// Key-value metadata key naming the kind of file ("exchanges", "results").
pub const META_KIND: &str = "shadowctl.kind";
/// Key-value metadata key holding the capture statistics as JSON.
pub const META_CAPTURE_STATS: &str = "shadowctl.capture_stats";
/// Results metadata key: the comma-separated target names of the run
/// (`recorded` first), so readers know how many rows each exchange has.
pub const META_TARGETS: &str = "shadowctl.targets";
/// Results metadata key, present (`true`) when the run was
/// `replay --until-decided`: it looked at the data as it came and stopped
/// when decided, so its verdict needs time-uniform intervals.
pub const META_UNTIL_DECIDED: &str = "shadowctl.until_decided";
/// Results metadata key: how many of the run's shadows `--read-only` kept
/// unsafe methods from. Those exchanges have that many rows fewer, so
/// `diff` knows when their rows are all there.
pub const META_READ_ONLY_SHADOWS: &str = "shadowctl.read_only_shadows";
/// Results metadata key: the longest any target was given to answer, in
/// milliseconds (the larger of `--timeout` and `--shadow-timeout`). A row
/// is written when its answer ends, so `diff` waits this long, in the
/// rows' own time, for an exchange's late rows.
pub const META_ANSWER_DEADLINE_MS: &str = "shadowctl.answer_deadline_ms";
/// The methods `replay --read-only` sends to shadows.
const READ_ONLY_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// Whether `replay --read-only` keeps a request of `method` from shadows.
pub fn kept_from_shadows(method: &str) -> bool {
    !READ_ONLY_METHODS.contains(&method)
}

/// Rows an exchange of `method` has in a results file of `rows` rows per
/// exchange (`recorded` included), when `--read-only` kept unsafe methods
/// from `read_only_shadows` shadows: replay and `diff` count alike.
pub fn rows_of_exchange(rows: usize, read_only_shadows: usize, method: &str) -> usize {
    if read_only_shadows > 0 && kept_from_shadows(method) {
        rows.saturating_sub(read_only_shadows)
    } else {
        rows
    }
}
/// What a secret header value is replaced with. Replay never sends it as a value.
pub const REDACTED: &str = "[REDACTED]";

/// Headers whose values are secrets unless `--keep-secrets` (capture: in
/// every message; replay: in the live answers): credentials
/// of the common schemes and API gateways. `Idempotency-Key` is not one:
/// the service needs it to answer the same way.
pub const DEFAULT_REDACTED: [&str; 11] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-amz-security-token",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
    "x-csrf-token",
];

/// Errors of reading or writing the shared Parquet files.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: String,
        source: arrow::error::ArrowError,
    },
    #[error("{path}: is a {kind}, not a file; give a file path")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path}: column `{column}` {problem}, expected {expected}")]
    Column {
        path: String,
        column: String,
        problem: String,
        expected: String,
    },
    #[error(
        "{path}: written by a newer shadowctl (schema version {found}); this one reads \
         version {reads}: upgrade shadowctl to read it"
    )]
    NewerVersion {
        path: String,
        found: String,
        reads: &'static str,
    },
    #[error(
        "{path}: the disk is nearly full ({free} bytes free, {need} needed for the next \
         rows): the file is closed with the rows it already holds"
    )]
    DiskFull { path: String, free: u64, need: u64 },
    #[error("{path}: not a shadowctl {expected} file ({detail})")]
    WrongKind {
        path: String,
        expected: &'static str,
        detail: String,
    },
}
