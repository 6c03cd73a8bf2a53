//! The namespace controller and the service account controller, as upstream's:
//! deleting a namespace deletes everything in it (every namespaced resource that can be
//! deleted), reporting progress in the namespace's conditions, then removes the
//! `kubernetes` finalizer through `namespaces/<name>/finalize`, and the namespace is gone;
//! every namespace that is not being deleted has a `default` ServiceAccount.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use rkube_api::{ResourceInfo, resources};
use serde_json::{Value, json};

use crate::ControllerError;
use crate::workqueue::WorkQueue;

const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose content is still going is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

/// Every namespaced resource that can be listed and deleted, once per stored kind.
fn namespaced() -> Vec<&'static ResourceInfo> {
    resources()
        .iter()
        .filter(|r| r.namespaced() && r.stored_as.is_none())
        .filter(|r| ["list", "delete"].iter().all(|v| r.verbs.contains(v)))
        .collect()
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = rkube_client::now_text();
    json!({"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now})
}

/// The conditions upstream's deleter reports for what is left.
fn conditions(
    remaining: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
    failures: &[String],
) -> Vec<Value> {
    let mut out = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered",
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
        ),
    ];
    out.push(if failures.is_empty() {
        condition(
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
        )
    } else {
        condition(
            "NamespaceDeletionContentFailure",
            "True",
            "ContentDeletionFailed",
            &format!(
                "Failed to delete all resource types, {} remaining: {}",
                failures.len(),
                failures.join(", ")
            ),
        )
    });
    out.push(if remaining.is_empty() {
        condition(
            "NamespaceContentRemaining",
            "False",
            "ContentRemoved",
            "All content successfully removed",
        )
    } else {
        let parts: Vec<String> = remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        condition(
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            &format!("Some resources are remaining: {}", parts.join(", ")),
        )
    });
    out.push(if finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished",
        )
    } else {
        let parts: Vec<String> = finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        condition(
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            &format!(
                "Some content in the namespace has finalizers remaining: {}",
                parts.join(", ")
            ),
        )
    });
    out
}

pub struct Controller {
    client: kube::Client,
    queue: Arc<WorkQueue>,
    namespaces: Store<Namespace>,
}

impl Controller {
    async fn reconcile(&self, name: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(namespace) = self.namespaces.get(&ObjectRef::new(name)) else {
            return Ok(None);
        };
        if namespace.meta().deletion_timestamp.is_none() {
            return self.ensure_default_account(name).await.map(|()| None);
        }
        let finalizers = namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        // Delete every kind's content; count what is left.
        let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        let mut failures = Vec::new();
        for info in namespaced() {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), name, &crate::api_resource(info));
            let listed = match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(err) => {
                    tracing::info!(%err, resource = info.plural, namespace = name, "listing content failed");
                    failures.push(info.plural.to_string());
                    continue;
                }
            };
            for object in &listed {
                if object.metadata.deletion_timestamp.is_none() {
                    let params = DeleteParams::background();
                    match api.delete(&object.name_any(), &params).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(status)) if status.code == 404 => continue,
                        Err(err) => {
                            tracing::info!(%err, resource = info.plural, namespace = name, "deleting content failed");
                            failures.push(info.plural.to_string());
                        }
                    }
                }
            }
            let left = match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(_) => listed,
            };
            if !left.is_empty() {
                let resource = if info.group.is_empty() {
                    info.plural.to_string()
                } else {
                    format!("{}.{}", info.plural, info.group)
                };
                remaining.insert(resource, left.len());
                for finalizer in left.iter().flat_map(|o| o.metadata.finalizers.iter().flatten()) {
                    *held.entry(finalizer.clone()).or_default() += 1;
                }
            }
        }
        failures.dedup();
        let api: Api<Namespace> = Api::all(self.client.clone());
        if !remaining.is_empty() || !failures.is_empty() {
            let status =
                json!({"status": {"phase": "Terminating", "conditions": conditions(&remaining, &held, &failures)}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map_err(|source| ControllerError::api(name, "reporting what remains", source))?;
            return Ok(Some(RECHECK));
        }
        // Everything is gone: the namespace may go too.
        let mut finalized = (*namespace).clone();
        finalized.spec.get_or_insert_default().finalizers =
            Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
        let body = serde_json::to_vec(&finalized)
            .map_err(|e| ControllerError::api(name, "finalizing", kube::Error::SerdeError(e)))?;
        let request = http::Request::put(format!("/api/v1/namespaces/{name}/finalize"))
            .header("Content-Type", "application/json")
            .body(body)
            .map_err(|e| ControllerError::api(name, "finalizing", kube::Error::HttpError(e)))?;
        match self.client.request::<Value>(request).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(source) => Err(ControllerError::api(name, "finalizing", source)),
        }
    }

    /// Upstream's service account controller: a `default` account in every namespace.
    async fn ensure_default_account(&self, namespace: &str) -> Result<(), ControllerError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        if accounts
            .get_opt("default")
            .await
            .map_err(|source| ControllerError::api(namespace, "reading the default service account", source))?
            .is_some()
        {
            return Ok(());
        }
        let mut account = ServiceAccount::default();
        account.metadata.name = Some("default".into());
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => Ok(()),
            // Created meanwhile, or the namespace started terminating: nothing to do.
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 403 => Ok(()),
            Err(source) => Err(ControllerError::api(
                namespace,
                "creating the default service account",
                source,
            )),
        }
    }
}

/// Runs the namespace and service account controllers until the future is dropped.
pub async fn run(client: kube::Client) {
    let (namespaces, writer) = reflector::store::<Namespace>();
    let controller = Arc::new(Controller {
        client: client.clone(),
        queue: WorkQueue::new(),
        namespaces: namespaces.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    {
        let controller = Arc::clone(&controller);
        let events = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim)
            .reflect(writer);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) = event {
                    controller.queue.add(&ns.name_any()).await;
                }
            }
        });
    }
    {
        // A deleted default account comes back.
        let controller = Arc::clone(&controller);
        let events = watcher(Api::<ServiceAccount>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Delete(account)) = event
                    && account.name_any() == "default"
                    && let Some(namespace) = account.namespace()
                {
                    controller.queue.add(&namespace).await;
                }
            }
        });
    }
    namespaces.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(
            &mut tasks,
            &controller.queue.clone(),
            crate::NAMESPACE_WORKERS,
            "namespace",
            move |key| {
                let controller = Arc::clone(&controller);
                async move { controller.reconcile(&key).await }
            },
        );
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_what_remains() {
        let remaining: BTreeMap<String, usize> = [("pods".to_string(), 2)].into();
        let held: BTreeMap<String, usize> = [("example.com/hold".to_string(), 1)].into();
        let out = conditions(&remaining, &held, &[]);
        let find = |kind: &str| out.iter().find(|c| c["type"] == kind).unwrap().clone();
        assert_eq!(
            find("NamespaceContentRemaining")["message"],
            "Some resources are remaining: pods has 2 resource instances"
        );
        assert_eq!(
            find("NamespaceFinalizersRemaining")["message"],
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
        assert_eq!(find("NamespaceDeletionContentFailure")["status"], "False");
    }

    #[test]
    fn every_namespaced_kind_is_emptied() {
        let plurals: Vec<&str> = namespaced().iter().map(|r| r.plural).collect();
        for plural in [
            "pods",
            "deployments",
            "replicasets",
            "services",
            "configmaps",
            "secrets",
            "events",
        ] {
            assert!(plurals.contains(&plural), "{plural} missing");
        }
        assert!(!plurals.contains(&"namespaces") && !plurals.contains(&"nodes"));
    }
}
