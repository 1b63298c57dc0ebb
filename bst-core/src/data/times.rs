//! The event times of a store (issue 12): `u32` offsets from the earliest time when the
//! log spans less than 2^32 seconds (136 years; every real click log), so 4 bytes an event
//! instead of 8, and the `i64` times themselves otherwise. Either way [`Times::get`]
//! gives back each time exactly, so gaps, hours and weekdays are unchanged.

/// Times of events, in event order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Times {
    /// `base + off[e]` seconds since the epoch.
    Offsets {
        /// The earliest time.
        base: i64,
        /// Each event's seconds after `base`.
        off: Vec<u32>,
    },
    /// Seconds since the epoch, for a log spanning 2^32 seconds or more.
    Wide(Vec<i64>),
}

impl Default for Times {
    fn default() -> Times {
        Times::Offsets {
            base: 0,
            off: Vec::new(),
        }
    }
}

impl Times {
    /// The times `at(0), at(1), ..., at(n - 1)`, as offsets when they fit.
    pub fn collect(n: usize, at: impl Fn(usize) -> i64) -> Times {
        let (lo, hi) = (0..n).fold((i64::MAX, i64::MIN), |(lo, hi), i| {
            let t = at(i);
            (lo.min(t), hi.max(t))
        });
        if n == 0 || (hi as i128 - lo as i128) <= u32::MAX as i128 {
            let base = if n == 0 { 0 } else { lo };
            Times::Offsets {
                base,
                off: (0..n).map(|i| (at(i) - base) as u32).collect(),
            }
        } else {
            Times::Wide((0..n).map(at).collect())
        }
    }

    /// Time of event `e`.
    #[inline]
    pub fn get(&self, e: usize) -> i64 {
        match self {
            Times::Offsets { base, off } => base + off[e] as i64,
            Times::Wide(t) => t[e],
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        match self {
            Times::Offsets { off, .. } => off.len(),
            Times::Wide(t) => t.len(),
        }
    }

    /// No events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per event (4 as offsets, 8 wide).
    pub fn bytes_per_event(&self) -> usize {
        match self {
            Times::Offsets { .. } => 4,
            Times::Wide(_) => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_when_the_span_fits_and_every_time_comes_back_exactly() {
        let t = [
            1_511_544_070i64,
            1_511_540_000,
            1_512_316_799,
            1_511_540_000,
        ];
        let s = Times::collect(t.len(), |i| t[i]);
        assert!(matches!(
            &s,
            Times::Offsets {
                base: 1_511_540_000,
                ..
            }
        ));
        assert_eq!((0..4).map(|e| s.get(e)).collect::<Vec<_>>(), t);
        // The widest span offsets hold, with negative times.
        let t = [-5i64, u32::MAX as i64 - 5];
        let s = Times::collect(2, |i| t[i]);
        assert!(matches!(s, Times::Offsets { base: -5, .. }));
        assert_eq!((s.get(0), s.get(1)), (t[0], t[1]));
    }

    #[test]
    fn wide_past_u32_seconds_and_at_the_ends_of_i64() {
        for t in [[0i64, u32::MAX as i64 + 1], [i64::MIN, i64::MAX]] {
            let s = Times::collect(2, |i| t[i]);
            assert!(matches!(s, Times::Wide(_)), "{t:?}");
            assert_eq!((s.get(0), s.get(1)), (t[0], t[1]));
        }
        assert_eq!(Times::collect(0, |_| unreachable!()), Times::default());
    }
}
