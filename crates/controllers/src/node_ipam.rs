//! Node IPAM, as upstream's range allocator: every node without a pod CIDR gets the lowest
//! free /24 of the cluster CIDR (`spec.podCIDR` and `spec.podCIDRs`); CIDRs of deleted
//! nodes are free again; a node whose CIDR lies outside the cluster CIDR is left as it is.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use rkube_client::events::{Recorder, reference};
use serde_json::json;
use tokio::sync::Mutex;

const NODE_MASK: u8 = 24;

/// The /24 blocks of a cluster CIDR, by index.
#[derive(Debug, Clone, Copy)]
pub struct Allocator {
    base: u32,
    blocks: u32,
}

impl Allocator {
    pub fn new((network, prefix): (Ipv4Addr, u8)) -> Self {
        let prefix = prefix.min(NODE_MASK);
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        Self {
            base: u32::from(network) & mask,
            blocks: 1 << (NODE_MASK - prefix),
        }
    }

    pub fn cidr(&self, index: u32) -> String {
        format!("{}/{NODE_MASK}", Ipv4Addr::from(self.base + (index << 8)))
    }

    /// The block a CIDR is, if it is one of ours.
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        let (address, prefix) = cidr.split_once('/')?;
        let address: Ipv4Addr = address.parse().ok()?;
        if prefix != NODE_MASK.to_string() {
            return None;
        }
        let offset = u32::from(address).checked_sub(self.base)?;
        (offset % 256 == 0 && offset / 256 < self.blocks).then_some(offset / 256)
    }

    pub fn lowest_free(&self, used: &BTreeSet<u32>) -> Option<u32> {
        (0..self.blocks).find(|i| !used.contains(i))
    }
}

/// Runs the allocator until the future is dropped.
pub async fn run(client: kube::Client, cluster_cidr: (Ipv4Addr, u8)) {
    let allocator = Allocator::new(cluster_cidr);
    let recorder = Recorder::new(client.clone(), "node-ipam-controller");
    let used: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut events = std::pin::pin!(
        watcher(nodes.clone(), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim)
    );
    let mut waiting: Vec<Node> = Vec::new();
    let mut listing = true;
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(watcher::Event::Init) => {
                used.lock().await.clear();
                listing = true;
                continue;
            }
            Ok(watcher::Event::InitApply(node)) => {
                // Allocate only once every existing allocation is known.
                waiting.push(node);
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                listing = false;
                {
                    let mut taken = used.lock().await;
                    for node in &waiting {
                        if let Some(i) = node
                            .spec
                            .as_ref()
                            .and_then(|s| s.pod_cidr.as_deref())
                            .and_then(|c| allocator.index_of(c))
                        {
                            taken.insert(i);
                        }
                    }
                }
                for node in std::mem::take(&mut waiting) {
                    allocate(&nodes, &recorder, &allocator, &used, &node).await;
                }
                continue;
            }
            Ok(watcher::Event::Apply(node)) => node,
            Ok(watcher::Event::Delete(node)) => {
                if let Some(i) = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_deref())
                    .and_then(|c| allocator.index_of(c))
                {
                    used.lock().await.remove(&i);
                }
                continue;
            }
            Err(err) => {
                tracing::debug!(%err, "node watch failed; retrying");
                continue;
            }
        };
        if !listing {
            allocate(&nodes, &recorder, &allocator, &used, &node).await;
        }
    }
}

async fn allocate(
    nodes: &Api<Node>,
    recorder: &Recorder,
    allocator: &Allocator,
    used: &Mutex<BTreeSet<u32>>,
    node: &Node,
) {
    if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
        if let Some(i) = allocator.index_of(cidr) {
            used.lock().await.insert(i);
        }
        return;
    }
    let mut taken = used.lock().await;
    let Some(index) = allocator.lowest_free(&taken) else {
        drop(taken);
        let message = format!("Node {} status is now: CIDRNotAvailable", node.name_any());
        recorder
            .emit(&reference(node), "Normal", "CIDRNotAvailable", &message)
            .await;
        return;
    };
    taken.insert(index);
    drop(taken);
    let cidr = allocator.cidr(index);
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match nodes
        .patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => tracing::info!(node = node.name_any(), cidr, "allocated a pod CIDR"),
        Err(err) => {
            used.lock().await.remove(&index);
            tracing::warn!(%err, node = node.name_any(), "allocating a pod CIDR failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_the_cluster_cidr() {
        let a = Allocator::new((Ipv4Addr::new(10, 42, 0, 0), 16));
        assert_eq!(a.cidr(0), "10.42.0.0/24");
        assert_eq!(a.cidr(255), "10.42.255.0/24");
        assert_eq!(a.index_of("10.42.7.0/24"), Some(7));
        assert_eq!(a.index_of("10.65.44.0/24"), None);
        assert_eq!(a.index_of("10.42.7.0/25"), None);
        let used: BTreeSet<u32> = [0, 1, 3].into();
        assert_eq!(a.lowest_free(&used), Some(2));
        let full: BTreeSet<u32> = (0..256).collect();
        assert_eq!(a.lowest_free(&full), None);
    }
}
