//! The Endpoints and EndpointSlice controllers, as upstream's: a Service with a selector
//! gets an Endpoints object of its name and EndpointSlices labelled
//! `kubernetes.io/service-name`, listing the pods it selects that have an address, with
//! target ports resolved (named ones per pod), ready and not-ready addresses (or all ready
//! with `publishNotReadyAddresses`), and terminating pods in the slices with their
//! conditions. Services without a selector are left to their users. What a Service's
//! endpoints should be is a pure function ([`desired`]); the controller writes the
//! difference.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::pods::is_ready;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::shared::{PodEvent, SharedPods, handle_events};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const HEADLESS: &str = "service.kubernetes.io/headless";
const MAX_PER_SLICE: usize = 100;
const WORKERS: usize = 5;

/// (port name, port number, protocol): one Service port as a pod serves it.
pub type ResolvedPort = (String, i32, String);

/// One pod as an endpoint, with the ports it serves the Service's ports on.
#[derive(Debug, Clone, PartialEq)]
pub struct PodEndpoint {
    pub ip: String,
    pub node: Option<String>,
    pub hostname: Option<String>,
    pub target: Value,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// (port name, port number, protocol) per Service port the pod resolves.
    pub ports: Vec<ResolvedPort>,
}

/// Upstream's `ShouldPodBeInEndpoints`.
fn belongs(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    let finished = match restart {
        Some("Never") => matches!(phase, Some("Failed" | "Succeeded")),
        Some("OnFailure") => phase == Some("Succeeded"),
        _ => false,
    };
    let has_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    !finished && has_ip && (include_terminating || pod.metadata.deletion_timestamp.is_none())
}

/// The container port a Service port's target names on this pod.
fn resolve(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The pods a Service selects, as endpoints (terminating ones included: the slices keep
/// them with their conditions; Endpoints drops them).
pub fn desired(service: &Service, pods: &[&Pod]) -> Vec<PodEndpoint> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();
    let mut out = Vec::new();
    for pod in pods.iter().filter(|p| belongs(p, true)) {
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|p| {
                resolve(p, pod).map(|n| {
                    (
                        p.name.clone().unwrap_or_default(),
                        n,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
            })
            .collect();
        // A pod that cannot serve a port (named port missing) is left out for that port;
        // headless Services without ports list pods bare.
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let pod_spec = pod.spec.clone().unwrap_or_default();
        let hostname = pod_spec
            .hostname
            .clone()
            .filter(|_| pod_spec.subdomain.as_deref() == service.metadata.name.as_deref());
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_ready(pod) || publish_not_ready;
        out.push(PodEndpoint {
            ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
            node: pod_spec.node_name.clone(),
            hostname,
            target: json!({"kind": "Pod", "namespace": pod.namespace(), "name": pod.name_any(), "uid": pod.uid()}),
            ready: serving && !terminating,
            serving,
            terminating,
            ports: resolved,
        });
    }
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

/// The Endpoints subsets: addresses grouped by the ports they serve (upstream's
/// `RepackSubsets`), terminating pods left out.
pub fn subsets(endpoints: &[PodEndpoint]) -> Vec<Value> {
    // Ready and not-ready addresses per set of ports.
    type Addresses = (Vec<Value>, Vec<Value>);
    let mut groups: BTreeMap<Vec<ResolvedPort>, Addresses> = BTreeMap::new();
    for e in endpoints.iter().filter(|e| !e.terminating) {
        let mut address = json!({"ip": e.ip, "targetRef": e.target});
        if let Some(node) = &e.node {
            address["nodeName"] = json!(node);
        }
        if let Some(hostname) = &e.hostname {
            address["hostname"] = json!(hostname);
        }
        let mut ports = e.ports.clone();
        ports.sort();
        let group = groups.entry(ports).or_default();
        if e.ready {
            group.0.push(address)
        } else {
            group.1.push(address)
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let mut subset = json!({});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            if !ports.is_empty() {
                let ports: Vec<Value> = ports
                    .iter()
                    .map(|(name, port, protocol)| {
                        let mut p = json!({"port": port, "protocol": protocol});
                        if !name.is_empty() {
                            p["name"] = json!(name);
                        }
                        p
                    })
                    .collect();
                subset["ports"] = json!(ports);
            }
            subset
        })
        .collect()
}

/// The slices' contents: endpoints grouped by port mapping, at most 100 per slice.
pub fn slices(endpoints: &[PodEndpoint]) -> Vec<(Vec<Value>, Vec<Value>)> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Value>> = BTreeMap::new();
    for e in endpoints {
        let mut endpoint = json!({"addresses": [e.ip], "targetRef": e.target,
            "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating}});
        if let Some(node) = &e.node {
            endpoint["nodeName"] = json!(node);
        }
        if let Some(hostname) = &e.hostname {
            endpoint["hostname"] = json!(hostname);
        }
        let mut ports = e.ports.clone();
        ports.sort();
        groups.entry(ports).or_default().push(endpoint);
    }
    let mut out = Vec::new();
    for (ports, endpoints) in groups {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
            .collect();
        for chunk in endpoints.chunks(MAX_PER_SLICE) {
            out.push((chunk.to_vec(), ports.clone()));
        }
    }
    out
}

pub struct Controller {
    client: kube::Client,
    queue: Arc<WorkQueue>,
    services: Store<Service>,
    pods: SharedPods,
    slices: Store<EndpointSlice>,
}

fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

impl Controller {
    async fn reconcile(&self, key: &str) -> Result<(), ControllerError> {
        let (namespace, name) = split_key(key);
        let endpoints_api: Api<Endpoints> = Api::namespaced(self.client.clone(), namespace);
        let slices_api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let ours: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .filter(|s| {
                let labels = s.metadata.labels.clone().unwrap_or_default();
                labels.get(SERVICE_NAME).map(String::as_str) == Some(name)
                    && labels.get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)
            })
            .collect();
        let service = self.services.get(&ObjectRef::new(name).within(namespace));
        let selected = service.as_ref().filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .is_some_and(|sel| !sel.is_empty())
        });
        let Some(service) = selected else {
            // Gone, or without a selector: our objects go; the user's Endpoints stay.
            if service.is_none() {
                crate::ignore_not_found(endpoints_api.delete(name, &DeleteParams::default()).await.map(|_| ()))
                    .map_err(|source| ControllerError::api(key, "deleting endpoints", source))?;
            }
            for slice in ours {
                crate::ignore_not_found(
                    slices_api
                        .delete(&slice.name_any(), &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )
                .map_err(|source| ControllerError::api(key, "deleting a slice", source))?;
            }
            return Ok(());
        };
        let all = self.pods.in_namespace(namespace);
        let pods: Vec<&Pod> = all.iter().map(AsRef::as_ref).filter(|p| selects(service, p)).collect();
        let endpoints = desired(service, &pods);
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        let headless = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        if headless {
            labels.insert(HEADLESS.into(), String::new());
        }
        // Endpoints.
        let wanted_subsets = subsets(&endpoints);
        let current = endpoints_api
            .get_opt(name)
            .await
            .map_err(|source| ControllerError::api(key, "reading endpoints", source))?;
        let current_subsets = current
            .as_ref()
            .and_then(|e| serde_json::to_value(&e.subsets).ok())
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!([]));
        let current_labels = current
            .as_ref()
            .and_then(|e| e.metadata.labels.clone())
            .unwrap_or_default();
        if current.is_none() || current_subsets != json!(wanted_subsets) || current_labels != labels {
            let body = json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "subsets": wanted_subsets});
            let result = match current {
                Some(_) => endpoints_api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"metadata": {"labels": labels}, "subsets": wanted_subsets})),
                    )
                    .await
                    .map(|_| ()),
                None => {
                    let object: Endpoints = serde_json::from_value(body)
                        .map_err(|e| ControllerError::api(key, "building endpoints", kube::Error::SerdeError(e)))?;
                    endpoints_api.create(&PostParams::default(), &object).await.map(|_| ())
                }
            };
            result.map_err(|source| ControllerError::api(key, "writing endpoints", source))?;
        }
        // Slices: rewrite ours in place, create what is missing, delete the rest.
        let mut slice_labels = labels.clone();
        slice_labels.insert(SERVICE_NAME.into(), name.into());
        slice_labels.insert(MANAGED_BY.into(), CONTROLLER_NAME.into());
        let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name, "uid": service.uid(),
                            "controller": true, "blockOwnerDeletion": true}]);
        let mut wanted = slices(&endpoints);
        if wanted.is_empty() {
            // A Service with no endpoints still has one (empty) slice.
            let ports: Vec<Value> = service
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| json!({"name": p.name.clone().unwrap_or_default(), "port": p.port, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())}))
                .collect();
            wanted.push((Vec::new(), ports));
        }
        let mut existing = ours.into_iter();
        for (endpoints, ports) in wanted {
            let content = json!({"addressType": "IPv4", "endpoints": endpoints, "ports": ports});
            match existing.next() {
                Some(slice) => {
                    let have =
                        json!({"addressType": slice.address_type, "endpoints": slice.endpoints, "ports": slice.ports});
                    let have_labels = slice.metadata.labels.clone().unwrap_or_default();
                    if have != content || have_labels != slice_labels {
                        let mut patch = content.clone();
                        patch["metadata"] = json!({"labels": slice_labels});
                        slices_api
                            .patch(&slice.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(|source| ControllerError::api(key, "updating a slice", source))?;
                    }
                }
                None => {
                    let mut body = content.clone();
                    body["apiVersion"] = json!("discovery.k8s.io/v1");
                    body["kind"] = json!("EndpointSlice");
                    body["metadata"] = json!({"generateName": format!("{name}-"), "namespace": namespace,
                                              "labels": slice_labels, "ownerReferences": owner});
                    let slice: EndpointSlice = serde_json::from_value(body)
                        .map_err(|e| ControllerError::api(key, "building a slice", kube::Error::SerdeError(e)))?;
                    slices_api
                        .create(&PostParams::default(), &slice)
                        .await
                        .map_err(|source| ControllerError::api(key, "creating a slice", source))?;
                }
            }
        }
        for extra in existing {
            crate::ignore_not_found(
                slices_api
                    .delete(&extra.name_any(), &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )
            .map_err(|source| ControllerError::api(key, "deleting a slice", source))?;
        }
        Ok(())
    }

    /// The Services a pod's change concerns: those selecting it now, and those whose
    /// slices list it (it may have stopped matching).
    fn services_for(&self, pod: &Pod) -> Vec<String> {
        self.services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace == pod.metadata.namespace)
            .filter(|s| selects(s, pod) || self.lists(s, pod))
            .map(|s| key_of(s.as_ref()))
            .collect()
    }

    /// Whether a Service's slices list the pod (it may have stopped matching).
    fn lists(&self, service: &Service, pod: &Pod) -> bool {
        let uid = pod.uid();
        self.slices.state().iter().any(|slice| {
            slice.metadata.namespace == service.metadata.namespace
                && slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)) == service.metadata.name.as_ref()
                && slice
                    .endpoints
                    .iter()
                    .any(|e| e.target_ref.as_ref().and_then(|t| t.uid.clone()) == uid)
        })
    }
}

/// Runs the controllers until the future is dropped.
pub async fn run(client: kube::Client, pods: SharedPods, pod_events: UnboundedReceiver<PodEvent>) {
    let (services, service_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let controller = Arc::new(Controller {
        client: client.clone(),
        queue: WorkQueue::new(),
        services: services.clone(),
        pods: pods.clone(),
        slices: slices.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    {
        let controller = Arc::clone(&controller);
        let events = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim)
            .reflect(service_writer);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s)) = event {
                    controller.queue.add(&key_of(&s)).await;
                }
            }
        });
    }
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(handle_events(pod_events, move |pod, _| {
            let controller = Arc::clone(&controller);
            async move {
                for key in controller.services_for(&pod) {
                    controller.queue.add(&key).await;
                }
            }
        }));
    }
    {
        let events = watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER_NAME}")),
        )
        .default_backoff()
        .modify(crate::trim)
        .reflect(slice_writer);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while events.next().await.is_some() {}
        });
    }
    services.wait_until_ready().await.ok();
    pods.wait_until_ready().await;
    slices.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(
            &mut tasks,
            &controller.queue.clone(),
            WORKERS,
            "endpoints",
            move |key| {
                let controller = Arc::clone(&controller);
                async move { controller.reconcile(&key).await.map(|()| None) }
            },
        );
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(extra: Value) -> Service {
        let mut s = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        if let (Some(spec), Some(extra)) = (s["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(s).unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, port_name: Option<&str>, deleting: bool) -> Pod {
        let ports = port_name
            .map(|n| json!([{"name": n, "containerPort": 8080}]))
            .unwrap_or(json!([]));
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn named_ports_readiness_and_terminating_pods() {
        let ready = pod("a", "10.42.0.2", true, Some("http"), false);
        let starting = pod("b", "10.42.0.3", false, Some("http"), false);
        let unnamed = pod("c", "10.42.0.4", true, None, false);
        let leaving = pod("d", "10.42.0.5", true, Some("http"), true);
        let no_ip = pod("e", "", true, Some("http"), false);
        let endpoints = desired(&service(json!({})), &[&ready, &starting, &unnamed, &leaving, &no_ip]);
        assert_eq!(
            endpoints.iter().map(|e| e.ip.as_str()).collect::<Vec<_>>(),
            ["10.42.0.2", "10.42.0.3", "10.42.0.5"]
        );
        let subsets = subsets(&endpoints);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.42.0.2");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.42.0.3");
        assert_eq!(
            subsets[0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        let slices = slices(&endpoints);
        let leaving = slices[0].0.iter().find(|e| e["addresses"][0] == "10.42.0.5").unwrap();
        assert_eq!(
            leaving["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_pod_ready() {
        let starting = pod("b", "10.42.0.3", false, Some("http"), false);
        let endpoints = desired(&service(json!({"publishNotReadyAddresses": true})), &[&starting]);
        assert!(endpoints[0].ready);
        assert_eq!(subsets(&endpoints)[0]["addresses"][0]["ip"], "10.42.0.3");
    }
}
