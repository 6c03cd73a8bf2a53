//! kube-rs (the client every rkube component but the API server uses) against a real
//! server: typed CRUD, merge patch, label selectors, and the runtime's watcher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
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
