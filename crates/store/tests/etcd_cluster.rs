//! The etcd backend against a 3-member cluster: writes and watches go on when one member
//! dies, through the client's other endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rkube_store::etcd::EtcdStore;
use rkube_store::{Bytes, RangeRequest, Store};
use rkube_testkit::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_losing_one() {
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cluster.member_names().len(), 3);
    let store = EtcdStore::connect(&cluster.endpoints(), Duration::from_secs(10))
        .await
        .unwrap();

    let watcher = store.watch("/ha/", 0).await.unwrap();
    let first = store.create("/ha/before", Bytes::from_static(b"1")).await.unwrap();

    tokio::task::block_in_place(|| cluster.kill_member(0)).unwrap();
    // The surviving two keep a quorum; the client fails over to their endpoints.
    let mut after = None;
    for _ in 0..50 {
        match store.create("/ha/after", Bytes::from_static(b"2")).await {
            Ok(rev) => {
                after = Some(rev);
                break;
            }
            Err(rkube_store::StoreError::AlreadyExists { .. }) => {
                after = store.get("/ha/after").await.unwrap().1.map(|kv| kv.mod_revision);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let after = after.expect("the cluster kept accepting writes after losing a member");
    assert!(after > first);
    let keys: Vec<String> = store
        .range(RangeRequest::prefix("/ha/"))
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec!["/ha/after", "/ha/before"]);

    // The watch saw the first write. If its stream was on the member that died, it ends
    // with a transport error instead, and a client resumes after the last revision it
    // had (as the watch cache does): the resumed watch must then deliver the first write.
    let next = |mut watcher: rkube_store::Watcher| async move {
        tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .unwrap()
            .unwrap()
    };
    let event = match next(watcher).await {
        Ok(event) => event,
        Err(err) => {
            eprintln!("the watch broke with its member ({err}); resuming");
            next(store.watch("/ha/", first - 1).await.unwrap()).await.unwrap()
        }
    };
    assert_eq!(event.revision(), first);
}
