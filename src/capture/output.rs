//! Where exchanges go: one Parquet file, or a directory of rotated files.
//!
//! Every file is written under a temporary name and renamed when its footer
//! is written, so a file under its final name is always complete and valid.
//! After a crash at most the open (temporary) file is lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::CaptureStats;
use crate::schema::{Exchange, ExchangeFileWriter, SchemaError, WriterConfig, META_CAPTURE_STATS};

/// When a rotated file is closed and the next one begun.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rotation {
    pub secs: Option<u64>,
    pub bytes: Option<u64>,
    pub rows: Option<u64>,
}

/// Rows written between two checks of `--rotate-bytes`.
pub const BYTES_STEP: usize = 32;

/// The output of a capture run.
#[derive(Clone, Debug)]
pub enum OutputSpec {
    /// One file; it exists (possibly empty) when the run ends.
    File(PathBuf),
    /// Files named by start time and sequence in a directory.
    Dir { dir: PathBuf, rotation: Rotation },
}

/// The statistics written into each file's metadata when it is closed:
/// the packet loop's, kept current by it, with the count of values the
/// writer thread redacted (redaction runs there, off the packet loop).
#[derive(Clone, Default)]
pub struct StatsSnapshot {
    stats: Arc<Mutex<CaptureStats>>,
    redacted: Arc<AtomicU64>,
}

impl StatsSnapshot {
    pub fn new(stats: CaptureStats) -> Self {
        Self {
            stats: Arc::new(Mutex::new(stats)),
            redacted: Arc::default(),
        }
    }

    /// The packet loop's figures now.
    pub fn set(&self, stats: &CaptureStats) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats.clone();
    }

    pub fn add_redacted(&self, n: u64) {
        self.redacted.fetch_add(n, Ordering::Relaxed);
    }

    /// Values redacted so far; final once the writer thread has ended.
    pub fn redacted_values(&self) -> u64 {
        self.redacted.load(Ordering::Relaxed)
    }

    fn json(&self) -> String {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        stats.redacted_values = self.redacted_values();
        serde_json::to_string(&stats).unwrap_or_default()
    }
}

struct OpenFile {
    writer: ExchangeFileWriter,
    opened: Instant,
}

/// Files complete on disk and the rows they hold.
pub type Written = (Vec<PathBuf>, u64);

/// What a writer wrote, or its error and what it left complete.
pub type WriteResult = Result<Written, Box<(SchemaError, Written)>>;

/// Writes exchanges according to an [`OutputSpec`].
pub struct OutputWriter {
    spec: OutputSpec,
    config: WriterConfig,
    stats: StatsSnapshot,
    open: Option<OpenFile>,
    seq: u32,
    done: Vec<PathBuf>,
    /// Rows in the `done` files (counted once each is complete).
    done_rows: u64,
}

fn file_name(seq: u32) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("capture-{}-{seq:05}.parquet", utc_stamp(secs))
}

/// `YYYYmmddTHHMMSSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl OutputWriter {
    pub fn new(
        spec: OutputSpec,
        config: WriterConfig,
        stats: StatsSnapshot,
    ) -> Result<Self, SchemaError> {
        let mut w = Self {
            spec,
            config,
            stats,
            open: None,
            seq: 0,
            done: Vec::new(),
            done_rows: 0,
        };
        match &w.spec {
            // A single file exists from the start, even if nothing comes.
            OutputSpec::File(_) => w.open_next()?,
            OutputSpec::Dir { dir, .. } => {
                std::fs::create_dir_all(dir).map_err(|source| SchemaError::Io {
                    path: dir.display().to_string(),
                    source,
                })?
            }
        }
        Ok(w)
    }

    fn open_next(&mut self) -> Result<(), SchemaError> {
        let path = match &self.spec {
            OutputSpec::File(p) => p.clone(),
            OutputSpec::Dir { dir, .. } => {
                let dir = dir.clone();
                self.claim_name(&dir)?
            }
        };
        let writer = ExchangeFileWriter::create(&path, self.config.clone())?;
        self.open = Some(OpenFile {
            writer,
            opened: Instant::now(),
        });
        Ok(())
    }

    /// The next free file name in `dir`, claimed by creating its
    /// `.partial` exclusively: two captures started in the same second into
    /// one directory (one per interface), or a restart within that second,
    /// must never write into, or rename over, each other's files.
    fn claim_name(&mut self, dir: &std::path::Path) -> Result<PathBuf, SchemaError> {
        for _ in 0..10_000 {
            self.seq += 1;
            let path = dir.join(file_name(self.seq));
            let mut partial = path.clone().into_os_string();
            partial.push(".partial");
            if path.exists() {
                continue;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial)
            {
                // Another writer may have renamed its `.partial` to this
                // name between the check above and the create: renaming
                // ours later would replace its finished file.
                Ok(_) if path.exists() => {
                    let _ = std::fs::remove_file(&partial);
                    continue;
                }
                Ok(_) => return Ok(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(SchemaError::Io {
                        path: PathBuf::from(partial).display().to_string(),
                        source,
                    })
                }
            }
        }
        Err(SchemaError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::other("no free file name after 10000 tries"),
        })
    }

    fn rotation(&self) -> Option<Rotation> {
        match self.spec {
            OutputSpec::File(_) => None,
            OutputSpec::Dir { rotation, .. } => Some(rotation),
        }
    }

    pub fn write(&mut self, rows: &[Exchange]) -> Result<(), SchemaError> {
        self.write_redacted(rows, &[])
    }

    /// [`Self::write`] for rows the writer thread redacted, `redacted[i]`
    /// values in `rows[i]` (or none given): the statistics in each file's
    /// footer count the rows written up to it, a batch split between two
    /// files included.
    pub fn write_redacted(
        &mut self,
        mut rows: &[Exchange],
        mut redacted: &[u64],
    ) -> Result<(), SchemaError> {
        debug_assert!(redacted.is_empty() || redacted.len() == rows.len());
        while !rows.is_empty() {
            if self.open.is_none() {
                self.open_next()?;
            }
            let take = self.room(rows.len());
            let file = self.open.as_mut().expect("opened above");
            file.writer.write(&rows[..take])?;
            rows = &rows[take..];
            if let Some((done, rest)) = redacted.split_at_checked(take) {
                self.stats.add_redacted(done.iter().sum());
                redacted = rest;
            }
            if self.is_full() {
                self.close_current()?;
            }
        }
        Ok(())
    }

    /// How many of `n` rows go into the open file before the rotation limits
    /// are checked again: exactly up to `--rotate-rows`, and in pieces of
    /// [`BYTES_STEP`] under `--rotate-bytes`, so a file overshoots its byte
    /// limit by at most one piece.
    fn room(&self, n: usize) -> usize {
        let Some(r) = self.rotation() else { return n };
        let written = self.open.as_ref().map_or(0, |f| f.writer.rows());
        let mut room = n;
        if let Some(limit) = r.rows {
            room = room.min(limit.saturating_sub(written).max(1) as usize);
        }
        if r.bytes.is_some() {
            room = room.min(BYTES_STEP);
        }
        room
    }

    fn is_full(&self) -> bool {
        match (self.rotation(), &self.open) {
            (Some(r), Some(f)) => {
                r.rows.is_some_and(|n| f.writer.rows() >= n)
                    || r.bytes.is_some_and(|n| f.writer.bytes() >= n)
            }
            _ => false,
        }
    }

    /// Rotate by time; call now and then even when no rows come.
    pub fn tick(&mut self) -> Result<(), SchemaError> {
        let due = match (self.rotation(), &self.open) {
            (Some(Rotation { secs: Some(s), .. }), Some(f)) => {
                f.opened.elapsed() >= Duration::from_secs(s)
            }
            _ => false,
        };
        if due {
            self.close_current()?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), SchemaError> {
        if let Some(f) = self.open.take() {
            let stats = self.stats.json();
            let rows = f.writer.rows();
            let path = f
                .writer
                .finish(vec![(META_CAPTURE_STATS.to_string(), stats)])?;
            self.done.push(path);
            self.done_rows += rows;
        }
        Ok(())
    }

    /// Close the open file; returns every complete file written and their
    /// rows, or the error with the files complete before it.
    pub fn finish(mut self) -> WriteResult {
        match self.close_current() {
            Ok(()) => Ok((self.done, self.done_rows)),
            Err(e) => Err(Box::new((e, (self.done, self.done_rows)))),
        }
    }

    /// After a failed write: in a directory of rotated files, close the
    /// open one over the rows it holds if that still works (after an I/O
    /// error partway through a row group its footer is refused, and it is
    /// dropped). A single output file is dropped instead, so what the user
    /// had under its name stays as it was, unless the disk filled up after
    /// some rows: the rows refused then were never started, so the file
    /// closes cleanly over the rows before. An open file without rows is
    /// dropped either way: an empty file would only be noise beside the
    /// others. Returns the files complete on disk and the rows they hold.
    pub fn salvage(mut self, error: &SchemaError) -> Written {
        if self.open.as_ref().is_some_and(|f| f.writer.rows() == 0) {
            self.open = None; // its `.partial` is removed on drop
        }
        let full_with_rows = matches!(error, SchemaError::DiskFull { .. }) && self.open.is_some();
        if matches!(self.spec, OutputSpec::Dir { .. }) || full_with_rows {
            return self.finish().unwrap_or_else(|failed| failed.1);
        }
        (self.done, self.done_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tmpfs of `size` bytes mounted on a fresh directory, unmounted when
    /// dropped. Mounting needs root, as the live capture tests do.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount(size: u64) -> Option<Self> {
            if std::env::var_os("SHADOWCTL_SKIP_LIVE").is_some() {
                eprintln!("SHADOWCTL_SKIP_LIVE set: the full-disk test is skipped");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "mounting a tmpfs needs root (or set SHADOWCTL_SKIP_LIVE=1)"
            );
            Some(Self(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// Bytes zstd cannot shrink.
    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A disk that fills up mid-run: the file open then is closed with
    /// every row written to it so far, footer and all, rotated or single,
    /// and the error says why.
    #[test]
    fn a_full_disk_closes_the_file_with_every_row_it_took() {
        let Some(disk) = SmallDisk::mount(8 << 20) else {
            return;
        };
        for single in [false, true] {
            let out = disk
                .0
                .path()
                .join(if single { "one.parquet" } else { "rot" });
            let spec = if single {
                OutputSpec::File(out.clone())
            } else {
                OutputSpec::Dir {
                    dir: out.clone(),
                    rotation: Rotation {
                        rows: Some(40),
                        ..Default::default()
                    },
                }
            };
            let config = WriterConfig {
                row_group_rows: 16,
                ..Default::default()
            };
            let mut w = OutputWriter::new(spec, config, StatsSnapshot::default()).unwrap();
            // Batches of 25 rows: under rotation by 40 rows a batch is split
            // between files, and a file may close holding part of the
            // batch that then fails.
            let (mut taken, mut error) = (0u64, None);
            for b in 0..40u64 {
                let batch: Vec<Exchange> = (b * 25..(b + 1) * 25)
                    .map(|i| Exchange {
                        exchange_id: i,
                        method: "POST".into(),
                        request_body: noise(64 << 10, i + 1),
                        ..Default::default()
                    })
                    .collect();
                match w.write(&batch) {
                    Ok(()) => taken += 25,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let error = error.expect("an 8 MiB disk fills up");
            assert!(matches!(error, SchemaError::DiskFull { .. }), "{error}");
            let (mut kept, kept_rows) = w.salvage(&error);
            let mut files: Vec<PathBuf> = if single {
                vec![out.clone()]
            } else {
                std::fs::read_dir(&out)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect()
            };
            files.sort();
            let mut ids = Vec::new();
            for f in &files {
                assert!(
                    f.extension().is_some_and(|x| x == "parquet"),
                    "{}",
                    f.display()
                );
                let (rows, _) = crate::schema::read_exchanges(f).unwrap();
                assert!(!rows.is_empty(), "an empty file: {}", f.display());
                ids.extend(rows.iter().map(|r| r.exchange_id));
            }
            assert!(taken > 16, "{taken} rows before the disk filled");
            // Every row of the batches taken, and maybe the head of the
            // refused one (closed in a file before the disk filled).
            let n = ids.len() as u64;
            assert!(n >= taken && n < taken + 25, "{n} rows for {taken} taken");
            assert_eq!(ids, (0..n).collect::<Vec<_>>());
            // What salvage says it kept is what is on disk.
            kept.sort();
            assert_eq!((kept, kept_rows), (files.clone(), n));
            // Room for the other case.
            if single {
                std::fs::remove_file(&out).unwrap();
            } else {
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_795_000_000), "20261118T110640Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn rotates_by_rows_and_every_file_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let spec = OutputSpec::Dir {
            dir: dir.path().to_path_buf(),
            rotation: Rotation {
                rows: Some(3),
                ..Default::default()
            },
        };
        let stats = StatsSnapshot::default();
        let mut w = OutputWriter::new(spec, WriterConfig::default(), stats).unwrap();
        for i in 0..8u64 {
            let ex = Exchange {
                exchange_id: i,
                method: "GET".into(),
                ..Default::default()
            };
            w.write(&[ex]).unwrap();
        }
        let (files, rows) = w.finish().unwrap();
        assert_eq!((files.len(), rows), (3, 8));
        let mut ids = Vec::new();
        for f in &files {
            let (rows, meta) = crate::schema::read_exchanges(f).unwrap();
            assert!(meta.iter().any(|(k, _)| k == META_CAPTURE_STATS));
            ids.extend(rows.iter().map(|r| r.exchange_id));
        }
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "partial")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    /// Two captures into one directory in the same second (one per
    /// interface) write six files between them, none over another.
    #[test]
    fn two_writers_in_one_directory_never_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = || OutputSpec::Dir {
            dir: dir.path().to_path_buf(),
            rotation: Rotation {
                rows: Some(1),
                ..Default::default()
            },
        };
        let mut a = OutputWriter::new(spec(), WriterConfig::default(), Default::default()).unwrap();
        let mut b = OutputWriter::new(spec(), WriterConfig::default(), Default::default()).unwrap();
        let row = |id: u64| Exchange {
            exchange_id: id,
            method: "GET".into(),
            ..Default::default()
        };
        for i in 0..3 {
            a.write(&[row(i)]).unwrap();
            b.write(&[row(100 + i)]).unwrap();
        }
        let (fa, fb) = (a.finish().unwrap().0, b.finish().unwrap().0);
        let mut all: Vec<_> = fa.iter().chain(&fb).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "{fa:?} {fb:?}");
        let mut ids: Vec<u64> = all
            .iter()
            .flat_map(|f| crate::schema::read_exchanges(f).unwrap().0)
            .map(|r| r.exchange_id)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![0, 1, 2, 100, 101, 102]);
    }

    fn rotated(rotation: Rotation, rows: &[Exchange]) -> Vec<Vec<Exchange>> {
        let dir = tempfile::tempdir().unwrap();
        let spec = OutputSpec::Dir {
            dir: dir.path().to_path_buf(),
            rotation,
        };
        let mut w = OutputWriter::new(spec, WriterConfig::default(), Default::default()).unwrap();
        w.write(rows).unwrap();
        let (files, _) = w.finish().unwrap();
        files
            .iter()
            .map(|f| crate::schema::read_exchanges(f).unwrap().0)
            .collect()
    }

    fn many(n: u64, body: usize) -> Vec<Exchange> {
        (0..n)
            .map(|i| Exchange {
                exchange_id: i,
                method: "POST".into(),
                request_body: vec![b'x'; body],
                request_body_len: body as u64,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn one_large_batch_rotates_exactly_at_the_row_limit() {
        let rows = many(1000, 0);
        let files = rotated(
            Rotation {
                rows: Some(300),
                ..Default::default()
            },
            &rows,
        );
        let sizes: Vec<usize> = files.iter().map(Vec::len).collect();
        assert_eq!(sizes, [300, 300, 300, 100]);
        let ids: Vec<u64> = files.iter().flatten().map(|e| e.exchange_id).collect();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn the_byte_limit_is_overshot_by_at_most_one_step() {
        // 1000 bodies of 1 KiB against a 64 KiB limit: every file but the
        // last reaches the limit and holds at most one step more.
        let rows = many(1000, 1024);
        let files = rotated(
            Rotation {
                bytes: Some(64 * 1024),
                ..Default::default()
            },
            &rows,
        );
        assert!(files.len() >= 10, "{} files", files.len());
        for f in &files {
            assert!(f.len() <= 64 + BYTES_STEP, "{} rows in a file", f.len());
        }
        assert_eq!(files.iter().map(Vec::len).sum::<usize>(), 1000);
    }
}
