//! Summary statistics: mean, standard deviation, median, percentile bootstrap intervals.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A point estimate with a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Interval {
    /// The estimate (a mean).
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end of the 95% interval.
    pub hi: f64,
}

/// Mean of `xs` (0 for an empty slice).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Sample standard deviation (0 for fewer than two values).
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// Linear-interpolated quantile q ∈ [0, 1] of `xs` (0 for an empty slice).
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 < v.len() {
        v[i] * (1.0 - frac) + v[i + 1] * frac
    } else {
        v[i]
    }
}

/// Median of `xs`.
pub fn median(xs: &[f64]) -> f64 {
    quantile(xs, 0.5)
}

/// 95% Student-t interval of the mean, (lo, hi): mean ± t₀.₉₇₅,ₙ₋₁ · s / √n. Right for a few
/// repetitions, where a percentile bootstrap is too narrow; a single value gives (x, x).
pub fn t_interval95(xs: &[f64]) -> (f64, f64) {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let m = mean(xs);
    if xs.len() < 2 {
        return (m, m);
    }
    let n = xs.len() as f64;
    let t = StudentsT::new(0.0, 1.0, n - 1.0).map(|d| d.inverse_cdf(0.975)).unwrap_or(f64::NAN);
    let half = t * std_dev(xs) / n.sqrt();
    (m - half, m + half)
}

/// Mean with a percentile-bootstrap 95% interval from `resamples` resamples (seeded).
pub fn bootstrap_mean(xs: &[f64], resamples: usize, seed: u64) -> Interval {
    bootstrap(xs, resamples, seed, |v| v.iter().sum::<f64>() / v.len() as f64)
}

/// Median with a percentile-bootstrap 95% interval (the point estimate is in `mean`).
pub fn bootstrap_median(xs: &[f64], resamples: usize, seed: u64) -> Interval {
    bootstrap(xs, resamples, seed, median)
}

/// Median with a 95% cluster-bootstrap interval: whole clusters (`cluster[i]` is the cluster of
/// `xs[i]`, e.g. the round a sample ran in) are resampled with replacement, so values that move
/// together (a machine state that lasts a round) count as one observation, not many. With a
/// single cluster it is [`bootstrap_median`].
pub fn cluster_bootstrap_median(xs: &[f64], cluster: &[usize], resamples: usize, seed: u64) -> Interval {
    let groups = clusters(xs, cluster);
    if groups.len() < 2 {
        return bootstrap_median(xs, resamples, seed);
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let stats: Vec<f64> = (0..resamples)
        .map(|_| {
            let picked: Vec<f64> = (0..groups.len()).flat_map(|_| groups[rng.random_range(0..groups.len())].iter().copied()).collect();
            median(&picked)
        })
        .collect();
    Interval { mean: median(xs), lo: quantile(&stats, 0.025), hi: quantile(&stats, 0.975) }
}

/// `xs` grouped by `cluster` (in order of first appearance); every value its own cluster when
/// the lengths differ.
pub fn clusters(xs: &[f64], cluster: &[usize]) -> Vec<Vec<f64>> {
    if cluster.len() != xs.len() {
        return xs.iter().map(|&x| vec![x]).collect();
    }
    let mut ids: Vec<usize> = Vec::new();
    let mut out: Vec<Vec<f64>> = Vec::new();
    for (&x, &c) in xs.iter().zip(cluster) {
        match ids.iter().position(|&i| i == c) {
            Some(k) => out[k].push(x),
            None => {
                ids.push(c);
                out.push(vec![x]);
            }
        }
    }
    out
}

fn bootstrap(xs: &[f64], resamples: usize, seed: u64, stat: impl Fn(&[f64]) -> f64) -> Interval {
    if xs.is_empty() {
        return Interval { mean: f64::NAN, lo: f64::NAN, hi: f64::NAN };
    }
    let m = stat(xs);
    if xs.len() < 2 {
        return Interval { mean: m, lo: m, hi: m };
    }
    // A fast non-cryptographic generator: reports bootstrap thousands of intervals.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let n = xs.len();
    let mut sample = vec![0.0; n];
    let stats: Vec<f64> = (0..resamples)
        .map(|_| {
            sample.iter_mut().for_each(|x| *x = xs[rng.random_range(0..n)]);
            stat(&sample)
        })
        .collect();
    Interval { mean: m, lo: quantile(&stats, 0.025), hi: quantile(&stats, 0.975) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_statistics() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(mean(&xs), 2.5);
        assert_eq!(median(&xs), 2.5);
        assert!((std_dev(&xs) - 1.2909944487358056).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_deterministic() {
        let xs: Vec<f64> = (0..50).map(|i| (i % 7) as f64).collect();
        let a = bootstrap_mean(&xs, 1000, 1);
        assert!(a.lo < a.mean && a.mean < a.hi);
        assert_eq!(a, bootstrap_mean(&xs, 1000, 1));
        let md = bootstrap_median(&[1.0, 2.0, 10.0, 3.0, 2.5], 500, 2);
        assert_eq!(md.mean, 2.5);
        assert!(md.lo <= 2.0 && md.hi >= 3.0 && md.hi <= 10.0, "{md:?}");
        let c = bootstrap_mean(&[0.4; 10], 100, 3);
        assert!((c.lo - 0.4).abs() < 1e-12 && (c.hi - 0.4).abs() < 1e-12);
    }

    #[test]
    fn a_cluster_bootstrap_resamples_whole_clusters() {
        // Two rounds of three equal values: a resample takes round 1 or 2 twice (median 2 or 4)
        // or both (median 3); never a mixture inside a round.
        let (xs, rounds) = ([2.0, 2.0, 2.0, 4.0, 4.0, 4.0], [1, 1, 1, 2, 2, 2]);
        let c = cluster_bootstrap_median(&xs, &rounds, 2000, 0);
        assert_eq!((c.mean, c.lo, c.hi), (3.0, 2.0, 4.0));
        // Counted per sample, the same six values look like six observations: the interval is
        // no narrower here, but with many samples per round it would be (see the sweep tests).
        assert_eq!(clusters(&xs, &rounds), vec![vec![2.0; 3], vec![4.0; 3]]);
        assert_eq!(clusters(&[1.0, 2.0], &[]), vec![vec![1.0], vec![2.0]]);
        // One cluster: the per-sample bootstrap.
        assert_eq!(cluster_bootstrap_median(&[1.0, 3.0], &[0, 0], 100, 1), bootstrap_median(&[1.0, 3.0], 100, 1));
    }
}
