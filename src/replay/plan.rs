//! Which captured requests are replayed, in what order, and when.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use crate::endpoint::{endpoint, glob};
use crate::schema::{Exchange, ExchangeReader, SchemaError};

/// A `METHOD /path*` pattern: optional method, then a glob over the path
/// (`*` any run of characters, `?` one character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    method: Option<String>,
    path: String,
}

impl Pattern {
    pub fn parse(s: &str) -> Self {
        match s.trim().split_once(' ') {
            Some((m, p)) => Self {
                method: Some(m.to_ascii_uppercase()),
                path: p.trim().to_string(),
            },
            None if s.starts_with('/') || s.contains('*') => Self {
                method: None,
                path: s.trim().to_string(),
            },
            None => Self {
                method: Some(s.trim().to_ascii_uppercase()),
                path: "*".into(),
            },
        }
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && glob(&self.path, path)
    }
}

/// How requests are chosen.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include: Vec<Pattern>,
    pub exclude: Vec<Pattern>,
    pub sample: Option<f64>,
    pub seed: u64,
    /// `--sample-by header:NAME` (lower case name).
    pub sample_by_header: Option<String>,
    /// `--shard K/N` as (K-1, N).
    pub shard: Option<(u64, u64)>,
    pub limit: Option<u64>,
}

fn hash_of(seed: u64, value: impl Hash) -> u64 {
    // SipHash with fixed keys: the same choice on every run and machine.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(seed, 0x7265_706c_6179);
    value.hash(&mut h);
    h.finish()
}

fn below(hash: u64, fraction: f64) -> bool {
    (hash as f64) < fraction * u64::MAX as f64
}

impl Selection {
    /// Whether `ex` (from capture file number `file`) is replayed.
    pub fn keeps(&self, file: usize, ex: &Exchange) -> bool {
        let path = ex.target.split('?').next().unwrap_or("");
        if !self.include.is_empty() && !self.include.iter().any(|p| p.matches(&ex.method, path)) {
            return false;
        }
        if self.exclude.iter().any(|p| p.matches(&ex.method, path)) {
            return false;
        }
        if let Some((k, n)) = self.shard {
            // Whole connections per shard, so --preserve-order still holds.
            if hash_of(0, (file, ex.flow_id)) % n != k {
                return false;
            }
        }
        if let Some(f) = self.sample {
            let h = match &self.sample_by_header {
                Some(name) => hash_of(self.seed, ex.request_headers.get(name).unwrap_or(b"")),
                None => hash_of(self.seed, (file, ex.exchange_id)),
            };
            if !below(h, f) {
                return false;
            }
        }
        true
    }
}

/// A request to replay, with where it sits in the recorded timeline.
pub struct Planned {
    pub file: usize,
    pub exchange: Exchange,
    pub endpoint: String,
}

/// Streams selected exchanges from capture files in request order.
///
/// Capture files are written in completion order, which is request order
/// within a connection and nearly so across them; a bounded reorder buffer
/// restores the timeline without holding the whole file.
pub struct Plan {
    files: Vec<PathBuf>,
    file: usize,
    reader: Option<ExchangeReader>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    pending: std::collections::HashMap<(usize, u64), Exchange>,
    selection: Selection,
    emitted: u64,
    /// Selected requests in total, when known up front (for progress).
    pub total_hint: u64,
}

/// Exchanges held to restore request order.
const REORDER: usize = 4096;

impl Plan {
    pub fn open(files: Vec<PathBuf>, selection: Selection) -> Result<Self, SchemaError> {
        let mut total = 0;
        for f in &files {
            total += ExchangeReader::open(f)?.rows;
        }
        Ok(Self {
            files,
            file: 0,
            reader: None,
            heap: BinaryHeap::new(),
            pending: Default::default(),
            total_hint: selection.limit.map_or(total, |l| l.min(total)),
            selection,
            emitted: 0,
        })
    }

    fn fill(&mut self) -> Result<(), SchemaError> {
        while self.heap.len() < REORDER {
            if self.reader.is_none() {
                let Some(path) = self.files.get(self.file) else {
                    return Ok(());
                };
                self.reader = Some(ExchangeReader::open(path)?);
            }
            match self.reader.as_mut().and_then(Iterator::next) {
                Some(batch) => {
                    for ex in batch? {
                        if self.selection.keeps(self.file, &ex) {
                            let key = (self.file, ex.exchange_id);
                            self.heap
                                .push(Reverse((ex.request_ts, ex.exchange_id, self.file)));
                            self.pending.insert(key, ex);
                        }
                    }
                }
                None => {
                    self.reader = None;
                    self.file += 1;
                }
            }
        }
        Ok(())
    }

    /// The next request in recorded order, or None at the end.
    pub fn next_planned(&mut self) -> Result<Option<Planned>, SchemaError> {
        if self.selection.limit.is_some_and(|l| self.emitted >= l) {
            return Ok(None);
        }
        self.fill()?;
        let Some(Reverse((_, id, file))) = self.heap.pop() else {
            return Ok(None);
        };
        let exchange = self
            .pending
            .remove(&(file, id))
            .expect("queued with its key");
        self.emitted += 1;
        Ok(Some(Planned {
            file,
            endpoint: endpoint(&exchange.method, &exchange.target),
            exchange,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_patterns() {
        assert!(glob("/api/*", "/api/v1/x"));
        assert!(glob("*", ""));
        assert!(glob("/a?c", "/abc"));
        assert!(!glob("/api/*", "/other"));
        assert!(Pattern::parse("GET /items/*").matches("GET", "/items/7"));
        assert!(!Pattern::parse("GET /items/*").matches("POST", "/items/7"));
        assert!(Pattern::parse("/health*").matches("HEAD", "/healthz"));
        assert!(Pattern::parse("post").matches("POST", "/anything"));
    }

    #[test]
    fn shards_partition_and_sampling_is_deterministic() {
        let ex = |flow: u64, id: u64| Exchange {
            flow_id: flow,
            exchange_id: id,
            method: "GET".into(),
            target: "/".into(),
            ..Default::default()
        };
        let all: Vec<Exchange> = (0..300).map(|i| ex(i / 3, i)).collect();
        let mut seen = 0;
        for k in 0..3 {
            let s = Selection {
                shard: Some((k, 3)),
                ..Default::default()
            };
            let kept: Vec<_> = all.iter().filter(|e| s.keeps(0, e)).collect();
            // Whole flows stay together.
            for e in &kept {
                assert!(all
                    .iter()
                    .filter(|o| o.flow_id == e.flow_id)
                    .all(|o| s.keeps(0, o)));
            }
            seen += kept.len();
        }
        assert_eq!(seen, 300);
        let s = Selection {
            sample: Some(0.3),
            seed: 9,
            ..Default::default()
        };
        let a: Vec<u64> = all
            .iter()
            .filter(|e| s.keeps(0, e))
            .map(|e| e.exchange_id)
            .collect();
        let b: Vec<u64> = all
            .iter()
            .filter(|e| s.keeps(0, e))
            .map(|e| e.exchange_id)
            .collect();
        assert_eq!(a, b);
        assert!((60..=120).contains(&a.len()), "{}", a.len());
    }
}
