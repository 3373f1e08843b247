//! What each target cost while it was replayed to, from the metrics files
//! `replay --metrics/--pid/--cgroup` wrote: CPU (cores, and CPU time per
//! answer), memory (peak, and growth with its interval, so a leak shows),
//! GPU, the cores needed at the capture's busiest second, and which metric
//! families the shadow stopped (or started) exposing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::config::Gate;
use crate::report::{Growth, MeanP95, Outcome, Reason, ResourceSeries, Resources, Telemetry};
use crate::schema::{MetricKind, MetricRow, ReplayResult, TargetRole};

/// Width of the buckets answers are counted in, to find those inside a
/// sampling window (10 ms: a window's edges are off by at most that).
const ANSWER_BUCKET_NS: i64 = 10_000_000;
/// The first part of the sampled time left out of the memory slope: start-up
/// allocations and warming caches are not a leak.
const WARM_UP_FRACTION: f64 = 0.2;
/// Readings kept before the first and after the last answer of a target.
const WINDOW_MARGIN_NS: i64 = 1_000_000_000;
/// Samples (after warm-up) a slope needs.
const MIN_SLOPE_SAMPLES: usize = 5;

/// Families that measure the same thing, in order of preference, and how
/// their values combine across label sets and convert to the report's unit.
struct Measure {
    families: &'static [(&'static str, f64)],
    /// Several label sets (GPUs, containers): summed, or averaged.
    sum: bool,
}

const CPU: Measure = Measure {
    families: &[
        ("process_cpu_seconds_total", 1.0),
        ("container_cpu_usage_seconds_total", 1.0),
    ],
    sum: true,
};
/// In MB (10^6 bytes).
const MEMORY: Measure = Measure {
    families: &[
        ("process_resident_memory_bytes", 1e-6),
        ("container_memory_working_set_bytes", 1e-6),
    ],
    sum: true,
};
/// In percent.
const GPU_UTIL: Measure = Measure {
    families: &[("DCGM_FI_DEV_GPU_UTIL", 1.0), ("nv_gpu_utilization", 100.0)],
    sum: false,
};
/// In MB: DCGM reports MiB.
const GPU_MEMORY: Measure = Measure {
    families: &[
        ("DCGM_FI_DEV_FB_USED", 1.048_576),
        ("nv_gpu_memory_used_bytes", 1e-6),
    ],
    sum: true,
};

/// Sources in order of preference for one target measured several ways: a
/// process tree and a cgroup are read directly; an endpoint reports on
/// itself.
const SOURCES: [&str; 3] = ["pid", "cgroup", "prometheus"];

/// When the replayed targets answered, and how busy the capture was:
/// collected while `diff` folds the results (only with metrics files).
#[derive(Default)]
pub(crate) struct AnswerTimes {
    /// Per target: answers by 10 ms bucket of their last byte.
    answers: HashMap<String, BTreeMap<i64, u32>>,
    /// Requests per second of the capture (recorded rows' request times),
    /// else of the primary's schedule.
    capture_seconds: BTreeMap<i64, u32>,
    schedule_seconds: BTreeMap<i64, u32>,
    pub roles: BTreeMap<String, &'static str>,
}

impl AnswerTimes {
    /// The first and last answer of `target` (ns), if it answered.
    fn answering(&self, target: &str) -> Option<(i64, i64)> {
        let b = self.answers.get(target)?;
        Some((
            b.keys().next()? * ANSWER_BUCKET_NS,
            (b.keys().next_back()? + 1) * ANSWER_BUCKET_NS,
        ))
    }

    pub fn add(&mut self, rows: &[ReplayResult]) {
        for r in rows {
            let role = r.role.map_or("primary", TargetRole::as_str);
            if !self.roles.contains_key(&r.target_name) {
                self.roles.insert(r.target_name.clone(), role);
            }
            match r.role {
                Some(TargetRole::Recorded) => {
                    if let Some(t) = r.sent_ts {
                        *self
                            .capture_seconds
                            .entry(t.div_euclid(1_000_000_000))
                            .or_default() += 1;
                    }
                }
                _ => {
                    if r.role == Some(TargetRole::Primary) || r.role.is_none() {
                        *self
                            .schedule_seconds
                            .entry(r.due_ts.div_euclid(1_000_000_000))
                            .or_default() += 1;
                    }
                    if let (Some(done), Some(_)) = (r.done_ts, r.status) {
                        *self
                            .answers
                            .entry(r.target_name.clone())
                            .or_default()
                            .entry(done.div_euclid(ANSWER_BUCKET_NS))
                            .or_default() += 1;
                    }
                }
            }
        }
    }

    fn answers_between(&self, target: &str, from: i64, to: i64) -> u64 {
        self.answers.get(target).map_or(0, |b| {
            b.range(from.div_euclid(ANSWER_BUCKET_NS)..=to.div_euclid(ANSWER_BUCKET_NS))
                .map(|(_, &n)| u64::from(n))
                .sum()
        })
    }

    /// Requests in the busiest second of the capture (of the replay's
    /// schedule when the capture's own times are not in the results).
    fn peak_per_second(&self) -> Option<f64> {
        let seconds = if self.capture_seconds.is_empty() {
            &self.schedule_seconds
        } else {
            &self.capture_seconds
        };
        seconds.values().max().map(|&n| f64::from(n))
    }
}

/// A time series: (ns, value) in time order.
type Series = Vec<(i64, f64)>;

/// One reading of a measure: its label set, time and scaled value.
type Reading<'r> = (&'r [(String, String)], i64, f64);

/// The readings of one measure for one target, from the preferred source
/// that has any (finite values only), with that source's name. An endpoint
/// that exposes cAdvisor's containers (an `id` label) is read for them
/// first: its `process_*` families are cAdvisor's own process.
fn readings<'r>(rows: &[&'r MetricRow], m: &Measure) -> Option<(&'static str, Vec<Reading<'r>>)> {
    for source in SOURCES {
        let of = |r: &MetricRow, family: &str| {
            r.kind == MetricKind::Sample && r.source == source && r.family == family
        };
        let cadvisor = m.families.iter().any(|&(family, _)| {
            family.starts_with("container_")
                && rows
                    .iter()
                    .any(|r| of(r, family) && label(&r.labels, "id").is_some())
        });
        let mut families = m.families.to_vec();
        if cadvisor {
            families.sort_by_key(|(family, _)| !family.starts_with("container_"));
        }
        for (family, scale) in families {
            let mut chosen: Vec<&MetricRow> =
                rows.iter().copied().filter(|r| of(r, family)).collect();
            if family.starts_with("container_") {
                drop_cadvisor_holders(&mut chosen);
            }
            let found: Vec<_> = chosen
                .into_iter()
                .filter_map(|r| {
                    let v = r.value.filter(|v| v.is_finite())?;
                    Some((&r.labels[..], r.ts, v * scale))
                })
                .collect();
            if !found.is_empty() {
                return Some((source, found));
            }
        }
    }
    None
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Leave out the `container_*` series of cgroups that hold other series:
/// cAdvisor (the kubelet's, or standalone) exposes a pod's own cgroup, the
/// QoS and system slices and the root (`id="/"`) beside the containers in
/// them, each repeating what it holds, so summed with them a pod's usage
/// would count two or three times. A cgroup holds another when its `id` is
/// a path prefix of the other's in any reading of the run: a pod whose
/// container is restarting (gone for a reading) is not counted for that
/// reading alone, which would book its whole CPU again at the next one.
/// Pause containers (`container="POD"`, `container_name="POD"`) go too.
/// Which series stay is decided by the ids alone, so a runtime that gives
/// containers no `image` (k3s, minikube) or a selector that kept only a
/// pod's own cgroup still has its series counted. Series without an `id`
/// stay.
fn drop_cadvisor_holders(rows: &mut Vec<&MetricRow>) {
    let pause = |r: &MetricRow| {
        ["container", "container_name"]
            .iter()
            .any(|k| label(&r.labels, k) == Some("POD"))
    };
    // A path without its trailing slashes; the root is "/".
    let norm = |id: &str| -> String {
        match id.trim_end_matches('/') {
            "" => "/".to_string(),
            t => t.to_string(),
        }
    };
    let ids: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| label(&r.labels, "id"))
        .map(norm)
        .collect();
    let mut holders: std::collections::HashSet<String> = Default::default();
    for id in &ids {
        // Every ancestor path of this id holds it (the root has none).
        let mut path = if id == "/" { "" } else { id.as_str() };
        while let Some(cut) = path.rfind('/') {
            path = &path[..cut];
            if !holders.insert(norm(path)) {
                break; // its ancestors are in already
            }
        }
    }
    rows.retain(|r| {
        let holds = label(&r.labels, "id").is_some_and(|id| holders.contains(&norm(id)));
        !holds && !pause(r)
    });
}

/// The series of one measure for one target, from the preferred source
/// that has it: label sets combined per reading.
fn series(rows: &[&MetricRow], m: &Measure) -> Option<(String, Series)> {
    let (source, found) = readings(rows, m)?;
    let mut by_ts: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
    for (_, ts, v) in found {
        let e = by_ts.entry(ts).or_default();
        e.0 += v;
        e.1 += 1;
    }
    let points = by_ts
        .into_iter()
        .map(|(t, (sum, n))| (t, if m.sum { sum } else { sum / f64::from(n) }))
        .collect();
    Some((source.to_string(), points))
}

/// Increments of a counter between readings, each label set on its own and
/// then summed: a reset, or a set first seen mid-run (a container started),
/// changes only its own count, as Prometheus's `increase()` has it. Summed
/// first, one container's restart would count every other's total again.
fn counter_increments(rows: &[&MetricRow], m: &Measure) -> Vec<(i64, f64, f64)> {
    let Some((source, found)) = readings(rows, m) else {
        return Vec::new();
    };
    let mut sets: BTreeMap<&[(String, String)], Series> = BTreeMap::new();
    for (labels, ts, v) in found {
        sets.entry(labels).or_default().push((ts, v));
    }
    // Every reading's time, so an interval where nothing grew counts.
    let times: BTreeSet<i64> = sets.values().flatten().map(|p| p.0).collect();
    let mut grew: BTreeMap<i64, f64> = times.iter().skip(1).map(|&t| (t, 0.0)).collect();
    for set in sets.values_mut() {
        set.sort_by_key(|p| p.0);
        for (end, _, d) in increments(set, source) {
            *grew.entry(end).or_default() += d;
        }
    }
    let mut prev = times.first().copied().unwrap_or(0);
    grew.into_iter()
        .map(|(t, d)| {
            let dt = (t - prev) as f64 / 1e9;
            prev = t;
            (t, dt, d)
        })
        .collect()
}

/// Increments of a counter between readings: (end time, seconds elapsed,
/// increase). A drop is a restart of an endpoint or a cgroup's counter
/// (counting from zero). Summed over a process tree (`pid`), a drop is a
/// child that left the tree with its time, or one reaped between the
/// reading of its parent and its own, whose time then shows again in its
/// parent's at the next reading: a drop counts no increase, and the next
/// rise is counted less what dropped (at most that one rise, so a child
/// that left for good costs one interval, not the run).
fn increments(points: &Series, source: &str) -> Vec<(i64, f64, f64)> {
    let mut owed = 0.0;
    points
        .windows(2)
        .filter_map(|w| {
            let dt = (w[1].0 - w[0].0) as f64 / 1e9;
            let d = match (w[1].1 >= w[0].1, source) {
                (false, "pid") => {
                    owed = w[0].1 - w[1].1;
                    0.0
                }
                (true, "pid") => (w[1].1 - w[0].1 - std::mem::take(&mut owed)).max(0.0),
                (true, _) => w[1].1 - w[0].1,
                (false, _) => w[1].1,
            };
            (dt > 0.0).then_some((w[1].0, dt, d))
        })
        .collect()
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

fn mean_p95(v: Vec<f64>) -> Option<MeanP95> {
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Some(MeanP95 {
        mean,
        p95: quantile(v, 0.95),
    })
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom
/// (Cornish-Fisher expansion around the normal: within 1% at df = 3, 0.1%
/// from df = 10).
pub(crate) fn t_975(df: f64) -> f64 {
    let z: f64 = 1.959_963_985;
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * df)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df * df)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * df.powi(3))
}

/// Newey-West long-run variance of the sum of `scores` (Bartlett weights,
/// the usual lag 4(n/100)^(2/9)), scaled by n/(n-2) for the two fitted
/// parameters.
fn newey_west(scores: &[f64], n: f64) -> f64 {
    let lags = (4.0 * (n / 100.0).powf(2.0 / 9.0)).floor() as usize;
    let mut v: f64 = scores.iter().map(|s| s * s).sum();
    for l in 1..=lags.min(scores.len().saturating_sub(1)) {
        let w = 1.0 - l as f64 / (lags as f64 + 1.0);
        let c: f64 = scores[l..].iter().zip(scores).map(|(a, b)| a * b).sum();
        v += 2.0 * w * c;
    }
    v.max(0.0) * n / (n - 2.0)
}

/// Least-squares slope of memory (MB) against time (hours) after the
/// warm-up, with its 95% interval (Newey-West standard error, t quantile).
pub(crate) fn growth(points: &Series) -> Option<Growth> {
    let (first, last) = (points.first()?.0, points.last()?.0);
    let cut = first + ((last - first) as f64 * WARM_UP_FRACTION) as i64;
    let kept: Vec<(f64, f64)> = points
        .iter()
        .filter(|(t, _)| *t >= cut)
        .map(|&(t, v)| ((t - cut) as f64 / 3.6e12, v))
        .collect();
    let n = kept.len();
    if n < MIN_SLOPE_SAMPLES {
        return None;
    }
    let nf = n as f64;
    let (mx, my) = (
        kept.iter().map(|p| p.0).sum::<f64>() / nf,
        kept.iter().map(|p| p.1).sum::<f64>() / nf,
    );
    let sxx: f64 = kept.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = kept.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    // Memory readings are autocorrelated (an allocation pattern drifts
    // against the sampling ticks), and the plain least-squares error would
    // then be too small: Newey-West's estimate allows for it.
    let scores: Vec<f64> = kept
        .iter()
        .map(|p| (p.0 - mx) * (p.1 - my - slope * (p.0 - mx)))
        .collect();
    let se = newey_west(&scores, nf).sqrt() / sxx;
    let half = t_975(nf - 2.0) * se;
    Some(Growth {
        slope,
        ci: [slope - half, slope + half],
        samples: n as u64,
    })
}

/// Everything about one target's resource use.
fn target_resources(
    name: &str,
    rows: &[&MetricRow],
    times: &AnswerTimes,
    peak: Option<f64>,
) -> Resources {
    let cpu = series(rows, &CPU);
    let memory = series(rows, &MEMORY);
    let gpu = series(rows, &GPU_UTIL);
    let gpu_memory = series(rows, &GPU_MEMORY);
    let incs = counter_increments(rows, &CPU);
    let cpu_seconds: f64 = incs.iter().map(|i| i.2).sum();
    let answers = cpu
        .as_ref()
        .filter(|(_, s)| s.len() >= 2)
        .map_or(0, |(_, s)| {
            times.answers_between(name, s[0].0, s[s.len() - 1].0)
        });
    // No CPU at all while answering means the source does not see the
    // serving process (a wrapper pid, a sidecar's endpoint): not measured.
    let cpu_ms_per_request = (answers > 0 && incs.len() >= 2 && cpu_seconds > 0.0)
        .then(|| cpu_seconds * 1e3 / answers as f64);
    let peak_memory = memory
        .as_ref()
        .map(|(_, s)| s.iter().map(|p| p.1).fold(f64::MIN, f64::max));
    let start = rows.iter().map(|r| r.ts).min().unwrap_or(0);
    let memory_measure = memory_measure(rows);
    Resources {
        role: times
            .roles
            .get(name)
            .copied()
            .unwrap_or("unknown")
            .to_string(),
        source: cpu.as_ref().or(memory.as_ref()).map(|(s, _)| s.clone()),
        samples: rows.iter().filter(|r| r.kind == MetricKind::Sample).count() as u64,
        scrape_failures: rows.iter().filter(|r| r.kind == MetricKind::Error).count() as u64,
        first_failure: rows
            .iter()
            .find(|r| r.kind == MetricKind::Error)
            .and_then(|r| r.detail.clone()),
        cpu_cores: mean_p95(incs.iter().map(|i| i.2 / i.1).collect()),
        cpu_ms_per_request,
        answers_in_window: answers,
        memory_peak_mb: peak_memory,
        memory_measure,
        memory_growth_mb_per_hour: memory.as_ref().and_then(|(_, s)| growth(s)),
        gpu_util: gpu.and_then(|(_, s)| mean_p95(s.iter().map(|p| p.1).collect())),
        gpu_memory_peak_mb: gpu_memory.map(|(_, s)| s.iter().map(|p| p.1).fold(f64::MIN, f64::max)),
        peak_requests_per_s: peak,
        capacity_cores_at_peak: cpu_ms_per_request.zip(peak).map(|(ms, rps)| ms / 1e3 * rps),
        series: ResourceSeries {
            t_s: incs.iter().map(|i| (i.0 - start) as f64 / 1e9).collect(),
            cpu_cores: incs.iter().map(|i| i.2 / i.1).collect(),
            memory_t_s: memory
                .as_ref()
                .map(|(_, s)| s.iter().map(|p| (p.0 - start) as f64 / 1e9).collect())
                .unwrap_or_default(),
            memory_mb: memory
                .map(|(_, s)| s.iter().map(|p| p.1).collect())
                .unwrap_or_default(),
        },
    }
}

/// What a process tree's memory readings measured (their `measure`
/// label: `pss` or `rss`), if they say.
fn memory_measure(rows: &[&MetricRow]) -> Option<String> {
    let (source, found) = readings(rows, &MEMORY)?;
    if source != "pid" {
        return None;
    }
    let kinds: BTreeSet<&str> = found
        .iter()
        .filter_map(|(labels, _, _)| labels.iter().find(|(k, _)| k == "measure"))
        .map(|(_, v)| v.as_str())
        .collect();
    (!kinds.is_empty()).then(|| kinds.into_iter().collect::<Vec<_>>().join(" and "))
}

/// The families (with label names) a target's endpoint exposed, from its
/// first and last scrape, and whether the last one is among them.
fn exposed(rows: &[&MetricRow]) -> Option<(BTreeMap<String, BTreeSet<String>>, bool)> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last = false;
    for r in rows.iter().filter(|r| r.kind == MetricKind::Family) {
        let detail = r
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
        last |= detail.as_ref().is_some_and(|v| v["scrape"] == "last");
        let labels = detail
            .and_then(|v| {
                v["labels"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
            })
            .unwrap_or_default();
        out.entry(family_name(&r.family))
            .or_default()
            .extend(labels);
    }
    (!out.is_empty()).then_some((out, last))
}

/// One name for a family whichever exposition format was negotiated: the
/// text format types a counter as `x_total` (its `x_created` apart), while
/// OpenMetrics names the family `x`.
fn family_name(name: &str) -> String {
    ["_total", "_created"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
        .to_string()
}

/// Families (and label names) the primary exposes and the shadow does not,
/// and new ones in the shadow.
fn parity(
    primary: &BTreeMap<String, BTreeSet<String>>,
    shadow: &BTreeMap<String, BTreeSet<String>>,
) -> Telemetry {
    let missing_in_shadow = primary
        .keys()
        .filter(|f| !shadow.contains_key(*f))
        .cloned()
        .collect();
    let added_in_shadow = shadow
        .keys()
        .filter(|f| !primary.contains_key(*f))
        .cloned()
        .collect();
    let mut labels_missing_in_shadow = Vec::new();
    for (family, labels) in primary {
        if let Some(theirs) = shadow.get(family) {
            for l in labels.difference(theirs) {
                labels_missing_in_shadow.push(format!("{family}{{{l}}}"));
            }
        }
    }
    Telemetry {
        missing_in_shadow,
        added_in_shadow,
        labels_missing_in_shadow,
        unjudged: None,
    }
}

/// Resources per target and telemetry parity per shadow.
pub(crate) fn summarize(
    rows: &[MetricRow],
    times: &AnswerTimes,
) -> (BTreeMap<String, Resources>, BTreeMap<String, Telemetry>) {
    let mut by_target: BTreeMap<&str, Vec<&MetricRow>> = BTreeMap::new();
    for r in rows {
        by_target.entry(r.target.as_str()).or_default().push(r);
    }
    let peak = times.peak_per_second();
    let resources: BTreeMap<String, Resources> = by_target
        .iter()
        .map(|(name, rows)| {
            // Readings from while the target was answering: the start-up a
            // shadow spends loading its model before --health-path lets the
            // replay begin is not a cost of serving.
            let kept: Vec<&MetricRow> = match times.answering(name) {
                Some((first, last)) => rows
                    .iter()
                    .copied()
                    .filter(|r| r.ts >= first - WINDOW_MARGIN_NS && r.ts <= last + WINDOW_MARGIN_NS)
                    .collect(),
                None => rows.clone(),
            };
            (name.to_string(), target_resources(name, &kept, times, peak))
        })
        .collect();
    let mut telemetry = BTreeMap::new();
    let primary_name = times
        .roles
        .iter()
        .find(|(_, &r)| r == "primary")
        .map_or("primary", |(n, _)| n.as_str());
    if let Some(primary) = by_target.get(primary_name).and_then(|r| exposed(r)) {
        for (name, rows) in &by_target {
            if times.roles.get(*name) != Some(&"shadow") {
                continue;
            }
            if let Some(shadow) = exposed(rows) {
                let mut t = parity(&primary.0, &shadow.0);
                let lacking: Vec<&str> = [(primary.1, primary_name), (shadow.1, *name)]
                    .iter()
                    .filter(|(last, _)| !last)
                    .map(|(_, n)| *n)
                    .collect();
                if !lacking.is_empty() {
                    t.unjudged = Some(format!(
                        "no families from the last scrape of {} (it failed, or the run was shorter than two --metrics-interval): families first used by the traffic are not in the first scrape",
                        lacking.join(" and ")
                    ));
                }
                telemetry.insert(name.to_string(), t);
            }
        }
    }
    (resources, telemetry)
}

/// The resource criteria for each shadow against the primary. Without
/// metrics files none is judged (the report says so instead).
pub(crate) fn reasons(
    resources: &BTreeMap<String, Resources>,
    telemetry: &BTreeMap<String, Telemetry>,
    shadows: &[String],
    g: &Gate,
) -> Vec<Reason> {
    if resources.is_empty() {
        return Vec::new();
    }
    // A side that was not sampled is judged on nothing: its figures are
    // absent and each criterion says so (inconclusive).
    let unmeasured = Resources::unmeasured();
    let primary = resources
        .values()
        .find(|r| r.role == "primary")
        .unwrap_or(&unmeasured);
    let mut out = Vec::new();
    for name in shadows {
        let s = resources.get(name).unwrap_or(&unmeasured);
        let start = out.len();
        push_ratios(&mut out, name, s, primary, g);
        // A process tree, a cgroup and an endpoint's report on itself do
        // not measure the same thing: such ratios are not judged.
        if let (Some(mine), Some(theirs)) = (&s.source, &primary.source) {
            if mine != theirs {
                for r in &mut out[start..] {
                    r.outcome = Outcome::Inconclusive;
                    r.passed = false;
                    r.detail = format!(
                        "{}; not comparable: the primary was sampled by {theirs}, the shadow by {mine} (sample both the same way)",
                        r.detail
                    );
                }
            }
        }
        // PSS divides shared pages (a model's weights mapped by every
        // worker) among the processes; RSS counts them in each.
        if let (Some(mine), Some(theirs)) = (&s.memory_measure, &primary.memory_measure) {
            if mine != theirs {
                for r in out[start..]
                    .iter_mut()
                    .filter(|r| r.criterion == "memory_ratio")
                {
                    r.outcome = Outcome::Inconclusive;
                    r.passed = false;
                    r.detail = format!(
                        "{}; not comparable: the primary's memory is {theirs}, the shadow's {mine} (PSS needs read access to each process's smaps_rollup: sample both as the same user, or as root)",
                        r.detail
                    );
                }
            }
        }
        push_others(&mut out, name, s, telemetry, g);
    }
    out
}

/// The ratio criteria of one shadow against the primary.
fn push_ratios(out: &mut Vec<Reason>, name: &str, s: &Resources, primary: &Resources, g: &Gate) {
    if let Some(limit) = g.max_cpu_per_request_ratio {
        out.push(ratio_reason(
            "cpu_per_request_ratio",
            name,
            s.cpu_ms_per_request,
            primary.cpu_ms_per_request,
            limit,
            "CPU per answer",
            "ms",
        ));
    }
    if let Some(limit) = g.max_memory_ratio {
        out.push(ratio_reason(
            "memory_ratio",
            name,
            s.memory_peak_mb,
            primary.memory_peak_mb,
            limit,
            "peak memory",
            "MB",
        ));
    }
    if let (Some(limit), Some(_)) = (
        g.max_gpu_memory_ratio,
        s.gpu_memory_peak_mb.or(primary.gpu_memory_peak_mb),
    ) {
        out.push(ratio_reason(
            "gpu_memory_ratio",
            name,
            s.gpu_memory_peak_mb,
            primary.gpu_memory_peak_mb,
            limit,
            "peak GPU memory",
            "MB",
        ));
    }
}

/// The growth and telemetry criteria of one shadow.
fn push_others(
    out: &mut Vec<Reason>,
    name: &str,
    s: &Resources,
    telemetry: &BTreeMap<String, Telemetry>,
    g: &Gate,
) {
    if let Some(limit) = g.max_memory_growth_mb_per_hour {
        out.push(growth_reason(
            name,
            s.memory_growth_mb_per_hour.as_ref(),
            limit,
        ));
    }
    if g.require_telemetry_parity {
        out.push(parity_reason(name, telemetry.get(name)));
    }
}

fn ratio_reason(
    criterion: &str,
    shadow: &str,
    mine: Option<f64>,
    theirs: Option<f64>,
    limit: f64,
    what: &str,
    unit: &str,
) -> Reason {
    let (observed, outcome, detail) = match (mine, theirs) {
        (Some(m), Some(p)) if p > 0.0 => {
            let ratio = m / p;
            let outcome = if ratio <= limit { Outcome::Pass } else { Outcome::Fail };
            let (shown, limit) = super::verdict::apart(ratio, limit);
            (
                ratio,
                outcome,
                format!("{what} {m:.3} {unit} shadow vs {p:.3} {unit} primary: ratio {shown}, limit {limit}"),
            )
        }
        _ => (
            f64::NAN,
            Outcome::Inconclusive,
            format!(
                "{what} not measured on both sides (shadow {}, primary {}): sample both with --metrics, --pid or --cgroup",
                shown(mine, unit),
                shown(theirs, unit)
            ),
        ),
    };
    super::verdict::reason(criterion, None, shadow, observed, limit, outcome, detail)
}

/// A measured figure with its unit, or that it was not measured.
fn shown(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "not measured".to_string(), |v| format!("{v:.3} {unit}"))
}

fn growth_reason(shadow: &str, g: Option<&Growth>, limit: f64) -> Reason {
    let (observed, outcome, detail) = match g {
        Some(g) => {
            let outcome = if g.ci[0] > limit {
                Outcome::Fail
            } else if g.ci[1] <= limit {
                Outcome::Pass
            } else {
                Outcome::Inconclusive
            };
            (g.slope, outcome, {
                let (slope, limit) = super::verdict::apart_at(g.slope, limit, 1);
                format!(
                        "memory grows {slope} MB/h (95% CI {:.1} to {:.1}, {} samples after warm-up), limit {limit} MB/h",
                        g.ci[0], g.ci[1], g.samples
                    )
            })
        }
        None => (
            f64::NAN,
            Outcome::Inconclusive,
            format!(
                "too few memory samples for a growth rate (need {MIN_SLOPE_SAMPLES} after warm-up)"
            ),
        ),
    };
    super::verdict::reason(
        "memory_growth",
        None,
        shadow,
        observed,
        limit,
        outcome,
        detail,
    )
}

fn parity_reason(shadow: &str, t: Option<&Telemetry>) -> Reason {
    let (observed, outcome, detail) = match t {
        Some(Telemetry {
            unjudged: Some(why),
            ..
        }) => (f64::NAN, Outcome::Inconclusive, why.clone()),
        Some(t) => {
            let lost = t.missing_in_shadow.len() + t.labels_missing_in_shadow.len();
            let detail = if lost == 0 {
                "every metric family and label of the primary is exposed by the shadow".to_string()
            } else {
                let mut all: Vec<&str> = t.missing_in_shadow.iter().map(String::as_str).collect();
                all.extend(t.labels_missing_in_shadow.iter().map(String::as_str));
                format!("missing in the shadow: {}", all.join(", "))
            };
            (
                lost as f64,
                if lost == 0 {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                },
                detail,
            )
        }
        None => (
            f64::NAN,
            Outcome::Inconclusive,
            "no metric families from both primary and shadow (--metrics on both)".to_string(),
        ),
    };
    super::verdict::reason(
        "telemetry_parity",
        None,
        shadow,
        observed,
        0.0,
        outcome,
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(step_s: f64, values: &[f64]) -> Series {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| ((i as f64 * step_s * 1e9) as i64, v))
            .collect()
    }

    #[test]
    fn t_quantiles_match_tables() {
        for (df, want) in [
            (3.0, 3.182),
            (5.0, 2.571),
            (10.0, 2.228),
            (30.0, 2.042),
            (1000.0, 1.962),
        ] {
            assert!(
                (t_975(df) / want - 1.0).abs() < 0.01,
                "df {df}: {}",
                t_975(df)
            );
        }
    }

    #[test]
    fn a_steady_leak_has_its_rate_inside_the_interval_and_flat_memory_does_not() {
        // 3.6 MB per hour is 0.001 MB per second: 100 readings a second
        // apart, with a little noise.
        let noisy: Vec<f64> = (0..100)
            .map(|i| 500.0 + 0.001 * i as f64 + [0.0003, -0.0002, 0.0001, -0.0004][i % 4])
            .collect();
        let g = growth(&points(1.0, &noisy)).unwrap();
        assert!(g.ci[0] < 3.6 && 3.6 < g.ci[1], "{g:?}");
        assert!(g.ci[0] > 0.0, "{g:?}");
        let flat: Vec<f64> = (0..100)
            .map(|i| 500.0 + [0.3, -0.2, 0.1, -0.4][i % 4])
            .collect();
        let g = growth(&points(1.0, &flat)).unwrap();
        assert!(g.ci[0] < 0.0 && g.ci[1] > 0.0, "{g:?}");
        assert!(growth(&points(1.0, &[1.0, 2.0, 3.0])).is_none());
    }

    #[test]
    fn counter_resets_count_from_zero() {
        let s = points(1.0, &[10.0, 10.5, 11.0, 0.2, 0.7]);
        let total: f64 = increments(&s, "prometheus").iter().map(|i| i.2).sum();
        // 0.5 + 0.5, then the restart's 0.2 from zero, then 0.5.
        assert!((total - 1.7).abs() < 1e-9, "{total}");
        // A process tree whose worker (3 s of CPU) was reaped between the
        // reading of its parent and its own: the next reading has the 3 s
        // in the parent's time. Only the 0.5 + 0.5 s of new work counts.
        let s = points(1.0, &[10.0, 10.5, 7.5, 11.0]);
        let total: f64 = increments(&s, "pid").iter().map(|i| i.2).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // A child that left for good with its 3 s: no restart, and only
        // the next interval's 0.5 s is lost, not everything until the
        // tree's total passes what it was.
        let s = points(1.0, &[10.0, 10.5, 7.5, 8.0, 11.0]);
        let total: f64 = increments(&s, "pid").iter().map(|i| i.2).sum();
        assert!((total - 3.5).abs() < 1e-9, "{total}");
    }

    /// The shadow's last scrape failed: its families come from before the
    /// traffic, where a labelled family is not yet seen; not a lost family.
    #[test]
    fn parity_without_a_sides_last_scrape_is_not_judged() {
        let family = |target: &str, name: &str, at: &str| MetricRow {
            ts: if at == "first" { 0 } else { 9_000_000_000 },
            target: target.into(),
            source: "prometheus".into(),
            kind: MetricKind::Family,
            family: name.into(),
            labels: Vec::new(),
            value: None,
            detail: Some(
                serde_json::json!({"scrape": at, "type": "counter", "labels": []}).to_string(),
            ),
            scrape_ms: None,
        };
        let mut times = AnswerTimes::default();
        times.roles.insert("primary".into(), "primary");
        times.roles.insert("v2".into(), "shadow");
        let mut rows = vec![
            family("primary", "up", "first"),
            family("primary", "up", "last"),
            family("primary", "model_predictions", "last"),
            family("v2", "up", "first"),
        ];
        let (_, t) = summarize(&rows, &times);
        let r = parity_reason("v2", t.get("v2"));
        assert_eq!(r.outcome, Outcome::Inconclusive, "{}", r.detail);
        assert!(r.detail.contains("last scrape of v2"), "{}", r.detail);
        // With the shadow's last scrape, the lost family fails.
        rows.push(family("v2", "up", "last"));
        let (_, t) = summarize(&rows, &times);
        let r = parity_reason("v2", t.get("v2"));
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.detail);
        assert!(r.detail.contains("model_predictions"), "{}", r.detail);
    }

    #[test]
    fn one_label_sets_reset_counts_only_its_own_increase() {
        let row = |t: i64, container: &str, v: f64| MetricRow {
            ts: t * 1_000_000_000,
            target: "v2".into(),
            source: "prometheus".into(),
            kind: MetricKind::Sample,
            family: "container_cpu_usage_seconds_total".into(),
            labels: vec![("container".into(), container.into())],
            value: Some(v),
            detail: None,
            scrape_ms: None,
        };
        // a: 1000 s, +1 a second. b: 10 s, +1, then restarts (0.5).
        // c: appears at the third reading with its lifetime's 500 s.
        let rows = vec![
            row(0, "a", 1000.0),
            row(0, "b", 10.0),
            row(1, "a", 1001.0),
            row(1, "b", 11.0),
            row(2, "a", 1002.0),
            row(2, "b", 0.5),
            row(2, "c", 500.0),
            row(3, "a", 1003.0),
            row(3, "b", 1.5),
            row(3, "c", 501.0),
        ];
        let refs: Vec<&MetricRow> = rows.iter().collect();
        let incs = counter_increments(&refs, &CPU);
        let per_interval: Vec<f64> = incs.iter().map(|i| i.2).collect();
        assert_eq!(per_interval, vec![2.0, 1.5, 3.0]);
        assert!(incs.iter().all(|i| (i.1 - 1.0).abs() < 1e-12), "{incs:?}");
    }

    /// Kubelet's cAdvisor exposes a pod's containers with the pod's own
    /// cgroup, its pause container and the root beside them: only the
    /// containers are summed, or the pod's usage would count three times.
    #[test]
    fn cadvisor_cgroups_that_hold_containers_are_not_summed_with_them() {
        let row = |t: i64, labels: &[(&str, &str)], v: f64| MetricRow {
            ts: t * 1_000_000_000,
            target: "primary".into(),
            source: "prometheus".into(),
            kind: MetricKind::Sample,
            family: "container_cpu_usage_seconds_total".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: Some(v),
            detail: None,
            scrape_ms: None,
        };
        let server = [
            ("id", "/kubepods/podA/c1"),
            ("container", "server"),
            ("image", "model:v1"),
            ("pod", "model-0"),
        ];
        let sidecar = [
            ("id", "/kubepods/podA/c2"),
            ("container", "proxy"),
            ("image", "envoy"),
            ("pod", "model-0"),
        ];
        let pod = [
            ("id", "/kubepods/podA"),
            ("container", ""),
            ("image", ""),
            ("pod", "model-0"),
        ];
        let pause = [
            ("id", "/kubepods/podA/p"),
            ("container", "POD"),
            ("image", "pause"),
            ("pod", "model-0"),
        ];
        let root = [("id", "/")];
        let mut rows = Vec::new();
        for t in 0..3 {
            let (a, b) = (10.0 + t as f64, 5.0 + 0.5 * t as f64);
            rows.push(row(t, &server, a));
            rows.push(row(t, &sidecar, b));
            rows.push(row(t, &pod, a + b + 0.1));
            rows.push(row(t, &pause, 0.1));
            rows.push(row(t, &root, 100.0 + 3.0 * t as f64));
        }
        let refs: Vec<&MetricRow> = rows.iter().collect();
        let per_interval: Vec<f64> = counter_increments(&refs, &CPU)
            .iter()
            .map(|i| i.2)
            .collect();
        assert_eq!(per_interval, vec![1.5, 1.5]);
        // A family laid out otherwise (no `id`) is summed whole, as before.
        let plain: Vec<MetricRow> = (0..2)
            .flat_map(|t| {
                [
                    row(t, &[("container", "")], t as f64),
                    row(t, &[("container", "x")], t as f64),
                ]
            })
            .collect();
        let refs: Vec<&MetricRow> = plain.iter().collect();
        assert_eq!(counter_increments(&refs, &CPU)[0].2, 2.0);
        // k3s and minikube give containers no `image` and no `container`
        // name: their ids still say which cgroup holds which.
        let k3s = |t: i64, id: &str, v: f64| {
            row(
                t,
                &[("id", id), ("container", ""), ("image", ""), ("pod", "")],
                v,
            )
        };
        let rows: Vec<MetricRow> = (0..2)
            .flat_map(|t| {
                let t64 = t as f64;
                [
                    k3s(t, "/kubepods/besteffort/podA/c1", 10.0 + t64),
                    k3s(t, "/kubepods/besteffort/podA/c2/", 20.0 + 2.0 * t64),
                    k3s(t, "/kubepods/besteffort/podA", 30.0 + 3.0 * t64),
                    k3s(t, "/kubepods/besteffort", 30.0 + 3.0 * t64),
                ]
            })
            .collect();
        let refs: Vec<&MetricRow> = rows.iter().collect();
        assert_eq!(counter_increments(&refs, &CPU)[0].2, 3.0);
        // A pod's own cgroup alone (what a selector kept) is counted.
        let refs: Vec<&MetricRow> = rows
            .iter()
            .filter(|r| r.labels[0].1 == "/kubepods/besteffort/podA")
            .collect();
        assert_eq!(counter_increments(&refs, &CPU)[0].2, 3.0);
        // Standalone cAdvisor also exposes its own process: the containers
        // are what is measured.
        let mut with_process = rows.clone();
        with_process.extend((0..2).map(|t| MetricRow {
            family: "process_cpu_seconds_total".into(),
            labels: Vec::new(),
            ..row(t, &[], 100.0 * t as f64)
        }));
        let refs: Vec<&MetricRow> = with_process.iter().collect();
        assert_eq!(counter_increments(&refs, &CPU)[0].2, 3.0);
        // A container restarting (missing at some readings) leaves its pod
        // cgroup a holder all along: it is never counted in the gaps.
        let gaps: Vec<MetricRow> = (0..4)
            .flat_map(|t| {
                let t64 = t as f64;
                let mut v = vec![k3s(t, "/kubepods/besteffort/podA", 100.0 + 10.0 * t64)];
                if t % 2 == 0 {
                    v.push(k3s(t, "/kubepods/besteffort/podA/c1", 50.0 + 5.0 * t64));
                }
                v
            })
            .collect();
        let refs: Vec<&MetricRow> = gaps.iter().collect();
        let total: f64 = counter_increments(&refs, &CPU).iter().map(|i| i.2).sum();
        assert_eq!(
            total, 10.0,
            "the container's 5 a reading from t0 to t2 only"
        );
        // The root alone is a series like any other.
        let root: Vec<MetricRow> = (0..2).map(|t| k3s(t, "/", t as f64)).collect();
        let refs: Vec<&MetricRow> = root.iter().collect();
        assert_eq!(counter_increments(&refs, &CPU)[0].2, 1.0);
    }

    #[test]
    fn ratios_of_targets_sampled_differently_are_not_judged() {
        let measured = |source: &str, ms: f64| Resources {
            role: "shadow".into(),
            source: Some(source.into()),
            cpu_ms_per_request: Some(ms),
            memory_peak_mb: Some(100.0),
            ..Resources::unmeasured()
        };
        let mut res = BTreeMap::new();
        res.insert(
            "primary".to_string(),
            Resources {
                role: "primary".into(),
                ..measured("pid", 5.0)
            },
        );
        res.insert("v2".to_string(), measured("prometheus", 4.0));
        let shadows = ["v2".to_string()];
        let r = reasons(&res, &BTreeMap::new(), &shadows, &Gate::default());
        let cpu = r
            .iter()
            .find(|r| r.criterion == "cpu_per_request_ratio")
            .unwrap();
        assert_eq!(cpu.outcome, Outcome::Inconclusive, "{}", cpu.detail);
        assert!(cpu.detail.contains("not comparable"), "{}", cpu.detail);
        // Sampled alike, the same figures are judged.
        res.insert("v2".to_string(), measured("pid", 4.0));
        let r = reasons(&res, &BTreeMap::new(), &shadows, &Gate::default());
        assert!(r.iter().all(|r| r.outcome == Outcome::Pass), "{r:?}");
        // One side's memory as PSS, the other's as RSS: not comparable.
        let mut rss = measured("pid", 4.0);
        rss.memory_measure = Some("rss".into());
        res.get_mut("primary").unwrap().memory_measure = Some("pss".into());
        res.insert("v2".to_string(), rss);
        let r = reasons(&res, &BTreeMap::new(), &shadows, &Gate::default());
        let mem = r.iter().find(|r| r.criterion == "memory_ratio").unwrap();
        assert_eq!(mem.outcome, Outcome::Inconclusive, "{}", mem.detail);
        assert!(
            mem.detail
                .contains("the primary's memory is pss, the shadow's rss"),
            "{}",
            mem.detail
        );
        let cpu = r
            .iter()
            .find(|r| r.criterion == "cpu_per_request_ratio")
            .unwrap();
        assert_eq!(cpu.outcome, Outcome::Pass, "{}", cpu.detail);
        // A shadow not sampled at all: inconclusive, never a pass.
        res.remove("v2");
        let r = reasons(&res, &BTreeMap::new(), &shadows, &Gate::default());
        assert!(
            r.iter().all(|r| r.outcome == Outcome::Inconclusive),
            "{r:?}"
        );
    }

    #[test]
    fn counter_families_match_across_exposition_formats() {
        assert_eq!(family_name("model_predictions_total"), "model_predictions");
        assert_eq!(
            family_name("model_predictions_created"),
            "model_predictions"
        );
        assert_eq!(family_name("model_predictions"), "model_predictions");
        assert_eq!(
            family_name("process_resident_memory_bytes"),
            "process_resident_memory_bytes"
        );
    }

    #[test]
    fn telemetry_parity_names_families_and_labels() {
        let set = |v: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
            v.iter()
                .map(|(f, l)| (f.to_string(), l.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        let p = set(&[("a", &["x", "y"]), ("b", &[]), ("c", &[])]);
        let s = set(&[("a", &["x"]), ("c", &[]), ("d", &[])]);
        let t = parity(&p, &s);
        assert_eq!(t.missing_in_shadow, ["b"]);
        assert_eq!(t.added_in_shadow, ["d"]);
        assert_eq!(t.labels_missing_in_shadow, ["a{y}"]);
    }

    fn row(
        target: &str,
        family: &str,
        ts_s: f64,
        labels: &[(&str, &str)],
        value: f64,
    ) -> MetricRow {
        MetricRow {
            ts: (ts_s * 1e9) as i64,
            target: target.into(),
            source: "prometheus".into(),
            kind: MetricKind::Sample,
            family: family.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: Some(value),
            detail: None,
            scrape_ms: None,
        }
    }

    #[test]
    fn gpus_are_averaged_for_utilisation_and_summed_for_memory_and_capacity_uses_the_busiest_second(
    ) {
        let mut rows = Vec::new();
        for t in 0..5 {
            let ts = t as f64;
            for (gpu, util, mib) in [("0", 80.0, 1000.0), ("1", 40.0, 3000.0)] {
                rows.push(row(
                    "primary",
                    "DCGM_FI_DEV_GPU_UTIL",
                    ts,
                    &[("gpu", gpu)],
                    util,
                ));
                rows.push(row(
                    "primary",
                    "DCGM_FI_DEV_FB_USED",
                    ts,
                    &[("gpu", gpu)],
                    mib,
                ));
            }
            // 0.5 CPU seconds per second.
            rows.push(row(
                "primary",
                "process_cpu_seconds_total",
                ts,
                &[],
                10.0 + 0.5 * ts,
            ));
        }
        // Start-up, 5 s before the first answer: 10 CPU seconds loading a
        // model, not a cost of serving (left out).
        rows.push(row("primary", "process_cpu_seconds_total", -5.0, &[], 0.0));
        let mut times = AnswerTimes::default();
        // 100 answers a second over the window, and a capture whose
        // busiest second had 250 requests.
        let answers: Vec<ReplayResult> = (0..400)
            .map(|i| ReplayResult {
                target_name: "primary".into(),
                role: Some(TargetRole::Primary),
                status: Some(200),
                done_ts: Some(i * 10_000_000 + 5_000_000),
                due_ts: i * 10_000_000,
                ..Default::default()
            })
            .chain((0..250).map(|i| ReplayResult {
                target_name: "recorded".into(),
                role: Some(TargetRole::Recorded),
                sent_ts: Some(1_000_000_000_000 + i * 1_000_000),
                ..Default::default()
            }))
            .collect();
        times.add(&answers);
        let (res, _) = summarize(&rows, &times);
        let p = &res["primary"];
        assert_eq!(p.gpu_util.as_ref().unwrap().mean, 60.0);
        assert!((p.gpu_memory_peak_mb.unwrap() - 4000.0 * 1.048_576).abs() < 1e-6);
        assert!((p.cpu_cores.as_ref().unwrap().mean - 0.5).abs() < 1e-9);
        // 2 CPU seconds over 400 answers: 5 ms each; at 250/s, 1.25 cores.
        assert_eq!(p.answers_in_window, 400);
        assert!((p.cpu_ms_per_request.unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(p.peak_requests_per_s, Some(250.0));
        assert!((p.capacity_cores_at_peak.unwrap() - 1.25).abs() < 1e-9);
    }
}
