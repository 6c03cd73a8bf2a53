//! The store conformance suite: every test runs against every backend (SQLite, etcd).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Fixture, WATCH_BUFFER, next_event, next_events};
use rkube_store::{Bytes, EventKind, MAX_VALUE_BYTES, RangeRequest, StoreError};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut fixture = super::Fixture::new(super::common::Backend::Sqlite).await;
                    super::$name(&mut fixture).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut fixture = super::Fixture::new(super::common::Backend::Etcd).await;
                    super::$name(&mut fixture).await;
                }
            )*
        }
    };
}

conformance!(
    crud,
    cas_conflicts,
    pagination_is_consistent_at_a_revision,
    range_at_an_older_revision,
    prefix_isolation,
    concurrent_writers_on_one_key,
    large_values,
    bad_input_changes_nothing,
    watch_ordering_and_previous_values,
    watch_resumes_from_a_revision,
    compaction,
    revisions_strictly_increase,
    persistence_across_restart,
    slow_watcher_is_cut_off,
);

async fn crud(f: &mut Fixture) {
    let s = &f.store;
    let r0 = s.current_revision().await.unwrap();
    let r1 = s.create("/registry/pods/default/a", b("one")).await.unwrap();
    assert!(r1 > r0);
    let (read_at, kv) = s.get("/registry/pods/default/a").await.unwrap();
    let kv = kv.unwrap();
    assert!(read_at >= r1);
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision),
        (&b"one"[..], r1, r1)
    );

    let err = s.create("/registry/pods/default/a", b("again")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { ref key } if key == "/registry/pods/default/a"),
        "{err}"
    );

    let r2 = s.update("/registry/pods/default/a", b("two"), r1).await.unwrap();
    assert!(r2 > r1);
    let kv = s.get("/registry/pods/default/a").await.unwrap().1.unwrap();
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision),
        (&b"two"[..], r1, r2)
    );

    let (r3, deleted) = s.delete("/registry/pods/default/a", Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!((deleted.value.as_ref(), deleted.mod_revision), (&b"two"[..], r2));
    assert!(s.get("/registry/pods/default/a").await.unwrap().1.is_none());

    for err in [
        s.update("/registry/pods/default/a", b("x"), r2).await.unwrap_err(),
        s.delete("/registry/pods/default/a", None).await.unwrap_err(),
        s.update("/registry/pods/default/missing", b("x"), 1).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    // Re-created keys start a new life.
    let r4 = s.create("/registry/pods/default/a", b("three")).await.unwrap();
    let kv = s.get("/registry/pods/default/a").await.unwrap().1.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));

    // Unconditional delete.
    s.delete("/registry/pods/default/a", None).await.unwrap();
    assert_eq!(s.count("/registry/pods/").await.unwrap().1, 0);
}

async fn cas_conflicts(f: &mut Fixture) {
    let s = &f.store;
    let r1 = s.create("/k/cas", b("v1")).await.unwrap();
    let r2 = s.update("/k/cas", b("v2"), r1).await.unwrap();
    let before = s.current_revision().await.unwrap();

    let err = s.update("/k/cas", b("stale"), r1).await.unwrap_err();
    match err {
        StoreError::Conflict { key, expected, current } => {
            assert_eq!((key.as_str(), expected), ("/k/cas", r1));
            let current = current.unwrap();
            assert_eq!((current.value.as_ref(), current.mod_revision), (&b"v2"[..], r2));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let err = s.delete("/k/cas", Some(r1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");

    // Losing compare-and-swaps change nothing.
    assert_eq!(s.current_revision().await.unwrap(), before);
    let kv = s.get("/k/cas").await.unwrap().1.unwrap();
    assert_eq!((kv.value.as_ref(), kv.mod_revision), (&b"v2"[..], r2));
}

async fn pagination_is_consistent_at_a_revision(f: &mut Fixture) {
    let s = &f.store;
    for i in 0..25 {
        s.create(&format!("/p/item-{i:02}"), b(&format!("v{i}"))).await.unwrap();
    }
    let first = s.range(RangeRequest::prefix("/p/").with_limit(10)).await.unwrap();
    assert_eq!(first.kvs.len(), 10);
    let revision = first.revision;
    let mut token = first.continue_token.clone().expect("more pages");
    let mut keys: Vec<String> = first.kvs.iter().map(|kv| kv.key.clone()).collect();

    // Writes between pages must not show in later pages.
    let kv20 = s.get("/p/item-20").await.unwrap().1.unwrap();
    s.update("/p/item-20", b("changed"), kv20.mod_revision).await.unwrap();
    s.delete("/p/item-21", None).await.unwrap();
    s.create("/p/item-99", b("new")).await.unwrap();

    loop {
        let page = s
            .range(RangeRequest::prefix("/p/").with_limit(10).continuing(token.clone()))
            .await
            .unwrap();
        assert_eq!(page.revision, revision);
        for kv in &page.kvs {
            if kv.key == "/p/item-20" {
                assert_eq!(kv.value.as_ref(), b"v20");
            }
        }
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.continue_token {
            Some(next) => token = next,
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("/p/item-{i:02}")).collect();
    assert_eq!(keys, expected);

    // The latest view has the changes.
    let now = s.range(RangeRequest::prefix("/p/")).await.unwrap();
    assert_eq!(now.kvs.len(), 25);
    assert!(now.continue_token.is_none());
    assert!(now.kvs.iter().any(|kv| kv.key == "/p/item-99"));
    assert!(!now.kvs.iter().any(|kv| kv.key == "/p/item-21"));

    // A limit equal to the remaining count ends without a token.
    let exact = s.range(RangeRequest::prefix("/p/").with_limit(25)).await.unwrap();
    assert_eq!(exact.kvs.len(), 25);
    assert!(exact.continue_token.is_none());

    let err = s
        .range(RangeRequest::prefix("/p/").continuing(token).at_revision(revision + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidContinue { .. }), "{err}");
    let err = s
        .range(RangeRequest::prefix("/p/").continuing("garbage"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidContinue { .. }), "{err}");
}

async fn range_at_an_older_revision(f: &mut Fixture) {
    let s = &f.store;
    let r1 = s.create("/old/a", b("a1")).await.unwrap();
    s.create("/old/b", b("b1")).await.unwrap();
    let snapshot = s.current_revision().await.unwrap();
    s.update("/old/a", b("a2"), r1).await.unwrap();
    s.delete("/old/b", None).await.unwrap();
    s.create("/old/c", b("c1")).await.unwrap();

    let old = s
        .range(RangeRequest::prefix("/old/").at_revision(snapshot))
        .await
        .unwrap();
    let seen: Vec<(&str, &[u8])> = old.kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref())).collect();
    assert_eq!(seen, vec![("/old/a", &b"a1"[..]), ("/old/b", &b"b1"[..])]);
    assert_eq!(old.revision, snapshot);

    let future = s.current_revision().await.unwrap() + 100;
    let err = s
        .range(RangeRequest::prefix("/old/").at_revision(future))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");
}

async fn prefix_isolation(f: &mut Fixture) {
    let s = &f.store;
    let mut watcher = s.watch("/a/", 0).await.unwrap();
    for key in ["/a", "/a/1", "/a/2", "/ab/1", "/ab", "/a0", "/b/1"] {
        s.create(key, b(key)).await.unwrap();
    }
    let keys: Vec<String> = s
        .range(RangeRequest::prefix("/a/"))
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec!["/a/1", "/a/2"]);
    assert_eq!(s.count("/a/").await.unwrap().1, 2);
    assert_eq!(s.count("/ab/").await.unwrap().1, 1);
    let events = next_events(&mut watcher, 2).await;
    assert_eq!(
        events.iter().map(|e| e.kv.key.as_str()).collect::<Vec<_>>(),
        vec!["/a/1", "/a/2"]
    );
    // Nothing else arrives for this prefix; a marker write proves the stream moved on.
    s.create("/a/3", b("marker")).await.unwrap();
    assert_eq!(next_event(&mut watcher).await.unwrap().kv.key, "/a/3");
}

async fn concurrent_writers_on_one_key(f: &mut Fixture) {
    let s = &f.store;
    // 32 creates of one key: exactly one wins.
    let creates = (0..32).map(|i| {
        let s = Arc::clone(s);
        tokio::spawn(async move { s.create("/race/new", b(&format!("writer-{i}"))).await })
    });
    let results: Vec<_> = futures_join(creates).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::AlreadyExists { .. }))
    );

    // 32 updates from the same mod revision: exactly one wins.
    let base = s.get("/race/new").await.unwrap().1.unwrap().mod_revision;
    let updates = (0..32).map(|i| {
        let s = Arc::clone(s);
        tokio::spawn(async move { s.update("/race/new", b(&format!("update-{i}")), base).await })
    });
    let results: Vec<_> = futures_join(updates).await;
    let winners: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let kv = s.get("/race/new").await.unwrap().1.unwrap();
    assert_eq!(kv.mod_revision, winners[0]);
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        match err {
            StoreError::Conflict {
                current: Some(current), ..
            } => assert_eq!(current.mod_revision, winners[0]),
            other => panic!("expected a conflict, got {other}"),
        }
    }
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

async fn large_values(f: &mut Fixture) {
    let s = &f.store;
    let big: Bytes = (0..MAX_VALUE_BYTES)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let rev = s.create("/big/ok", big.clone()).await.unwrap();
    let kv = s.get("/big/ok").await.unwrap().1.unwrap();
    assert_eq!(kv.value, big);
    let listed = s.range(RangeRequest::prefix("/big/")).await.unwrap();
    assert_eq!(listed.kvs[0].value.len(), MAX_VALUE_BYTES);

    let before = s.current_revision().await.unwrap();
    let too_big = Bytes::from(vec![7u8; MAX_VALUE_BYTES + 1]);
    let err = s.create("/big/no", too_big.clone()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "value for key \"/big/no\" is {} bytes, over the limit of {MAX_VALUE_BYTES} bytes",
            MAX_VALUE_BYTES + 1
        )
    );
    let err = s.update("/big/ok", too_big, rev).await.unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    assert_eq!(s.current_revision().await.unwrap(), before);
    assert!(s.get("/big/no").await.unwrap().1.is_none());
}

async fn bad_input_changes_nothing(f: &mut Fixture) {
    let s = &f.store;
    let before = s.current_revision().await.unwrap();
    let long = format!("/{}", "k".repeat(2000));
    for key in ["", "/has space", "/tab\tkey", "/nul\0key", "/é", long.as_str()] {
        let err = s.create(key, b("v")).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{key:?}: {err}");
        assert!(err.to_string().starts_with("invalid key"), "{err}");
        let err = s.get(key).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{key:?}: {err}");
        let err = s.update(key, b("v"), 1).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{key:?}: {err}");
        let err = s.delete(key, None).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{key:?}: {err}");
        assert!(s.watch(key, 0).await.is_err());
        assert!(s.range(RangeRequest::prefix(key)).await.is_err());
    }
    let err = s.create("", b("v")).await.unwrap_err();
    assert_eq!(err.to_string(), "invalid key \"\": a key must not be empty");
    assert_eq!(s.current_revision().await.unwrap(), before);
    let future = before + 1000;
    let err = s.watch("/x/", future).await.unwrap_err();
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");
}

async fn watch_ordering_and_previous_values(f: &mut Fixture) {
    let s = &f.store;
    let mut watcher = s.watch("/w/", 0).await.unwrap();
    let ra = s.create("/w/a", b("a1")).await.unwrap();
    let rb = s.create("/w/b", b("b1")).await.unwrap();
    let ra2 = s.update("/w/a", b("a2"), ra).await.unwrap();
    let (rd, _) = s.delete("/w/b", Some(rb)).await.unwrap();
    let rc = s.create("/w/b", b("b2")).await.unwrap();

    let events = next_events(&mut watcher, 5).await;
    let revisions: Vec<i64> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(revisions, vec![ra, rb, ra2, rd, rc]);

    assert!(events[0].is_create());
    assert_eq!(events[0].kv.value.as_ref(), b"a1");
    assert_eq!(events[2].kind, EventKind::Put);
    let prev = events[2].prev.as_ref().unwrap();
    assert_eq!((prev.value.as_ref(), prev.mod_revision), (&b"a1"[..], ra));
    assert_eq!(events[2].kv.create_revision, ra);
    assert_eq!(events[3].kind, EventKind::Delete);
    assert_eq!(events[3].kv.key, "/w/b");
    let prev = events[3].prev.as_ref().unwrap();
    assert_eq!((prev.value.as_ref(), prev.mod_revision), (&b"b1"[..], rb));
    assert!(
        events[4].is_create(),
        "a re-create has no previous value: {:?}",
        events[4]
    );

    // Many concurrent writers: the watcher sees every write once, in revision order.
    // It reads while they write: the fixture's watch buffer is deliberately small.
    let reader = tokio::spawn(async move {
        next_events(&mut watcher, 400)
            .await
            .iter()
            .map(|e| e.revision())
            .collect::<Vec<i64>>()
    });
    let writers = (0..8).map(|w| {
        let s = Arc::clone(s);
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                revs.push(s.create(&format!("/w/c/{w}-{i}"), b("x")).await.unwrap());
            }
            revs
        })
    });
    let mut written: Vec<i64> = futures_join(writers).await.into_iter().flatten().collect();
    written.sort_unstable();
    assert_eq!(reader.await.unwrap(), written);
}

async fn watch_resumes_from_a_revision(f: &mut Fixture) {
    let s = &f.store;
    let mut revs = Vec::new();
    for i in 0..30 {
        revs.push(s.create(&format!("/r/{i:02}"), b(&i.to_string())).await.unwrap());
        s.create(&format!("/other/{i:02}"), b("noise")).await.unwrap();
    }
    let resume_after = revs[9];
    let mut watcher = s.watch("/r/", resume_after).await.unwrap();
    // History after the revision, then live writes, with no gap or duplicate between them.
    for i in 30..40 {
        revs.push(s.create(&format!("/r/{i:02}"), b(&i.to_string())).await.unwrap());
    }
    let seen: Vec<i64> = next_events(&mut watcher, 30)
        .await
        .iter()
        .map(|e| e.revision())
        .collect();
    assert_eq!(seen, revs[10..].to_vec());

    // Resuming from the newest revision yields only what comes next.
    let latest = s.current_revision().await.unwrap();
    let mut watcher = s.watch("/r/", latest).await.unwrap();
    let next = s.create("/r/next", b("n")).await.unwrap();
    assert_eq!(next_event(&mut watcher).await.unwrap().revision(), next);
}

async fn compaction(f: &mut Fixture) {
    let s = &f.store;
    let r1 = s.create("/c/a", b("1")).await.unwrap();
    let mut r = r1;
    for i in 2..=10 {
        r = s.update("/c/a", b(&i.to_string()), r).await.unwrap();
    }
    let gone = s.create("/c/gone", b("x")).await.unwrap();
    s.delete("/c/gone", Some(gone)).await.unwrap();
    let keep = s.create("/c/b", b("b")).await.unwrap();
    let target = s.current_revision().await.unwrap();
    s.update("/c/b", b("b2"), keep).await.unwrap();
    s.compact(target).await.unwrap();

    // Everything live is still there.
    let kvs = s.range(RangeRequest::prefix("/c/")).await.unwrap().kvs;
    let seen: Vec<(&str, &[u8])> = kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref())).collect();
    assert_eq!(seen, vec![("/c/a", &b"10"[..]), ("/c/b", &b"b2"[..])]);
    assert_eq!(kvs[0].create_revision, r1);
    let at_target = s.range(RangeRequest::prefix("/c/").at_revision(target)).await.unwrap();
    assert_eq!(at_target.kvs.len(), 2);
    assert_eq!(at_target.kvs[1].value.as_ref(), b"b");

    // Older revisions are gone, with a distinct error.
    assert!(s.compacted_revision().await.unwrap() >= target);
    let err = s.range(RangeRequest::prefix("/c/").at_revision(r1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    let err = match s.watch("/c/", r1).await {
        Err(err) => err,
        Ok(mut watcher) => next_event(&mut watcher).await.unwrap_err(),
    };
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    let err = s.compact(r1).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    let err = s.compact(s.current_revision().await.unwrap() + 10).await.unwrap_err();
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");

    // Watching from the compaction point still works and carries previous values.
    let mut watcher = s.watch("/c/", target).await.unwrap();
    let event = next_event(&mut watcher).await.unwrap();
    assert_eq!(event.kv.value.as_ref(), b"b2");
    assert_eq!(event.prev.unwrap().value.as_ref(), b"b");
}

async fn revisions_strictly_increase(f: &mut Fixture) {
    let s = &f.store;
    let mut last = s.current_revision().await.unwrap();
    for i in 0..50 {
        let rev = s.create(&format!("/mono/{i}"), b("v")).await.unwrap();
        assert!(rev > last, "{rev} after {last}");
        last = rev;
    }
    let writers = (0..16).map(|w| {
        let s = Arc::clone(s);
        tokio::spawn(async move {
            let mut revs = Vec::new();
            let mut prev = 0;
            for i in 0..25 {
                let rev = s.create(&format!("/mono/c{w}-{i}"), b("v")).await.unwrap();
                assert!(rev > prev);
                prev = rev;
                revs.push(rev);
            }
            revs
        })
    });
    let all: Vec<i64> = futures_join(writers).await.into_iter().flatten().collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "two writes shared a revision");
    assert!(all.iter().all(|r| *r > last));
}

async fn persistence_across_restart(f: &mut Fixture) {
    let r1 = f.store.create("/persist/a", b("a")).await.unwrap();
    let r2 = f.store.update("/persist/a", b("a2"), r1).await.unwrap();
    let rb = f.store.create("/persist/b", b("b")).await.unwrap();
    f.store.delete("/persist/b", Some(rb)).await.unwrap();
    let before = f.store.current_revision().await.unwrap();

    f.reopen().await;
    let s = &f.store;
    assert_eq!(s.current_revision().await.unwrap(), before);
    let kv = s.get("/persist/a").await.unwrap().1.unwrap();
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision),
        (&b"a2"[..], r1, r2)
    );
    assert!(s.get("/persist/b").await.unwrap().1.is_none());
    let next = s.create("/persist/c", b("c")).await.unwrap();
    assert!(next > before);
    // History survived too.
    let mut watcher = s.watch("/persist/", r1).await.unwrap();
    assert_eq!(next_event(&mut watcher).await.unwrap().revision(), r2);
}

async fn slow_watcher_is_cut_off(f: &mut Fixture) {
    let s = &f.store;
    let mut slow = s.watch("/slow/", 0).await.unwrap();
    let mut fast = s.watch("/slow/", 0).await.unwrap();
    let writes = WATCH_BUFFER * 8;
    let reader = tokio::spawn(async move { next_events(&mut fast, writes).await.len() });
    for i in 0..writes {
        s.create(&format!("/slow/{i:05}"), b("v")).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), writes, "the fast watcher saw every write");

    // The slow one gets a gap-free prefix of the events, then the distinct error.
    let mut delivered = 0;
    let mut last = 0;
    let err = loop {
        match next_event(&mut slow).await {
            Ok(event) => {
                assert!(event.revision() > last);
                last = event.revision();
                delivered += 1;
            }
            Err(err) => break err,
        }
    };
    assert!(matches!(err, StoreError::WatcherTooSlow { .. }), "{err}");
    assert!(delivered < writes, "{delivered} of {writes}");
    assert!(slow.next().await.is_none(), "nothing after the error");
}
