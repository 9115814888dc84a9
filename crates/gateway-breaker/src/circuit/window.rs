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
///
/// Buckets are numbered from a fixed origin (the window's creation), so a moment always falls in
/// the same bucket; a bucket holds the counts of bucket number `n` and is reused for `n + 10`.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    origin: Instant,
    bucket: Duration,
    buckets: [(Option<u64>, Counts); BUCKETS],
}

const BUCKETS: usize = 10;

impl TimeWindow {
    pub(crate) fn new(span: Duration) -> Self {
        Self {
            origin: Instant::now(),
            bucket: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(None, Counts::default()); BUCKETS],
        }
    }

    fn number(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.bucket.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    pub(crate) fn push(&mut self, now: Instant, failed: bool, slow: bool) {
        let n = self.number(now);
        let (number, counts) = &mut self.buckets[(n % BUCKETS as u64) as usize];
        if *number != Some(n) {
            *number = Some(n);
            *counts = Counts::default();
        }
        counts.calls += 1;
        counts.failures += u32::from(failed);
        counts.slow += u32::from(slow);
    }

    pub(crate) fn counts(&mut self, now: Instant) -> Counts {
        let current = self.number(now);
        self.buckets
            .iter()
            .filter(|(n, _)| n.is_some_and(|n| current.saturating_sub(n) < BUCKETS as u64))
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

    #[tokio::test(start_paused = true)]
    async fn outcomes_inside_the_window_survive_older_buckets_expiring() {
        // 1 s buckets. Pushes at 0, 3, 10.5, 12, 13 and 17 s: at 17 s the outcomes of 10.5, 12,
        // 13 and 17 s are inside the window, whatever expired before.
        let mut w = TimeWindow::new(Duration::from_secs(10));
        let start = Instant::now();
        for at in [0, 3_000, 10_500, 12_000, 13_000, 17_000] {
            tokio::time::advance(start + Duration::from_millis(at) - Instant::now()).await;
            w.push(Instant::now(), true, false);
        }
        assert_eq!(w.counts(Instant::now()).failures, 4);
        tokio::time::advance(Duration::from_millis(3_000)).await;
        assert_eq!(
            w.counts(Instant::now()).failures,
            3,
            "10.5 s has left the window at 20 s"
        );
    }
}
