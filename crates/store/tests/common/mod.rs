//! Fixtures shared by the store's integration tests: a fresh store of either backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use rkube_store::etcd::EtcdStore;
use rkube_store::sqlite::{SqliteOptions, SqliteStore};
use rkube_store::{Event, Store, StoreError, Watcher};
use rkube_testkit::EtcdCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

/// Small enough that the slow-watcher test overflows it quickly.
pub const WATCH_BUFFER: usize = 64;

pub struct Fixture {
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    dir: tempfile::TempDir,
    etcd: Option<EtcdCluster>,
}

impl Fixture {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::Builder::new().prefix("rkube-store-test-").tempdir().unwrap();
        let etcd = match backend {
            Backend::Sqlite => None,
            Backend::Etcd => Some(
                tokio::task::spawn_blocking(|| EtcdCluster::start(1))
                    .await
                    .unwrap()
                    .unwrap(),
            ),
        };
        let store = open(backend, &dir, etcd.as_ref()).await;
        Self {
            backend,
            store,
            dir,
            etcd,
        }
    }

    /// Closes the store and opens it again on the same data (for etcd: after restarting
    /// the etcd member, so the data must come back from its disk).
    pub async fn reopen(&mut self) {
        let placeholder = open_placeholder(&self.dir).await;
        let old = std::mem::replace(&mut self.store, placeholder);
        assert_eq!(Arc::strong_count(&old), 1, "the test still holds the store");
        drop(old);
        if let Some(etcd) = self.etcd.as_mut() {
            tokio::task::block_in_place(|| etcd.restart_member(0)).unwrap();
        }
        self.store = open(self.backend, &self.dir, self.etcd.as_ref()).await;
    }
}

async fn open(backend: Backend, dir: &tempfile::TempDir, etcd: Option<&EtcdCluster>) -> Arc<dyn Store> {
    match backend {
        Backend::Sqlite => {
            let options = SqliteOptions {
                watch_buffer: WATCH_BUFFER,
                ..SqliteOptions::default()
            };
            Arc::new(SqliteStore::open(&dir.path().join("state.db"), options).await.unwrap())
        }
        Backend::Etcd => {
            let endpoints = etcd.unwrap().endpoints();
            let store = EtcdStore::connect(&endpoints, Duration::from_secs(10)).await.unwrap();
            Arc::new(store.with_watch_buffer(WATCH_BUFFER))
        }
    }
}

/// A throwaway store to hold the slot while the real one is closed.
async fn open_placeholder(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let path = dir.path().join(format!("placeholder-{}.db", std::process::id()));
    Arc::new(SqliteStore::open(&path, SqliteOptions::default()).await.unwrap())
}

/// The next event, failing the test instead of hanging when none comes.
pub async fn next_event(watcher: &mut Watcher) -> Result<Event, StoreError> {
    match tokio::time::timeout(Duration::from_secs(20), watcher.next()).await {
        Ok(Some(result)) => result,
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within 20 s"),
    }
}

pub async fn next_events(watcher: &mut Watcher, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        events.push(next_event(watcher).await.unwrap());
    }
    events
}
