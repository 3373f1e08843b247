//! Latency distributions in log-spaced buckets: 2% wide, so a quantile is
//! within 1% of the exact value, and one distribution costs a few KiB
//! however many answers it holds (per endpoint and side).

use crate::report::LatencyMs;

/// Bucket i covers [FLOOR_US * GROWTH^i, FLOOR_US * GROWTH^(i+1)).
const GROWTH: f64 = 1.02;
const FLOOR_US: f64 = 1.0;

#[derive(Clone, Debug, Default)]
pub struct LogHist {
    counts: Vec<u32>,
    total: u64,
    max_us: f64,
}

fn bucket(us: f64) -> usize {
    if us <= FLOOR_US {
        0
    } else {
        ((us / FLOOR_US).ln() / GROWTH.ln()) as usize
    }
}

fn upper_edge(i: usize) -> f64 {
    FLOOR_US * GROWTH.powi(i as i32 + 1)
}

impl LogHist {
    pub fn record_ns(&mut self, ns: i64) {
        let us = ns.max(0) as f64 / 1e3;
        let b = bucket(us).min(2000);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &LogHist) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The q-quantile in milliseconds (the bucket's geometric middle).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max_us / 1e3;
        }
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let mid = upper_edge(i) / GROWTH.sqrt();
                return mid.min(self.max_us) / 1e3;
            }
        }
        self.max_us / 1e3
    }

    /// The value of the answer at `rank` (1-based) as the edges of its
    /// bucket in ms: a lower bound that is at or below it and an upper
    /// bound at or above it (2% apart).
    pub fn rank_bounds_ms(&self, rank: u64) -> Option<(f64, f64)> {
        if self.total == 0 {
            return None;
        }
        let rank = rank.clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let low = if i == 0 { 0.0 } else { upper_edge(i - 1) };
                return Some((
                    low.min(self.max_us) / 1e3,
                    upper_edge(i).min(self.max_us) / 1e3,
                ));
            }
        }
        Some((self.max_us / 1e3, self.max_us / 1e3))
    }

    /// Counts over the chart buckets whose upper edges are `edges_ms`, and
    /// one more past the last edge: folding those into the last bucket drew
    /// 15 s and 45 s answers alike (LLM endpoints reach both).
    pub fn chart(&self, edges_ms: &[f64]) -> Vec<u64> {
        let mut out = vec![0u64; edges_ms.len() + 1];
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let mid_ms = upper_edge(i) / GROWTH.sqrt() / 1e3;
            let j = edges_ms
                .iter()
                .position(|&e| mid_ms <= e)
                .unwrap_or(edges_ms.len());
            if let Some(slot) = out.get_mut(j) {
                *slot += u64::from(c);
            }
        }
        out
    }

    pub fn summary(&self, edges_ms: &[f64]) -> LatencyMs {
        LatencyMs {
            count: self.total,
            p50: self.quantile_ms(0.50),
            p95: self.quantile_ms(0.95),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
            max: self.max_us / 1e3,
            histogram: self.chart(edges_ms),
        }
    }
}

/// Chart bucket edges: 0.05 ms to about 10 s, each 1.5x the last.
pub fn chart_edges_ms() -> Vec<f64> {
    (0..31).map(|k| 0.05 * 1.5f64.powi(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = LogHist::default();
        for ms in 1..=1000 {
            h.record_ns(ms * 1_000_000);
        }
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q);
            assert!((got - exact).abs() / exact < 0.02, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile_ms(1.0), 1000.0);
        let mut m = LogHist::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count(), 2000);
        assert_eq!(h.chart(&chart_edges_ms()).iter().sum::<u64>(), 1000);
        // Past the last edge (about 9.6 s): the overflow bucket, apart
        // from the last edge's.
        let mut slow = LogHist::default();
        slow.record_ns(30_000_000_000);
        slow.record_ns(9_000_000_000);
        let edges = chart_edges_ms();
        let chart = slow.chart(&edges);
        assert_eq!(chart.len(), edges.len() + 1);
        assert_eq!((chart[edges.len()], chart[edges.len() - 1]), (1, 1));
        assert_eq!(LogHist::default().quantile_ms(0.5), 0.0);
        // The 990th answer is 990 ms: its bucket's edges bracket it.
        let (lo, hi) = h.rank_bounds_ms(990).unwrap();
        assert!(lo <= 990.0 && hi >= 990.0 && hi / lo < 1.021, "{lo} {hi}");
        assert_eq!(h.rank_bounds_ms(5000).unwrap().1, 1000.0);
    }
}
