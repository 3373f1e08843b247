//! Turn the folded counters into the report: decide which differing paths
//! are noise, count divergent exchanges per endpoint and overall, find the
//! segments where divergence concentrates, pick examples, compute drift.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::compare::{decoded_body, DiffKind};
use super::config::Config;
use super::doc::LazyDoc;
use super::intervals::{error_increase, error_pairs, rate};
use super::latency::{chart_edges_ms, LogHist};
use super::stats::{
    benjamini_hochberg, bin_counts, chi_square, drift_bins, ks_two_sample, psi, two_proportion_p,
};
use super::{verdict, DiffError, DiffOptions, Folded, Tally};
use crate::report::{
    Drift, DriftBin, EndpointReport, Errors, Example, FieldDivergence, MissingField, NoiseField,
    PerSide, Report, Segment, ShadowStats,
};

/// A shadow-vs-primary rate this much more likely than the noise rate
/// (one-sided p below this) is a regression hiding in a noisy field.
const NOISE_REGRESSION_P: f64 = 0.001;
/// Values kept per side for a numeric drift field (a deterministic sample).
const DRIFT_SAMPLE: usize = 50_000;
/// Categories kept per categorical drift field; the rest are "(other)".
const MAX_CATEGORIES: usize = 200;

/// Values of one drift field on both sides.
#[derive(Default)]
pub(crate) struct DriftAcc {
    numbers: [Vec<f64>; 2],
    seen_numbers: [u64; 2],
    categories: [HashMap<String, u64>; 2],
    /// Distinct categories kept over both sides: one cap for the two, so
    /// a value common to both is never kept on one side and "(other)" on
    /// the other (which would show as drift).
    kept: usize,
}

impl DriftAcc {
    fn add(&mut self, side: usize, v: &Value) {
        match v {
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return };
                self.seen_numbers[side] += 1;
                let seen = self.seen_numbers[side];
                let sample = &mut self.numbers[side];
                if sample.len() < DRIFT_SAMPLE {
                    sample.push(x);
                } else {
                    // Reservoir sampling with a fixed hash for repeatable reports.
                    let j = (seen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % seen;
                    if (j as usize) < DRIFT_SAMPLE {
                        sample[j as usize] = x;
                    }
                }
            }
            Value::Null => {}
            other => {
                let key = match other {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                let known = self.categories.iter().any(|c| c.contains_key(&key));
                let key = if known {
                    key
                } else if self.kept >= MAX_CATEGORIES {
                    "(other)".to_string()
                } else {
                    self.kept += 1;
                    key
                };
                *self.categories[side].entry(key).or_default() += 1;
            }
        }
    }

    /// Adds another endpoint's values (for the overall figures). Past the
    /// cap, each part keeps a share of the merged sample in proportion to
    /// the values it stands for: cutting the end off kept the first four
    /// endpoints (in hash order) and dropped the rest.
    fn merge(&mut self, o: &DriftAcc) {
        const CAP: usize = DRIFT_SAMPLE * 4;
        for side in 0..2 {
            let (a, b) = (&self.numbers[side], &o.numbers[side]);
            let merged = if a.len() + b.len() <= CAP {
                [a.as_slice(), b.as_slice()].concat()
            } else {
                let (sa, sb) = (self.seen_numbers[side] as f64, o.seen_numbers[side] as f64);
                let ka = (CAP as f64 * sa / (sa + sb)).round() as usize;
                let mut m = thin(a, ka);
                m.extend(thin(b, CAP.saturating_sub(ka)));
                m
            };
            self.numbers[side] = merged;
            self.seen_numbers[side] += o.seen_numbers[side];
            for (k, v) in &o.categories[side] {
                *self.categories[side].entry(k.clone()).or_default() += v;
            }
        }
    }
}

/// At most `k` of `v`, evenly spaced (the samples are in random order, so
/// any spacing is a fair subsample).
fn thin(v: &[f64], k: usize) -> Vec<f64> {
    if v.len() <= k {
        return v.to_vec();
    }
    (0..k).map(|i| v[i * v.len() / k]).collect()
}

/// Collect the configured drift fields of one compared exchange.
/// `wanted`: the endpoint's drift fields (indexes into `config.drift`).
pub(crate) fn fold_drift(
    config: &Config,
    wanted: &[usize],
    primary: &LazyDoc,
    shadow: &LazyDoc,
    t: &mut Tally,
) {
    if wanted.is_empty() {
        return;
    }
    let docs = [primary, shadow].map(|d| d.get().json.as_ref());
    for &i in wanted {
        let Some(pattern) = &config.drift[i].pattern else {
            continue;
        };
        let acc = t.drift.entry(i).or_default();
        for (side, doc) in docs.iter().enumerate() {
            if let Some(doc) = doc {
                for v in pattern.select(doc) {
                    acc.add(side, v);
                }
            }
        }
    }
}

fn drift_report(path: &str, acc: &DriftAcc, n_bins: usize) -> Option<Drift> {
    let numeric = acc.seen_numbers.iter().sum::<u64>()
        >= acc
            .categories
            .iter()
            .map(|c| c.values().sum::<u64>())
            .sum::<u64>();
    if numeric {
        let (mut p, mut s) = (acc.numbers[0].clone(), acc.numbers[1].clone());
        if p.is_empty() && s.is_empty() {
            return None;
        }
        let edges = drift_bins(&p, &s, n_bins);
        let (cp, cs) = (bin_counts(&p, &edges), bin_counts(&s, &edges));
        let ks = ks_two_sample(&mut p, &mut s).map(|(d, pv)| [d, pv]);
        let labels = edges.windows(2).map(|w| format!("{:.4}–{:.4}", w[0], w[1]));
        Some(Drift {
            path: path.to_string(),
            kind: "numeric".into(),
            primary_count: acc.seen_numbers[0],
            shadow_count: acc.seen_numbers[1],
            psi: psi(&cp, &cs),
            chi_square: None,
            ks,
            bins: labels
                .zip(cp.iter().zip(&cs))
                .map(|(label, (&primary, &shadow))| DriftBin {
                    label,
                    primary,
                    shadow,
                })
                .collect(),
        })
    } else {
        let mut keys: Vec<&String> = acc.categories[0]
            .keys()
            .chain(acc.categories[1].keys())
            .collect();
        keys.sort();
        keys.dedup();
        let count = |side: usize, k: &String| acc.categories[side].get(k).copied().unwrap_or(0);
        let cp: Vec<u64> = keys.iter().map(|k| count(0, k)).collect();
        let cs: Vec<u64> = keys.iter().map(|k| count(1, k)).collect();
        Some(Drift {
            path: path.to_string(),
            kind: "categorical".into(),
            primary_count: cp.iter().sum(),
            shadow_count: cs.iter().sum(),
            psi: psi(&cp, &cs),
            chi_square: chi_square(&cp, &cs).map(|(x, p)| [x, p]),
            ks: None,
            bins: keys
                .iter()
                .zip(cp.iter().zip(&cs))
                .map(|(k, (&primary, &shadow))| DriftBin {
                    label: (*k).clone(),
                    primary,
                    shadow,
                })
                .collect(),
        })
    }
}

/// `--divergences`: every exchange with a difference goes to a temporary
/// file as it is met; at the end only the divergent ones (noise removed)
/// are written to the real file.
pub(crate) struct Candidates {
    tmp: PathBuf,
    out: PathBuf,
    w: BufWriter<std::fs::File>,
}

/// What a divergences line shows of a body: the document compared (an
/// LLM stream assembled), else the text.
fn body_value(d: &LazyDoc) -> Value {
    if let Some(v) = &d.get().json {
        return v.clone();
    }
    let body = decoded_body(d.row);
    Value::String(String::from_utf8_lossy(&body).into_owned())
}

impl Candidates {
    /// Where the unfiltered lines wait until noise is known.
    pub fn tmp_path(out: &std::path::Path) -> PathBuf {
        out.with_extension("jsonl.partial")
    }

    pub fn create(out: &std::path::Path) -> Result<Self, DiffError> {
        let tmp = Self::tmp_path(out);
        let file = std::fs::File::create(&tmp)
            .map_err(|e| DiffError::Write(out.display().to_string(), e))?;
        Ok(Self {
            tmp,
            out: out.to_path_buf(),
            w: BufWriter::new(file),
        })
    }

    pub fn write(
        &mut self,
        ep: u32,
        sh: u32,
        sig: u32,
        pd: &LazyDoc,
        sd: &LazyDoc,
        ex: &Example,
    ) -> Result<(), DiffError> {
        let (primary, shadow) = (pd.row, sd.row);
        let line = json!({
            "_key": [ep, sh, sig],
            "exchange_id": ex.exchange_id,
            "shadow": ex.shadow,
            "endpoint": ex.endpoint,
            "request": {
                "method": primary.method,
                "target": primary.target,
                "body": String::from_utf8_lossy(&primary.request_body),
            },
            "primary": {"status": primary.status, "error": primary.error_kind.map(|k| k.as_str()), "body": body_value(pd)},
            "shadow_answer": {"status": shadow.status, "error": shadow.error_kind.map(|k| k.as_str()), "body": body_value(sd)},
            "differences": ex.differences,
        });
        let werr = |e| DiffError::Write(self.out.display().to_string(), e);
        serde_json::to_writer(&mut self.w, &line).map_err(|e| werr(e.into()))?;
        self.w.write_all(b"\n").map_err(werr)
    }
}

/// Which paths are noise, per (endpoint, shadow).
type NoiseSets = HashMap<(u32, u32), HashSet<u32>>;

fn noise_sets(f: &Folded) -> (NoiseSets, HashMap<(u32, u32), Vec<NoiseField>>) {
    let mut sets = NoiseSets::new();
    let mut fields = HashMap::new();
    for (&(ep, sh), t) in &f.tallies {
        let Some(noise) = f.noise.get(&ep) else {
            continue;
        };
        let noise_k = path_counts(f, noise.sigs.iter().map(|(&sig, &n)| (sig, n)));
        let shadow_k = path_counts(f, t.cells.iter().map(|(c, &n)| (c.sig, n)));
        let set: &mut HashSet<u32> = sets.entry((ep, sh)).or_default();
        let list: &mut Vec<NoiseField> = fields.entry((ep, sh)).or_default();
        for (&p, nc) in &noise_k {
            if nc.differ == 0 {
                continue;
            }
            let sc = shadow_k.get(&p).copied().unwrap_or_default();
            // Each rate is over the pairs where the path was known: a
            // judge outage on either side is neither agreement nor
            // difference.
            let nn = noise.compared.saturating_sub(nc.unjudged);
            let sn = t.compared.saturating_sub(sc.unjudged);
            let regressed = two_proportion_p(sc.differ, sn, nc.differ, nn)
                .is_some_and(|pv| pv < NOISE_REGRESSION_P);
            // With no shadow pair known on the path there is nothing to
            // call noise: listing it would show a shadow rate of 0 that
            // was never measured.
            if sn > 0 && !regressed {
                set.insert(p);
                list.push(NoiseField {
                    path: f.paths.names[p as usize].clone(),
                    noise_rate: nc.differ as f64 / nn.max(1) as f64,
                    shadow_rate: sc.differ as f64 / sn.max(1) as f64,
                });
            }
        }
        list.sort_by(|a, b| a.path.cmp(&b.path));
    }
    (sets, fields)
}

/// Per path, of the exchanges counted: how many differ on it, and how many
/// hold a value of it the judge gave no score for (unknown). Values the
/// judge could not score are kept out of both rates of the noise test: an
/// outage on the noise pairs would otherwise make the judged path noise
/// and hide a real regression on it, and one on the shadow's pairs would
/// read as a regression or dilute one.
#[derive(Clone, Copy, Default)]
struct PathCount {
    differ: u64,
    unjudged: u64,
}

/// Per-path counts of signatures, each counted `n` times. A path both
/// differing and unjudged in one exchange (two values under one `[*]`
/// rule) differs: one known difference is enough.
fn path_counts(f: &Folded, sigs: impl Iterator<Item = (u32, u64)>) -> HashMap<u32, PathCount> {
    let mut out: HashMap<u32, PathCount> = HashMap::new();
    for (sig, n) in sigs {
        // Signatures are sorted by path: one run per path.
        for run in f.sigs[sig as usize].chunk_by(|a, b| a.0 == b.0) {
            let known = run.iter().any(|&(_, k)| k != DiffKind::Unjudged);
            let c = out.entry(run[0].0).or_default();
            if known {
                c.differ += n;
            } else {
                c.unjudged += n;
            }
        }
    }
    out
}

/// Whether a signature still differs once noise paths are removed. Values
/// the judge gave no score for are not differences (nor agreements: see
/// `has_unjudged`).
fn divergent(f: &Folded, sig: u32, noise: Option<&HashSet<u32>>) -> bool {
    f.sigs[sig as usize]
        .iter()
        .any(|(p, k)| *k != DiffKind::Unjudged && noise.is_none_or(|n| !n.contains(p)))
}

/// Whether a signature holds values the judge gave no score for: if it is
/// not divergent, the exchange may or may not agree. Counted on noise
/// paths too: a path can be noise for want of scored pairs (the test had
/// too few to find a regression), and "0 divergent" would then read as
/// agreement during an outage.
fn has_unjudged(f: &Folded, sig: u32) -> bool {
    f.sigs[sig as usize]
        .iter()
        .any(|(_, k)| *k == DiffKind::Unjudged)
}

fn kind_of_path(path: &str) -> &'static str {
    if path == "status" {
        "status"
    } else if path == "error" {
        "error"
    } else if path.starts_with("header:") {
        "header"
    } else {
        "body"
    }
}

/// The figures of several (endpoint, shadow) tallies together.
fn shadow_stats(
    f: &Folded,
    parts: &[(u32, u32, &Tally)],
    noise: &NoiseSets,
    noise_fields: Vec<NoiseField>,
    config: &Config,
    edges: &[f64],
) -> ShadowStats {
    let mut s = ShadowStats::default();
    let mut field_kinds: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut field_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut missing: BTreeMap<String, u64> = BTreeMap::new();
    let (mut lat_p, mut lat_s) = (LogHist::default(), LogHist::default());
    let mut errors = Errors::default();
    let mut drift: BTreeMap<usize, super::summarize::DriftAcc> = BTreeMap::new();
    let mut llm = super::llm::LlmTally::default();
    let mut sim_shadow = super::llm::Similarities::new();
    let mut sim_noise = super::llm::Similarities::new();
    let mut noise_seen = HashSet::new();
    for &(ep, sh, t) in parts {
        llm.merge(&t.llm);
        for (k, r) in &t.similarity {
            sim_shadow.entry(k.clone()).or_default().merge(r);
        }
        let shadow_name = &f.shadows.names[sh as usize];
        s.judge_failed += f
            .judge_failed
            .get(&(ep, shadow_name.clone()))
            .copied()
            .unwrap_or(0);
        if noise_seen.insert(ep) {
            let on_noise = f
                .judge_failed
                .get(&(ep, "recorded".into()))
                .copied()
                .unwrap_or(0);
            s.judge_failed += on_noise;
            s.judge_failed_noise += on_noise;
            if let Some(n) = f.noise.get(&ep) {
                for (k, r) in &n.similarity {
                    sim_noise.entry(k.clone()).or_default().merge(r);
                }
            }
        }
        let ns = noise.get(&(ep, sh));
        s.compared += t.compared;
        for (cell, &n) in &t.cells {
            if !divergent(f, cell.sig, ns) {
                if has_unjudged(f, cell.sig) {
                    s.unjudged += n;
                }
                continue;
            }
            s.divergent += n;
            let mut kinds_seen = HashSet::new();
            let mut paths_seen = HashSet::new();
            for &(p, k) in &f.sigs[cell.sig as usize] {
                // Unknown values are not field differences (the examples
                // still show them, as `unjudged`).
                if k == DiffKind::Unjudged || ns.is_some_and(|set| set.contains(&p)) {
                    continue;
                }
                let name = &f.paths.names[p as usize];
                kinds_seen.insert(kind_of_path(name));
                if paths_seen.insert(p) {
                    *field_counts.entry(name.clone()).or_default() += n;
                }
                *field_kinds
                    .entry(name.clone())
                    .or_default()
                    .entry(k.as_str().to_string())
                    .or_default() += n;
                if k == DiffKind::MissingInShadow && !name.starts_with("header:") {
                    *missing.entry(name.clone()).or_default() += n;
                }
            }
            for k in kinds_seen {
                match k {
                    "status" => s.by_kind.status += n,
                    "error" => s.by_kind.error += n,
                    "header" => s.by_kind.header += n,
                    _ => s.by_kind.body += n,
                }
            }
        }
        errors.primary += t.primary_errors;
        errors.shadow += t.shadow_errors;
        errors.primary_only += t.primary_only_errors;
        errors.shadow_only += t.shadow_only_errors;
        for (k, v) in &t.shadow_error_kinds {
            *errors.shadow_by_kind.entry(k.clone()).or_default() += v;
        }
        lat_p.merge(&t.latency_primary);
        lat_s.merge(&t.latency_shadow);
        for (i, acc) in &t.drift {
            drift.entry(*i).or_default().merge(acc);
        }
    }
    let n = s.compared.max(1) as f64;
    s.divergence_rate = s.divergent as f64 / n;
    let method = f.method();
    s.divergence_ci = rate(method, s.divergent as f64, s.compared as f64, 0.05)
        .map_or([0.0, 1.0], |(lo, hi)| [lo, hi]);
    let mut fields: Vec<FieldDivergence> = field_counts
        .into_iter()
        .map(|(path, c)| FieldDivergence {
            kinds: field_kinds.remove(&path).unwrap_or_default(),
            path,
            divergent: c,
            rate: c as f64 / n,
        })
        .collect();
    fields.sort_by(|a, b| b.divergent.cmp(&a.divergent).then(a.path.cmp(&b.path)));
    s.fields = fields;
    s.noise_fields = noise_fields;
    let mut missing: Vec<MissingField> = missing
        .into_iter()
        .map(|(path, count)| MissingField {
            path,
            count,
            rate: count as f64 / n,
        })
        .collect();
    missing.sort_by_key(|m| std::cmp::Reverse(m.count));
    s.missing_fields = missing;
    errors.primary_rate = errors.primary as f64 / n;
    errors.shadow_rate = errors.shadow as f64 / n;
    errors.difference = errors.shadow_rate - errors.primary_rate;
    errors.difference_ci = error_increase(method, error_pairs(s.compared, &errors), 0.05)
        .map_or([-1.0, 1.0], |(lo, hi)| [lo, hi]);
    s.errors = errors;
    s.latency_ms.primary = lat_p.summary(edges);
    s.latency_ms.shadow = lat_s.summary(edges);
    s.latency_ms.p99_ratio =
        (lat_p.count() > 0 && lat_s.count() > 0 && s.latency_ms.primary.p99 > 0.0)
            .then(|| s.latency_ms.shadow.p99 / s.latency_ms.primary.p99);
    s.drift = drift
        .iter()
        .filter_map(|(&i, acc)| drift_report(&config.drift[i].path, acc, config.drift[i].bins))
        .collect();
    s.llm = llm.stats(edges);
    s.hists.ttft = PerSide {
        primary: llm.primary.ttft.clone(),
        shadow: llm.shadow.ttft.clone(),
    };
    s.hists.latency = PerSide {
        primary: lat_p,
        shadow: lat_s,
    };
    s.similarity =
        super::llm::similarity_stats(&sim_shadow, (!sim_noise.is_empty()).then_some(&sim_noise));
    s
}

fn segments(f: &Folded, noise: &NoiseSets) -> Vec<Segment> {
    // (shadow, dimension, value) -> (exchanges, divergent)
    let mut seg: BTreeMap<(u32, &'static str, String), (u64, u64)> = BTreeMap::new();
    let mut totals: HashMap<u32, (u64, u64)> = HashMap::new();
    for (&(ep, sh), t) in &f.tallies {
        let ns = noise.get(&(ep, sh));
        let endpoint = &f.endpoints.names[ep as usize];
        let method = endpoint.split(' ').next().unwrap_or("").to_string();
        for (cell, &n) in &t.cells {
            let d = if divergent(f, cell.sig, ns) { n } else { 0 };
            let tot = totals.entry(sh).or_default();
            tot.0 += n;
            tot.1 += d;
            let status = match cell.status_class {
                0 => "error".to_string(),
                c => format!("{c}xx"),
            };
            let size = ["0 B", "<1 KiB", "1-10 KiB", "10-100 KiB", ">=100 KiB"]
                [cell.size_bucket.min(4) as usize]
                .to_string();
            for (dim, value) in [
                ("endpoint", endpoint.clone()),
                ("method", method.clone()),
                ("status_class", status),
                ("request_size", size),
            ] {
                let e = seg.entry((sh, dim, value)).or_default();
                e.0 += n;
                e.1 += d;
            }
        }
    }
    let mut tests = Vec::new();
    for ((sh, dim, value), (n, k)) in seg {
        let (tn, tk) = totals.get(&sh).copied().unwrap_or_default();
        if n >= tn || n < 10 || k < 3 {
            continue;
        }
        if let Some(p) = two_proportion_p(k, n, tk - k, tn - n) {
            tests.push((sh, dim, value, n, k, (tk - k) as f64 / (tn - n) as f64, p));
        }
    }
    let pvals: Vec<f64> = tests.iter().map(|t| t.6).collect();
    let keep = benjamini_hochberg(&pvals, 0.05);
    let mut out: Vec<Segment> = tests
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|((sh, dim, value, n, k, rest, p), _)| Segment {
            shadow: f.shadows.names[sh as usize].clone(),
            dimension: dim.to_string(),
            value,
            exchanges: n,
            divergent: k,
            rate: k as f64 / n as f64,
            rest_rate: rest,
            p_value: p,
        })
        .collect();
    out.sort_by(|a, b| a.p_value.total_cmp(&b.p_value));
    out
}

/// Fields that differ in (nearly) every exchange while no noise estimate
/// exists (no live primary beside the recorded one): most likely ids or
/// timestamps that change on every call, which a live primary would have
/// shown as noise. Said with the rule that ignores them.
/// `[[rule]]` and `[[drift]]` entries whose endpoint glob named none of
/// the run's endpoints but nearly names one: a typo (`POST /predcit`), or
/// another case or method. Such a rule does nothing, silently, while the
/// user believes it applies. Globs far from every name are left alone: a
/// config shared by many runs names endpoints a given run may not have.
fn unmatched_globs(c: &Config, endpoints: &[crate::report::EndpointReport]) -> Vec<String> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let named: Vec<&str> = endpoints.iter().map(|e| e.endpoint.as_str()).collect();
    let entries = c
        .rules
        .iter()
        .map(|r| ("[[rule]]", r.endpoint.as_str(), r.path.as_str()))
        .chain(
            c.drift
                .iter()
                .map(|d| ("[[drift]]", d.endpoint.as_str(), d.path.as_str())),
        );
    let mut seen = HashSet::new();
    let mut hints = Vec::new();
    for (table, glob, path) in entries {
        if named.iter().any(|e| crate::endpoint::glob(glob, e)) || !seen.insert((table, glob)) {
            continue;
        }
        let Some(near) = named.iter().find(|e| nearly(glob, e)) else {
            continue;
        };
        hints.push(format!(
            "config: the {table} entry for {path} names endpoints {glob:?}, which matched none of this run's endpoints; did you mean {near:?}? As written it applies to nothing"
        ));
    }
    hints
}

/// A glob one or two edits from an endpoint name (its wildcards aside), or
/// equal to it but for case, or for the method.
fn nearly(glob: &str, endpoint: &str) -> bool {
    let bare = glob.replace(['*', '?'], "");
    let path = |s: &str| {
        s.split_once(' ')
            .map_or(s.to_string(), |(_, p)| p.to_string())
    };
    strsim::levenshtein(&bare.to_ascii_lowercase(), &endpoint.to_ascii_lowercase()) <= 2
        || (!bare.is_empty() && path(&bare) == path(endpoint))
}

/// Entries written for `(other endpoints)`: how a report groups the
/// endpoints past its cap, not an endpoint, so they apply to nothing.
fn entries_for_other_endpoints(c: &Config) -> Vec<String> {
    let rules = c.rules.iter().map(|r| ("[[rule]]", &r.endpoint, &r.path));
    let drift = c.drift.iter().map(|d| ("[[drift]]", &d.endpoint, &d.path));
    rules
        .chain(drift)
        .filter(|(_, glob, _)| glob.as_str() == super::OTHER_ENDPOINTS)
        .map(|(table, glob, path)| {
            format!(
                "config: the {table} entry for {path} names {glob:?}, which is how a report groups the endpoints past its cap, not an endpoint: each of those exchanges is compared by the entries for its own endpoint, so this one applies to nothing; [endpoints] templates name them"
            )
        })
        .collect()
}

fn ignore_hints(r: &Report) -> Vec<String> {
    const NEARLY_ALL: f64 = 0.95;
    const MIN_EXCHANGES: u64 = 20;
    if r.noise_estimated {
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    // Rules apply by each exchange's own endpoint: none can name the
    // exchanges reported together past the cap.
    for ep in r
        .endpoints
        .iter()
        .filter(|e| e.endpoint != super::OTHER_ENDPOINTS)
    {
        for s in ep.shadows.values() {
            for f in &s.fields {
                if f.rate < NEARLY_ALL
                    || f.divergent < MIN_EXCHANGES
                    || !seen.insert((&ep.endpoint, &f.path))
                {
                    continue;
                }
                out.push(format!(
                    "{} differs in {:.0}% of {} exchanges and no noise estimate exists (no live primary beside the recorded answers): if it changes on every call (an id, a timestamp), ignore it in the config: [[rule]] endpoint = {} path = {} compare = \"ignore\"",
                    f.path,
                    f.rate * 100.0,
                    ep.endpoint,
                    toml_string(&ep.endpoint),
                    toml_string(&f.path)
                ));
            }
        }
    }
    out.truncate(5);
    out
}

/// `s` as a TOML basic string, so the hint can be pasted as it is (gRPC
/// field paths such as `$["1"]` hold quotes).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why the list is shorter than `--top`: every divergent exchange beyond
/// noise is in it, or the memory bound on kept examples was reached.
fn examples_note(shown: usize, top: usize, capped: bool) -> Option<String> {
    if shown >= top {
        return None;
    }
    Some(if capped {
        format!(
            "{shown} examples of the {top} asked for (--top): diff keeps at most {} examples in memory; --divergences FILE writes every divergent exchange",
            super::MAX_EXAMPLES_KEPT
        )
    } else {
        format!(
            "{shown} examples of the {top} asked for (--top): that is every divergent exchange, noise fields left out"
        )
    })
}

fn top_examples(f: &Folded, noise: &NoiseSets, top: usize) -> Vec<Example> {
    let mut picked: Vec<(u64, Example)> = Vec::new();
    for (&(ep, sh, sig), list) in &f.examples {
        let ns = noise.get(&(ep, sh));
        if !divergent(f, sig, ns) {
            continue;
        }
        let weight = f.tallies.get(&(ep, sh)).map_or(0, |t| {
            t.cells
                .iter()
                .filter(|(c, _)| c.sig == sig)
                .map(|(_, n)| *n)
                .sum()
        });
        for ex in list {
            let mut ex = ex.clone();
            let noise_paths: HashSet<&str> = ns
                .map(|set| {
                    set.iter()
                        .map(|&p| f.paths.names[p as usize].as_str())
                        .collect()
                })
                .unwrap_or_default();
            ex.differences
                .retain(|d| !noise_paths.contains(d.path.as_str()));
            picked.push((weight, ex));
        }
    }
    // The most frequent kinds of divergence first, one example each before
    // any second one.
    picked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.exchange_id.cmp(&b.1.exchange_id)));
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (w, ex) in &picked {
        if out.len() < top && seen.insert((*w, ex.endpoint.clone(), ex.shadow.clone())) {
            out.push(ex.clone());
        }
    }
    for (_, ex) in picked {
        if out.len() >= top {
            break;
        }
        if !out
            .iter()
            .any(|e: &Example| e.exchange_id == ex.exchange_id && e.shadow == ex.shadow)
        {
            out.push(ex);
        }
    }
    out
}

/// Build the report from everything folded.
pub(crate) fn report(
    f: &Folded,
    opts: &DiffOptions,
    sink: Option<Candidates>,
) -> Result<Report, DiffError> {
    let edges = chart_edges_ms();
    let (noise, mut noise_fields) = noise_sets(f);
    let mut endpoints: Vec<EndpointReport> = Vec::new();
    let mut overall = BTreeMap::new();
    for (sh, shadow) in f.shadows.names.iter().enumerate() {
        let sh = sh as u32;
        let parts: Vec<(u32, u32, &Tally)> = f
            .tallies
            .iter()
            .filter(|((_, s), _)| *s == sh)
            .map(|(&(ep, s), t)| (ep, s, t))
            .collect();
        let mut all_noise: BTreeMap<String, NoiseField> = BTreeMap::new();
        for &(ep, s, _) in &parts {
            for nf in noise_fields.get(&(ep, s)).into_iter().flatten() {
                all_noise
                    .entry(nf.path.clone())
                    .or_insert_with(|| nf.clone());
            }
        }
        let stats = shadow_stats(
            f,
            &parts,
            &noise,
            all_noise.into_values().collect(),
            &opts.config,
            &edges,
        );
        overall.insert(shadow.clone(), stats);
    }
    let mut eps: Vec<u32> = f.exchanges_per_endpoint.keys().copied().collect();
    eps.sort_by(|a, b| f.endpoints.names[*a as usize].cmp(&f.endpoints.names[*b as usize]));
    for ep in eps {
        let mut shadows = BTreeMap::new();
        for (sh, shadow) in f.shadows.names.iter().enumerate() {
            let Some(t) = f.tallies.get(&(ep, sh as u32)) else {
                continue;
            };
            let nf = noise_fields.remove(&(ep, sh as u32)).unwrap_or_default();
            let stats = shadow_stats(f, &[(ep, sh as u32, t)], &noise, nf, &opts.config, &edges);
            shadows.insert(shadow.clone(), stats);
        }
        endpoints.push(EndpointReport {
            endpoint: f.endpoints.names[ep as usize].clone(),
            count: f.exchanges_per_endpoint[&ep],
            shadows,
        });
    }
    if let Some(c) = sink {
        let Candidates { tmp, out, mut w } = c;
        w.flush()
            .map_err(|e| DiffError::Write(out.display().to_string(), e))?;
        drop(w);
        super::filter_lines(&tmp, &out, |v| {
            let key = v.get("_key")?.as_array()?;
            let id = |i: usize| key.get(i).and_then(Value::as_u64).map(|x| x as u32);
            let (ep, sh, sig) = (id(0)?, id(1)?, id(2)?);
            let ns = noise.get(&(ep, sh));
            if !divergent(f, sig, ns) {
                return None;
            }
            let mut v = v.clone();
            let obj = v.as_object_mut()?;
            obj.remove("_key");
            if let (Some(set), Some(Value::Array(diffs))) = (ns, obj.get_mut("differences")) {
                diffs.retain(|d| {
                    d.get("path")
                        .and_then(Value::as_str)
                        .is_none_or(|p| !set.iter().any(|&i| f.paths.names[i as usize] == p))
                });
            }
            Some(v)
        })?;
    }
    let mut report = Report {
        method: crate::report::GateMethod {
            intervals: f.method(),
            family_wise: opts.config.gate.family_wise,
            ..Default::default()
        },
        tokens_per_second_buckets: super::llm::tokens_per_second_edges(),
        similarity_buckets: super::llm::similarity_edges(),
        judge: None,
        unpaired_answers: f.unpaired.clone().into_iter().collect(),
        not_compared: f
            .not_compared
            .iter()
            .map(|(name, why)| {
                let why = why.iter().map(|(k, &n)| (k.to_string(), n)).collect();
                (name.clone(), why)
            })
            .collect(),
        verdict: crate::report::Verdict::Inconclusive,
        reasons: Vec::new(),
        exchanges: f.exchanges,
        inputs: opts
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        shadow_names: f.shadows.names.clone(),
        primary_source: match (f.live_primary, f.recorded_primary) {
            (true, false) => "live",
            (false, true) => "recorded",
            _ => "mixed",
        }
        .into(),
        noise_estimated: !f.noise.is_empty(),
        overall,
        endpoints,
        segments: segments(f, &noise),
        top_divergences: top_examples(f, &noise, opts.top),
        examples_note: None,
        hints: Vec::new(),
        resources: Default::default(),
        telemetry: Default::default(),
        resources_note: None,
        latency_buckets_ms: edges,
    };
    report.hints = ignore_hints(&report);
    report
        .hints
        .extend(entries_for_other_endpoints(&opts.config));
    if f.endpoints_over_cap == 0 {
        report
            .hints
            .extend(unmatched_globs(&opts.config, &report.endpoints));
    }
    if f.endpoints_over_cap > 0 {
        report.hints.push(format!(
            "{} exchanges are reported together as {}: they have more than {} distinct endpoint names, most likely ids the automatic names do not recognise; name them with [endpoints] templates (docs/config.md)",
            f.endpoints_over_cap,
            super::OTHER_ENDPOINTS,
            super::MAX_ENDPOINTS
        ));
    }
    match &f.times {
        Some(times) => {
            (report.resources, report.telemetry) = super::resources::summarize(&f.metrics, times);
            for (name, r) in &report.resources {
                if r.role == "unknown" {
                    report.hints.push(format!(
                        "the metrics file samples a target named {name}, which is not in the results (targets: primary, {}): name it as in replay's --primary/--shadow",
                        report.shadow_names.join(", ")
                    ));
                }
            }
        }
        None => {
            report.resources_note = Some(
                "resources: not measured (no metrics file; replay --metrics, --pid or --cgroup writes one)".into(),
            )
        }
    }
    report.examples_note = examples_note(report.top_divergences.len(), opts.top, f.examples_capped);
    verdict::judge(&mut report, &opts.config.gate);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{drift_report, toml_string, DriftAcc, DRIFT_SAMPLE, MAX_CATEGORIES};
    use serde_json::{json, Value};

    /// Five endpoints of 60,000 values each, merged for the overall figure:
    /// each keeps a fifth of the merged sample.
    #[test]
    fn the_overall_drift_sample_keeps_every_endpoint_in_proportion() {
        let mut all = DriftAcc::default();
        for ep in 0..5 {
            let mut acc = DriftAcc::default();
            for _ in 0..60_000 {
                acc.add(0, &json!(ep));
            }
            all.merge(&acc);
        }
        let sample = &all.numbers[0];
        assert_eq!(sample.len(), DRIFT_SAMPLE * 4);
        for ep in 0..5 {
            let share =
                sample.iter().filter(|&&x| x == ep as f64).count() as f64 / sample.len() as f64;
            assert!((share - 0.2).abs() < 0.01, "endpoint {ep}: {share}");
        }
    }

    /// A value only the shadow gave, first, then 300 labels both sides give
    /// alike: past the cap, both sides fold the same labels into "(other)".
    #[test]
    fn the_category_cap_keeps_the_same_labels_on_both_sides() {
        let mut acc = DriftAcc::default();
        acc.add(1, &json!("only-shadow"));
        for i in 0..300 {
            let label = Value::String(format!("L{i:03}"));
            acc.add(0, &label);
            acc.add(1, &label);
        }
        let d = drift_report("$.label", &acc, 10).unwrap();
        assert_eq!(d.bins.len(), MAX_CATEGORIES + 1, "kept, and (other)");
        for b in d.bins.iter().filter(|b| b.label != "only-shadow") {
            assert_eq!(b.primary, b.shadow, "{}", b.label);
        }
        assert!(d.psi < 0.05, "PSI {}", d.psi);
    }

    #[test]
    fn hint_strings_paste_into_the_config_as_they_are() {
        for s in [r#"$["1"]"#, r"$.a\b", "POST /v1", "tab\there"] {
            let doc: toml::Table = toml::from_str(&format!("x = {}", toml_string(s))).unwrap();
            assert_eq!(doc["x"].as_str(), Some(s));
        }
    }
}
