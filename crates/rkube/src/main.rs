//! `rkube`: one binary, several roles (k3s-style). Flags use k3s's names where k3s has one.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod server;

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
    /// Run the control plane: the datastore and the API server (so far).
    Server(server::ServerArgs),
}

// The API server's write path is allocation-bound (JSON trees per request, per watch
// event, per managed-fields diff): glibc's malloc took a quarter of the server's CPU in
// `rkube-bench controllers`; mimalloc's per-thread free lists cut that (ADR 0007).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One process-wide TLS provider (ring), installed before anything builds a TLS config.
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        tracing::debug!("a TLS crypto provider was already installed");
    }
    let cli = Cli::parse();
    // Deserializing the largest API types (PersistentVolume, Deployment) inside deep
    // futures needs more than tokio's default 2 MiB of stack in unoptimised builds; the
    // extra is address space, not memory, until used.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rkube: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
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

/// SIGTERM and SIGINT, caught from the moment this is made (a signal during start-up
/// still stops the process cleanly, once it can).
pub(crate) struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub(crate) fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    pub(crate) async fn wait(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
