//! The docs cannot rot: every `shadowctl SUBCOMMAND ...` line in README.md and
//! docs/*.md (code blocks, line continuations joined) must use only flags the
//! subcommand has, every `just RECIPE` named must exist, and every file the
//! docs point to in this repository must exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
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
