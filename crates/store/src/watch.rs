use std::collections::VecDeque;

use crate::Event;
use crate::error::Result;

/// A backend's stream of committed changes for one watch, in batches.
#[async_trait::async_trait]
pub trait WatchSource: Send {
    /// The next non-empty batch in revision order; `None` when the store has closed.
    async fn next_batch(&mut self) -> Option<Result<Vec<Event>>>;
}

/// A watch on a prefix: yields every change after its start revision, in order, once.
///
/// After an error (compaction overtook it, it fell too far behind) it yields nothing more;
/// the client is expected to re-list and watch again from the list's revision.
pub struct Watcher {
    source: Box<dyn WatchSource>,
    buffered: VecDeque<Event>,
    ended: bool,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("buffered", &self.buffered.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    pub fn new(source: Box<dyn WatchSource>) -> Self {
        Self {
            source,
            buffered: VecDeque::new(),
            ended: false,
        }
    }

    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            match self.source.next_batch().await {
                Some(Ok(batch)) => self.buffered.extend(batch),
                Some(Err(err)) => {
                    self.ended = true;
                    return Some(Err(err));
                }
                None => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }

    /// Everything already received, without waiting: for consumers that batch.
    pub fn drain_ready(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.buffered.drain(..)
    }
}
