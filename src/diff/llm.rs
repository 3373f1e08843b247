//! LLM figures per endpoint and shadow: time to first token, gaps between
//! tokens, decode speed, output tokens, stop reasons; and the similarity of
//! text to the primary's, beside the primary's similarity to itself.

use std::collections::HashMap;

use super::latency::LogHist;
use super::stats::{hodges_lehmann, quantile_sorted};
use crate::llm::Answer;
use crate::report::{Dist, LatencyMs, LlmStats, PerSide, Similarity};
use crate::schema::ReplayResult;

/// A log-bucketed histogram of positive values (2% wide buckets): the
/// latency histogram fed values as if they were milliseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct ValueHist {
    hist: LogHist,
    sum: f64,
}

impl ValueHist {
    pub fn record(&mut self, x: f64) {
        if x.is_finite() && x >= 0.0 {
            self.hist.record_ns((x * 1e6) as i64);
            self.sum += x;
        }
    }

    pub fn merge(&mut self, o: &ValueHist) {
        self.hist.merge(&o.hist);
        self.sum += o.sum;
    }

    pub fn count(&self) -> u64 {
        self.hist.count()
    }

    pub fn median(&self) -> f64 {
        self.hist.quantile_ms(0.5)
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count().max(1) as f64
    }

    pub fn dist(&self, edges: &[f64]) -> Dist {
        Dist {
            count: self.count(),
            mean: self.mean(),
            p5: self.hist.quantile_ms(0.05),
            p50: self.hist.quantile_ms(0.5),
            p95: self.hist.quantile_ms(0.95),
            p99: self.hist.quantile_ms(0.99),
            histogram: if edges.is_empty() {
                Vec::new()
            } else {
                self.hist.chart(edges)
            },
        }
    }
}

/// Chart edges for tokens per second: 1 to about 10,000, each 1.5x.
pub fn tokens_per_second_edges() -> Vec<f64> {
    (0..24).map(|k| 1.5f64.powi(k)).collect()
}

/// Chart edges for similarity: ten buckets of 0.1.
pub fn similarity_edges() -> Vec<f64> {
    (1..=10).map(|k| k as f64 / 10.0).collect()
}

/// Distinct stop reasons kept per side; the rest count under [`OTHER_FINISH`].
const MAX_FINISH_REASONS: usize = 32;
/// A longer stop reason is not a word an API chose but text it put there.
const MAX_FINISH_CHARS: usize = 64;
const OTHER_FINISH: &str = "(other)";

/// One side's LLM figures.
#[derive(Clone, Debug, Default)]
pub(crate) struct SideTally {
    answers: u64,
    streamed: u64,
    pub ttft: LogHist,
    gaps: LogHist,
    tps: ValueHist,
    tokens: ValueHist,
    finish: HashMap<String, u64>,
}

impl SideTally {
    /// Fold one answer (`r` is its row: event offsets and send time).
    pub fn add(&mut self, r: &ReplayResult, a: &Answer) {
        self.answers += 1;
        if let Some(f) = &a.finish_reason {
            // Bounded: an API that puts ids or messages in its stop reason
            // must not grow memory or the report with every answer.
            let kept = self.finish.contains_key(f.as_str())
                || (self.finish.len() < MAX_FINISH_REASONS && f.len() <= MAX_FINISH_CHARS);
            let key = if kept {
                f.clone()
            } else {
                OTHER_FINISH.to_string()
            };
            *self.finish.entry(key).or_default() += 1;
        }
        if let Some(n) = a.output_token_count() {
            self.tokens.record(n as f64);
        }
        let Some(times) = content_times(r, a) else {
            return;
        };
        self.streamed += 1;
        self.ttft.record_ns(times[0]);
        for w in times.windows(2) {
            self.gaps.record_ns(w[1] - w[0]);
        }
        let span = times[times.len() - 1] - times[0];
        if let Some(n) = a.timed_token_count().filter(|&n| n >= 2 && span > 0) {
            self.tps.record((n - 1) as f64 / (span as f64 / 1e9));
        }
    }

    fn merge(&mut self, o: &SideTally) {
        self.answers += o.answers;
        self.streamed += o.streamed;
        self.ttft.merge(&o.ttft);
        self.gaps.merge(&o.gaps);
        self.tps.merge(&o.tps);
        self.tokens.merge(&o.tokens);
        for (k, v) in &o.finish {
            *self.finish.entry(k.clone()).or_default() += v;
        }
    }
}

/// When each content event arrived, in ns after the request was sent.
fn content_times(r: &ReplayResult, a: &Answer) -> Option<Vec<i64>> {
    let offsets = r.event_offsets_ns.as_ref()?;
    let times: Vec<i64> = a
        .content_events
        .iter()
        .filter_map(|&i| offsets.get(i).copied())
        .collect();
    (!times.is_empty()).then_some(times)
}

/// Both sides of one (endpoint, shadow).
#[derive(Clone, Debug, Default)]
pub(crate) struct LlmTally {
    pub primary: SideTally,
    pub shadow: SideTally,
}

impl LlmTally {
    pub fn merge(&mut self, o: &LlmTally) {
        self.primary.merge(&o.primary);
        self.shadow.merge(&o.shadow);
    }

    pub fn stats(&self, latency_edges: &[f64]) -> Option<LlmStats> {
        let (p, s) = (&self.primary, &self.shadow);
        if p.answers + s.answers == 0 {
            return None;
        }
        let lat = |h: &LogHist| -> LatencyMs { h.summary(latency_edges) };
        let tps_edges = tokens_per_second_edges();
        let ratio = |a: f64, b: f64, n: bool| (n && b > 0.0).then(|| a / b);
        let sorted = |m: &HashMap<String, u64>| m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let ttft = PerSide {
            primary: lat(&p.ttft),
            shadow: lat(&s.ttft),
        };
        Some(LlmStats {
            answers: PerSide {
                primary: p.answers,
                shadow: s.answers,
            },
            streamed: PerSide {
                primary: p.streamed,
                shadow: s.streamed,
            },
            ttft_p99_ratio: ratio(
                ttft.shadow.p99,
                ttft.primary.p99,
                p.ttft.count() > 0 && s.ttft.count() > 0,
            ),
            ttft_ms: ttft,
            inter_token_ms: PerSide {
                primary: lat(&p.gaps),
                shadow: lat(&s.gaps),
            },
            tokens_per_second_ratio: ratio(
                s.tps.median(),
                p.tps.median(),
                p.tps.count() > 0 && s.tps.count() > 0,
            ),
            tokens_per_second: PerSide {
                primary: p.tps.dist(&tps_edges),
                shadow: s.tps.dist(&tps_edges),
            },
            output_tokens_ratio: ratio(
                s.tokens.mean(),
                p.tokens.mean(),
                p.tokens.count() > 0 && s.tokens.count() > 0,
            ),
            output_tokens: PerSide {
                primary: p.tokens.dist(&[]),
                shadow: s.tokens.dist(&[]),
            },
            finish_reasons: PerSide {
                primary: sorted(&p.finish),
                shadow: sorted(&s.finish),
            },
        })
    }
}

/// Similarities kept per side and path: a deterministic reservoir sample,
/// so memory stays flat and the rank test stays fast (m*n differences).
const SIMILARITY_SAMPLE: usize = 2000;

#[derive(Clone, Debug, Default)]
pub(crate) struct Reservoir {
    seen: u64,
    values: Vec<f64>,
}

impl Reservoir {
    pub fn add(&mut self, x: f64) {
        self.seen += 1;
        if self.values.len() < SIMILARITY_SAMPLE {
            self.values.push(x);
        } else {
            let j = (self.seen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % self.seen;
            if (j as usize) < SIMILARITY_SAMPLE {
                self.values[j as usize] = x;
            }
        }
    }

    pub fn merge(&mut self, o: &Reservoir) {
        for &x in &o.values {
            self.add(x);
        }
        self.seen += o.seen.saturating_sub(o.values.len() as u64);
    }

    fn dist(&self) -> Dist {
        let mut v = self.values.clone();
        v.sort_unstable_by(f64::total_cmp);
        let q = |p: f64| quantile_sorted(&v, p).unwrap_or(0.0);
        let edges = similarity_edges();
        let mut histogram = vec![0u64; edges.len()];
        for x in &v {
            let i = edges.iter().position(|e| x <= e).unwrap_or(edges.len() - 1);
            histogram[i] += 1;
        }
        Dist {
            count: self.seen,
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            p5: q(0.05),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            histogram,
        }
    }
}

/// Similarities by rule path (with how they were scored).
pub(crate) type Similarities = HashMap<(String, &'static str), Reservoir>;

/// The report's similarity section for one (endpoint, shadow): the shadow's
/// sample against the endpoint's noise sample.
pub(crate) fn similarity_stats(
    shadow: &Similarities,
    noise: Option<&Similarities>,
) -> Vec<Similarity> {
    let mut out: Vec<Similarity> = shadow
        .iter()
        .map(|((path, metric), sample)| {
            let own = noise.and_then(|n| n.get(&(path.clone(), *metric)));
            let shift = own.and_then(|o| hodges_lehmann(&o.values, &sample.values));
            Similarity {
                path: path.clone(),
                metric: metric.to_string(),
                shadow: sample.dist(),
                noise: own.map(Reservoir::dist),
                drop: shift.map(|s| s.estimate),
                drop_ci: shift.map(|s| s.ci),
                p_value: shift.map(|s| s.p_value),
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_are_bounded_in_number_and_length() {
        let mut side = SideTally::default();
        let row = ReplayResult::default();
        let answer = |reason: String| {
            let body = serde_json::json!({"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": reason}]});
            crate::llm::assemble_body(&body).unwrap()
        };
        for _ in 0..3 {
            side.add(&row, &answer("stop".into()));
        }
        side.add(&row, &answer("x".repeat(MAX_FINISH_CHARS + 1)));
        for i in 0..100 {
            side.add(&row, &answer(format!("req-{i}")));
        }
        // `stop`, `(other)` (the long one came first) and 30 ids: 32 keys.
        assert_eq!(side.finish.len(), MAX_FINISH_REASONS);
        assert_eq!(side.finish["stop"], 3);
        assert_eq!(side.finish[OTHER_FINISH], 1 + 70);
        assert_eq!(side.finish.values().sum::<u64>(), 104);
    }
}
