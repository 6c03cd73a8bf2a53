//! client-go's rate-limited work queue: a key is queued at most once however often it is
//! added; a key being processed is not handed to a second worker, and if it was added
//! meanwhile it comes back when the first is done; failed keys come back after a
//! per-key exponential delay (5 ms doubling to 1000 s) and nothing is ever dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1000);

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<String>,
    /// Keys waiting to be processed (queued, or added again while processing).
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
}

#[derive(Debug, Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
}

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub async fn add(&self, key: &str) {
        let mut state = self.state.lock().await;
        if !state.dirty.insert(key.to_string()) {
            return;
        }
        if !state.processing.contains(key) {
            state.queue.push_back(key.to_string());
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Adds `key` once `delay` has passed.
    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        let queue = Arc::clone(self);
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key).await;
        });
    }

    /// Adds `key` after its next backoff delay.
    pub async fn add_rate_limited(self: &Arc<Self>, key: &str) {
        let delay = {
            let mut state = self.state.lock().await;
            let failures = state.failures.entry(key.to_string()).or_default();
            let delay = backoff(*failures);
            *failures = failures.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
    }

    /// Clears `key`'s failures: its next failure waits the shortest delay again.
    pub async fn forget(&self, key: &str) {
        self.state.lock().await.failures.remove(key);
    }

    /// The next key to process, waiting for one; call [`WorkQueue::done`] after.
    pub async fn get(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state.lock().await;
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    // Another worker may be waiting and there may be more.
                    if !state.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    pub async fn done(&self, key: &str) {
        let mut state = self.state.lock().await;
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.to_string());
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Keys waiting to be handed out.
    pub async fn waiting(&self) -> usize {
        self.state.lock().await.queue.len()
    }
}

/// Runs `workers` workers on `queue` in `tasks`: each takes a key, reconciles it, and puts
/// it back after the delay the reconcile asks for, or after the key's backoff when the
/// reconcile failed.
pub fn spawn_workers<F, Fut, E>(
    tasks: &mut tokio::task::JoinSet<()>,
    queue: &Arc<WorkQueue>,
    workers: usize,
    controller: &'static str,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Duration>, E>> + Send,
    E: std::fmt::Display,
{
    for _ in 0..workers {
        let (queue, reconcile) = (Arc::clone(queue), reconcile.clone());
        tasks.spawn(async move {
            loop {
                let key = queue.get().await;
                // Errors become text at once: only the message outlives the match.
                match reconcile(key.clone()).await.map_err(|e| e.to_string()) {
                    Ok(requeue) => {
                        queue.forget(&key).await;
                        if let Some(after) = requeue {
                            queue.add_after(&key, after);
                        }
                    }
                    Err(err) => {
                        tracing::info!(err, key, controller, "sync failed; retrying");
                        queue.add_rate_limited(&key).await;
                    }
                }
                queue.done(&key).await;
            }
        });
    }
}

/// client-go's `ItemExponentialFailureRateLimiter(5ms, 1000s)`.
fn backoff(failures: u32) -> Duration {
    let factor = 2u32.checked_pow(failures).unwrap_or(u32::MAX);
    BASE_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_queued_once_and_never_processed_twice_at_once() {
        let queue = WorkQueue::new();
        queue.add("a").await;
        queue.add("a").await;
        queue.add("b").await;
        assert_eq!(queue.waiting().await, 2);
        let first = queue.get().await;
        assert_eq!(first, "a");
        // Added while processing: held back until done.
        queue.add("a").await;
        assert_eq!(queue.get().await, "b");
        assert_eq!(queue.waiting().await, 0);
        queue.done("a").await;
        assert_eq!(queue.get().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        assert_eq!(backoff(0), Duration::from_millis(5));
        assert_eq!(backoff(3), Duration::from_millis(40));
        assert_eq!(backoff(40), MAX_DELAY);
        let queue = WorkQueue::new();
        queue.add_rate_limited("a").await;
        queue.add_rate_limited("a").await;
        assert_eq!(queue.waiting().await, 0, "not before the delay");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(queue.get().await, "a");
        queue.forget("a").await;
        assert!(queue.state.lock().await.failures.is_empty());
    }
}
