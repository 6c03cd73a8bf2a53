//! kube-rs (the client every rkube component but the API server uses) against a real
//! server: typed CRUD, merge patch, label selectors, and the runtime's watcher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_patch_and_watcher() {
    let (_server, client) = common::server_and_client(false).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // The runtime's watcher: an initial list, then events.
    let mut events = watcher(configmaps.clone(), watcher::Config::default().labels("app=kube-rs")).boxed();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("from-kube-rs".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "kube-rs".to_string())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("a".to_string(), "1".to_string())])),
        ..ConfigMap::default()
    };
    let created = configmaps.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let err = configmaps.create(&PostParams::default(), &cm).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );

    let patched = configmaps
        .patch(
            "from-kube-rs",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    let listed = configmaps
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen
        .iter()
        .any(|s: &String| s.starts_with("apply") && s.contains("b=2"))
    {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) => {
                let data = cm.data.unwrap_or_default();
                let keys: Vec<String> = data.iter().map(|(k, v)| format!("{k}={v}")).collect();
                seen.push(format!("apply {}", keys.join(",")));
            }
            watcher::Event::Delete(_) => seen.push("delete".into()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    configmaps
        .delete("from-kube-rs", &DeleteParams::default())
        .await
        .unwrap();
    let gone = configmaps.get_opt("from-kube-rs").await.unwrap();
    assert!(gone.is_none());

    let services: Api<Service> = Api::namespaced(client, "default");
    let kubernetes = services.get("kubernetes").await.unwrap();
    assert_eq!(kubernetes.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.1"));
}

/// kube-rs server-side apply: create on apply, conflicts as 409 with FieldManagerConflict
/// causes, force taking ownership, and a strategic merge patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_server_side_apply() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (_server, client) = common::server_and_client(false).await;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let config = |replicas: i32, image: &str| {
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "applied"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "applied"}},
                "template": {"metadata": {"labels": {"app": "applied"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}}}})
    };
    let created = deployments
        .patch(
            "applied",
            &PatchParams::apply("team-a"),
            &Patch::Apply(config(2, "nginx:1.26")),
        )
        .await
        .unwrap();
    let managed = created.metadata.managed_fields.unwrap();
    assert_eq!(managed[0].manager.as_deref(), Some("team-a"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));

    let err = deployments
        .patch(
            "applied",
            &PatchParams::apply("team-b"),
            &Patch::Apply(config(3, "nginx:1.26")),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"team-a\" using apps/v1: .spec.replicas"
    );
    let forced = deployments
        .patch(
            "applied",
            &PatchParams::apply("team-b").force(),
            &Patch::Apply(config(3, "nginx:1.26")),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.unwrap().replicas, Some(3));

    // A strategic merge patch merges containers by name.
    let patch =
        serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "log", "image": "busybox"}]}}}});
    let patched = deployments
        .patch("applied", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let names: Vec<String> = patched
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["web", "log"]);
}

/// Patches start from the watch cache's copy, which may be behind the store: concurrent
/// patches must all land (conflicts retried), and a patch pinned to the resourceVersion
/// just read must succeed even when the cache has not caught up with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_pinned_patches_all_land() {
    let (_server, client) = common::server_and_client(false).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("counter".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    maps.create(&PostParams::default(), &map).await.unwrap();
    let patches = (0..24).map(|i| {
        let maps = maps.clone();
        async move {
            let patch = serde_json::json!({"data": {format!("k{i}"): "v"}});
            maps.patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    });
    for result in futures_util::future::join_all(patches).await {
        result.unwrap();
    }
    let data = maps.get("counter").await.unwrap().data.unwrap();
    assert_eq!(data.len(), 24, "{data:?}");

    for i in 0..30 {
        let current = maps.get("counter").await.unwrap();
        let version = current.metadata.resource_version.unwrap();
        let patch = serde_json::json!({"metadata": {"resourceVersion": version},
            "data": {"pinned": i.to_string()}});
        maps.patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    // A stale pin is still refused.
    let stale = serde_json::json!({"metadata": {"resourceVersion": "1"}, "data": {"late": "x"}});
    let err = maps
        .patch("counter", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err:?}");
}

/// Metadata-only reads (`as=PartialObjectMetadata`), what client-go's metadata informers
/// and kube-rs' `Api<PartialObjectMeta<K>>` ask for: get, list and watch answer with the
/// objects' metadata alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_reads() {
    let (_server, client) = common::server_and_client(false).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("meta-only".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "meta".to_string())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("secret-ish".to_string(), "payload".to_string())])),
        ..ConfigMap::default()
    };
    configmaps.create(&PostParams::default(), &cm).await.unwrap();

    let raw = async |uri: &str, accept: &str| -> Vec<serde_json::Value> {
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, accept)
            .body(Vec::new())
            .unwrap();
        let text = client.request_text(request).await.unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let partial = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let base = "/api/v1/namespaces/default/configmaps";
    let got = &raw(&format!("{base}/meta-only"), partial).await[0];
    assert_eq!(got["kind"], "PartialObjectMetadata");
    assert_eq!(got["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(got["metadata"]["labels"]["app"], "meta");
    assert!(got.get("data").is_none(), "{got}");
    let list_accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    let listed = &raw(&format!("{base}?labelSelector=app%3Dmeta"), list_accept).await[0];
    assert_eq!(listed["kind"], "PartialObjectMetadataList");
    assert!(listed["metadata"]["resourceVersion"].is_string());
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["kind"], "PartialObjectMetadata");
    assert!(listed["items"][0].get("data").is_none());
    let watched = raw(
        &format!("{base}?watch=true&labelSelector=app%3Dmeta&timeoutSeconds=1&allowWatchBookmarks=true"),
        partial,
    )
    .await;
    assert_eq!(watched[0]["type"], "ADDED");
    assert_eq!(watched[0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(watched[0]["object"]["metadata"]["name"], "meta-only");
    assert!(watched[0]["object"].get("data").is_none());
    // Without the parameters, the object itself.
    let plain = &raw(&format!("{base}/meta-only"), "application/json").await[0];
    assert_eq!(plain["data"]["secret-ish"], "payload");

    // kube-rs' metadata API: list, then a watcher seeing a change of labels.
    let metadata: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), "default");
    let list = metadata.list(&ListParams::default().labels("app=meta")).await.unwrap();
    assert_eq!(list.items[0].types.as_ref().unwrap().kind, "PartialObjectMetadata");
    let mut events = watcher(metadata, watcher::Config::default().labels("app=meta")).boxed();
    configmaps
        .patch(
            "meta-only",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"seen": "yes"}}})),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(object) | watcher::Event::InitApply(object) = event
            && object.metadata.labels.unwrap_or_default().contains_key("seen")
        {
            break;
        }
    }
}
