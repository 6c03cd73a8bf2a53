"""The Python `kubernetes` client against a real rkube server: create, list, watch,
merge patch, delete. Run by crates/rkube/tests/python_client.rs with the kubeconfig as
the only argument; prints one line per check and exits non-zero on the first failure."""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
NS = "default"


def check(what, condition):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


cm = client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="py-cm", labels={"app": "py"}),
    data={"a": "1"},
)
created = core.create_namespaced_config_map(NS, cm)
check("create returns uid and resourceVersion", created.metadata.uid and created.metadata.resource_version)

try:
    core.create_namespaced_config_map(NS, cm)
    check("second create fails", False)
except ApiException as e:
    check("second create is 409 AlreadyExists", e.status == 409 and "AlreadyExists" in e.body)

items = core.list_namespaced_config_map(NS, label_selector="app=py").items
check("list by label", [i.metadata.name for i in items] == ["py-cm"])

events = []


def follow():
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map,
        NS,
        label_selector="app=py",
        resource_version=created.metadata.resource_version,
        timeout_seconds=30,
    ):
        events.append((event["type"], event["object"].metadata.name, dict(event["object"].data or {})))
        if len(events) >= 3:
            w.stop()


watcher = threading.Thread(target=follow)
watcher.start()

# The typed patch methods send dicts as strategic merge patches; a merge patch goes through
# call_api with its content type, as client users do.
patched = core.api_client.call_api(
    "/api/v1/namespaces/{namespace}/configmaps/{name}",
    "PATCH",
    path_params={"namespace": NS, "name": "py-cm"},
    header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
    body={"data": {"b": "2"}},
    response_type="V1ConfigMap",
    auth_settings=["BearerToken"],
    _return_http_data_only=True,
)
check("merge patch adds a key", patched.data == {"a": "1", "b": "2"})

# A list body is sent as a JSON patch.
patched = core.patch_namespaced_config_map("py-cm", NS, [{"op": "add", "path": "/data/c", "value": "3"}])
check("json patch adds a key", patched.data == {"a": "1", "b": "2", "c": "3"})

core.delete_namespaced_config_map("py-cm", NS)
try:
    core.read_namespaced_config_map("py-cm", NS)
    check("read after delete fails", False)
except ApiException as e:
    check("read after delete is 404", e.status == 404)

watcher.join(timeout=30)
check("watch saw MODIFIED, MODIFIED, DELETED", [e[0] for e in events] == ["MODIFIED", "MODIFIED", "DELETED"])
check("watch carried the patched data", events[0][2] == {"a": "1", "b": "2"})

deployments = apps.list_namespaced_deployment(NS)
check("typed list of another group", deployments.items == [])

# The typed patch method sends a dict as a strategic merge patch: containers merge by name.
apps.create_namespaced_deployment(NS, {
    "metadata": {"name": "py-web"},
    "spec": {"selector": {"matchLabels": {"app": "py-web"}},
             "template": {"metadata": {"labels": {"app": "py-web"}},
                          "spec": {"containers": [{"name": "a", "image": "nginx:1.26"},
                                                  {"name": "b", "image": "busybox"}]}}},
})
patched = apps.patch_namespaced_deployment(
    "py-web", NS, {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "busybox:1.36"}]}}}})
images = [(c.name, c.image) for c in patched.spec.template.spec.containers]
check("strategic patch merges containers by name", images == [("a", "nginx:1.26"), ("b", "busybox:1.36")])
apps.delete_namespaced_deployment("py-web", NS)
print("python client: all checks passed")
