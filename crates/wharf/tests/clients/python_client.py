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

w = watch.Watch()
for event in w.stream(v1.list_namespaced_service, "default", label_selector="app=py", resource_version=rv, timeout_seconds=20):
    print(json.dumps({"event": event["type"], "name": event["object"].metadata.name}), flush=True)
    if event["type"] == "DELETED":
        w.stop()
