//! rkube's controller manager: each controller a level-triggered `reconcile(key)` over
//! informer caches (kube-rs reflectors), fed by a rate-limited [`workqueue`] that
//! requeues failures and never drops a key, with upstream's [`expectations`] so that a
//! cache that lags behind the controller's own writes never makes it act twice. Only the
//! holder of the `kube-system/kube-controller-manager` Lease runs the controllers.

pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod garbage_collector;
pub mod history;
mod informer;
pub mod job;
pub mod local_path;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pods;
pub mod replicaset;
pub mod resource_quota;
pub use rkube_client::shared;
pub mod statefulset;
pub mod volume_binder;
pub mod workqueue;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::ReplicationController;
use rkube_client::leader;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{key}: {action}: {source}")]
    Api {
        key: String,
        action: &'static str,
        source: kube::Error,
    },
    #[error("{key}: the new replica set's name is taken by another; retrying with another hash")]
    Conflict { key: String },
}

impl ControllerError {
    pub fn api(key: &str, action: &'static str, source: kube::Error) -> Self {
        Self::Api {
            key: key.to_string(),
            action,
            source,
        }
    }
}

/// Upstream's `--concurrent-namespace-syncs`.
pub const NAMESPACE_WORKERS: usize = 10;

/// `trim` drops an object's managedFields as it enters a controller's cache, as
/// upstream's controller manager trims its informers; `key_of` is the work queues' key.
pub use rkube_client::shared::{key_of, trim};

/// A write whose object may be gone meanwhile: gone is as good as done.
pub fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}

/// The dynamic-API description of a catalogued resource.
pub fn api_resource(info: &rkube_api::ResourceInfo) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: info.group.into(),
        version: info.version.into(),
        api_version: info.api_version(),
        kind: info.kind.into(),
        plural: info.plural.into(),
    }
}

/// What the API said, for events: its message alone when it answered with a Status.
pub fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// What the controllers need to know of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Pod addresses; each node gets a /24 of it.
    pub cluster_cidr: (std::net::Ipv4Addr, u8),
}

/// Runs every controller until the future is dropped. `pods` is the process's pod
/// informer, which the caller runs ([`shared::Shared::run`]): it outlives a term of
/// leadership, and the scheduler reads it too.
pub async fn run(client: kube::Client, config: Config, pods: shared::SharedPods) {
    // Each controller a task of its own (aborted with the set when this future is dropped).
    let mut controllers = tokio::task::JoinSet::new();
    controllers.spawn(daemonset::run(client.clone(), pods.clone(), pods.subscribe()));
    controllers.spawn(deployment::run(client.clone(), pods.clone()));
    controllers.spawn(endpoints::run(client.clone(), pods.clone(), pods.subscribe()));
    controllers.spawn(garbage_collector::run(client.clone()));
    controllers.spawn(job::run(client.clone(), pods.clone(), pods.subscribe()));
    controllers.spawn(local_path::run(client.clone()));
    controllers.spawn(cronjob::run(client.clone()));
    controllers.spawn(namespace::run(client.clone()));
    controllers.spawn(node_ipam::run(client.clone(), config.cluster_cidr));
    controllers.spawn(node_lifecycle::run(client.clone(), pods.clone()));
    controllers.spawn(replicaset::run::<ReplicaSet>(
        client.clone(),
        pods.clone(),
        pods.subscribe(),
    ));
    controllers.spawn(replicaset::run::<ReplicationController>(
        client.clone(),
        pods.clone(),
        pods.subscribe(),
    ));
    controllers.spawn(resource_quota::run(client.clone(), pods.clone(), pods.subscribe()));
    controllers.spawn(statefulset::run(client.clone(), pods.clone(), pods.subscribe()));
    controllers.spawn(volume_binder::run(client));
    controllers.join_all().await;
}

/// Runs the controllers whenever this process holds the election's lease.
pub async fn run_elected(client: kube::Client, election: leader::Election, config: Config, pods: shared::SharedPods) {
    loop {
        leader::lead(client.clone(), &election, run(client.clone(), config, pods.clone())).await;
    }
}
