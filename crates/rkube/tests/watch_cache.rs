//! Lists and watches served by the watch cache, over HTTPS: upstream's resourceVersion
//! rules, paging, read-your-writes across API servers sharing etcd, the initial-events
//! stream, bookmarks and resumes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rkube_testkit::{EtcdCluster, RkubeServer};
use serde_json::{Value, json};

mod common;

use common::curl;

fn configmap(name: &str, app: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "v"}})
    .to_string()
}

fn create(server: &RkubeServer, name: &str, app: &str) -> i64 {
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url);
    let body = configmap(name, app);
    let (code, body) = curl(
        server,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &url,
        ],
    );
    assert_eq!(code, "201", "{body}");
    rv(&serde_json::from_str(&body).unwrap())
}

fn rv(object: &Value) -> i64 {
    object["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

fn get(server: &RkubeServer, query: &str) -> (String, Value) {
    let url = format!("{}/api/v1/namespaces/default/configmaps?{query}", server.url);
    let (code, body) = curl(server, &[&url]);
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[test]
fn lists_follow_upstream_resource_version_rules() {
    let server = common::server(&[]);
    let mut revisions = Vec::new();
    for (i, app) in ["a", "b", "a", "b", "a"].iter().enumerate() {
        revisions.push(create(&server, &format!("cm-{i}"), app));
        // Read your writes: a list right after a create includes it.
        let (code, list) = get(&server, "");
        assert_eq!(code, "200");
        assert_eq!(names(&list).len(), i + 1, "{list}");
        assert!(rv(&list) >= revisions[i]);
        assert_eq!(list["kind"], "ConfigMapList");
    }

    // Pages at one revision, with the count of what is left.
    let (_, first) = get(&server, "limit=2");
    assert_eq!(names(&first), ["cm-0", "cm-1"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    // A change between pages is not seen by the paged list.
    create(&server, "cm-5", "a");
    let (code, second) = get(&server, &format!("limit=2&continue={token}"));
    assert_eq!(code, "200", "{second}");
    assert_eq!(names(&second), ["cm-2", "cm-3"]);
    assert_eq!(rv(&second), rv(&first));
    let token = second["metadata"]["continue"].as_str().unwrap();
    let (_, third) = get(&server, &format!("limit=2&continue={token}"));
    assert_eq!(names(&third), ["cm-4"]);
    assert!(third["metadata"].get("continue").is_none(), "{third}");

    // Selectors, exact and not-older-than revisions.
    let (_, selected) = get(&server, "labelSelector=app%3Da");
    assert_eq!(names(&selected), ["cm-0", "cm-2", "cm-4", "cm-5"]);
    let (_, exact) = get(
        &server,
        &format!("resourceVersion={}&resourceVersionMatch=Exact", revisions[1]),
    );
    assert_eq!(names(&exact), ["cm-0", "cm-1"]);
    assert_eq!(rv(&exact), revisions[1]);
    let (_, paged_exact) = get(&server, &format!("resourceVersion={}&limit=10", revisions[2]));
    assert_eq!(
        names(&paged_exact).len(),
        3,
        "rv with a limit reads exactly that revision"
    );
    let (_, newer) = get(&server, &format!("resourceVersion={}", revisions[0]));
    assert_eq!(names(&newer).len(), 6, "not older than: the newest state");
    let (_, any) = get(&server, "resourceVersion=0");
    assert_eq!(names(&any).len(), 6);

    // Bad combinations: upstream's errors, nothing served.
    let (code, status) = get(&server, "resourceVersionMatch=Exact");
    assert_eq!(code, "422");
    assert_eq!(
        status["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
    );
    assert_eq!(status["details"]["causes"][0]["field"], "resourceVersionMatch");
    let (code, status) = get(&server, "resourceVersion=0&resourceVersionMatch=Sometimes");
    assert_eq!(code, "422");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Unsupported value: \"Sometimes\""),
        "{status}"
    );
    let (code, status) = get(&server, "sendInitialEvents=true");
    assert_eq!(code, "422");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("sendInitialEvents is forbidden for list")
    );
    let (code, status) = get(&server, &format!("resourceVersion=5&continue={token}"));
    assert_eq!(code, "400");
    assert_eq!(
        status["message"],
        "specifying resource version is not allowed when using continue"
    );
    let (code, status) = get(&server, "continue=bogus");
    assert_eq!(code, "400", "{status}");
    let (code, status) = get(&server, "resourceVersion=99999999&resourceVersionMatch=NotOlderThan");
    assert_eq!(code, "504", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("Too large resource version")
    );
}

/// Runs a watch with curl for its whole timeout and returns its events.
fn watch(server: &RkubeServer, query: &str) -> std::thread::JoinHandle<Vec<Value>> {
    let url = format!("{}/api/v1/namespaces/default/configmaps?watch=true&{query}", server.url);
    let tls = server.dir().join("data/server/tls");
    std::thread::spawn(move || {
        let out = std::process::Command::new("curl")
            .args(["-sSN", "--cacert"])
            .arg(tls.join("ca.crt"))
            .arg("--cert")
            .arg(tls.join("client-admin.crt"))
            .arg("--key")
            .arg(tls.join("client-admin.key"))
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    })
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let name = e["object"]["metadata"]["name"].as_str().unwrap_or("-");
            let end = e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"]
                .as_str()
                .map_or("", |_| "(end)");
            format!("{} {name}{end}", e["type"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn watches_stream_initial_events_bookmarks_and_resumes() {
    let server = common::server(&[]);
    let first = create(&server, "before-0", "a");
    create(&server, "before-1", "b");

    // The watch-list stream: current state, the end-of-initial-events bookmark, changes, and
    // a bookmark two seconds before the timeout (6 s in, well after the change).
    let streaming = watch(
        &server,
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=8",
    );
    let legacy = watch(&server, "labelSelector=app%3Da&timeoutSeconds=4");
    let resumed = watch(&server, &format!("resourceVersion={first}&timeoutSeconds=4"));
    std::thread::sleep(Duration::from_millis(1500));
    let during = create(&server, "during", "a");

    let events = streaming.join().unwrap();
    assert_eq!(
        summary(&events),
        [
            "ADDED before-0",
            "ADDED before-1",
            "BOOKMARK -(end)",
            "ADDED during",
            "BOOKMARK -"
        ],
        "{events:?}"
    );
    assert_eq!(events[2]["object"]["kind"], "ConfigMap");
    assert!(rv(&events[2]["object"]) >= first);
    assert_eq!(
        rv(&events[4]["object"]),
        during,
        "the bookmark carries the watch's position"
    );

    // No sendInitialEvents: the same initial state, no bookmarks; selectors apply.
    let events = legacy.join().unwrap();
    assert_eq!(summary(&events), ["ADDED before-0", "ADDED during"]);

    // A resume from a revision replays what followed it.
    let events = resumed.join().unwrap();
    assert_eq!(summary(&events), ["ADDED before-1", "ADDED during"]);

    let (code, status) = get(
        &server,
        "watch=true&resourceVersionMatch=NotOlderThan&resourceVersion=1",
    );
    assert_eq!(code, "422");
    assert_eq!(
        status["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
    );
}

/// Two API servers over one etcd: a list from either right after a write to the other
/// includes it, because each cache waits until it has seen the store's current revision.
#[test]
fn servers_sharing_etcd_read_each_others_writes() {
    let etcd = EtcdCluster::start(1).unwrap();
    let endpoint = etcd.endpoints().join(",");
    let args = ["--datastore-endpoint", endpoint.as_str()];
    let (one, two) = (common::server(&args), common::server(&args));
    for i in 0..5 {
        let (writer, reader) = if i % 2 == 0 { (&one, &two) } else { (&two, &one) };
        let written = create(writer, &format!("shared-{i}"), "a");
        let (code, list) = get(reader, "");
        assert_eq!(code, "200");
        assert!(rv(&list) >= written, "{list}");
        assert!(names(&list).contains(&format!("shared-{i}").as_str()), "{list}");
    }
    // And a watch on one sees the other's writes.
    let watching = watch(&two, "allowWatchBookmarks=false&timeoutSeconds=3");
    std::thread::sleep(Duration::from_millis(1000));
    create(&one, "shared-late", "a");
    let events = watching.join().unwrap();
    assert_eq!(summary(&events).last().unwrap(), "ADDED shared-late");
}

/// A restarted server loads what it stored into its cache and keeps serving it; its
/// start-up work (namespaces, the `kubernetes` service) finds itself done already.
#[test]
fn a_restarted_server_serves_what_it_stored() {
    let mut server = common::server(&[]);
    for i in 0..3 {
        create(&server, &format!("kept-{i}"), "a");
    }
    let (_, before) = get(&server, "");
    server
        .restart(std::path::Path::new(env!("CARGO_BIN_EXE_rkube")), &[])
        .unwrap();
    let (code, after) = get(&server, "");
    assert_eq!(code, "200");
    assert_eq!(names(&after), names(&before));
    assert!(rv(&after) >= rv(&before));
    assert!(server.log().contains("watch cache loaded"), "{}", server.log());
    let url = format!("{}/api/v1/namespaces/default/services/kubernetes", server.url);
    let (code, service) = curl(&server, &[&url]);
    assert_eq!(code, "200", "{service}");
}
