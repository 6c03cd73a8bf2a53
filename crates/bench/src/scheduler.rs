//! `rkube-bench scheduler`: upstream scheduler_perf's workloads. SchedulingBasic (5,000
//! nodes; 1,000 pods placed first, then 10,000 measured), SchedulingPodAntiAffinity (500
//! nodes; 100 then 400 pods, each keeping away from the others on its host) and
//! TopologySpreading (5,000 nodes in 3 zones; 1,000 then 5,000 pods spread over the zones,
//! at most 1 apart). In process: the framework and cache alone, no API. End to end: a real
//! server with its scheduler and hollow nodes, pods created through the API until their
//! bindings are seen through a watch; the nodes renew their Leases but run nothing, as
//! scheduler_perf's nodes (`--with-kubelets` adds a run whose nodes run the pods too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use rkube_scheduler::cache::{Cache, Outcome};
use rkube_testkit::{HollowNodes, HollowOptions};
use serde_json::{Value, json};

use crate::report::{Report, cpu_seconds, rss_mib, start_server};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Basic,
    AntiAffinity,
    TopologySpread,
    All,
}

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// Which of upstream's workloads to run.
    #[arg(long, value_enum, default_value_t = Workload::All)]
    workload: Workload,

    /// Concurrent clients creating pods in the end-to-end case.
    #[arg(long, default_value_t = 32)]
    clients: usize,

    /// Only the framework in process, no server.
    #[arg(long)]
    in_process_only: bool,

    /// The rkube binary (default: beside this one).
    #[arg(long)]
    rkube: Option<std::path::PathBuf>,

    /// A short run for smoke-testing the benchmark itself.
    #[arg(long)]
    quick: bool,

    /// Also measure end to end with hollow nodes that run the pods (a status update per
    /// pod, as a kubelet's), beyond upstream's workload whose nodes run nothing.
    #[arg(long)]
    with_kubelets: bool,
}

fn progress(message: &str) {
    eprintln!("[scheduler] {message}");
}

const ZONE: &str = "topology.kubernetes.io/zone";
const ZONES: usize = 3;

/// One of upstream's workloads: its sizes and the pod it creates.
struct Case {
    name: &'static str,
    nodes: usize,
    initial_pods: usize,
    pods: usize,
    /// Nodes are spread over zones.
    zoned: bool,
    /// Added to every pod's spec.
    spec: Value,
    labels: Value,
}

impl Case {
    fn all(workload: Workload, quick: bool) -> Vec<Self> {
        let scale = |n: usize, small: usize| if quick { n.min(small) } else { n };
        let mut cases = Vec::new();
        if matches!(workload, Workload::Basic | Workload::All) {
            cases.push(Self {
                name: "SchedulingBasic",
                nodes: scale(5000, 100),
                initial_pods: scale(1000, 100),
                pods: scale(10_000, 300),
                zoned: false,
                spec: json!({}),
                labels: json!({}),
            });
        }
        if matches!(workload, Workload::AntiAffinity | Workload::All) {
            cases.push(Self {
                name: "SchedulingPodAntiAffinity",
                nodes: scale(500, 100),
                initial_pods: scale(100, 20),
                pods: scale(400, 60),
                zoned: false,
                spec: json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
                labels: json!({"color": "green"}),
            });
        }
        if matches!(workload, Workload::TopologySpread | Workload::All) {
            cases.push(Self {
                name: "TopologySpreading",
                nodes: scale(5000, 99),
                initial_pods: scale(1000, 100),
                pods: scale(5000, 300),
                zoned: true,
                spec: json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]}),
                labels: json!({"app": "spread"}),
            });
        }
        cases
    }

    fn title(&self) -> String {
        format!("{} {} nodes", self.name, self.nodes)
    }

    /// The workload's pod: one container asking for 100m cpu and 500Mi, plus its terms.
    fn pod(&self, name: &str) -> Pod {
        let mut spec = json!({"containers": [{"name": "pause", "image": "registry.local/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), self.spec.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name, "labels": self.labels},
            "spec": spec,
        }))
        .unwrap_or_default()
    }

    fn zone(&self, i: usize) -> Option<String> {
        self.zoned.then(|| format!("zone-{}", i % ZONES))
    }

    fn node(&self, i: usize) -> Node {
        let mut labels = json!({"kubernetes.io/hostname": format!("node-{i}")});
        if let Some(zone) = self.zone(i) {
            labels[ZONE] = json!(zone);
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("node-{i}"), "labels": labels},
            "status": {"allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"}}
        }))
        .unwrap_or_default()
    }
}

/// Decide and assume, as the scheduler loop does, without the API.
fn in_process(case: &Case) -> anyhow::Result<f64> {
    let mut cache = Cache::default();
    for i in 0..case.nodes {
        cache.set_node(Arc::new(case.node(i)));
    }
    let mut place = |name: String| -> anyhow::Result<()> {
        let pod = Arc::new(case.pod(&name));
        match cache.schedule(&pod) {
            Outcome::Placed(choice) => cache.assume(pod, &choice.node),
            Outcome::Preempting(fit, _) | Outcome::Unschedulable(fit) => anyhow::bail!("{name}: {fit}"),
        }
        Ok(())
    };
    for i in 0..case.initial_pods {
        place(format!("init-{i}"))?;
    }
    let started = Instant::now();
    for i in 0..case.pods {
        place(format!("pod-{i}"))?;
    }
    Ok(case.pods as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(args: SchedulerArgs, json: bool) -> anyhow::Result<()> {
    let mut report = Report::new("scheduler", json);
    for case in Case::all(args.workload, args.quick) {
        progress(&format!(
            "{}: in process, {} then {} pods",
            case.title(),
            case.initial_pods,
            case.pods
        ));
        let rate = in_process(&case)?;
        report.add("in process", &case.title(), "pods_per_sec", "1/s", rate);
        if !args.in_process_only {
            end_to_end(&args, &case, false, &mut report).await?;
            if args.with_kubelets {
                end_to_end(&args, &case, true, &mut report).await?;
            }
        }
    }
    report.print_table();
    Ok(())
}

async fn end_to_end(args: &SchedulerArgs, case: &Case, run_pods: bool, report: &mut Report) -> anyhow::Result<()> {
    // End to end: a server with its scheduler, hollow nodes, pods through the API. As in
    // upstream's scheduler_perf the nodes run nothing unless asked (`--with-kubelets`);
    // they do renew their Leases, as the server's node lifecycle controller expects.
    let column = if run_pods { "with kubelets" } else { "end to end" };
    let server = start_server(args.rkube.as_deref(), &[], true)
        .await
        .context("starting rkube server")?;
    let client = server.client().await?;
    progress(&format!("{}: {column}, registering hollow nodes", case.title()));
    // Zoned cases get one fleet per zone, as labels are per fleet.
    let fleets: Vec<(String, usize, Option<String>)> = if case.zoned {
        (0..ZONES)
            .map(|z| {
                let count = case.nodes / ZONES + usize::from(z < case.nodes % ZONES);
                (format!("node-z{z}"), count, case.zone(z))
            })
            .collect()
    } else {
        vec![("node".into(), case.nodes, None)]
    };
    let mut hollow = Vec::new();
    for (prefix, count, zone) in fleets {
        let options = HollowOptions {
            count,
            prefix,
            labels: zone.map(|z| (ZONE.to_string(), z)).into_iter().collect(),
            cpu: "4".into(),
            memory: "32Gi".into(),
            run_pods,
            ..HollowOptions::default()
        };
        hollow.push(HollowNodes::start(client.clone(), options).await?);
    }
    // A cluster's namespaces have their `default` account (the controller manager, not run
    // here, makes it); without one every pod's admission would look it up again.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), "default");
    let account = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => return Err(err.into()),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create_all = async |prefix: &str, count: usize| -> anyhow::Result<()> {
        futures_util::stream::iter(0..count)
            .map(|i| {
                let pods = pods.clone();
                let mut p = case.pod(&format!("{prefix}-{i}"));
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
    // Bound pods only, by their metadata: the server filters (a pod enters the selection
    // when it is bound), so the load generator decodes one small event per pod.
    let bound_only = WatchParams::default().fields("spec.nodeName!=").timeout(290);
    let wait_bound = async |prefix: &str, count: usize, revision: String| -> anyhow::Result<()> {
        let mut stream = pods.watch_metadata(&bound_only, &revision).await?.boxed();
        let mut bound = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        while bound.len() < count && Instant::now() < deadline {
            match stream.next().await {
                Some(Ok(WatchEvent::Modified(p) | WatchEvent::Added(p))) => {
                    let name = p.metadata.name.unwrap_or_default();
                    let newly_bound = name.starts_with(prefix) && bound.insert(name);
                    if newly_bound && bound.len() % 2000 == 0 {
                        progress(&format!("{} of {count} bound", bound.len()));
                    }
                }
                Some(_) => {}
                None => stream = pods.watch_metadata(&bound_only, "0").await?.boxed(),
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
    progress(&format!("placing {} initial pods", case.initial_pods));
    create_all("init", case.initial_pods).await?;
    wait_bound("init-", case.initial_pods, before).await?;
    let before = revision().await?;
    progress(&format!("measuring {} pods", case.pods));
    let started = Instant::now();
    let cpu_before = cpu_seconds(server.pid());
    let (created, bound) = tokio::join!(create_all("pod", case.pods), wait_bound("pod-", case.pods, before));
    created?;
    bound?;
    let elapsed = started.elapsed().as_secs_f64();
    // CPU per pod varies less than throughput on a shared machine: the steadier figure
    // for comparing builds.
    if let (Some(before), Some(after)) = (cpu_before, cpu_seconds(server.pid())) {
        let per_pod = (after - before) * 1000.0 / case.pods as f64;
        report.add(column, &case.title(), "server_cpu_per_pod", "ms", per_pod);
    }
    report.add(column, &case.title(), "pods_per_sec", "1/s", case.pods as f64 / elapsed);
    if let Some(rss) = rss_mib(server.pid()) {
        report.add(column, &case.title(), "server_rss", "MiB", rss);
    }
    // The nodes stop before the server, so nothing is left talking to a server that is gone.
    for fleet in hollow {
        fleet.stop().await;
    }
    Ok(())
}
