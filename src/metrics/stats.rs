//! The statistics of the automatic metrics: means with bootstrap 95 % intervals, and the
//! paired comparison of two adapters over identical (prompt, seed) renders (mean difference
//! with a bootstrap interval, win / tie / loss at a tie margin, exact sign test). The sign
//! test and the seeded generator are shared with the human study's tally.

use rand::rngs::OsRng;
use rand::{Rng, SeedableRng, TryRngCore};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Exact two-sided sign test: the probability, under Binomial(wins + losses, 1/2), of a split
/// at least as uneven as the one seen. `None` when there is no non-tie vote.
pub fn sign_test(wins: usize, losses: usize) -> Option<f64> {
    let n = wins + losses;
    if n == 0 {
        return None;
    }
    let k = wins.min(losses);
    // Terms C(n, i) / 2^n by the ratio C(n, i) / C(n, i - 1) = (n - i + 1) / i: directly while
    // 2^-n is a normal float, in log space beyond (so large studies do not underflow).
    let mut tail = 0.0f64;
    if n <= 1000 {
        let mut term = 0.5f64.powi(n as i32);
        for i in 0..=k {
            if i > 0 {
                term *= (n - i + 1) as f64 / i as f64;
            }
            tail += term;
        }
    } else {
        let ln2n = n as f64 * std::f64::consts::LN_2;
        let mut ln_c = 0.0f64;
        for i in 0..=k {
            if i > 0 {
                ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            tail += (ln_c - ln2n).exp();
        }
    }
    Some((2.0 * tail).min(1.0))
}

/// The seeded generator every random choice of a study (names, sides, order, repeats) and
/// every bootstrap comes from: ChaCha8, whose stream for a seed is fixed across versions of
/// `rand_chacha`, so a study made from its recorded seed can be remade exactly.
pub type SeededRng = ChaCha8Rng;

/// The generator for `seed`.
pub fn seeded_rng(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}

/// A seed from the operating system's randomness, for studies made without `--seed`.
pub fn fresh_seed() -> u64 {
    OsRng
        .try_next_u64()
        .expect("the operating system's random source")
}

/// Resamples of every bootstrap: enough that the interval's ends move by well under 0.001 of a
/// cosine between seeds.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;
/// The bootstrap's fixed seed: the same scores always give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0;

/// A mean with its 95 % interval (kept in the render manifest, hence defined there).
pub use crate::render::manifest::Estimate;

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The `q` quantile of sorted values, linearly interpolated (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 < sorted.len() {
        sorted[i] + frac * (sorted[i + 1] - sorted[i])
    } else {
        sorted[i]
    }
}

/// The mean of `v` with a percentile-bootstrap 95 % interval (`resamples` resamples of the
/// values with replacement, from `seed`). `None` for no values; a single value has a
/// zero-width interval.
pub fn bootstrap_mean(v: &[f64], resamples: usize, seed: u64) -> Option<Estimate> {
    if v.is_empty() {
        return None;
    }
    let m = mean(v);
    let mut rng = seeded_rng(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            let s: f64 = (0..v.len()).map(|_| v[rng.random_range(0..v.len())]).sum();
            s / v.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Estimate {
        mean: m,
        lo: quantile(&means, 0.025),
        hi: quantile(&means, 0.975),
        n: v.len(),
    })
}

/// B against A on paired scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Mean of `b - a`, with its bootstrap interval (the pairs are resampled).
    pub diff: Estimate,
    /// Pairs where B is ahead by more than the margin, within it, behind by more.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub tie_margin: f64,
    /// Exact two-sided sign test on wins against losses.
    pub sign_test_p: Option<f64>,
}

/// Compare paired scores `(a, b)`. `None` without pairs.
pub fn paired(
    pairs: &[(f64, f64)],
    tie_margin: f64,
    resamples: usize,
    seed: u64,
) -> Option<Paired> {
    let d: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
    let diff = bootstrap_mean(&d, resamples, seed)?;
    let wins = d.iter().filter(|&&x| x > tie_margin).count();
    let losses = d.iter().filter(|&&x| x < -tie_margin).count();
    Some(Paired {
        diff,
        wins,
        ties: d.len() - wins - losses,
        losses,
        tie_margin,
        sign_test_p: sign_test(wins, losses),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_brackets_the_mean_and_is_reproducible() {
        let v: Vec<f64> = (0..40).map(|i| (i as f64 * 0.37).sin()).collect();
        let a = bootstrap_mean(&v, 2000, 7).unwrap();
        let b = bootstrap_mean(&v, 2000, 7).unwrap();
        assert_eq!(a, b);
        assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
        // Normal theory: half-width about 1.96 sd / sqrt(n).
        let sd = (v.iter().map(|x| (x - a.mean).powi(2)).sum::<f64>() / 39.0).sqrt();
        let half = 1.96 * sd / 40f64.sqrt();
        assert!(
            ((a.hi - a.lo) / 2.0 - half).abs() < 0.25 * half,
            "{a:?} vs {half}"
        );
        let one = bootstrap_mean(&[0.5], 100, 0).unwrap();
        assert_eq!((one.lo, one.mean, one.hi), (0.5, 0.5, 0.5));
        assert!(bootstrap_mean(&[], 100, 0).is_none());
    }

    #[test]
    fn paired_counts_with_the_margin() {
        let pairs = [(0.5, 0.6), (0.5, 0.503), (0.5, 0.4), (0.5, 0.7), (0.2, 0.2)];
        let p = paired(&pairs, 0.005, 1000, 0).unwrap();
        assert_eq!((p.wins, p.ties, p.losses), (2, 2, 1));
        assert!((p.diff.mean - 0.0406).abs() < 1e-9);
        assert_eq!(p.sign_test_p, sign_test(2, 1));
    }
}
