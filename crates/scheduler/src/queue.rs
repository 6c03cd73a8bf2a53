//! The scheduling queue: active pods in priority order (PrioritySort), pods backing off
//! after a failed attempt (1 s, doubling to 10 s), and unschedulable pods, which wait for a
//! cluster event that could make them fit (a node added or changed, a pod gone) or, at
//! the latest, five minutes, as upstream's queue does. An event that comes while a pod is
//! being scheduled is not lost: a pod whose attempt began before the latest such event
//! backs off instead of waiting for the next one (upstream's `moveRequestCycle`). A pod's
//! own change that may let it fit (a new toleration, say) moves it likewise, whether it
//! came while the pod waited or while it was being scheduled.

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
    /// Pods popped and not yet placed or failed, with their attempt's cycle.
    in_flight: HashMap<String, InFlight>,
    arrivals: u64,
    /// Counts pops: each attempt has its own cycle.
    cycle: u64,
    /// The cycle current when the latest cluster event came that may let pods fit.
    move_request_cycle: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    cycle: u64,
    attempts: u32,
    /// The pod itself changed during the attempt.
    changed: bool,
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
    /// A pod to schedule (new, or changed while waiting): active unless it is backing off
    /// or being scheduled.
    pub async fn add(&self, key: &str, priority: i32) {
        let mut state = self.state.lock().await;
        if let Some(entry) = state.entries.get_mut(key) {
            entry.priority = priority;
            return;
        }
        if state.in_flight.contains_key(key) {
            return;
        }
        push_active(&mut state, key, priority, 0);
        drop(state);
        self.ready.notify_one();
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub async fn remove(&self, key: &str) {
        let mut state = self.state.lock().await;
        state.in_flight.remove(key);
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
                    let attempts = state.entries.remove(&key).map_or(0, |e| e.attempts);
                    state.cycle += 1;
                    let cycle = state.cycle;
                    let attempt = InFlight {
                        cycle,
                        attempts,
                        changed: false,
                    };
                    state.in_flight.insert(key.clone(), attempt);
                    return key;
                }
            }
            notified.await;
        }
    }

    /// A failed attempt: back to the queue after a backoff that doubles per attempt;
    /// `unschedulable` pods also wait for a cluster event, unless one came during the
    /// attempt.
    pub async fn failed(&self, key: &str, priority: i32, unschedulable: bool) {
        let now = Instant::now();
        let mut state = self.state.lock().await;
        let Some(attempt) = state.in_flight.remove(key) else {
            // Deleted or bound meanwhile: nothing to retry.
            return;
        };
        let attempts = attempt.attempts.saturating_add(1);
        let backoff = INITIAL_BACKOFF
            .saturating_mul(1 << attempts.saturating_sub(1).min(10))
            .min(MAX_BACKOFF);
        let place = if unschedulable && attempt.cycle > state.move_request_cycle && !attempt.changed {
            Place::Unschedulable {
                since: now,
                retry_at: now + backoff,
                moved: false,
            }
        } else {
            Place::Backoff(now + backoff)
        };
        state.entries.insert(
            key.to_string(),
            Entry {
                priority,
                place,
                attempts,
            },
        );
    }

    /// The pod was placed: its attempts are over.
    pub async fn done(&self, key: &str) {
        self.state.lock().await.in_flight.remove(key);
    }

    /// The pod changed in a way that may let it fit (its spec or labels, not its status):
    /// if it waits as unschedulable, it retries once backed off; if it is being scheduled,
    /// a failed attempt backs off instead of waiting for a cluster event.
    pub async fn changed(&self, key: &str) {
        let mut state = self.state.lock().await;
        if let Some(attempt) = state.in_flight.get_mut(key) {
            attempt.changed = true;
        } else if let Some(Entry {
            place: Place::Unschedulable { moved, .. },
            ..
        }) = state.entries.get_mut(key)
        {
            *moved = true;
        }
    }

    /// A cluster event that may let unschedulable pods fit: they retry once backed off.
    pub async fn move_unschedulable(&self) {
        let mut state = self.state.lock().await;
        state.move_request_cycle = state.cycle;
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

    /// A queue holding `default/p` as unschedulable, past its first backoff: only the
    /// missing event holds it back.
    async fn with_an_unschedulable_pod() -> Queue {
        let queue = Queue::default();
        queue.add("default/p", 0).await;
        assert_eq!(queue.pop().await, "default/p");
        queue.failed("default/p", 0, true).await;
        tokio::time::sleep(INITIAL_BACKOFF + Duration::from_millis(50)).await;
        queue.flush().await;
        assert!(queue.state.lock().await.active.is_empty(), "no event yet");
        queue
    }

    #[tokio::test(start_paused = true)]
    async fn a_pods_own_change_moves_it_like_a_cluster_event() {
        // Changed while it waited as unschedulable: retried once backed off.
        let queue = with_an_unschedulable_pod().await;
        queue.changed("default/p").await;
        queue.flush().await;
        assert_eq!(queue.pop().await, "default/p");
        // Changed while being scheduled: the failed attempt backs off instead of waiting.
        queue.changed("default/p").await;
        queue.failed("default/p", 0, true).await;
        assert!(matches!(
            queue.state.lock().await.entries["default/p"].place,
            Place::Backoff(_)
        ));
        // Unchanged, the next failure waits for an event again.
        tokio::time::sleep(MAX_BACKOFF).await;
        queue.flush().await;
        assert_eq!(queue.pop().await, "default/p");
        queue.failed("default/p", 0, true).await;
        assert!(matches!(
            queue.state.lock().await.entries["default/p"].place,
            Place::Unschedulable { moved: false, .. }
        ));
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event() {
        let queue = with_an_unschedulable_pod().await;
        queue.move_unschedulable().await;
        queue.flush().await;
        assert_eq!(queue.pop().await, "default/p");
        assert_eq!(queue.state.lock().await.in_flight["default/p"].attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_during_the_attempt_is_not_lost() {
        let queue = Queue::default();
        queue.add("default/p", 0).await;
        assert_eq!(queue.pop().await, "default/p");
        // A node joins while the pod is being scheduled against the older snapshot.
        queue.move_unschedulable().await;
        // An update of the pod meanwhile (its own status) does not queue it twice.
        queue.add("default/p", 0).await;
        assert!(queue.state.lock().await.active.is_empty());
        queue.failed("default/p", 0, true).await;
        tokio::time::advance(INITIAL_BACKOFF).await;
        queue.flush().await;
        assert_eq!(queue.pop().await, "default/p", "backed off, not left waiting");
        // Without a new event, the next failure waits for one.
        queue.failed("default/p", 0, true).await;
        tokio::time::advance(MAX_BACKOFF).await;
        queue.flush().await;
        assert!(queue.state.lock().await.active.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_per_attempt_until_placed() {
        let queue = Queue::default();
        queue.add("default/p", 0).await;
        for expected in [1, 2, 4, 8, 10, 10] {
            assert_eq!(queue.pop().await, "default/p");
            queue.failed("default/p", 0, false).await;
            tokio::time::advance(Duration::from_secs(expected) - Duration::from_millis(10)).await;
            queue.flush().await;
            assert!(
                queue.state.lock().await.active.is_empty(),
                "still backing off ({expected} s)"
            );
            tokio::time::advance(Duration::from_millis(10)).await;
            queue.flush().await;
        }
        assert_eq!(queue.pop().await, "default/p");
        queue.done("default/p").await;
        assert!(queue.state.lock().await.in_flight.is_empty());
        // Placed pods start afresh if they ever come back.
        queue.add("default/p", 0).await;
        assert_eq!(queue.pop().await, "default/p");
        assert_eq!(queue.state.lock().await.in_flight["default/p"].attempts, 0);
    }
}
