//! Reconnect delays: exponential growth with "full jitter" (a uniform draw between zero
//! and the current ceiling), so workers cut off by one broker restart do not all come back
//! at the same instant.
//!
//! Built on `rand` (already in the workspace) rather than the `backoff` crate, which is
//! unmaintained (RUSTSEC-2025-0012), or `exponential-backoff`, a further crate for what is
//! ten lines here.

use std::time::Duration;

use rand::Rng;

/// The reconnect schedule of one session: ceilings `min, 2·min, 4·min, … max`, each delay
/// drawn uniformly in `0..=ceiling`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// A schedule whose first ceiling is `min` and whose ceilings stop growing at `max`
    /// (`max` below `min` is taken as `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            ceiling: min,
        }
    }

    /// The next delay, drawn from `rng`; the ceiling then doubles (up to `max`).
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }

    /// The ceiling the next delay is drawn under.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// Back to the first ceiling (after a session that lived a while).
    pub fn reset(&mut self) {
        self.ceiling = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn delays_stay_under_a_ceiling_that_doubles_up_to_max() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = Backoff::new(MIN, MAX);
        let mut expected = MIN;
        for _ in 0..20 {
            assert_eq!(b.ceiling(), expected);
            let d = b.next_delay(&mut rng);
            assert!(d <= expected, "{d:?} above ceiling {expected:?}");
            expected = (expected * 2).min(MAX);
        }
        assert_eq!(b.ceiling(), MAX);
        b.reset();
        assert_eq!(b.ceiling(), MIN);
    }

    #[test]
    fn delays_are_spread_not_all_equal() {
        // Many workers at the same step of the schedule: their delays must differ and
        // cover the range, not bunch at one point.
        let mut rng = SmallRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Backoff::new(MIN, MAX);
                b.next_delay(&mut rng);
                b.next_delay(&mut rng) // second step: ceiling 200 ms
            })
            .collect();
        let lo = delays.iter().min().copied().unwrap_or_default();
        let hi = delays.iter().max().copied().unwrap_or_default();
        assert!(hi <= MIN * 2);
        assert!(lo < MIN / 2 && hi > MIN * 3 / 2, "spread {lo:?}..{hi:?}");
    }
}
