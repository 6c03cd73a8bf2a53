//! The in-memory transport the in-process components use (ADR 14): a kube-rs client over
//! it goes through the same request path as one over HTTPS, as its own user, and its
//! watches carry objects without managedFields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use rkube_apiserver::{ApiServer, Config, ServiceNetwork};
use serde_json::json;

async fn server(dir: &std::path::Path) -> ApiServer {
    let ca = rkube_pki::Ca::load_or_create(dir).unwrap();
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let serving = ca
        .issue_serving("kube-apiserver", &["localhost".into()], &[loopback])
        .unwrap();
    let listener = tokio::net::TcpListener::bind((loopback, 0)).await.unwrap();
    let advertise = listener.local_addr().unwrap();
    let store = rkube_store::open(
        &rkube_store::Datastore::Sqlite {
            path: dir.join("state.db"),
        },
        rkube_store::OpenOptions::default(),
    )
    .await
    .unwrap();
    let config = Config {
        listener,
        serving,
        client_ca_pem: ca.cert_pem.clone(),
        tokens: rkube_pki::TokenFile::default(),
        service_account_keys: rkube_pki::ServiceAccountKeys::load_or_create(dir).unwrap(),
        store,
        services: ServiceNetwork {
            base: std::net::Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
            node_ports: 30000..=32767,
        },
        advertise: SocketAddr::new(advertise.ip(), advertise.port()),
    };
    ApiServer::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_clients_use_the_full_request_path_and_watch_lean_objects() {
    let dir = tempfile::tempdir().unwrap();
    let api = server(dir.path()).await;
    let agent = http::HeaderValue::from_static("kube-scheduler/v0 (linux/amd64) rkube");
    let client = kube::Client::new(api.local_transport("system:kube-scheduler", agent), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");

    let mut watch = Box::pin(pods.watch(&WatchParams::default(), "0").await.unwrap());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    // Created as any client's pod is: defaulted, admitted, and recorded for its manager,
    // named after the transport's user agent.
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    let managers: Vec<_> = created
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|entry| entry.manager.as_deref())
        .collect();
    assert_eq!(managers, ["kube-scheduler"]);

    let seen = loop {
        match watch.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(seen) => break seen,
            WatchEvent::Bookmark(_) => {}
            other => panic!("expected ADDED, got {other:?}"),
        }
    };
    assert_eq!(seen.metadata.uid, created.metadata.uid);
    assert_eq!(seen.spec, created.spec);
    assert!(
        seen.metadata.managed_fields.is_none(),
        "{:?}",
        seen.metadata.managed_fields
    );

    // Metadata-only watches (the garbage collector's) are lean too, for the objects that
    // exist when they start and for changes after.
    let mut metadata = Box::pin(pods.watch_metadata(&WatchParams::default(), "0").await.unwrap());
    let mut second = pod.clone();
    second.metadata.name = Some("q".into());
    pods.create(&PostParams::default(), &second).await.unwrap();
    let mut names = Vec::new();
    while names.len() < 2 {
        match metadata.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(seen) => {
                assert!(seen.metadata.managed_fields.is_none(), "{:?}", seen.metadata);
                assert!(seen.metadata.uid.is_some());
                names.push(seen.metadata.name.unwrap_or_default());
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    names.sort();
    assert_eq!(names, ["p", "q"]);

    // A body over the server's limit is refused as over the network: 413, nothing stored.
    let mut big = pod.clone();
    big.metadata.name = Some("big".into());
    big.metadata.annotations = Some([("a".to_string(), "x".repeat(3 * 1024 * 1024))].into());
    match pods.create(&PostParams::default(), &big).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 413, "{status:?}"),
        other => panic!("expected 413, got {other:?}"),
    }
    assert!(pods.get_opt("big").await.unwrap().is_none());
    drop(watch.next());
}
