//! The gate's guarantees, checked by simulation (a smaller run of
//! `examples/gate_simulation.rs`): each assertion would fail if the
//! intervals behind `diff` and `replay --until-decided` lost their coverage.

use shadowctl::diff::config::FamilyWise;
use shadowctl::diff::simulation::{family_false_fail, simulate, Mode, Setting};

const RUNS: u64 = 400;

/// 5% allowed, plus three standard errors of a 400-run estimate.
const ALLOWED: f64 = 0.05 + 3.0 * 0.0109;

fn setting(true_rate: f64, seed: u64) -> Setting {
    Setting {
        true_rate,
        limit: 0.05,
        max_n: 5000,
        every: 25,
        runs: RUNS,
        seed,
    }
}

#[test]
fn looking_again_and_again_keeps_false_decisions_under_five_percent() {
    // Above the limit a GO is false; below it a NO-GO is; at the limit both.
    for (i, rate) in [0.04, 0.05, 0.06].into_iter().enumerate() {
        let t = simulate(&setting(rate, 10 + i as u64), Mode::Sequential);
        if rate >= 0.05 {
            assert!(t.pass_rate() <= ALLOWED, "false GO at {rate}: {t:?}");
        }
        if rate <= 0.05 {
            assert!(t.fail_rate() <= ALLOWED, "false NO-GO at {rate}: {t:?}");
        }
    }
    // The harness can tell: the fixed-sample interval looked at every 25
    // exchanges decides wrongly far more often at the limit.
    let naive = simulate(&setting(0.05, 20), Mode::Naive);
    assert!(
        naive.pass_rate() + naive.fail_rate() > 2.0 * ALLOWED,
        "repeated fixed-sample looks should inflate errors: {naive:?}"
    );
}

#[test]
fn clear_cases_stop_early() {
    // 2% and 9% against 5%: decided, the right way, well before 5,000.
    for (rate, seed) in [(0.02, 30), (0.09, 31)] {
        let t = simulate(&setting(rate, seed), Mode::Sequential);
        let right = if rate < 0.05 {
            t.pass_rate()
        } else {
            t.fail_rate()
        };
        assert!(right > 0.95, "{rate}: {t:?}");
        assert!(t.mean_exchanges() < 2500.0, "{rate}: {t:?}");
    }
}

#[test]
fn holm_keeps_twenty_endpoints_at_the_limit_from_failing_by_chance() {
    let none = family_false_fail(20, 1000, 0.05, FamilyWise::None, 200, 40);
    let holm = family_false_fail(20, 1000, 0.05, FamilyWise::Holm, 200, 40);
    assert!(holm <= 0.05 + 3.0 * 0.0154, "holm {holm}");
    assert!(
        none > 0.10,
        "without correction some endpoint fails by chance: {none}"
    );
}

/// Edge settings: a step of 0 still ends, and a true rate of 0 or 1 gives a
/// power (not NaN, which compared false and stopped the size search early).
#[test]
fn edge_settings_end_and_give_numbers() {
    let s = Setting {
        every: 0,
        runs: 3,
        max_n: 50,
        ..setting(0.0, 1)
    };
    let t = simulate(&s, Mode::Fixed);
    assert_eq!((t.runs, t.exchanges), (3, 150));
    for rate in [0.0, 1.0] {
        let p = shadowctl::diff::simulation::fixed_power(rate, 0.05, 200);
        assert!((0.0..=1.0 + 1e-9).contains(&p), "rate {rate}: power {p}");
    }
    // At rate 0 every sample of 200 has no divergence, which a 5% limit
    // passes: certain power.
    let p = shadowctl::diff::simulation::fixed_power(0.0, 0.05, 200);
    assert!((p - 1.0).abs() < 1e-9, "{p}");
}
