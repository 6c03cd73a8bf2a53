//! `rkube-bench <bench>`: measures a component and prints its figures. Benchmarks measure;
//! tests assert behaviour.

mod api;
mod controllers;
mod hollow;
mod report;
mod scheduler;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "rkube-bench", version, about = "rkube's benchmarks")]
struct Cli {
    /// One JSON object per figure per line instead of a table.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// The datastore: SQLite and etcd side by side.
    Store(store::StoreArgs),
    /// The API server over HTTPS with kube-rs clients (runs a real rkube server).
    Api(api::ApiArgs),
    /// Many hollow nodes in this process, against a cluster or a server started for the run.
    HollowNodes(hollow::HollowArgs),
    /// The scheduler: in process and end to end on hollow nodes (runs a real rkube server).
    Scheduler(scheduler::SchedulerArgs),
    /// The controller manager: Deployments to Running pods on hollow nodes (runs a real rkube server).
    Controllers(controllers::ControllersArgs),
}

// The same allocator as the server: the hollow nodes and clients here stand in for other
// machines, and should take as little of this one's two cores as they can.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.bench {
            Bench::Store(args) => store::run(args, cli.json).await,
            Bench::Api(args) => api::run(args, cli.json).await,
            Bench::HollowNodes(args) => hollow::run(args, cli.json).await,
            Bench::Scheduler(args) => scheduler::run(args, cli.json).await,
            Bench::Controllers(args) => controllers::run(args, cli.json).await,
        }
    })
}
