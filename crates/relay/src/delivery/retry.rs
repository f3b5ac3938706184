//! The retry policy: a pure function of the attempt number, the schedule, a jitter draw and
//! Meta's wait hint, so it can be property-tested.

use std::time::Duration;

/// Longest wait any hint from Meta may impose on one retry.
pub const MAX_HINTED_WAIT: Duration = Duration::from_secs(6 * 3600);

/// The wait before the next attempt after `attempts` failed ones, or `None` to give up.
///
/// `jitter` is the spread (0.2 = ±20%) and `draw` a uniform number in `[0, 1)`. A hint only
/// lengthens the wait, and is capped at [`MAX_HINTED_WAIT`].
pub fn next_delay(
    attempts: u32,
    schedule: &[Duration],
    jitter: f64,
    draw: f64,
    hint: Option<Duration>,
) -> Option<Duration> {
    let index = usize::try_from(attempts.checked_sub(1)?).ok()?;
    let base = *schedule.get(index)?;
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
    let jittered = base.mul_f64(factor.max(0.0));
    Some(match hint {
        Some(h) => jittered.max(h.min(MAX_HINTED_WAIT)),
        None => jittered,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn schedule() -> Vec<Duration> {
        [1, 5, 30, 120].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn follows_the_schedule_and_gives_up_after_it() {
        let s = schedule();
        assert_eq!(
            next_delay(1, &s, 0.0, 0.5, None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            next_delay(4, &s, 0.0, 0.5, None),
            Some(Duration::from_secs(120))
        );
        assert_eq!(next_delay(5, &s, 0.0, 0.5, None), None);
        assert_eq!(next_delay(0, &s, 0.0, 0.5, None), None);
    }

    #[test]
    fn a_hint_lengthens_but_never_shortens() {
        let s = schedule();
        let hinted = next_delay(1, &s, 0.0, 0.5, Some(Duration::from_secs(60)));
        assert_eq!(hinted, Some(Duration::from_secs(60)));
        let short_hint = next_delay(3, &s, 0.0, 0.5, Some(Duration::from_secs(2)));
        assert_eq!(short_hint, Some(Duration::from_secs(30)));
        let huge = next_delay(1, &s, 0.0, 0.5, Some(Duration::from_secs(86_400)));
        assert_eq!(huge, Some(MAX_HINTED_WAIT));
    }

    proptest! {
        #[test]
        fn the_wait_stays_within_the_jitter_band(
            attempts in 1u32..5, jitter in 0.0f64..=1.0, draw in 0.0f64..1.0,
        ) {
            let s = schedule();
            let base = s[attempts as usize - 1];
            let d = next_delay(attempts, &s, jitter, draw, None).unwrap();
            prop_assert!(d >= base.mul_f64(1.0 - jitter) - Duration::from_micros(1));
            prop_assert!(d <= base.mul_f64(1.0 + jitter) + Duration::from_micros(1));
        }

        #[test]
        fn hints_are_capped(hint_secs in 0u64..1_000_000, draw in 0.0f64..1.0) {
            let d = next_delay(1, &schedule(), 0.2, draw, Some(Duration::from_secs(hint_secs))).unwrap();
            prop_assert!(d <= MAX_HINTED_WAIT.max(Duration::from_secs_f64(1.2)));
        }
    }
}
