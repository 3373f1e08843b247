//! Intervals at any confidence level, fixed-sample or time-uniform.
//!
//! The gate decides a criterion when its interval lies wholly on one side
//! of the limit. Two kinds of interval are used:
//!
//! - **fixed-sample** (`Method::Fixed`): Wilson for a rate, Newcombe for a
//!   difference of rates, order statistics for a quantile. Valid when the
//!   sample size was fixed before looking, as in a plain `diff`.
//! - **time-uniform** (`Method::Sequential`): confidence sequences, which
//!   cover the truth at every sample size at once, so a run may look after
//!   every answer and stop when it likes (`replay --until-decided`). Each
//!   is the set of values a Beta(½, ½) mixture martingale does not reject
//!   (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon, Ann. Statist. 2021,
//!   the "conjugate mixture" boundary): for a Bernoulli rate p,
//!   M_n(p) = B(½ + k, ½ + n − k) / B(½, ½) / (p^k (1 − p)^(n − k)),
//!   a nonnegative martingale with mean 1 under p; by Ville's inequality
//!   P(∃n: M_n(p) ≥ 1/α) ≤ α. It depends on the counts only, so a later
//!   `diff` of the same results computes the same interval.
//!
//! Every function takes real-valued counts, so "how many more exchanges
//! would decide" can scale a sample by any factor.

use super::stats::{self, ln_gamma, normal_cdf};

/// How intervals are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Valid at one sample size fixed in advance.
    Fixed,
    /// Valid at every sample size at once (anytime-valid).
    Sequential,
}

/// `[low, high]`; a bound may be infinite when the data cannot bound it.
pub type Bounds = (f64, f64);

/// z with P(|Z| ≤ z) = 1 − alpha: the normal quantile, by bisection on Φ
/// (80 halvings reach f64 precision).
pub fn z_for(alpha: f64) -> f64 {
    let target = 1.0 - alpha.clamp(1e-300, 1.0) / 2.0;
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..80 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// ln of the Beta(½, ½) mixture martingale for k successes in n at rate p.
fn ln_mixture(k: f64, n: f64, p: f64) -> f64 {
    const A: f64 = 0.5;
    let ln_beta = |a: f64, b: f64| ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b);
    let fit = if k > 0.0 { k * p.ln() } else { 0.0 }
        + if n - k > 0.0 {
            (n - k) * (1.0 - p).ln()
        } else {
            0.0
        };
    ln_beta(A + k, A + n - k) - ln_beta(A, A) - fit
}

/// The confidence sequence for a Bernoulli rate at time n: the rates the
/// mixture does not reject at level alpha. `ln_mixture` is convex in p with
/// its minimum at k/n, so each end is found by bisection.
fn mixture_cs(k: f64, n: f64, alpha: f64) -> Bounds {
    let bar = (1.0 / alpha).ln();
    let p_hat = (k / n).clamp(0.0, 1.0);
    let rejected = |p: f64| ln_mixture(k, n, p) >= bar;
    let edge = |inside: f64, outside: f64| {
        let (mut i, mut o) = (inside, outside);
        for _ in 0..60 {
            let m = (i + o) / 2.0;
            if rejected(m) {
                o = m;
            } else {
                i = m;
            }
        }
        i
    };
    let low = if rejected(0.0) || k > 0.0 {
        edge(p_hat, 0.0)
    } else {
        0.0
    };
    let high = if rejected(1.0) || k < n {
        edge(p_hat, 1.0)
    } else {
        1.0
    };
    (low.max(0.0), high.min(1.0))
}

/// Interval of a rate k/n at level 1 − alpha.
pub fn rate(method: Method, k: f64, n: f64, alpha: f64) -> Option<Bounds> {
    if n.is_nan() || n <= 0.0 || k < 0.0 || k > n {
        return None;
    }
    Some(match method {
        Method::Fixed => {
            let w = stats::wilson(k, n, z_for(alpha))?;
            (w.low, w.high)
        }
        Method::Sequential => mixture_cs(k, n, alpha),
    })
}

/// Paired error counts of one shadow against the primary.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorPairs {
    pub n: f64,
    pub primary: f64,
    pub shadow: f64,
    /// Exchanges where only the primary erred, and only the shadow.
    pub primary_only: f64,
    pub shadow_only: f64,
}

/// The paired error counts of a report's figures.
pub fn error_pairs(n: u64, e: &crate::report::Errors) -> ErrorPairs {
    ErrorPairs {
        n: n as f64,
        primary: e.primary as f64,
        shadow: e.shadow as f64,
        primary_only: e.primary_only as f64,
        shadow_only: e.shadow_only as f64,
    }
}

impl ErrorPairs {
    /// Every count grown by `f` (the rates held).
    pub fn scaled(self, f: f64) -> Self {
        Self {
            n: self.n * f,
            primary: self.primary * f,
            shadow: self.shadow * f,
            primary_only: self.primary_only * f,
            shadow_only: self.shadow_only * f,
        }
    }
}

/// Interval of shadow error rate minus primary error rate.
///
/// Fixed: Newcombe's hybrid score interval (method 10) from two Wilson
/// intervals. Sequential: the difference equals (shadow-only − primary-only)
/// / n, so it is bounded by a confidence sequence for each of those two
/// rates at alpha/2 (a union bound; both depend on counts only).
pub fn error_increase(method: Method, e: ErrorPairs, alpha: f64) -> Option<Bounds> {
    if e.n.is_nan() || e.n <= 0.0 {
        return None;
    }
    match method {
        Method::Fixed => {
            let d = stats::newcombe_diff(e.primary, e.n, e.shadow, e.n, z_for(alpha))?;
            Some((d.low, d.high))
        }
        Method::Sequential => {
            let (ls, hs) = mixture_cs(e.shadow_only, e.n, alpha / 2.0);
            let (lp, hp) = mixture_cs(e.primary_only, e.n, alpha / 2.0);
            Some(((ls - hp).max(-1.0), (hs - lp).min(1.0)))
        }
    }
}

/// Where the q-quantile of a sample of n lies, as fractions of the sample
/// (rank / n): the true quantile is at or above the value at `low` except
/// with probability `low_tail`, and below the value at `high` except with
/// probability `high_tail`. None for a side the sample cannot bound.
///
/// Distribution-free: the number of answers at or below the true quantile
/// is Binomial(n, q) whatever the latencies' distribution, so bounds on
/// that count (fixed: exact binomial tails; sequential: the mixture
/// sequence at rate q, one side at a time) bracket the quantile between
/// two order statistics.
pub fn quantile_ranks(
    method: Method,
    n: f64,
    q: f64,
    low_tail: f64,
    high_tail: f64,
) -> (Option<f64>, Option<f64>) {
    if n.is_nan() || n <= 0.0 {
        return (None, None);
    }
    let (lo_count, hi_count) = match method {
        Method::Fixed => binomial_counts(n.round(), q, low_tail, high_tail),
        // A two-sided sequence at level t misses on each side at most t.
        Method::Sequential => (count_cs(n, q, low_tail).0, count_cs(n, q, high_tail).1),
    };
    let low = (lo_count >= 1.0).then_some(lo_count / n);
    let high = (hi_count + 1.0 <= n).then_some((hi_count + 1.0) / n);
    (low, high)
}

/// For B ~ Binomial(n, q): the largest l with P(B < l) ≤ low_tail and the
/// smallest u with P(B > u) ≤ high_tail (so X_(l) ≤ quantile < X_(u+1)
/// except with probability low_tail + high_tail). Exact sums while the spread is small (the
/// p99 of a few hundred answers, where a normal approximation is far off),
/// normal with continuity correction past 400 of variance.
fn binomial_counts(n: f64, q: f64, low_tail: f64, high_tail: f64) -> Bounds {
    let var = n * q * (1.0 - q);
    if var > 400.0 {
        let sd = var.sqrt();
        return (
            (n * q - z_for(2.0 * low_tail) * sd - 0.5).floor(),
            (n * q + z_for(2.0 * high_tail) * sd + 0.5).ceil(),
        );
    }
    let ln_pmf = |k: f64| {
        ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
            + if k > 0.0 { k * q.ln() } else { 0.0 }
            + if n - k > 0.0 {
                (n - k) * (1.0 - q).ln()
            } else {
                0.0
            }
    };
    // Mass more than 40 standard deviations out is below 1e-300: the walks
    // start there (a few hundred steps, not n).
    let far = 40.0 * var.sqrt() + 2.0;
    // P(B < l) grows with l: walk up while it stays within the tail.
    let (mut below, mut l) = (0.0, (n * q - far).floor().max(0.0));
    while l <= n {
        let next = below + ln_pmf(l).exp();
        if next > low_tail {
            break;
        }
        below = next;
        l += 1.0;
    }
    // P(B > u) grows as u falls: walk down from n likewise.
    let (mut above, mut u) = (0.0, (n * q + far).ceil().min(n));
    while u >= 0.0 {
        let next = above + ln_pmf(u).exp();
        if next > high_tail {
            break;
        }
        above = next;
        u -= 1.0;
    }
    (l, u)
}

/// Counts k of n not rejected by the mixture at the known rate q: the
/// smallest and largest, by bisection on each side of n·q (ln M is convex
/// in k).
fn count_cs(n: f64, q: f64, alpha: f64) -> Bounds {
    let bar = (1.0 / alpha).ln();
    let centre = n * q;
    let rejected = |k: f64| ln_mixture(k, n, q) >= bar;
    let edge = |inside: f64, outside: f64| {
        if !rejected(outside) {
            return outside;
        }
        let (mut i, mut o) = (inside, outside);
        while (o - i).abs() > 0.5 {
            let m = ((i + o) / 2.0).round();
            if m == i || m == o {
                break;
            }
            if rejected(m) {
                o = m;
            } else {
                i = m;
            }
        }
        i
    };
    (
        edge(centre.floor(), 0.0).floor(),
        edge(centre.ceil(), n).ceil(),
    )
}

/// The smallest alpha at which `decided(alpha)` holds (intervals narrow as
/// alpha grows, so this is monotone): the test's p-value for "the truth is
/// on the other side of the limit". 1 when nothing decides it.
pub fn p_value(decided: impl Fn(f64) -> bool) -> f64 {
    if !decided(1.0) {
        return 1.0;
    }
    let (mut lo, mut hi) = (-300.0f64, 0.0f64); // log10 alpha
    if decided(10f64.powf(lo)) {
        return 0.0;
    }
    for _ in 0..50 {
        let mid = (lo + hi) / 2.0;
        if decided(10f64.powf(mid)) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    10f64.powf(hi)
}

/// The smallest factor f ≥ 1 by which a sample grown alike decides
/// (doubling, then bisection); None past a million times the sample.
pub fn scale_to_decide(decided: impl Fn(f64) -> bool) -> Option<f64> {
    if decided(1.0) {
        return Some(1.0);
    }
    let (mut lo, mut hi) = (1.0, 2.0);
    while !decided(hi) {
        if hi > 1e6 {
            return None;
        }
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if decided(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo < 1e-9 * hi {
            break;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_matches_the_normal_table() {
        assert!((z_for(0.05) - 1.959_964).abs() < 1e-5);
        assert!((z_for(0.01) - 2.575_829).abs() < 1e-5);
        assert!((z_for(0.05 / 20.0) - 3.023_341).abs() < 1e-5);
    }

    #[test]
    fn fixed_rate_is_wilson() {
        // statsmodels proportion_confint(81, 263, method="wilson")
        let (lo, hi) = rate(Method::Fixed, 81.0, 263.0, 0.05).unwrap();
        assert!((lo - 0.2552885198782742).abs() < 1e-9, "{lo}");
        assert!((hi - 0.36620957698280004).abs() < 1e-9, "{hi}");
    }

    #[test]
    fn sequences_are_wider_than_fixed_intervals_and_shrink() {
        let mut last = 1.0;
        for n in [100.0, 1_000.0, 10_000.0, 100_000.0] {
            let k = n * 0.04;
            let (fl, fh) = rate(Method::Fixed, k, n, 0.05).unwrap();
            let (sl, sh) = rate(Method::Sequential, k, n, 0.05).unwrap();
            assert!(sl < fl && sh > fh, "n={n}: [{sl}, {sh}] vs [{fl}, {fh}]");
            assert!(sl < 0.04 && sh > 0.04);
            assert!(sh - sl < last);
            last = sh - sl;
        }
        // The price of looking at every n: about 2x the fixed width at
        // 100,000 (a log n term under the root).
        let (fl, fh) = rate(Method::Fixed, 4000.0, 100_000.0, 0.05).unwrap();
        let (sl, sh) = rate(Method::Sequential, 4000.0, 100_000.0, 0.05).unwrap();
        let widen = (sh - sl) / (fh - fl);
        assert!((1.5..2.5).contains(&widen), "{widen}");
        // No success: the lower end is 0, the upper end still shrinks.
        let (l0, h0) = rate(Method::Sequential, 0.0, 1000.0, 0.05).unwrap();
        assert_eq!(l0, 0.0);
        assert!(h0 > 0.0 && h0 < 0.01, "{h0}");
    }

    #[test]
    fn quantile_ranks_bracket_the_rank() {
        let (lo, hi) = quantile_ranks(Method::Fixed, 10_000.0, 0.99, 0.025, 0.025);
        let (lo, hi) = (lo.unwrap() * 1e4, hi.unwrap() * 1e4);
        // 9900 ± 1.96·√99 ≈ ±19.5
        assert!((9878.0..9882.0).contains(&lo), "{lo}");
        assert!((9919.0..9923.0).contains(&hi), "{hi}");
        let (slo, shi) = quantile_ranks(Method::Sequential, 10_000.0, 0.99, 0.025, 0.025);
        assert!(slo.unwrap() * 1e4 < lo && shi.unwrap() * 1e4 > hi);
        // 100 answers cannot bound a p99 from above; 500 can, by their
        // largest (P(none of 500 above the p99) = 0.99^500 = 0.7% < 2.5%).
        assert_eq!(
            quantile_ranks(Method::Fixed, 100.0, 0.99, 0.025, 0.025).1,
            None
        );
        assert_eq!(
            quantile_ranks(Method::Fixed, 500.0, 0.99, 0.025, 0.025).1,
            Some(1.0)
        );
        assert_eq!(
            quantile_ranks(Method::Fixed, 300.0, 0.99, 0.025, 0.025).1,
            None
        );
        // Exact and normal agree where both apply (variance near 400).
        let a = quantile_ranks(Method::Fixed, 40_000.0, 0.99, 0.025, 0.025);
        let b = quantile_ranks(Method::Fixed, 41_000.0, 0.99, 0.025, 0.025);
        assert!((a.1.unwrap() - b.1.unwrap()).abs() < 2e-4, "{a:?} {b:?}");
    }

    #[test]
    fn p_value_finds_the_level_where_the_interval_touches_the_limit() {
        // 60 of 1000 against a 4% limit: z = (0.06-0.04)/... decided at
        // alpha = p exactly, not at alpha slightly below it.
        let decided = |a: f64| rate(Method::Fixed, 60.0, 1000.0, a).unwrap().0 > 0.04;
        let p = p_value(decided);
        assert!(p > 1e-4 && p < 0.05, "{p}");
        assert!(decided(p * 1.001) && !decided(p * 0.999));
        assert_eq!(p_value(|_| false), 1.0);
    }
}
