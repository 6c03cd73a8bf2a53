//! The controller manager in `rkube server`, on hollow nodes: ReplicaSets and
//! ReplicationControllers keep their replicas (creating, deleting, adopting, releasing),
//! report their status, and record their events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod, ReplicationController};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rkube_testkit::{Control, HollowNodes, HollowOptions, eventually};
use serde_json::json;

mod common;

const WITHIN: Duration = Duration::from_secs(30);

/// One document of a seed manifest, as users copy it.
fn seed_document(file: &str, index: usize) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/examples/seed")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n---\n").nth(index).unwrap().to_string()
}

/// `kubectl rollout status` of `what` (with `-n` and the like), which must succeed in time.
fn rollout_status(kubectl: &rkube_testkit::Kubectl, what: &[&str]) -> String {
    let mut args = vec!["rollout", "status", "--timeout=90s"];
    args.extend_from_slice(what);
    common::ok(kubectl.run(&args).unwrap())
}

async fn owned_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_keep_their_replicas() {
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(
        client.clone(),
        HollowOptions {
            count: 2,
            ..HollowOptions::default()
        },
    )
    .await
    .unwrap();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &rs).await.unwrap();
    let status = |want: i32| {
        let sets = sets.clone();
        async move {
            eventually(&format!("{want} ready replicas"), WITHIN, async || {
                let rs = sets.get("web").await.ok()?;
                let status = rs.status?;
                (status.replicas == want
                    && status.ready_replicas.unwrap_or(0) == want
                    && status.available_replicas.unwrap_or(0) == want
                    && status.observed_generation == rs.metadata.generation)
                    .then_some(())
            })
            .await
        }
    };
    status(3).await;
    // The controller manager writes as upstream's does, named after its user agent.
    let rs = sets.get("web").await.unwrap();
    let managers: Vec<(&str, Option<&str>)> = rs
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.as_deref().unwrap_or_default(), m.subresource.as_deref()))
        .collect();
    assert!(
        managers.contains(&("kube-controller-manager", Some("status"))),
        "{managers:?}"
    );
    let running = owned_pods(&pods, "app=web").await;
    assert_eq!(running.len(), 3);
    for pod in &running {
        assert!(pod.metadata.name.as_deref().unwrap().starts_with("web-"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ReplicaSet", "web", Some(true))
        );
    }
    let out = common::ok(server.kubectl().run(&["get", "rs", "web"]).unwrap());
    assert!(
        out.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>()[1..4] == ["3", "3", "3"],
        "{out}"
    );

    // A deleted pod is replaced.
    let victim = running[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default()).await.unwrap();
    eventually("a replacement", WITHIN, async || {
        let now = owned_pods(&pods, "app=web").await;
        (now.len() == 3 && now.iter().all(|p| p.metadata.name.as_deref() != Some(&victim))).then_some(())
    })
    .await;
    status(3).await;

    // Scaled down: the extra pods go.
    let scale = json!({"spec": {"replicas": 1}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    status(1).await;
    eventually("two pods gone", WITHIN, async || {
        (owned_pods(&pods, "app=web").await.len() == 1).then_some(())
    })
    .await;

    // An orphan that matches is adopted (and is one too many, so one goes); a pod whose
    // labels stop matching is released and replaced.
    let orphan: Pod = serde_json::from_value(json!({"metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    eventually("the orphan adopted or deleted", WITHIN, async || {
        let now = owned_pods(&pods, "app=web").await;
        let stray = now.iter().find(|p| p.metadata.name.as_deref() == Some("stray"));
        let adopted = stray.is_none_or(|p| p.metadata.owner_references.is_some());
        (now.len() == 1 && adopted).then_some(())
    })
    .await;
    let kept = owned_pods(&pods, "app=web").await[0].metadata.name.clone().unwrap();
    let relabel = json!({"metadata": {"labels": {"app": "elsewhere"}}});
    pods.patch(&kept, &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    let released = eventually("the relabelled pod released", WITHIN, async || {
        let pod = pods.get(&kept).await.ok()?;
        pod.metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty())
            .then_some(pod.clone())
    })
    .await;
    assert_eq!(released.metadata.labels.unwrap()["app"], "elsewhere");
    status(1).await;

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default().fields("involvedObject.name=web,involvedObject.kind=ReplicaSet"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "SuccessfulCreate"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "SuccessfulDelete"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_and_bad_templates() {
    let (_server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), HollowOptions::default())
        .await
        .unwrap();
    let controllers: Api<ReplicationController> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rc: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "legacy"},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "legacy"}},
                 "spec": {"containers": [{"name": "web", "image": "nginx:1.7.9"}]}}}
    }))
    .unwrap();
    controllers.create(&PostParams::default(), &rc).await.unwrap();
    eventually("two ready replicas", WITHIN, async || {
        let status = controllers.get("legacy").await.ok()?.status?;
        (status.ready_replicas == Some(2)).then_some(())
    })
    .await;
    assert_eq!(owned_pods(&pods, "app=legacy").await.len(), 2);

    // A template whose pods admission refuses: the failure shows in a condition and an event.
    let bad: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "bad"}},
                 "template": {"metadata": {"labels": {"app": "bad"}},
                              "spec": {"priorityClassName": "missing",
                                       "containers": [{"name": "web", "image": "nginx"}]}}}
    }))
    .unwrap();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    sets.create(&PostParams::default(), &bad).await.unwrap();
    let condition = eventually("a ReplicaFailure condition", WITHIN, async || {
        let conditions = sets.get("bad").await.ok()?.status?.conditions?;
        conditions.into_iter().find(|c| c.type_ == "ReplicaFailure")
    })
    .await;
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_deref()),
        ("True", Some("FailedCreate"))
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let failed = eventually("a FailedCreate event", WITHIN, async || {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=bad"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreate"))
    })
    .await;
    assert_eq!(
        failed.message.unwrap(),
        "Error creating: pods \"bad-\" is forbidden: no PriorityClass with name missing was found"
    );
}

fn fleet(prefix: &str, count: usize, zone: &str) -> HollowOptions {
    HollowOptions {
        count,
        prefix: prefix.into(),
        labels: [("zone".to_string(), zone.to_string())].into(),
        ..HollowOptions::default()
    }
}

/// shared/examples/seed/15 as users apply it: its Deployment waits, saying why, while no
/// node is labelled zone=dmz, then lands only on dmz nodes; a new template rolls out
/// (history, status, undo) and scaling follows `kubectl scale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_on_labelled_nodes() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _lan = HollowNodes::start(client.clone(), fleet("lan", 1, "lan"))
        .await
        .unwrap();
    let kubectl = server.kubectl();
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/examples/seed/15-nodeselector-nodeport.yaml");
    common::ok(kubectl.run(&["create", "-f", seed.to_str().unwrap()]).unwrap());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let waiting = eventually("the replicas to report why they wait", WITHIN, async || {
        let pending = owned_pods(&pods, "app=dmz-app").await;
        let name = pending.first()?.metadata.name.clone()?;
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert_eq!(
        waiting.message.as_deref(),
        Some(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. \
             preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        )
    );
    let _dmz = HollowNodes::start(client.clone(), fleet("dmz", 2, "dmz"))
        .await
        .unwrap();
    rollout_status(&kubectl, &["deployment/dmz-app"]);
    let running = owned_pods(&pods, "app=dmz-app").await;
    assert_eq!(running.len(), 2);
    for pod in &running {
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(node.starts_with("dmz-"), "{node}");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = deployments.get("dmz-app").await.unwrap();
    let status = d.status.unwrap();
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.ready_replicas,
            status.available_replicas
        ),
        (Some(2), Some(2), Some(2), Some(2))
    );
    let conditions: Vec<(String, String, String)> = status
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason.unwrap_or_default()))
        .collect();
    assert!(
        conditions.contains(&("Available".into(), "True".into(), "MinimumReplicasAvailable".into())),
        "{conditions:?}"
    );
    assert!(
        conditions.contains(&("Progressing".into(), "True".into(), "NewReplicaSetAvailable".into())),
        "{conditions:?}"
    );
    assert_eq!(
        d.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );

    // A new template: a second ReplicaSet takes over, the first is scaled to 0.
    let update = json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "nginx 1.27"}},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}}}});
    deployments
        .patch("dmz-app", &PatchParams::default(), &Patch::Merge(&update))
        .await
        .unwrap();
    rollout_status(&kubectl, &["deployment/dmz-app"]);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let mut listed: Vec<(String, i32, String)> = sets
        .list(&ListParams::default().labels("app=dmz-app"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|rs| {
            let revision = rs.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"].clone();
            (revision, rs.spec.unwrap().replicas.unwrap(), rs.metadata.name.unwrap())
        })
        .collect();
    listed.sort();
    assert_eq!((listed[0].0.as_str(), listed[0].1), ("1", 0));
    assert_eq!((listed[1].0.as_str(), listed[1].1), ("2", 2));
    assert!(listed[1].2.starts_with("dmz-app-"));
    let images: Vec<String> = owned_pods(&pods, "app=dmz-app")
        .await
        .into_iter()
        .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
        .collect();
    assert_eq!(images, ["nginx:1.27", "nginx:1.27"]);
    let history = common::ok(kubectl.run(&["rollout", "history", "deployment/dmz-app"]).unwrap());
    assert!(history.contains("nginx 1.27"), "{history}");

    // Undo goes back to the first template (as revision 3).
    common::ok(kubectl.run(&["rollout", "undo", "deployment/dmz-app"]).unwrap());
    rollout_status(&kubectl, &["deployment/dmz-app"]);
    let images: Vec<String> = owned_pods(&pods, "app=dmz-app")
        .await
        .into_iter()
        .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
        .collect();
    assert_eq!(images, ["nginx:1.7.9", "nginx:1.7.9"]);
    let d = deployments.get("dmz-app").await.unwrap();
    assert_eq!(
        d.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );

    // Scaling.
    common::ok(kubectl.run(&["scale", "deployment/dmz-app", "--replicas=4"]).unwrap());
    rollout_status(&kubectl, &["deployment/dmz-app"]);
    assert_eq!(owned_pods(&pods, "app=dmz-app").await.len(), 4);
}

/// `kubectl delete` with each propagation policy: Background (the default) takes the
/// dependents after the owner, Orphan leaves them without the owner, Foreground deletes
/// them first and the owner last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_propagates_as_asked() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), HollowOptions::default())
        .await
        .unwrap();
    let kubectl = server.kubectl();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let dir = tempfile::tempdir().unwrap();
    let create = async |name: &str| {
        // (`kubectl create deployment` sends protobuf, which comes with issue 4.)
        let manifest = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 2\n  \
             selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
             spec: {{containers: [{{name: web, image: 'nginx:1.27'}}]}}\n"
        );
        common::ok(common::apply_file(
            &kubectl,
            dir.path(),
            &format!("{name}.yaml"),
            &manifest,
            "create",
        ));
        common::ok(
            kubectl
                .run(&["rollout", "status", &format!("deployment/{name}"), "--timeout=60s"])
                .unwrap(),
        );
    };
    let remaining = async |selector: &str| -> (usize, usize) {
        let sets = sets
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .len();
        let pods = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .len();
        (sets, pods)
    };

    create("background").await;
    common::ok(kubectl.run(&["delete", "deployment", "background"]).unwrap());
    eventually("its replica set and pods gone", WITHIN, async || {
        (remaining("app=background").await == (0, 0)).then_some(())
    })
    .await;

    create("orphaned").await;
    common::ok(
        kubectl
            .run(&["delete", "deployment", "orphaned", "--cascade=orphan"])
            .unwrap(),
    );
    eventually("the deployment gone", WITHIN, async || {
        deployments.get_opt("orphaned").await.ok()?.is_none().then_some(())
    })
    .await;
    let left = sets
        .list(&ListParams::default().labels("app=orphaned"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1, "the replica set stays");
    assert!(left[0].metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()));
    assert_eq!(remaining("app=orphaned").await, (1, 2));

    create("foreground").await;
    common::ok(
        kubectl
            .run(&[
                "delete",
                "deployment",
                "foreground",
                "--cascade=foreground",
                "--wait=false",
            ])
            .unwrap(),
    );
    let held = deployments.get_opt("foreground").await.unwrap();
    if let Some(held) = held {
        // Until its dependents are gone it stays, marked for deletion.
        assert!(held.metadata.deletion_timestamp.is_some());
    }
    eventually("everything gone, the owner last", WITHIN, async || {
        let gone = deployments.get_opt("foreground").await.ok()?.is_none();
        (gone && remaining("app=foreground").await == (0, 0)).then_some(())
    })
    .await;

    // A dangling owner of a served kind takes its dependent; an owner of a kind this
    // server does not know does not.
    use k8s_openapi::api::core::v1::ConfigMap;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, api_version, kind) in [("foreign", "example.com/v1", "Widget"), ("dangling", "v1", "ConfigMap")] {
        let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [
            {"apiVersion": api_version, "kind": kind, "name": "gone", "uid": "00000000-0000-0000-0000-000000000000"}]}}))
        .unwrap();
        maps.create(&PostParams::default(), &map).await.unwrap();
    }
    eventually("the dangling dependent collected", WITHIN, async || {
        maps.get_opt("dangling").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(maps.get_opt("foreign").await.unwrap().is_some());
}

/// A namespace gets its `default` ServiceAccount; deleting it deletes everything in it
/// (reporting what remains, here a ConfigMap held by a finalizer), then the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_deleted_with_their_content() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), HollowOptions::default())
        .await
        .unwrap();
    let kubectl = server.kubectl();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let shop: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    namespaces.create(&PostParams::default(), &shop).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
    eventually("the default service account", WITHIN, async || {
        accounts.get_opt("default").await.ok()?
    })
    .await;
    accounts.delete("default", &DeleteParams::default()).await.unwrap();
    eventually("the default service account back", WITHIN, async || {
        accounts.get_opt("default").await.ok()?
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let content = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  replicas: 2\n  \
                   selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
                   spec: {containers: [{name: web, image: 'nginx:1.27'}]}\n---\napiVersion: v1\nkind: ConfigMap\n\
                   metadata: {name: held, namespace: shop, finalizers: [example.com/hold]}\ndata: {a: b}\n";
    common::ok(common::apply_file(&kubectl, dir.path(), "shop.yaml", content, "create"));
    rollout_status(&kubectl, &["-n", "shop", "deployment/web"]);

    // The content finalizer changes only through `finalize`, not by an update.
    let cleared = namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"finalizers": []}})),
        )
        .await
        .unwrap();
    assert_eq!(cleared.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);
    common::ok(kubectl.run(&["delete", "namespace", "shop", "--wait=false"]).unwrap());
    let condition = eventually("the held ConfigMap reported", WITHIN, async || {
        let conditions = namespaces.get("shop").await.ok()?.status?.conditions?;
        conditions
            .into_iter()
            .find(|c| c.type_ == "NamespaceFinalizersRemaining" && c.status == "True")
    })
    .await;
    assert_eq!(
        condition.message.as_deref(),
        Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    eventually("the pods gone", WITHIN, async || {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let release = json!({"metadata": {"finalizers": null}});
    maps.patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    eventually("the namespace gone", WITHIN, async || {
        namespaces.get_opt("shop").await.ok()?.is_none().then_some(())
    })
    .await;
}

/// shared/examples/seed/12 with pods behind it: selector Services get Endpoints and
/// EndpointSlices of the ready pods (both ports of the multi-port one); the hand-written
/// Endpoints of the selector-less Service stay as written; a pod that stops being ready
/// moves to notReadyAddresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_endpoints_of_their_pods() {
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), HollowOptions::default())
        .await
        .unwrap();
    let kubectl = server.kubectl();
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed/12-services.yaml");
    common::ok(kubectl.run(&["create", "-f", seed.to_str().unwrap()]).unwrap());
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "myapp"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "MyApp"}},
                 "template": {"metadata": {"labels": {"app": "MyApp"}},
                              "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &rs).await.unwrap();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ready = async |name: &str, count: usize| {
        eventually(&format!("{count} ready addresses for {name}"), WITHIN, async || {
            let e = endpoints.get_opt(name).await.ok()??;
            let subsets = e.subsets?;
            let addresses = subsets.first()?.addresses.clone().unwrap_or_default();
            (addresses.len() == count).then_some(subsets)
        })
        .await
    };
    let subsets = ready("my-multiport-service", 2).await;
    let mut ports: Vec<(String, i32)> = subsets[0]
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    ports.sort();
    assert_eq!(ports, [("http".to_string(), 9376), ("https".to_string(), 9377)]);
    let subsets = ready("my-service", 2).await;
    let address = &subsets[0].addresses.as_ref().unwrap()[0];
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ips: Vec<String> = owned_pods(&pods, "app=MyApp")
        .await
        .into_iter()
        .filter_map(|p| p.status?.pod_ip)
        .collect();
    assert!(ips.contains(&address.ip), "{} not in {ips:?}", address.ip);
    assert_eq!(address.target_ref.as_ref().unwrap().kind.as_deref(), Some("Pod"));

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let listed = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=my-service"))
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].endpoints.len(), 2);
    assert!(
        listed[0]
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().unwrap().ready == Some(true))
    );
    assert_eq!(listed[0].metadata.owner_references.as_ref().unwrap()[0].kind, "Service");

    let external = endpoints.get("my-external-service").await.unwrap();
    assert_eq!(
        external.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        "10.0.0.3"
    );

    // Deleting a Service takes its Endpoints and slices with it.
    common::ok(kubectl.run(&["delete", "service", "my-service"]).unwrap());
    eventually("my-service's endpoints gone", WITHIN, async || {
        let gone = endpoints.get_opt("my-service").await.ok()?.is_none();
        let slices_gone = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=my-service"))
            .await
            .ok()?
            .items
            .is_empty();
        (gone && slices_gone).then_some(())
    })
    .await;
}

/// Jobs as shared/examples/seed/19 has one (3 completions, 2 at a time), indexed ones,
/// suspended ones, deadlines, and a TTL that takes the finished Job and its pods away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_to_completion() {
    use k8s_openapi::api::batch::v1::Job;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _fast = HollowNodes::start(client.clone(), HollowOptions::default())
        .await
        .unwrap();
    // Pods on these run for a minute: long enough for a deadline to pass.
    let _slow = HollowNodes::start(
        client.clone(),
        HollowOptions {
            prefix: "slow".into(),
            labels: [("speed".to_string(), "slow".to_string())].into(),
            taints: vec![json!({"key": "slow", "value": "yes", "effect": "NoSchedule"})],
            finish_after: Duration::from_secs(60),
            ..HollowOptions::default()
        },
    )
    .await
    .unwrap();
    let kubectl = server.kubectl();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let dir = tempfile::tempdir().unwrap();
    // The Job of seed 19 (its CronJob is another test's).
    let job_only = seed_document("19-job-cronjob.yaml", 0);
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "once.yaml",
        &job_only,
        "create",
    ));
    common::ok(
        kubectl
            .run(&["wait", "--for=condition=complete", "job/once", "--timeout=60s"])
            .unwrap(),
    );
    let status = jobs.get("once").await.unwrap().status.unwrap();
    assert_eq!((status.succeeded, status.failed, status.active), (Some(3), None, None));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let kinds: Vec<String> = status.conditions.unwrap().into_iter().map(|c| c.type_).collect();
    assert_eq!(kinds, ["SuccessCriteriaMet", "Complete"]);
    let table = common::ok(kubectl.run(&["get", "job", "once"]).unwrap());
    assert!(table.contains("Complete") && table.contains("3/3"), "{table}");

    let indexed = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: indexed}\nspec:\n  completions: 3\n  parallelism: 3\n  \
                   completionMode: Indexed\n  template:\n    spec:\n      restartPolicy: Never\n      \
                   containers: [{name: work, image: busybox}]\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "indexed.yaml",
        indexed,
        "create",
    ));
    common::ok(
        kubectl
            .run(&["wait", "--for=condition=complete", "job/indexed", "--timeout=60s"])
            .unwrap(),
    );
    assert_eq!(
        jobs.get("indexed")
            .await
            .unwrap()
            .status
            .unwrap()
            .completed_indexes
            .as_deref(),
        Some("0-2")
    );
    let mut indexes: Vec<String> = pods
        .list(&ListParams::default().labels("job-name=indexed"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.annotations.unwrap()["batch.kubernetes.io/job-completion-index"].clone())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);

    // Suspended: no pods until resumed.
    let suspended = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: later}\nspec:\n  suspend: true\n  template:\n    \
                     spec:\n      restartPolicy: Never\n      containers: [{name: work, image: busybox}]\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "later.yaml",
        suspended,
        "create",
    ));
    eventually("the Suspended condition", WITHIN, async || {
        let conditions = jobs.get("later").await.ok()?.status?.conditions?;
        conditions
            .into_iter()
            .find(|c| c.type_ == "Suspended" && c.status == "True")
    })
    .await;
    assert!(
        pods.list(&ListParams::default().labels("job-name=later"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    common::ok(
        kubectl
            .run(&["wait", "--for=condition=complete", "job/later", "--timeout=60s"])
            .unwrap(),
    );

    // A deadline shorter than the pods run fails the Job and stops its pods.
    let deadline = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: hurried}\nspec:\n  activeDeadlineSeconds: 2\n  \
                    template:\n    spec:\n      restartPolicy: Never\n      nodeSelector: {speed: slow}\n      \
                    tolerations: [{key: slow, operator: Exists}]\n      containers: [{name: work, image: busybox}]\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "hurried.yaml",
        deadline,
        "create",
    ));
    common::ok(
        kubectl
            .run(&["wait", "--for=condition=failed", "job/hurried", "--timeout=60s"])
            .unwrap(),
    );
    let failed = jobs.get("hurried").await.unwrap().status.unwrap().conditions.unwrap();
    let failed = failed.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));

    // TTL: gone once finished, pods too.
    let ttl = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: brief}\nspec:\n  ttlSecondsAfterFinished: 0\n  \
               template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: work, image: busybox}]\n";
    common::ok(common::apply_file(&kubectl, dir.path(), "brief.yaml", ttl, "create"));
    eventually("the finished job and its pods gone", WITHIN, async || {
        let gone = jobs.get_opt("brief").await.ok()?.is_none();
        let pods_gone = pods
            .list(&ListParams::default().labels("job-name=brief"))
            .await
            .ok()?
            .items
            .is_empty();
        (gone && pods_gone).then_some(())
    })
    .await;
}

/// A server with one hollow node that runs its pods, for the Job tests: Jobs and pods in
/// `default`, and a directory for manifests.
struct JobCluster {
    server: rkube_testkit::RkubeServer,
    _nodes: HollowNodes,
    jobs: Api<k8s_openapi::api::batch::v1::Job>,
    pods: Api<Pod>,
    dir: tempfile::TempDir,
}

impl JobCluster {
    async fn start() -> Self {
        let (server, client) = common::cluster_and_client(Control::Full).await;
        let _nodes = HollowNodes::start(client.clone(), HollowOptions::default())
            .await
            .unwrap();
        Self {
            server,
            _nodes,
            jobs: Api::namespaced(client.clone(), "default"),
            pods: Api::namespaced(client, "default"),
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

/// A pod failure policy as in upstream's "Handling retriable and non-retriable pod failures"
/// task: an exit code its FailJob rule names fails the Job at once (no retry, the message
/// naming the container, pod, code and rule), a failure its Ignore rule matches does not
/// count toward the backoff limit (the pod is replaced), and a policy with restartPolicy
/// OnFailure is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pod_failure_policies_decide_by_exit_code() {
    let JobCluster {
        server,
        _nodes,
        jobs,
        pods,
        dir,
    } = JobCluster::start().await;
    let kubectl = server.kubectl();
    let job = |name: &str, exit_code: u8, restart: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  backoffLimit: 0\n  \
             podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {{containerName: main, operator: In, values: [42]}}\n    \
             - action: Ignore\n      onExitCodes: {{operator: In, values: [1]}}\n  template:\n    \
             metadata: {{annotations: {{{}: \"{exit_code}\"}}}}\n    spec:\n      restartPolicy: {restart}\n      \
             containers: [{{name: main, image: busybox}}]\n",
            rkube_testkit::hollow::EXIT_CODE_ANNOTATION
        )
    };
    let failing = |name: &str| {
        let pods = pods.clone();
        let selector = format!("job-name={name}");
        async move {
            let listed = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
            let failed = listed
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
            (listed.len(), failed.count())
        }
    };

    // A Job another controller manages is left to it (looked at below, once later Jobs ran).
    let elsewhere = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: elsewhere}\nspec:\n  \
                     managedBy: example.com/other-controller\n  template:\n    spec:\n      restartPolicy: Never\n      \
                     containers: [{name: main, image: busybox}]\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "elsewhere.yaml",
        elsewhere,
        "create",
    ));

    // FailJob: the first failure ends it, although the backoff limit was not reached.
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "fatal.yaml",
        &job("fatal", 42, "Never"),
        "create",
    ));
    common::ok(
        kubectl
            .run(&["wait", "--for=condition=failed", "job/fatal", "--timeout=60s"])
            .unwrap(),
    );
    let status = jobs.get("fatal").await.unwrap().status.unwrap();
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    let pod = pods
        .list(&ListParams::default().labels("job-name=fatal"))
        .await
        .unwrap()
        .items
        .remove(0);
    let expected = format!(
        "Container main for pod default/{} failed with exit code 42 matching FailJob rule at index 0",
        pod.metadata.name.unwrap()
    );
    assert_eq!(failed.message.as_deref(), Some(expected.as_str()));
    assert_eq!((status.failed, status.terminating), (Some(1), Some(0)));
    assert_eq!(failing("fatal").await, (1, 1), "no retry");
    assert_eq!(failing("elsewhere").await, (0, 0), "managed elsewhere");
    assert!(
        jobs.get("elsewhere")
            .await
            .unwrap()
            .status
            .is_none_or(|s| s.start_time.is_none())
    );
    let events = common::ok(
        kubectl
            .run(&["get", "events", "--field-selector", "involvedObject.name=fatal"])
            .unwrap(),
    );
    assert!(
        events.contains("PodFailurePolicy") && events.contains(&expected),
        "{events}"
    );

    // Ignore: with backoffLimit 0 the failure would end the Job; ignored, it is replaced
    // (after the usual backoff) and the Job goes on, its failed count untouched.
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "flaky.yaml",
        &job("flaky", 1, "Never"),
        "create",
    ));
    eventually("a failed pod replaced", Duration::from_secs(60), async || {
        let (all, failed) = failing("flaky").await;
        (failed >= 1 && all >= 2).then_some(())
    })
    .await;
    let status = jobs.get("flaky").await.unwrap().status.unwrap();
    assert!(
        !status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" || c.type_ == "FailureTarget"),
        "{status:?}"
    );
    assert_eq!(status.failed, None);

    // Only with restartPolicy Never.
    let message = common::fails(common::apply_file(
        &kubectl,
        dir.path(),
        "wrong.yaml",
        &job("wrong", 0, "OnFailure"),
        "create",
    ));
    assert!(
        message.contains(
            "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"
        ),
        "{message}"
    );
}

/// Indexed Jobs' own policies: a success policy ends a Job early (reason SuccessPolicy),
/// a FailIndex rule with a backoff limit per index fails an index without retrying it and
/// the Job once no index is left (FailedIndexes), and maxFailedIndexes fails it at the
/// first index past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_jobs_succeed_by_policy_and_fail_per_index() {
    let JobCluster {
        server,
        _nodes,
        jobs,
        pods,
        dir,
    } = JobCluster::start().await;
    let kubectl = server.kubectl();
    let create = |name: &str, extra: &str, exit_code: u8| {
        let yaml = format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  completionMode: Indexed\n{extra}  \
             template:\n    metadata: {{annotations: {{{}: \"{exit_code}\"}}}}\n    spec:\n      restartPolicy: Never\n      \
             containers: [{{name: main, image: busybox}}]\n",
            rkube_testkit::hollow::EXIT_CODE_ANNOTATION
        );
        common::ok(common::apply_file(
            &kubectl,
            dir.path(),
            &format!("{name}.yaml"),
            &yaml,
            "create",
        ));
    };
    let finished = |name: &str, kind: &str| {
        let jobs = jobs.clone();
        let (name, kind) = (name.to_string(), kind.to_string());
        async move {
            eventually(&format!("{name} {kind}"), Duration::from_secs(60), async || {
                let status = jobs.get(&name).await.ok()?.status?;
                let done = status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == kind && c.status == "True")?
                    .clone();
                Some((status, done))
            })
            .await
        }
    };
    let made = |name: &str| {
        let pods = pods.clone();
        let selector = format!("job-name={name}");
        async move { pods.list(&ListParams::default().labels(&selector)).await.unwrap().items }
    };

    // Two of five indexes suffice.
    create(
        "enough",
        "  completions: 5\n  parallelism: 2\n  successPolicy:\n    rules: [{succeededIndexes: \"0,1\"}]\n",
        0,
    );
    let (status, complete) = finished("enough", "Complete").await;
    assert_eq!(
        (complete.reason.as_deref(), complete.message.as_deref()),
        (Some("SuccessPolicy"), Some("Matched rules at index 0"))
    );
    let criteria = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "SuccessCriteriaMet")
        .unwrap();
    assert_eq!(criteria.reason.as_deref(), Some("SuccessPolicy"));
    assert!(
        status.succeeded.unwrap_or(0) >= 2 && status.succeeded.unwrap_or(0) < 5,
        "{status:?}"
    );
    // 0 and 1 ran first; one more may have finished while the later of them ran.
    let done = status.completed_indexes.clone().unwrap();
    assert!(done.starts_with("0,1") || done.starts_with("0-2"), "{status:?}");
    let index_env = made("enough").await[0].spec.clone().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(
        (
            index_env.last().unwrap().name.as_str(),
            index_env
                .last()
                .unwrap()
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path
                .as_str()
        ),
        (
            "JOB_COMPLETION_INDEX",
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        )
    );

    // FailIndex: each index fails at its first failure, not retried though its limit is 3.
    create(
        "per-index",
        "  completions: 2\n  parallelism: 2\n  backoffLimitPerIndex: 3\n  podFailurePolicy:\n    \
         rules: [{action: FailIndex, onExitCodes: {operator: In, values: [1]}}]\n",
        1,
    );
    let (status, failed) = finished("per-index", "Failed").await;
    assert_eq!(
        (failed.reason.as_deref(), failed.message.as_deref()),
        (Some("FailedIndexes"), Some("Job has failed indexes"))
    );
    assert_eq!(
        (status.failed_indexes.as_deref(), status.failed),
        (Some("0,1"), Some(2))
    );
    let made_pods = made("per-index").await;
    assert_eq!(made_pods.len(), 2, "no retries");
    assert!(
        made_pods
            .iter()
            .all(|p| p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-index-failure-count"] == "0")
    );

    // maxFailedIndexes 0: the first failed index ends it.
    create(
        "strict",
        "  completions: 3\n  parallelism: 1\n  backoffLimitPerIndex: 0\n  maxFailedIndexes: 0\n",
        1,
    );
    let (status, failed) = finished("strict", "Failed").await;
    assert_eq!(failed.reason.as_deref(), Some("MaxFailedIndexesExceeded"));
    assert_eq!(status.failed_indexes.as_deref(), Some("0"));
    assert_eq!(made("strict").await.len(), 1);
}

/// The CronJob of shared/examples/seed/19: at the next minute a Job named after the
/// scheduled minute runs to completion, and the CronJob's status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_jobs_run_on_schedule() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), HollowOptions::default())
        .await
        .unwrap();
    let kubectl = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let cron_only = seed_document("19-job-cronjob.yaml", 1);
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "cron.yaml",
        &cron_only,
        "create",
    ));
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    // The next minute starts within 60 s.
    let job = eventually("the first scheduled job", Duration::from_secs(90), async || {
        jobs.list(&ListParams::default()).await.ok()?.items.into_iter().next()
    })
    .await;
    let name = job.metadata.name.clone().unwrap();
    let minutes: i64 = name.strip_prefix("every-minute-").unwrap().parse().unwrap();
    let scheduled = job.metadata.annotations.unwrap()["batch.kubernetes.io/cronjob-scheduled-timestamp"].clone();
    let at: k8s_openapi::jiff::Timestamp = scheduled.parse().unwrap();
    assert_eq!(at.as_second() / 60, minutes, "{scheduled}");
    common::ok(
        kubectl
            .run(&[
                "wait",
                "--for=condition=complete",
                &format!("job/{name}"),
                "--timeout=60s",
            ])
            .unwrap(),
    );
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let status = eventually("the CronJob's status", WITHIN, async || {
        let status = cronjobs.get("every-minute").await.ok()?.status?;
        (status.last_successful_time.is_some() && status.active.as_ref().is_none_or(|a| a.is_empty())).then_some(status)
    })
    .await;
    assert_eq!(status.last_schedule_time.unwrap().0, at);
}

/// Nodes registered without a pod CIDR get the lowest free /24 of 10.42.0.0/16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_pod_cidrs() {
    use k8s_openapi::api::core::v1::Node;
    let (_server, client) = common::cluster_and_client(Control::Full).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["worker-a", "worker-b"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    let mut cidrs = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let cidr = eventually(&format!("a pod CIDR for {name}"), WITHIN, async || {
            let spec = nodes.get(name).await.ok()?.spec?;
            assert_eq!(
                spec.pod_cidrs.clone().unwrap_or_default(),
                spec.pod_cidr.clone().into_iter().collect::<Vec<_>>()
            );
            spec.pod_cidr
        })
        .await;
        cidrs.push(cidr);
    }
    cidrs.sort();
    assert_eq!(cidrs, ["10.42.0.0/24", "10.42.1.0/24"]);
}

/// A node whose kubelet stops: after 40 s its conditions go Unknown and it is tainted
/// unreachable; its pods leave after their toleration (2 s here) and their Deployment
/// recreates them on the node that is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_leave_an_unreachable_node() {
    use k8s_openapi::api::core::v1::Node;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let doomed = HollowNodes::start(client.clone(), fleet("doomed", 1, "a"))
        .await
        .unwrap();
    let kubectl = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hardy}\nspec:\n  replicas: 2\n  \
                    selector: {matchLabels: {app: hardy}}\n  template:\n    metadata: {labels: {app: hardy}}\n    spec:\n      \
                    tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]\n      \
                    containers: [{name: web, image: 'nginx:1.27'}]\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "hardy.yaml",
        manifest,
        "create",
    ));
    rollout_status(&kubectl, &["deployment/hardy"]);
    // Meanwhile a pod bound to a node that does not exist is collected (after upstream's
    // 40 s quarantine), marked Failed by disruption first.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ghost: Pod = serde_json::from_value(json!({"metadata": {"name": "ghost"},
        "spec": {"nodeName": "ghost-0", "containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    let ghost = pods.create(&PostParams::default(), &ghost).await.unwrap();
    let watched = {
        use futures_util::StreamExt;
        use kube::api::{WatchEvent, WatchParams};
        let stream = pods
            .watch(
                &WatchParams::default().fields("metadata.name=ghost").timeout(120),
                ghost.metadata.resource_version.as_deref().unwrap(),
            )
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut marked = None;
            while let Some(Ok(event)) = stream.next().await {
                match event {
                    WatchEvent::Modified(pod) => {
                        let status = pod.status.unwrap_or_default();
                        let target = status
                            .conditions
                            .unwrap_or_default()
                            .into_iter()
                            .find(|c| c.type_ == "DisruptionTarget");
                        if let Some(target) = target {
                            marked = Some((status.phase, target.reason, target.message));
                        }
                    }
                    WatchEvent::Deleted(_) => return (marked, true),
                    _ => {}
                }
            }
            (marked, false)
        })
    };
    let survivor = HollowNodes::start(client.clone(), fleet("survivor", 1, "b"))
        .await
        .unwrap();
    drop(doomed);
    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually("the node tainted unreachable", Duration::from_secs(90), async || {
        let node = nodes.get("doomed-0").await.ok()?;
        let tainted = node
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        tainted.then_some(node)
    })
    .await;
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("Unknown", Some("NodeStatusUnknown"))
    );
    eventually(
        "both replicas running on the survivor",
        Duration::from_secs(60),
        async || {
            let running: Vec<Pod> = owned_pods(&pods, "app=hardy")
                .await
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            let moved = running.len() == 2
                && running.iter().all(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(survivor.names()[0].as_str())
                });
            moved.then_some(())
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let evicted = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        evicted
            .iter()
            .any(|e| e.reason.as_deref() == Some("TaintManagerEviction"))
    );
    // The evicted pods wait for a node that is gone; they say why they were disrupted.
    let left: Vec<Pod> = pods
        .list(&ListParams::default().labels("app=hardy"))
        .await
        .unwrap()
        .items;
    let evicted_pods: Vec<&Pod> = left
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .collect();
    assert_eq!(evicted_pods.len(), 2);
    for pod in evicted_pods {
        let conditions = pod.status.as_ref().unwrap().conditions.as_ref().unwrap();
        let target = conditions.iter().find(|c| c.type_ == "DisruptionTarget").unwrap();
        assert_eq!(target.reason.as_deref(), Some("DeletionByTaintManager"));
    }
    // Marked out of service (non-graceful shutdown), the node's terminating pods go.
    let out = json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
        "effect": "NoExecute"}]}});
    nodes
        .patch("doomed-0", &PatchParams::default(), &Patch::Merge(&out))
        .await
        .unwrap();
    eventually("the evicted pods gone", Duration::from_secs(30), async || {
        let left = pods.list(&ListParams::default().labels("app=hardy")).await.ok()?.items;
        left.iter()
            .all(|p| p.metadata.deletion_timestamp.is_none())
            .then_some(())
    })
    .await;
    let (marked, deleted) = tokio::time::timeout(Duration::from_secs(90), watched)
        .await
        .expect("the orphan collected in time")
        .unwrap();
    assert!(deleted, "the orphan collected");
    assert_eq!(
        marked,
        Some((
            Some("Failed".to_string()),
            Some("DeletionByPodGC".to_string()),
            Some("PodGC: node no longer exists".to_string())
        ))
    );
}

/// The pods' (name, creation time, image, revision label) sorted by name.
async fn stateful_pods(pods: &Api<Pod>, selector: &str) -> Vec<(String, String, String)> {
    let mut listed: Vec<(String, String, String)> = owned_pods(pods, selector)
        .await
        .into_iter()
        .map(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            (
                p.metadata.name.clone().unwrap(),
                p.spec.unwrap().containers[0].image.clone().unwrap(),
                labels.get("controller-revision-hash").cloned().unwrap_or_default(),
            )
        })
        .collect();
    listed.sort();
    listed
}

/// shared/examples/seed/18 as users apply it: db-0, db-1, db-2 start one after another, each
/// with its own claim provisioned by local-path on the pod's node; `kubectl rollout status`
/// and `history` follow the set; a new template replaces pods from the highest ordinal
/// down (below a partition, not at all); scaling down removes the highest ordinals and
/// keeps their claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_sets_start_in_order_with_their_own_volumes() {
    use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("node", 2, "a")).await.unwrap();
    let kubectl = server.kubectl();
    let seed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed/18-statefulset.yaml");
    common::ok(kubectl.run(&["create", "-f", seed.to_str().unwrap()]).unwrap());
    rollout_status(&kubectl, &["statefulset/db"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = owned_pods(&pods, "app=db").await;
    let mut names: Vec<String> = running.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    // Ordered: each pod was created only after the one before it was Ready.
    let by_name = |name: &str| {
        running
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap()
    };
    for (before, after) in [("db-0", "db-1"), ("db-1", "db-2")] {
        let ready_at = by_name(before)
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .last_transition_time
            .clone()
            .unwrap();
        let created = by_name(after).metadata.creation_timestamp.clone().unwrap();
        assert!(created.0 >= ready_at.0, "{after} created before {before} was ready");
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for pod in &running {
        let name = pod.metadata.name.clone().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some(name.as_str()), Some("db"))
        );
        let claim = claims.get(&format!("data-{name}")).await.unwrap();
        let claim_spec = claim.spec.unwrap();
        assert_eq!(
            claim_spec.storage_class_name.as_deref(),
            Some("local-path"),
            "the default class"
        );
        assert_eq!(claim.status.unwrap().phase.as_deref(), Some("Bound"));
        let volume = volumes.get(claim_spec.volume_name.as_deref().unwrap()).await.unwrap();
        let volume_spec = volume.spec.unwrap();
        let path = volume_spec.host_path.unwrap().path;
        assert!(
            path.starts_with("/var/lib/rkube/storage/pvc-") && path.ends_with(&format!("_default_data-{name}")),
            "{path}"
        );
        let required = volume_spec.node_affinity.unwrap().required.unwrap();
        let pinned = &required.node_selector_terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            pinned.values.as_ref().unwrap()[0],
            spec.node_name.clone().unwrap(),
            "the pod's node"
        );
    }
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let status = sets.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.replicas,
            status.ready_replicas,
            status.current_replicas,
            status.updated_replicas
        ),
        (3, Some(3), Some(3), Some(3))
    );
    let first_revision = status.update_revision.clone().unwrap();
    assert_eq!(status.current_revision.as_deref(), Some(first_revision.as_str()));

    // A partition keeps the lower ordinals on the old template.
    let partitioned = json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "db", "image": "mysql:5.7"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Merge(&partitioned))
        .await
        .unwrap();
    let out = rollout_status(&kubectl, &["statefulset/db"]);
    assert!(
        out.contains("partitioned roll out complete: 1 new pods have been updated"),
        "{out}"
    );
    let listed = stateful_pods(&pods, "app=db").await;
    let images: Vec<&str> = listed.iter().map(|(_, image, _)| image.as_str()).collect();
    assert_eq!(images, ["mysql:5.6", "mysql:5.6", "mysql:5.7"]);
    let status = sets.get("db").await.unwrap().status.unwrap();
    let second_revision = status.update_revision.clone().unwrap();
    assert_ne!(second_revision, first_revision);
    assert_eq!(listed[2].2, second_revision);
    assert_eq!(status.current_revision.as_deref(), Some(first_revision.as_str()));

    // Without the partition the rest follow, and the update becomes the current revision.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    rollout_status(&kubectl, &["statefulset/db"]);
    eventually("the update to become current", WITHIN, async || {
        let status = sets.get("db").await.ok()?.status?;
        (status.current_revision.as_deref() == Some(second_revision.as_str())).then_some(())
    })
    .await;
    let images: Vec<String> = stateful_pods(&pods, "app=db")
        .await
        .into_iter()
        .map(|(_, i, _)| i)
        .collect();
    assert_eq!(images, ["mysql:5.7", "mysql:5.7", "mysql:5.7"]);
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let mut numbered: Vec<(i64, String)> = revisions
        .list(&ListParams::default().labels("app=db"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| (r.revision, r.metadata.name.unwrap()))
        .collect();
    numbered.sort();
    assert_eq!(numbered, [(1, first_revision.clone()), (2, second_revision.clone())]);
    let history = common::ok(kubectl.run(&["rollout", "history", "statefulset/db"]).unwrap());
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo goes back to the first template (renumbered as revision 3); restart replaces
    // every pod with the same template.
    common::ok(kubectl.run(&["rollout", "undo", "statefulset/db"]).unwrap());
    rollout_status(&kubectl, &["statefulset/db"]);
    eventually("every pod back on the first template", WITHIN, async || {
        let listed = stateful_pods(&pods, "app=db").await;
        (listed.len() == 3
            && listed
                .iter()
                .all(|(_, image, revision)| image == "mysql:5.6" && *revision == first_revision))
        .then_some(())
    })
    .await;
    let renumbered = revisions.get(&first_revision).await.unwrap();
    assert_eq!(renumbered.revision, 3);
    let before: Vec<String> = owned_pods(&pods, "app=db")
        .await
        .into_iter()
        .map(|p| p.metadata.uid.unwrap())
        .collect();
    common::ok(kubectl.run(&["rollout", "restart", "statefulset/db"]).unwrap());
    rollout_status(&kubectl, &["statefulset/db"]);
    eventually("every pod replaced by the restart", WITHIN, async || {
        let now = owned_pods(&pods, "app=db").await;
        let restarted = now.len() == 3
            && now.iter().all(|p| {
                !before.contains(p.metadata.uid.as_ref().unwrap())
                    && p.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
            });
        restarted.then_some(())
    })
    .await;

    // Scaling down removes db-2 then db-1; their claims stay (the default Retain policy).
    common::ok(kubectl.run(&["scale", "statefulset/db", "--replicas=1"]).unwrap());
    eventually("one replica left", WITHIN, async || {
        let left = stateful_pods(&pods, "app=db").await;
        (left.len() == 1 && left[0].0 == "db-0").then_some(())
    })
    .await;
    for name in ["data-db-0", "data-db-1", "data-db-2"] {
        claims.get(name).await.unwrap();
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let messages: Vec<String> = events
        .list(&ListParams::default().fields("involvedObject.kind=StatefulSet,involvedObject.name=db"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    for expected in [
        "create Pod db-0 in StatefulSet db successful",
        "create Claim data-db-0 Pod db-0 in StatefulSet db success",
        "delete Pod db-2 in StatefulSet db successful",
    ] {
        assert!(messages.iter().any(|m| m == expected), "{expected} in {messages:?}");
    }
}

/// Parallel sets start every pod at once; OnDelete sets replace only the pods the user
/// deletes; a failed pod is replaced under the same name; a claim retention policy of
/// Delete takes the claims with the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_sets_in_parallel_and_on_delete() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let (_server, client) = common::cluster_and_client(Control::Full).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "cache"},
        "spec": {"replicas": 3, "serviceName": "cache", "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "selector": {"matchLabels": {"app": "cache"}},
            "template": {"metadata": {"labels": {"app": "cache"}},
                "spec": {"nodeSelector": {"zone": "b"}, "containers": [{"name": "redis", "image": "redis:7"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let ready = |want: i32| {
        let sets = sets.clone();
        async move {
            eventually(&format!("{want} ready"), Duration::from_secs(60), async || {
                let status = sets.get("cache").await.ok()?.status?;
                (status.ready_replicas == Some(want) && status.replicas == want).then_some(status)
            })
            .await
        }
    };
    // Parallel: all three are made while none can run (no node in zone b yet).
    eventually("three pending pods", WITHIN, async || {
        (stateful_pods(&pods, "app=cache").await.len() == 3).then_some(())
    })
    .await;
    let _nodes = HollowNodes::start(client.clone(), fleet("node", 2, "b")).await.unwrap();
    ready(3).await;
    let listed = stateful_pods(&pods, "app=cache").await;

    // OnDelete: a new template changes nothing until a pod is deleted.
    let update = json!({"spec": {"template": {"spec": {"nodeSelector": {"zone": "b"},
        "containers": [{"name": "redis", "image": "redis:7.2"}]}}}});
    sets.patch("cache", &PatchParams::default(), &Patch::Merge(&update))
        .await
        .unwrap();
    eventually("the new revision observed", WITHIN, async || {
        let set = sets.get("cache").await.ok()?;
        let status = set.status?;
        (status.observed_generation == set.metadata.generation && status.update_revision != status.current_revision)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stateful_pods(&pods, "app=cache").await,
        listed,
        "nothing replaced by itself"
    );
    pods.delete("cache-1", &DeleteParams::default()).await.unwrap();
    eventually("cache-1 back with the new template", WITHIN, async || {
        let now = stateful_pods(&pods, "app=cache").await;
        let images: Vec<&str> = now.iter().map(|(_, i, _)| i.as_str()).collect();
        (images == ["redis:7", "redis:7.2", "redis:7"]).then_some(())
    })
    .await;
    ready(3).await;

    // Deleted with its pods orphaned and made again, the set adopts them as they are (one
    // without the pod-name label gets it back) and owns their claims again.
    let uids = |listed: Vec<Pod>| {
        let mut uids: Vec<(String, String)> = listed
            .into_iter()
            .map(|p| (p.metadata.name.unwrap(), p.metadata.uid.unwrap()))
            .collect();
        uids.sort();
        uids
    };
    let before = uids(owned_pods(&pods, "app=cache").await);
    sets.delete("cache", &DeleteParams::orphan()).await.unwrap();
    eventually("the pods orphaned", WITHIN, async || {
        let listed = owned_pods(&pods, "app=cache").await;
        let orphaned = listed
            .iter()
            .all(|p| p.metadata.owner_references.as_deref().unwrap_or_default().is_empty());
        (orphaned && sets.get_opt("cache").await.ok()?.is_none()).then_some(())
    })
    .await;
    let unlabel = json!({"metadata": {"labels": {"statefulset.kubernetes.io/pod-name": null}}});
    pods.patch("cache-2", &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .unwrap();
    let again = sets.create(&PostParams::default(), &set).await.unwrap();
    let uid = again.metadata.uid.unwrap();
    eventually("the pods and claims adopted", Duration::from_secs(60), async || {
        let listed = owned_pods(&pods, "app=cache").await;
        let adopted = listed.iter().all(|p| {
            let owned = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true));
            let labelled = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("statefulset.kubernetes.io/pod-name"))
                == p.metadata.name.as_ref();
            owned && labelled
        });
        let claimed = claims.list(&ListParams::default()).await.ok()?.items;
        let owned_claims = claimed
            .iter()
            .all(|c| c.metadata.owner_references.iter().flatten().any(|o| o.uid == uid));
        (adopted && owned_claims && listed.len() == 3 && claimed.len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        uids(owned_pods(&pods, "app=cache").await),
        before,
        "adopted, not replaced"
    );

    // Deleting the set takes its claims (whenDeleted: Delete) through the garbage collector.
    sets.delete("cache", &DeleteParams::default()).await.unwrap();
    eventually("the claims gone with the set", Duration::from_secs(60), async || {
        let left = claims.list(&ListParams::default()).await.ok()?.items;
        left.is_empty().then_some(())
    })
    .await;
}

/// shared/examples/seed/20 as users apply it: one agent per node, including a cordoned
/// one (the default daemon tolerations) but not one with a taint it does not tolerate;
/// a node joining gets its agent; a new template rolls out one node at a time
/// (`kubectl rollout status`); a node that stops accepting the pods loses its agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sets_run_one_pod_per_node() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Node;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _open = HollowNodes::start(client.clone(), fleet("open", 2, "a")).await.unwrap();
    let _tainted = HollowNodes::start(
        client.clone(),
        HollowOptions {
            prefix: "gpu".into(),
            taints: vec![json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})],
            ..HollowOptions::default()
        },
    )
    .await
    .unwrap();
    let kubectl = server.kubectl();
    common::ok(kubectl.run(&["cordon", "open-1"]).unwrap_or_else(|e| panic!("{e}")));
    let seed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed/20-daemonset-probes.yaml");
    common::ok(kubectl.run(&["create", "-f", seed.to_str().unwrap()]).unwrap());
    rollout_status(&kubectl, &["-n", "kube-system", "daemonset/node-agent"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let placement = || {
        let pods = pods.clone();
        async move {
            let mut placed: Vec<(String, String)> = owned_pods(&pods, "app=node-agent")
                .await
                .into_iter()
                .map(|p| {
                    let spec = p.spec.unwrap();
                    (
                        spec.node_name.unwrap_or_default(),
                        spec.containers[0].image.clone().unwrap(),
                    )
                })
                .collect();
            placed.sort();
            placed
        }
    };
    assert_eq!(
        placement().await,
        [
            ("open-0".to_string(), "busybox".to_string()),
            ("open-1".into(), "busybox".into())
        ]
    );
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let status = sets.get("node-agent").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_ready,
            status.number_available,
            status.updated_number_scheduled,
            status.number_misscheduled
        ),
        (2, 2, 2, Some(2), Some(2), 0)
    );

    // A joining node gets its agent. A matching pod no controller owns (here one made by
    // hand for that node, without the set's template labels) is adopted, then replaced by
    // the rolling update as its template is not the set's.
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray-agent", "labels": {"app": "node-agent"}},
        "spec": {"nodeName": "late-0", "containers": [{"name": "agent", "image": "busybox:1.35"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &stray).await.unwrap();
    let _late = HollowNodes::start(client.clone(), fleet("late", 1, "a")).await.unwrap();
    eventually("the stray pod adopted and replaced", WITHIN, async || {
        let gone = pods.get_opt("stray-agent").await.ok()?.is_none();
        let placed = placement().await;
        let on_late: Vec<&str> = placed
            .iter()
            .filter(|(node, _)| node == "late-0")
            .map(|(_, image)| image.as_str())
            .collect();
        (gone && on_late == ["busybox"]).then_some(())
    })
    .await;

    // A new template, one node at a time.
    let update = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "busybox:1.36",
        "command": ["sh", "-c", "httpd -f -p 8080"]}]}}}});
    sets.patch("node-agent", &PatchParams::default(), &Patch::Merge(&update))
        .await
        .unwrap();
    rollout_status(&kubectl, &["-n", "kube-system", "daemonset/node-agent"]);
    eventually("every agent replaced", WITHIN, async || {
        let placed = placement().await;
        (placed.len() == 3 && placed.iter().all(|(_, image)| image == "busybox:1.36")).then_some(())
    })
    .await;
    let history = common::ok(
        kubectl
            .run(&["rollout", "history", "-n", "kube-system", "daemonset/node-agent"])
            .unwrap(),
    );
    assert!(history.contains('2'), "{history}");

    // Undo restores the first template.
    common::ok(
        kubectl
            .run(&["rollout", "undo", "-n", "kube-system", "daemonset/node-agent"])
            .unwrap(),
    );
    rollout_status(&kubectl, &["-n", "kube-system", "daemonset/node-agent"]);
    eventually("every agent back on the first template", WITHIN, async || {
        let placed = placement().await;
        (placed.len() == 3 && placed.iter().all(|(_, image)| image == "busybox")).then_some(())
    })
    .await;

    // A NoExecute taint it does not tolerate takes the agent off the node.
    let nodes: Api<Node> = Api::all(client.clone());
    let taint = json!({"spec": {"taints": [{"key": "maintenance", "value": "now", "effect": "NoExecute"}]}});
    nodes
        .patch("open-0", &PatchParams::default(), &Patch::Merge(&taint))
        .await
        .unwrap();
    eventually("no agent on the tainted node", WITHIN, async || {
        let placed = placement().await;
        (placed.len() == 2 && placed.iter().all(|(node, _)| node != "open-0")).then_some(())
    })
    .await;
    eventually("the status to follow", WITHIN, async || {
        let status = sets.get("node-agent").await.ok()?.status?;
        (status.desired_number_scheduled == 2 && status.number_misscheduled == 0).then_some(())
    })
    .await;
}

/// shared/examples/seed/11 as users apply it (its NFS server a loopback address nothing
/// contacts: hollow nodes mount nothing): the claim binds to the volume by size, access
/// mode and the empty class, and the Deployment using it becomes available. Claims
/// without a class get local-path volumes on their pod's node; deleting such a claim
/// releases the volume, whose directory a helper pod removes before the volume goes. A
/// Retain volume stays Released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_bind_provision_and_reclaim() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("node", 2, "a")).await.unwrap();
    let kubectl = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/examples/seed/11-pv-pvc-deployment.yaml"),
    )
    .unwrap()
    .replace("NFS_SERVER", "127.0.0.1")
    .replace("NFS_PATH", "/exports/web");
    common::ok(common::apply_file(&kubectl, dir.path(), "seed11.yaml", &seed, "create"));
    rollout_status(&kubectl, &["deployment/nginx-deployment"]);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claim = claims.get("nfs-pvc").await.unwrap();
    assert_eq!(claim.spec.as_ref().unwrap().volume_name.as_deref(), Some("nfs-pv"));
    let status = claim.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Bound"));
    assert_eq!(status.capacity.unwrap()["storage"].0, "4Gi", "the volume's size");
    let volume = volumes.get("nfs-pv").await.unwrap();
    assert_eq!(volume.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(volume.spec.unwrap().claim_ref.unwrap().uid, claim.metadata.uid);
    let out = common::ok(kubectl.run(&["get", "pv", "nfs-pv"]).unwrap());
    assert!(out.contains("Bound") && out.contains("default/nfs-pvc"), "{out}");

    // The static volume had no reclaim policy: Retain, so it stays Released.
    common::ok(
        kubectl
            .run(&["delete", "deployment/nginx-deployment", "pvc/nfs-pvc", "--wait=false"])
            .unwrap(),
    );
    eventually("the static volume released", WITHIN, async || {
        let volume = volumes.get("nfs-pv").await.ok()?;
        (volume.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await;

    // A claim without a class: local-path, provisioned where its pod lands.
    let manifest = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: scratch}\nspec:\n  \
                    accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 2Gi}}\n---\n\
                    apiVersion: v1\nkind: Pod\nmetadata: {name: writer}\nspec:\n  containers: [{name: w, image: busybox, \
                    volumeMounts: [{name: d, mountPath: /data}]}]\n  volumes: [{name: d, persistentVolumeClaim: {claimName: scratch}}]\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "scratch.yaml",
        manifest,
        "create",
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let node = eventually("the writer running", WITHIN, async || {
        let pod = pods.get("writer").await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| pod.spec.unwrap().node_name.unwrap())
    })
    .await;
    let claim = claims.get("scratch").await.unwrap();
    let volume_name = claim.spec.unwrap().volume_name.unwrap();
    assert_eq!(volume_name, format!("pvc-{}", claim.metadata.uid.unwrap()));
    let volume = volumes.get(&volume_name).await.unwrap();
    let spec = volume.spec.clone().unwrap();
    assert_eq!(
        (
            spec.storage_class_name.as_deref(),
            spec.persistent_volume_reclaim_policy.as_deref()
        ),
        (Some("local-path"), Some("Delete"))
    );
    let path = spec.host_path.unwrap().path;
    assert_eq!(path, format!("/var/lib/rkube/storage/{volume_name}_default_scratch"));
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let claim_events: Vec<String> = events
        .list(&ListParams::default().fields("involvedObject.name=scratch"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["WaitForFirstConsumer", "ExternalProvisioning", "ProvisioningSucceeded"] {
        assert!(claim_events.iter().any(|r| r == reason), "{reason} in {claim_events:?}");
    }

    // Released with the Delete policy: a helper pod on the node removes the directory,
    // then the volume goes.
    let helpers: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    common::ok(
        kubectl
            .run(&["delete", "pod/writer", "pvc/scratch", "--wait=false"])
            .unwrap(),
    );
    let helper = eventually("the helper pod removing the directory", WITHIN, async || {
        helpers.get(&format!("helper-pod-delete-{volume_name}")).await.ok()
    })
    .await;
    let helper_spec = helper.spec.unwrap();
    assert_eq!(helper_spec.node_name.as_deref(), Some(node.as_str()));
    let command = helper_spec.containers[0].command.clone().unwrap();
    assert_eq!(command.last().unwrap(), &format!("rm -rf '{path}'"));
    eventually("the volume deleted", WITHIN, async || {
        volumes.get_opt(&volume_name).await.ok()?.is_none().then_some(())
    })
    .await;
    eventually("the helper pod removed", WITHIN, async || {
        helpers
            .get_opt(&format!("helper-pod-delete-{volume_name}"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

/// A ResourceQuota reports what its namespace uses of each resource it names, and follows
/// pods, services and other objects as they come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_count_usage() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("node", 1, "a")).await.unwrap();
    let kubectl = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let manifest = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: team}\nspec:\n  hard:\n    pods: '10'\n    \
                    requests.cpu: '4'\n    requests.memory: 8Gi\n    limits.memory: 16Gi\n    services: '5'\n    \
                    services.nodeports: '2'\n    configmaps: '10'\n    count/deployments.apps: '3'\n    \
                    persistentvolumeclaims: '4'\n    requests.storage: 10Gi\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  replicas: 2\n  \
                    selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n    spec:\n      \
                    containers: [{name: api, image: 'nginx:1.27', resources: {requests: {cpu: 250m, memory: 256Mi}, \
                    limits: {memory: 512Mi}}}]\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  type: NodePort\n  selector: {app: api}\n  \
                    ports: [{port: 80}]\n---\n\
                    apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  \
                    accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n";
    common::ok(common::apply_file(
        &kubectl,
        dir.path(),
        "team.yaml",
        manifest,
        "create",
    ));
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
    let used = |want: Vec<(&'static str, &'static str)>| {
        let quotas = quotas.clone();
        async move {
            eventually(&format!("usage {want:?}"), WITHIN, async || {
                let used = quotas.get("team").await.ok()?.status?.used?;
                want.iter()
                    .all(|(k, v)| used.get(*k).map(|q| q.0.as_str()) == Some(*v))
                    .then_some(used)
            })
            .await
        }
    };
    let status = used(vec![
        ("pods", "2"),
        ("requests.cpu", "500m"),
        ("requests.memory", "512Mi"),
        ("limits.memory", "1Gi"),
        ("services", "2"),
        ("services.nodeports", "1"),
        ("count/deployments.apps", "1"),
        ("persistentvolumeclaims", "1"),
        ("requests.storage", "1Gi"),
    ])
    .await;
    // The root CA's ConfigMap, as in every namespace, counts like any other.
    let configmaps: usize = status["configmaps"].0.parse().unwrap();
    let extra = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n";
    common::ok(common::apply_file(&kubectl, dir.path(), "extra.yaml", extra, "create"));
    let more = (configmaps + 1).to_string();
    eventually("the new configmap counted", Duration::from_secs(60), async || {
        let used = quotas.get("team").await.ok()?.status?.used?;
        (used["configmaps"].0 == more).then_some(())
    })
    .await;
    common::ok(kubectl.run(&["scale", "deployment/api", "--replicas=3"]).unwrap());
    used(vec![
        ("pods", "3"),
        ("requests.cpu", "750m"),
        ("requests.memory", "768Mi"),
    ])
    .await;
    let out = common::ok(kubectl.run(&["describe", "quota", "team"]).unwrap());
    assert!(out.contains("requests.cpu") && out.contains("750m"), "{out}");
}

/// shared/examples/seed/05 and 07 as users apply them: the Deployment whose environment
/// comes from the Secret becomes available with both replicas; and 03 with 04, the legacy
/// extensions/v1beta1 Deployment, reaches its three replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_deployments_reach_their_state() {
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("node", 2, "a")).await.unwrap();
    let kubectl = server.kubectl();
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed");
    for file in ["05-secret.yaml", "07-deployment-secret-env.yaml"] {
        common::ok(
            kubectl
                .run(&["create", "-f", seeds.join(file).to_str().unwrap()])
                .unwrap(),
        );
    }
    rollout_status(&kubectl, &["deployment/wordpress-deployment"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = owned_pods(&pods, "app=wordpress").await;
    assert_eq!(running.len(), 2);
    let env = running[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let secret_ref = env[1].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!(
        (secret_ref.name.as_str(), secret_ref.key.as_str()),
        ("mysecret", "password")
    );
}

/// A ReplicaSet made by hand, then a Deployment whose selector and template match it: the
/// Deployment adopts it as its first revision, rolls out a new template, and
/// `kubectl rollout undo` brings the hand-made set's template back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_undo_returns_to_an_adopted_replica_set() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (server, client) = common::cluster_and_client(Control::Full).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("node", 2, "a")).await.unwrap();
    let kubectl = server.kubectl();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let template = json!({"metadata": {"labels": {"app": "hand"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}});
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "hand-made", "labels": {"app": "hand"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "hand"}}, "template": template}}))
    .unwrap();
    sets.create(&PostParams::default(), &rs).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "hand"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "hand"}}, "template": template}}))
    .unwrap();
    deployments.create(&PostParams::default(), &d).await.unwrap();
    rollout_status(&kubectl, &["deployment/hand"]);
    let adopted = sets.get("hand-made").await.unwrap();
    let owner = &adopted.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Deployment", "hand"));

    common::ok(
        kubectl
            .run(&["set", "image", "deployment/hand", "web=nginx:1.27"])
            .unwrap(),
    );
    rollout_status(&kubectl, &["deployment/hand"]);
    common::ok(kubectl.run(&["rollout", "undo", "deployment/hand"]).unwrap());
    rollout_status(&kubectl, &["deployment/hand"]);
    let image = deployments
        .get("hand")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:1.25"));
    let back = sets.get("hand-made").await.unwrap();
    assert_eq!(
        back.spec.unwrap().replicas,
        Some(2),
        "the adopted set runs the replicas again"
    );
}
