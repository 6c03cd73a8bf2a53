//! The embedded backend: a kine-style log table in one SQLite file (WAL mode).
//!
//! One writer thread owns the write connection and commits queued writes together (group
//! commit); reads run on a small pool of read connections, each inside one read transaction
//! so a range sees one snapshot; watchers are fed from an in-process broadcast of committed
//! batches, after catching up from the table.

mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior, params};
use tokio::sync::{broadcast, oneshot};

use crate::continuation::ContinueToken;
use crate::error::{Result, StoreError};
use crate::intent::{self, WriteIntents};
use crate::key::{prefix_end, validate_key, validate_value};
use crate::watch::{WatchSource, Watcher};
use crate::{Bytes, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Store};
use schema::{META_COMPACT, META_COMPACT_PHYSICAL, META_REVISION, META_SCHEMA, SCHEMA_VERSION};
use writer::{Request, Writer};

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before acknowledging: an acknowledged write survives a crash of the machine.
    Fsync,
    /// Acknowledge once the write is in the OS: it survives a crash of the process, not of
    /// the machine. For tests and benchmarks that measure something else.
    Process,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Committed batches buffered for watchers; one further behind is cut off.
    pub watch_buffer: usize,
    /// Revisions physically compacted per transaction, between write batches.
    pub compaction_chunk: i64,
    /// Read connections kept open.
    pub read_connections: usize,
    /// Longest a commit waits for writes that requests have declared on the way
    /// ([`WriteIntents`]); it never waits when none is.
    pub max_linger: std::time::Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            max_batch: 1024,
            watch_buffer: 4096,
            compaction_chunk: 5000,
            read_connections: 8,
            max_linger: std::time::Duration::from_micros(500),
        }
    }
}

/// Writes committed together, as watchers receive them.
pub(crate) struct Batch {
    pub events: Vec<Event>,
    pub last_revision: i64,
}

struct Hub {
    sender: Option<broadcast::Sender<Arc<Batch>>>,
    /// Revision of the last batch sent: a new subscriber gets every batch after it.
    published: i64,
}

/// State the writer thread shares with readers and watchers.
pub(crate) struct Shared {
    hub: Mutex<Hub>,
    compacted: AtomicI64,
    /// Transactions that stored writes.
    commits: AtomicU64,
}

impl Shared {
    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding this lock leaves only plain integers and a sender behind,
        // both valid whatever happened, so a poisoned lock is still safe to use.
        self.hub.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn publish(&self, batch: Batch) {
        let mut hub = self.hub();
        hub.published = batch.last_revision;
        if let Some(sender) = &hub.sender {
            // An error only means nobody is watching right now.
            drop(sender.send(Arc::new(batch)));
        }
    }

    pub fn set_compacted(&self, revision: i64) {
        self.compacted.store(revision, Ordering::SeqCst);
    }

    pub fn close_watchers(&self) {
        self.hub().sender = None;
    }
}

/// Read connections, reused across requests.
struct ReadPool {
    path: PathBuf,
    display: String,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl ReadPool {
    fn sqlite_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.display.clone(),
            source,
        }
    }

    fn checkout(&self) -> Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.sqlite_error(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .and_then(|()| schema::stable_plans(&conn))
            .and_then(|()| conn.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -16384;"))
            .map_err(|e| self.sqlite_error(e))?;
        Ok(conn)
    }

    fn checkin(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.keep {
            idle.push(conn);
        }
    }

    /// Runs `read` in one read transaction (one snapshot) on a blocking thread.
    async fn read<T, F>(self: &Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &ReadPool) -> Result<T> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool.checkout()?;
            let result = Transaction::new_unchecked(&conn, TransactionBehavior::Deferred)
                .map_err(|e| pool.sqlite_error(e))
                .and_then(|tx| read(&tx, &pool));
            // The transaction was dropped (rolled back) inside the closure's scope.
            pool.checkin(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// Revision bounds read inside the snapshot they apply to.
struct Snapshot {
    revision: i64,
    compacted: i64,
}

fn snapshot(tx: &Transaction<'_>, pool: &ReadPool) -> Result<Snapshot> {
    let read = || -> rusqlite::Result<Snapshot> {
        Ok(Snapshot {
            revision: schema::read_meta(tx, META_REVISION)?,
            compacted: schema::read_meta(tx, META_COMPACT)?,
        })
    };
    read().map_err(|e| pool.sqlite_error(e))
}

/// Checks that `revision` can be read in a snapshot.
fn check_revision(snap: &Snapshot, revision: i64) -> Result<()> {
    if revision > snap.revision {
        return Err(StoreError::FutureRevision {
            requested: revision,
            current: snap.revision,
        });
    }
    if revision < snap.compacted {
        return Err(StoreError::Compacted {
            requested: revision,
            compacted: snap.compacted,
        });
    }
    Ok(())
}

pub struct SqliteStore {
    requests: Mutex<Option<std::sync::mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reads: Arc<ReadPool>,
    shared: Arc<Shared>,
    intents: WriteIntents,
    // Held for the store's life: a second process on the same file would assign
    // revisions of its own.
    _lock: std::fs::File,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, and starts its writer thread.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, options))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    fn open_blocking(path: &Path, options: SqliteOptions) -> Result<Self> {
        let db_path = path.display().to_string();
        let io = |source| StoreError::Io {
            path: db_path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Io {
                    path: lock_path.display().to_string(),
                    source: std::io::Error::other("the datastore is in use by another rkube process"),
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
        }

        let sqlite_error = |source| StoreError::Sqlite {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite_error)?;
        let synchronous = match options.durability {
            Durability::Fsync => "FULL",
            Durability::Process => "NORMAL",
        };
        schema::create(&conn).map_err(sqlite_error)?;
        schema::configure(&conn, synchronous).map_err(sqlite_error)?;
        let schema_version = schema::read_meta(&conn, META_SCHEMA).map_err(sqlite_error)?;
        if schema_version > SCHEMA_VERSION {
            return Err(StoreError::Sqlite {
                path: db_path.clone(),
                source: rusqlite::Error::InvalidQuery,
            });
        }
        let revision = schema::read_meta(&conn, META_REVISION).map_err(sqlite_error)?;
        let compacted = schema::read_meta(&conn, META_COMPACT).map_err(sqlite_error)?;
        let compacted_physically = schema::read_meta(&conn, META_COMPACT_PHYSICAL).map_err(sqlite_error)?;

        let (sender, _) = broadcast::channel(options.watch_buffer.max(1));
        let shared = Arc::new(Shared {
            hub: Mutex::new(Hub {
                sender: Some(sender),
                published: revision,
            }),
            compacted: AtomicI64::new(compacted),
            commits: AtomicU64::new(0),
        });
        let (requests, receiver) = std::sync::mpsc::channel();
        let intents = WriteIntents::default();
        let writer = Writer {
            intents: intents.clone(),
            max_linger: options.max_linger,
            conn,
            path: db_path.clone(),
            shared: Arc::clone(&shared),
            revision,
            compacted,
            compacted_physically,
            max_batch: options.max_batch.max(1),
            compaction_chunk: options.compaction_chunk.max(1),
        };
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(io)?;
        tracing::info!(path = db_path.as_str(), revision, compacted, "opened sqlite datastore");
        Ok(Self {
            requests: Mutex::new(Some(requests)),
            writer: Mutex::new(Some(handle)),
            reads: Arc::new(ReadPool {
                path: path.to_path_buf(),
                display: db_path,
                idle: Mutex::new(Vec::new()),
                keep: options.read_connections.max(1),
            }),
            shared,
            intents,
            _lock: lock,
        })
    }

    /// Transactions that stored writes since the store opened: writes per commit is how
    /// well the group commit shares its fsyncs.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Size of the database on disk (main file and write-ahead log).
    pub fn disk_usage(&self) -> u64 {
        let main = &self.reads.path;
        let mut wal = main.as_os_str().to_owned();
        wal.push("-wal");
        [main.as_path(), Path::new(&wal)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    async fn submit<T>(&self, request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let sender = requests.as_ref().ok_or(StoreError::Closed)?;
            sender.send(request(reply)).map_err(|_| StoreError::Closed)?;
        }
        intent::handed_over();
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer after the writes already queued, and waits for it.
    pub fn close(&self) {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(path = %self.reads.display, "sqlite writer thread panicked");
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn kv_from_range_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: Bytes::from(row.get::<_, Vec<u8>>(1)?),
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn write_intents(&self) -> Option<&WriteIntents> {
        Some(&self.intents)
    }

    async fn current_revision(&self) -> Result<i64> {
        self.reads.read(|tx, pool| Ok(snapshot(tx, pool)?.revision)).await
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }

    async fn get(&self, key: &str) -> Result<(i64, Option<KeyValue>)> {
        validate_key(key)?;
        let key = key.to_string();
        self.reads
            .read(move |tx, pool| {
                let snap = snapshot(tx, pool)?;
                let kv = tx
                    .prepare_cached(schema::SELECT_LATEST)
                    .and_then(|mut stmt| {
                        let mut rows = stmt.query([&key])?;
                        let Some(row) = rows.next()? else { return Ok(None) };
                        if row.get::<_, i64>(2)? != 0 {
                            return Ok(None);
                        }
                        Ok(Some(KeyValue {
                            key: key.clone(),
                            value: Bytes::from(row.get::<_, Vec<u8>>(3)?),
                            create_revision: row.get(1)?,
                            mod_revision: row.get(0)?,
                        }))
                    })
                    .map_err(|e| pool.sqlite_error(e))?;
                Ok((snap.revision, kv))
            })
            .await
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let token = request.validate()?;
        self.reads
            .read(move |tx, pool| {
                let snap = snapshot(tx, pool)?;
                let revision = token
                    .as_ref()
                    .map(|t| t.revision)
                    .or(request.revision)
                    .unwrap_or(snap.revision);
                check_revision(&snap, revision)?;
                let end = prefix_end(&request.prefix);
                // One more than asked tells whether another page follows.
                let fetch = request.limit.map_or(i64::MAX, |l| (l as i64).saturating_add(1));
                let (sql, start) = match &token {
                    Some(t) => (schema::SELECT_RANGE_AFTER, t.last_key.as_str()),
                    None => (schema::SELECT_RANGE_FROM, request.prefix.as_str()),
                };
                let mut kvs = tx
                    .prepare_cached(sql)
                    .and_then(|mut stmt| {
                        stmt.query_map(params![start, end, revision, fetch], kv_from_range_row)?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(|e| pool.sqlite_error(e))?;
                let continue_token = match request.limit {
                    Some(limit) if kvs.len() > limit => {
                        kvs.truncate(limit);
                        kvs.last().map(|last| {
                            ContinueToken {
                                revision,
                                last_key: last.key.clone(),
                            }
                            .encode()
                        })
                    }
                    _ => None,
                };
                Ok(RangeResponse {
                    kvs,
                    revision,
                    continue_token,
                })
            })
            .await
    }

    async fn count(&self, prefix: &str) -> Result<(i64, i64)> {
        validate_key(prefix)?;
        let prefix = prefix.to_string();
        self.reads
            .read(move |tx, pool| {
                let snap = snapshot(tx, pool)?;
                let count = tx
                    .prepare_cached(schema::COUNT_RANGE)
                    .and_then(|mut stmt| stmt.query_row(params![prefix, prefix_end(&prefix)], |row| row.get(0)))
                    .map_err(|e| pool.sqlite_error(e))?;
                Ok((snap.revision, count))
            })
            .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let key = key.to_string();
        self.submit(|reply| Request::Create { key, value, reply }).await
    }

    async fn update(&self, key: &str, value: Bytes, expected_mod_revision: i64) -> Result<i64> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let key = key.to_string();
        self.submit(|reply| Request::Update {
            key,
            value,
            expected: expected_mod_revision,
            reply,
        })
        .await
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, KeyValue)> {
        validate_key(key)?;
        let key = key.to_string();
        self.submit(|reply| Request::Delete {
            key,
            expected: expected_mod_revision,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<Watcher> {
        validate_key(prefix)?;
        let (receiver, published) = {
            let hub = self.shared.hub();
            let sender = hub.sender.as_ref().ok_or(StoreError::Closed)?;
            (sender.subscribe(), hub.published)
        };
        let position = if after_revision <= 0 { published } else { after_revision };
        if position > published {
            // A reader may have seen a commit that is not published yet; only a revision
            // past the committed one is really in the future.
            let committed = self.current_revision().await?;
            if position > committed {
                return Err(StoreError::FutureRevision {
                    requested: position,
                    current: committed,
                });
            }
        }
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if position < compacted {
            return Err(StoreError::Compacted {
                requested: position,
                compacted,
            });
        }
        Ok(Watcher::new(Box::new(SqliteWatch {
            prefix: prefix.to_string(),
            end: prefix_end(prefix),
            position,
            catch_up_until: published,
            receiver,
            reads: Arc::clone(&self.reads),
        })))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.submit(|reply| Request::Compact { revision, reply }).await
    }
}

/// Events read from the table per catch-up step.
const CATCH_UP_PAGE: i64 = 1000;

struct SqliteWatch {
    prefix: String,
    end: String,
    /// Every event at or before this revision has been delivered (or did not match).
    position: i64,
    /// Events up to here come from the table; later ones from the broadcast.
    catch_up_until: i64,
    receiver: broadcast::Receiver<Arc<Batch>>,
    reads: Arc<ReadPool>,
}

impl SqliteWatch {
    fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    async fn catch_up(&mut self) -> Result<Vec<Event>> {
        let (from, until) = (self.position, self.catch_up_until);
        let (prefix, end) = (self.prefix.clone(), self.end.clone());
        let (events, last) = self
            .reads
            .read(move |tx, pool| {
                let snap = snapshot(tx, pool)?;
                if from < snap.compacted {
                    return Err(StoreError::Compacted {
                        requested: from,
                        compacted: snap.compacted,
                    });
                }
                let events = tx
                    .prepare_cached(schema::SELECT_EVENTS)
                    .and_then(|mut stmt| {
                        stmt.query_map(params![from, until, prefix, end, CATCH_UP_PAGE], event_from_row)?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(|e| pool.sqlite_error(e))?;
                let last = if (events.len() as i64) < CATCH_UP_PAGE {
                    until
                } else {
                    events.last().map_or(until, Event::revision)
                };
                Ok((events, last))
            })
            .await?;
        self.position = last;
        Ok(events)
    }
}

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let revision: i64 = row.get(0)?;
    let key: String = row.get(1)?;
    let created = row.get::<_, i64>(2)? != 0;
    let deleted = row.get::<_, i64>(3)? != 0;
    let prev = match row.get::<_, Option<i64>>(6)? {
        Some(prev_revision) if !created => Some(KeyValue {
            key: key.clone(),
            value: Bytes::from(row.get::<_, Vec<u8>>(8)?),
            create_revision: row.get(7)?,
            mod_revision: prev_revision,
        }),
        _ => None,
    };
    let kv = if deleted {
        KeyValue {
            key,
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: revision,
        }
    } else {
        KeyValue {
            key,
            value: Bytes::from(row.get::<_, Vec<u8>>(5)?),
            create_revision: row.get(4)?,
            mod_revision: revision,
        }
    };
    Ok(Event {
        kind: if deleted { EventKind::Delete } else { EventKind::Put },
        kv,
        prev,
    })
}

#[async_trait::async_trait]
impl WatchSource for SqliteWatch {
    async fn next_batch(&mut self) -> Option<Result<Vec<Event>>> {
        loop {
            if self.position < self.catch_up_until {
                match self.catch_up().await {
                    Ok(events) if events.is_empty() => continue,
                    Ok(events) => return Some(Ok(events)),
                    Err(err) => return Some(Err(err)),
                }
            }
            match self.receiver.recv().await {
                Ok(batch) => {
                    let events: Vec<Event> = batch
                        .events
                        .iter()
                        .filter(|e| e.revision() > self.position && self.matches(&e.kv.key))
                        .cloned()
                        .collect();
                    self.position = self.position.max(batch.last_revision);
                    if !events.is_empty() {
                        return Some(Ok(events));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(Err(StoreError::WatcherTooSlow {
                        prefix: self.prefix.clone(),
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
