//! The docs cannot rot. In README.md, docs/*.md and docs/decisions/*.md:
//! every `shadowctl SUBCOMMAND ...` line (code blocks, line continuations
//! joined) uses only flags the subcommand has; every `just RECIPE` exists;
//! every linked file exists; every YAML snippet parses, with CI `script:`
//! and `run:` entries as strings; every TOML snippet loads as a diff config;
//! every SQL snippet runs in DuckDB on real capture and results files; no
//! shell line puts a `$VARIABLE` inside single quotes (it would be sent
//! literally); every `tests/FILE.rs::name` cited names a real test; and
//! every consequence in a decision record cites the test that shows it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
}

fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    files.extend(markdown_in(&root().join("docs")));
    files.extend(markdown_in(&root().join("docs/decisions")));
    files
}

/// A fenced code block: its language tag, text, and the line it starts on.
struct Block {
    lang: String,
    body: String,
    line: usize,
    file: PathBuf,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut open: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            match (t.strip_prefix("```"), open.as_mut()) {
                (Some(_), Some(_)) => out.push(open.take().unwrap()),
                (Some(lang), None) => {
                    open = Some(Block {
                        lang: lang.trim().to_string(),
                        body: String::new(),
                        line: i + 1,
                        file: file.clone(),
                    })
                }
                (None, Some(b)) => {
                    b.body.push_str(line);
                    b.body.push('\n');
                }
                (None, None) => {}
            }
        }
    }
    out
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// Lines inside fenced code blocks, with `\` continuations joined.
fn code_lines(text: &str) -> Vec<String> {
    let (mut out, mut inside, mut pending) = (Vec::new(), false, String::new());
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            continue;
        }
        if !inside {
            continue;
        }
        let t = line.trim_end();
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(t);
            out.push(std::mem::take(&mut pending));
        }
    }
    out
}

fn help(sub: &str) -> String {
    let out = Command::cargo_bin("shadowctl")
        .unwrap()
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "shadowctl {sub} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn documented_commands_use_real_flags() {
    let subs = ["capture", "replay", "diff", "completions", "man"];
    let helps: Vec<(String, String)> = subs.iter().map(|s| (s.to_string(), help(s))).collect();
    let mut checked = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in code_lines(&text) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(i) = words.iter().position(|w| *w == "shadowctl") else {
                continue;
            };
            let Some((_, h)) = words
                .get(i + 1)
                .and_then(|s| helps.iter().find(|(n, _)| n == s))
            else {
                continue;
            };
            for w in &words[i + 2..] {
                if matches!(*w, "|" | "||" | "&&" | ">" | ";") {
                    break;
                }
                if let Some(flag) = w.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    let flag = flag.trim_end_matches([')', '"', '\'', ',']);
                    assert!(
                        h.contains(&format!("--{flag}")),
                        "{}: `--{flag}` is not a flag of `{}`: {line}",
                        file.display(),
                        words[i + 1]
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} documented commands found");
}

#[test]
fn documented_recipes_and_paths_exist() {
    let justfile = std::fs::read_to_string(root().join("justfile")).unwrap();
    let recipes: BTreeSet<String> = justfile
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '\t']) && l.contains(':') && !l.contains(":="))
        .map(|l| l.split([' ', ':']).next().unwrap().to_string())
        .collect();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, part) in text.split("just ").enumerate().skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let quoted = text
                .split("just ")
                .nth(n - 1)
                .is_some_and(|b| b.ends_with('`'));
            if quoted && !name.is_empty() {
                assert!(
                    recipes.contains(&name),
                    "{}: no recipe `just {name}`",
                    file.display()
                );
            }
        }
        // Relative Markdown links to files in this repository.
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap();
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let base = file.parent().unwrap();
            let path = base.join(target.split('#').next().unwrap());
            assert!(
                Path::new(&path).exists(),
                "{}: broken link {target}",
                file.display()
            );
        }
    }
}

/// CI snippets: a `script:`-like entry must be a string or a list of
/// strings; a `": "` in an unquoted item makes YAML read a mapping instead.
/// Returns the shell text of those entries, YAML quoting removed.
fn check_ci_entries(y: &yaml_rust2::Yaml, at: &str) -> Vec<String> {
    use yaml_rust2::Yaml;
    let mut shell = Vec::new();
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let key = k.as_str().unwrap_or("");
                if matches!(key, "script" | "before_script" | "after_script" | "run") {
                    let items: Vec<&Yaml> = match v {
                        Yaml::Array(a) => a.iter().collect(),
                        other => vec![other],
                    };
                    for item in items {
                        let Yaml::String(text) = item else {
                            panic!("{at}: `{key}` holds {item:?}, not a string (an unquoted `: ` inside it?)");
                        };
                        shell.push(text.clone());
                    }
                }
                shell.extend(check_ci_entries(v, at));
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| shell.extend(check_ci_entries(v, at))),
        _ => {}
    }
    shell
}

/// Every YAML snippet parsed: (where, shell text of its CI entries).
fn yaml_shell() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in blocks()
        .iter()
        .filter(|b| matches!(b.lang.as_str(), "yaml" | "yml"))
    {
        let docs = yaml_rust2::YamlLoader::load_from_str(&b.body)
            .unwrap_or_else(|e| panic!("{}: YAML does not parse: {e}", b.at()));
        for d in &docs {
            out.extend(
                check_ci_entries(d, &b.at())
                    .into_iter()
                    .map(|t| (b.at(), t)),
            );
        }
    }
    out
}

#[test]
fn yaml_snippets_parse_and_ci_scripts_are_strings() {
    let snippets = blocks()
        .iter()
        .filter(|b| matches!(b.lang.as_str(), "yaml" | "yml"))
        .count();
    assert!(snippets >= 4, "only {snippets} YAML snippets found");
    let scripts = yaml_shell();
    assert!(
        scripts.len() >= 10,
        "only {} CI script entries",
        scripts.len()
    );
}

#[test]
fn yaml_check_catches_a_header_item_read_as_a_mapping() {
    // The GitLab job as it once was: the item is a mapping, not a command.
    let broken = "job:\n  script:\n    - shadowctl replay x --header Authorization: Bearer token --out r.parquet\n";
    // It parses (as YAML it is valid), so only the entry check can catch it.
    let docs = yaml_rust2::YamlLoader::load_from_str(broken).expect("valid YAML");
    let caught = std::panic::catch_unwind(|| check_ci_entries(&docs[0], "inline")).is_err();
    assert!(caught, "the broken item passed the check");
}

#[test]
fn toml_snippets_load_as_diff_configs() {
    let mut checked = 0;
    for b in blocks().iter().filter(|b| b.lang == "toml") {
        if let Err(e) = shadowctl::diff::config::Config::parse(&b.body) {
            panic!("{}: the config loader refuses this snippet: {e}", b.at());
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} TOML snippets found");
}

/// A line of shell with `'...$NAME...'`: single quotes keep the `$`, so the
/// variable is sent literally. `'$.path'` (JSONPath) and `'$1'` are fine.
fn single_quoted_variable(line: &str) -> Option<String> {
    let mut parts = line.split('\'');
    parts.next();
    let quoted: Vec<&str> = parts.step_by(2).collect();
    quoted.into_iter().find_map(|q| {
        let i = q.find('$')?;
        let next = q[i + 1..].chars().next()?;
        (next.is_ascii_alphabetic() || next == '_' || next == '{').then(|| q.to_string())
    })
}

#[test]
fn shell_never_single_quotes_a_variable() {
    assert!(single_quoted_variable("--header 'Authorization: Bearer $TOKEN'").is_some());
    assert!(single_quoted_variable("--header \"Authorization: Bearer $TOKEN\"").is_none());
    assert!(single_quoted_variable("compare '$.text' and awk '{print $1}'").is_none());
    let mut lines: Vec<(String, String)> = Vec::new();
    for b in blocks() {
        if matches!(b.lang.as_str(), "sh" | "bash" | "shell" | "console" | "") {
            lines.extend(b.body.lines().map(|l| (b.at(), l.to_string())));
        }
    }
    // CI snippets: the commands as the shell gets them, after YAML quoting.
    for (at, script) in yaml_shell() {
        lines.extend(script.lines().map(|l| (at.clone(), l.to_string())));
    }
    for sub in ["capture", "replay", "diff"] {
        lines.extend(
            help(sub)
                .lines()
                .map(|l| (format!("shadowctl {sub} --help"), l.to_string())),
        );
    }
    assert!(lines.len() > 100, "{} lines", lines.len());
    for (at, line) in lines {
        if let Some(q) = single_quoted_variable(&line) {
            panic!(
                "{at}: '{q}' is single-quoted, so the shell sends the variable literally: {line}"
            );
        }
    }
}

/// `tests/FILE.rs::name` references in the docs.
fn cited_tests(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in text.split("tests/").skip(1) {
        let Some((file, rest)) = part.split_once(".rs::") else {
            continue;
        };
        if file.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push((file.to_string(), name));
    }
    out
}

#[test]
fn cited_tests_exist_and_decisions_cite_them() {
    let mut cited = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (test_file, name) in cited_tests(&text) {
            let path = root().join("tests").join(format!("{test_file}.rs"));
            let source = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!("{}: cites missing tests/{test_file}.rs", file.display())
            });
            assert!(
                source.contains(&format!("fn {name}(")),
                "{}: cites tests/{test_file}.rs::{name}, which does not exist",
                file.display()
            );
            cited += 1;
        }
    }
    assert!(cited >= 5, "only {cited} cited tests");
    // Each consequence a decision record states is shown by a test.
    for file in markdown_in(&root().join("docs/decisions")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let section = text
            .split("## Consequences")
            .nth(1)
            .unwrap_or_else(|| panic!("{}: no Consequences section", file.display()));
        let section = section.split("\n## ").next().unwrap();
        for bullet in section.split("\n- ").skip(1) {
            assert!(
                !cited_tests(bullet).is_empty(),
                "{}: a consequence without the test that shows it: - {}",
                file.display(),
                bullet.lines().next().unwrap_or("")
            );
        }
    }
}

/// A plain HTTP/1.1 server on 127.0.0.1 answering every request with a
/// small JSON body, for the SQL snippets' results file.
fn json_server() -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(1000) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn sql_snippets_run_in_duckdb_on_real_files() {
    let Some(python) = common::python_with(&["duckdb"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::cargo_bin("shadowctl")
            .unwrap()
            .current_dir(dir.path())
            .args(args)
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pcap = root().join("testdata/demo.pcap");
    run(&[
        "capture",
        "--read",
        pcap.to_str().unwrap(),
        "--out",
        "exchanges.parquet",
        "-q",
    ]);
    let (p, s) = (json_server(), json_server());
    run(&[
        "replay",
        "exchanges.parquet",
        "--primary",
        &format!("http://127.0.0.1:{p}"),
        "--shadow",
        &format!("v2=http://127.0.0.1:{s}"),
        "--max",
        "--out",
        "results.parquet",
        "-q",
    ]);
    let (mut checked, mut with_rows) = (0, 0);
    for b in blocks().iter().filter(|b| b.lang == "sql") {
        for statement in b.body.split(';').filter(|q| {
            q.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        }) {
            let out = std::process::Command::new(&python)
                .current_dir(dir.path())
                .args([
                    "-c",
                    "import duckdb, sys; rows = duckdb.sql(sys.argv[1]).fetchall(); print(len(rows))",
                    statement,
                ])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{}: DuckDB refuses{statement}\n{stderr}",
                b.at()
            );
            let rows: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            with_rows += usize::from(rows > 0);
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} SQL statements found");
    // A query for 5xx answers may rightly find none in the demo capture;
    // the others must find something.
    assert!(
        with_rows + 1 >= checked,
        "{with_rows} of {checked} statements found rows"
    );
    // Written again by DuckDB, which keeps the columns but not shadowctl's
    // footer metadata, both files are still read (docs/schema.md).
    for (from, to) in [
        ("exchanges.parquet", "duck-exchanges.parquet"),
        ("results.parquet", "duck-results.parquet"),
    ] {
        let out = std::process::Command::new(&python)
            .current_dir(dir.path())
            .args([
                "-c",
                "import duckdb, sys; duckdb.sql(f\"COPY (FROM '{sys.argv[1]}') TO '{sys.argv[2]}' (FORMAT parquet)\")",
                from,
                to,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run(&[
        "replay",
        "duck-exchanges.parquet",
        "--primary",
        "recorded",
        "--max",
        "--out",
        "duck-replayed.parquet",
        "-q",
    ]);
    let exchanges = |results: &str| {
        let json = dir.path().join(format!("{results}.json"));
        let out = Command::cargo_bin("shadowctl")
            .unwrap()
            .current_dir(dir.path())
            .args(["diff", results, "--json"])
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 3)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        r["exchanges"].as_u64().unwrap()
    };
    let whole = exchanges("results.parquet");
    assert!(whole > 0);
    assert_eq!(exchanges("duck-results.parquet"), whole);
}
