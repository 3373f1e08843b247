//! Streaming Parquet writing (temporary name, footer always written, renamed
//! when complete) and reading back of exchange files.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, ListArray, RecordBatch, StringArray, StructArray,
    TimestampNanosecondArray, UInt16Array, UInt32Array, UInt64Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::{
    exchange_schema, exchanges_to_batch, Exchange, HeaderList, IncompleteReason, SchemaError,
    EXCHANGE_SCHEMA_VERSION, META_KIND, META_SCHEMA_VERSION,
};
use crate::text::latin1_bytes;

/// How a Parquet file is laid out.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Rows per row group at most.
    pub row_group_rows: usize,
    /// Encoded bytes buffered before a row group is flushed early.
    pub row_group_bytes: usize,
    pub zstd_level: i32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            row_group_rows: 16 * 1024,
            row_group_bytes: 16 * 1024 * 1024,
            zstd_level: 1,
        }
    }
}

/// Writes record batches to `path` through `path.partial`, renamed on
/// [`finish`](ParquetFileWriter::finish) once the footer is written.
/// Dropped unfinished (an error, an abort), it removes `path.partial`, so a
/// failed run leaves what was at `path` as it was and nothing beside it.
/// A character device or FIFO at `path` is written straight to: renaming
/// over it would replace the device node with a regular file.
pub struct ParquetFileWriter {
    /// `None` once finished.
    writer: Option<ArrowWriter<ChunkedFile>>,
    path: PathBuf,
    tmp: PathBuf,
    /// Writing straight to `path` (a device or FIFO): no temporary, no rename.
    direct: bool,
    config: WriterConfig,
    rows: u64,
}

/// A file written at most 64 KiB per system call. The Parquet writer hands
/// over whole column chunks (megabytes); one such write() kept a core in the
/// kernel for milliseconds, and on kernels without in-kernel preemption the
/// capture's packet reader or the replay's scheduler sharing that core
/// waited that long. Between calls the kernel can switch threads.
struct ChunkedFile(File);

impl std::io::Write for ChunkedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        const CHUNK: usize = 64 * 1024;
        self.0.write(&buf[..buf.len().min(CHUNK)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Room kept for a file's footer (its metadata and statistics: a few
/// hundred bytes per column and row group).
const FOOTER_ROOM: u64 = 1 << 20;

/// Bytes this process may still put on the file's filesystem (root may
/// use the blocks reserved for it, 5% of an ext4 disk by default); None
/// when the system does not say (a FIFO, an odd filesystem).
fn free_bytes(f: &File) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fstatvfs only fills the struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    // SAFETY: geteuid has no preconditions.
    let blocks = if unsafe { libc::geteuid() } == 0 {
        st.f_bfree
    } else {
        st.f_bavail
    };
    Some((blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// Rows read per batch at most.
const READ_BATCH: usize = 1024;
/// Bytes a byte-array column may hold in one read batch: Arrow's `Binary`
/// addresses its bytes with 32-bit offsets (2 GiB), and a batch of 1,024
/// bodies of a few MiB each would pass that.
const READ_BATCH_BYTES: u64 = 1 << 30;

/// Rows per read batch for this file, so that no column of a batch can
/// reach [`READ_BATCH_BYTES`]. A batch may span row groups; `k` rows span
/// at most `k / fewest + 2` of them, each at most the largest column
/// chunk. Files of small rows keep 1,024; files of large bodies get fewer
/// rows, down to one, rather than an error half-way through.
pub(crate) fn read_batch_rows(meta: &parquet::file::metadata::ParquetMetaData) -> usize {
    batch_rows_within(meta, READ_BATCH_BYTES)
}

fn batch_rows_within(meta: &parquet::file::metadata::ParquetMetaData, limit: u64) -> usize {
    let groups = meta.row_groups();
    let largest = groups
        .iter()
        .flat_map(|g| {
            g.columns()
                .iter()
                .map(|c| c.uncompressed_size().max(0) as u64)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    // The last group is often a short remainder; it only ends a batch.
    let body = match groups.len() {
        0 | 1 => groups,
        n => &groups[..n - 1],
    };
    let fewest = body
        .iter()
        .map(|g| g.num_rows().max(1) as u64)
        .min()
        .unwrap_or(READ_BATCH as u64);
    let spans = (limit / largest).saturating_sub(2);
    spans.saturating_mul(fewest).clamp(1, READ_BATCH as u64) as usize
}

fn io_err(path: &Path, source: std::io::Error) -> SchemaError {
    SchemaError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pq_err(path: &Path, source: parquet::errors::ParquetError) -> SchemaError {
    SchemaError::Parquet {
        path: path.display().to_string(),
        source,
    }
}

/// Whether a column written by another tool can be read as `expected`:
/// the same physical types; names of list items, nullability and time
/// zones may differ (pyarrow writes `element` where arrow-rs writes `item`).
fn compatible(expected: &arrow::datatypes::DataType, found: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::*;
    match (expected, found) {
        (List(a), List(b)) => compatible(a.data_type(), b.data_type()),
        (Struct(a), Struct(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| x.name() == y.name() && compatible(x.data_type(), y.data_type()))
        }
        (Timestamp(u, _), Timestamp(v, _)) => u == v,
        (e, f) => e == f,
    }
}

/// Check a file's columns against the schema this version reads, before
/// any row is decoded: a wrong type would otherwise be found by a panic in
/// the middle of a run. Columns in `optional` may be absent (never read).
pub(crate) fn check_columns(
    path: &str,
    expected: &arrow::datatypes::Schema,
    found: &arrow::datatypes::Schema,
    optional: &[&str],
) -> Result<(), SchemaError> {
    for field in expected.fields() {
        let problem = match found.field_with_name(field.name()) {
            Err(_) if optional.contains(&field.name().as_str()) => continue,
            Err(_) => "is missing".to_string(),
            Ok(f) if compatible(field.data_type(), f.data_type()) => continue,
            Ok(f) => format!("has type {}", f.data_type()),
        };
        return Err(SchemaError::Column {
            path: path.to_string(),
            column: field.name().clone(),
            problem,
            expected: format!("type {}", field.data_type()),
        });
    }
    Ok(())
}

/// The `shadowctl.kind` a Parquet footer names, if any.
pub(crate) fn kind_in(meta: &parquet::file::metadata::ParquetMetaData) -> Option<String> {
    meta.file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == META_KIND))
        .and_then(|k| k.value.clone())
        .or_else(|| kind_by_columns(meta).map(str::to_string))
}

/// Refuse a file of a later schema version than this build reads: its
/// columns may mean something else. Files without a version (re-saved by
/// other tools) are judged by their columns alone.
pub(crate) fn check_version(
    meta: &parquet::file::metadata::ParquetMetaData,
    kind: &FileKind,
    path: &str,
) -> Result<(), SchemaError> {
    let found = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == META_SCHEMA_VERSION))
        .and_then(|k| k.value.clone());
    let Some(found) = found else {
        return Ok(());
    };
    let major = |v: &str| {
        v.split('.')
            .next()
            .and_then(|m| m.trim().parse::<u64>().ok())
    };
    match (major(&found), major(kind.version)) {
        (Some(f), Some(r)) if f > r => Err(SchemaError::NewerVersion {
            path: path.to_string(),
            found,
            reads: kind.version,
        }),
        _ => Ok(()),
    }
}

/// The kind of a file that lost shadowctl's footer metadata (re-saved by
/// pandas, DuckDB or Spark, which keep columns but not key-value
/// metadata), told by columns only that kind has. Its columns are then
/// checked like any file's.
fn kind_by_columns(meta: &parquet::file::metadata::ParquetMetaData) -> Option<&'static str> {
    let schema = meta.file_metadata().schema_descr();
    let names: Vec<&str> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let has = |all: &[&str]| all.iter().all(|c| names.contains(c));
    if has(&["exchange_id", "target_name", "role", "sent_ts"]) {
        Some("results")
    } else if has(&["exchange_id", "seq_in_flow", "request_ts", "request_body"]) {
        Some("exchanges")
    } else if has(&["ts", "target", "source", "family", "labels", "value"]) {
        Some("metrics")
    } else {
        None
    }
}

/// The kind of shadowctl file at `path` (`exchanges`, `results`,
/// `metrics`), read from its footer alone; None for other Parquet files.
pub fn file_kind(path: &Path) -> Result<Option<String>, SchemaError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let reader =
        parquet::file::reader::SerializedFileReader::new(file).map_err(|e| pq_err(path, e))?;
    Ok(kind_in(parquet::file::reader::FileReader::metadata(
        &reader,
    )))
}

/// A number for the file at `path` from what it holds (its length, rows
/// and footer metadata, where capture writes its statistics), not from
/// its name or place on a command line: the same file gives the same
/// number in every shard of a run.
pub fn file_identity(path: &Path) -> Result<u64, SchemaError> {
    use std::hash::Hasher;
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let reader =
        parquet::file::reader::SerializedFileReader::new(file).map_err(|e| pq_err(path, e))?;
    let meta = parquet::file::reader::FileReader::metadata(&reader).file_metadata();
    let mut h = rustc_hash::FxHasher::default();
    h.write_u64(len);
    h.write_i64(meta.num_rows());
    for kv in meta.key_value_metadata().into_iter().flatten() {
        h.write(kv.key.as_bytes());
        h.write(kv.value.as_deref().unwrap_or("").as_bytes());
    }
    Ok(h.finish())
}

/// What kind of shadowctl file, for its metadata.
#[derive(Clone, Copy, Debug)]
pub struct FileKind {
    pub kind: &'static str,
    pub version: &'static str,
    /// Large unique columns: no statistics, no dictionary.
    pub bulky_columns: &'static [&'static str],
    /// Small columns whose every value is new (ids, timestamps): no
    /// dictionary (interning each value into a dictionary that is then
    /// dropped showed in the capture profile); statistics kept.
    pub unique_columns: &'static [&'static str],
}

/// Parquet columns of `schema` that sit inside a list.
fn repeated_leaves(schema: &arrow::datatypes::Schema) -> Vec<ColumnPath> {
    parquet::arrow::ArrowSchemaConverter::new()
        .convert(schema)
        .map(|d| {
            d.columns()
                .iter()
                .filter(|c| c.max_rep_level() > 0)
                .map(|c| c.path().clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Open `tmp` to write `path` through, locked for this run: a second run
/// given the same output would otherwise truncate and share it, and the
/// first one's rename would put a file still being written, without its
/// footer, under the final name. A `.partial` left by a killed run is not
/// locked (locks die with their process) and is reused. The output keeps
/// the permissions of the file it replaces (a 0600 file stays 0600).
fn open_temporary(tmp: &Path, path: &Path) -> std::io::Result<File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(tmp)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::other(
            "another run is writing this output now (its temporary file is locked)",
        ));
    }
    f.set_len(0)?;
    if let Ok(meta) = std::fs::metadata(path) {
        f.set_permissions(meta.permissions())?;
    }
    Ok(f)
}

impl ParquetFileWriter {
    pub fn create(
        path: &Path,
        schema: arrow::datatypes::SchemaRef,
        kind: FileKind,
        config: WriterConfig,
    ) -> Result<Self, SchemaError> {
        use crate::outpath::{resolve, write_mode, WriteMode};
        let direct = match write_mode(path) {
            Ok(mode) => mode == WriteMode::Direct,
            Err(kind) => {
                return Err(SchemaError::NotAFile {
                    path: path.display().to_string(),
                    kind,
                })
            }
        };
        // Through a symlink to its target: the link stays a link.
        let path = resolve(path);
        let (tmp, file) = if direct {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            (path.clone(), f)
        } else {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let f = open_temporary(&tmp, &path).map_err(|e| io_err(&tmp, e))?;
            (tmp, f)
        };
        let level = ZstdLevel::try_new(config.zstd_level).unwrap_or_default();
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(config.row_group_rows))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(META_KIND.into(), kind.kind.to_string()),
                KeyValue::new(META_SCHEMA_VERSION.into(), kind.version.to_string()),
            ]));
        // Bodies are large and unique: statistics and dictionaries cost time
        // and buy nothing for them.
        for col in kind.bulky_columns {
            let c = ColumnPath::from(*col);
            props = props
                .set_column_statistics_enabled(c.clone(), EnabledStatistics::None)
                .set_column_dictionary_enabled(c, false);
        }
        // Min/max statistics of the values inside lists (header names and
        // values, event offsets) serve no query, and comparing every string
        // for them was a tenth of the writer's work; top-level columns
        // (ids, times, statuses, names) keep theirs for pruning.
        for c in repeated_leaves(&schema) {
            props = props.set_column_statistics_enabled(c, EnabledStatistics::None);
        }
        // Ids and timestamps mostly grow: stored as deltas they take a
        // fraction of the bytes, which readers then decompress.
        for col in kind.unique_columns {
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(*col), false)
                .set_column_encoding(ColumnPath::from(*col), Encoding::DELTA_BINARY_PACKED);
        }
        let writer = ArrowWriter::try_new(ChunkedFile(file), schema, Some(props.build()))
            .map_err(|e| pq_err(&tmp, e))?;
        Ok(Self {
            writer: Some(writer),
            path,
            tmp,
            direct,
            config,
            rows: 0,
        })
    }

    fn arrow(&mut self) -> &mut ArrowWriter<ChunkedFile> {
        self.writer
            .as_mut()
            .expect("only finish() takes the writer")
    }

    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), SchemaError> {
        let tmp = self.tmp.clone();
        self.check_room(batch)?;
        self.arrow().write(batch).map_err(|e| pq_err(&tmp, e))?;
        self.rows += batch.num_rows() as u64;
        // Bound memory: flush a row group early when large bodies fill it.
        if self.arrow().in_progress_size() >= self.config.row_group_bytes {
            self.arrow().flush().map_err(|e| pq_err(&tmp, e))?;
        }
        Ok(())
    }

    /// Refuse a batch the disk may not hold. A write that fails with a full
    /// disk half way through a row group leaves a file that no footer can
    /// finish (the Parquet writer has counted the row group it never
    /// closed), and every row in it is lost. Refused while the rows
    /// buffered, this batch and a footer still fit (counted unencoded, so
    /// generously), the file can still be closed with what it holds.
    fn check_room(&self, batch: &RecordBatch) -> Result<(), SchemaError> {
        let Some(w) = self.writer.as_ref().filter(|_| !self.direct) else {
            return Ok(());
        };
        // The bytes the batch uses (not its buffers' capacity), unencoded.
        let batch_bytes: usize = batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
            .sum();
        let need = (w.in_progress_size() + batch_bytes) as u64 + FOOTER_ROOM;
        match free_bytes(&w.inner().0) {
            Some(free) if free < need => Err(SchemaError::DiskFull {
                path: self.tmp.display().to_string(),
                free,
                need,
            }),
            _ => Ok(()),
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written to the file so far plus those buffered for it.
    pub fn bytes(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |w| (w.bytes_written() + w.in_progress_size()) as u64)
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Write the footer (with `metadata` added) and give the file its final name.
    /// On failure the temporary file is removed (by `Drop`).
    pub fn finish(mut self, metadata: Vec<(String, String)>) -> Result<PathBuf, SchemaError> {
        let mut writer = self.writer.take().expect("finished once");
        for (k, v) in metadata {
            writer.append_key_value_metadata(KeyValue::new(k, v));
        }
        let footer = writer.finish().map_err(|e| pq_err(&self.tmp, e));
        // From here on `Drop` does not know the state: clean up by hand.
        let renamed = footer.and_then(|_| {
            if self.direct {
                return Ok(());
            }
            // On disk before it gets its final name: a power cut must not
            // leave a complete-looking name over data that never got there.
            writer
                .inner()
                .0
                .sync_all()
                .map_err(|e| io_err(&self.tmp, e))?;
            std::fs::rename(&self.tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
            sync_parent(&self.path);
            Ok(())
        });
        drop(writer);
        if let Err(e) = renamed {
            self.remove_tmp();
            return Err(e);
        }
        Ok(self.path.clone())
    }

    fn remove_tmp(&self) {
        if !self.direct {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Make a rename in `path`'s directory durable (the directory entry is
/// data of its own). Best effort: some file systems cannot sync a directory.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Drop for ParquetFileWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.remove_tmp();
        }
    }
}

const EXCHANGES: FileKind = FileKind {
    kind: "exchanges",
    version: EXCHANGE_SCHEMA_VERSION,
    bulky_columns: &["request_body", "response_body"],
    unique_columns: &[
        "exchange_id",
        "request_ts",
        "request_end_ts",
        "response_ts",
        "response_end_ts",
    ],
};

/// Writes capture files (see [`ParquetFileWriter`]).
pub struct ExchangeFileWriter(ParquetFileWriter);

impl ExchangeFileWriter {
    pub fn create(path: &Path, config: WriterConfig) -> Result<Self, SchemaError> {
        ParquetFileWriter::create(path, exchange_schema(), EXCHANGES, config).map(Self)
    }

    pub fn write(&mut self, rows: &[Exchange]) -> Result<(), SchemaError> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = exchanges_to_batch(rows).map_err(|source| SchemaError::Arrow {
            path: self.0.tmp_path().display().to_string(),
            source,
        })?;
        self.0.write_batch(&batch)
    }

    pub fn rows(&self) -> u64 {
        self.0.rows()
    }

    pub fn bytes(&self) -> u64 {
        self.0.bytes()
    }

    pub fn finish(self, metadata: Vec<(String, String)>) -> Result<PathBuf, SchemaError> {
        self.0.finish(metadata)
    }
}

/// Read every exchange of a capture file (for tests and small files; replay
/// streams batches instead).
/// Key-value metadata of a Parquet file.
pub type Metadata = Vec<(String, String)>;

pub fn read_exchanges(path: &Path) -> Result<(Vec<Exchange>, Metadata), SchemaError> {
    let reader = ExchangeReader::open(path)?;
    let meta = reader.metadata.clone();
    let mut out = Vec::new();
    for batch in reader {
        out.extend(batch?);
    }
    Ok((out, meta))
}

/// Streams the exchanges of a capture file, one record batch at a time, so
/// files larger than memory can be read.
pub struct ExchangeReader {
    inner: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    path: PathBuf,
    pub metadata: Metadata,
    pub rows: u64,
    /// The file's first request time, from the column statistics (None
    /// when a row group has none).
    pub earliest_request_ts: Option<i64>,
}

/// The longest exchange of a capture file, request to completion (the
/// response's end, else the request's): rows are written as they complete,
/// so this is how far back in request time a row may lie behind the rows
/// before it. Only the three timestamp columns are read.
pub fn longest_exchange_ns(path: &Path) -> Result<i64, SchemaError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
    let wanted = ["request_ts", "request_end_ts", "response_end_ts"];
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| wanted.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| pq_err(path, e))?;
    let mut longest = 0i64;
    for batch in reader {
        let b = batch.map_err(|source| SchemaError::Arrow {
            path: path.display().to_string(),
            source,
        })?;
        let ts = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        };
        let (Some(start), Some(end)) = (ts("request_ts"), ts("request_end_ts")) else {
            return Ok(0);
        };
        let response_end = ts("response_end_ts");
        for i in 0..b.num_rows() {
            let done = match response_end {
                Some(r) if r.is_valid(i) => r.value(i),
                _ => end.value(i),
            };
            longest = longest.max(done.saturating_sub(start.value(i)));
        }
    }
    Ok(longest)
}

/// The least value of an INT64 column, from its row groups' statistics.
fn column_min_i64(meta: &parquet::file::metadata::ParquetMetaData, name: &str) -> Option<i64> {
    use parquet::file::statistics::Statistics;
    let mut least: Option<i64> = None;
    for g in meta.row_groups() {
        let c = g
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)?;
        match c.statistics()? {
            Statistics::Int64(s) => {
                let m = *s.min_opt()?;
                least = Some(least.map_or(m, |l| l.min(m)));
            }
            _ => return None,
        }
    }
    least
}

impl ExchangeReader {
    pub fn open(path: &Path) -> Result<Self, SchemaError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
        let metadata: Metadata = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| {
                kv.iter()
                    .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let kind = kind_in(builder.metadata());
        if kind.as_deref() != Some("exchanges") {
            return Err(SchemaError::WrongKind {
                path: path.display().to_string(),
                expected: "capture (exchanges)",
                detail: format!("kind is {kind:?}"),
            });
        }
        check_version(builder.metadata(), &EXCHANGES, &path.display().to_string())?;
        // May be absent: the first three are never read back (derived from
        // other columns when written); `malformed_detail`,
        // `response_event_offsets_ns`, `endpoint` and `stream_id` came later
        // within schema version 1, so older capture files lack them.
        let derived = [
            "incomplete",
            "missing_response",
            "endpoint",
            "malformed_detail",
            "response_event_offsets_ns",
            "stream_id",
        ];
        check_columns(
            &path.display().to_string(),
            &exchange_schema(),
            builder.schema(),
            &derived,
        )?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        let earliest_request_ts = column_min_i64(builder.metadata(), "request_ts");
        let batch = read_batch_rows(builder.metadata());
        let inner = builder
            .with_batch_size(batch)
            .build()
            .map_err(|e| pq_err(path, e))?;
        Ok(Self {
            earliest_request_ts,
            inner,
            path: path.to_path_buf(),
            metadata,
            rows,
        })
    }
}

impl Iterator for ExchangeReader {
    type Item = Result<Vec<Exchange>, SchemaError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        Some(
            batch
                .map_err(|source| SchemaError::Arrow {
                    path: self.path.display().to_string(),
                    source,
                })
                .map(|b| {
                    let mut out = Vec::with_capacity(b.num_rows());
                    batch_to_exchanges(&b, &mut out);
                    out
                }),
        )
    }
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .unwrap_or_else(|| panic!("column {name} has the schema's type"))
}

fn headers_at(list: &ListArray, row: usize) -> HeaderList {
    let (start, end) = (
        list.value_offsets()[row] as usize,
        list.value_offsets()[row + 1] as usize,
    );
    let s: &StructArray = list.values().as_struct();
    let names = s.column(0).as_string::<i32>();
    let values = s.column(1).as_string::<i32>();
    let span = |a: &arrow::array::StringArray| {
        let o = a.value_offsets();
        o[start] as usize..o[end] as usize
    };
    let (name_bytes, value_bytes) = (span(names), span(values));
    let mut h = HeaderList::with_capacity(end - start, name_bytes.len() + value_bytes.len());
    // Header text is nearly always ASCII: then the stored bytes are the
    // wire bytes and no field needs mapping back from Latin-1.
    let ascii =
        names.value_data()[name_bytes].is_ascii() && values.value_data()[value_bytes].is_ascii();
    for i in start..end {
        let (n, v) = (names.value(i), values.value(i));
        if ascii {
            h.push(n.as_bytes(), v.as_bytes());
        } else {
            h.push(&latin1_bytes(n), &latin1_bytes(v));
        }
    }
    h
}

fn batch_to_exchanges(b: &RecordBatch, out: &mut Vec<Exchange>) {
    // Columns are found by name once per batch, not once per row.
    let u64c = |n| col::<UInt64Array>(b, n);
    let ts = |n| col::<TimestampNanosecondArray>(b, n);
    let s = |n| col::<StringArray>(b, n);
    let opt_s = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let opt_ts = |a: &TimestampNanosecondArray, i: usize| a.is_valid(i).then(|| a.value(i));
    let flag = |n| col::<BooleanArray>(b, n);
    let bin = |n| col::<BinaryArray>(b, n);
    let lists = |n| col::<ListArray>(b, n);
    let status = col::<UInt16Array>(b, "status");
    let seq = col::<UInt32Array>(b, "seq_in_flow");
    let interim = lists("interim_statuses");
    let interim_values = interim
        .values()
        .as_primitive::<arrow::datatypes::UInt16Type>()
        .values();
    let detail = b
        .column_by_name("malformed_detail")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let event_offsets = b
        .column_by_name("response_event_offsets_ns")
        .and_then(|c| c.as_any().downcast_ref::<ListArray>());
    // Absent from files written before HTTP/2 capture.
    let stream_ids = b
        .column_by_name("stream_id")
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
    let (exchange_id, flow_id) = (u64c("exchange_id"), u64c("flow_id"));
    let (client, server) = (s("client"), s("server"));
    let (request_ts, request_end_ts) = (ts("request_ts"), ts("request_end_ts"));
    let (response_ts, response_end_ts) = (ts("response_ts"), ts("response_end_ts"));
    let (method, target, http_version, host) =
        (s("method"), s("target"), s("http_version"), s("host"));
    let (request_headers, request_trailers) = (lists("request_headers"), lists("request_trailers"));
    let (response_headers, response_trailers) =
        (lists("response_headers"), lists("response_trailers"));
    let (request_body, response_body) = (bin("request_body"), bin("response_body"));
    let (request_body_len, response_body_len) =
        (u64c("request_body_len"), u64c("response_body_len"));
    let (request_truncated, response_truncated) = (
        flag("request_body_truncated"),
        flag("response_body_truncated"),
    );
    let (reason, response_version) = (s("reason"), s("response_version"));
    let (incomplete, upgraded) = (s("incomplete_reason"), flag("upgraded"));
    out.reserve(b.num_rows());
    for i in 0..b.num_rows() {
        let answered = status.is_valid(i);
        out.push(Exchange {
            exchange_id: exchange_id.value(i),
            flow_id: flow_id.value(i),
            seq_in_flow: seq.value(i),
            stream_id: stream_ids.and_then(|c| c.is_valid(i).then(|| c.value(i))),
            client: client
                .is_valid(i)
                .then(|| client.value(i).parse().ok())
                .flatten(),
            server: server
                .is_valid(i)
                .then(|| server.value(i).parse().ok())
                .flatten(),
            request_ts: request_ts.value(i),
            request_end_ts: request_end_ts.value(i),
            response_ts: opt_ts(response_ts, i),
            response_end_ts: opt_ts(response_end_ts, i),
            method: method.value(i).to_string(),
            target: target.value(i).to_string(),
            http_version: http_version.value(i).to_string(),
            host: opt_s(host, i),
            request_headers: headers_at(request_headers, i),
            request_trailers: headers_at(request_trailers, i),
            request_body: request_body.value(i).to_vec(),
            request_body_len: request_body_len.value(i),
            request_body_truncated: request_truncated.value(i),
            status: answered.then(|| status.value(i)),
            reason: opt_s(reason, i),
            response_version: opt_s(response_version, i),
            interim_statuses: interim_values
                [interim.value_offsets()[i] as usize..interim.value_offsets()[i + 1] as usize]
                .to_vec(),
            response_headers: headers_at(response_headers, i),
            response_trailers: headers_at(response_trailers, i),
            response_body: if answered {
                response_body.value(i).to_vec()
            } else {
                Vec::new()
            },
            response_body_len: if answered {
                response_body_len.value(i)
            } else {
                0
            },
            response_body_truncated: response_truncated.value(i),
            incomplete: incomplete
                .is_valid(i)
                .then(|| IncompleteReason::parse(incomplete.value(i)))
                .flatten(),
            upgraded: upgraded.value(i),
            malformed_detail: detail.and_then(|d| opt_s(d, i)),
            response_event_offsets_ns: super::exchange::offsets_at(event_offsets, i),
            response_arrivals: Vec::new(),
            arrivals_charged: 0,
            bodies_cut: [false; 2],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers of one output: the second is refused while the first
    /// writes (it would truncate the first's temporary file), and the
    /// first still finishes a readable file. The output keeps the mode of
    /// the file it replaces.
    /// A file of a later schema version is refused with what to do; the
    /// same version, and files without one, are read.
    #[test]
    fn a_newer_schema_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.parquet");
        for (version, readable) in [("2", false), ("1", true), ("1.3", true), ("x", true)] {
            let kind = FileKind {
                version: Box::leak(version.to_string().into_boxed_str()),
                ..EXCHANGES
            };
            let mut w =
                ParquetFileWriter::create(&path, exchange_schema(), kind, Default::default())
                    .unwrap();
            w.write_batch(&exchanges_to_batch(&[Exchange::default()]).unwrap())
                .unwrap();
            w.finish(vec![]).unwrap();
            match read_exchanges(&path) {
                Ok((rows, _)) => assert!(readable && rows.len() == 1, "{version}"),
                Err(e) => {
                    assert!(!readable, "{version}: {e}");
                    assert!(e.to_string().contains("newer shadowctl"), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_second_writer_of_the_same_output_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut a = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
        a.write(&[Exchange::default()]).unwrap();
        let Err(e) = ExchangeFileWriter::create(&path, WriterConfig::default()) else {
            panic!("a second writer was allowed");
        };
        assert!(e.to_string().contains("another run"), "{e}");
        a.finish(vec![]).unwrap();
        assert_eq!(read_exchanges(&path).unwrap().0.len(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Once the first is done, the output can be written again.
        ExchangeFileWriter::create(&path, WriterConfig::default())
            .unwrap()
            .finish(vec![])
            .unwrap();
    }

    /// Large bodies get fewer rows per read batch, so no batch's body
    /// column passes the bound (2 GiB in use; 300 KB here), whatever row
    /// groups the batch spans; small rows keep 1,024.
    #[test]
    fn read_batches_of_large_bodies_stay_under_the_offset_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.parquet");
        let config = WriterConfig {
            row_group_rows: 7,
            ..WriterConfig::default()
        };
        let mut w = ExchangeFileWriter::create(&path, config).unwrap();
        let rows: Vec<Exchange> = (0..60u64)
            .map(|i| Exchange {
                exchange_id: i,
                status: Some(200),
                // Random-looking bytes, so sizes are not hidden by encoding.
                response_body: (0..10_000u64)
                    .map(|j| ((i * 7919 + j * 104_729) % 251) as u8)
                    .collect(),
                ..Default::default()
            })
            .collect();
        w.write(&rows).unwrap();
        w.finish(vec![]).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let limit = 300_000;
        let n = batch_rows_within(builder.metadata(), limit);
        assert!((1..60).contains(&n), "{n} rows per batch");
        let mut seen = 0;
        for batch in builder.with_batch_size(n).build().unwrap() {
            let batch = batch.unwrap();
            let body: &BinaryArray = col(&batch, "response_body");
            assert!((body.value_data().len() as u64) < limit);
            seen += batch.num_rows();
        }
        assert_eq!(seen, 60);
        let small = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert_eq!(read_batch_rows(small.metadata()), READ_BATCH);
        // The reader itself reads them all back.
        assert_eq!(read_exchanges(&path).unwrap().0.len(), 60);
    }

    #[test]
    fn round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut ex = Exchange {
            exchange_id: 7,
            method: "POST".into(),
            target: "/a\u{e9}".into(),
            http_version: "HTTP/1.1".into(),
            status: Some(201),
            request_body: b"{\"a\":1}".to_vec(),
            request_body_len: 7,
            interim_statuses: vec![100, 102],
            client: Some("[::1]:5000".parse().unwrap()),
            incomplete: Some(IncompleteReason::ResponseGap),
            ..Default::default()
        };
        ex.request_headers.push(b"Host", b"h\xe9");
        let mut w = ExchangeFileWriter::create(&path, WriterConfig::default()).unwrap();
        w.write(std::slice::from_ref(&ex)).unwrap();
        w.write(&[Exchange::default()]).unwrap();
        assert!(!path.exists(), "final name appears only when complete");
        w.finish(vec![("k".into(), "v".into())]).unwrap();
        let (rows, kv) = read_exchanges(&path).unwrap();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(r.exchange_id, 7);
        assert_eq!(r.target, "/a\u{e9}");
        assert_eq!(r.request_headers, ex.request_headers);
        assert_eq!(r.interim_statuses, vec![100, 102]);
        assert_eq!(r.client, ex.client);
        assert_eq!(r.incomplete, Some(IncompleteReason::ResponseGap));
        assert_eq!(rows[1].status, None);
        assert!(kv.iter().any(|(k, v)| k == "k" && v == "v"));
        assert!(kv.iter().any(|(k, _)| k == META_SCHEMA_VERSION));
    }
}
