//! A real `rkube server` process on a free loopback port with a temporary data dir, and a
//! kubectl runner with a fresh cache, for end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server fixture i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("rkube server did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
}

pub struct RkubeServer {
    child: Child,
    dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
    control: Control,
}

/// Which control-plane components run beside the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    ApiOnly,
    Scheduler,
    /// The scheduler and the controller manager.
    Full,
}

impl RkubeServer {
    /// Starts `binary server` with SQLite under a temp dir, the API on 127.0.0.1 and a
    /// port the OS picks, without the scheduler (the API alone, so tests own every pod's
    /// fate); returns once the kubeconfig is written and /readyz answers.
    pub fn start(binary: &Path, extra_args: &[&str]) -> Result<Self, ServerError> {
        Self::start_as(binary, extra_args, Control::ApiOnly)
    }

    /// Like [`RkubeServer::start`], with the scheduler running.
    pub fn start_with_scheduler(binary: &Path, extra_args: &[&str]) -> Result<Self, ServerError> {
        Self::start_as(binary, extra_args, Control::Scheduler)
    }

    /// Like [`RkubeServer::start`], with the scheduler and the controller manager running.
    pub fn start_full(binary: &Path, extra_args: &[&str]) -> Result<Self, ServerError> {
        Self::start_as(binary, extra_args, Control::Full)
    }

    pub fn start_as(binary: &Path, extra_args: &[&str], control: Control) -> Result<Self, ServerError> {
        let dir = tempfile::Builder::new().prefix("rkube-server-").tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let child = spawn(binary, dir.path(), extra_args, control)?;
        let mut server = Self {
            child,
            dir,
            kubeconfig,
            url: String::new(),
            control,
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    /// Stops the server (SIGTERM) and starts it again on the same data dir, as an operator
    /// restarting it would; the port is new.
    pub fn restart(&mut self, binary: &Path, extra_args: &[&str]) -> Result<(), ServerError> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        self.child.wait()?;
        std::fs::remove_file(&self.kubeconfig)?;
        self.child = spawn(binary, self.dir.path(), extra_args, self.control)?;
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.kubeconfig)
                && let Some(url) = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("server: "))
                    .map(str::to_string)
            {
                self.url = url;
                let probe = self.kubectl().run(&["get", "--raw", "/readyz"]);
                if probe.as_ref().is_ok_and(|o| o.status.success()) {
                    return Ok(());
                }
            }
            if self.child.try_wait()?.is_some() || Instant::now() > deadline {
                return Err(ServerError::NotReady {
                    timeout,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's process id, for measuring its memory.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("data/server/tls/ca.crt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, kube::Error> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        kube::Client::try_from(config)
    }

    /// kubectl (the version dispatcher) against this server, with a fresh cache.
    pub fn kubectl(&self) -> Kubectl {
        self.kubectl_binary("kubectl")
    }

    /// A specific kubectl binary, e.g. `kubectl.1.27`.
    pub fn kubectl_binary(&self, binary: &str) -> Kubectl {
        Kubectl {
            binary: resolve_kubectl(binary),
            kubeconfig: self.kubeconfig.clone(),
            home: self.dir.path().join(format!("home-{binary}")),
        }
    }

    /// Stops the server with SIGTERM and returns its exit status.
    pub fn stop(self) -> std::io::Result<std::process::ExitStatus> {
        self.stop_with_log().map(|(status, _)| status)
    }

    /// Stops the server with SIGTERM and returns its exit status and its whole log.
    pub fn stop_with_log(mut self) -> std::io::Result<(std::process::ExitStatus, String)> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = self.child.wait()?;
        Ok((status, self.log()))
    }
}

fn spawn(binary: &Path, dir: &Path, extra_args: &[&str], control: Control) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    Command::new(binary)
        .arg("server")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.join("kubeconfig.yaml"))
        .args([
            "--https-listen-port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--disable-agent",
        ])
        .args((control == Control::ApiOnly).then_some("--disable-scheduler"))
        .args((control != Control::Full).then_some("--disable-controller-manager"))
        .args(extra_args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

impl Drop for RkubeServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            drop(self.child.kill());
            drop(self.child.wait());
        }
    }
}

/// Finds a kubectl binary: on the PATH, or (for `kubectl.1.27` … `kubectl.1.33`) beside
/// the real file the `kubectl` dispatcher on the PATH links to.
pub fn resolve_kubectl(name: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = |file: &str| std::env::split_paths(&path).map(|d| d.join(file)).find(|p| p.is_file());
    if let Some(found) = on_path(name) {
        return found.display().to_string();
    }
    on_path("kubectl")
        .and_then(|dispatcher| std::fs::canonicalize(dispatcher).ok())
        .and_then(|real| real.parent().map(|dir| dir.join(name)))
        .filter(|candidate| candidate.is_file())
        .map_or_else(|| name.to_string(), |found| found.display().to_string())
}

pub struct Kubectl {
    binary: String,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    pub fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        std::fs::create_dir_all(&self.home)?;
        Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.join("cache"))
            .args(args)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
    }
}
