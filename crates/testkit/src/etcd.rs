//! Real etcd servers (Debian's `etcd-server`) on free loopback ports with temporary data
//! directories, stopped and removed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd binary {0:?} not found: install Debian's etcd-server (scripts/setup does)")]
    NotInstalled(String),
    #[error("etcd fixture i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("etcd cluster did not become healthy within {timeout:?}; last log lines:\n{log}")]
    NotHealthy { timeout: Duration, log: String },
}

/// The binary used: `RKUBE_ETCD_BIN` or `etcd` on the PATH.
pub fn etcd_binary() -> String {
    std::env::var("RKUBE_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

struct Member {
    name: String,
    client: SocketAddr,
    child: Child,
    log: PathBuf,
    command: Vec<std::ffi::OsString>,
}

/// One or more etcd members forming a cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

/// A port the OS just handed out. Another process could take it before etcd binds it;
/// start() retries the whole cluster when that happens.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// etcd's default request limit is 1.5 MiB including the key and framing; rkube's value
/// limit is 1.5 MiB of value, so the fixture allows a little more (as the README tells
/// operators to do).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

impl EtcdCluster {
    pub fn start(size: usize) -> Result<Self, EtcdError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(size) {
                Ok(cluster) => return Ok(cluster),
                Err(err @ EtcdError::NotInstalled(_)) => return Err(err),
                Err(err) => {
                    tracing::warn!(%err, "etcd fixture failed to start; retrying on other ports");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or(EtcdError::NotHealthy {
            timeout: Duration::ZERO,
            log: String::new(),
        }))
    }

    fn try_start(size: usize) -> Result<Self, EtcdError> {
        let binary = etcd_binary();
        let dir = tempfile::Builder::new().prefix("rkube-etcd-").tempdir()?;
        let ports = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rkube".into());
        let mut cluster = Self {
            members: Vec::new(),
            dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = cluster.dir.path().join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log)?;
            let mut command: Vec<std::ffi::OsString> =
                vec![binary.clone().into(), "--name".into(), name.clone().into()];
            command.push("--data-dir".into());
            command.push(cluster.dir.path().join(&name).into());
            for (flag, value) in [
                ("--listen-client-urls", format!("http://{client}")),
                ("--advertise-client-urls", format!("http://{client}")),
                ("--listen-peer-urls", format!("http://{peer}")),
                ("--initial-advertise-peer-urls", format!("http://{peer}")),
                ("--initial-cluster", initial_cluster.clone()),
                ("--initial-cluster-token", token.clone()),
                ("--initial-cluster-state", "new".into()),
                ("--max-request-bytes", MAX_REQUEST_BYTES.to_string()),
                ("--quota-backend-bytes", (8u64 << 30).to_string()),
                ("--log-level", "warn".into()),
                ("--logger", "zap".into()),
            ] {
                command.push(flag.into());
                command.push(value.into());
            }
            let child = spawn(&command, &log_file)?;
            cluster.members.push(Member {
                name,
                client: *client,
                child,
                log,
                command,
            });
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Client URLs of the members that are running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}", m.client)).collect()
    }

    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The folder holding every member's data.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Process ids, for measuring the members' memory.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.child.id()).collect()
    }

    /// Kills one member (SIGKILL), as a machine failure would.
    pub fn kill_member(&mut self, index: usize) -> std::io::Result<()> {
        let member = &mut self.members[index];
        member.child.kill()?;
        member.child.wait()?;
        Ok(())
    }

    /// Kills one member and starts it again on the same data directory.
    pub fn restart_member(&mut self, index: usize) -> Result<(), EtcdError> {
        self.kill_member(index)?;
        let member = &mut self.members[index];
        let log_file = std::fs::OpenOptions::new().append(true).open(&member.log)?;
        member.child = spawn(&member.command, &log_file)?;
        self.wait_healthy(Duration::from_secs(30))
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdError> {
        let deadline = Instant::now() + timeout;
        loop {
            let healthy = self.members.iter().all(|m| health(m.client).unwrap_or(false));
            if healthy {
                return Ok(());
            }
            let exited = self
                .members
                .iter_mut()
                .any(|m| m.child.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                return Err(EtcdError::NotHealthy {
                    timeout,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let lines: Vec<_> = text.lines().rev().take(5).collect();
                let tail: Vec<_> = lines.into_iter().rev().collect();
                format!("[{}] {}", m.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn spawn(command: &[std::ffi::OsString], log_file: &std::fs::File) -> Result<Child, EtcdError> {
    let (binary, args) = command
        .split_first()
        .ok_or_else(|| EtcdError::NotInstalled(String::new()))?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file.try_clone()?)
        .spawn()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => EtcdError::NotInstalled(binary.to_string_lossy().into_owned()),
            _ => EtcdError::Io(err),
        })
}

/// etcd answers `GET /health` on its client port with `{"health":"true"}` once it has a
/// leader.
fn health(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.contains("\"health\":\"true\""))
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            drop(member.child.kill());
            drop(member.child.wait());
        }
    }
}
