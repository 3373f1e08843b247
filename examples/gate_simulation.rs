//! The gate's error rates by simulation: the table in docs/diff.md.
//!
//!     cargo run --release --example gate_simulation [RUNS]
//!
//! Every figure comes from `shadowctl::diff::simulation`, which judges with
//! the gate's own interval functions; `tests/simulation.rs` runs a smaller
//! version with assertions.

use shadowctl::diff::config::FamilyWise;
use shadowctl::diff::simulation::{
    family_false_fail, fixed_size_for_power, simulate, Mode, Setting,
};

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let (limit, max_n, every) = (0.05, 20_000, 25);
    println!("Divergence limit 5%, at most {max_n} exchanges, a look every {every}; {runs} runs per row.\n");
    println!("| true rate | mode | GO | NO-GO | undecided | mean exchanges |");
    println!("|---|---|---|---|---|---|");
    for (i, true_rate) in [0.03, 0.04, 0.045, 0.05, 0.055, 0.06, 0.07]
        .into_iter()
        .enumerate()
    {
        let s = Setting {
            true_rate,
            limit,
            max_n,
            every,
            runs,
            seed: 1000 + i as u64,
        };
        for (mode, name) in [
            (Mode::Fixed, "fixed n, one look"),
            (Mode::Naive, "fixed-n interval at every look"),
            (Mode::Sequential, "until decided (confidence sequence)"),
        ] {
            let t = simulate(&s, mode);
            println!(
                "| {:.1}% | {name} | {:.1}% | {:.1}% | {:.1}% | {:.0} |",
                true_rate * 100.0,
                t.pass_rate() * 100.0,
                t.fail_rate() * 100.0,
                ((1.0 - t.pass_rate() - t.fail_rate()) * 100.0).max(0.0),
                t.mean_exchanges()
            );
        }
    }
    println!("\nExchanges used by until-decided against a fixed-size test of the same power:\n");
    println!("| true rate | until-decided: right decisions | mean exchanges | fixed-size test of the same power |");
    println!("|---|---|---|---|");
    for (i, true_rate) in [0.02, 0.03, 0.035, 0.07, 0.08].into_iter().enumerate() {
        let s = Setting {
            true_rate,
            limit,
            max_n: 200_000,
            every,
            runs: runs / 4,
            seed: 2000 + i as u64,
        };
        let t = simulate(&s, Mode::Sequential);
        let power = if true_rate < limit {
            t.pass_rate()
        } else {
            t.fail_rate()
        };
        // A fixed test never reaches 100%: match it at 99% at most.
        let matched = power.min(0.99);
        let fixed = fixed_size_for_power(true_rate, limit, matched)
            .map_or("-".to_string(), |n| n.to_string());
        println!(
            "| {:.1}% | {:.1}% | {:.0} | {fixed} (power {:.0}%) |",
            true_rate * 100.0,
            power * 100.0,
            t.mean_exchanges(),
            matched * 100.0
        );
    }
    println!("\nEndpoints all exactly at the limit (5%), 2,000 exchanges each: runs with any false NO-GO:\n");
    println!("| endpoints | none | bonferroni | holm |");
    println!("|---|---|---|---|");
    for k in [1, 5, 20] {
        let f = |fw| family_false_fail(k, 2000, limit, fw, runs / 4, 3000 + k as u64) * 100.0;
        println!(
            "| {k} | {:.1}% | {:.1}% | {:.1}% |",
            f(FamilyWise::None),
            f(FamilyWise::Bonferroni),
            f(FamilyWise::Holm)
        );
    }
}
