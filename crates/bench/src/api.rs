//! `rkube-bench api`: a real `rkube server` (SQLite) driven over HTTPS by kube-rs clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rkube_testkit::RkubeServer;

use crate::report::{Report, percentile, rss_mib};

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// The rkube binary to run (default: beside this one).
    #[arg(long)]
    rkube: Option<PathBuf>,

    /// Concurrent clients in the create case.
    #[arg(long, default_value_t = 64)]
    clients: usize,

    /// Seconds each timed case runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    /// Pods stored for the list case and the loaded memory figure.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,

    /// Concurrent watchers in the fan-out case.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,

    /// A short run for smoke-testing the benchmark itself.
    #[arg(long)]
    quick: bool,
}

fn pod(name: &str, sent_nanos: u128) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "api"}, "annotations": {"bench/sent": sent_nanos.to_string()}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.0", "ports": [{"containerPort": 8080}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))
    .unwrap_or_default()
}

fn progress(message: &str) {
    eprintln!("[api] {message}");
}

async fn client(server: &RkubeServer) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(&server.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

pub async fn run(mut args: ApiArgs, json: bool) -> anyhow::Result<()> {
    if args.quick {
        args.seconds = args.seconds.min(1.0);
        args.pods = args.pods.min(500);
        args.watchers = args.watchers.min(20);
        args.clients = args.clients.min(8);
    }
    drop(rustls::crypto::ring::default_provider().install_default());
    let binary = match &args.rkube {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("rkube"),
    };
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it (cargo build --release -p rkube) or pass --rkube",
        binary.display()
    );
    let server = tokio::task::spawn_blocking(move || RkubeServer::start(&binary, &["--datastore-retention", "60"]))
        .await?
        .context("starting rkube server")?;
    let client = client(&server).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut report = Report::new("api", json);
    let peer = "sqlite";
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(rss) = rss_mib(server.pid()) {
        report.add(peer, "server", "rss_idle", "MiB", rss);
    }

    // Creates with many clients, as fast as they go.
    progress(&format!("creates with {} clients for {}s", args.clients, args.seconds));
    let duration = Duration::from_secs_f64(args.seconds);
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let (pods, counter) = (pods.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < duration {
                    let name = format!("c-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let t = Instant::now();
                    pods.create(&PostParams::default(), &pod(&name, 0)).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let case = format!("create, {} clients", args.clients);
    report.add(peer, &case, "creates_per_sec", "1/s", latencies.len() as f64 / elapsed);
    report.add(peer, &case, "p50", "ms", percentile(&latencies, 50.0));
    report.add(peer, &case, "p99", "ms", percentile(&latencies, 99.0));

    // Writes paced at 1,000/s: the latency a steady load sees.
    progress("paced writes at 1000/s");
    let rate = 1000.0;
    let total = (rate * args.seconds) as usize;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let pods = pods.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            pods.create(&PostParams::default(), &pod(&format!("paced-{i}"), 0))
                .await?;
            anyhow::Ok(t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut paced = Vec::with_capacity(total);
    for handle in handles {
        paced.push(handle.await??);
    }
    paced.sort_by(f64::total_cmp);
    report.add(peer, "create, 1000/s paced", "p50", "ms", percentile(&paced, 50.0));
    report.add(peer, "create, 1000/s paced", "p99", "ms", percentile(&paced, 99.0));

    // Gets, one after another.
    let mut gets = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        pods.get(&format!("paced-{}", i % total.max(1))).await?;
        gets.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    gets.sort_by(f64::total_cmp);
    report.add(peer, "get", "p50", "ms", percentile(&gets, 50.0));
    report.add(peer, "get", "p99", "ms", percentile(&gets, 99.0));

    // Fill to the stored count, then list.
    let stored = pods.list_metadata(&ListParams::default()).await?.items.len();
    let missing = args.pods.saturating_sub(stored);
    progress(&format!("storing {missing} more pods ({} in all)", args.pods));
    let next = Arc::new(AtomicUsize::new(0));
    let fillers: Vec<_> = (0..args.clients)
        .map(|_| {
            let (pods, next) = (pods.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= missing {
                        return anyhow::Ok(());
                    }
                    pods.create(&PostParams::default(), &pod(&format!("fill-{i}"), 0))
                        .await?;
                    if i % 5000 == 0 && i > 0 {
                        progress(&format!("stored {i} of {missing}"));
                    }
                }
            })
        })
        .collect();
    for filler in fillers {
        filler.await??;
    }
    let mut lists = Vec::new();
    let mut pages = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        count = pods.list(&ListParams::default()).await?.items.len();
        lists.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        pods.list(&ListParams::default().limit(500)).await?;
        pages.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lists.sort_by(f64::total_cmp);
    pages.sort_by(f64::total_cmp);
    let case = format!("list {count} pods");
    report.add(peer, &case, "p50", "ms", percentile(&lists, 50.0));
    report.add(peer, &case, "page_of_500_p50", "ms", percentile(&pages, 50.0));
    if let Some(rss) = rss_mib(server.pid()) {
        report.add(peer, &format!("server, {count} pods"), "rss", "MiB", rss);
        report.add(
            peer,
            &format!("server, {count} pods"),
            "kib_per_pod",
            "KiB",
            rss * 1024.0 / count.max(1) as f64,
        );
    }

    // Watch fan-out: every watcher sees every new pod.
    progress(&format!("watch fan-out: {} watchers", args.watchers));
    let revision = pods
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let epoch = Instant::now();
    let events = if args.quick { 100 } else { 1000 };
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let stream = pods
            .watch(&WatchParams::default().labels("bench=watch"), &revision)
            .await?;
        watchers.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut lags = Vec::with_capacity(events);
            while lags.len() < events {
                match tokio::time::timeout(Duration::from_secs(60), stream.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Added(p)))) => {
                        let sent: u128 = p
                            .metadata
                            .annotations
                            .and_then(|a| a.get("bench/sent").and_then(|s| s.parse().ok()))
                            .unwrap_or(0);
                        lags.push((epoch.elapsed().as_nanos().saturating_sub(sent)) as f64 / 1e6);
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
            lags
        }));
    }
    // Writes are spawned on schedule so a slow one never holds back the next: the offered
    // rate stays 1,000/s whatever the watchers cost.
    let started = Instant::now();
    let mut writes = Vec::with_capacity(events);
    for i in 0..events {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / 1000.0)).into()).await;
        let pods = pods.clone();
        writes.push(tokio::spawn(async move {
            let mut p = pod(&format!("w-{i}"), epoch.elapsed().as_nanos());
            p.metadata.labels = Some([("bench".to_string(), "watch".to_string())].into());
            pods.create(&PostParams::default(), &p).await
        }));
    }
    for write in writes {
        write.await??;
    }
    let written_in = started.elapsed().as_secs_f64();
    let mut lags = Vec::new();
    let mut missed = 0;
    for watcher in watchers {
        let got = watcher.await?;
        missed += events - got.len();
        lags.extend(got);
    }
    let delivered = lags.len();
    let elapsed = started.elapsed().as_secs_f64();
    lags.sort_by(f64::total_cmp);
    let case = format!("{} watchers", args.watchers);
    report.add(peer, &case, "writes_per_sec", "1/s", events as f64 / written_in);
    report.add(peer, &case, "deliveries_per_sec", "1/s", delivered as f64 / elapsed);
    report.add(peer, &case, "lag_p50", "ms", percentile(&lags, 50.0));
    report.add(peer, &case, "lag_p99", "ms", percentile(&lags, 99.0));
    report.add(peer, &case, "events_missed", "count", missed as f64);
    report.print_table();
    Ok(())
}
