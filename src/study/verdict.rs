//! The human study in plain words: which adapter the raters preferred, or that there is no
//! clear difference yet and about how many more raters would show one. `tally.md`, the
//! terminal tally and the organiser's page print these sentences above their numbers.
//!
//! **Preferred**: the exact two-sided sign test on the non-tie votes (`tally::sign_test`)
//! below 0.05.
//!
//! **How many more raters** (a power calculation). Call a "10-point difference" one adapter
//! winning 10 percentage points more of all votes than the other (say 40 % against 30 %,
//! with 30 % ties). With the tie rate `t` seen so far, the non-tie votes then split
//! `p1 = 1/2 + d / (2 (1 - t))` to `1 - p1`, `d = 0.10`. A two-sided sign test at
//! `alpha = 0.05` detects that with power `0.8` after about
//!
//! ```text
//! n = ( z(1 - alpha/2) * 1/2 + z(power) * sqrt(p1 (1 - p1)) )^2 / (p1 - 1/2)^2
//! ```
//!
//! non-tie votes (the normal approximation to the binomial; `z(0.975) = 1.95996`,
//! `z(0.8) = 0.84162`). Each rater gives `v (1 - t)` non-tie votes, `v` being the votes per
//! rater so far (first showings of pairs), so `ceil(n / (v (1 - t)))` raters are needed in
//! all, and the sentence names how many more that is. With no ties, `n` is 783; the exact
//! binomial power of the sign test at that `n` is 0.789 (the exact test is a little
//! conservative, being discrete). Like the sign test itself it counts every vote as
//! independent, which votes of several raters on one pair are not.

use super::tally::{Summary, Tally};

/// The significance level of the sign test.
pub const ALPHA: f64 = 0.05;
/// The power the rater count is planned for.
pub const POWER: f64 = 0.8;
/// The difference planned for: 10 percentage points of all votes.
pub const DIFFERENCE: f64 = 0.10;
/// z(1 - ALPHA / 2).
const Z_ALPHA: f64 = 1.959_963_984_540_054;
/// z(POWER).
const Z_POWER: f64 = 0.841_621_233_572_914_3;

/// Non-tie votes a two-sided sign test (alpha 0.05) needs to detect, with power 0.8, a win
/// share of `p1` among non-tie votes (see the module's formula). `None` for `p1 <= 1/2`.
pub fn non_tie_votes_needed(p1: f64) -> Option<f64> {
    if p1 <= 0.5 || !p1.is_finite() {
        return None;
    }
    let p1 = p1.min(1.0);
    let top = Z_ALPHA * 0.5 + Z_POWER * (p1 * (1.0 - p1)).sqrt();
    Some((top / (p1 - 0.5)).powi(2))
}

/// What the power calculation says for a study so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatersNeeded {
    /// Raters needed in all to detect a 10-point difference.
    pub total: usize,
    /// Of those, how many more than there are now (0 when there are enough already).
    pub more: usize,
}

/// Raters needed for a 10-point difference, from the tie rate and the votes per rater so
/// far. `None` when nothing can be said (no votes, or every vote a tie).
pub fn raters_needed(votes: usize, ties: usize, raters: usize) -> Option<RatersNeeded> {
    if votes == 0 || raters == 0 || ties >= votes {
        return None;
    }
    let tie_rate = ties as f64 / votes as f64;
    let p1 = 0.5 + DIFFERENCE / (2.0 * (1.0 - tie_rate));
    let n = non_tie_votes_needed(p1)?;
    let per_rater = votes as f64 / raters as f64 * (1.0 - tie_rate);
    let total = (n.ceil() / per_rater).ceil() as usize;
    Some(RatersNeeded {
        total,
        more: total.saturating_sub(raters),
    })
}

fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else if p < 0.01 {
        format!("p = {p:.3}")
    } else {
        format!("p = {p:.2}")
    }
}

/// One criterion in words: "raters preferred MoSLoRA (52 % to 31 % of votes, p = 0.01)", or
/// "no clear difference yet (p = 0.40); about 12 more raters would detect a 10-point
/// difference".
pub fn preference(s: &Summary, a_label: &str, b_label: &str, raters: usize) -> String {
    let c = &s.counts;
    let Some(p) = s.sign_test_p else {
        return if s.votes == 0 {
            "no votes yet".into()
        } else {
            "every vote so far is a tie: no difference seen".into()
        };
    };
    if p < ALPHA {
        let (winner, w, l) = if c.wins > c.losses {
            (b_label, s.win.percent, s.loss.percent)
        } else {
            (a_label, s.loss.percent, s.win.percent)
        };
        return format!(
            "raters preferred {winner} ({w:.0} % to {l:.0} % of votes, {})",
            p_text(p)
        );
    }
    match raters_needed(s.votes, c.ties, raters) {
        Some(r) if r.more > 0 => format!(
            "no clear difference yet ({}); about {} would detect a 10-point difference",
            p_text(p),
            crate::words::count(r.more, "more rater")
        ),
        Some(_) => format!(
            "no clear difference ({}): with this many votes a 10-point difference would \
             probably have shown, so any difference is likely smaller",
            p_text(p)
        ),
        None => format!("no clear difference yet ({})", p_text(p)),
    }
}

/// Every criterion of a tally in words, each led by what it asked: "subject similarity:
/// raters preferred MoSLoRA (...)".
pub fn sentences(t: &Tally) -> Vec<String> {
    t.overall
        .iter()
        .map(|o| {
            format!(
                "{}: {}",
                o.criterion.title(),
                preference(&o.summary, &t.a.label, &t.b.label, t.raters)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tally::Counts;
    use super::*;

    /// P(the sign test rejects at ALPHA | n non-tie votes, win share p1), summed exactly over
    /// the binomial (in log space).
    fn exact_power(n: usize, p1: f64) -> f64 {
        let ln_choose = |k: usize| -> f64 {
            (1..=k)
                .map(|i| ((n - k + i) as f64).ln() - (i as f64).ln())
                .sum()
        };
        (0..=n)
            .filter(|&k| super::super::tally::sign_test(k, n - k).unwrap() < ALPHA)
            .map(|k| (ln_choose(k) + k as f64 * p1.ln() + (n - k) as f64 * (1.0 - p1).ln()).exp())
            .sum()
    }

    #[test]
    fn the_power_calculation_matches_hand_derived_values() {
        // No ties: p1 = 0.55; (1.959964 * 0.5 + 0.841621 * sqrt(0.2475))^2 / 0.05^2 = 782.5.
        let n = non_tie_votes_needed(0.55).unwrap();
        assert!((n - 782.53).abs() < 0.01, "{n}");
        // 30 % ties: p1 = 0.5 + 0.1 / 1.4 = 0.571429; n = 382.23.
        let n = non_tie_votes_needed(0.5 + 0.1 / 1.4).unwrap();
        assert!((n - 382.229).abs() < 0.01, "{n}");
        // The exact binomial power of the two-sided sign test at those n, summed in Python
        // with math.comb over every k whose exact p < 0.05: 0.788537 and 0.776562.
        assert!((exact_power(783, 0.55) - 0.788_537).abs() < 1e-5);
        assert!((exact_power(383, 0.5 + 0.1 / 1.4) - 0.776_562).abs() < 1e-5);
        assert!(non_tie_votes_needed(0.5).is_none());
    }

    #[test]
    fn raters_needed_scales_with_votes_per_rater_and_ties() {
        // 5 raters x 32 votes, 30 % ties: 22.4 non-tie votes each; 383 / 22.4 -> 18 in all.
        let r = raters_needed(160, 48, 5).unwrap();
        assert_eq!(
            r,
            RatersNeeded {
                total: 18,
                more: 13
            }
        );
        // No ties, 40 votes each: 783 / 40 -> 20.
        assert_eq!(raters_needed(80, 0, 2).unwrap().total, 20);
        // Enough already.
        assert_eq!(raters_needed(2000, 0, 50).unwrap().more, 0);
        assert!(raters_needed(10, 10, 2).is_none());
        assert!(raters_needed(0, 0, 0).is_none());
    }

    #[test]
    fn preferences_in_words() {
        let s = Summary::of(Counts {
            wins: 20,
            ties: 4,
            losses: 6,
        });
        assert_eq!(
            preference(&s, "LoRA", "MoSLoRA", 3),
            "raters preferred MoSLoRA (67 % to 20 % of votes, p = 0.009)"
        );
        let s = Summary::of(Counts {
            wins: 5,
            ties: 20,
            losses: 15,
        });
        assert!(preference(&s, "LoRA", "my adapter", 1).starts_with("raters preferred LoRA"));
        let s = Summary::of(Counts {
            wins: 12,
            ties: 10,
            losses: 10,
        });
        // 32 votes from 1 rater, 10 ties: p1 = 0.5 + 0.1 / (2 * 22/32) = 0.572727; n = 368.6
        // non-tie votes; 22 per rater -> 17 raters, 16 more.
        assert_eq!(
            preference(&s, "LoRA", "MoSLoRA", 1),
            "no clear difference yet (p = 0.83); about 16 more raters would detect a 10-point \
             difference"
        );
        let one = Summary::of(Counts {
            wins: 1,
            ties: 0,
            losses: 0,
        });
        assert!(preference(&one, "A", "B", 40).contains("no clear difference"));
        let ties = Summary::of(Counts {
            wins: 0,
            ties: 3,
            losses: 0,
        });
        assert_eq!(
            preference(&ties, "A", "B", 1),
            "every vote so far is a tie: no difference seen"
        );
    }
}
