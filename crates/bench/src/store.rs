//! `rkube-bench store`: the same workload on SQLite and etcd in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rkube_store::etcd::EtcdStore;
use rkube_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use rkube_store::{Bytes, CompactionPolicy, RangeRequest, Store, spawn_compactor};
use rkube_testkit::EtcdCluster;

use crate::report::{Report, percentile, rss_mib};

#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Backends to measure, in column order.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,etcd")]
    backends: Vec<String>,

    /// Measure this etcd instead of starting one (Debian's etcd-server) for the run.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    etcd_endpoints: Vec<String>,

    /// Seconds each create case runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,

    /// Concurrent watchers in the fan-out case.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,

    /// Writes per second in the fan-out case.
    #[arg(long, default_value_t = 1000)]
    watch_rate: u64,

    /// Key counts for the get and range cases.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    key_counts: Vec<usize>,

    /// Updates in the churn case.
    #[arg(long, default_value_t = 100_000)]
    churn_updates: usize,

    /// Folder for the SQLite files (default: a temporary folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// A short run for smoke-testing the benchmark itself.
    #[arg(long)]
    quick: bool,
}

const VALUE_BYTES: usize = 1024;

fn progress(peer: &str, message: &str) {
    eprintln!("[{peer}] {message}");
}

/// A backend under test, plus what it takes to measure its memory and disk.
struct Subject {
    store: Arc<dyn Store>,
    pid: Option<u32>,
    disk: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    _etcd: Option<EtcdCluster>,
    _dir: Option<tempfile::TempDir>,
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn open_subject(backend: &str, args: &StoreArgs, name: &str, durability: Durability) -> anyhow::Result<Subject> {
    match backend {
        "sqlite" => {
            let (dir, base) = match &args.data_dir {
                Some(d) => (None, d.clone()),
                None => {
                    let t = tempfile::Builder::new().prefix("rkube-bench-").tempdir()?;
                    let p = t.path().to_path_buf();
                    (Some(t), p)
                }
            };
            let path = base.join(format!("{name}.db"));
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                drop(std::fs::remove_file(p));
            }
            let options = SqliteOptions {
                durability,
                ..SqliteOptions::default()
            };
            let store = Arc::new(SqliteStore::open(&path, options).await?);
            let measured = Arc::clone(&store);
            Ok(Subject {
                store,
                pid: Some(std::process::id()),
                disk: Box::new(move || Some(measured.disk_usage())),
                _etcd: None,
                _dir: dir,
            })
        }
        "etcd" => {
            let (endpoints, cluster) = if args.etcd_endpoints.is_empty() {
                let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
                    .await?
                    .context("starting etcd (install Debian's etcd-server, or pass --etcd-endpoints)")?;
                (cluster.endpoints(), Some(cluster))
            } else {
                (args.etcd_endpoints.clone(), None)
            };
            let store = Arc::new(EtcdStore::connect(&endpoints, Duration::from_secs(10)).await?);
            let pid = cluster.as_ref().and_then(|c| c.pids().first().copied());
            let data = cluster.as_ref().map(|c| c.data_dir().to_path_buf());
            Ok(Subject {
                store,
                pid,
                disk: Box::new(move || data.as_deref().map(dir_size)),
                _etcd: cluster,
                _dir: None,
            })
        }
        other => anyhow::bail!("--backends: unknown backend {other:?} (expected sqlite or etcd)"),
    }
}

pub async fn run(mut args: StoreArgs, json: bool) -> anyhow::Result<()> {
    if args.quick {
        args.seconds = args.seconds.min(0.5);
        args.watchers = args.watchers.min(100);
        args.key_counts = vec![1000];
        args.churn_updates = args.churn_updates.min(5000);
    }
    let mut report = Report::new("store", json);
    for backend in args.backends.clone() {
        let subject = open_subject(&backend, &args, "main", Durability::Fsync).await?;
        let store = &subject.store;

        for clients in [1usize, 16, 64] {
            progress(
                &backend,
                &format!("creates with {clients} clients for {}s", args.seconds),
            );
            let (rate, latencies) = creates(store, clients, Duration::from_secs_f64(args.seconds)).await?;
            let case = if clients == 1 {
                "1 client".to_string()
            } else {
                format!("{clients} clients")
            };
            report.add(&backend, &case, "creates_per_sec", "1/s", rate);
            report.add(&backend, &case, "create_p50", "ms", percentile(&latencies, 50.0));
            report.add(&backend, &case, "create_p99", "ms", percentile(&latencies, 99.0));
        }

        for &keys in &args.key_counts {
            let prefix = format!("/bench/keys-{keys}/");
            load(store, &backend, &prefix, keys).await?;
            let case = format!("{keys} keys");
            let gets = get_latencies(store, &prefix, keys, 2000).await?;
            report.add(&backend, &case, "get_p50", "ms", percentile(&gets, 50.0));
            report.add(&backend, &case, "get_p99", "ms", percentile(&gets, 99.0));
            let rounds = if keys > 20_000 { 5 } else { 20 };
            progress(&backend, &format!("ranging all {keys} keys x{rounds}"));
            let all = range_latencies(store, &prefix, None, rounds, keys).await?;
            report.add(&backend, &case, "range_all_p50", "ms", percentile(&all, 50.0));
            report.add(&backend, &case, "range_all_p99", "ms", percentile(&all, 99.0));
            let pages = range_latencies(store, &prefix, Some(500), 100, keys.min(500)).await?;
            report.add(&backend, &case, "range_page500_p50", "ms", percentile(&pages, 50.0));
            report.add(&backend, &case, "range_page500_p99", "ms", percentile(&pages, 99.0));
            if let Some(rss) = subject.pid.and_then(rss_mib) {
                report.add(&backend, &case, "rss_after_load", "MiB", rss);
            }
        }

        progress(
            &backend,
            &format!(
                "watch fan-out: {} watchers, {} writes/s",
                args.watchers, args.watch_rate
            ),
        );
        let fan = fan_out(store, args.watchers, args.watch_rate, if args.quick { 1 } else { 5 }).await?;
        let case = format!("{} watchers", args.watchers);
        report.add(&backend, &case, "events_written", "count", fan.written as f64);
        report.add(&backend, &case, "deliveries_per_sec", "1/s", fan.deliveries_per_sec);
        report.add(&backend, &case, "lag_p50", "ms", fan.lag_p50);
        report.add(&backend, &case, "lag_p99", "ms", fan.lag_p99);
        report.add(&backend, &case, "watchers_cut_off", "count", fan.cut_off as f64);
        report.add(&backend, &case, "events_missed", "count", fan.missed as f64);
        drop(subject);

        // Churn on a store of its own, so its size is the churn's alone.
        let churn = open_subject(&backend, &args, "churn", Durability::Process).await?;
        progress(
            &backend,
            &format!("churn: {} updates to 10 keys with compaction", args.churn_updates),
        );
        let before = (churn.disk)();
        churn_updates(&churn.store, args.churn_updates).await?;
        let case = format!("churn {} updates", args.churn_updates);
        if let (Some(before), Some(after)) = (before, (churn.disk)()) {
            report.add(&backend, &case, "disk_before", "MiB", before as f64 / 1048576.0);
            report.add(&backend, &case, "disk_after", "MiB", after as f64 / 1048576.0);
        }
    }
    report.print_table();
    Ok(())
}

fn value() -> Bytes {
    Bytes::from(vec![b'v'; VALUE_BYTES])
}

async fn creates(store: &Arc<dyn Store>, clients: usize, duration: Duration) -> anyhow::Result<(f64, Vec<f64>)> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let value = value();
                let mut i = 0u64;
                while start.elapsed() < duration {
                    let t = Instant::now();
                    store
                        .create(&format!("/bench/create/{run}/{c}/{i}"), value.clone())
                        .await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    i += 1;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((all.len() as f64 / elapsed, all))
}

async fn load(store: &Arc<dyn Store>, peer: &str, prefix: &str, keys: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, next, prefix) = (Arc::clone(store), Arc::clone(&next), prefix.to_string());
            tokio::spawn(async move {
                let value = value();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return anyhow::Ok(());
                    }
                    store.create(&format!("{prefix}{i:08}"), value.clone()).await?;
                }
            })
        })
        .collect();
    let reporter = {
        let (next, peer) = (Arc::clone(&next), peer.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let done = next.load(Ordering::Relaxed).min(keys);
                progress(&peer, &format!("loading {keys} keys: {}%", done * 100 / keys.max(1)));
            }
        })
    };
    for task in tasks {
        task.await??;
    }
    reporter.abort();
    progress(
        peer,
        &format!("loaded {keys} keys in {:.1}s", started.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// A cheap deterministic spread of key indexes (no RNG dependency needed for this).
fn spread(i: usize, keys: usize) -> usize {
    (i.wrapping_mul(2_654_435_761) ^ (i >> 3)) % keys.max(1)
}

async fn get_latencies(store: &Arc<dyn Store>, prefix: &str, keys: usize, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let key = format!("{prefix}{:08}", spread(i, keys));
        let t = Instant::now();
        let (_, kv) = store.get(&key).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(kv.is_some(), "{key} missing");
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

async fn range_latencies(
    store: &Arc<dyn Store>,
    prefix: &str,
    limit: Option<usize>,
    rounds: usize,
    expect: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut request = RangeRequest::prefix(prefix);
        request.limit = limit;
        let t = Instant::now();
        let resp = store.range(request).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            resp.kvs.len() == expect,
            "range returned {} of {expect}",
            resp.kvs.len()
        );
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

struct FanOut {
    written: usize,
    deliveries_per_sec: f64,
    lag_p50: f64,
    lag_p99: f64,
    cut_off: usize,
    missed: usize,
}

/// Watchers on one prefix while a paced writer creates keys whose values carry the write's
/// start time; lag is from that start to delivery, so it includes the write itself.
async fn fan_out(store: &Arc<dyn Store>, watchers: usize, rate: u64, seconds: u64) -> anyhow::Result<FanOut> {
    let epoch = Instant::now();
    let prefix = "/bench/watch/";
    let total = (rate * seconds) as usize;
    let mut handles = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let mut watcher = store.watch(prefix, 0).await?;
        handles.push(tokio::spawn(async move {
            let mut lags = Vec::with_capacity(total);
            let mut cut_off = false;
            let mut last_delivery = epoch;
            while lags.len() < total {
                match tokio::time::timeout(Duration::from_secs(30), watcher.next()).await {
                    Ok(Some(Ok(event))) => {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&event.kv.value[..8]);
                        let now = Instant::now();
                        let lag = now.duration_since(epoch).as_nanos() as f64 - u64::from_le_bytes(sent) as f64;
                        lags.push((lag / 1e6) as f32);
                        last_delivery = now;
                    }
                    Ok(Some(Err(_))) => {
                        cut_off = true;
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            (lags, cut_off, last_delivery)
        }));
    }
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut writes = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let store = Arc::clone(store);
        writes.push(tokio::spawn(async move {
            let mut value = (epoch.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
            value.resize(256, b'w');
            store.create(&format!("{prefix}{i:08}"), Bytes::from(value)).await
        }));
    }
    for write in writes {
        write.await??;
    }
    let mut lags = Vec::new();
    let (mut cut_off, mut missed) = (0, 0);
    let mut last = started;
    for handle in handles {
        let (l, c, at) = handle.await?;
        missed += total - l.len();
        cut_off += usize::from(c);
        last = last.max(at);
        lags.extend(l.into_iter().map(f64::from));
    }
    let delivered = lags.len();
    lags.sort_by(f64::total_cmp);
    Ok(FanOut {
        written: total,
        deliveries_per_sec: delivered as f64 / last.duration_since(started).as_secs_f64(),
        lag_p50: percentile(&lags, 50.0),
        lag_p99: percentile(&lags, 99.0),
        cut_off,
        missed,
    })
}

async fn churn_updates(store: &Arc<dyn Store>, updates: usize) -> anyhow::Result<()> {
    let compactor = spawn_compactor(
        Arc::downgrade(store),
        CompactionPolicy {
            retention: Duration::ZERO,
            min_revisions: 1000,
            interval: Duration::from_millis(100),
        },
    );
    let tasks: Vec<_> = (0..10)
        .map(|k| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let key = format!("/bench/churn/lease-{k}");
                let value = Bytes::from(vec![b'l'; 256]);
                let mut rev = store.create(&key, value.clone()).await?;
                for _ in 1..updates / 10 {
                    rev = store.update(&key, value.clone(), rev).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    // Let the compactor run once more after the last write, as it would in a server, then
    // stop it before the store (and an etcd the bench started) goes away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    compactor.abort();
    drop(compactor.await);
    Ok(())
}
