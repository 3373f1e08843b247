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

use crate::diff::{self, config::Config, DiffOptions};
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
    /// `diff`'s exit code for the verdict (3 when none could be made).
    pub fn exit_code(&self) -> i32 {
        self.exit.unwrap_or(Verdict::Inconclusive).exit_code()
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
}

impl<'a> Looker<'a> {
    pub fn new(opts: &'a DiffOptions, rows_per_exchange: usize) -> Self {
        Self {
            live: diff::Live::new(opts, rows_per_exchange),
            last: Instant::now(),
            seen: 0,
            looks: 0,
            decided_after: None,
            failed: None,
        }
    }

    /// Fold one row; true once a look has decided (GO or NO-GO).
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
            Ok(r) if decided(&r) => {
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

/// Criteria whose intervals are confidence sequences, so a failure seen at
/// any look is a failure: only these stop a run as NO-GO. The others (PSI,
/// token ratios, similarity) are judged on whatever the run ended with.
const ANYTIME: [&str; 4] = [
    "divergence_rate",
    "error_rate_increase",
    "p99_latency_ratio",
    "ttft_p99_ratio",
];

/// A look decides on a GO, or on a failure of an anytime-valid criterion.
fn decided(r: &Report) -> bool {
    r.verdict == Verdict::Go
        || (r.verdict == Verdict::NoGo
            && r.reasons
                .iter()
                .any(|x| x.outcome == Outcome::Fail && ANYTIME.contains(&x.criterion.as_str())))
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
