//! Crash test: a child process writes to a SQLite store at full speed and prints every
//! acknowledged write; it is killed with SIGKILL mid-stream; the store is reopened and must
//! hold every acknowledged write, nothing half-written, and revisions that keep increasing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rkube_store::sqlite::{SqliteOptions, SqliteStore};
use rkube_store::{Bytes, RangeRequest, Store};

const CHILD_ENV: &str = "RKUBE_STORE_CRASH_CHILD_DB";
const WRITERS: usize = 16;
/// Acknowledgements to wait for before the kill: enough that many batches are in flight.
const ACKS_BEFORE_KILL: usize = 4000;

/// A value that proves itself whole: the key, the generation, a filler whose length and
/// bytes derive from both, and a trailing checksum.
fn payload(key: &str, generation: u8) -> Vec<u8> {
    let mut value = format!("{key}#{generation}#").into_bytes();
    let filler = 512 + (key.len() * 37 + generation as usize * 101) % 2048;
    value.extend((0..filler).map(|i| b'a' + ((i + generation as usize) % 26) as u8));
    let sum: u32 = value.iter().map(|b| u32::from(*b)).sum();
    value.extend(format!("#{sum:010}").into_bytes());
    value
}

fn generation_of(key: &str, value: &[u8]) -> Option<u8> {
    (1..=2).find(|g| payload(key, *g) == value)
}

/// The writer, run only as the child process of `acknowledged_writes_survive_sigkill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs as the crash test's child process"]
async fn crash_child() {
    let path = std::env::var(CHILD_ENV).expect("the crash test sets the database path");
    let store = Arc::new(
        SqliteStore::open(path.as_ref(), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, out) = (Arc::clone(&store), Arc::clone(&out));
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/crash/{w:02}/{i:08}");
                let rev = store.create(&key, Bytes::from(payload(&key, 1))).await.unwrap();
                ack(&out, 'C', &key, rev);
                let rev = store.update(&key, Bytes::from(payload(&key, 2)), rev).await.unwrap();
                ack(&out, 'U', &key, rev);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Printed only after the store acknowledged the write.
fn ack(out: &Mutex<std::io::Stdout>, op: char, key: &str, rev: i64) {
    let mut out = out.lock().unwrap();
    writeln!(out, "{op} {key} {rev}").unwrap();
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::Builder::new().prefix("rkube-crash-").tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("C ") || l.starts_with("U "))
        .count()
        < ACKS_BEFORE_KILL
    {
        match lines_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => lines.push(line),
            Err(_) if Instant::now() > deadline => panic!("the child acknowledged too little: {lines:?}"),
            Err(_) => assert!(child.try_wait().unwrap().is_none(), "the child exited early: {lines:?}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Acknowledgements printed just before the kill are still in the pipe.
    lines.extend(lines_rx.try_iter());

    let mut created: HashMap<String, i64> = HashMap::new();
    let mut updated: HashMap<String, i64> = HashMap::new();
    let mut max_acked = 0;
    for line in &lines {
        let mut parts = line.split(' ');
        let (Some(op), Some(key), Some(rev)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(rev) = rev.parse::<i64>() else { continue };
        max_acked = max_acked.max(rev);
        match op {
            "C" => created.insert(key.to_string(), rev),
            "U" => updated.insert(key.to_string(), rev),
            _ => None,
        };
    }
    assert!(created.len() >= ACKS_BEFORE_KILL / 2);

    let store = SqliteStore::open(&db, SqliteOptions::default()).await.unwrap();
    let current = store.current_revision().await.unwrap();
    assert!(current >= max_acked, "revision went back: {current} < {max_acked}");

    // Every acknowledged write is there.
    for (key, create_rev) in &created {
        let kv = store
            .get(key)
            .await
            .unwrap()
            .1
            .unwrap_or_else(|| panic!("acknowledged {key} is gone"));
        assert_eq!(kv.create_revision, *create_rev, "{key}");
        let generation = generation_of(key, &kv.value).unwrap_or_else(|| panic!("{key} is half-written"));
        match updated.get(key) {
            Some(update_rev) => assert_eq!((generation, kv.mod_revision), (2, *update_rev), "{key}"),
            // The update may have committed without its acknowledgement being printed.
            None if generation == 2 => assert!(kv.mod_revision > *create_rev, "{key}"),
            None => assert_eq!(kv.mod_revision, *create_rev, "{key}"),
        }
    }

    // Nothing stored is half-written, acknowledged or not, and history is in order.
    let all = store.range(RangeRequest::prefix("/crash/")).await.unwrap();
    assert!(all.kvs.len() >= created.len());
    for kv in &all.kvs {
        assert!(
            generation_of(&kv.key, &kv.value).is_some(),
            "{} is half-written",
            kv.key
        );
        assert!(kv.create_revision <= kv.mod_revision && kv.mod_revision <= current);
    }
    let mut watcher = store.watch("/crash/", 1).await.unwrap();
    let mut last = 0;
    let mut events = 0;
    while last < current {
        let event = tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .expect("history replays")
            .unwrap()
            .unwrap();
        assert!(event.revision() > last);
        last = event.revision();
        events += 1;
    }
    assert_eq!(last, current);
    assert!(events >= created.len() + updated.len());

    // Revisions keep increasing after the restart.
    let next = store.create("/crash/after", Bytes::from_static(b"x")).await.unwrap();
    assert!(next > current);
}
