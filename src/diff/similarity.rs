//! Similarity measures for comparing a primary and a shadow response.
//!
//! Exact equality is too strict for many bodies (embeddings, generated
//! text, floating-point results), so the diff stage scores how close two
//! values are instead. Everything here is total: no panics on empty input,
//! NaN or huge bodies.

/// Above this many token pairs (n · m), [`rouge_l`] only looks at a prefix:
/// 20,000 tokens a side (about 80 KB of English) still takes a few ms.
const ROUGE_MAX_CELLS: usize = 400_000_000;

/// Prefix length (in tokens, per side) used once [`ROUGE_MAX_CELLS`] is hit.
const ROUGE_PREFIX_TOKENS: usize = 20_000;

/// Largest absolute value in `v` (0 for an empty or all-zero slice).
fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m: f64, x| m.max(x.abs()))
}

/// Cosine similarity a·b / (|a| |b|), clamped to [-1, 1].
///
/// `None` when the lengths differ, the vectors are empty, exactly one of
/// them is all zeros (the angle is undefined), or a value is not finite.
/// Two all-zero vectors of the same length count as identical (`Some(1.0)`)
/// because a shadow that returns the same zero embedding as the primary
/// agrees with it. Each vector is scaled by its largest component first,
/// which leaves the cosine unchanged but avoids overflow and underflow in
/// the sums of squares.
pub fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return None;
    }
    let (sa, sb) = (max_abs(a), max_abs(b));
    match (sa == 0.0, sb == 0.0) {
        (true, true) => return Some(1.0),
        (true, false) | (false, true) => return None,
        (false, false) => {}
    }
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x / sa, y / sb);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    // After scaling, na and nb lie in [1, len], so the product cannot
    // overflow, and one sqrt rounds once instead of twice.
    Some((dot / (na * nb).sqrt()).clamp(-1.0, 1.0))
}

/// Split text into word tokens: maximal runs of alphanumeric characters
/// (Unicode-aware, [`char::is_alphanumeric`]) and every other
/// non-whitespace character as a token of its own. Whitespace separates
/// tokens and is dropped.
///
/// Punctuation counts as tokens so that `"a, b"` and `"a b"` differ, while
/// spacing differences alone do not. Case is preserved; [`rouge_l`]
/// compares case-insensitively.
pub fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut word_start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            word_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = word_start.take() {
            out.push(&text[start..i]);
        }
        if !c.is_whitespace() {
            out.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(start) = word_start {
        out.push(&text[start..]);
    }
    out
}

/// Lowercased tokens of both texts as small integers (equal tokens, equal
/// ids), so that comparisons ignore case and cost one integer compare.
fn token_ids(a: &str, b: &str) -> (Vec<u32>, Vec<u32>) {
    let mut ids: std::collections::HashMap<String, u32> = Default::default();
    let mut of = |text: &str| -> Vec<u32> {
        tokens(text)
            .into_iter()
            .map(|t| {
                let next = ids.len() as u32;
                *ids.entry(t.to_lowercase()).or_insert(next)
            })
            .collect()
    };
    (of(a), of(b))
}

/// A token that occurs at least this often in the shorter text gets its own
/// match mask; rarer ones set their few bits in a scratch mask per step.
/// At most n / 64 tokens are that frequent, so the masks take at most
/// n² / 512 bytes (780 KB at 20,000 tokens).
const DENSE_OCCURRENCES: usize = 64;

/// Length of the longest common subsequence of `a` and `b`.
///
/// Bit-parallel (Allison and Dix 1986, in Hyyrö's 2004 form): one bit per
/// token of the shorter sequence, one pass of word-wide additions per token
/// of the longer one, so O(n·m / 64) time: the classic O(n·m) table made
/// long LLM answers too slow to score in full. Written here because no
/// well-kept crate offers an LCS length over arbitrary token sequences.
fn lcs_len(a: &[u32], b: &[u32]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let words = short.len().div_ceil(64);
    if words == 0 {
        return 0;
    }
    let mut positions: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for (i, &t) in short.iter().enumerate() {
        positions.entry(t).or_default().push(i);
    }
    let mut dense: std::collections::HashMap<u32, Vec<u64>> = Default::default();
    for (&t, at) in &positions {
        if at.len() >= DENSE_OCCURRENCES {
            let mut mask = vec![0u64; words];
            at.iter().for_each(|&i| mask[i / 64] |= 1 << (i % 64));
            dense.insert(t, mask);
        }
    }
    // A set bit of `v` is a position of `short` not yet matched.
    let mut v = vec![u64::MAX; words];
    let mut scratch = vec![0u64; words];
    for t in long {
        let Some(at) = positions.get(t) else {
            continue; // no match: nothing changes
        };
        if let Some(mask) = dense.get(t) {
            step(&mut v, mask, at[0] / 64);
        } else {
            at.iter().for_each(|&i| scratch[i / 64] |= 1 << (i % 64));
            step(&mut v, &scratch, at[0] / 64);
            at.iter().for_each(|&i| scratch[i / 64] = 0);
        }
    }
    let unmatched: usize = v
        .iter()
        .enumerate()
        .map(|(w, &bits)| {
            let valid = if (w + 1) * 64 <= short.len() {
                u64::MAX
            } else {
                (1u64 << (short.len() % 64)) - 1
            };
            (bits & valid).count_ones() as usize
        })
        .sum();
    short.len() - unmatched
}

/// One token of the longer sequence: V = (V + U) | (V - U), U = V & match,
/// across words with carry and borrow. Words below `from` hold no match, so
/// U is zero there and they stay as they are.
fn step(v: &mut [u64], mask: &[u64], from: usize) {
    let (mut carry, mut borrow) = (false, false);
    for (x, &m) in v[from..].iter_mut().zip(&mask[from..]) {
        let u = *x & m;
        let (sum, c1) = x.overflowing_add(u);
        let (sum, c2) = sum.overflowing_add(u64::from(carry));
        let (diff, b1) = x.overflowing_sub(u);
        let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
        (carry, borrow) = (c1 || c2, b1 || b2);
        *x = sum | diff;
    }
}

/// ROUGE-L F-measure (β = 1, i.e. F1 = 2PR / (P + R)) between a reference
/// (primary) and a candidate (shadow) text, from the LCS of their token
/// sequences (see [`tokens`]), compared case-insensitively.
///
/// P = LCS / candidate tokens, R = LCS / reference tokens. Both texts
/// without tokens give 1.0; exactly one gives 0.0.
///
/// Cost cap: the LCS takes n·m / 64 word operations, so when n·m exceeds
/// 400,000,000 the score is computed on the first 20,000 tokens of each
/// text only (P and R then refer to those prefixes). A huge body therefore
/// cannot stall the run, at the price of ignoring differences past the
/// prefix.
pub fn rouge_l(reference: &str, candidate: &str) -> f64 {
    let (mut r, mut c) = token_ids(reference, candidate);
    match (r.is_empty(), c.is_empty()) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        (false, false) => {}
    }
    if r.len().saturating_mul(c.len()) > ROUGE_MAX_CELLS {
        r.truncate(ROUGE_PREFIX_TOKENS);
        c.truncate(ROUGE_PREFIX_TOKENS);
    }
    let lcs = lcs_len(&r, &c);
    if lcs == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / c.len() as f64;
    let recall = lcs as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Whether two numbers agree within an absolute or a relative tolerance:
/// |a - b| <= max(abs_tol, rel_tol · max(|a|, |b|)).
///
/// The absolute tolerance covers values near zero, where a relative one
/// is meaningless. NaN is never close to anything (not even NaN: a NaN
/// result is a failure to report, not agreement). Infinities are close
/// only to the same infinity; without that rule inf - x = inf would pass
/// against a relative tolerance of inf.
pub fn numeric_close(a: f64, b: f64, abs_tol: f64, rel_tol: f64) -> bool {
    if a == b {
        // Exact match, including equal infinities (NaN never compares equal).
        return true;
    }
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    let scale = a.abs().max(b.abs());
    (a - b).abs() <= abs_tol.max(rel_tol * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= 1e-12
    }

    #[test]
    fn cosine_reference_values() {
        // scipy: 1 - scipy.spatial.distance.cosine(a, b)
        let v = cosine(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap_or(f64::NAN);
        assert!(close(v, 0.9746318461970762), "{v}");
        let v = cosine(&[1.0, 0.0, -1.0], &[-2.0, 0.5, 3.0]).unwrap_or(f64::NAN);
        assert!(close(v, -0.9712858623572642), "{v}");
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), Some(0.0));
        assert_eq!(cosine(&[2.0, 2.0], &[3.0, 3.0]), Some(1.0));
        assert_eq!(cosine(&[2.0, 2.0], &[-3.0, -3.0]), Some(-1.0));
    }

    #[test]
    fn cosine_survives_extreme_magnitudes() {
        let v = cosine(&[1e200, 2e200], &[1e-200, 2e-200]).unwrap_or(f64::NAN);
        assert!(close(v, 1.0), "{v}");
        let v = cosine(&[1e308, 1e308], &[1e308, -1e308]).unwrap_or(f64::NAN);
        assert!(close(v, 0.0), "{v}");
    }

    #[test]
    fn cosine_undefined_cases() {
        assert_eq!(cosine(&[], &[]), None);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), None);
        assert_eq!(cosine(&[1.0, 2.0], &[0.0, 0.0]), None);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, -0.0]), Some(1.0));
        assert_eq!(cosine(&[f64::NAN, 1.0], &[1.0, 1.0]), None);
        assert_eq!(cosine(&[f64::INFINITY, 1.0], &[1.0, 1.0]), None);
    }

    #[test]
    fn tokens_split_words_and_punctuation() {
        assert_eq!(tokens("Hello, world!"), ["Hello", ",", "world", "!"]);
        assert_eq!(tokens("  a1b2   --x "), ["a1b2", "-", "-", "x"]);
        assert_eq!(tokens("naïve café 東京"), ["naïve", "café", "東京"]);
        assert_eq!(
            tokens("{\"k\":3.5}"),
            ["{", "\"", "k", "\"", ":", "3", ".", "5", "}"]
        );
        assert!(tokens("").is_empty());
        assert!(tokens(" \t\n").is_empty());
    }

    /// The textbook table, to check the bit-parallel form against.
    fn lcs_by_table(a: &[u32], b: &[u32]) -> usize {
        let mut row = vec![0usize; b.len() + 1];
        for x in a {
            let mut diag = 0;
            for (j, y) in b.iter().enumerate() {
                let up = row[j + 1];
                row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
                diag = up;
            }
        }
        row[b.len()]
    }

    #[test]
    fn lcs_textbook_example() {
        // CLRS 15.4: LCS("ABCBDAB", "BDCABA") = 4 ("BCBA").
        let a: Vec<u32> = "ABCBDAB".bytes().map(u32::from).collect();
        let b: Vec<u32> = "BDCABA".bytes().map(u32::from).collect();
        assert_eq!(lcs_len(&a, &b), 4);
        assert_eq!(lcs_len(&b, &a), 4);
        assert_eq!(lcs_len(&[], &b), 0);
    }

    proptest::proptest! {
        // Few symbols make long common runs and many repeats (the dense
        // masks); lengths cross several 64-bit words.
        #[test]
        fn lcs_matches_the_table(
            a in proptest::collection::vec(0u32..4, 0..300),
            b in proptest::collection::vec(0u32..4, 0..300),
        ) {
            proptest::prop_assert_eq!(lcs_len(&a, &b), lcs_by_table(&a, &b));
        }

        #[test]
        fn lcs_matches_the_table_on_varied_tokens(
            a in proptest::collection::vec(0u32..200, 0..200),
            b in proptest::collection::vec(0u32..200, 0..200),
        ) {
            proptest::prop_assert_eq!(lcs_len(&a, &b), lcs_by_table(&a, &b));
        }
    }

    #[test]
    fn rouge_l_reference_values() {
        // LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6/6
        // tokens: P = R = F = 5/6.
        let f = rouge_l("the cat sat on the mat", "the cat is on the mat");
        assert!(close(f, 5.0 / 6.0), "{f}");
        // Lin (2004) example: S1 = "police killed the gunman",
        // S2 = "police kill the gunman" -> LCS 3, P = R = 3/4.
        let f = rouge_l("police killed the gunman", "police kill the gunman");
        assert!(close(f, 0.75), "{f}");
        // S3 = "the gunman kill police" -> LCS 2 ("the gunman"), F = 0.5.
        let f = rouge_l("police killed the gunman", "the gunman kill police");
        assert!(close(f, 0.5), "{f}");
        // Unequal lengths: LCS 2, P = 2/2, R = 2/4, F = 2/3.
        let f = rouge_l("a b c d", "a d");
        assert!(close(f, 2.0 / 3.0), "{f}");
    }

    #[test]
    fn rouge_l_ignores_case_and_handles_empty() {
        assert_eq!(rouge_l("Hello World", "hello WORLD"), 1.0);
        assert_eq!(rouge_l("", "  "), 1.0);
        assert_eq!(rouge_l("", "x"), 0.0);
        assert_eq!(rouge_l("x", ""), 0.0);
        assert_eq!(rouge_l("a b", "c d"), 0.0);
    }

    #[test]
    fn long_answers_are_scored_in_full() {
        // 10,000 tokens against their first 2,000 (an answer cut short):
        // P = 1, R = 0.2, F = 1/3, not the 1.0 a 2,000-token cap gave.
        let words: Vec<String> = (0..10_000).map(|i| format!("w{}", i % 997)).collect();
        let full = words.join(" ");
        let cut = words[..2_000].join(" ");
        assert!(
            close(rouge_l(&full, &cut), 1.0 / 3.0),
            "{}",
            rouge_l(&full, &cut)
        );
        // A changed tail past the 2,000th token counts too.
        let other = format!("{cut} {}", "x ".repeat(8_000));
        assert!(close(rouge_l(&full, &other), 0.2));
    }

    #[test]
    fn rouge_l_caps_huge_inputs_to_prefix() {
        // 30,000 x 30,000 tokens exceeds the cap; the prefixes are
        // identical, so the tail difference is ignored and the score is 1.
        let prefix = "w ".repeat(20_000);
        let a = format!("{prefix}{}", "x ".repeat(10_000));
        let b = format!("{prefix}{}", "y ".repeat(10_000));
        assert_eq!(rouge_l(&a, &b), 1.0);
    }

    #[test]
    fn numeric_close_tolerances() {
        assert!(numeric_close(1.0, 1.0 + 1e-10, 1e-9, 0.0));
        assert!(!numeric_close(1.0, 1.1, 1e-9, 0.0));
        assert!(numeric_close(1000.0, 1000.5, 0.0, 1e-3));
        assert!(!numeric_close(1000.0, 1002.0, 0.0, 1e-3));
        assert!(numeric_close(0.0, 1e-12, 1e-9, 1e-6));
        assert!(numeric_close(-0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn numeric_close_special_values() {
        assert!(!numeric_close(f64::NAN, f64::NAN, 1.0, 1.0));
        assert!(!numeric_close(f64::NAN, 1.0, 1.0, 1.0));
        assert!(numeric_close(f64::INFINITY, f64::INFINITY, 0.0, 0.0));
        assert!(numeric_close(
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            0.0,
            0.0
        ));
        assert!(!numeric_close(f64::INFINITY, f64::NEG_INFINITY, 1.0, 1.0));
        assert!(!numeric_close(f64::INFINITY, 1e308, 1.0, 1.0));
        assert!(!numeric_close(f64::MAX, -f64::MAX, 1.0, 0.5));
    }
}
