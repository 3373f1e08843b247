//! `replay --until-decided`: the gate evaluated while results come in.
//!
//! The writer thread hands every row it writes to a [`Looker`], which
//! folds it like `diff` does and, a few times a second, asks for the
//! verdict with confidence sequences (intervals valid however often they
//! are looked at, see `diff::intervals`). A NO-GO or a GO stops the sending;
//! what is in flight is still recorded. At the end the verdict is computed
//! again by `diff` itself from the files written, so a later `diff` of the
//! same files says the same.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::diff::{self, config::Config, verdict, DiffOptions};
use crate::report::{Outcome, Report, Verdict};
use crate::schema::ReplayResult;

/// Time between looks at most: each costs a report over what was folded
/// (endpoints × signatures, well under a millisecond), not over the
/// exchanges; looking often keeps what is sent after the decision small.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Deciding reasons listed in the summary at most.
const REASONS_SHOWN: usize = 12;

/// What the run decided, and why it stopped.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Decision {
    /// `GO`, `NO-GO` or `INCONCLUSIVE`: `diff`'s verdict on the files written.
    pub verdict: String,
    /// `decided`, `capture exhausted`, `--limit reached`,
    /// `--max-duration reached` or `interrupted`.
    pub stopped: String,
    /// Looks at the gate while sending.
    pub looks: u64,
    /// Exchanges compared when a look decided (None if none did).
    pub decided_after: Option<u64>,
    /// Exchanges in the final verdict.
    pub exchanges: u64,
    /// Failed and undecided criteria of the final verdict, in words.
    pub reasons: Vec<String>,
    /// Why the final verdict could not be computed, if so.
    pub error: Option<String>,
    #[serde(skip)]
    pub(crate) exit: Option<Verdict>,
}

impl Decision {
    /// `diff`'s exit code for the verdict; 2 (an error, as `diff` gives)
    /// when none could be computed: a gate accepting 3 must not pass it.
    pub fn exit_code(&self) -> i32 {
        match self.exit {
            Some(v) => v.exit_code(),
            None if self.error.is_some() => 2,
            None => Verdict::Inconclusive.exit_code(),
        }
    }
}

/// Folds rows as they are written and looks at the gate now and then.
pub struct Looker<'a> {
    live: diff::Live<'a>,
    last: Instant,
    /// Exchanges folded at the last look: no new one, no new look.
    seen: u64,
    pub looks: u64,
    pub decided_after: Option<u64>,
    failed: Option<String>,
    /// Exchanges the plan will send in all (an estimate under `--sample`).
    planned: u64,
    /// The gate's `min_endpoint_exchanges`.
    min_endpoint: u64,
}

impl<'a> Looker<'a> {
    /// `sent`: each exchange as it was sent, with the rows it will have.
    /// `planned`: how many exchanges the whole run would send.
    pub fn new(
        opts: &'a DiffOptions,
        sent: std::sync::mpsc::Receiver<(u64, usize)>,
        planned: u64,
    ) -> Self {
        Self {
            live: diff::Live::new(opts, sent),
            last: Instant::now(),
            seen: 0,
            looks: 0,
            decided_after: None,
            failed: None,
            planned,
            min_endpoint: opts.config.gate.min_endpoint_exchanges,
        }
    }

    /// Take one row; true once a look has decided (GO or NO-GO). Exchanges
    /// are folded in the order they were sent, each once all its rows are
    /// in: a look sees a prefix of the (shuffled) sending order, never the
    /// fast answers ahead of slow ones still in flight.
    pub fn add(&mut self, row: &ReplayResult) -> bool {
        if self.decided_after.is_some() || self.failed.is_some() {
            return self.decided_after.is_some();
        }
        if let Err(e) = self.live.add(row.clone()) {
            // The run goes on to its end; the final diff says what is wrong.
            self.failed = Some(e.to_string());
            return false;
        }
        if self.last.elapsed() < LOOK_EVERY || self.live.exchanges() == self.seen {
            return false;
        }
        self.last = Instant::now();
        self.seen = self.live.exchanges();
        self.looks += 1;
        match self.live.report() {
            Ok(r) if decided(&r) && !(r.verdict == Verdict::Go && self.judged_later(&r)) => {
                self.decided_after = Some(r.exchanges);
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.failed = Some(e.to_string());
                false
            }
        }
    }
}

impl Looker<'_> {
    /// Whether an endpoint too small to be judged now may be judged by
    /// the end of the run. The sending order is a uniform shuffle, so an
    /// endpoint seen `k` times in `n` exchanges will be seen about
    /// `k × planned / n` times; with the noise of a small `k`, it is
    /// waited for if that reaches half the minimum. A GO now would never
    /// judge it, where a `diff` of the whole capture would: a rare
    /// endpoint that always diverges would pass unseen.
    fn judged_later(&self, r: &Report) -> bool {
        let counts = r
            .endpoints
            .iter()
            .flat_map(|ep| ep.shadows.values().map(|s| s.compared));
        judged_later(counts, r.exchanges, self.planned, self.min_endpoint)
    }
}

fn judged_later(counts: impl Iterator<Item = u64>, done: u64, planned: u64, min: u64) -> bool {
    let done = u128::from(done.max(1));
    counts.into_iter().any(|k| {
        // Both sides fit: each is a product of two u64 (the 2 on the
        // left is taken as a halving on the right).
        let projected = u128::from(k) * u128::from(planned);
        k < min && projected >= u128::from(min) * done / 2
    })
}

/// Criteria that say whether the data can be judged at all, not how the
/// shadow compares: they hold at any look (the share of answers left out
/// is that of the rows written so far, which a stop keeps as they are).
const STRUCTURAL: [&str; 3] = ["min_exchanges", "shadow_usable", "not_compared"];

/// A look decides on a failure of an anytime-valid criterion, or on a GO
/// that rests on anytime-valid criteria only: a point estimate (token
/// ratios, drift) or a fixed-sample interval (similarity) that passes at
/// some look may not at the next, so with any of those the run goes on to
/// its end and `diff` judges them there.
fn decided(r: &Report) -> bool {
    decides(r.verdict, &r.reasons)
}

fn decides(verdict: Verdict, reasons: &[crate::report::Reason]) -> bool {
    // Only criteria with confidence sequences may stop a run: a failure
    // seen at any look is then a failure.
    let anytime = |c: &str| verdict::anytime_valid(c) || STRUCTURAL.contains(&c);
    match verdict {
        Verdict::Go => reasons.iter().all(|x| anytime(&x.criterion)),
        Verdict::NoGo => reasons
            .iter()
            .any(|x| x.outcome == Outcome::Fail && verdict::anytime_valid(&x.criterion)),
        Verdict::Inconclusive => false,
    }
}

/// The final verdict, by `diff` on the files written.
pub fn final_verdict(
    results: &Path,
    metrics: Option<&Path>,
    config: &Config,
    mut decision: Decision,
) -> Decision {
    let inputs: Vec<PathBuf> = std::iter::once(results)
        .chain(metrics.filter(|m| m.exists()))
        .map(Path::to_path_buf)
        .collect();
    let opts = DiffOptions {
        inputs,
        config: config.clone(),
        top: 0,
        divergences: None,
    };
    match diff::diff(&opts) {
        Ok(r) => {
            decision.verdict = r.verdict.as_str().into();
            decision.exit = Some(r.verdict);
            decision.exchanges = r.exchanges;
            decision.reasons = deciding_reasons(&r);
        }
        Err(e) => {
            decision.verdict = Verdict::Inconclusive.as_str().into();
            decision.error = Some(e.to_string());
        }
    }
    decision
}

/// Failures first, then undecided criteria, as one line each.
fn deciding_reasons(r: &Report) -> Vec<String> {
    let line = |x: &crate::report::Reason, word: &str| {
        format!(
            "{word} {} [{}] {}: {}",
            x.criterion,
            x.endpoint.as_deref().unwrap_or("all"),
            x.shadow.as_deref().unwrap_or("-"),
            x.detail
        )
    };
    let of = |o: Outcome| r.reasons.iter().filter(move |x| x.outcome == o);
    of(Outcome::Fail)
        .map(|x| line(x, "FAIL"))
        .chain(of(Outcome::Inconclusive).map(|x| line(x, "UNDECIDED")))
        .take(REASONS_SHOWN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Reason;
    use crate::schema::TargetRole;

    /// A CI gate that lets INCONCLUSIVE (3) through must not let through a
    /// run whose verdict could not be computed at all.
    #[test]
    fn a_final_verdict_that_failed_exits_2_not_3() {
        let failed = Decision {
            error: Some("results.parquet: exchange 7 has two rows".into()),
            ..Decision::default()
        };
        assert_eq!(failed.exit_code(), 2);
        let undecided = Decision {
            exit: Some(Verdict::Inconclusive),
            ..Decision::default()
        };
        assert_eq!(undecided.exit_code(), 3);
        let nogo = Decision {
            exit: Some(Verdict::NoGo),
            ..Decision::default()
        };
        assert_eq!(nogo.exit_code(), 1);
    }

    fn reason(criterion: &str, outcome: Outcome) -> Reason {
        Reason {
            criterion: criterion.into(),
            endpoint: None,
            shadow: Some("v2".into()),
            observed: 0.0,
            threshold: 0.0,
            passed: outcome == Outcome::Pass,
            outcome,
            detail: String::new(),
            needed_exchanges: None,
            path: None,
        }
    }

    #[test]
    fn only_anytime_valid_criteria_stop_a_run() {
        let pass = |c| reason(c, Outcome::Pass);
        let fail = |c| reason(c, Outcome::Fail);
        let base = [
            pass("min_exchanges"),
            pass("divergence_rate"),
            pass("p99_latency_ratio"),
        ];
        assert!(decides(Verdict::Go, &base));
        // A token ratio passing at one look may not at the next: no stop.
        let mut llm = base.to_vec();
        llm.push(pass("output_tokens_ratio"));
        assert!(!decides(Verdict::Go, &llm));
        // A failure stops only when its interval is anytime-valid.
        assert!(decides(Verdict::NoGo, &[fail("divergence_rate")]));
        assert!(!decides(Verdict::NoGo, &[fail("similarity_drop")]));
        assert!(!decides(Verdict::Inconclusive, &base));
    }

    /// An endpoint seen 5 times in the first 2,500 of 15,000 exchanges
    /// will be seen about 30 times in all, and judged then: no GO yet; 3
    /// times (about 18) is waited for too, for the noise of small counts.
    /// One seen twice (about 12 in all) would never be judged: no wait.
    #[test]
    fn a_go_waits_for_endpoints_the_whole_run_would_judge() {
        assert!(judged_later([2000, 5].into_iter(), 2500, 15_000, 30));
        assert!(judged_later([2000, 3].into_iter(), 2500, 15_000, 30));
        assert!(!judged_later([2000, 2].into_iter(), 2500, 15_000, 30));
        assert!(!judged_later([2000, 30].into_iter(), 2500, 15_000, 30));
        assert!(!judged_later(std::iter::empty(), 0, 15_000, 30));
        // No overflow at the extremes.
        assert!(judged_later(
            [u64::MAX - 1].into_iter(),
            1,
            u64::MAX,
            u64::MAX
        ));
    }

    fn row(id: u64, name: &str, role: TargetRole) -> ReplayResult {
        ReplayResult {
            exchange_id: id,
            target_name: name.into(),
            role: Some(role),
            method: "GET".into(),
            target: "/".into(),
            endpoint: "GET /".into(),
            status: Some(200),
            sent_ts: Some(1),
            done_ts: Some(2),
            response_body: b"{}".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn exchanges_are_folded_in_sending_order() {
        let opts = DiffOptions {
            inputs: vec![],
            config: Config::default(),
            top: 0,
            divergences: None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let mut live = diff::Live::new(&opts, rx);
        for id in [1, 2] {
            tx.send((id, 3)).unwrap();
        }
        // Exchange 2 answers first: it waits for exchange 1, sent before it.
        for (name, role) in [
            ("recorded", TargetRole::Recorded),
            ("primary", TargetRole::Primary),
            ("v2", TargetRole::Shadow),
        ] {
            live.add(row(2, name, role)).unwrap();
        }
        assert_eq!(live.exchanges(), 0);
        for (name, role) in [
            ("recorded", TargetRole::Recorded),
            ("primary", TargetRole::Primary),
        ] {
            live.add(row(1, name, role)).unwrap();
        }
        assert_eq!(live.exchanges(), 0, "exchange 1 still lacks its shadow row");
        live.add(row(1, "v2", TargetRole::Shadow)).unwrap();
        assert_eq!(live.exchanges(), 2);
    }
}
