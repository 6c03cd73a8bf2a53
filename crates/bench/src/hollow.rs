//! `rkube-bench hollow-nodes`: many hollow nodes in this one process, against a cluster
//! given by `--kubeconfig` or a real `rkube server` started for the run. Prints how fast
//! they registered, what the process holds in memory, and what they kept up with (lease
//! renewals, pods run) over `--seconds`; with `--seconds 0` they serve until killed.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rkube_testkit::{HollowNodes, HollowOptions};

use crate::report::{Report, rss_mib, start_server};

#[derive(clap::Args, Debug)]
pub struct HollowArgs {
    /// Hollow nodes to run.
    #[arg(long, default_value_t = 1000)]
    count: usize,

    /// The cluster to join (default: start an rkube server beside this binary for the run).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// The rkube binary to start when no kubeconfig is given (default: beside this one).
    #[arg(long)]
    rkube: Option<PathBuf>,

    /// How long to serve after registering; 0 serves until the process is killed.
    #[arg(long, default_value_t = 30)]
    seconds: u64,

    /// Node name prefix.
    #[arg(long, default_value = "hollow")]
    prefix: String,

    /// Seconds a pod with restartPolicy Never or OnFailure runs before it succeeds.
    #[arg(long, default_value_t = 1.0)]
    finish_after: f64,
}

fn progress(message: &str) {
    eprintln!("[hollow-nodes] {message}");
}

pub async fn run(args: HollowArgs, json: bool) -> anyhow::Result<()> {
    drop(rustls::crypto::ring::default_provider().install_default());
    let (server, client) = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
            (None, kube::Client::try_from(config)?)
        }
        None => {
            let server = start_server(args.rkube.as_deref(), &[], false)
                .await
                .context("starting rkube server")?;
            let client = server.client().await?;
            (Some(server), client)
        }
    };
    let options = HollowOptions {
        count: args.count,
        prefix: args.prefix.clone(),
        finish_after: Duration::from_secs_f64(args.finish_after),
        ..HollowOptions::default()
    };
    progress(&format!("registering {} nodes", args.count));
    let started = Instant::now();
    let hollow = HollowNodes::start(client, options).await?;
    let registered_in = started.elapsed().as_secs_f64();
    progress(&format!(
        "{} nodes registered in {registered_in:.1}s",
        hollow.names().len()
    ));

    let mut report = Report::new("hollow-nodes", json);
    let case = format!("{} nodes", args.count);
    report.add(
        "hollow",
        &case,
        "register_per_sec",
        "1/s",
        args.count as f64 / registered_in,
    );
    let pid = std::process::id();
    if args.seconds == 0 {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            progress(&format!(
                "lease renewals {}, pods started {}, finished {}, finalized {}",
                hollow.stats.lease_renewals.load(Ordering::Relaxed),
                hollow.stats.pods_started.load(Ordering::Relaxed),
                hollow.stats.pods_finished.load(Ordering::Relaxed),
                hollow.stats.pods_finalized.load(Ordering::Relaxed),
            ));
        }
    }
    let renewals_before = hollow.stats.lease_renewals.load(Ordering::Relaxed);
    let serving = Instant::now();
    for remaining in (1..=args.seconds).rev() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if remaining % 10 == 0 {
            progress(&format!("serving, {remaining}s left"));
        }
    }
    let renewals = hollow.stats.lease_renewals.load(Ordering::Relaxed) - renewals_before;
    report.add(
        "hollow",
        &case,
        "lease_renewals_per_sec",
        "1/s",
        renewals as f64 / serving.elapsed().as_secs_f64(),
    );
    if let Some(rss) = rss_mib(pid) {
        report.add("hollow", &case, "process_rss", "MiB", rss);
        report.add(
            "hollow",
            &case,
            "per_node",
            "KiB",
            rss * 1024.0 / args.count.max(1) as f64,
        );
    }
    if let Some(rss) = server.as_ref().and_then(|s| rss_mib(s.pid())) {
        report.add("hollow", &case, "server_rss", "MiB", rss);
    }
    report.print_table();
    Ok(())
}
