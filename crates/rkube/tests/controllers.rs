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
    common::ok(
        kubectl
            .run(&["rollout", "status", "deployment/dmz-app", "--timeout=60s"])
            .unwrap(),
    );
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
    common::ok(
        kubectl
            .run(&["rollout", "status", "deployment/dmz-app", "--timeout=60s"])
            .unwrap(),
    );
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
    common::ok(
        kubectl
            .run(&["rollout", "status", "deployment/dmz-app", "--timeout=60s"])
            .unwrap(),
    );
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
    common::ok(
        kubectl
            .run(&["rollout", "status", "deployment/dmz-app", "--timeout=60s"])
            .unwrap(),
    );
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
    common::ok(
        kubectl
            .run(&["rollout", "status", "-n", "shop", "deployment/web", "--timeout=60s"])
            .unwrap(),
    );

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
    common::ok(
        kubectl
            .run(&["rollout", "status", "deployment/hardy", "--timeout=60s"])
            .unwrap(),
    );
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
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
}
