//! The time source of a store: tokio's clock anchored to the wall clock, or a manual clock.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Where a store reads "now", in Unix microseconds.
///
/// [`Clock::system`] reads tokio's monotonic clock and anchors it to the wall clock once, so
/// decisions never jump when the system clock is stepped, and tests with
/// `#[tokio::test(start_paused = true)]` control time with `tokio::time::advance`. Quota windows
/// are calendar windows, hence the wall-clock anchor. [`Clock::manual`] is advanced by hand (used
/// by the conformance tests, which must feed the same instants to an in-memory and a Redis store).
///
/// Clones share one clock.
#[derive(Clone, Debug)]
pub struct Clock(Arc<Source>);

#[derive(Debug)]
enum Source {
    Tokio {
        base: tokio::time::Instant,
        base_unix_micros: i64,
    },
    Manual(AtomicI64),
}

fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

impl Clock {
    /// tokio's clock, anchored to the wall clock now. Must be called inside a tokio runtime.
    pub fn system() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// tokio's clock, anchored so that "now" reads as `wall` (a test can start just before
    /// midnight and let paused time cross it). Must be called inside a tokio runtime.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self(Arc::new(Source::Tokio {
            base: tokio::time::Instant::now(),
            base_unix_micros: unix_micros(wall),
        }))
    }

    /// A clock that only moves when [`advance`](Self::advance) or [`set`](Self::set) is called.
    pub fn manual(wall: SystemTime) -> Self {
        Self(Arc::new(Source::Manual(AtomicI64::new(unix_micros(wall)))))
    }

    /// Now, in microseconds since the Unix epoch.
    pub fn now_micros(&self) -> i64 {
        match &*self.0 {
            Source::Tokio {
                base,
                base_unix_micros,
            } => {
                let elapsed = i64::try_from(base.elapsed().as_micros()).unwrap_or(i64::MAX);
                base_unix_micros.saturating_add(elapsed)
            }
            Source::Manual(now) => now.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward. Has no effect on a tokio clock (use `tokio::time::advance`).
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(now) = &*self.0 {
            let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            now.fetch_add(by, Ordering::AcqRel);
        }
    }

    /// Sets a manual clock. Has no effect on a tokio clock.
    pub fn set(&self, wall: SystemTime) {
        if let Source::Manual(now) = &*self.0 {
            now.store(unix_micros(wall), Ordering::Release);
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(&*self.0, Source::Manual(_))
    }
}
