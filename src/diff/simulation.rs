//! The gate's error rates, measured by simulation (docs/diff.md; the
//! example `gate_simulation` prints the full table, `tests/simulation.rs`
//! runs a smaller one with assertions).
//!
//! Streams of exchanges with a known true divergence rate are judged
//! against a limit three ways, with the very functions the gate uses:
//! - `fixed`: one look at the end with the fixed-sample (Wilson) interval;
//! - `naive`: the same interval looked at after every batch, stopping at
//!   the first decision (what a tool without confidence sequences does);
//! - `sequential`: the confidence sequence at every batch, stopping at the
//!   first decision (`replay --until-decided`).
//!
//! A second part judges k endpoints at once, each exactly at the limit,
//! and counts runs with any false failure, per family-wise correction.

use super::config::FamilyWise;
use super::intervals::{self, Method};

/// A seeded generator (SplitMix64): the simulation must give the same
/// figures on every machine, and needs nothing more than uniform draws.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

/// How a run is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fixed,
    Naive,
    Sequential,
}

/// What a run of one mode ended with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub runs: u64,
    pub pass: u64,
    pub fail: u64,
    /// Exchanges used, summed over runs.
    pub exchanges: u64,
}

impl Tally {
    pub fn pass_rate(&self) -> f64 {
        self.pass as f64 / self.runs.max(1) as f64
    }
    pub fn fail_rate(&self) -> f64 {
        self.fail as f64 / self.runs.max(1) as f64
    }
    pub fn mean_exchanges(&self) -> f64 {
        self.exchanges as f64 / self.runs.max(1) as f64
    }
}

/// One criterion's decision on k of n: Some(true) pass, Some(false) fail.
fn decide(method: Method, k: u64, n: u64, limit: f64, alpha: f64) -> Option<bool> {
    let (lo, hi) = intervals::rate(method, k as f64, n as f64, alpha)?;
    if hi < limit {
        Some(true)
    } else if lo > limit {
        Some(false)
    } else {
        None
    }
}

/// The setting of one simulation.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub true_rate: f64,
    pub limit: f64,
    /// Exchanges at most (the fixed test's size).
    pub max_n: u64,
    /// Exchanges between looks.
    pub every: u64,
    pub runs: u64,
    pub seed: u64,
}

/// Run `s.runs` streams and judge each in `mode`.
pub fn simulate(s: &Setting, mode: Mode) -> Tally {
    let mut rng = Rng::new(s.seed);
    let mut t = Tally::default();
    for _ in 0..s.runs {
        let (mut k, mut n) = (0u64, 0u64);
        let mut outcome = None;
        while n < s.max_n {
            // A zero step would never reach max_n.
            let step = s.every.max(1).min(s.max_n - n);
            for _ in 0..step {
                k += u64::from(rng.next_f64() < s.true_rate);
            }
            n += step;
            let method = match mode {
                Mode::Sequential => Method::Sequential,
                _ => Method::Fixed,
            };
            if mode == Mode::Fixed && n < s.max_n {
                continue;
            }
            outcome = decide(method, k, n, s.limit, 0.05);
            if outcome.is_some() {
                break;
            }
        }
        t.runs += 1;
        t.exchanges += n;
        match outcome {
            Some(true) => t.pass += 1,
            Some(false) => t.fail += 1,
            None => {}
        }
    }
    t
}

/// Power of the fixed-size Wilson test at n: the probability, computed
/// exactly from the binomial, that it decides the right way.
pub fn fixed_power(true_rate: f64, limit: f64, n: u64) -> f64 {
    let right = |k: u64| decide(Method::Fixed, k, n, limit, 0.05) == Some(true_rate < limit);
    let ln = |x: f64| super::stats::ln_gamma(x);
    (0..=n)
        .filter(|&k| right(k))
        .map(|k| {
            let (kf, nf) = (k as f64, n as f64);
            // 0 * ln 0 is 0 here (a rate of 0 or 1), not NaN.
            let term = |count: f64, p: f64| if count == 0.0 { 0.0 } else { count * p.ln() };
            (ln(nf + 1.0) - ln(kf + 1.0) - ln(nf - kf + 1.0)
                + term(kf, true_rate)
                + term(nf - kf, 1.0 - true_rate))
            .exp()
        })
        .sum()
}

/// The smallest fixed sample size (to 1%) whose power reaches `power`.
pub fn fixed_size_for_power(true_rate: f64, limit: f64, power: f64) -> Option<u64> {
    let mut hi = 100u64;
    while fixed_power(true_rate, limit, hi) < power {
        hi *= 2;
        if hi > 2_000_000 {
            return None;
        }
    }
    let mut lo = hi / 2;
    while hi - lo > (hi / 100).max(1) {
        let mid = (lo + hi) / 2;
        if fixed_power(true_rate, limit, mid) >= power {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// k endpoints, every one at exactly the limit, judged once at n each:
/// the share of runs with at least one failure (a false NO-GO) under the
/// correction `fw`, using the gate's own levels.
pub fn family_false_fail(
    k: usize,
    n: u64,
    limit: f64,
    fw: FamilyWise,
    runs: u64,
    seed: u64,
) -> f64 {
    let mut rng = Rng::new(seed);
    let mut any_fail = 0u64;
    for _ in 0..runs {
        let counts: Vec<u64> = (0..k)
            .map(|_| (0..n).map(|_| u64::from(rng.next_f64() < limit)).sum())
            .collect();
        let p: Vec<f64> = counts
            .iter()
            .map(|&c| intervals::p_value(|a| decide(Method::Fixed, c, n, limit, a).is_some()))
            .collect();
        let levels = super::verdict::family_levels(&p, fw, 0.05);
        let failed = counts
            .iter()
            .zip(levels)
            .any(|(&c, a)| decide(Method::Fixed, c, n, limit, a) == Some(false));
        any_fail += u64::from(failed);
    }
    any_fail as f64 / runs.max(1) as f64
}
