//! Compare `shadowctl capture` with tshark on the shared corpus of real captures.
//!
//! For every oracle row (a request tshark dissects) we look for our exchange on
//! the same connection (client, server), aligned in order with the oracle's
//! requests by (method, target), and check host and final status. At least
//! 99% must match, and every mismatch must be explained in
//! `tests/oracle-mismatches.tsv`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use shadowctl::schema::read_exchanges;

mod common;

/// The corpus directory (None: absent and not required, test skipped).
fn shared() -> Option<PathBuf> {
    common::corpus_file("tshark-oracle.tsv").map(|f| f.parent().unwrap().to_path_buf())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    frame: String,
    key: (String, String),
    order: (u64, u64),
    method: String,
    uri: String,
    host: String,
    status: String,
}

/// Escape our latin-1 text the way tshark and the oracle show it.
fn escape_like_tshark(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    out
}

fn oracle(dir: &Path) -> BTreeMap<String, Vec<Row>> {
    let text = std::fs::read_to_string(dir.join("tshark-oracle.tsv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (file, frame, stream, src, dst) = (
        col("file"),
        col("frame"),
        col("tcp_stream"),
        col("src"),
        col("dst"),
    );
    let (method, uri, host, status, idx) = (
        col("method"),
        col("uri"),
        col("host"),
        col("final_response_code"),
        col("req_index_in_stream"),
    );
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        out.entry(f[file].to_string()).or_default().push(Row {
            frame: f[frame].to_string(),
            key: (f[src].to_string(), f[dst].to_string()),
            order: (f[stream].parse().unwrap(), f[idx].parse().unwrap()),
            method: f[method].to_string(),
            uri: f[uri].to_string(),
            host: f[host].to_string(),
            status: f[status].to_string(),
        });
    }
    out
}

fn ours(pcap: &Path, out_dir: &Path) -> Vec<Row> {
    let out = out_dir.join(format!(
        "{}.parquet",
        pcap.file_name().unwrap().to_string_lossy()
    ));
    let run = assert_cmd::Command::cargo_bin("shadowctl")
        .unwrap()
        // tshark shows what was on the wire: compare with it unredacted
        // (query credentials such as `api_key` are redacted by default).
        .args(["capture", "-q", "--keep-secrets", "--read"])
        .arg(pcap)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "capture failed on {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let (rows, _) = read_exchanges(&out).unwrap();
    rows.into_iter()
        .map(|e| Row {
            frame: e.exchange_id.to_string(),
            key: (
                e.client.map(|a| a.to_string()).unwrap_or_default(),
                e.server.map(|a| a.to_string()).unwrap_or_default(),
            ),
            order: (e.flow_id, u64::from(e.seq_in_flow)),
            method: escape_like_tshark(&e.method),
            uri: escape_like_tshark(&e.target),
            host: escape_like_tshark(e.host.as_deref().unwrap_or("")),
            status: e.status.map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect()
}

/// Longest common subsequence on (method, uri): pairs of indices.
fn align(a: &[&Row], b: &[&Row]) -> Vec<(usize, usize)> {
    let same = |x: &Row, y: &Row| x.method == y.method && x.uri == y.uri;
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if same(a[i], b[j]) {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n && j < m {
        if same(a[i], b[j]) {
            out.push((i, j));
            i += 1;
            j += 1;
        } else if t[i + 1][j] >= t[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// (file, frame, kind) of every oracle row we do not reproduce, with detail.
fn mismatches(file: &str, oracle: &[Row], ours: &[Row]) -> Vec<(String, String, String, String)> {
    type Sides<'a> = (Vec<&'a Row>, Vec<&'a Row>);
    let mut groups: BTreeMap<&(String, String), Sides> = BTreeMap::new();
    for r in oracle {
        groups.entry(&r.key).or_default().0.push(r);
    }
    for r in ours {
        groups.entry(&r.key).or_default().1.push(r);
    }
    let mut out = Vec::new();
    for (_, (mut o, mut u)) in groups {
        if o.is_empty() {
            continue;
        }
        o.sort_by_key(|r| r.order);
        u.sort_by_key(|r| r.order);
        let pairs = align(&o, &u);
        let matched: BTreeMap<usize, usize> = pairs.into_iter().collect();
        for (i, row) in o.iter().enumerate() {
            let entry = |kind: &str, detail: String| {
                (
                    file.to_string(),
                    row.frame.clone(),
                    kind.to_string(),
                    detail,
                )
            };
            match matched.get(&i).map(|&j| u[j]) {
                None => out.push(entry(
                    "missing",
                    format!("{} {} {}", row.method, row.uri, row.key.0),
                )),
                Some(m) if m.host != row.host => out.push(entry(
                    "host",
                    format!("tshark {:?} ours {:?}", row.host, m.host),
                )),
                Some(m) if m.status != row.status => out.push(entry(
                    "status",
                    format!("tshark {:?} ours {:?}", row.status, m.status),
                )),
                Some(_) => {}
            }
        }
    }
    out
}

#[test]
fn capture_matches_tshark_on_the_shared_corpus() {
    let Some(dir) = shared() else { return };
    let oracle = oracle(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    pcaps.sort();
    assert!(
        pcaps.len() >= 50,
        "expected the whole corpus, found {}",
        pcaps.len()
    );
    let mut all = Vec::new();
    let mut total = 0;
    for pcap in &pcaps {
        let name = pcap.file_name().unwrap().to_string_lossy().to_string();
        let rows = ours(pcap, tmp.path());
        let expected = oracle.get(&name).cloned().unwrap_or_default();
        total += expected.len();
        all.extend(mismatches(&name, &expected, &rows));
    }
    let report: String = all
        .iter()
        .map(|(f, fr, k, d)| format!("{f}\t{fr}\t{k}\t{d}\n"))
        .collect();
    let report_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oracle-mismatches.actual.tsv");
    std::fs::write(&report_path, &report).unwrap();
    let rate = 1.0 - all.len() as f64 / total as f64;
    println!(
        "oracle rows {total}, mismatches {}, match rate {:.4}",
        all.len(),
        rate
    );
    assert!(total > 1800, "oracle has {total} rows");
    assert!(
        rate >= 0.99,
        "match rate {rate:.4} below 0.99; mismatches in {}",
        report_path.display()
    );
    let explained_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle-mismatches.tsv"),
    )
    .unwrap();
    let explained: BTreeSet<(String, String, String)> = explained_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(
                f.len() >= 4 && !f[3].trim().is_empty(),
                "line without a reason: {l}"
            );
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect();
    let unexplained: Vec<_> = all
        .iter()
        .filter(|(f, fr, k, _)| !explained.contains(&(f.clone(), fr.clone(), k.clone())))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{} mismatches not explained in tests/oracle-mismatches.tsv:\n{}",
        unexplained.len(),
        unexplained
            .iter()
            .map(|(f, fr, k, d)| format!("{f}\t{fr}\t{k}\t{d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
