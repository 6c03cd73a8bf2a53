//! Writes known to be coming, so that a group commit waits for them and only for them.
//!
//! The SQLite writer commits whatever arrived while it committed the last batch; one fsync
//! per commit is most of its cost. Waiting a fixed time for company (ADR 10) slowed lone
//! clients that write one object after another: everyone that could come was already in the
//! batch. Here a request that is about to write says so when it starts (`during`) and
//! stops counting the moment its write is handed to the store, so the writer can tell
//! whether anyone is still on the way, and waits (a bounded time) only then.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

tokio::task_local! {
    static INTENT: Intent;
}

/// Requests of one store that will write and have not handed their write over yet.
#[derive(Debug, Clone, Default)]
pub struct WriteIntents {
    preparing: Arc<AtomicUsize>,
}

impl WriteIntents {
    /// Runs `request`, counted as preparing a write until its first write is handed to
    /// the store or it ends.
    pub async fn during<F: Future>(&self, request: F) -> F::Output {
        self.preparing.fetch_add(1, Ordering::AcqRel);
        let intent = Intent {
            preparing: Arc::clone(&self.preparing),
            released: AtomicBool::new(false),
        };
        INTENT.scope(intent, request).await
    }

    pub fn preparing(&self) -> usize {
        self.preparing.load(Ordering::Acquire)
    }
}

/// Called by a store as it hands a write over: the current request (if it declared
/// itself) is no longer on the way.
pub(crate) fn handed_over() {
    // Outside any declared request there is nothing to release.
    let _ = INTENT.try_with(Intent::release);
}

struct Intent {
    preparing: Arc<AtomicUsize>,
    released: AtomicBool,
}

impl Intent {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.preparing.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Intent {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counted_until_the_write_is_handed_over_or_the_request_ends() {
        let intents = WriteIntents::default();
        let seen = intents
            .during(async {
                let before = intents.preparing();
                handed_over();
                let after = intents.preparing();
                // A second write of the same request changes nothing.
                handed_over();
                (before, after, intents.preparing())
            })
            .await;
        assert_eq!(seen, (1, 0, 0));
        assert_eq!(intents.preparing(), 0);
        // A request that never writes stops counting when it ends.
        let inside = intents.during(async { intents.preparing() }).await;
        assert_eq!((inside, intents.preparing()), (1, 0));
        // Dropped half way (a client that went away): released all the same.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let pending = intents.during(rx);
        let mut pending = Box::pin(pending);
        assert!(futures_poll_once(pending.as_mut()).await.is_none());
        assert_eq!(intents.preparing(), 1);
        drop(pending);
        drop(tx);
        assert_eq!(intents.preparing(), 0);
        // Outside any request: nothing to release, nothing breaks.
        handed_over();
        assert_eq!(intents.preparing(), 0);
    }

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
