//! `rkube-bench controllers`: the controller manager end to end, as the issue sets it:
//! Deployments × replicas on hollow nodes (a real server with its scheduler and
//! controllers); pods created and Running per second, time until every Deployment is
//! Available, and the server's CPU and memory (the controller manager runs in it).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use rkube_testkit::{Control, HollowNodes, HollowOptions};
use serde_json::json;

use crate::report::{Report, cpu_seconds, rss_mib, start_server_with};

#[derive(clap::Args, Debug)]
pub struct ControllersArgs {
    #[arg(long, default_value_t = 1000)]
    deployments: usize,

    #[arg(long, default_value_t = 10)]
    replicas: usize,

    #[arg(long, default_value_t = 100)]
    nodes: usize,

    /// Concurrent clients creating Deployments.
    #[arg(long, default_value_t = 16)]
    clients: usize,

    /// The rkube binary (default: beside this one).
    #[arg(long)]
    rkube: Option<std::path::PathBuf>,

    /// A short run for smoke-testing the benchmark itself.
    #[arg(long)]
    quick: bool,
}

/// The server's `apiserver_request_total` summed over codes, per verb and resource.
async fn request_counts(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let key = format!(
            "{} {}",
            label("verb").unwrap_or_default(),
            label("resource").unwrap_or_default()
        );
        *counts.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(counts)
}

/// Where the server's work per pod comes from: requests per pod by verb and resource,
/// most first.
fn requests_per_pod(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, pods: usize) -> String {
    let mut per_pod: Vec<(f64, &str)> = after
        .iter()
        .map(|(k, v)| {
            (
                (v - before.get(k).copied().unwrap_or(0.0)) / pods.max(1) as f64,
                k.as_str(),
            )
        })
        .filter(|(n, _)| *n >= 0.01)
        .collect();
    per_pod.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = per_pod.iter().map(|(n, _)| n).sum();
    let parts: Vec<String> = per_pod.iter().map(|(n, k)| format!("{k} {n:.2}")).collect();
    format!("requests per pod: {total:.2} ({})", parts.join(", "))
}

fn progress(message: &str) {
    eprintln!("[controllers] {message}");
}

pub async fn run(mut args: ControllersArgs, json: bool) -> anyhow::Result<()> {
    if args.quick {
        args.deployments = args.deployments.min(10);
        args.replicas = args.replicas.min(3);
        args.nodes = args.nodes.min(5);
    }
    let total = args.deployments * args.replicas;
    let case = format!(
        "{} deployments x {} on {} nodes",
        args.deployments, args.replicas, args.nodes
    );
    let mut report = Report::new("controllers", json);
    let server = start_server_with(args.rkube.as_deref(), &[], Control::Full)
        .await
        .context("starting rkube server")?;
    let client = server.client().await?;
    progress(&format!("registering {} hollow nodes", args.nodes));
    // Enough room for every pod: 110 per node by default.
    let pods_per_node = u32::try_from(total.div_ceil(args.nodes.max(1)) + 10)
        .unwrap_or(u32::MAX)
        .max(110);
    let hollow = HollowNodes::start(
        client.clone(),
        HollowOptions {
            count: args.nodes,
            prefix: "bench".into(),
            cpu: "64".into(),
            memory: "256Gi".into(),
            pods: pods_per_node,
            ..HollowOptions::default()
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let revision = pods
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let requests_before = request_counts(&client).await?;
    let cpu_before = cpu_seconds(server.pid()).unwrap_or(0.0);
    // The load generator (hollow nodes, watcher, clients) shares the two cores with the
    // server: what it takes is shown beside what the server takes.
    let own_cpu_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let replicas = args.replicas;
    let creating = futures_util::stream::iter(0..args.deployments)
        .map(|i| {
            let deployments = deployments.clone();
            async move {
                let name = format!("bench-{i}");
                let d: Deployment = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}},
                                          "spec": {"containers": [{"name": "pause", "image": "registry.local/pause:3.10",
                                              "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
                }))?;
                deployments.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.clients)
        .collect::<Vec<_>>();
    // Running pods only, by their metadata: the server filters (a pod enters the selection
    // when it starts running), so the load generator, which shares the machine with the
    // server it measures, decodes one small event per pod.
    let running_only = WatchParams::default().fields("status.phase=Running").timeout(290);
    let watching = async {
        let mut stream = pods.watch_metadata(&running_only, &revision).await?.boxed();
        let mut running = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(1800);
        while running.len() < total && Instant::now() < deadline {
            match stream.next().await {
                Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                    if running.insert(p.metadata.name.unwrap_or_default()) && running.len() % 1000 == 0 {
                        progress(&format!("{} of {total} pods running", running.len()));
                    }
                }
                Some(_) => {}
                None => stream = pods.watch_metadata(&running_only, "0").await?.boxed(),
            }
        }
        anyhow::ensure!(running.len() >= total, "only {} of {total} pods ran", running.len());
        anyhow::Ok(started.elapsed())
    };
    progress(&format!("creating {} deployments", args.deployments));
    let (created, all_running) = tokio::join!(creating, watching);
    created.into_iter().collect::<Result<Vec<_>, _>>()?;
    let all_running = all_running?;
    // Every Deployment Available.
    loop {
        let list = deployments.list(&ListParams::default()).await?;
        let available = list
            .items
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Available" && c.status == "True"))
                    && d.status.as_ref().and_then(|s| s.available_replicas)
                        == Some(i32::try_from(replicas).unwrap_or(0))
            })
            .count();
        if available >= args.deployments {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "deployments not available in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_available = started.elapsed();
    let cpu = cpu_seconds(server.pid()).unwrap_or(0.0) - cpu_before;
    let own_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - own_cpu_before;
    let requests = request_counts(&client).await?;
    progress(&requests_per_pod(&requests_before, &requests, total));
    report.add(
        "end to end",
        &case,
        "pods_running_per_sec",
        "1/s",
        total as f64 / all_running.as_secs_f64(),
    );
    report.add("end to end", &case, "all_available", "s", all_available.as_secs_f64());
    report.add("end to end", &case, "server_cpu", "s", cpu);
    report.add(
        "end to end",
        &case,
        "server_cpu_per_pod",
        "ms",
        cpu * 1000.0 / total as f64,
    );
    report.add(
        "end to end",
        &case,
        "load_generator_cpu_per_pod",
        "ms",
        own_cpu * 1000.0 / total as f64,
    );
    if let Some(rss) = rss_mib(server.pid()) {
        report.add("end to end", &case, "server_rss", "MiB", rss);
    }
    hollow.stop().await;
    report.print_table();
    Ok(())
}
