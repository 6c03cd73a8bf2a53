//! The SQLite group commit waits for writes that requests declared on the way, and only
//! for them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use rkube_store::sqlite::{SqliteOptions, SqliteStore};
use rkube_store::{Bytes, Store};

async fn open(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    // Long enough that a commit made without waiting for a declared write cannot be
    // mistaken for one that waited and gave up.
    let options = SqliteOptions {
        max_linger: Duration::from_secs(60),
        ..SqliteOptions::default()
    };
    Arc::new(SqliteStore::open(&dir.path().join("state.db"), options).await.unwrap())
}

async fn until_declared(intents: &rkube_store::WriteIntents) {
    rkube_testkit::eventually("a declared request", Duration::from_secs(30), async || {
        (intents.preparing() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_for_declared_writes_and_only_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let intents = store.write_intents().unwrap().clone();

    // Nobody on the way: a write commits at once, alone.
    store.create("/lone", Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(store.commits(), 1);

    // A request declares a write and is still preparing it when another write arrives: the
    // commit holds that write until the declared one joins it, then both go in one.
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let declared = tokio::spawn({
        let (store, intents) = (Arc::clone(&store), intents.clone());
        async move {
            intents
                .during(async {
                    ready.await.unwrap();
                    store.create("/declared", Bytes::from_static(b"2")).await
                })
                .await
        }
    });
    until_declared(&intents).await;
    let other = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.create("/other", Bytes::from_static(b"3")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!other.is_finished(), "the commit waits for the declared write");
    go.send(()).unwrap();
    let (declared, other) = (declared.await.unwrap().unwrap(), other.await.unwrap().unwrap());
    assert_eq!(store.commits(), 2, "one commit for both");
    assert_eq!((declared.min(other), declared.max(other)), (3, 4));
    assert_eq!(intents.preparing(), 0);

    // A declared request that ends without writing (refused, say) stops the wait.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let refused = tokio::spawn({
        let intents = intents.clone();
        async move { intents.during(stopped).await }
    });
    until_declared(&intents).await;
    let waiting = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.create("/waiting", Bytes::from_static(b"4")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    drop(stop);
    refused.await.unwrap().unwrap_err();
    waiting.await.unwrap().unwrap();
    assert_eq!(store.commits(), 3);
    assert_eq!(intents.preparing(), 0);
}
