//! NodePorts: a host port can be taken once per node (per protocol and address).

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{FilterResult, NodeInfo, Refusal};

/// (protocol, host IP, host port) of every container port that claims a host port.
pub fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let ip = p
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            Some((protocol, ip, port))
        })
        .collect()
}

pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    let clash = host_ports(pod).into_iter().any(|(protocol, ip, port)| {
        node.used_ports
            .iter()
            .any(|(p, i, n)| *p == protocol && *n == port && (ip == "0.0.0.0" || i == "0.0.0.0" || *i == ip))
    });
    if clash {
        return Err(Refusal::Unschedulable(vec![
            "node(s) didn't have free ports for the requested pod ports".into(),
        ]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn a_host_port_is_taken_once() {
        let on_80 = |ip: &str| {
            pod(json!({"spec": {"containers": [{"name": "c", "image": "x",
                "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]}}))
        };
        let mut n = node("a", json!({}));
        assert!(filter(&on_80(""), &n).is_ok());
        n.add_pod(&std::sync::Arc::new(on_80("10.0.0.1")));
        assert!(filter(&on_80(""), &n).is_err());
        assert!(filter(&on_80("10.0.0.2"), &n).is_ok(), "another address");
        assert!(filter(&pod(json!({})), &n).is_ok());
    }
}
