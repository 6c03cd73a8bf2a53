//! `rkube-bench api`: a real `rkube server` (SQLite) driven over HTTPS by kube-rs clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};

use crate::report::{Report, percentile, rss_mib, start_server};

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

    /// Pods stored for the list case.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,

    /// Pods stored for the loaded memory figure.
    #[arg(long, default_value_t = 100_000)]
    pods_memory: usize,

    /// Concurrent watchers in the fan-out case.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,

    /// Pods created per second while the watchers watch (each reaches every watcher).
    #[arg(long, default_value_t = 50.0)]
    watch_rate: f64,

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

pub async fn run(mut args: ApiArgs, json: bool) -> anyhow::Result<()> {
    if args.quick {
        args.seconds = args.seconds.min(1.0);
        args.pods = args.pods.min(500);
        args.pods_memory = args.pods_memory.min(1000);
        args.watchers = args.watchers.min(20);
        args.clients = args.clients.min(8);
    }
    drop(rustls::crypto::ring::default_provider().install_default());
    let server = start_server(args.rkube.as_deref(), &["--datastore-retention", "60"], false)
        .await
        .context("starting rkube server")?;
    let client = server.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut report = Report::new("api", json);
    let peer = "sqlite";
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mib(server.pid());
    if let Some(rss) = idle_rss {
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

    // Fill to the stored count, then list: the whole list as raw bytes (what the server
    // and the wire cost, without the client's decoding), and a first page of 500.
    // In a namespace of their own, so the list holds exactly the pods asked for.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "bench-list"}}))?;
    namespaces.create(&PostParams::default(), &namespace).await?;
    let listed: Api<Pod> = Api::namespaced(client.clone(), "bench-list");
    fill(&listed, args.pods, args.clients).await?;
    let mut lists = Vec::new();
    let mut pages = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        bytes = raw_get(&client, "/api/v1/namespaces/bench-list/pods").await?.len();
        lists.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        raw_get(&client, "/api/v1/namespaces/bench-list/pods?limit=500").await?;
        pages.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lists.sort_by(f64::total_cmp);
    pages.sort_by(f64::total_cmp);
    let count = listed.list_metadata(&ListParams::default()).await?.items.len();
    let case = format!("list {count} pods");
    report.add(peer, &case, "p50", "ms", percentile(&lists, 50.0));
    report.add(peer, &case, "p99", "ms", percentile(&lists, 99.0));
    report.add(peer, &case, "body", "MiB", bytes as f64 / 1048576.0);
    report.add(peer, &case, "page_of_500_p50", "ms", percentile(&pages, 50.0));

    // Memory with many pods in the cache: what each one adds over the idle server.
    fill(&listed, args.pods_memory, args.clients).await?;
    let count = Api::<Pod>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    if let (Some(rss), Some(idle)) = (rss_mib(server.pid()), idle_rss) {
        let case = format!("server, {count} pods");
        report.add(peer, &case, "rss", "MiB", rss);
        report.add(
            peer,
            &case,
            "per_pod",
            "KiB",
            (rss - idle) * 1024.0 / count.max(1) as f64,
        );
    }

    // Watch fan-out: every watcher sees every new pod. The watchers read raw lines and
    // pick out the send time, so the figure is the server's, not JSON decoding's.
    progress(&format!(
        "watch fan-out: {} watchers, {}/s pods",
        args.watchers, args.watch_rate
    ));
    let revision = pods
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let epoch = Instant::now();
    let events = ((args.watch_rate * args.seconds * 2.0) as usize).max(10);
    let path =
        format!("/api/v1/namespaces/default/pods?watch=true&labelSelector=bench%3Dwatch&resourceVersion={revision}");
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let response = client
            .send(http::Request::get(path.as_str()).body(kube::client::Body::empty())?)
            .await?;
        anyhow::ensure!(response.status().is_success(), "watch: {}", response.status());
        watchers.push(tokio::spawn(watch_lags(response.into_body(), events, epoch)));
    }
    // Writes are spawned on schedule so a slow one never holds back the next.
    let started = Instant::now();
    let mut writes = Vec::with_capacity(events);
    for i in 0..events {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / args.watch_rate)).into()).await;
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
    if let Some(rss) = rss_mib(server.pid()) {
        report.add(peer, &case, "server_rss", "MiB", rss);
    }
    report.print_table();
    Ok(())
}

/// Creates pods until `target` are stored, with `clients` concurrent clients.
async fn fill(pods: &Api<Pod>, target: usize, clients: usize) -> anyhow::Result<()> {
    let stored = pods.list_metadata(&ListParams::default()).await?.items.len();
    let missing = target.saturating_sub(stored);
    if missing == 0 {
        return Ok(());
    }
    progress(&format!("storing {missing} more pods ({target} in all)"));
    let next = Arc::new(AtomicUsize::new(0));
    let offset = stored;
    let fillers: Vec<_> = (0..clients)
        .map(|_| {
            let (pods, next) = (pods.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= missing {
                        return anyhow::Ok(());
                    }
                    pods.create(&PostParams::default(), &pod(&format!("fill-{}", offset + i), 0))
                        .await?;
                    if i % 10_000 == 0 && i > 0 {
                        progress(&format!("stored {i} of {missing}"));
                    }
                }
            })
        })
        .collect();
    for filler in fillers {
        filler.await??;
    }
    Ok(())
}

async fn raw_get(client: &kube::Client, path: &str) -> anyhow::Result<bytes::Bytes> {
    let response = client
        .send(http::Request::get(path).body(kube::client::Body::empty())?)
        .await?;
    anyhow::ensure!(response.status().is_success(), "GET {path}: {}", response.status());
    Ok(response.into_body().collect().await?.to_bytes())
}

/// Reads a watch stream until `events` ADDED events arrived (or it stalls for a minute);
/// each one's lag is now minus the send time the writer put in its annotation.
async fn watch_lags(mut body: kube::client::Body, events: usize, epoch: Instant) -> Vec<f64> {
    const SENT: &[u8] = b"\"bench/sent\":\"";
    let mut lags = Vec::with_capacity(events);
    let mut pending: Vec<u8> = Vec::new();
    while lags.len() < events {
        let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(60), body.frame()).await else {
            break;
        };
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !line.starts_with(b"{\"type\":\"ADDED\"") {
                continue;
            }
            let sent = line
                .windows(SENT.len())
                .position(|w| w == SENT)
                .map(|at| &line[at + SENT.len()..])
                .and_then(|rest| std::str::from_utf8(&rest[..rest.iter().position(|b| *b == b'"')?]).ok())
                .and_then(|digits| digits.parse::<u128>().ok())
                .unwrap_or(0);
            lags.push(epoch.elapsed().as_nanos().saturating_sub(sent) as f64 / 1e6);
        }
    }
    lags
}
