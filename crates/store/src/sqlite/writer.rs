//! The single writer: one thread owns the write connection, takes every queued request,
//! applies them in one transaction (group commit: one fsync for the whole batch), then
//! publishes the batch's events to watchers and answers each request.
//!
//! Being the only writer, it assigns revisions from memory and checks compare-and-swap
//! inside the transaction, with no lock contention and no retry loops.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::schema::{self, META_COMPACT, META_COMPACT_PHYSICAL, META_REVISION};
use super::{Batch, Shared};
use crate::error::{Result, StoreError};
use crate::{Bytes, Event, EventKind, KeyValue, WriteIntents};

pub(crate) enum Request {
    Create {
        key: String,
        value: Bytes,
        reply: oneshot::Sender<Result<i64>>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: i64,
        reply: oneshot::Sender<Result<i64>>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
        reply: oneshot::Sender<Result<(i64, KeyValue)>>,
    },
    Compact {
        revision: i64,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A request's answer, held until the batch's commit decides whether it stands.
enum Outcome {
    Revision(oneshot::Sender<Result<i64>>, Result<i64>),
    Deleted(oneshot::Sender<Result<(i64, KeyValue)>>, Result<(i64, KeyValue)>),
}

impl Outcome {
    fn send(self) {
        // A caller that stopped waiting no longer needs the answer; the write stands.
        match self {
            Self::Revision(reply, result) => drop(reply.send(result)),
            Self::Deleted(reply, result) => drop(reply.send(result)),
        }
    }

    fn fail(self, err: impl Fn() -> StoreError) {
        match self {
            Self::Revision(reply, _) => drop(reply.send(Err(err()))),
            Self::Deleted(reply, _) => drop(reply.send(Err(err()))),
        }
    }
}

struct Latest {
    revision: i64,
    create_revision: i64,
    deleted: bool,
    value: Vec<u8>,
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub path: String,
    pub shared: Arc<Shared>,
    pub revision: i64,
    pub compacted: i64,
    pub compacted_physically: i64,
    pub max_batch: usize,
    pub compaction_chunk: i64,
    pub intents: WriteIntents,
    pub max_linger: Duration,
}

impl Writer {
    pub fn run(mut self, requests: Receiver<Request>) {
        loop {
            let first = if self.compacted_physically < self.compacted {
                // Compaction work is pending: do a chunk whenever no write is waiting.
                match requests.recv_timeout(Duration::ZERO) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => {
                        self.compact_chunk();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            self.drain(&requests, &mut batch);
            self.await_declared(&requests, &mut batch);
            self.process(batch);
        }
        self.shared.close_watchers();
        tracing::debug!(path = %self.path, revision = self.revision, "sqlite writer stopped");
    }

    fn drain(&self, requests: &Receiver<Request>, batch: &mut Vec<Request>) {
        while batch.len() < self.max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
    }

    /// Lets writes that requests have declared on the way join this commit: one fsync for
    /// all of them. Never waits when none is declared (a lone client writing one object
    /// after another), and at most `max_linger` in all.
    fn await_declared(&self, requests: &Receiver<Request>, batch: &mut Vec<Request>) {
        // Rechecked this often: a declared request may end without writing.
        const SLICE: Duration = Duration::from_micros(50);
        let deadline = Instant::now() + self.max_linger;
        while batch.len() < self.max_batch && self.intents.preparing() > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match requests.recv_timeout(SLICE.min(deadline - now)) {
                Ok(request) => {
                    batch.push(request);
                    self.drain(requests, batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn sqlite_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut compactions = Vec::new();
        let mut events = Vec::new();
        let mut revision = self.revision;
        let result = (|| -> rusqlite::Result<()> {
            let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            for request in batch {
                match request {
                    Request::Create { key, value, reply } => {
                        let result = create(&tx, &mut revision, &mut events, key, value)?;
                        outcomes.push(Outcome::Revision(reply, result));
                    }
                    Request::Update {
                        key,
                        value,
                        expected,
                        reply,
                    } => {
                        let result = update(&tx, &mut revision, &mut events, key, value, expected)?;
                        outcomes.push(Outcome::Revision(reply, result));
                    }
                    Request::Delete { key, expected, reply } => {
                        let result = delete(&tx, &mut revision, &mut events, key, expected)?;
                        outcomes.push(Outcome::Deleted(reply, result));
                    }
                    Request::Compact { revision, reply } => compactions.push((revision, reply)),
                }
            }
            if revision != self.revision {
                schema::write_meta(&tx, META_REVISION, revision)?;
                tx.commit()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if revision != self.revision {
                    self.revision = revision;
                    self.shared.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.shared.publish(Batch {
                        events,
                        last_revision: revision,
                    });
                }
                for outcome in outcomes {
                    outcome.send();
                }
            }
            Err(source) => {
                // Nothing of the batch is stored: the transaction rolled back when dropped.
                tracing::error!(path = %self.path, error = %source, "sqlite write batch failed");
                let message = source.to_string();
                for outcome in outcomes {
                    outcome.fail(|| StoreError::WriteFailed {
                        path: self.path.clone(),
                        reason: message.clone(),
                    });
                }
            }
        }
        for (target, reply) in compactions {
            let result = self.compact(target);
            drop(reply.send(result));
        }
    }

    /// Logical compaction: from now on nothing before `target` can be read. The rows go
    /// later, a chunk at a time between write batches, so writers never wait long.
    fn compact(&mut self, target: i64) -> Result<()> {
        if target > self.revision {
            return Err(StoreError::FutureRevision {
                requested: target,
                current: self.revision,
            });
        }
        if target <= self.compacted {
            return Err(StoreError::Compacted {
                requested: target,
                compacted: self.compacted,
            });
        }
        schema::write_meta(&self.conn, META_COMPACT, target).map_err(|e| self.sqlite_error(e))?;
        self.compacted = target;
        self.shared.set_compacted(target);
        Ok(())
    }

    fn compact_chunk(&mut self) {
        let from = self.compacted_physically;
        let to = self.compacted.min(from + self.compaction_chunk);
        let result = (|| -> rusqlite::Result<()> {
            let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            tx.prepare_cached(schema::DELETE_SUPERSEDED)?
                .execute(params![from, to])?;
            tx.prepare_cached(schema::DELETE_TOMBSTONES)?
                .execute(params![from, to])?;
            schema::write_meta(&tx, META_COMPACT_PHYSICAL, to)?;
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.compacted_physically = to;
                if to == self.compacted {
                    self.release_free_pages();
                }
            }
            Err(err) => {
                // Leave the rows for the next compaction; back off so a broken disk does not spin.
                tracing::warn!(path = %self.path, error = %err, from, to, "sqlite compaction chunk failed");
                self.compacted_physically = self.compacted;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Returns free pages to the file system once they are a large share of the file, so a
    /// burst of churn does not leave the file at its peak size forever. Smaller free lists
    /// are left for new rows to reuse.
    fn release_free_pages(&self) {
        let pages = |pragma: &str| self.conn.query_row(pragma, [], |row| row.get::<_, i64>(0));
        match (pages("PRAGMA freelist_count"), pages("PRAGMA page_count")) {
            (Ok(free), Ok(total)) if free > 1024 && free * 4 > total => {
                if let Err(err) = self.conn.execute_batch("PRAGMA incremental_vacuum;") {
                    tracing::warn!(path = %self.path, error = %err, "incremental vacuum failed");
                }
            }
            _ => {}
        }
    }
}

fn latest(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<Option<Latest>> {
    tx.prepare_cached(schema::SELECT_LATEST)?
        .query_row([key], |row| {
            Ok(Latest {
                revision: row.get(0)?,
                create_revision: row.get(1)?,
                deleted: row.get::<_, i64>(2)? != 0,
                value: row.get(3)?,
            })
        })
        .optional()
}

/// The key's live row, if its mod revision is `expected` (when given): the compare half of
/// compare-and-swap. A deleted key is NotFound, a different revision a Conflict.
fn live_at(tx: &Transaction<'_>, key: &str, expected: Option<i64>) -> rusqlite::Result<Result<Latest>> {
    let current = match latest(tx, key)? {
        Some(c) if !c.deleted => c,
        _ => return Ok(Err(StoreError::NotFound { key: key.to_string() })),
    };
    Ok(match expected.filter(|e| *e != current.revision) {
        Some(expected) => Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            current: Some(Box::new(live_kv(key, current))),
        }),
        None => Ok(current),
    })
}

fn live_kv(key: &str, latest: Latest) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Bytes::from(latest.value),
        create_revision: latest.create_revision,
        mod_revision: latest.revision,
    }
}

struct Row<'a> {
    revision: i64,
    key: &'a str,
    created: bool,
    deleted: bool,
    create_revision: i64,
    prev_revision: i64,
    value: &'a [u8],
}

fn insert(tx: &Transaction<'_>, row: Row<'_>) -> rusqlite::Result<()> {
    tx.prepare_cached(schema::INSERT)?.execute(params![
        row.revision,
        row.key,
        row.created,
        row.deleted,
        row.create_revision,
        row.prev_revision,
        row.value
    ])?;
    Ok(())
}

fn create(
    tx: &Transaction<'_>,
    revision: &mut i64,
    events: &mut Vec<Event>,
    key: String,
    value: Bytes,
) -> rusqlite::Result<Result<i64>> {
    let current = latest(tx, &key)?;
    if current.as_ref().is_some_and(|c| !c.deleted) {
        return Ok(Err(StoreError::AlreadyExists { key }));
    }
    let rev = *revision + 1;
    insert(
        tx,
        Row {
            revision: rev,
            key: &key,
            created: true,
            deleted: false,
            create_revision: rev,
            prev_revision: current.map_or(0, |c| c.revision),
            value: &value,
        },
    )?;
    *revision = rev;
    events.push(Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key,
            value,
            create_revision: rev,
            mod_revision: rev,
        },
        prev: None,
    });
    Ok(Ok(rev))
}

fn update(
    tx: &Transaction<'_>,
    revision: &mut i64,
    events: &mut Vec<Event>,
    key: String,
    value: Bytes,
    expected: i64,
) -> rusqlite::Result<Result<i64>> {
    let current = match live_at(tx, &key, Some(expected))? {
        Ok(current) => current,
        Err(err) => return Ok(Err(err)),
    };
    let rev = *revision + 1;
    insert(
        tx,
        Row {
            revision: rev,
            key: &key,
            created: false,
            deleted: false,
            create_revision: current.create_revision,
            prev_revision: current.revision,
            value: &value,
        },
    )?;
    *revision = rev;
    let create_revision = current.create_revision;
    let prev = live_kv(&key, current);
    events.push(Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision: rev,
        },
        prev: Some(prev),
    });
    Ok(Ok(rev))
}

fn delete(
    tx: &Transaction<'_>,
    revision: &mut i64,
    events: &mut Vec<Event>,
    key: String,
    expected: Option<i64>,
) -> rusqlite::Result<Result<(i64, KeyValue)>> {
    let current = match live_at(tx, &key, expected)? {
        Ok(current) => current,
        Err(err) => return Ok(Err(err)),
    };
    let rev = *revision + 1;
    insert(
        tx,
        Row {
            revision: rev,
            key: &key,
            created: false,
            deleted: true,
            create_revision: current.create_revision,
            prev_revision: current.revision,
            value: &[],
        },
    )?;
    *revision = rev;
    let prev = live_kv(&key, current);
    events.push(Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: rev,
        },
        prev: Some(prev.clone()),
    });
    Ok(Ok((rev, prev)))
}
