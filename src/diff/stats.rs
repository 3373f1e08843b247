//! Small, dependency-free statistics for the `diff` stage.
//!
//! The diff stage compares a primary and a shadow deployment on rates
//! (errors, mismatches), categorical distributions (status codes) and
//! numeric distributions (latencies, body sizes). Everything here is plain
//! `f64` arithmetic on counts or samples so the verdict does not depend on a
//! statistics crate, and every function returns `None` (or a documented
//! value) instead of panicking on empty input or NaN.

/// z for a two-sided 95% interval, i.e. the 0.975 quantile of N(0, 1).
#[cfg(test)]
const Z95: f64 = 1.959963984540054;

/// Smallest proportion used by [`psi`], so empty bins give a finite term.
const PSI_FLOOR: f64 = 1e-4;

/// Iteration cap for the incomplete gamma series / continued fraction.
/// Both converge in O(sqrt(a)) steps, so this covers a (= df/2) up to ~1e8.
const GAMMA_MAX_ITER: usize = 100_000;

/// Guard against division by zero inside the Lentz continued fraction.
const FPMIN: f64 = f64::MIN_POSITIVE / f64::EPSILON;

/// A closed interval `[low, high]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Observed proportion `k / n`, or `None` when it is undefined (`n == 0`)
/// or impossible (`k > n`, which would put the Wilson root out of range).
fn proportion(k: u64, n: u64) -> Option<f64> {
    if n == 0 || k > n {
        return None;
    }
    Some(k as f64 / n as f64)
}

/// Wilson score interval for a binomial proportion `k / n` at `z` (1.96
/// for 95%). Counts are real so a sample can be scaled ("how many more
/// would decide", see `intervals`).
///
/// Wilson rather than the textbook normal (Wald) interval because it keeps
/// its coverage for rare events and never collapses to zero width at
/// `k == 0`, which is exactly the case of "the shadow had no errors".
/// `None` when `n` is not positive or `k` is outside `0..=n`.
pub fn wilson(k: f64, n: f64, z: f64) -> Option<Interval> {
    if n.is_nan() || n <= 0.0 || k.is_nan() || k < 0.0 || k > n {
        return None;
    }
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).max(0.0).sqrt() / denom;
    Some(Interval {
        low: (centre - half).clamp(0.0, 1.0),
        high: (centre + half).clamp(0.0, 1.0),
    })
}

/// Interval at `z` for the difference `p2 - p1` of two proportions
/// (Newcombe 1998, method 10: hybrid score from the two Wilson intervals).
///
/// Chosen over the Wald difference interval for the same reason as
/// [`wilson`]: it behaves at 0% and 100% rates. `None` if a group is empty.
pub fn newcombe_diff(k1: f64, n1: f64, k2: f64, n2: f64, z: f64) -> Option<Interval> {
    let w1 = wilson(k1, n1, z)?;
    let w2 = wilson(k2, n2, z)?;
    let (p1, p2) = (k1 / n1, k2 / n2);
    let d = p2 - p1;
    let below = (p2 - w2.low).hypot(w1.high - p1);
    let above = (w2.high - p2).hypot(p1 - w1.low);
    Some(Interval {
        low: (d - below).clamp(-1.0, 1.0),
        high: (d + above).clamp(-1.0, 1.0),
    })
}

/// One-sided p-value for "rate 1 is greater than rate 2" (pooled two
/// proportion z test).
///
/// `None` for an empty group, `k > n`, or when the pooled variance is zero
/// (both rates 0% or both 100%): there is no evidence either way then, and
/// a made-up p-value would mislead a multiple-testing correction.
pub fn two_proportion_p(k1: u64, n1: u64, k2: u64, n2: u64) -> Option<f64> {
    let p1 = proportion(k1, n1)?;
    let p2 = proportion(k2, n2)?;
    let (n1, n2) = (n1 as f64, n2 as f64);
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2);
    if variance <= 0.0 {
        return None;
    }
    let z = (p1 - p2) / variance.sqrt();
    Some(normal_cdf(-z))
}

/// Standard normal CDF, Φ(x).
///
/// Computed from the regularized incomplete gamma function
/// (erfc(t) = Q(1/2, t²)), so the tail is accurate in *relative* terms
/// (~1e-14), not just to an absolute 1e-7: tiny p-values stay comparable
/// in a Benjamini-Hochberg ranking. NaN in gives NaN out.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let tail = 0.5 * gamma_q(0.5, 0.5 * x * x);
    if x < 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// Benjamini-Hochberg step-up procedure: which hypotheses are rejected
/// while controlling the false discovery rate at `q`.
///
/// The result is parallel to `p`. NaN p-values are treated as 1 (never
/// rejected, but still counted in m, which is the conservative choice).
/// A NaN `q` rejects nothing.
pub fn benjamini_hochberg(p: &[f64], q: f64) -> Vec<bool> {
    let m = p.len();
    let clean = |x: f64| if x.is_nan() { 1.0 } else { x };
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| clean(p[i]).total_cmp(&clean(p[j])));
    // Largest rank k (1-based) with p_(k) <= k/m * q; everything up to it
    // is rejected, even ranks whose own p-value is above its threshold.
    let cutoff = order
        .iter()
        .enumerate()
        .filter(|&(rank, &i)| clean(p[i]) <= (rank + 1) as f64 / m as f64 * q)
        .map(|(rank, _)| rank + 1)
        .next_back()
        .unwrap_or(0);
    let mut rejected = vec![false; m];
    for &i in &order[..cutoff] {
        rejected[i] = true;
    }
    rejected
}

/// Count in bin `i`, treating a missing bin (slices of unequal length) as 0.
fn count_at(counts: &[u64], i: usize) -> u64 {
    counts.get(i).copied().unwrap_or(0)
}

/// Sum of counts as `f64` (u64 sums could overflow; f64 only loses digits).
fn total(counts: &[u64]) -> f64 {
    counts.iter().map(|&c| c as f64).sum()
}

/// Population stability index between two binned distributions:
/// Σ (ps - pp) · ln(ps / pp).
///
/// Proportions are floored at 1e-4 so that a bin that is empty on one side
/// contributes a large but finite term instead of infinity. Returns 0 when
/// either side has no observations (nothing to compare). Slices of unequal
/// length are padded with empty bins.
pub fn psi(primary: &[u64], shadow: &[u64]) -> f64 {
    let (tp, ts) = (total(primary), total(shadow));
    if tp == 0.0 || ts == 0.0 {
        return 0.0;
    }
    (0..primary.len().max(shadow.len()))
        .map(|i| {
            let pp = (count_at(primary, i) as f64 / tp).max(PSI_FLOOR);
            let ps = (count_at(shadow, i) as f64 / ts).max(PSI_FLOOR);
            (ps - pp) * (ps / pp).ln()
        })
        .sum()
}

/// Chi-square test of homogeneity on the 2 x k table `[primary; shadow]`.
///
/// Returns `(statistic, p-value)` with df = k' - 1, where k' counts bins
/// that are non-empty on at least one side (an all-zero column carries no
/// information and would divide by zero). No Yates correction. `None` if
/// fewer than two bins remain or either side is empty. Slices of unequal
/// length are padded with empty bins.
pub fn chi_square(primary: &[u64], shadow: &[u64]) -> Option<(f64, f64)> {
    let columns: Vec<(f64, f64)> = (0..primary.len().max(shadow.len()))
        .map(|i| (count_at(primary, i) as f64, count_at(shadow, i) as f64))
        .filter(|&(a, b)| a + b > 0.0)
        .collect();
    let (rp, rs) = columns
        .iter()
        .fold((0.0, 0.0), |(x, y), &(a, b)| (x + a, y + b));
    if columns.len() < 2 || rp == 0.0 || rs == 0.0 {
        return None;
    }
    let grand = rp + rs;
    let statistic: f64 = columns
        .iter()
        .map(|&(a, b)| {
            let col = a + b;
            let (ea, eb) = (rp * col / grand, rs * col / grand);
            (a - ea).powi(2) / ea + (b - eb).powi(2) / eb
        })
        .sum();
    let df = (columns.len() - 1) as f64;
    Some((statistic, gamma_q(0.5 * df, 0.5 * statistic)))
}

/// Natural log of Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15).
///
/// Used for the normalizing factor of the incomplete gamma function.
/// Arguments below 0.5 go through the reflection formula, where the
/// approximation is less accurate.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = COEF[1..]
        .iter()
        .enumerate()
        .fold(COEF[0], |acc, (i, &c)| acc + c / (x + (i + 1) as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// Regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).
///
/// This is the chi-square survival function (Q(df/2, x/2)) and, with
/// a = 1/2, the complementary error function. Series for x < a + 1, where
/// it converges fast; Lentz continued fraction otherwise. Returns NaN for
/// invalid arguments (a <= 0 or NaN), 1 for x <= 0 and 0 for x = inf.
fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_q_continued_fraction(a, x)
    }
}

/// exp(-x) x^a / Γ(a), the common prefactor of both expansions.
fn gamma_prefactor(a: f64, x: f64) -> f64 {
    (-x + a * x.ln() - ln_gamma(a)).exp()
}

/// P(a, x) by its power series; converges quickly for x < a + 1.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..GAMMA_MAX_ITER {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * f64::EPSILON {
            break;
        }
    }
    (sum * gamma_prefactor(a, x)).clamp(0.0, 1.0)
}

/// Q(a, x) by its continued fraction (modified Lentz); for x >= a + 1.
fn gamma_q_continued_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / FPMIN;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..GAMMA_MAX_ITER {
        let i = i as f64;
        let an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = b + an / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < f64::EPSILON {
            break;
        }
    }
    (h * gamma_prefactor(a, x)).clamp(0.0, 1.0)
}

/// Two-sample Kolmogorov-Smirnov test: returns `(D, p-value)`.
///
/// Sorts both slices in place (by `total_cmp`, so NaN cannot panic; it
/// sorts to the ends and takes part like any other value, so callers
/// should filter it out). D is computed with ties handled by advancing past
/// every copy of the current value on both sides before comparing the
/// empirical CDFs. The p-value is the asymptotic one from Numerical
/// Recipes: Q_KS((√Ne + 0.12 + 0.11/√Ne) · D), Ne = nm/(n+m). `None` if
/// either sample is empty.
pub fn ks_two_sample(a: &mut [f64], b: &mut [f64]) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let d = ks_statistic(a, b);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let en = (n * m / (n + m)).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    Some((d, kolmogorov_q(lambda).clamp(0.0, 1.0)))
}

/// Index of the first element after `start` that differs from `sorted[start]`.
fn skip_equal(sorted: &[f64], start: usize, value: f64) -> usize {
    start
        + sorted[start..]
            .iter()
            .take_while(|x| x.total_cmp(&value).is_eq())
            .count()
}

/// max |F_a(x) - F_b(x)| for two sorted, non-empty samples.
///
/// Once one sample is exhausted its CDF is 1 and the gap can only shrink,
/// so the walk can stop there.
fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0, 0);
    let mut d: f64 = 0.0;
    while i < a.len() && j < b.len() {
        let x = if a[i].total_cmp(&b[j]).is_le() {
            a[i]
        } else {
            b[j]
        };
        i = skip_equal(a, i, x);
        j = skip_equal(b, j, x);
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

/// Kolmogorov survival function Q_KS(λ) = 2 Σ_{j≥1} (-1)^{j-1} e^{-2j²λ²}.
///
/// For λ < 1.18 the alternating series needs many terms and cancels badly,
/// so there we use the equivalent Jacobi-theta form
/// 1 - (√(2π)/λ) Σ e^{-(2j-1)²π²/(8λ²)} (Numerical Recipes, 3rd ed.).
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda.is_nan() {
        return f64::NAN;
    }
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.18 {
        let y = (-std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda)).exp();
        let sum = y + y.powi(9) + y.powi(25) + y.powi(49);
        return 1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * sum;
    }
    let x = (-2.0 * lambda * lambda).exp();
    // j = 1..=4; the j = 5 term is below e^-69 ≈ 1e-30 relative to j = 1.
    2.0 * (x - x.powi(4) + x.powi(9) - x.powi(16))
}

/// Quantile of an ascending slice by linear interpolation between order
/// statistics (Hyndman-Fan type 7, the R / NumPy default).
///
/// `q` is clamped to [0, 1]; `None` for an empty slice or NaN `q`.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || q.is_nan() {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    let (x_lo, x_hi) = (sorted[lo], sorted[hi]);
    if lo == hi {
        return Some(x_lo);
    }
    Some(x_lo + (h - lo as f64) * (x_hi - x_lo))
}

/// Bin edges at the 0, 1/n, ..., 1 quantiles of `values`, for numeric
/// drift histograms.
///
/// Quantile edges give roughly equal-mass bins on the primary side, which
/// keeps PSI and chi-square well conditioned for skewed data such as
/// latencies. Repeated edges are dropped (heavy ties give fewer bins);
/// non-finite values are ignored. If every value is equal the result is
/// `[v, v]`, one bin holding everything. Empty input or `n_bins == 0`
/// gives no edges.
pub fn bins(values: &[f64], n_bins: usize) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if sorted.is_empty() || n_bins == 0 {
        return Vec::new();
    }
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = Vec::with_capacity(n_bins + 1);
    for i in 0..=n_bins {
        let q = i as f64 / n_bins as f64;
        let Some(edge) = quantile_sorted(&sorted, q) else {
            continue;
        };
        // Strictly increasing: also drops rounding wobble in interpolation.
        if edges.last().is_none_or(|&last| edge > last) {
            edges.push(edge);
        }
    }
    if edges.len() == 1 {
        edges.push(edges[0]);
    }
    edges
}

/// Bin edges for comparing `primary` with `shadow`. When the two sides
/// together take at most `n_bins` distinct values (a flag, a class label,
/// a constant), each value is a bin of its own: the primary's quantile
/// edges would give a single bin there, into which every shadow value is
/// clamped, and PSI would read 0 for any shift. Otherwise [`bins`] of the
/// primary, or of both sides pooled when the primary's own edges make a
/// single bin (a constant primary beside a spread shadow).
pub fn drift_bins(primary: &[f64], shadow: &[f64], n_bins: usize) -> Vec<f64> {
    let mut distinct: Vec<f64> = Vec::new();
    for &x in primary.iter().chain(shadow).filter(|x| x.is_finite()) {
        if let Err(at) = distinct.binary_search_by(|v| v.total_cmp(&x)) {
            if distinct.len() == n_bins {
                distinct.clear();
                break;
            }
            distinct.insert(at, x);
        }
    }
    if distinct.len() > 1 {
        distinct.push(distinct[distinct.len() - 1]);
        return distinct;
    }
    let edges = bins(primary, n_bins);
    if edges.len() > 2 || shadow.is_empty() {
        return edges;
    }
    let pooled: Vec<f64> = primary.iter().chain(shadow).copied().collect();
    bins(&pooled, n_bins)
}

/// Count `values` into the bins `[e0, e1), [e1, e2), ..., [e_{k-1}, e_k]`.
///
/// Values outside the edges are clamped into the first or last bin, so the
/// shadow side is counted in full even when it drifts beyond the primary's
/// range. NaN values are skipped. Fewer than two edges gives no bins.
pub fn bin_counts(values: &[f64], edges: &[f64]) -> Vec<u64> {
    if edges.len() < 2 {
        return Vec::new();
    }
    let k = edges.len() - 1;
    let interior = &edges[1..k];
    let mut counts = vec![0u64; k];
    for &v in values.iter().filter(|v| !v.is_nan()) {
        // Number of interior edges <= v is exactly the bin index.
        counts[interior.partition_point(|&e| e <= v)] += 1;
    }
    counts
}

/// How far `x` sits above `y`: the Hodges-Lehmann estimate (the median of
/// all differences x_i - y_j), its 95% confidence interval from the
/// Mann-Whitney distribution (normal approximation), and the one-sided
/// p-value of "x is stochastically larger than y" (U test, ties corrected).
/// Used with x = the primary's similarity to itself, y = the shadow's
/// similarity to the primary: the shift is how much the shadow drops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shift {
    pub estimate: f64,
    pub ci: [f64; 2],
    pub p_value: f64,
}

pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> Option<Shift> {
    let (m, n) = (x.len(), y.len());
    if m < 2 || n < 2 {
        return None;
    }
    let mut d: Vec<f64> = Vec::with_capacity(m * n);
    for a in x {
        d.extend(y.iter().map(|b| a - b));
    }
    d.sort_unstable_by(f64::total_cmp);
    let mn = (m * n) as f64;
    let median = quantile_sorted(&d, 0.5)?;
    // Ranks of the interval ends among the ordered differences.
    let half = 1.96 * (mn * (m + n + 1) as f64 / 12.0).sqrt();
    let k = ((mn / 2.0 - half).floor().max(0.0) as usize).min(d.len() - 1);
    let lo = d[k];
    let hi = d[d.len() - 1 - k];
    Some(Shift {
        estimate: median,
        ci: [lo, hi],
        p_value: mann_whitney_p(x, y),
    })
}

/// One-sided p-value of the U test that `x` tends to be larger than `y`.
fn mann_whitney_p(x: &[f64], y: &[f64]) -> f64 {
    let (m, n) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_x, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_x += all[i..=j].iter().filter(|e| e.1).count() as f64 * mid;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_x - m * (m + 1.0) / 2.0;
    let total = m + n;
    let var = m * n / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    if var <= 0.0 {
        return 1.0; // every value equal: no evidence of a shift
    }
    let z = (u - m * n / 2.0 - 0.5) / var.sqrt();
    1.0 - normal_cdf(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values below come from SciPy 1.17 / statsmodels 0.14
    /// (proportion_confint(method="wilson"), confint_proportions_2indep(
    /// method="newcomb"), proportions_ztest(alternative="larger"),
    /// scipy.stats.norm.cdf, scipy.special.gammaincc / gammaln / kolmogorov,
    /// chi2_contingency(correction=False), ks_2samp, numpy.quantile) and,
    /// where noted, the worked examples in Newcombe (1998).
    fn close(actual: f64, expected: f64, tol: f64) -> bool {
        (actual - expected).abs() <= tol
    }

    macro_rules! assert_close {
        ($actual:expr, $expected:expr, $tol:expr) => {{
            let (a, e) = ($actual, $expected);
            assert!(close(a, e, $tol), "{a} != {e} (tol {})", $tol);
        }};
    }

    #[test]
    fn wilson_matches_statsmodels_and_newcombe_examples() {
        let cases = [
            (81, 263, 0.2552885198782742, 0.36620957698280004),
            (15, 148, 0.06238639953073628, 0.16048724172330803),
            (0, 20, 0.0, 0.1611251580528194),
            (1, 29, 0.006113214292762667, 0.17175521879320294),
            (20, 20, 0.8388748419471804, 1.0),
            (5, 10, 0.23659309051256394, 0.7634069094874361),
        ];
        for (k, n, low, high) in cases {
            let w = wilson(k as f64, n as f64, Z95).expect("non-empty");
            assert_close!(w.low, low, 1e-12);
            assert_close!(w.high, high, 1e-12);
        }
    }

    #[test]
    fn wilson_rejects_empty_and_impossible() {
        assert_eq!(wilson(0.0, 0.0, Z95), None);
        assert_eq!(wilson(3.0, 2.0, Z95), None);
    }

    #[test]
    fn newcombe_matches_paper_table() {
        // Newcombe (1998) Table II, method 10, quoted as p2 - p1 here.
        let cases = [
            (48, 80, 56, 70, 0.05243147240236498, 0.33387265403690614),
            (3, 10, 9, 10, 0.1705227239345029, 0.809017973535488),
            (0, 29, 5, 56, -0.038137147903536936, 0.19256001385511165),
            (0, 20, 0, 10, -0.1611251580528194, 0.27753279986288926),
            (0, 20, 10, 10, 0.6790860371419145, 1.0),
        ];
        for (k1, n1, k2, n2, low, high) in cases {
            let ci =
                newcombe_diff(k1 as f64, n1 as f64, k2 as f64, n2 as f64, Z95).expect("non-empty");
            assert_close!(ci.low, low, 1e-12);
            assert_close!(ci.high, high, 1e-12);
        }
        assert_eq!(newcombe_diff(1.0, 0.0, 1.0, 2.0, Z95), None);
        assert_eq!(newcombe_diff(1.0, 2.0, 1.0, 0.0, Z95), None);
    }

    #[test]
    fn two_proportion_p_matches_statsmodels() {
        assert_close!(
            two_proportion_p(60, 100, 45, 100).unwrap_or(f64::NAN),
            0.016836034428172927,
            1e-12
        );
        assert_close!(
            two_proportion_p(10, 50, 12, 50).unwrap_or(f64::NAN),
            0.6853827399386768,
            1e-12
        );
        assert_close!(
            two_proportion_p(3, 1000, 1, 1000).unwrap_or(f64::NAN),
            0.15841304099404097,
            1e-12
        );
    }

    #[test]
    fn two_proportion_p_undefined_cases() {
        assert_eq!(two_proportion_p(0, 0, 1, 2), None);
        assert_eq!(two_proportion_p(1, 2, 0, 0), None);
        assert_eq!(two_proportion_p(0, 10, 0, 20), None);
        assert_eq!(two_proportion_p(10, 10, 20, 20), None);
    }

    #[test]
    fn normal_cdf_matches_scipy() {
        let cases = [
            (-5.0, 2.866515718791933e-07),
            (-3.0, 0.0013498980316300933),
            (-Z95, 0.025),
            (-1.0, 0.15865525393145707),
            (-0.5, 0.3085375387259869),
            (0.0, 0.5),
            (0.3, 0.6179114221889526),
            (1.0, 0.8413447460685429),
            (2.0, 0.9772498680518208),
            (3.5, 0.9997673709209645),
            (6.0, 0.9999999990134123),
            (8.3, 1.0),
        ];
        for (x, expected) in cases {
            assert_close!(normal_cdf(x), expected, 1e-14);
        }
        // Relative accuracy deep in the tail.
        let tail = normal_cdf(-8.0);
        assert!((tail / 6.22096057427174e-16 - 1.0).abs() < 1e-10, "{tail}");
    }

    #[test]
    fn normal_cdf_edge_inputs() {
        assert_eq!(normal_cdf(f64::INFINITY), 1.0);
        assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
        assert!(normal_cdf(f64::NAN).is_nan());
    }

    #[test]
    fn ln_gamma_matches_scipy() {
        let cases = [
            (0.5, 0.5723649429247),
            (1.0, 0.0),
            (1.5, -0.12078223763524526),
            (3.0, std::f64::consts::LN_2), // Γ(3) = 2! = 2
            (10.0, 12.801827480081469),
            (100.5, 361.43554046777757),
        ];
        for (x, expected) in cases {
            assert_close!(ln_gamma(x), expected, 1e-12);
        }
        let big = ln_gamma(1e4);
        assert!((big / 82099.71749644238 - 1.0).abs() < 1e-13, "{big}");
    }

    #[test]
    fn gamma_q_matches_scipy_gammaincc() {
        let cases = [
            (0.5, 0.1, 0.6547208460185768),
            (1.0, 1.0, 0.36787944117144245),
            (2.5, 1.0, 0.8491450360846096),
            (2.5, 7.0, 0.01560941610026691),
            (10.0, 3.0, 0.9988975118698845),
            (10.0, 25.0, 0.0002214766382487835),
            (50.0, 49.0, 0.5378956063990598),
        ];
        for (a, x, expected) in cases {
            assert_close!(gamma_q(a, x), expected, 1e-12);
        }
        let tiny = gamma_q(0.5, 30.0);
        assert!((tiny / 9.485737571073857e-15 - 1.0).abs() < 1e-10, "{tiny}");
        assert_eq!(gamma_q(2.0, 0.0), 1.0);
        assert!(gamma_q(0.0, 1.0).is_nan());
    }

    #[test]
    fn benjamini_hochberg_matches_statsmodels() {
        // statsmodels multipletests(method="fdr_bh"); BH-adjusted values are
        // [0.035, 0.0574, 0.0574, 0.035, 0.2333, 0.0574, 0.9].
        let p = [0.01, 0.04, 0.03, 0.005, 0.20, 0.041, 0.9];
        let expected = [true, false, false, true, false, false, false];
        assert_eq!(benjamini_hochberg(&p, 0.05), expected);
        assert_eq!(
            benjamini_hochberg(&p, 0.06),
            [true, true, true, true, false, true, false]
        );
    }

    #[test]
    fn benjamini_hochberg_step_up_and_edges() {
        // p_(2) = 0.02 <= 2/2 * 0.05 rejects both, though p_(1) = 0.02 > 0.025 fails.
        assert_eq!(benjamini_hochberg(&[0.03, 0.02], 0.05), [true, true]);
        assert!(benjamini_hochberg(&[], 0.05).is_empty());
        assert_eq!(benjamini_hochberg(&[f64::NAN, 0.001], 0.05), [false, true]);
        assert_eq!(benjamini_hochberg(&[0.001], f64::NAN), [false]);
    }

    #[test]
    fn psi_reference_values() {
        assert_close!(psi(&[10, 20, 30, 40], &[10, 20, 30, 40]), 0.0, 1e-15);
        assert_close!(
            psi(&[10, 20, 30, 40], &[40, 30, 20, 10]),
            0.9128696382935673,
            1e-12
        );
        assert_close!(psi(&[50, 50, 0], &[40, 40, 20]), 1.5640491119253044, 1e-12);
        assert_close!(psi(&[1, 1], &[2, 2]), 0.0, 1e-15);
    }

    #[test]
    fn psi_empty_totals_are_zero() {
        assert_eq!(psi(&[], &[]), 0.0);
        assert_eq!(psi(&[0, 0], &[1, 2]), 0.0);
        assert_eq!(psi(&[1, 2], &[0, 0]), 0.0);
    }

    #[test]
    fn chi_square_matches_scipy() {
        let cases: [(&[u64], &[u64], f64, f64); 4] = [
            (
                &[10, 20, 30],
                &[15, 15, 30],
                1.7142857142857144,
                0.42437284567695,
            ),
            (
                &[5, 0, 7, 9],
                &[3, 0, 12, 1],
                7.680368890977444,
                0.02148963731287059,
            ),
            (
                &[100, 0],
                &[90, 10],
                10.526315789473685,
                0.0011768659106247386,
            ),
            (
                &[1, 2, 3, 4, 5],
                &[5, 4, 3, 2, 1],
                6.666666666666666,
                0.1545873045047604,
            ),
        ];
        for (primary, shadow, stat, p) in cases {
            let (s, pv) = chi_square(primary, shadow).expect("testable");
            assert_close!(s, stat, 1e-12);
            assert_close!(pv, p, 1e-12);
        }
    }

    #[test]
    fn chi_square_untestable_tables() {
        assert_eq!(chi_square(&[], &[]), None);
        assert_eq!(chi_square(&[5, 0], &[7, 0]), None);
        assert_eq!(chi_square(&[0, 0], &[3, 4]), None);
        assert_eq!(chi_square(&[3, 4], &[0, 0]), None);
    }

    #[test]
    fn ks_matches_scipy_statistic_and_nr_pvalue() {
        let mut a = [3.0, 0.1, 0.9, 0.5, 2.2, 1.3];
        let mut b = [0.8, 0.2, 0.7, 0.25, 0.6];
        let (d, p) = ks_two_sample(&mut a, &mut b).expect("non-empty");
        assert_close!(d, 0.6666666666666666, 1e-15);
        assert_close!(p, 0.09925778048530916, 1e-12);
        assert_eq!(a, [0.1, 0.5, 0.9, 1.3, 2.2, 3.0]);
    }

    #[test]
    fn ks_handles_ties() {
        let mut a = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0];
        let mut b = [2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0];
        let (d, p) = ks_two_sample(&mut a, &mut b).expect("non-empty");
        assert_close!(d, 0.5714285714285714, 1e-15);
        assert_close!(p, 0.15504417912365295, 1e-12);

        let mut same_a = [1.0, 2.0, 3.0];
        let mut same_b = [3.0, 2.0, 1.0];
        assert_eq!(ks_two_sample(&mut same_a, &mut same_b), Some((0.0, 1.0)));
    }

    #[test]
    fn ks_larger_sample_and_edges() {
        let mut a: Vec<f64> = (0..50).map(|i| f64::from(i) * 0.1).collect();
        let mut b: Vec<f64> = (0..40).map(|i| f64::from(i) * 0.1 + 1.7).collect();
        let (d, p) = ks_two_sample(&mut a, &mut b).expect("non-empty");
        assert_close!(d, 0.34, 1e-12);
        assert_close!(p, 0.008550054940200709, 1e-12);

        assert_eq!(ks_two_sample(&mut [], &mut [1.0]), None);
        assert_eq!(ks_two_sample(&mut [1.0], &mut []), None);
        // NaN must not panic.
        let result = ks_two_sample(&mut [f64::NAN, 1.0], &mut [2.0, f64::NAN]);
        assert!(result.is_some());
    }

    #[test]
    fn kolmogorov_q_matches_scipy_on_both_branches() {
        let cases = [
            (0.2, 0.999999999999495),
            (0.5, 0.9639452436648751),
            (0.8, 0.5441424115741981),
            (1.0, 0.26999967167735456),
            (1.17, 0.12939004218561884),
            (1.19, 0.11774229287977166),
            (1.5, 0.022217962616525127),
            (2.0, 0.0006709252557796953),
            (3.0, 3.045995948942526e-08),
        ];
        for (lambda, expected) in cases {
            assert_close!(kolmogorov_q(lambda), expected, 1e-13);
        }
        assert_eq!(kolmogorov_q(0.0), 1.0);
    }

    #[test]
    fn quantile_type7_matches_numpy() {
        let x = [1.0, 2.0, 4.0, 8.0, 16.0];
        let cases = [
            (0.0, 1.0),
            (0.1, 1.4),
            (0.25, 2.0),
            (0.5, 4.0),
            (0.9, 12.8),
            (1.0, 16.0),
        ];
        for (q, expected) in cases {
            assert_close!(quantile_sorted(&x, q).unwrap_or(f64::NAN), expected, 1e-12);
        }
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(quantile_sorted(&x, f64::NAN), None);
        assert_eq!(quantile_sorted(&x, 2.0), Some(16.0));
        assert_eq!(quantile_sorted(&[7.0], 0.3), Some(7.0));
    }

    #[test]
    fn bins_are_quantile_edges_deduplicated() {
        let values: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(bins(&values, 4), [0.0, 25.0, 50.0, 75.0, 100.0]);
        // Few distinct values: a bin each, so a shift between them shows.
        let flag_p: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i >= 95))).collect();
        let flag_s: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i >= 5))).collect();
        let e = drift_bins(&flag_p, &flag_s, 10);
        assert_eq!(e, [0.0, 1.0, 1.0]);
        let (cp, cs) = (bin_counts(&flag_p, &e), bin_counts(&flag_s, &e));
        assert_eq!((cp, cs.clone()), (vec![95, 5], vec![5, 95]));
        assert!(psi(&[95, 5], &cs) > 1.0);
        let constant = vec![0.0; 50];
        let spread: Vec<f64> = (0..50).map(f64::from).collect();
        let e = drift_bins(&constant, &spread, 10);
        assert!(e.len() > 2, "{e:?}");
        assert!(psi(&bin_counts(&constant, &e), &bin_counts(&spread, &e)) > 1.0);
        // Many distinct values: the primary's quantile edges, as before.
        assert_eq!(drift_bins(&values, &values, 4), bins(&values, 4));
        // Heavy ties collapse edges.
        let tied = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0];
        assert_eq!(bins(&tied, 4), [1.0, 1.25, 3.0]);
        assert_eq!(bins(&[5.0, 5.0, f64::NAN], 3), [5.0, 5.0]);
        assert!(bins(&[], 3).is_empty());
        assert!(bins(&[1.0, 2.0], 0).is_empty());
    }

    #[test]
    fn bin_counts_half_open_with_clamping() {
        let edges = [0.0, 1.0, 2.0, 3.0];
        let values = [-5.0, 0.0, 0.5, 1.0, 1.99, 2.0, 3.0, 9.0, f64::NAN];
        assert_eq!(bin_counts(&values, &edges), [3, 2, 3]);
        assert_eq!(bin_counts(&[5.0, 5.0, 6.0], &[5.0, 5.0]), [3]);
        assert!(bin_counts(&values, &[1.0]).is_empty());
    }

    #[test]
    fn hodges_lehmann_finds_a_shift_and_not_noise() {
        // Same spread, shifted by 0.1: the estimate is 0.1 and the interval
        // holds it; the same sample against itself shifts by 0.
        let x: Vec<f64> = (0..200).map(|i| 0.6 + (i % 20) as f64 * 0.01).collect();
        let y: Vec<f64> = x.iter().map(|v| v - 0.1).collect();
        let s = hodges_lehmann(&x, &y).unwrap();
        assert!((s.estimate - 0.1).abs() < 1e-9, "{s:?}");
        assert!(s.ci[0] < 0.1 && s.ci[1] > 0.1 && s.ci[0] > 0.05, "{s:?}");
        assert!(s.p_value < 1e-6);
        let same = hodges_lehmann(&x, &x).unwrap();
        assert!(same.estimate.abs() < 1e-9 && same.ci[0] < 0.0 && same.ci[1] > 0.0);
        assert!(same.p_value > 0.3);
        // All ones on both sides (deterministic answers): no shift, no error.
        let ones = vec![1.0; 50];
        let s = hodges_lehmann(&ones, &ones).unwrap();
        assert_eq!((s.estimate, s.ci, s.p_value), (0.0, [0.0, 0.0], 1.0));
        assert!(hodges_lehmann(&[1.0], &ones).is_none());
    }
}
