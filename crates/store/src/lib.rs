//! rkube's durable store, in etcd's v3 model.
//!
//! Keys and opaque bytes, one global revision that every write increments, per-key create
//! and mod revisions, ranges consistent at a revision, compare-and-swap on the mod revision,
//! watches from a revision, and compaction of old history. The store knows nothing of
//! Kubernetes kinds: the API server encodes objects and maps [`StoreError`]s to `Status`.
//!
//! Two backends implement [`Store`]: [`sqlite::SqliteStore`] (embedded, the default) and
//! [`etcd::EtcdStore`]. One conformance suite (`tests/conformance.rs`) runs against both.

mod compactor;
mod continuation;
mod error;
pub mod etcd;
mod intent;
mod key;
pub mod sqlite;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use bytes::Bytes;
pub use compactor::{CompactionPolicy, compaction_target, spawn_compactor};
pub use continuation::ContinueToken;
pub use error::{Result, StoreError};
pub use intent::WriteIntents;
pub use key::{MAX_KEY_BYTES, MAX_VALUE_BYTES, prefix_end, validate_key, validate_value};
pub use watch::{WatchSource, Watcher};

/// One key's value at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key; the compare-and-swap token.
    pub mod_revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A create (`prev` is `None`) or an update (`prev` is the value it replaced).
    Put,
    /// `kv` carries the key and the deletion's revision, with an empty value; `prev` is the
    /// deleted value.
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    pub fn is_create(&self) -> bool {
        self.kind == EventKind::Put && self.prev.is_none()
    }
}

/// A range over every key that starts with `prefix`, in key order.
#[derive(Debug, Clone, Default)]
pub struct RangeRequest {
    pub prefix: String,
    /// Read at this revision (which must not be compacted); `None` reads the latest.
    pub revision: Option<i64>,
    /// At most this many keys; `None` for all of them.
    pub limit: Option<usize>,
    /// Continue a previous range: its revision and position come from the token.
    pub continue_token: Option<String>,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn at_revision(mut self, revision: i64) -> Self {
        self.revision = Some(revision);
        self
    }

    pub fn continuing(mut self, token: impl Into<String>) -> Self {
        self.continue_token = Some(token.into());
        self
    }

    /// Checks the request and decodes its continue token, which must continue a range over
    /// the same prefix at the same revision (when one is asked for).
    pub fn validate(&self) -> Result<Option<ContinueToken>> {
        validate_key(&self.prefix)?;
        let token = self
            .continue_token
            .as_deref()
            .map(|t| ContinueToken::decode(t, &self.prefix))
            .transpose()?;
        if let (Some(token), Some(revision)) = (&token, self.revision)
            && token.revision != revision
        {
            return Err(StoreError::InvalidContinue {
                reason: format!(
                    "the token continues a range at revision {}, not {revision}",
                    token.revision
                ),
            });
        }
        Ok(token)
    }
}

#[derive(Debug, Clone)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The revision the whole range (every page of it) is consistent at.
    pub revision: i64,
    /// Present when keys remain after this page.
    pub continue_token: Option<String>,
}

/// The store, in etcd's v3 model. Implementations are cheap to share (`Arc<dyn Store>`).
///
/// Every method validates its keys and values first and changes nothing on any error.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name of the backend (`sqlite`, `etcd`), for logs and benchmarks.
    fn backend(&self) -> &'static str;

    /// Where requests that are about to write say so, for a backend whose group commit
    /// waits for writes on the way ([`WriteIntents`]).
    fn write_intents(&self) -> Option<&WriteIntents> {
        None
    }

    /// The latest revision: every write so far has a revision at most this.
    async fn current_revision(&self) -> Result<i64>;

    /// The revision history has been compacted to: ranges and watches need revisions at or
    /// after it.
    async fn compacted_revision(&self) -> Result<i64>;

    /// The latest value of `key`, with the revision it was read at.
    async fn get(&self, key: &str) -> Result<(i64, Option<KeyValue>)>;

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;

    /// How many keys start with `prefix` now, with the revision counted at.
    async fn count(&self, prefix: &str) -> Result<(i64, i64)>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists. Returns the
    /// write's revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<i64>;

    /// Replaces the value of `key` if its mod revision is still `expected_mod_revision`.
    async fn update(&self, key: &str, value: Bytes, expected_mod_revision: i64) -> Result<i64>;

    /// Deletes `key` (if `expected_mod_revision` is given, only at that mod revision).
    /// Returns the deletion's revision and the deleted value.
    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, KeyValue)>;

    /// Every change to keys under `prefix` with a revision after `after_revision`, in
    /// revision order, without gaps or duplicates. `after_revision` 0 means "from now".
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<Watcher>;

    /// Drops history before `revision`. Later ranges and watches at older revisions fail
    /// with [`StoreError::Compacted`].
    async fn compact(&self, revision: i64) -> Result<()>;
}

/// Where state lives, as chosen by `rkube server --datastore-endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// Embedded SQLite database file.
    Sqlite { path: std::path::PathBuf },
    /// An etcd v3 cluster.
    Etcd { endpoints: Vec<String> },
}

impl Datastore {
    /// Parses a `--datastore-endpoint` value as k3s does: `http(s)://host:port,...` is
    /// etcd, `sqlite://PATH` (or empty, meaning `default_sqlite`) is SQLite.
    pub fn from_endpoint(endpoint: Option<&str>, default_sqlite: &std::path::Path) -> Result<Self> {
        let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(Self::Sqlite {
                path: default_sqlite.to_path_buf(),
            });
        };
        let invalid = |reason: &str| StoreError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = endpoint.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid(
                    "sqlite:// needs a file path, e.g. sqlite:///var/lib/rkube/state.db",
                ));
            }
            return Ok(Self::Sqlite { path: path.into() });
        }
        let endpoints = endpoint.split(',').map(|e| e.trim().to_string()).collect::<Vec<_>>();
        for e in &endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .ok_or_else(|| {
                    invalid("expected sqlite://PATH or a comma-separated list of http://host:port etcd endpoints")
                })?;
            if e.starts_with("https://") {
                return Err(invalid(
                    "etcd over TLS is not supported yet; use http:// endpoints on a trusted network",
                ));
            }
            if rest.is_empty() || !rest.contains(':') {
                return Err(invalid(
                    "each etcd endpoint needs host:port, e.g. http://127.0.0.1:2379",
                ));
            }
        }
        Ok(Self::Etcd { endpoints })
    }
}

/// Options that apply to whichever backend is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Automatic compaction; `None` leaves history until [`Store::compact`] is called.
    pub compaction: Option<CompactionPolicy>,
    pub sqlite: sqlite::SqliteOptions,
    pub etcd_timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            compaction: Some(CompactionPolicy::default()),
            sqlite: sqlite::SqliteOptions::default(),
            etcd_timeout: Duration::from_secs(10),
        }
    }
}

/// Opens the chosen datastore and, when the options ask for it, starts its compactor (a
/// tokio task that ends when the store is dropped).
pub async fn open(datastore: &Datastore, options: OpenOptions) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match datastore {
        Datastore::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path, options.sqlite).await?),
        Datastore::Etcd { endpoints } => Arc::new(etcd::EtcdStore::connect(endpoints, options.etcd_timeout).await?),
    };
    if let Some(policy) = options.compaction {
        // The task ends by itself once the store is dropped.
        drop(spawn_compactor(Arc::downgrade(&store), policy));
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn datastore_endpoints() {
        let default = Path::new("/var/lib/rkube/server/db/state.db");
        assert_eq!(
            Datastore::from_endpoint(None, default).unwrap(),
            Datastore::Sqlite { path: default.into() }
        );
        assert_eq!(
            Datastore::from_endpoint(Some("sqlite:///tmp/x.db"), default).unwrap(),
            Datastore::Sqlite {
                path: "/tmp/x.db".into()
            }
        );
        assert_eq!(
            Datastore::from_endpoint(Some("http://127.0.0.1:2379, http://127.0.0.2:2379"), default).unwrap(),
            Datastore::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into(), "http://127.0.0.2:2379".into()]
            }
        );
        for bad in [
            "mysql://x",
            "http://",
            "sqlite://",
            "https://127.0.0.1:2379",
            "127.0.0.1:2379",
        ] {
            let err = Datastore::from_endpoint(Some(bad), default).unwrap_err();
            assert!(matches!(err, StoreError::InvalidEndpoint { .. }), "{bad}: {err}");
        }
    }
}
