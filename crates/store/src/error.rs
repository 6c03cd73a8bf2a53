use crate::KeyValue;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can answer instead of success. The API server maps these
/// to Kubernetes `Status` reasons (AlreadyExists → 409, Conflict → 409, Compacted → 410, ...);
/// nothing here knows about kinds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },

    #[error("key {key:?} not found")]
    NotFound { key: String },

    /// Compare-and-swap lost: `current` is the value that won, so callers can retry
    /// without another read (`None` if the key has been deleted since).
    #[error("conflict on key {key:?}: expected mod revision {expected}, but it is {}", current.as_ref().map_or_else(|| "deleted".to_string(), |kv| kv.mod_revision.to_string()))]
    Conflict {
        key: String,
        expected: i64,
        current: Option<Box<KeyValue>>,
    },

    #[error("revision {requested} has been compacted; the oldest revision available is {compacted}")]
    Compacted { requested: i64, compacted: i64 },

    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: i64, current: i64 },

    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error("value for key {key:?} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge { key: String, size: usize, limit: usize },

    #[error("invalid continue token: {reason}")]
    InvalidContinue { reason: String },

    /// The watcher fell further behind the writers than the store buffers for it. It is
    /// cut off so that it never slows writers or other watchers; the client re-lists.
    #[error("watch on {prefix:?} was cut off: the watcher fell behind by more than the store buffers")]
    WatcherTooSlow { prefix: String },

    #[error("the store is closed")]
    Closed,

    #[error("sqlite datastore {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },

    /// A batch of writes failed to commit; none of it is stored.
    #[error("sqlite datastore {path}: the write was not stored: {reason}")]
    WriteFailed { path: String, reason: String },

    #[error("etcd datastore: {0}")]
    Etcd(#[from] etcd_client::Error),

    #[error("etcd datastore answered something unexpected: {0}")]
    EtcdProtocol(String),

    #[error("datastore endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    #[error("datastore i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True for errors that say something about the caller's request (the API server answers
    /// them as 4xx), false for failures of the datastore itself.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::AlreadyExists { .. }
                | Self::NotFound { .. }
                | Self::Conflict { .. }
                | Self::Compacted { .. }
                | Self::FutureRevision { .. }
                | Self::InvalidKey { .. }
                | Self::ValueTooLarge { .. }
                | Self::InvalidContinue { .. }
        )
    }
}
