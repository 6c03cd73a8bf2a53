//! Churn: a million updates to ten keys with automatic compaction. The database must stay
//! small: the failure k3s users meet most is a lease renewed every few seconds growing the
//! database without bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rkube_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use rkube_store::{Bytes, CompactionPolicy, Store, spawn_compactor};

const KEYS: usize = 10;
const UPDATES: usize = 1_000_000;
const VALUE_BYTES: usize = 256;

/// The bound held, main file plus write-ahead log.
///
/// Live data is ten rows. Compaction keeps at least 1,000 revisions plus what is written
/// during one 50 ms compaction interval and the chunk being deleted (at the ~50k writes/s
/// this reaches, a few thousand rows of ~350 bytes with index: about 2 MiB). The WAL is reset
/// at each checkpoint (every 1,000 pages, 4 MiB) and truncated to 16 MiB at most. Without
/// compaction the same run needs over 300 MiB, so 32 MiB fails loudly if compaction stops
/// working while leaving room for checkpoint timing.
const BOUND_BYTES: u64 = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_updates_stay_small() {
    let dir = tempfile::Builder::new().prefix("rkube-churn-").tempdir().unwrap();
    // Process-crash durability: this test is about space, and a million fsyncs would take
    // most of the CI budget while proving nothing more.
    let options = SqliteOptions {
        durability: Durability::Process,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db"), options).await.unwrap());
    let as_dyn: Arc<dyn Store> = store.clone();
    let _compactor = spawn_compactor(
        Arc::downgrade(&as_dyn),
        CompactionPolicy {
            retention: Duration::ZERO,
            min_revisions: 1000,
            interval: Duration::from_millis(50),
        },
    );

    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (store, peak) = (Arc::clone(&store), Arc::clone(&peak));
        tokio::spawn(async move {
            loop {
                peak.fetch_max(store.disk_usage(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let writers = (0..KEYS).map(|k| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let key = format!("/registry/leases/kube-node-lease/node-{k}");
            let value = Bytes::from(vec![b'a' + k as u8; VALUE_BYTES]);
            let mut rev = store.create(&key, value.clone()).await.unwrap();
            for _ in 1..UPDATES / KEYS {
                rev = store.update(&key, value.clone(), rev).await.unwrap();
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    sampler.abort();
    peak.fetch_max(store.disk_usage(), Ordering::Relaxed);

    let current = store.current_revision().await.unwrap();
    assert!(current > UPDATES as i64);
    let compacted = store.compacted_revision().await.unwrap();
    assert!(
        compacted > current - 100_000,
        "compaction kept up: {compacted} of {current}"
    );
    assert_eq!(store.count("/registry/leases/").await.unwrap().1, KEYS as i64);

    let peak = peak.load(Ordering::Relaxed);
    eprintln!("churn: {UPDATES} updates, peak database size {peak} bytes, bound {BOUND_BYTES}");
    assert!(
        peak <= BOUND_BYTES,
        "database grew to {peak} bytes (bound {BOUND_BYTES})"
    );
}
