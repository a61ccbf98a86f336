"""The official Python client (Debian python3-kubernetes) against wharf:
create, read, patch, list and delete a Service, then watch from the
list's resourceVersion and print every event it sees, one JSON per line."""
import json
import sys

from kubernetes import client, config, watch

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
rv = v1.list_namespaced_service("default", label_selector="app=py").metadata.resource_version
body = client.V1Service(
    metadata=client.V1ObjectMeta(name="py-svc", labels={"app": "py"}),
    spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80, protocol="TCP")]),
)
created = v1.create_namespaced_service("default", body)
print(json.dumps({"created": created.spec.cluster_ip}))
v1.patch_namespaced_service("py-svc", "default", {"metadata": {"labels": {"tier": "db"}}})
read = v1.read_namespaced_service("py-svc", "default")
print(json.dumps({"read": read.metadata.labels}))
listed = v1.list_namespaced_service("default", label_selector="app=py")
print(json.dumps({"listed": [s.metadata.name for s in listed.items]}))
v1.delete_namespaced_service("py-svc", "default")

# Pages: limit=1, then the continue token, one consistent listing.
for name in ["page-a", "page-b"]:
    v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels={"app": "pages"})))
first = v1.list_namespaced_config_map("default", label_selector="app=pages", limit=1)
v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="page-c", labels={"app": "pages"})))
rest = v1.list_namespaced_config_map("default", label_selector="app=pages", _continue=first.metadata._continue)
print(json.dumps({"pages": [[c.metadata.name for c in first.items], [c.metadata.name for c in rest.items]],
                  "same_revision": first.metadata.resource_version == rest.metadata.resource_version,
                  "more": rest.metadata._continue}))

w = watch.Watch()
for event in w.stream(v1.list_namespaced_service, "default", label_selector="app=py", resource_version=rv, timeout_seconds=20):
    print(json.dumps({"event": event["type"], "name": event["object"].metadata.name}), flush=True)
    if event["type"] == "DELETED":
        w.stop()
