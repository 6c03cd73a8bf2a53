//! Upstream's controller expectations: after asking for N creations or deletions, a
//! controller does not act on its owner again until its informers have seen them (or five
//! minutes have passed), so a stale cache never makes it create or delete twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expected {
    creations: i64,
    /// Pods (namespace/name) whose deletion was asked for and not yet seen.
    deletions: HashSet<String>,
    since: Instant,
}

#[derive(Debug, Default)]
pub struct Expectations {
    by_owner: HashMap<String, Expected>,
}

impl Expectations {
    /// Whether the owner's last actions have all been observed (or are too old to wait for).
    pub fn satisfied(&self, owner: &str) -> bool {
        self.by_owner
            .get(owner)
            .is_none_or(|e| (e.creations <= 0 && e.deletions.is_empty()) || e.since.elapsed() > TIMEOUT)
    }

    pub fn expect_creations(&mut self, owner: &str, count: usize) {
        self.by_owner.insert(
            owner.to_string(),
            Expected {
                creations: i64::try_from(count).unwrap_or(i64::MAX),
                deletions: HashSet::new(),
                since: Instant::now(),
            },
        );
    }

    pub fn expect_deletions(&mut self, owner: &str, pods: impl IntoIterator<Item = String>) {
        self.by_owner.insert(
            owner.to_string(),
            Expected {
                creations: 0,
                deletions: pods.into_iter().collect(),
                since: Instant::now(),
            },
        );
    }

    /// A creation was seen, or will never happen (the request failed).
    pub fn creation_observed(&mut self, owner: &str) {
        if let Some(e) = self.by_owner.get_mut(owner) {
            e.creations -= 1;
        }
    }

    pub fn deletion_observed(&mut self, owner: &str, pod: &str) {
        if let Some(e) = self.by_owner.get_mut(owner) {
            e.deletions.remove(pod);
        }
    }

    /// The owner is gone.
    pub fn forget(&mut self, owner: &str) {
        self.by_owner.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn owners_wait_for_their_actions_to_be_seen() {
        let mut e = Expectations::default();
        assert!(e.satisfied("rs"), "nothing expected");
        e.expect_creations("rs", 2);
        e.creation_observed("rs");
        assert!(!e.satisfied("rs"));
        e.creation_observed("rs");
        assert!(e.satisfied("rs"));
        e.expect_deletions("rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("rs", "ns/a");
        e.deletion_observed("rs", "ns/a");
        assert!(!e.satisfied("rs"), "one deletion counted once");
        tokio::time::advance(TIMEOUT + Duration::from_secs(1)).await;
        assert!(e.satisfied("rs"), "expired");
    }
}
