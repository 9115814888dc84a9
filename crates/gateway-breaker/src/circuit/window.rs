//! Sliding windows of call outcomes.

use std::time::Duration;

use tokio::time::Instant;

/// Counts in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

/// The last `n` outcomes, as a ring.
#[derive(Debug)]
pub(crate) struct CountWindow {
    outcomes: Vec<u8>,
    next: usize,
    counts: Counts,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;
const EMPTY: u8 = 4;

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            outcomes: vec![EMPTY; size.max(1)],
            next: 0,
            counts: Counts::default(),
        }
    }

    pub(crate) fn push(&mut self, failed: bool, slow: bool) {
        let old = self.outcomes[self.next];
        if old & EMPTY == 0 {
            self.counts.calls -= 1;
            self.counts.failures -= u32::from(old & FAILED != 0);
            self.counts.slow -= u32::from(old & SLOW != 0);
        }
        self.outcomes[self.next] = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        self.counts.calls += 1;
        self.counts.failures += u32::from(failed);
        self.counts.slow += u32::from(slow);
        self.next = (self.next + 1) % self.outcomes.len();
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn clear(&mut self) {
        self.outcomes.fill(EMPTY);
        self.next = 0;
        self.counts = Counts::default();
    }
}

/// The outcomes of the last `span`, in ten buckets of `span / 10`.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    bucket: Duration,
    buckets: [(Option<Instant>, Counts); BUCKETS],
}

const BUCKETS: usize = 10;

impl TimeWindow {
    pub(crate) fn new(span: Duration) -> Self {
        Self {
            bucket: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(None, Counts::default()); BUCKETS],
        }
    }

    fn slot(&self, now: Instant) -> (usize, Instant) {
        // Buckets are aligned to multiples of the bucket width since an arbitrary origin: the
        // window's first use.
        let origin = self
            .buckets
            .iter()
            .filter_map(|(s, _)| *s)
            .min()
            .unwrap_or(now);
        let since = now.saturating_duration_since(origin);
        let n = since.as_nanos() / self.bucket.as_nanos().max(1);
        let start = origin + self.bucket * u32::try_from(n).unwrap_or(u32::MAX);
        (usize::try_from(n % BUCKETS as u128).unwrap_or(0), start)
    }

    fn expire(&mut self, now: Instant) {
        let span = self.bucket * BUCKETS as u32;
        for (start, counts) in &mut self.buckets {
            if start.is_some_and(|s| now.saturating_duration_since(s) >= span) {
                *start = None;
                *counts = Counts::default();
            }
        }
    }

    pub(crate) fn push(&mut self, now: Instant, failed: bool, slow: bool) {
        self.expire(now);
        let (index, start) = self.slot(now);
        let (bucket_start, counts) = &mut self.buckets[index];
        if *bucket_start != Some(start) {
            *bucket_start = Some(start);
            *counts = Counts::default();
        }
        counts.calls += 1;
        counts.failures += u32::from(failed);
        counts.slow += u32::from(slow);
    }

    pub(crate) fn counts(&mut self, now: Instant) -> Counts {
        self.expire(now);
        self.buckets
            .iter()
            .fold(Counts::default(), |acc, (_, c)| Counts {
                calls: acc.calls + c.calls,
                failures: acc.failures + c.failures,
                slow: acc.slow + c.slow,
            })
    }

    pub(crate) fn clear(&mut self) {
        self.buckets = [(None, Counts::default()); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_evicts_the_oldest_outcome() {
        let mut w = CountWindow::new(3);
        w.push(true, false);
        w.push(false, true);
        w.push(false, false);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // The fourth outcome replaces the first (the failure).
        w.push(false, false);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.clear();
        assert_eq!(w.counts(), Counts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_outcomes_older_than_its_span() {
        let mut w = TimeWindow::new(Duration::from_secs(10));
        w.push(Instant::now(), true, false);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.push(Instant::now(), true, false);
        assert_eq!(w.counts(Instant::now()).failures, 2);
        // Just before the first outcome is 10 s old, both count; just after, only one.
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(w.counts(Instant::now()).failures, 2);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(w.counts(Instant::now()).failures, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(w.counts(Instant::now()), Counts::default());
    }
}
