//! Property tests of the decision rules, through the in-memory store.

use std::time::{Duration, SystemTime};

use gateway_ratelimit::{
    Check, Clock, MemoryStore, Policy, Quota, QuotaWindow, Rate, RateLimitKey,
};
use proptest::prelude::*;

fn check(policy: Policy, cost: u32) -> Check {
    Check {
        name: "p".into(),
        key: RateLimitKey::new("k"),
        policy,
        cost,
    }
}

fn store() -> (MemoryStore, i64) {
    let clock = Clock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_707_000));
    let now = clock.now_micros();
    (MemoryStore::with_clock(1024, clock), now)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// GCRA never admits more than `burst + elapsed / interval` in any span of time.
    #[test]
    fn gcra_never_exceeds_burst_plus_elapsed_over_interval(
        per_sec in 1u64..2000,
        burst in 1u32..50,
        arrivals in prop::collection::vec((0i64..20_000, 1u32..4), 1..300),
    ) {
        let policy = Policy::rate(Rate::per_second(per_sec), burst);
        let t = Rate::per_second(per_sec).emission_interval_micros() as i64;
        let (store, mut now) = store();
        let mut admitted: Vec<(i64, u64)> = Vec::new();
        for (gap, cost) in arrivals {
            now += gap;
            if store.decide_at(&[check(policy, cost)], Duration::ZERO, now).allowed() {
                admitted.push((now, u64::from(cost)));
            }
        }
        for i in 0..admitted.len() {
            let mut sum = 0u64;
            for j in i..admitted.len() {
                sum += admitted[j].1;
                let span = admitted[j].0 - admitted[i].0;
                prop_assert!(
                    sum <= u64::from(burst) + (span / t) as u64,
                    "{sum} admitted within {span} µs (burst {burst}, interval {t} µs)"
                );
            }
        }
    }

    /// A refused request is admitted when retried exactly `retry_after` later, not 1 µs sooner.
    #[test]
    fn retry_after_is_exact(
        per_sec in 1u64..1000,
        burst in 1u32..20,
        warmup in prop::collection::vec(0i64..5_000, 0..100),
        cost in 1u32..5,
    ) {
        prop_assume!(cost <= burst);
        let policy = Policy::rate(Rate::per_second(per_sec), burst);
        let (store, mut now) = store();
        for gap in warmup {
            now += gap;
            store.decide_at(&[check(policy, 1)], Duration::ZERO, now);
        }
        // Drain, then look at the first refusal.
        let refusal = loop {
            let d = store.decide_at(&[check(policy, cost)], Duration::ZERO, now);
            if !d.allowed() {
                break d;
            }
        };
        let wait = refusal.outcomes[0].retry_after.expect("conformable") .as_micros() as i64;
        prop_assert!(wait > 0);
        prop_assert!(!store.decide_at(&[check(policy, cost)], Duration::ZERO, now + wait - 1).allowed());
        prop_assert!(store.decide_at(&[check(policy, cost)], Duration::ZERO, now + wait).allowed());
    }

    /// A quota admits at most its limit per calendar window, and its full limit in a new one.
    #[test]
    fn quota_admits_at_most_its_limit_per_window(
        limit in 1u64..50,
        arrivals in prop::collection::vec((0i64..4_000_000, 1u32..4), 1..200),
    ) {
        let policy = Policy::Quota(Quota::new(limit, QuotaWindow::Minute));
        let (store, mut now) = store();
        let mut per_window = std::collections::HashMap::<i64, u64>::new();
        for (gap, cost) in arrivals {
            now += gap;
            if store.decide_at(&[check(policy, cost)], Duration::ZERO, now).allowed() {
                *per_window.entry(now.div_euclid(60_000_000)).or_default() += u64::from(cost);
            }
        }
        for (w, used) in per_window {
            prop_assert!(used <= limit, "window {w}: {used} > {limit}");
        }
        // The next window starts with the whole limit.
        let next = (now.div_euclid(60_000_000) + 1) * 60_000_000;
        for _ in 0..limit {
            prop_assert!(store.decide_at(&[check(policy, 1)], Duration::ZERO, next).allowed());
        }
        prop_assert!(!store.decide_at(&[check(policy, 1)], Duration::ZERO, next).allowed());
    }
}
