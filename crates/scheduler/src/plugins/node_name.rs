//! NodeName: a pod that names its node fits only there.

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{FilterResult, NodeInfo, Refusal};

pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(name) if !name.is_empty() && name != node.name => Err(Refusal::Unresolvable(vec![
            "node(s) didn't match the requested node name".into(),
        ])),
        _ => Ok(()),
    }
}
