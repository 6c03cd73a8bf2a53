//! The scheduling queue: active pods in priority order (PrioritySort), pods backing off
//! after a failed attempt (1 s, doubling to 10 s), and unschedulable pods, which wait for a
//! cluster event that could make them fit (a node added or changed, a pod gone) or, at
//! the latest, five minutes, as upstream's queue does.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Mutex, Notify};

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct State {
    /// (priority, arrival) order; `Reverse` so higher priorities come first.
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    /// Where each queued pod is, by key.
    entries: HashMap<String, Entry>,
    arrivals: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    priority: i32,
    place: Place,
    attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Active(u64),
    /// Ready to retry at this instant.
    Backoff(Instant),
    /// Waiting for a cluster event (or the flush deadline); `moved` once one came.
    Unschedulable {
        since: Instant,
        retry_at: Instant,
        moved: bool,
    },
}

#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<State>,
    ready: Notify,
}

impl Queue {
    /// A pod to schedule (new, or changed while waiting): active unless it is backing off.
    pub async fn add(&self, key: &str, priority: i32) {
        let mut state = self.state.lock().await;
        if let Some(entry) = state.entries.get_mut(key) {
            entry.priority = priority;
            return;
        }
        push_active(&mut state, key, priority, 0);
        drop(state);
        self.ready.notify_one();
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub async fn remove(&self, key: &str) {
        let mut state = self.state.lock().await;
        if let Some(entry) = state.entries.remove(key)
            && let Place::Active(arrival) = entry.place
        {
            state
                .active
                .remove(&(Reverse(entry.priority), arrival, key.to_string()));
        }
    }

    /// The next pod to schedule, waiting for one.
    pub async fn pop(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state.lock().await;
                if let Some(first) = state.active.pop_first() {
                    let key = first.2;
                    // Out of the queue while it is being scheduled.
                    state.entries.remove(&key);
                    return key;
                }
            }
            notified.await;
        }
    }

    /// A failed attempt: back to the queue after a backoff that doubles per attempt;
    /// `unschedulable` pods also wait for a cluster event.
    pub async fn failed(&self, key: &str, priority: i32, attempts: u32, unschedulable: bool) {
        let backoff = INITIAL_BACKOFF
            .saturating_mul(1 << attempts.saturating_sub(1).min(10))
            .min(MAX_BACKOFF);
        let now = Instant::now();
        let place = if unschedulable {
            Place::Unschedulable {
                since: now,
                retry_at: now + backoff,
                moved: false,
            }
        } else {
            Place::Backoff(now + backoff)
        };
        let mut state = self.state.lock().await;
        state.entries.insert(
            key.to_string(),
            Entry {
                priority,
                place,
                attempts,
            },
        );
    }

    /// How many attempts the pod has had (for its next backoff).
    pub async fn attempts(&self, key: &str) -> u32 {
        self.state.lock().await.entries.get(key).map_or(0, |e| e.attempts)
    }

    /// A cluster event that may let unschedulable pods fit: they retry once backed off.
    pub async fn move_unschedulable(&self) {
        let mut state = self.state.lock().await;
        for entry in state.entries.values_mut() {
            if let Place::Unschedulable { moved, .. } = &mut entry.place {
                *moved = true;
            }
        }
    }

    /// Moves pods whose backoff is over (and unschedulable ones an event moved, or that
    /// waited five minutes) to the active queue. Called by a ticker.
    pub async fn flush(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().await;
        let due: Vec<(String, i32, u32)> = state
            .entries
            .iter()
            .filter(|(_, e)| match e.place {
                Place::Active(_) => false,
                Place::Backoff(at) => at <= now,
                Place::Unschedulable { since, retry_at, moved } => {
                    (moved && retry_at <= now) || now.duration_since(since) >= UNSCHEDULABLE_FLUSH
                }
            })
            .map(|(k, e)| (k.clone(), e.priority, e.attempts))
            .collect();
        for (key, priority, attempts) in &due {
            push_active(&mut state, key, *priority, *attempts);
        }
        drop(state);
        if !due.is_empty() {
            self.ready.notify_waiters();
            self.ready.notify_one();
        }
    }
}

fn push_active(state: &mut State, key: &str, priority: i32, attempts: u32) {
    state.arrivals += 1;
    let arrival = state.arrivals;
    state.active.insert((Reverse(priority), arrival, key.to_string()));
    state.entries.insert(
        key.to_string(),
        Entry {
            priority,
            place: Place::Active(arrival),
            attempts,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn priority_order_then_arrival() {
        let queue = Queue::default();
        queue.add("default/low", 0).await;
        queue.add("default/high", 1000).await;
        queue.add("default/low2", 0).await;
        assert_eq!(queue.pop().await, "default/high");
        assert_eq!(queue.pop().await, "default/low");
        assert_eq!(queue.pop().await, "default/low2");
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event() {
        let queue = Queue::default();
        queue.failed("default/p", 0, 1, true).await;
        // Past the first backoff (1 s): only the missing event holds the pod back.
        tokio::time::sleep(INITIAL_BACKOFF + Duration::from_millis(50)).await;
        queue.flush().await;
        assert!(queue.state.lock().await.active.is_empty(), "no event yet");
        queue.move_unschedulable().await;
        queue.flush().await;
        assert_eq!(queue.pop().await, "default/p");
        assert_eq!(queue.attempts("default/p").await, 0, "popped pods leave the queue");
    }
}
