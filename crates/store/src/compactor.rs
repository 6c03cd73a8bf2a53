//! Automatic compaction: keep a bounded window of history (by age and by count) and drop
//! the rest, so the datastore does not grow without bound under churn.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::{Duration, Instant};

use crate::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Keep at least this much history by age...
    pub retention: Duration,
    /// ...and at least this many revisions.
    pub min_revisions: i64,
    /// How often to look.
    pub interval: Duration,
}

impl Default for CompactionPolicy {
    /// Five minutes and 1,000 revisions: Kubernetes clients re-list after a 410 anyway, and
    /// five minutes is what kube-apiserver's own compaction keeps.
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(300),
            min_revisions: 1000,
            interval: Duration::from_secs(30),
        }
    }
}

/// The revision to compact to, given samples of `(when, revision)` taken over time (oldest
/// first), or `None` when nothing new may go. History after the target stays: it is at
/// least `retention` old at the target's sample and at least `min_revisions` behind now.
pub fn compaction_target(
    samples: &VecDeque<(Instant, i64)>,
    now: Instant,
    current: i64,
    compacted: i64,
    policy: &CompactionPolicy,
) -> Option<i64> {
    let by_count = current - policy.min_revisions;
    let by_age = samples
        .iter()
        .rev()
        .find(|(at, _)| now.saturating_duration_since(*at) >= policy.retention)
        .map(|(_, rev)| *rev)?;
    let target = by_age.min(by_count);
    (target > compacted).then_some(target)
}

/// Runs compaction every `policy.interval` until the store is dropped (or the returned
/// handle is aborted).
pub fn spawn_compactor(store: Weak<dyn Store>, policy: CompactionPolicy) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut ticker = tokio::time::interval(policy.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(store) = store.upgrade() else { return };
            let now = Instant::now();
            let (current, compacted) = match (store.current_revision().await, store.compacted_revision().await) {
                (Ok(c), Ok(p)) => (c, p),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(backend = store.backend(), %err, "compactor could not read revisions");
                    continue;
                }
            };
            samples.push_back((now, current));
            if let Some(target) = compaction_target(&samples, now, current, compacted, &policy) {
                match store.compact(target).await {
                    Ok(()) => tracing::debug!(backend = store.backend(), target, current, "compacted"),
                    Err(err) => tracing::warn!(backend = store.backend(), target, %err, "compaction failed"),
                }
            }
            // Samples older than the retention are needed only for the newest of them.
            while samples.len() > 1 && now.saturating_duration_since(samples[1].0) >= policy.retention {
                samples.pop_front();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_table() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let policy = CompactionPolicy {
            retention: Duration::from_secs(300),
            min_revisions: 1000,
            interval: Duration::from_secs(30),
        };
        let samples: VecDeque<_> = [(at(0), 100), (at(100), 5_000), (at(200), 9_000), (at(400), 20_000)].into();
        // (now, current, compacted) → expected
        let cases = [
            // nothing is five minutes old yet
            (at(250), 9_000, 0, None),
            // the sample at 0 s is old enough: compact to its revision
            (at(300), 20_000, 0, Some(100)),
            // the newest old-enough sample wins
            (at(400), 20_000, 100, Some(5_000)),
            (at(500), 20_000, 5_000, Some(9_000)),
            // the count floor holds back a quiet store
            (at(1000), 9_500, 0, Some(8_500)),
            // never backwards, never the same twice
            (at(400), 20_000, 5_000, None),
        ];
        for (now, current, compacted, expected) in cases {
            assert_eq!(
                compaction_target(&samples, now, current, compacted, &policy),
                expected,
                "now={:?} current={current} compacted={compacted}",
                now - t0
            );
        }
    }

    #[test]
    fn zero_retention_keeps_only_the_count() {
        let now = Instant::now();
        let policy = CompactionPolicy {
            retention: Duration::ZERO,
            min_revisions: 1000,
            interval: Duration::from_millis(100),
        };
        let samples: VecDeque<_> = [(now, 50_000)].into();
        assert_eq!(compaction_target(&samples, now, 50_000, 0, &policy), Some(49_000));
        assert_eq!(compaction_target(&samples, now, 500, 0, &policy), None);
    }
}
