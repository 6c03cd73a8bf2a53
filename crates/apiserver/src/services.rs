//! Service addresses and node ports: allocated durably, never twice, released on delete.
//!
//! Each allocated cluster IP or node port is a store key created only if absent
//! (`/registry/rkube/serviceips/<ip>`, `/registry/rkube/servicenodeports/<port>`), like
//! upstream's IPAddress objects: the store's create-if-absent makes duplicates impossible
//! however many API servers allocate at once, and the allocation survives restarts.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use rkube_api::ResourceInfo;
use rkube_store::{Bytes, RangeRequest, StoreError};
use serde_json::{Value, json};

use crate::State;
use crate::object::{general_store_error, invalid};
use crate::response::ApiError;

const IP_PREFIX: &str = "/registry/rkube/serviceips/";
const PORT_PREFIX: &str = "/registry/rkube/servicenodeports/";

/// The service CIDR and node port range.
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    pub base: Ipv4Addr,
    pub prefix: u8,
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        Self {
            base: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceNetwork {
    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix.min(30)))
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
        offset > 0 && offset < self.size() - 1
    }

    /// The first address: the `kubernetes` service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.base, self.prefix)
    }
}

/// Upstream leaves the low end of each range for addresses and ports users ask for (the
/// DNS service's 10.43.0.10, say): dynamic allocation starts above this band.
fn static_band(size: u32, max: u32) -> u32 {
    (size / 16).clamp(16, max).min(size / 2)
}

fn random() -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn wants_node_ports(service: &Value) -> bool {
    matches!(
        service.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

fn cluster_ip(service: &Value) -> Option<&str> {
    service
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
}

/// The allocation keys a stored service holds.
pub(crate) fn keys_of(service: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if let Some(ip) = cluster_ip(service).filter(|ip| *ip != "None") {
        keys.insert(format!("{IP_PREFIX}{ip}"));
    }
    for port in service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64) {
            keys.insert(format!("{PORT_PREFIX}{node_port}"));
        }
    }
    keys
}

pub(crate) async fn release(state: &State, keys: impl IntoIterator<Item = String>) {
    for key in keys {
        match state.store.delete(&key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(err) => tracing::warn!(key, %err, "releasing a service allocation failed"),
        }
    }
}

/// Claims one key; false if someone holds it.
async fn claim(state: &State, key: &str, owner: &str) -> Result<bool, ApiError> {
    match state.store.create(key, Bytes::copy_from_slice(owner.as_bytes())).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => Ok(false),
        Err(err) => Err(general_store_error(err)),
    }
}

async fn taken(state: &State, prefix: &str) -> Result<BTreeSet<String>, ApiError> {
    let page = state
        .store
        .range(RangeRequest::prefix(prefix))
        .await
        .map_err(general_store_error)?;
    Ok(page
        .kvs
        .into_iter()
        .map(|kv| kv.key[prefix.len()..].to_string())
        .collect())
}

/// Picks and claims a free value from `candidates` (offsets `first..last` of a range),
/// starting at a random point so concurrent servers rarely race for the same one.
async fn claim_free(
    state: &State,
    prefix: &str,
    owner: &str,
    (first, last): (u32, u32),
    render: impl Fn(u32) -> String,
) -> Result<Option<String>, ApiError> {
    let span = last.saturating_sub(first) + 1;
    for _ in 0..8 {
        let used = taken(state, prefix).await?;
        let start = random() % span;
        let free = (0..span)
            .map(|i| render(first + (start + i) % span))
            .find(|candidate| !used.contains(candidate));
        let Some(candidate) = free else { return Ok(None) };
        if claim(state, &format!("{prefix}{candidate}"), owner).await? {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Fills in and claims the service's cluster IP and node ports. On update (`old` given)
/// values the client left out are kept from the old object, as upstream does, and the
/// cluster IP may not change. Returns the keys claimed now, for rollback.
pub(crate) async fn allocate(
    state: &State,
    info: &ResourceInfo,
    (ns, name): (&str, &str),
    service: &mut Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let network = &state.services;
    let owner = format!("{ns}/{name}");
    let mut claimed = Vec::new();
    let result = allocate_inner(state, info, name, &owner, network, service, old, &mut claimed).await;
    if result.is_err() {
        release(state, claimed.clone()).await;
    }
    result.map(|()| claimed)
}

#[allow(clippy::too_many_arguments)]
async fn allocate_inner(
    state: &State,
    info: &ResourceInfo,
    name: &str,
    owner: &str,
    network: &ServiceNetwork,
    service: &mut Value,
    old: Option<&Value>,
    claimed: &mut Vec<String>,
) -> Result<(), ApiError> {
    let external_name = service.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    let old_keys = old.map(keys_of).unwrap_or_default();
    let refuse = |field: &str, value: String, message: String| {
        invalid(
            info,
            name,
            vec![(field.to_string(), format!("Invalid value: {value}"), message)],
        )
    };

    // Cluster IP.
    if let Some(old_ip) = old.and_then(cluster_ip).map(str::to_string) {
        match cluster_ip(service) {
            None if !external_name => service["spec"]["clusterIP"] = json!(old_ip),
            Some(new_ip) if new_ip != old_ip && !external_name => {
                return Err(refuse(
                    "spec.clusterIP",
                    format!("{new_ip:?}"),
                    "field is immutable".into(),
                ));
            }
            _ => {}
        }
    }
    if !external_name {
        match cluster_ip(service).map(str::to_string) {
            Some(ip) if ip == "None" => {}
            Some(ip) => {
                let key = format!("{IP_PREFIX}{ip}");
                if !old_keys.contains(&key) {
                    let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                        refuse(
                            "spec.clusterIPs",
                            format!("[]string{{{ip:?}}}"),
                            "must be a valid IP address".into(),
                        )
                    })?;
                    if !network.contains(parsed) {
                        return Err(refuse(
                            "spec.clusterIPs",
                            format!("[]string{{{ip:?}}}"),
                            format!(
                                "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                network.cidr()
                            ),
                        ));
                    }
                    if !claim(state, &key, owner).await? {
                        return Err(refuse(
                            "spec.clusterIPs",
                            format!("[]string{{{ip:?}}}"),
                            format!("failed to allocate IP {ip}: provided IP is already allocated"),
                        ));
                    }
                    claimed.push(key);
                }
            }
            None => {
                let size = network.size();
                let band = static_band(size, 256);
                let base = u32::from(network.base);
                let ip = claim_free(state, IP_PREFIX, owner, (band, size - 2), |offset| {
                    Ipv4Addr::from(base + offset).to_string()
                })
                .await?
                .ok_or_else(|| {
                    ApiError::internal(format!(
                        "failed to allocate a serviceIP: range {} is full",
                        network.cidr()
                    ))
                })?;
                claimed.push(format!("{IP_PREFIX}{ip}"));
                service["spec"]["clusterIP"] = json!(ip);
            }
        }
        if let Some(ip) = cluster_ip(service).map(str::to_string) {
            service["spec"]["clusterIPs"] = json!([ip]);
            if ip != "None" || service.pointer("/spec/ipFamilies").is_none() {
                service["spec"]["ipFamilies"] = json!(["IPv4"]);
                service["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
    }

    // Node ports: kept from the old object when left out, claimed when new.
    let wants = !external_name && wants_node_ports(service);
    let type_name = service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(ports) = service.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let (low, high) = (
        u32::from(*network.node_ports.start()),
        u32::from(*network.node_ports.end()),
    );
    for (index, port) in ports.iter_mut().enumerate() {
        let Some(port) = port.as_object_mut() else { continue };
        let field = format!("spec.ports[{index}].nodePort");
        // 0 is Go's zero value: no port asked for (protobuf clients always send it).
        let requested = port.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0);
        if !wants {
            if requested.is_some() {
                return Err(invalid(
                    info,
                    name,
                    vec![(
                        field,
                        "Forbidden".into(),
                        format!("may not be used when `type` is '{type_name}'"),
                    )],
                ));
            }
            port.remove("nodePort");
            continue;
        }
        let requested = requested.or_else(|| {
            old_ports
                .iter()
                .find(|p| p.get("port") == port.get("port") && p.get("protocol") == port.get("protocol"))
                .and_then(|p| p.get("nodePort"))
                .and_then(Value::as_i64)
        });
        match requested {
            Some(number) => {
                let key = format!("{PORT_PREFIX}{number}");
                if !old_keys.contains(&key) {
                    if number < i64::from(low) || number > i64::from(high) {
                        return Err(refuse(
                            &field,
                            number.to_string(),
                            format!(
                                "provided port is not in the valid range. The range of valid ports is {low}-{high}"
                            ),
                        ));
                    }
                    if !claim(state, &key, owner).await? {
                        return Err(refuse(
                            &field,
                            number.to_string(),
                            "provided port is already allocated".into(),
                        ));
                    }
                    claimed.push(key);
                }
                port.insert("nodePort".into(), json!(number));
            }
            None => {
                let span = high - low + 1;
                let band = static_band(span, 128);
                let number = claim_free(state, PORT_PREFIX, owner, (low + band, high), |p| p.to_string())
                    .await?
                    .ok_or_else(|| {
                        ApiError::internal(format!("failed to allocate a nodePort: range {low}-{high} is full"))
                    })?;
                claimed.push(format!("{PORT_PREFIX}{number}"));
                port.insert("nodePort".into(), json!(number.parse::<i64>().unwrap_or_default()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let network = ServiceNetwork::default();
        assert!(network.contains("10.43.0.1".parse().unwrap()));
        assert!(network.contains("10.43.255.254".parse().unwrap()));
        assert!(!network.contains("10.43.0.0".parse().unwrap()));
        assert!(!network.contains("10.43.255.255".parse().unwrap()));
        assert!(!network.contains("10.42.0.1".parse().unwrap()));
        assert_eq!(network.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(static_band(65536, 256), 256);
        assert_eq!(static_band(2768, 128), 128);
        assert_eq!(static_band(16, 256), 8);
    }

    #[test]
    fn keys() {
        let svc = json!({"spec": {"clusterIP": "10.43.0.9", "ports": [{"port": 80, "nodePort": 30080}, {"port": 81}]}});
        let keys: Vec<String> = keys_of(&svc).into_iter().collect();
        assert_eq!(
            keys,
            vec![format!("{IP_PREFIX}10.43.0.9"), format!("{PORT_PREFIX}30080")]
        );
        assert!(keys_of(&json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
