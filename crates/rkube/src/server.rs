//! `rkube server`: the control plane. So far: the datastore, the API server, the scheduler
//! and the controller manager.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use rkube_client::leader::Election;
use rkube_pki::{Ca, Kubeconfig, TokenFile};
use rkube_store::{CompactionPolicy, Datastore, OpenOptions};

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Folder for all state (the SQLite datastore is server/db/state.db under it).
    #[arg(long, default_value = "/var/lib/rkube", value_name = "DIR")]
    data_dir: PathBuf,

    /// Where state lives: empty for embedded SQLite, sqlite://PATH, or a comma-separated
    /// list of etcd endpoints (http://host:2379,...).
    #[arg(long, value_name = "URL")]
    datastore_endpoint: Option<String>,

    /// Keep at least this many seconds of history when compacting.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    datastore_retention: u64,

    /// HTTPS port of the API server (0: any free port, written into the kubeconfig).
    #[arg(long, default_value_t = 6443, value_name = "PORT")]
    https_listen_port: u16,

    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind_address: IpAddr,

    /// Write the admin kubeconfig here (mode 0600).
    #[arg(long, default_value = "/etc/rkube/rkube.yaml", value_name = "FILE")]
    write_kubeconfig: PathBuf,

    /// Static bearer tokens (kube-apiserver's format: token,user,uid,"group1,group2").
    #[arg(long, value_name = "FILE")]
    token_auth_file: Option<PathBuf>,

    /// This node's addresses, added to the serving certificate.
    #[arg(long = "node-ip", value_name = "IP")]
    node_ips: Vec<IpAddr>,

    /// Extra host names or addresses for the serving certificate.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,

    /// Run without the node agent on this machine (there is no agent yet).
    #[arg(long)]
    disable_agent: bool,

    /// Run without the scheduler (pods then stay Pending unless bound otherwise).
    #[arg(long)]
    disable_scheduler: bool,

    /// Run without the controller manager (workloads then create no pods).
    #[arg(long)]
    disable_controller_manager: bool,

    /// Addresses for pods (IPv4 CIDR); each node gets a /24 of it.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidr, value_name = "CIDR")]
    cluster_cidr: (Ipv4Addr, u8),

    /// Addresses for services (IPv4 CIDR); its first address is the `kubernetes` service.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = parse_cidr, value_name = "CIDR")]
    service_cidr: (Ipv4Addr, u8),

    /// Ports for NodePort services.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range, value_name = "LOW-HIGH")]
    service_node_port_range: (u16, u16),
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = text
        .split_once('/')
        .ok_or("expected an IPv4 CIDR such as 10.43.0.0/16")?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
    if !(8..=28).contains(&prefix) {
        return Err("the prefix length must be between 8 and 28".into());
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(ip) & !mask != 0 {
        return Err(format!(
            "{text} has host bits set; did you mean {}/{prefix}?",
            Ipv4Addr::from(u32::from(ip) & mask)
        ));
    }
    Ok((ip, prefix))
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text.split_once('-').ok_or("expected LOW-HIGH, such as 30000-32767")?;
    let low: u16 = low.trim().parse().map_err(|_| format!("{low:?} is not a port"))?;
    let high: u16 = high.trim().parse().map_err(|_| format!("{high:?} is not a port"))?;
    if low == 0 || low > high {
        return Err("the range must be LOW-HIGH with 0 < LOW <= HIGH".into());
    }
    Ok((low, high))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let signals = crate::ShutdownSignals::install()?;
    let sqlite_path = args.data_dir.join("server/db/state.db");
    let datastore =
        Datastore::from_endpoint(args.datastore_endpoint.as_deref(), &sqlite_path).context("--datastore-endpoint")?;
    let tokens = match &args.token_auth_file {
        Some(path) => TokenFile::load(path).context("--token-auth-file")?,
        None => TokenFile::default(),
    };

    let tls_dir = args.data_dir.join("server/tls");
    let ca = Ca::load_or_create(&tls_dir).context("the cluster CA")?;
    let (dns_names, ips) = serving_names(&args);
    let serving = ca
        .issue_serving("kube-apiserver", &dns_names, &ips)
        .context("--tls-san")?;
    rkube_pki::write_cert_key(&tls_dir, "serving-kube-apiserver", &serving)?;
    let admin = ca.issue_client("system:admin", &["system:masters"])?;
    let service_account_keys =
        rkube_pki::ServiceAccountKeys::load_or_create(&tls_dir).context("the service-account signing key")?;
    rkube_pki::write_cert_key(&tls_dir, "client-admin", &admin)?;

    let options = OpenOptions {
        compaction: Some(CompactionPolicy {
            retention: std::time::Duration::from_secs(args.datastore_retention),
            ..CompactionPolicy::default()
        }),
        ..OpenOptions::default()
    };
    let store = rkube_store::open(&datastore, options)
        .await
        .with_context(|| format!("opening the datastore ({datastore:?})"))?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, args.https_listen_port))
        .await
        .with_context(|| format!("listening on {}:{}", args.bind_address, args.https_listen_port))?;
    let port = listener.local_addr()?.port();
    let host = if args.bind_address.is_unspecified() || args.bind_address.is_loopback() {
        "127.0.0.1".to_string()
    } else {
        args.bind_address.to_string()
    };
    let server_url = format!("https://{host}:{port}");
    Kubeconfig {
        name: "default",
        server: &server_url,
        ca_pem: &ca.cert_pem,
        client: &admin,
    }
    .write(&args.write_kubeconfig)
    .context("--write-kubeconfig")?;
    tracing::info!(
        server = server_url.as_str(),
        kubeconfig = %args.write_kubeconfig.display(),
        backend = store.backend(),
        "rkube server is running (Ctrl-C stops it)"
    );
    if args.disable_agent {
        tracing::debug!("--disable-agent: no node agent on this machine");
    }

    let services = rkube_apiserver::ServiceNetwork {
        base: args.service_cidr.0,
        prefix: args.service_cidr.1,
        node_ports: args.service_node_port_range.0..=args.service_node_port_range.1,
    };
    // Pods reach the API through the `kubernetes` service, whose endpoint is this address.
    let advertise_ip = if args.bind_address.is_unspecified() {
        args.node_ips.first().copied().unwrap_or(IpAddr::from([127, 0, 0, 1]))
    } else {
        args.bind_address
    };
    let config = rkube_apiserver::Config {
        listener,
        serving,
        client_ca_pem: ca.cert_pem.clone(),
        tokens,
        service_account_keys,
        store,
        advertise: SocketAddr::new(advertise_ip, port),
        services,
    };
    let api = rkube_apiserver::ApiServer::start(config).await?;
    // The scheduler and the controller manager are API clients like any other, each with
    // its own identity and leader election.
    let identity = format!(
        "{}_{}_{}",
        hostname().unwrap_or_else(|| "rkube".into()),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut components = Vec::new();
    // One pod informer for both (one watch, one decode of each change), running whether
    // or not this process leads: a component elected later starts from its cache.
    let pods = rkube_client::shared::SharedPods::new();
    let mut pod_informer = None;
    if !args.disable_scheduler {
        let client = component_client(&api, "system:kube-scheduler")?;
        let election = Election::new("kube-system", "kube-scheduler", identity.clone());
        let task = tokio::spawn(rkube_scheduler::run_elected(
            client.clone(),
            rkube_scheduler::DEFAULT_SCHEDULER.to_string(),
            election.clone(),
            pods.clone(),
        ));
        pod_informer = Some(client.clone());
        components.push((task, client, election));
    }
    if !args.disable_controller_manager {
        let client = component_client(&api, "system:kube-controller-manager")?;
        let election = Election::new("kube-system", "kube-controller-manager", identity.clone());
        let config = rkube_controllers::Config {
            cluster_cidr: args.cluster_cidr,
        };
        let task = tokio::spawn(rkube_controllers::run_elected(
            client.clone(),
            election.clone(),
            config,
            pods.clone(),
        ));
        pod_informer = Some(client.clone());
        components.push((task, client, election));
    }
    // Watching as the controller manager when it runs, else as the scheduler.
    let pod_informer = pod_informer.map(|client| tokio::spawn(pods.run(client)));
    api.serve(async move {
        signals.wait().await;
        // Stop the components and hand their leases over while the API server still answers.
        if let Some(informer) = &pod_informer {
            informer.abort();
        }
        for (task, client, election) in components {
            task.abort();
            let releasing = rkube_client::leader::release(client, &election);
            if tokio::time::timeout(std::time::Duration::from_secs(2), releasing)
                .await
                .is_err()
            {
                tracing::warn!(lease = election.name, "releasing a lease timed out");
            }
        }
    })
    .await?;
    tracing::info!("stopping");
    Ok(())
}

/// A client for a control-plane component in this process, authenticated as `user`: a
/// kube-rs client like any other, whose requests reach the API server in memory (ADR 14).
fn component_client(api: &rkube_apiserver::ApiServer, user: &str) -> anyhow::Result<kube::Client> {
    // Upstream names a writer's managedFields entries after its user agent's first word
    // (`kube-controller-manager`, `kube-scheduler`); kube-rs sends none of its own.
    let agent = format!(
        "{}/v{} ({}/{}) rkube",
        user.strip_prefix("system:").unwrap_or(user),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    let agent = http::HeaderValue::from_str(&agent).context("component user agent")?;
    Ok(kube::Client::new(api.local_transport(user, agent), "default"))
}

/// Names and addresses the serving certificate covers: the host, loopback, the node's
/// addresses, the `kubernetes` service by IP and by every DNS form, and --tls-san.
fn serving_names(args: &ServerArgs) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = vec![
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if let Some(host) = hostname() {
        dns.push(host);
    }
    let kubernetes_service = Ipv4Addr::from(u32::from(args.service_cidr.0) + 1);
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::V4(kubernetes_service)];
    ips.extend(args.node_ips.iter().copied());
    if !args.bind_address.is_unspecified() {
        ips.push(args.bind_address);
    }
    for san in &args.tls_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        assert_eq!(parse_cidr("10.43.0.0/16"), Ok((Ipv4Addr::new(10, 43, 0, 0), 16)));
        assert!(
            parse_cidr("10.43.0.1/16")
                .unwrap_err()
                .contains("did you mean 10.43.0.0/16")
        );
        assert!(parse_cidr("10.43.0.0").is_err());
        assert!(parse_cidr("10.43.0.0/30").is_err());
        assert_eq!(parse_port_range("30000-32767"), Ok((30000, 32767)));
        assert!(parse_port_range("32767-30000").is_err());
    }
}
