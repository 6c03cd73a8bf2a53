//! `rkube-bench scheduler`: upstream scheduler_perf's SchedulingBasic workload (5,000
//! nodes; 1,000 pods placed first, then 10,000 measured). In process: the framework and
//! cache alone, no API. End to end: a real server with its scheduler and hollow nodes,
//! pods created through the API until their bindings are seen through a watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use rkube_scheduler::cache::Cache;
use rkube_testkit::{HollowNodes, HollowOptions};
use serde_json::json;

use crate::report::{Report, rss_mib, start_server};

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,

    /// Pods placed before measuring.
    #[arg(long, default_value_t = 1000)]
    initial_pods: usize,

    /// Pods measured.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,

    /// Concurrent clients creating pods in the end-to-end case.
    #[arg(long, default_value_t = 32)]
    clients: usize,

    /// The rkube binary (default: beside this one).
    #[arg(long)]
    rkube: Option<std::path::PathBuf>,

    /// A short run for smoke-testing the benchmark itself.
    #[arg(long)]
    quick: bool,
}

fn progress(message: &str) {
    eprintln!("[scheduler] {message}");
}

/// SchedulingBasic's pod: one container asking for 100m cpu and 500Mi.
fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": name},
        "spec": {"containers": [{"name": "pause", "image": "registry.local/pause:3.10",
                 "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]}
    }))
    .unwrap_or_default()
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
        "status": {"allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"}}
    }))
    .unwrap_or_default()
}

pub async fn run(mut args: SchedulerArgs, json: bool) -> anyhow::Result<()> {
    if args.quick {
        args.nodes = args.nodes.min(100);
        args.initial_pods = args.initial_pods.min(100);
        args.pods = args.pods.min(300);
    }
    let mut report = Report::new("scheduler", json);
    let case = format!("SchedulingBasic {} nodes", args.nodes);

    // In process: decide and assume, as the scheduler loop does, without the API.
    progress(&format!("in process: {} then {} pods", args.initial_pods, args.pods));
    let mut cache = Cache::default();
    for i in 0..args.nodes {
        cache.set_node(Arc::new(node(i)));
    }
    let mut place = |name: String| -> anyhow::Result<()> {
        let pod = Arc::new(pod(&name));
        let chosen = cache.schedule(&pod).map_err(|e| anyhow::anyhow!("{e}"))?;
        cache.assume(pod, &chosen);
        Ok(())
    };
    for i in 0..args.initial_pods {
        place(format!("init-{i}"))?;
    }
    let started = Instant::now();
    for i in 0..args.pods {
        place(format!("pod-{i}"))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.add("in process", &case, "pods_per_sec", "1/s", args.pods as f64 / elapsed);
    drop(cache);

    // End to end: a server with its scheduler, hollow nodes, pods through the API.
    let server = start_server(args.rkube.as_deref(), &[], true)
        .await
        .context("starting rkube server")?;
    let client = server.client().await?;
    progress(&format!("end to end: registering {} hollow nodes", args.nodes));
    let options = HollowOptions {
        count: args.nodes,
        cpu: "4".into(),
        memory: "32Gi".into(),
        ..HollowOptions::default()
    };
    let hollow = HollowNodes::start(client.clone(), options).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create_all = async |prefix: &str, count: usize| -> anyhow::Result<()> {
        futures_util::stream::iter(0..count)
            .map(|i| {
                let pods = pods.clone();
                let mut p = pod(&format!("{prefix}-{i}"));
                p.metadata.uid = None;
                async move { pods.create(&PostParams::default(), &p).await }
            })
            .buffer_unordered(args.clients)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        Ok(())
    };
    let wait_bound = async |prefix: &str, count: usize, revision: String| -> anyhow::Result<()> {
        let mut stream = pods
            .watch(&WatchParams::default().timeout(290), &revision)
            .await?
            .boxed();
        let mut bound = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        while bound.len() < count && Instant::now() < deadline {
            match stream.next().await {
                Some(Ok(WatchEvent::Modified(p) | WatchEvent::Added(p))) => {
                    let name = p.metadata.name.unwrap_or_default();
                    if name.starts_with(prefix) && p.spec.and_then(|s| s.node_name).is_some() {
                        bound.insert(name);
                        if bound.len() % 2000 == 0 {
                            progress(&format!("{} of {count} bound", bound.len()));
                        }
                    }
                }
                Some(_) => {}
                None => stream = pods.watch(&WatchParams::default().timeout(290), "0").await?.boxed(),
            }
        }
        anyhow::ensure!(bound.len() >= count, "only {} of {count} pods were bound", bound.len());
        Ok(())
    };
    let revision = async || -> anyhow::Result<String> {
        let list = pods.list_metadata(&ListParams::default().limit(1)).await?;
        Ok(list.metadata.resource_version.unwrap_or_default())
    };
    let before = revision().await?;
    progress(&format!("placing {} initial pods", args.initial_pods));
    create_all("init", args.initial_pods).await?;
    wait_bound("init-", args.initial_pods, before).await?;
    let before = revision().await?;
    progress(&format!("measuring {} pods", args.pods));
    let started = Instant::now();
    let (created, bound) = tokio::join!(create_all("pod", args.pods), wait_bound("pod-", args.pods, before));
    created?;
    bound?;
    let elapsed = started.elapsed().as_secs_f64();
    report.add("end to end", &case, "pods_per_sec", "1/s", args.pods as f64 / elapsed);
    if let Some(rss) = rss_mib(server.pid()) {
        report.add("end to end", &case, "server_rss", "MiB", rss);
    }
    // The nodes stop before the server, so nothing is left talking to a server that is gone.
    drop(hollow);
    report.print_table();
    Ok(())
}
