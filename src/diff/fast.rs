//! The common case, folded in place: every answer of an exchange is the
//! primary's, byte for byte (status, headers, trailers, body).
//!
//! The full comparison of such an exchange finds nothing, so all it adds to
//! the tallies is counts and latencies; those are read straight from the
//! Arrow columns, and no owned row is built. Anything else (a difference, an
//! error, an endpoint whose rules look at equal answers too: similarity
//! scores, drift, LLM answers, a judge, answer times for resources) goes the
//! full way, so this path changes no figure; `tests` checks that by folding
//! the same rows both ways.

use std::sync::Arc;

use super::{config, size_bucket, tally_answers, Answer, Cell, FoldCtx};
use crate::schema::{ErrorKind, ResultColumns, TargetRole};

/// A row of a decoded batch, not yet copied out.
#[derive(Clone)]
pub(super) struct RowRef {
    pub cols: Arc<ResultColumns>,
    pub i: usize,
    /// Read once: an exchange's rows are searched by role several times.
    role: Option<TargetRole>,
}

impl RowRef {
    pub fn new(cols: &Arc<ResultColumns>, i: usize) -> Self {
        Self {
            cols: cols.clone(),
            i,
            role: cols.role(i),
        }
    }

    pub fn to_row(&self) -> crate::schema::ReplayResult {
        self.cols.row(self.i)
    }

    fn role(&self) -> Option<TargetRole> {
        self.role
    }

    /// An answer the full comparison takes as a plain answer: a status and
    /// no error of any kind.
    fn plain(&self) -> bool {
        self.cols.status(self.i).is_some() && !self.cols.has_error_text(self.i)
    }

    fn same_answer(&self, other: &RowRef) -> bool {
        self.cols.same_answer(self.i, &other.cols, other.i)
    }
}

impl Answer for RowRef {
    fn status(&self) -> Option<u16> {
        self.cols.status(self.i)
    }

    fn error_kind(&self) -> Option<ErrorKind> {
        self.cols.error_kind(self.i)
    }

    fn grpc_status(&self) -> Option<u32> {
        self.cols
            .trailer_or_header(self.i, "grpc-status")
            .and_then(|v| super::grpc::parse_status(v.as_bytes()))
    }

    fn latency_ns(&self) -> Option<i64> {
        self.cols.latency_ns(self.i)
    }
}

/// Batches a row waiting for the rest of its exchange may hold before it
/// is copied out on its own.
const HELD_BATCHES: usize = 2;

/// The last batches read: a row still waiting once its batch is older than
/// [`HELD_BATCHES`] is copied out, so a few exchanges that never complete
/// hold their own rows, not every batch they were read in.
#[derive(Default)]
pub(super) struct Recent {
    batches: std::collections::VecDeque<Arc<ResultColumns>>,
}

impl Recent {
    pub fn read(&mut self, cols: &Arc<ResultColumns>) {
        self.batches.push_back(cols.clone());
    }

    pub fn release(
        &mut self,
        pending: &mut rustc_hash::FxHashMap<u64, Vec<RowRef>>,
    ) -> Result<(), String> {
        while self.batches.len() > HELD_BATCHES {
            let Some(old) = self.batches.pop_front() else {
                break;
            };
            // Only this list holds it: nothing waits on it.
            if Arc::strong_count(&old) == 1 {
                continue;
            }
            let held = |r: &RowRef, i: usize| r.i == i && Arc::ptr_eq(&r.cols, &old);
            let waiting: Vec<usize> = (0..old.len())
                .filter(|&i| {
                    pending
                        .get(&old.exchange_id(i))
                        .is_some_and(|g| g.iter().any(|r| held(r, i)))
                })
                .collect();
            if waiting.is_empty() {
                continue;
            }
            // One copy for all of the batch's waiting rows: without the
            // run's target list no exchange completes early, and every row
            // waits.
            let copy = Arc::new(old.detach(&waiting)?);
            for (k, &i) in waiting.iter().enumerate() {
                if let Some(group) = pending.get_mut(&old.exchange_id(i)) {
                    for r in group.iter_mut().filter(|r| held(r, i)) {
                        *r = RowRef::new(&copy, k);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Fold the exchange if all its answers equal the primary's and nothing
/// else needs its rows; `false` (nothing folded) otherwise.
pub(super) fn fold_identical(rows: &[RowRef], ctx: &mut FoldCtx) -> bool {
    if ctx.judge.is_some() || ctx.folded.times.is_some() {
        return false;
    }
    let find = |role| rows.iter().find(|r| r.role() == Some(role));
    let (recorded, live) = (find(TargetRole::Recorded), find(TargetRole::Primary));
    let Some(primary) = live.or(recorded) else {
        return false;
    };
    let noise = recorded.filter(|_| live.is_some());
    let shadows = || rows.iter().filter(|r| r.role() == Some(TargetRole::Shadow));
    if !primary.plain()
        || !noise
            .into_iter()
            .chain(shadows())
            .all(|r| r.plain() && r.same_answer(primary))
    {
        return false;
    }
    let (c, i) = (&primary.cols, primary.i);
    let name = config::template_for(
        &ctx.opts.config.endpoints.templates,
        c.method(i),
        c.target(i),
    )
    .unwrap_or(c.endpoint(i));
    // The rules of its own endpoint, even when it is reported with others.
    let ec = ctx.comparer.endpoint(name);
    if ec.scores || !ec.drift.is_empty() {
        return false;
    }
    // Counted over the cap only once taken here: fold_group counts the
    // exchanges given back to it.
    let (name, over_cap) = ctx.folded.reported_name(name);
    let f = &mut *ctx.folded;
    let ep = f.endpoints.id(name);
    if f.llm_probe.get(&ep).is_none_or(|p| p.wanted()) {
        return false;
    }
    f.endpoints_over_cap += u64::from(over_cap);
    f.exchanges += 1;
    *f.exchanges_per_endpoint.entry(ep).or_default() += 1;
    f.live_primary |= live.is_some();
    f.recorded_primary |= live.is_none();
    let sig = f.signature(&[]);
    if noise.is_some() {
        let n = f.noise.entry(ep).or_default();
        n.compared += 1;
        *n.sigs.entry(sig).or_default() += 1;
    }
    let cell = Cell {
        sig,
        status_class: primary.status().map_or(0, |s| (s / 100).min(5) as u8),
        size_bucket: size_bucket(c.request_body_len(i)),
    };
    for shadow in shadows() {
        let sh = f.shadows.id(shadow.cols.target_name(shadow.i));
        let t = f.tallies.entry((ep, sh)).or_default();
        tally_answers(t, primary, shadow, cell);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{compare::Comparer, summarize, DiffOptions, Folded};
    use crate::schema::{results_to_batch, HeaderList, ReplayResult};

    fn row(id: u64, name: &str, role: TargetRole, status: u16, body: &str) -> ReplayResult {
        let mut h = HeaderList::new();
        h.push(b"content-type", b"application/json");
        ReplayResult {
            exchange_id: id,
            target_name: name.into(),
            role: Some(role),
            method: "POST".into(),
            target: format!("/m{}", id % 3),
            endpoint: format!("POST /m{}", id % 3),
            request_body: vec![b'x'; (id % 2000) as usize],
            due_ts: 1,
            sent_ts: Some(100),
            done_ts: Some(100 + 1_000 * (id as i64 % 97) + 10 * status as i64),
            status: Some(status),
            response_headers: h,
            response_body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    /// Recorded, primary and two shadows per exchange, most answers equal,
    /// some not: 5xx, gRPC failures, errors, different bodies.
    fn sample() -> Vec<ReplayResult> {
        let mut rows = Vec::new();
        for id in 0..600u64 {
            let status = if id % 50 == 7 { 503 } else { 200 };
            let body = format!("{{\"label\":\"{}\",\"score\":0.5}}", id % 5);
            let mut p = row(id, "v1", TargetRole::Primary, status, &body);
            if id % 40 == 3 {
                p.response_trailers.push(b"grpc-status", b"14");
            }
            let mut rec = row(id, "recorded", TargetRole::Recorded, status, &body);
            rec.response_trailers = p.response_trailers.clone();
            if id % 31 == 0 {
                rec.response_body =
                    format!("{{\"label\":\"{}\",\"score\":0.9}}", id % 5).into_bytes();
            }
            let mut a = p.clone();
            a.target_name = "v2".into();
            a.role = Some(TargetRole::Shadow);
            a.done_ts = Some(200 + id as i64);
            if id % 17 == 0 {
                a.response_body = b"{\"label\":\"x\",\"score\":0.5}".to_vec();
            }
            let mut b = a.clone();
            b.target_name = "v3".into();
            if id % 23 == 0 {
                b.status = None;
                b.error_kind = Some(ErrorKind::Timeout);
                b.done_ts = None;
            }
            rows.extend([rec, p, a, b]);
        }
        rows
    }

    /// The JSON report of the rows folded in groups of four, and how many
    /// exchanges were folded in place.
    fn report(rows: &[ReplayResult], in_place: bool) -> (u64, serde_json::Value) {
        let opts = DiffOptions {
            inputs: vec![],
            config: Default::default(),
            top: 5,
            divergences: None,
        };
        let batch = results_to_batch(rows).unwrap();
        let cols = Arc::new(ResultColumns::new(&batch, &[]).unwrap());
        let mut comparer = Comparer::new(&opts.config);
        let mut folded = Folded::default();
        let mut ctx = FoldCtx {
            opts: &opts,
            comparer: &mut comparer,
            folded: &mut folded,
            sink: None,
            judge: None,
            in_place,
        };
        let mut ready = Vec::new();
        for g in (0..cols.len()).collect::<Vec<_>>().chunks(4) {
            let refs: Vec<RowRef> = g.iter().map(|&i| RowRef::new(&cols, i)).collect();
            ctx.push_refs(&mut ready, &refs).unwrap();
        }
        ctx.flush(&mut ready).unwrap();
        let report = summarize::report(&folded, &opts, None).unwrap();
        (folded.fast_folded, serde_json::to_value(&report).unwrap())
    }

    #[test]
    fn folding_in_place_gives_the_report_of_the_full_comparison() {
        let rows = sample();
        let ((fast, in_place), (none, full)) = (report(&rows, true), report(&rows, false));
        // The first 100 of each endpoint go the full way (LLM probe), and
        // unequal or failed answers always do.
        assert!(fast > 250, "{fast} folded in place");
        assert_eq!(none, 0);
        assert_eq!(in_place, full);
        assert_eq!(full["exchanges"], 600);
        let v2 = &full["overall"]["v2"];
        assert!(v2["divergent"].as_u64().unwrap() > 0, "{v2}");
        assert!(v2["errors"]["primary"].as_u64().unwrap() > 0, "{v2}");
    }

    /// `diff`'s report on `rows` written to a results file in their order,
    /// with or without the run's target list.
    fn report_of_file(rows: &[ReplayResult], with_targets: bool) -> serde_json::Value {
        let meta = if with_targets {
            vec![(
                crate::schema::META_TARGETS.to_string(),
                "recorded,v1,v2,v3".to_string(),
            )]
        } else {
            vec![]
        };
        report_with_meta(rows, meta)
    }

    /// `diff`'s report on `rows` written in their order, with this metadata.
    fn report_with_meta(rows: &[ReplayResult], meta: Vec<(String, String)>) -> serde_json::Value {
        use crate::schema::{ParquetFileWriter, WriterConfig, RESULTS};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.parquet");
        let mut file = ParquetFileWriter::create(
            &path,
            crate::schema::results_schema(),
            RESULTS,
            WriterConfig::default(),
        )
        .unwrap();
        for chunk in rows.chunks(700) {
            file.write_batch(&results_to_batch(chunk).unwrap()).unwrap();
        }
        file.finish(meta).unwrap();
        let opts = DiffOptions {
            inputs: vec![path],
            config: Default::default(),
            top: 5,
            divergences: None,
        };
        let mut report = serde_json::to_value(crate::diff::diff(&opts).unwrap()).unwrap();
        report.as_object_mut().unwrap().remove("inputs");
        report
    }

    /// Rows of an exchange side by side (read as one run), spread over
    /// batches, or interleaved with another exchange's: the same report.
    #[test]
    fn the_order_of_rows_in_the_file_does_not_change_the_report() {
        let rows = sample();
        let adjacent = report_of_file(&rows, true);
        assert_eq!(adjacent["exchanges"], 600);
        // Every role together: an exchange's rows 600 apart, over batches.
        let mut by_role = rows.clone();
        by_role.sort_by_key(|r| (r.role.map(TargetRole::as_str), r.exchange_id));
        // Two exchanges at a time, their rows alternating.
        let mut pairs = rows.clone();
        pairs.sort_by_key(|r| {
            (
                r.exchange_id / 2,
                r.role.map(TargetRole::as_str),
                r.exchange_id,
            )
        });
        for (name, order, targets) in [
            ("by role", &by_role, true),
            ("pairs", &pairs, true),
            ("no target list", &rows, false),
            ("by role, no target list", &by_role, false),
        ] {
            assert_eq!(report_of_file(order, targets), adjacent, "{name}");
        }
    }

    /// Three rows per exchange, 1 ms apart; the shadow's first 30 answers
    /// time out 30 s after they were due, so their rows come last.
    fn late_timeouts() -> Vec<ReplayResult> {
        let (mut rows, mut late) = (Vec::new(), Vec::new());
        for id in 0..600u64 {
            let due = id as i64 * 1_000_000;
            let at = |mut r: ReplayResult| {
                (r.due_ts, r.sent_ts, r.done_ts) = (due, Some(due), Some(due + 900_000));
                r
            };
            let body = "{\"label\":\"a\"}";
            rows.push(at(row(id, "recorded", TargetRole::Recorded, 200, body)));
            rows.push(at(row(id, "v1", TargetRole::Primary, 200, body)));
            let mut s = at(row(id, "v2", TargetRole::Shadow, 200, body));
            if id < 30 {
                (s.status, s.error_kind) = (None, Some(ErrorKind::Timeout));
                s.done_ts = Some(due + 30_000_000_000);
                late.push(s);
            } else {
                rows.push(s);
            }
        }
        rows.extend(late);
        rows
    }

    #[test]
    fn late_rows_are_paired_within_the_answer_deadline_and_counted_otherwise() {
        use crate::schema::{META_ANSWER_DEADLINE_MS, META_TARGETS};
        // The late rows are 1,700 rows behind, in a later batch: well
        // past this window.
        super::super::TEST_WINDOW_ROWS.with(|w| w.set(20));
        let rows = late_timeouts();
        let targets = (META_TARGETS.to_string(), "recorded,v1,v2".to_string());
        let deadline = (META_ANSWER_DEADLINE_MS.to_string(), "30000".to_string());
        let paired = report_with_meta(&rows, vec![targets.clone(), deadline]);
        assert_eq!(paired["exchanges"], 600);
        assert_eq!(
            paired["overall"]["v2"]["compared"], 600,
            "{}",
            paired["overall"]
        );
        assert_eq!(paired["overall"]["v2"]["errors"]["shadow"], 30);
        assert!(paired.get("unpaired_answers").is_none(), "{paired}");
        // An older file says no deadline: the window alone decides, and the
        // late rows cannot be paired. They are counted, and bar a GO.
        let unknown = report_with_meta(&rows, vec![targets]);
        assert_eq!(unknown["overall"]["v2"]["errors"]["shadow"], 0);
        assert_eq!(unknown["unpaired_answers"]["v2"], 30, "{unknown}");
        let reason = unknown["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["criterion"] == "unpaired_answers")
            .expect("a reason for the unpaired answers");
        assert_eq!(reason["outcome"], "inconclusive", "{reason}");
        assert_ne!(unknown["verdict"], "GO");
        super::super::TEST_WINDOW_ROWS.with(|w| w.set(super::super::WINDOW_ROWS));
    }

    /// 2,400 exchanges, primary `v1` and shadow `v2` answering alike.
    fn sample_identical() -> Vec<ReplayResult> {
        let mut rows = Vec::new();
        for id in 0..2400u64 {
            let due = id as i64 * 1_000_000;
            for (name, role) in [("v1", TargetRole::Primary), ("v2", TargetRole::Shadow)] {
                let mut r = row(id, name, role, 200, "{\"label\":\"a\"}");
                (r.due_ts, r.sent_ts, r.done_ts) = (due, Some(due), Some(due + 900_000));
                rows.push(r);
            }
        }
        rows
    }

    /// A shadow whose requests were not sent (it fell behind) is not
    /// judged on the ones that were: a few are reported, more bar a GO.
    #[test]
    fn shadow_requests_never_sent_are_counted_and_bar_a_go_beyond_the_gate() {
        let with_unsent = |unsent: u64| {
            let mut rows = sample_identical();
            for r in rows.iter_mut() {
                if r.role == Some(TargetRole::Shadow) && r.exchange_id < unsent {
                    (r.status, r.error_kind) = (None, Some(ErrorKind::NotSentInTime));
                }
            }
            let targets = (crate::schema::META_TARGETS.to_string(), "v1,v2".to_string());
            report_with_meta(&rows, vec![targets])
        };
        let find = |report: &serde_json::Value| {
            report["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["criterion"] == "not_compared")
                .cloned()
        };
        let none = with_unsent(0);
        assert_eq!(none["verdict"], "GO", "{}", none["reasons"]);
        assert!(none.get("not_compared").is_none() && find(&none).is_none());
        // 12 of 2,400 (0.5%): reported, and the gate still says GO.
        let few = with_unsent(12);
        assert_eq!(few["not_compared"]["v2"]["not_sent_in_time"], 12, "{few}");
        assert_eq!(few["overall"]["v2"]["compared"], 2388);
        assert_eq!(find(&few).unwrap()["outcome"], "pass");
        assert_eq!(few["verdict"], "GO", "{}", few["reasons"]);
        // 240 of 2,400 (10%): the others agree, but cannot speak for them.
        let many = with_unsent(240);
        assert_eq!(many["not_compared"]["v2"]["not_sent_in_time"], 240);
        let reason = find(&many).unwrap();
        assert_eq!(reason["outcome"], "inconclusive", "{reason}");
        assert!(reason["detail"].as_str().unwrap().contains("240 of 2400"));
        assert_eq!(many["verdict"], "INCONCLUSIVE");
        // Requests the capture cut are not the shadow's: not counted.
        let mut rows = sample_identical();
        for r in rows.iter_mut().filter(|r| r.exchange_id < 240) {
            (r.status, r.error_kind) = (None, Some(ErrorKind::RequestTruncated));
        }
        let targets = (crate::schema::META_TARGETS.to_string(), "v1,v2".to_string());
        let cut = report_with_meta(&rows, vec![targets]);
        assert!(cut.get("not_compared").is_none(), "{}", cut["not_compared"]);
    }

    /// The live primary's first 30 answers come last instead of the
    /// shadow's: their exchanges are compared against the recorded answer
    /// once the window passes, and the late primary rows must not start
    /// exchanges of their own.
    #[test]
    fn a_late_primary_row_is_counted_once_as_unpaired_not_as_a_second_exchange() {
        use crate::schema::META_TARGETS;
        super::super::TEST_WINDOW_ROWS.with(|w| w.set(20));
        let mut rows = late_timeouts();
        for r in rows.iter_mut() {
            r.role = match r.role {
                Some(TargetRole::Primary) => Some(TargetRole::Shadow),
                Some(TargetRole::Shadow) => Some(TargetRole::Primary),
                other => other,
            };
            r.target_name = match r.target_name.as_str() {
                "v1" => "v2".into(),
                "v2" => "v1".into(),
                other => other.into(),
            };
        }
        let targets = (META_TARGETS.to_string(), "recorded,v1,v2".to_string());
        let report = report_with_meta(&rows, vec![targets]);
        assert_eq!(report["exchanges"], 600, "{}", report["overall"]);
        assert_eq!(report["overall"]["v2"]["compared"], 600);
        assert_eq!(report["unpaired_answers"]["v1"], 30, "{report}");
        assert!(report["unpaired_answers"].get("v2").is_none(), "{report}");
        assert_ne!(report["verdict"], "GO");
        super::super::TEST_WINDOW_ROWS.with(|w| w.set(super::super::WINDOW_ROWS));
    }

    #[test]
    fn read_only_exchanges_expect_no_row_from_the_shadows_they_skipped() {
        use crate::schema::rows_of_exchange;
        assert_eq!(rows_of_exchange(4, 2, "GET"), 4);
        assert_eq!(rows_of_exchange(4, 2, "POST"), 2);
        assert_eq!(rows_of_exchange(4, 0, "POST"), 4);
    }

    #[test]
    fn a_row_left_waiting_is_copied_out_and_its_batch_let_go() {
        let rows = sample();
        let batch = results_to_batch(&rows).unwrap();
        let mut recent = Recent::default();
        let mut pending: rustc_hash::FxHashMap<u64, Vec<RowRef>> = Default::default();
        let first = Arc::new(ResultColumns::new(&batch.slice(0, 8), &[]).unwrap());
        recent.read(&first);
        // One row each of exchanges 1 and 0 waits for the rest.
        pending.insert(1, vec![RowRef::new(&first, 5)]);
        pending.insert(0, vec![RowRef::new(&first, 2)]);
        for k in 1..=HELD_BATCHES {
            let next = Arc::new(ResultColumns::new(&batch.slice(8 * k, 8), &[]).unwrap());
            recent.read(&next);
            recent.release(&mut pending).unwrap();
        }
        assert_eq!(Arc::strong_count(&first), 1, "the batch is let go");
        let (a, b) = (&pending[&1][0], &pending[&0][0]);
        assert!(Arc::ptr_eq(&a.cols, &b.cols), "one copy for the batch");
        assert_eq!(a.cols.len(), 2);
        assert_eq!(format!("{:?}", a.to_row()), format!("{:?}", rows[5]));
        assert_eq!(format!("{:?}", b.to_row()), format!("{:?}", rows[2]));
    }
}
