//! Learn-then-Test (LTT) threshold calibration as CALM uses it (Schuster et al. 2022; Angelopoulos
//! et al. 2021). Each candidate early-exit confidence threshold λ has per-sample risks in [0,1]
//! (e.g. 1 when the early output disagrees with the full-depth one). For each λ we test
//! H0: risk(λ) > δ with the Hoeffding–Bentkus p-value of the empirical risk R̂, going from the
//! most conservative threshold (highest λ, exits latest) downwards and stopping at the first
//! non-rejection (fixed-sequence testing). The last rejected λ is returned; with probability at
//! least 1 − ε its true risk is ≤ δ. [`validity_check`] estimates that guarantee empirically on
//! random calibration/test splits. 

use std::f64::consts::{E, PI};

/// `x ln(x / y)` with the convention `0 · ln 0 = 0`.
fn xlogx_over(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * (x / y).ln() }
}

/// Stirling-series error `ln(n!) − [(n + ½) ln n − n + ½ ln 2π]` for integer `n ≥ 1` (Loader 2000).
fn stirlerr(n: u64) -> f64 {
    let x = n as f64;
    if n <= 15 {
        let ln_fact: f64 = (2..=n).map(|i| (i as f64).ln()).sum();
        return ln_fact - (x + 0.5) * x.ln() + x - 0.5 * (2.0 * PI).ln();
    }
    let x2 = x * x;
    (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - (1.0 / 1680.0 - 1.0 / (1188.0 * x2)) / x2) / x2) / x2) / x
}

/// Deviance term `x ln(x/m) + m − x`, computed without cancellation when `x ≈ m` (Loader 2000).
fn bd0(x: f64, m: f64) -> f64 {
    if (x - m).abs() < 0.1 * (x + m) {
        let v = (x - m) / (x + m);
        let (mut s, mut ej, mut j) = ((x - m) * v, 2.0 * x * v, 1.0);
        loop {
            ej *= v * v;
            let s1 = s + ej / (2.0 * j + 1.0);
            if s1 == s { return s; }
            s = s1;
            j += 1.0;
        }
    }
    xlogx_over(x, m) + m - x
}

/// Binomial pmf `P(X = k)` for `0 < p < 1`, accurate to a few ulps even for large `n`.
fn binom_pmf(k: u64, n: u64, p: f64) -> f64 {
    let q = 1.0 - p;
    if k == 0 { return (n as f64 * (-p).ln_1p()).exp(); }
    if k == n { return (n as f64 * p.ln()).exp(); }
    let (nf, kf, rf) = (n as f64, k as f64, (n - k) as f64);
    let log_pmf = stirlerr(n) - stirlerr(k) - stirlerr(n - k) - bd0(kf, nf * p) - bd0(rf, nf * q)
        + 0.5 * (nf / (2.0 * PI * kf * rf)).ln();
    log_pmf.exp()
}

/// `P(Binomial(n, p) ≤ k)`. Returns 0 for `k < 0`, 1 for `k ≥ n`, handles `p = 0` and `p = 1`
/// exactly, and NaN for `p` outside [0, 1]. Below the mean the lower tail is summed directly,
/// otherwise `1 − upper tail`; each tail starts from a saddle-point pmf (Loader's algorithm) and
/// walks away from the mode by the pmf ratio recurrence, so `n` up to ~1e6 and beyond is stable.
pub fn binom_cdf(k: i64, n: u64, p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) { return f64::NAN; }
    if k < 0 { return 0.0; }
    let k = k as u64;
    if k >= n || p == 0.0 { return 1.0; }
    if p == 1.0 { return 0.0; }
    let odds = p / (1.0 - p);
    let sum_tail = |start: u64, down: bool| -> f64 {
        let (mut i, mut term) = (start, binom_pmf(start, n, p));
        let mut sum = term;
        loop {
            if (down && i == 0) || (!down && i == n) { return sum; }
            let ratio = if down { i as f64 / ((n - i + 1) as f64 * odds) } else { (n - i) as f64 * odds / (i + 1) as f64 };
            term *= ratio;
            i = if down { i - 1 } else { i + 1 };
            sum += term;
            // Terms shrink at least geometrically from here (log-concave pmf), so the rest is
            // bounded by term · ratio / (1 − ratio).
            if term == 0.0 || (ratio < 1.0 && term * ratio <= sum * 1e-17 * (1.0 - ratio)) { return sum; }
        }
    };
    if (k as f64) < n as f64 * p { sum_tail(k, true) } else { (1.0 - sum_tail(k + 1, false)).max(0.0) }
}

/// Bernoulli KL divergence `h1(a, b) = a ln(a/b) + (1 − a) ln((1 − a)/(1 − b))`, with
/// `0 · ln 0 = 0` (so `h1(0, b) = −ln(1 − b)` and `h1(1, b) = −ln b`).
pub fn h1(a: f64, b: f64) -> f64 {
    xlogx_over(a, b) + xlogx_over(1.0 - a, 1.0 - b)
}

/// Hoeffding–Bentkus p-value for H0: risk > `delta`, given empirical risk `r_hat` on `n` samples,
/// as in `hb_p_value` of aangelopoulos/ltt `core/bounds.py`:
/// `min(e · P(Binomial(n, δ) ≤ ⌈n R̂⌉), exp(−n · h1(min(R̂, δ), δ)))`, capped at 1.
///
/// Differences from the Python reference, both in the less conservative but mathematically
/// intended direction: `h1` uses `0 · ln 0 = 0` (numpy yields NaN at `R̂ = 0` and the reference then
/// falls back to the Bentkus term alone), and `⌈n R̂⌉` ignores float noise of relative size 1e-9
/// (so `R̂ = 7/100` counts 7 failures, not 8 from `100 · 0.07 = 7.000000000000001`).
///
/// Invalid input (`r_hat` outside [0, 1] or NaN, `n == 0`, `delta` outside (0, 1)) carries no
/// evidence against H0 and returns 1.0.
pub fn hb_p_value(r_hat: f64, n: usize, delta: f64) -> f64 {
    if !(0.0..=1.0).contains(&r_hat) || n == 0 || !(delta > 0.0 && delta < 1.0) { return 1.0; }
    let nf = n as f64;
    let failures = (nf * r_hat * (1.0 - 1e-9)).ceil() as i64;
    let bentkus = E * binom_cdf(failures, n as u64, delta);
    let hoeffding = (-nf * h1(r_hat.min(delta), delta)).exp();
    bentkus.min(hoeffding).min(1.0)
}

/// One tested threshold of the fixed sequence.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LttStep {
    /// The candidate confidence threshold λ.
    pub threshold: f64,
    /// Empirical risk R̂: mean of the per-sample risks (NaN when there are none).
    pub risk: f64,
    /// Number of calibration samples behind `risk`.
    pub n: usize,
    /// Hoeffding–Bentkus p-value of H0: risk(λ) > δ.
    pub p_value: f64,
    /// Whether H0 was rejected (`p_value ≤ ε`), i.e. λ is certified.
    pub rejected: bool,
}

/// Fixed-sequence LTT over `candidates` = (threshold λ, per-sample risks in [0, 1]). Thresholds are
/// tested from highest (most conservative: exits latest) to lowest, rejecting H0: risk(λ) > `delta`
/// while `p ≤ epsilon`, and stopping at the first non-rejection. Returns only the tested steps, in
/// test order, and the last rejected λ (`None`: nothing certified, run at full depth).
pub fn fixed_sequence(candidates: &[(f64, Vec<f64>)], delta: f64, epsilon: f64) -> (Vec<LttStep>, Option<f64>) {
    let mut order: Vec<&(f64, Vec<f64>)> = candidates.iter().collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut steps, mut chosen) = (Vec::new(), None);
    for (threshold, risks) in order {
        let n = risks.len();
        let risk = risks.iter().sum::<f64>() / n as f64;
        let p_value = hb_p_value(risk, n, delta);
        let rejected = p_value <= epsilon;
        steps.push(LttStep { threshold: *threshold, risk, n, p_value, rejected });
        if !rejected { break; }
        chosen = Some(*threshold);
    }
    (steps, chosen)
}

/// Outcome of [`validity_check`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Validity {
    /// Number of random calibration/test splits run.
    pub splits: usize,
    /// Splits whose chosen λ had test-half mean risk above δ.
    pub violations: usize,
    /// `violations / splits` (0 when `splits == 0`). LTT promises P(true risk > δ) ≤ ε, so this
    /// should be ≤ ε up to sampling error (see [`violation_allowance`]); the finite test half adds
    /// its own noise on top.
    pub violation_rate: f64,
    /// Splits where no threshold was certified (full depth).
    pub chosen_none: usize,
    /// Mean over all splits of the chosen λ's test-half risk (full depth counts as 0).
    pub mean_chosen_test_risk: f64,
}

/// Largest violation rate consistent with LTT's ε guarantee at three binomial standard errors:
/// `ε + 3 √(ε(1 − ε)/splits)`.
pub fn violation_allowance(epsilon: f64, splits: usize) -> f64 {
    epsilon + 3.0 * (epsilon * (1.0 - epsilon) / splits.max(1) as f64).sqrt()
}

/// SplitMix64 pseudo-random generator (std-only, deterministic per seed).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform integer in `0..bound` (`bound > 0`), by the multiply-high method.
    fn below(&mut self, bound: usize) -> usize {
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }
}

/// Empirical check of the LTT guarantee. Every candidate in `cal_pool` carries risks for the same
/// m pooled samples in the same order. Each of `splits` splits shuffles the samples (Fisher–Yates,
/// SplitMix64 seeded by `seed`), calibrates with [`fixed_sequence`] on the first ⌊m/2⌋ and counts a
/// violation when the chosen λ's mean risk on the rest exceeds `delta` (no λ chosen = full depth =
/// risk 0, never a violation).
///
/// # Panics
/// If the candidates' risk vectors differ in length.
pub fn validity_check(cal_pool: &[(f64, Vec<f64>)], delta: f64, epsilon: f64, splits: usize, seed: u64) -> Validity {
    let m = cal_pool.first().map_or(0, |c| c.1.len());
    assert!(cal_pool.iter().all(|c| c.1.len() == m), "validity_check: risk vectors differ in length");
    let mut rng = SplitMix64(seed);
    let mut perm: Vec<usize> = (0..m).collect();
    let (mut violations, mut chosen_none, mut test_risk_sum) = (0, 0, 0.0);
    for _ in 0..splits {
        for i in (1..m).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let (cal_idx, test_idx) = perm.split_at(m / 2);
        let cal: Vec<(f64, Vec<f64>)> =
            cal_pool.iter().map(|(t, r)| (*t, cal_idx.iter().map(|&i| r[i]).collect())).collect();
        let chosen = fixed_sequence(&cal, delta, epsilon).1;
        let Some(pos) = chosen.and_then(|lam| cal_pool.iter().position(|c| c.0 == lam)) else {
            chosen_none += 1;
            continue;
        };
        let risks = &cal_pool[pos].1;
        let test_risk = test_idx.iter().map(|&i| risks[i]).sum::<f64>() / test_idx.len().max(1) as f64;
        test_risk_sum += test_risk;
        if test_risk > delta { violations += 1; }
    }
    let per_split = |x: f64| if splits == 0 { 0.0 } else { x / splits as f64 };
    Validity {
        splits,
        violations,
        violation_rate: per_split(violations as f64),
        chosen_none,
        mean_chosen_test_risk: per_split(test_risk_sum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
        let err = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
        assert!(err <= tol, "{what}: got {got:e}, want {want:e}, rel err {err:e}");
    }

    #[test]
    fn binom_cdf_matches_scipy() {
        // (k, n, p, scipy.stats.binom.cdf(k, n, p)) from scipy 1.17.1.
        let cases: [(i64, u64, f64, f64); 14] = [
            (3, 10, 0.3, 0.6496107184000002),
            (0, 10, 0.3, 0.028247524900000005),
            (50, 100, 0.5, 0.5397946186935889),
            (10, 100, 0.2, 0.005696380955793536),
            (30, 100, 0.2, 0.993940664518957),
            (1, 100, 0.2, 5.296293538469694e-09),
            (80, 1000, 0.1, 0.017611574675836128),
            (120, 1000, 0.1, 0.98274276947338),
            (500, 1000, 0.49, 0.7467502275563251),
            (20, 1000, 0.05, 7.658846376635442e-07),
            (900, 1_000_000, 0.001, 0.0006940154622868455),
            (1000, 1_000_000, 0.001, 0.5084093682207762),
            (1100, 1_000_000, 0.001, 0.9991371002480112),
            (499_000, 1_000_000, 0.5, 0.0228041499326948),
        ];
        for (k, n, p, want) in cases {
            assert_rel(binom_cdf(k, n, p), want, 1e-10, &format!("binom_cdf({k}, {n}, {p})"));
        }
        assert_eq!(binom_cdf(-1, 10, 0.3), 0.0);
        assert_eq!(binom_cdf(10, 10, 0.3), 1.0);
        assert_eq!(binom_cdf(3, 10, 0.0), 1.0);
        assert_eq!(binom_cdf(9, 10, 1.0), 0.0);
    }

    #[test]
    fn h1_conventions() {
        assert_rel(h1(0.0, 0.5), 2f64.ln(), 1e-15, "h1(0, .5)");
        assert_rel(h1(1.0, 0.25), 4f64.ln(), 1e-15, "h1(1, .25)");
        assert_eq!(h1(0.3, 0.3), 0.0);
    }

    #[test]
    fn hb_p_value_matches_scipy() {
        // By hand, n = 10, R̂ = 0, δ = 0.5: Bentkus = e · 0.5^10 ≈ 2.6546e-3, Hoeffding =
        // exp(−10 · ln(1/(1 − 0.5))) = 0.5^10, so p = 0.5^10 = 9.765625e-4.
        assert_rel(hb_p_value(0.0, 10, 0.5), 0.5f64.powi(10), 1e-13, "hand case");
        // (R̂, n, δ, p) from scipy with h1 via scipy.special.xlogy; comment: the smaller term.
        let cases: [(f64, usize, f64, f64); 9] = [
            (0.0, 100, 0.1, 2.6561398887587334e-05),    // Hoeffding = 0.9^100
            (0.05, 1000, 0.1, 1.6296555233663317e-08),  // Bentkus
            (0.08, 1000, 0.1, 0.047873223411874846),    // Bentkus
            (0.09, 200, 0.1, 0.8917397900787856),       // Hoeffding (Bentkus 1.0123)
            (0.03, 100, 0.1, 0.021301780540468943),     // Bentkus
            (0.15, 100, 0.1, 1.0),                      // R̂ > δ: Hoeffding 1, Bentkus 2.61
            (0.1, 500, 0.1, 1.0),                       // R̂ = δ: capped
            (0.02, 1000, 0.05, 2.0818902932567524e-06), // Bentkus
            (0.07, 100, 0.2, 0.0007529284587749173),    // Bentkus with k = 7 (reference: k = 8)
        ];
        for (r, n, d, want) in cases {
            assert_rel(hb_p_value(r, n, d), want, 1e-10, &format!("hb_p_value({r}, {n}, {d})"));
        }
        for (r, n, d) in [(-0.1, 10, 0.1), (1.1, 10, 0.1), (f64::NAN, 10, 0.1), (0.0, 0, 0.1), (0.0, 10, 0.0), (0.0, 10, 1.0)] {
            assert_eq!(hb_p_value(r, n, d), 1.0, "invalid input ({r}, {n}, {d})");
        }
    }

    #[test]
    fn fixed_sequence_stops_at_first_failure() {
        let zeros = vec![0.0; 100];
        let half: Vec<f64> = (0..100).map(|i| (i % 2) as f64).collect();
        // Given out of order to exercise the descending sort; 0.7 fails (R̂ = 0.5 > δ).
        let cands = vec![(0.6, zeros.clone()), (0.9, zeros.clone()), (0.7, half), (0.8, zeros.clone())];
        let (steps, chosen) = fixed_sequence(&cands, 0.2, 0.05);
        assert_eq!(steps.iter().map(|s| s.threshold).collect::<Vec<_>>(), vec![0.9, 0.8, 0.7]);
        assert_eq!(steps.iter().map(|s| s.rejected).collect::<Vec<_>>(), vec![true, true, false]);
        assert_eq!(chosen, Some(0.8));
        assert_rel(steps[0].p_value, 0.8f64.powi(100), 1e-12, "p of R̂ = 0");
        assert_eq!((steps[2].risk, steps[2].p_value), (0.5, 1.0));
        // 0.6 alone would have been certified: only the fixed-sequence stop keeps it out.
        assert_eq!(fixed_sequence(&[(0.6, zeros)], 0.2, 0.05).1, Some(0.6));
        assert_eq!(fixed_sequence(&[], 0.2, 0.05), (vec![], None));
        // Rejection is exactly p ≤ ε: 80 failures in 1000 at δ = 0.1 give p ≈ 0.04787.
        let r80: Vec<f64> = (0..1000).map(|i| if i < 80 { 1.0 } else { 0.0 }).collect();
        assert_eq!(fixed_sequence(&[(0.5, r80.clone())], 0.1, 0.0479).1, Some(0.5));
        assert_eq!(fixed_sequence(&[(0.5, r80)], 0.1, 0.0478).1, None);
    }

    #[test]
    fn validity_check_respects_epsilon() {
        // Sample i has latent z_i ~ U(0,1); at threshold λ its risk is 1 when z_i < 0.3 (1 − λ),
        // so the true risk 0.3 (1 − λ) rises as λ falls and crosses δ = 0.1 at λ = 2/3.
        let mut rng = SplitMix64(7);
        let z: Vec<f64> = (0..2000).map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64).collect();
        let pool: Vec<(f64, Vec<f64>)> = (0..=50)
            .map(|j| {
                let lam = 1.0 - j as f64 / 50.0;
                (lam, z.iter().map(|&zi| if zi < 0.3 * (1.0 - lam) { 1.0 } else { 0.0 }).collect())
            })
            .collect();
        let (delta, epsilon, splits) = (0.1, 0.1, 200);
        let v = validity_check(&pool, delta, epsilon, splits, 42);
        assert_eq!(v.splits, splits);
        assert!(v.violation_rate <= violation_allowance(epsilon, splits), "{v:?}");
        // Non-trivial: a threshold is certified nearly always, with risk close to (below) δ.
        assert!(v.chosen_none < splits / 10, "{v:?}");
        assert!(v.mean_chosen_test_risk > 0.5 * delta && v.mean_chosen_test_risk <= delta, "{v:?}");
        // Same seed, same result.
        assert_eq!(validity_check(&pool, delta, epsilon, splits, 42), v);
    }
}
