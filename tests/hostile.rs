//! Issue 16: the three commands used as a hostile user or network would.
//! Each test is named after the case it covers (`i<N>_...` = item N of the
//! issue); each would fail on the code before the fix.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use assert_cmd::Command;
use shadowctl::schema::{
    results_schema, results_to_batch, Exchange, ExchangeFileWriter, HeaderList, ParquetFileWriter,
    ReplayResult, TargetRole, WriterConfig, META_TARGETS, RESULTS,
};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn shadowctl() -> Command {
    let mut c = Command::cargo_bin("shadowctl").unwrap();
    c.timeout(Duration::from_secs(30));
    c
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit 2 with one line on stderr that contains every one of `words`.
fn refused(r: &Run, words: &[&str]) {
    assert_eq!(
        r.code,
        Some(2),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    for w in words {
        assert!(r.stderr.contains(w), "missing {w:?} in: {}", r.stderr);
    }
}

fn capture(inputs: &[&Path], out: &Path, extra: &[&str]) -> Run {
    let mut cmd = shadowctl();
    cmd.arg("capture").arg("-q");
    for i in inputs {
        cmd.arg("--read").arg(i);
    }
    run(cmd.arg("--out").arg(out).args(extra))
}

fn partials(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Read a FIFO to its end on a thread; the bytes arrive on the channel.
fn drain_fifo(path: &Path) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path) {
            let _ = f.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// A small capture file for replay: `n` GETs `gap_ms` apart.
fn capture_file(path: &Path, n: u64, gap_ms: i64) {
    let mut w = ExchangeFileWriter::create(path, WriterConfig::default()).unwrap();
    let rows: Vec<Exchange> = (0..n)
        .map(|i| {
            let mut ex = Exchange {
                exchange_id: i,
                flow_id: i,
                method: "GET".into(),
                target: format!("/t/{i}"),
                http_version: "HTTP/1.1".into(),
                request_ts: 1_700_000_000_000_000_000 + i as i64 * gap_ms * 1_000_000,
                status: Some(200),
                ..Default::default()
            };
            ex.request_end_ts = ex.request_ts;
            ex.request_headers.push(b"Host", b"prod.example");
            ex
        })
        .collect();
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
}

/// Results rows for `n` exchanges: recorded, primary and v2 answer alike.
fn results_rows(n: u64, first_id: u64) -> Vec<ReplayResult> {
    let mut rows = Vec::new();
    for id in first_id..first_id + n {
        for (name, role) in [
            ("recorded", TargetRole::Recorded),
            ("primary", TargetRole::Primary),
            ("v2", TargetRole::Shadow),
        ] {
            let mut headers = HeaderList::new();
            headers.push(b"Content-Type", b"application/json");
            let sent = 1_700_000_000_000_000_000 + id as i64 * 1_000_000;
            rows.push(ReplayResult {
                exchange_id: id,
                flow_id: id,
                target_name: name.into(),
                role: Some(role),
                method: "GET".into(),
                target: "/a".into(),
                endpoint: "GET /a".into(),
                due_ts: sent,
                sent_ts: Some(sent),
                first_byte_ts: Some(sent + 1000),
                done_ts: Some(sent + 2_000_000),
                status: Some(200),
                response_headers: headers,
                response_body: b"{\"ok\":true}".to_vec(),
                response_body_len: 11,
                ..Default::default()
            });
        }
    }
    rows
}

fn results_file(path: &Path, n: u64, first_id: u64) {
    let mut w = ParquetFileWriter::create(path, results_schema(), RESULTS, WriterConfig::default())
        .unwrap();
    w.write_batch(&results_to_batch(&results_rows(n, first_id)).unwrap())
        .unwrap();
    w.finish(vec![(
        META_TARGETS.to_string(),
        "recorded,primary,v2".to_string(),
    )])
    .unwrap();
}

fn diff(files: &[&Path], extra: &[&str]) -> Run {
    run(shadowctl().arg("diff").args(files).args(extra))
}

// ---- 1. A failed capture replaces a good output --------------------------

#[test]
fn i1_failed_capture_leaves_the_previous_output_untouched_and_no_partial() {
    let dir = tempfile::tempdir().unwrap();
    let good = testdata("demo.pcap");
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &std::fs::read(&good).unwrap()[..10]).unwrap();
    let out = dir.path().join("o.parquet");
    assert_eq!(capture(&[&good], &out, &[]).code, Some(0));
    let before = std::fs::read(&out).unwrap();
    // The old failure was a race with the writer thread: try a few times.
    for _ in 0..3 {
        for inputs in [vec![cut.as_path()], vec![good.as_path(), cut.as_path()]] {
            let r = capture(&inputs, &out, &[]);
            refused(&r, &["cut.pcap"]);
            assert_eq!(std::fs::read(&out).unwrap(), before, "output changed");
            assert!(
                partials(dir.path()).is_empty(),
                "{:?}",
                partials(dir.path())
            );
        }
    }
}

// ---- 2. The final rename replaces whatever the output path names ---------

#[test]
fn i2_a_fifo_output_is_written_straight_to_never_renamed_over() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.parquet");
    mkfifo(&fifo);
    let got = drain_fifo(&fifo);
    let r = capture(&[&testdata("demo.pcap")], &fifo, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    let bytes = got.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    assert!(partials(dir.path()).is_empty());

    // diff's reports (and the divergences file) on FIFOs: written, kept FIFOs.
    let results = dir.path().join("r.parquet");
    results_file(&results, 40, 0);
    let (json, jsonl) = (dir.path().join("r.json"), dir.path().join("d.jsonl"));
    mkfifo(&json);
    mkfifo(&jsonl);
    let (got_json, got_jsonl) = (drain_fifo(&json), drain_fifo(&jsonl));
    let r = diff(
        &[&results],
        &[
            "--json",
            json.to_str().unwrap(),
            "--divergences",
            jsonl.to_str().unwrap(),
        ],
    );
    assert!(matches!(r.code, Some(0 | 3)), "{}", r.stderr);
    assert!(got_json
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .starts_with(b"{"));
    got_jsonl.recv_timeout(Duration::from_secs(10)).unwrap();
    for p in [&json, &jsonl] {
        assert!(std::fs::symlink_metadata(p).unwrap().file_type().is_fifo());
    }
    assert!(
        partials(dir.path()).is_empty(),
        "{:?}",
        partials(dir.path())
    );
}

// ---- 3. Output is the input ----------------------------------------------

#[test]
fn i3_an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("a.pcap");
    std::fs::copy(testdata("demo.pcap"), &pcap).unwrap();
    let pcap_bytes = std::fs::read(&pcap).unwrap();
    let r = capture(&[&pcap], &dir.path().join(".").join("a.pcap"), &[]);
    refused(&r, &["--out", "a.pcap", "input"]);
    assert_eq!(std::fs::read(&pcap).unwrap(), pcap_bytes);

    let cap = dir.path().join("c.parquet");
    capture_file(&cap, 3, 1);
    let cap_bytes = std::fs::read(&cap).unwrap();
    let r = run(shadowctl().arg("replay").arg(&cap).args([
        "--primary",
        "recorded",
        "--shadow",
        "http://127.0.0.1:9",
        "--out",
        cap.to_str().unwrap(),
    ]));
    refused(&r, &["--out", "c.parquet", "input"]);
    assert_eq!(std::fs::read(&cap).unwrap(), cap_bytes);

    let results = dir.path().join("r.parquet");
    results_file(&results, 40, 0);
    let res_bytes = std::fs::read(&results).unwrap();
    // Through a hard link too: same inode, another name.
    let link = dir.path().join("hard.parquet");
    std::fs::hard_link(&results, &link).unwrap();
    for flag in ["--json", "--html", "--markdown", "--junit", "--divergences"] {
        for target in [&results, &link] {
            let r = diff(&[&results], &[flag, target.to_str().unwrap()]);
            refused(&r, &[flag, "input"]);
            assert_eq!(std::fs::read(&results).unwrap(), res_bytes, "{flag}");
        }
    }
    // The config file is an input too; two reports on one path are refused.
    let cfg = dir.path().join("shadow.toml");
    std::fs::write(&cfg, "").unwrap();
    let r = diff(
        &[&results],
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--json",
            cfg.to_str().unwrap(),
        ],
    );
    refused(&r, &["--json", "input"]);
    let rep = dir.path().join("rep.txt");
    let r = diff(
        &[&results],
        &[
            "--json",
            rep.to_str().unwrap(),
            "--html",
            rep.to_str().unwrap(),
        ],
    );
    refused(&r, &["--html", "--json"]);
}

// ---- 8. Two shadows with one name -----------------------------------------

fn replay_args(dir: &Path, args: &[&str]) -> Run {
    let cap = dir.join("c.parquet");
    if !cap.exists() {
        capture_file(&cap, 3, 1);
    }
    run(shadowctl()
        .arg("replay")
        .arg(&cap)
        .args(["--out", dir.join("r.parquet").to_str().unwrap()])
        .args(args))
}

#[test]
fn i8_shadow_names_are_unique_and_not_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = ["--primary", "http://127.0.0.1:9"];
    for (shadows, words) in [
        (
            vec!["v2=http://127.0.0.1:9", "v2=http://127.0.0.1:10"],
            vec!["v2", "twice"],
        ),
        (
            vec!["shadow2=http://127.0.0.1:9", "http://127.0.0.1:10"],
            vec!["shadow2", "twice"],
        ),
        (
            vec!["primary=http://127.0.0.1:9"],
            vec!["primary", "reserved"],
        ),
        (
            vec!["recorded=http://127.0.0.1:9"],
            vec!["recorded", "reserved"],
        ),
    ] {
        let mut args = p.to_vec();
        for s in &shadows {
            args.extend(["--shadow", s]);
        }
        refused(&replay_args(d, &args), &words);
        assert!(!d.join("r.parquet").exists());
    }
}

// ---- 9. Header injection ----------------------------------------------------

#[test]
fn i9_header_and_marker_injection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = ["--primary", "recorded", "--shadow", "http://127.0.0.1:9"];
    for (flag, value, word) in [
        (
            "--header",
            "X-A: b\r\n\r\nGET /smuggle HTTP/1.1\r\nHost: x",
            "CR, LF or NUL",
        ),
        ("--header", "X-A: b\nX-B: c", "CR, LF or NUL"),
        ("--header", "Bad Name: v", "not an HTTP token"),
        ("--header", "(x): v", "not an HTTP token"),
        ("--header", ": v", "not an HTTP token"),
        ("--marker", "x-shadow: 1\r\nX-Smuggled: 1", "CR, LF or NUL"),
        ("--marker", "x shadow: 1", "not an HTTP token"),
    ] {
        let mut args = base.to_vec();
        args.extend([flag, value]);
        let r = replay_args(d, &args);
        refused(&r, &[flag, word]);
    }
}

// ---- 11. URLs and zero limits ------------------------------------------------

#[test]
fn i11_bad_urls_and_zero_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (args, word) in [
        (
            vec!["--primary", "http://user:pw@127.0.0.1:9"],
            "user information",
        ),
        (vec!["--primary", "http://127.0.0.1:0"], "port 0"),
        (vec!["--primary", "http://bad host:80"], "not a host name"),
        (
            vec!["--primary", "recorded", "--concurrency", "0"],
            "--concurrency 0",
        ),
        (
            vec![
                "--primary",
                "recorded",
                "--concurrency",
                "9000000000000000000",
            ],
            "at most 100000",
        ),
        (
            vec!["--primary", "recorded", "--timeout", "0s"],
            "--timeout",
        ),
        (
            vec!["--primary", "recorded", "--shadow-timeout", "0ms"],
            "--shadow-timeout",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--shadow", "http://127.0.0.1:9"]);
        refused(&replay_args(d, &args), &[word]);
    }
    let r = replay_args(
        d,
        &[
            "--primary",
            "recorded",
            "--shadow",
            "http://h:9",
            "--timeout",
            "1e30s",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}

// ---- 15. One clear line naming the path --------------------------------------

#[test]
fn i15_directories_fifos_and_broken_blocks_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let demo = testdata("demo.pcap");
    // Output is a directory: said once, and no `.partial` beside it.
    let out_dir = d.join("outdir");
    std::fs::create_dir(&out_dir).unwrap();
    let r = capture(&[&demo], &out_dir, &[]);
    refused(&r, &["outdir", "directory"]);
    assert_eq!(r.stderr.matches("directory").count(), 1, "{}", r.stderr);
    assert!(partials(d).is_empty());
    // A directory or a FIFO as --read.
    let r = capture(&[&out_dir], &d.join("o.parquet"), &[]);
    refused(&r, &["outdir", "directory"]);
    assert!(!r.stderr.contains("No such device"), "{}", r.stderr);
    let fifo = d.join("in.pcap");
    mkfifo(&fifo);
    let r = capture(&[&fifo], &d.join("o.parquet"), &[]);
    refused(&r, &["in.pcap", "FIFO"]);
    // pcapng whose second block claims length 0: no parser dump of bytes.
    let mut ng = Vec::new();
    ng.extend_from_slice(&0x0A0D_0D0Au32.to_le_bytes());
    ng.extend_from_slice(&28u32.to_le_bytes());
    ng.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    ng.extend_from_slice(&1u16.to_le_bytes());
    ng.extend_from_slice(&0u16.to_le_bytes());
    ng.extend_from_slice(&(-1i64).to_le_bytes());
    ng.extend_from_slice(&28u32.to_le_bytes());
    ng.extend_from_slice(&6u32.to_le_bytes());
    ng.extend_from_slice(&0u32.to_le_bytes());
    ng.extend_from_slice(&[0xab; 40]);
    let bad = d.join("zero.pcapng");
    std::fs::write(&bad, ng).unwrap();
    let r = capture(&[&bad], &d.join("o.parquet"), &[]);
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("zero.pcapng") && line.contains("byte 28"),
        "{line}"
    );
    assert!(!line.contains("input") && !line.contains("171"), "{line}");
    assert!(line.len() < 200, "{line}");
}

/// Write `batch` as another tool would: our metadata, any codec.
fn foreign_parquet(
    path: &Path,
    batch: &arrow::array::RecordBatch,
    kind: &str,
    codec: parquet::basic::Compression,
) {
    use parquet::file::metadata::KeyValue;
    let mut meta = vec![
        KeyValue::new("shadowctl.kind".into(), kind.to_string()),
        KeyValue::new("shadowctl.schema_version".into(), "1".to_string()),
    ];
    if kind == "results" {
        meta.push(KeyValue::new(
            META_TARGETS.into(),
            "recorded,primary,v2".to_string(),
        ));
    }
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(codec)
        .set_key_value_metadata(Some(meta))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// `batch` with its `status` column stored as strings.
fn status_as_text(batch: &arrow::array::RecordBatch) -> arrow::array::RecordBatch {
    use arrow::array::{Array, ArrayRef, StringArray, UInt16Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let i = batch.schema().index_of("status").unwrap();
    let status = batch
        .column(i)
        .as_any()
        .downcast_ref::<UInt16Array>()
        .unwrap();
    let text: ArrayRef =
        Arc::new(StringArray::from_iter((0..status.len()).map(|r| {
            status.is_valid(r).then(|| status.value(r).to_string())
        })));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = Field::new("status", DataType::Utf8, true);
    let mut cols = batch.columns().to_vec();
    cols[i] = text;
    arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

// ---- 6. Wrong column types -------------------------------------------------

#[test]
fn i6_a_column_of_the_wrong_type_is_named_up_front_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows: Vec<Exchange> = (0..5)
        .map(|i| Exchange {
            exchange_id: i,
            method: "GET".into(),
            target: "/".into(),
            status: Some(200),
            ..Default::default()
        })
        .collect();
    let cap = d.join("c.parquet");
    let batch = shadowctl::schema::exchanges_to_batch(&rows).unwrap();
    foreign_parquet(
        &cap,
        &status_as_text(&batch),
        "exchanges",
        parquet::basic::Compression::UNCOMPRESSED,
    );
    let out = d.join("r.parquet");
    let r = run(shadowctl().arg("replay").arg(&cap).args([
        "--primary",
        "recorded",
        "--shadow",
        "http://127.0.0.1:9",
        "--out",
        out.to_str().unwrap(),
    ]));
    refused(&r, &["c.parquet", "status", "UInt16", "Utf8"]);
    assert!(!r.stderr.contains("panicked"));
    assert!(!out.exists());

    let res = d.join("res.parquet");
    let batch = results_to_batch(&results_rows(250, 0)).unwrap();
    foreign_parquet(
        &res,
        &status_as_text(&batch),
        "results",
        parquet::basic::Compression::UNCOMPRESSED,
    );
    let r = diff(&[&res], &[]);
    refused(&r, &["res.parquet", "status", "UInt16", "Utf8"]);
    assert!(!r.stderr.contains("panicked") && !r.stderr.contains("no rows"));
}

// ---- 16. Parquet from other tools -------------------------------------------

#[test]
fn i16_results_written_with_any_standard_codec_are_read() {
    use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
    let dir = tempfile::tempdir().unwrap();
    let batch = results_to_batch(&results_rows(40, 0)).unwrap();
    for (name, codec) in [
        ("snappy", Compression::SNAPPY),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("lz4", Compression::LZ4_RAW),
        ("lz4-hadoop", Compression::LZ4),
        ("brotli", Compression::BROTLI(BrotliLevel::default())),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        foreign_parquet(&path, &batch, "results", codec);
        let json = dir.path().join(format!("{name}.json"));
        let r = diff(&[&path], &["--json", json.to_str().unwrap()]);
        assert!(matches!(r.code, Some(0 | 3)), "{name}: {}", r.stderr);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["exchanges"], 40, "{name}: {report}");
    }
}

/// Files re-saved by tools that keep columns but drop Parquet key-value
/// metadata (pandas, DuckDB, Spark): a capture and a results file written
/// again without it are still read, told apart by their columns.
#[test]
fn i16_files_without_shadowctl_metadata_are_known_by_their_columns() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let strip = |from: &Path, to: &Path| {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(from).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let file = std::fs::File::create(to).unwrap();
        let mut w = None;
        for batch in reader {
            let batch = batch.unwrap();
            let w = w.get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    file.try_clone().unwrap(),
                    batch.schema(),
                    None,
                )
                .unwrap()
            });
            w.write(&batch).unwrap();
        }
        w.unwrap().close().unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(to).unwrap())
            .unwrap()
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| kv.iter().any(|k| k.key.starts_with("shadowctl.")));
        assert_ne!(meta, Some(true), "the copy has no shadowctl metadata");
    };
    let cap = dir.path().join("cap.parquet");
    capture_file(&cap, 25, 1);
    let plain_cap = dir.path().join("plain-cap.parquet");
    strip(&cap, &plain_cap);
    let out = dir.path().join("r.parquet");
    let r = run(shadowctl()
        .arg("replay")
        .arg(&plain_cap)
        .args(["--primary", "recorded", "--max", "--out"])
        .arg(&out));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(shadowctl::schema::read_results(&out).unwrap().len(), 25);

    let res = dir.path().join("res.parquet");
    results_file(&res, 40, 0);
    let plain_res = dir.path().join("plain-res.parquet");
    strip(&res, &plain_res);
    let json = dir.path().join("r.json");
    let r = diff(&[&plain_res], &["--json", json.to_str().unwrap()]);
    assert!(matches!(r.code, Some(0 | 3)), "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["exchanges"], 40, "{report}");

    // A Parquet file of something else is still refused, by name.
    let other = dir.path().join("other.parquet");
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "x",
        Arc::new(arrow::array::Int32Array::from(vec![1, 2])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&other).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let r = diff(&[&other], &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("other.parquet"), "{}", r.stderr);
}

// ---- 14. A record with an impossible length mid-file ------------------------

#[test]
fn i14_a_corrupt_record_mid_pcap_is_named_and_reading_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read(testdata("demo.pcap")).unwrap();
    assert_eq!(&demo[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    // Record boundaries.
    let mut starts = Vec::new();
    let mut at = 24;
    while at + 16 <= demo.len() {
        starts.push(at);
        let caplen = u32::from_le_bytes(demo[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + caplen;
    }
    let cut = starts[starts.len() / 2];
    let mut bad = demo[..cut].to_vec();
    bad.extend_from_slice(&demo[cut..cut + 8]); // a real timestamp
    bad.extend_from_slice(&0x7fff_fff0u32.to_le_bytes()); // caplen: 2 GB
    bad.extend_from_slice(&0x7fff_fff0u32.to_le_bytes());
    bad.extend_from_slice(&[0xee; 37]);
    bad.extend_from_slice(&demo[cut..]);
    let input = dir.path().join("corrupt.pcap");
    std::fs::write(&input, &bad).unwrap();
    let out = dir.path().join("o.parquet");
    let mut cmd = shadowctl();
    let r = run(cmd
        .arg("capture")
        .arg("--read")
        .arg(&input)
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("corrupt record at byte {cut}"))
            && r.stderr
                .contains(&format!("next valid record at byte {}", cut + 16 + 37)),
        "{}",
        r.stderr
    );
    // Nothing was lost: the packets after the damage are all read.
    assert!(
        r.stdout
            .contains(&format!("packets            {}", starts.len())),
        "{}",
        r.stdout
    );
    let rows = shadowctl::schema::read_exchanges(&out).unwrap().0;
    assert_eq!(rows.len(), 45);
}

/// Item 14 for pcapng: a block with an impossible length is named and
/// reading resumes at the next block whose framing vouches for itself.
#[test]
fn i14_a_corrupt_block_mid_pcapng_is_named_and_reading_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(testdata("small.pcapng")).unwrap();
    assert_eq!(
        &good[8..12],
        &0x1a2b_3c4du32.to_le_bytes(),
        "little-endian section"
    );
    let word = |at: usize| u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
    let mut packets = Vec::new();
    let mut at = 0;
    while at + 12 <= good.len() {
        if word(at) == 6 {
            packets.push(at);
        }
        at += word(at + 4);
    }
    let cut = packets[packets.len() / 2];
    let mut bad = good[..cut].to_vec();
    bad.extend_from_slice(&6u32.to_le_bytes()); // an enhanced packet block...
    bad.extend_from_slice(&0x7fff_fff0u32.to_le_bytes()); // ...of 2 GB
    bad.extend_from_slice(&[0xee; 8]);
    bad.extend_from_slice(&good[cut..]);
    let input = dir.path().join("corrupt.pcapng");
    std::fs::write(&input, &bad).unwrap();
    let out = dir.path().join("o.parquet");
    let r = run(shadowctl()
        .arg("capture")
        .arg("--read")
        .arg(&input)
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("at byte {cut}"))
            && r.stderr
                .contains(&format!("next valid block at byte {}", cut + 16)),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .contains(&format!("packets            {}", packets.len())),
        "{}",
        r.stdout
    );
    let whole = dir.path().join("whole.parquet");
    let w = capture(&[&testdata("small.pcapng")], &whole, &[]);
    assert_eq!(w.code, Some(0), "{}", w.stderr);
    let rows = |p: &Path| shadowctl::schema::read_exchanges(p).unwrap().0.len();
    assert_eq!(rows(&out), rows(&whole), "nothing lost");
}

// ---- 10. A gate that cannot pass ---------------------------------------------

#[test]
fn i10_a_negative_psi_gate_is_refused_like_every_other_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("r.parquet");
    results_file(&res, 40, 0);
    let cfg = dir.path().join("shadow.toml");
    for bad in [
        "max_psi = -1",
        "p99_latency_slack_ms = -1",
        "max_p99_latency_ratio = nan",
    ] {
        std::fs::write(&cfg, format!("[gate]\n{bad}\n")).unwrap();
        let r = diff(&[&res], &["--config", cfg.to_str().unwrap()]);
        refused(&r, &["shadow.toml", bad.split(' ').next().unwrap()]);
    }
}

// ---- 7. The same exchanges given twice ----------------------------------------

#[test]
fn i7_the_same_results_twice_are_refused_naming_both_files_and_shards_still_merge() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, copy) = (
        d.join("a.parquet"),
        d.join("b.parquet"),
        d.join("copy.parquet"),
    );
    results_file(&a, 150, 0);
    results_file(&b, 150, 150);
    std::fs::copy(&a, &copy).unwrap();
    let r = diff(&[&a, &a], &[]);
    refused(&r, &["a.parquet", "twice"]);
    let r = diff(&[&a, &b, &copy], &[]);
    refused(&r, &["a.parquet", "copy.parquet", "twice"]);
    // Two shards of one run: disjoint exchanges, merged.
    let json = d.join("r.json");
    let r = diff(&[&a, &b], &["--json", json.to_str().unwrap()]);
    assert!(matches!(r.code, Some(0 | 3)), "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["exchanges"], 300);
}

// ---- 5. Signals while replay waits for the next due request ------------------

/// An HTTP/1.1 server on 127.0.0.1 answering every request with 200;
/// counts the requests.
fn answering_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = Arc::clone(&count);
    std::thread::spawn(move || {
        for conn in listener.incoming().take(100) {
            let Ok(conn) = conn else { continue };
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn);
                for _ in 0..1000 {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = r
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            });
        }
    });
    (url, count)
}

#[test]
fn i5_sigint_and_sigterm_stop_a_replay_waiting_for_a_far_request() {
    for (sig, gap_ms, speed) in [(libc::SIGINT, 3_600_000, "1"), (libc::SIGTERM, 1, "1e-9")] {
        let dir = tempfile::tempdir().unwrap();
        let cap = dir.path().join("c.parquet");
        capture_file(&cap, 3, gap_ms);
        let out = dir.path().join("r.parquet");
        let (url, count) = answering_server();
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("shadowctl"))
            .arg("replay")
            .arg(&cap)
            .args(["--primary", "recorded", "--shadow", &url, "--speed", speed])
            .args([
                "--drain-timeout",
                "1s",
                "-q",
                "--out",
                out.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The first request goes at once; the second is due far later.
        let t = Instant::now();
        while count.load(std::sync::atomic::Ordering::SeqCst) < 1
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("signal {sig} ignored: still running after 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(130), "signal {sig}");
        // A valid results file with what was replayed: exchange 0, both rows.
        let rows = shadowctl::schema::read_results(&out).unwrap();
        assert_eq!(
            rows.iter().filter(|r| r.exchange_id == 0).count(),
            2,
            "{rows:?}"
        );
        assert!(rows.iter().all(|r| r.exchange_id == 0));
    }
}

/// A pcap (raw IPv4 link type) of TCP segments: (client port, seq, ack,
/// flags, payload), between 10.9.0.1:port and 10.9.0.2:80.
fn raw_pcap(path: &Path, segments: &[(u16, u32, u32, u8, Vec<u8>)]) {
    // magic, version 2.4, zone, sigfigs, snaplen, link type 101 (raw IP)
    let header: [u8; 24] = {
        let mut h = [0u8; 24];
        h[..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        h[16..20].copy_from_slice(&65535u32.to_le_bytes());
        h[20..24].copy_from_slice(&101u32.to_le_bytes());
        h
    };
    let mut out = header.to_vec();
    for (i, (port, seq, ack, flags, payload)) in segments.iter().enumerate() {
        let to_server = flags & 0x80 == 0;
        let (src, dst, sport, dport) = if to_server {
            ([10, 9, 0, 1], [10, 9, 0, 2], *port, 80)
        } else {
            ([10, 9, 0, 2], [10, 9, 0, 1], 80, *port)
        };
        let total = 20 + 20 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&seq.to_be_bytes());
        ip.extend_from_slice(&ack.to_be_bytes());
        ip.extend_from_slice(&[0x50, flags & 0x3f, 0xff, 0xff, 0, 0, 0, 0]);
        ip.extend_from_slice(payload);
        let ts = i as u32;
        for v in [
            1_700_000_000 + ts / 1000,
            (ts % 1000) * 1000,
            ip.len() as u32,
            ip.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&ip);
    }
    std::fs::write(path, out).unwrap();
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
/// Marks a segment from the server in `raw_pcap`.
const FROM_SERVER: u8 = 0x80;

/// Item 4: thousands of connections each sending only the head of a POST
/// that announces 16 MB. Memory follows the bytes that arrive, so the
/// capture runs under a 1 GiB address-space limit (reserving from
/// Content-Length needed gigabytes and aborted on a failed allocation).
#[test]
fn i4_memory_follows_the_bytes_that_arrive_not_content_length() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("heads.pcap");
    let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 16000000\r\n\r\n".to_vec();
    let mut segs = Vec::new();
    for c in 0..5000u16 {
        let port = 10_000 + c;
        segs.push((port, 1000, 0, SYN, vec![]));
        segs.push((port, 5000, 1001, SYN | ACK | FROM_SERVER, vec![]));
        segs.push((port, 1001, 5001, PSH_ACK, head.clone()));
    }
    raw_pcap(&pcap, &segs);
    let out = dir.path().join("o.parquet");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("shadowctl"));
    cmd.args(["capture", "-q", "--max-buffer-bytes", "64MiB", "--read"])
        .arg(&pcap)
        .arg("--out")
        .arg(&out);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let done = cmd.output().unwrap();
    assert!(
        done.status.success(),
        "{:?}: {}",
        done.status,
        String::from_utf8_lossy(&done.stderr)
    );
    let rows = read_exchanges(&out);
    assert_eq!(rows.len(), 5000);
    assert!(rows
        .iter()
        .all(|e| e.request_body.is_empty() && e.target == "/upload"));
}

fn read_exchanges(path: &Path) -> Vec<Exchange> {
    shadowctl::schema::read_exchanges(path).unwrap().0
}

/// Items 12 and 13: framing errors are flagged rows that keep their bytes;
/// a head over the size limit is a flagged row, not a gap or "non-HTTP".
#[test]
fn i12_i13_framing_errors_and_oversize_heads_are_flagged_rows() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("bad.pcap");
    let mut big = b"GET /big HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let requests: Vec<Vec<u8>> = vec![
        b"POST /neg HTTP/1.1\r\nContent-Length: -1\r\n\r\nabc".to_vec(),
        b"POST /list HTTP/1.1\r\nContent-Length: 3, 10\r\n\r\nabcdefghij".to_vec(),
        b"POST /two HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
        big,
    ];
    let mut segs = Vec::new();
    for (c, req) in requests.iter().enumerate() {
        let port = 20_000 + c as u16;
        segs.push((port, 1000, 0, SYN, vec![]));
        segs.push((port, 5000, 1001, SYN | ACK | FROM_SERVER, vec![]));
        // Real segments: at most 1400 bytes each.
        for (i, piece) in req.chunks(1400).enumerate() {
            let seq = 1001 + (i * 1400) as u32;
            segs.push((port, seq, 5001, PSH_ACK, piece.to_vec()));
        }
        let end = 1001 + req.len() as u32;
        let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec();
        segs.push((port, 5001, end, PSH_ACK | FROM_SERVER, answer));
    }
    raw_pcap(&pcap, &segs);
    let out = dir.path().join("o.parquet");
    let stats = dir.path().join("s.json");
    let r = capture(&[&pcap], &out, &["--stats-json", stats.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let rows = read_exchanges(&out);
    let by = |t: &str| {
        rows.iter()
            .find(|e| e.target == t)
            .unwrap_or_else(|| panic!("no row {t}"))
    };
    for t in ["/neg", "/list", "/two", "/big"] {
        let e = by(t);
        assert_eq!(
            e.incomplete.map(|i| i.as_str()),
            Some("request_malformed"),
            "{t}: {:?}",
            e.malformed_detail
        );
        assert_eq!(e.status, Some(400), "{t} still pairs with its answer");
    }
    assert_eq!(by("/list").request_body, b"abcdefghij", "no byte lost");
    assert_eq!(by("/two").request_body, b"abcd");
    assert!(by("/big")
        .malformed_detail
        .as_deref()
        .unwrap()
        .contains("larger than 256 KiB"));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(s["gaps"], 0, "{s}");
    assert_eq!(s["non_http_connections"], 0, "{s}");
    assert_eq!(s["oversize_heads"], 1, "{s}");
    assert_eq!(s["malformed_exchanges"], 4, "{s}");
}

/// Item 1 for replay: a run that fails mid-way (a capture file whose later
/// row groups are damaged) leaves the previous results file untouched and
/// no `.partial` behind.
#[test]
fn i1_a_replay_that_fails_mid_run_keeps_the_previous_results() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("c.parquet");
    let config = WriterConfig {
        row_group_rows: 100,
        ..Default::default()
    };
    let mut w = ExchangeFileWriter::create(&cap, config).unwrap();
    let rows: Vec<Exchange> = (0..400u64)
        .map(|i| {
            let mut ex = Exchange {
                exchange_id: i,
                flow_id: i,
                method: "POST".into(),
                target: format!("/t/{i}"),
                http_version: "HTTP/1.1".into(),
                request_ts: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
                request_body: format!("{i:>64}").into_bytes(),
                request_body_len: 64,
                status: Some(200),
                ..Default::default()
            };
            ex.request_end_ts = ex.request_ts;
            ex
        })
        .collect();
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
    // Damage every column chunk of the last row group; the footer stays.
    let mut bytes = std::fs::read(&cap).unwrap();
    let reader = SerializedFileReader::new(std::fs::File::open(&cap).unwrap()).unwrap();
    let meta = reader.metadata();
    assert!(
        meta.num_row_groups() >= 3,
        "{} row groups",
        meta.num_row_groups()
    );
    let last = meta.row_group(meta.num_row_groups() - 1);
    for col in last.columns() {
        let (start, len) = col.byte_range();
        let (start, len) = (start as usize, len as usize);
        bytes[start..start + len].iter_mut().for_each(|b| *b = 0xa5);
    }
    std::fs::write(&cap, &bytes).unwrap();
    let out = dir.path().join("r.parquet");
    results_file(&out, 40, 0);
    let before = std::fs::read(&out).unwrap();
    let (url, _) = answering_server();
    let r = run(shadowctl()
        .arg("replay")
        .arg(&cap)
        .args(["--primary", &url, "--max", "--out"])
        .arg(&out));
    assert_ne!(r.code, Some(0), "the damage must be reported: {}", r.stderr);
    assert!(!r.stderr.trim().is_empty());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "previous results replaced"
    );
    assert!(
        partials(dir.path()).is_empty(),
        "{:?}",
        partials(dir.path())
    );
}

/// A capture whose output disk fills mid-run: exit 2 with the disk named,
/// the file closed over the rows written before (footer and all), and
/// `--stats-json` (on another disk) written anyway, saying how many rows
/// that file holds and why the capture stopped. Mounting a small tmpfs
/// needs root, as the live capture tests do.
#[test]
fn a_full_disk_ends_a_capture_with_its_rows_and_figures_kept() {
    let Some(disk) = common::Tmpfs::mount("24m") else {
        return;
    };
    // 700 exchanges, each answered with 60,000 bytes zstd cannot shrink:
    // 42 MB of rows for a 24 MiB disk (row groups of 16 MiB).
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("big.pcap");
    let request = b"GET /blob HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
    let mut segs = Vec::new();
    let mut x = 1u64;
    for c in 0..700u16 {
        let port = 10_000 + c;
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n".to_vec();
        answer.extend((0..60_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        let req_end = 1001 + request.len() as u32;
        segs.push((port, 1000, 0, SYN, vec![]));
        segs.push((port, 5000, 1001, SYN | ACK | FROM_SERVER, vec![]));
        segs.push((port, 1001, 5001, PSH_ACK, request.clone()));
        segs.push((port, 5001, req_end, PSH_ACK | FROM_SERVER, answer));
    }
    raw_pcap(&pcap, &segs);
    let out = disk.path().join("o.parquet");
    let stats = dir.path().join("stats.json");
    let r = capture(&[&pcap], &out, &["--stats-json", stats.to_str().unwrap()]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("nearly full"), "{}", r.stderr);
    let rows = read_exchanges(&out);
    assert!(
        !rows.is_empty() && rows.len() < 700,
        "{} rows kept",
        rows.len()
    );
    assert!(rows.iter().all(|e| e.response_body.len() == 60_000));
    let said = format!("capture failed after writing {} rows", rows.len());
    assert!(r.stderr.contains(&said), "{}", r.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(json["output_rows"], rows.len(), "{json}");
    assert!(
        json["exchanges"].as_u64().unwrap() >= rows.len() as u64,
        "{json}"
    );
    assert!(
        json["error"].as_str().unwrap().contains("nearly full"),
        "{json}"
    );
    // The file kept says what it was redacted by, for replay.
    let (_, meta) = shadowctl::schema::read_exchanges(&out).unwrap();
    let (_, kept) = meta
        .iter()
        .find(|(k, _)| k == shadowctl::schema::META_CAPTURE_STATS)
        .unwrap();
    let kept: serde_json::Value = serde_json::from_str(kept).unwrap();
    let headers = kept["redaction"]["headers"].as_array().unwrap();
    assert!(headers.contains(&"authorization".into()), "{kept}");
}
