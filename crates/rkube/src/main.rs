//! `rkube`: one binary, several roles (k3s-style). Flags use k3s's names where k3s has one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rkube_store::{Datastore, OpenOptions};

#[derive(Parser, Debug)]
#[command(
    name = "rkube",
    version,
    about = "A Kubernetes-compatible container platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane. So far: the datastore with automatic compaction.
    Server(ServerArgs),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Folder for all state (the SQLite datastore lives in server/db/state.db under it).
    #[arg(long, default_value = "/var/lib/rkube", value_name = "DIR")]
    data_dir: PathBuf,

    /// Where state lives: empty for embedded SQLite, sqlite://PATH, or a comma-separated
    /// list of etcd endpoints (http://host:2379,...).
    #[arg(long, value_name = "URL")]
    datastore_endpoint: Option<String>,

    /// Keep at least this many seconds of history when compacting.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    datastore_retention: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rkube: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rkube: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let sqlite_path = args.data_dir.join("server/db/state.db");
    let datastore =
        Datastore::from_endpoint(args.datastore_endpoint.as_deref(), &sqlite_path).context("--datastore-endpoint")?;
    let options = OpenOptions {
        compaction: Some(rkube_store::CompactionPolicy {
            retention: std::time::Duration::from_secs(args.datastore_retention),
            ..rkube_store::CompactionPolicy::default()
        }),
        ..OpenOptions::default()
    };
    let store = rkube_store::open(&datastore, options)
        .await
        .with_context(|| format!("opening the datastore ({datastore:?})"))?;
    let revision = store.current_revision().await?;
    tracing::info!(
        backend = store.backend(),
        revision,
        "datastore ready; rkube server is running (Ctrl-C stops it)"
    );
    shutdown_signal().await?;
    tracing::info!("stopping");
    drop(store);
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
