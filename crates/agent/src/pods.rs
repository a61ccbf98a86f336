//! The pods bound to this node: one worker per pod gives it a Running
//! status with its IP (the node's, host-network style, unless a client
//! set one), runs its containers' readiness probes and writes the Ready
//! condition when it changes. A terminating pod is removed when its grace
//! period ends, or as soon as a probe says its workload stopped.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use tokio::sync::watch as channel;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wharf_kube::events::Recorder;
use wharf_kube::{watch, ObjectKey, Relister, Table};

use crate::probe::{self, Check, ProbePolicy};
use crate::AgentConfig;
use wharf_api::ipfamily::NodeIps;

struct Worker {
    uid: String,
    updates: channel::Sender<Pod>,
    task: tokio::task::JoinHandle<()>,
}

/// The pods bound to this node, each with its worker; the table of the
/// node's pod watch.
pub struct PodManager {
    client: kube::Client,
    config: AgentConfig,
    /// Probe failures, as the kubelet reports them.
    events: Recorder,
    workers: HashMap<ObjectKey, Worker>,
}

impl PodManager {
    pub fn new(client: kube::Client, config: AgentConfig) -> Self {
        let events = Recorder::new(client.clone(), "kubelet", config.node_name.clone());
        Self { client, config, events, workers: HashMap::new() }
    }

    /// Follows the node's pods until `token` is cancelled; the workers stop
    /// with it.
    pub async fn run(mut self, token: CancellationToken) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.config.node_name);
        let events = watch::watch(api, watcher::Config::default().fields(&selector));
        futures::pin_mut!(events);
        let mut relister = Relister::default();
        loop {
            let event = tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = events.next() => event,
            };
            relister.handle(&mut self, event);
        }
        for (_, worker) in self.workers.drain() {
            worker.task.abort();
        }
    }
}

impl Table<Pod> for PodManager {
    fn apply(&mut self, pod: Pod) {
        let key = ObjectKey::of(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(worker) = self.workers.get(&key) {
            if worker.uid == uid && !worker.task.is_finished() {
                worker.updates.send_replace(pod);
                return;
            }
            self.delete(&key);
        }
        let (updates, rx) = channel::channel(pod);
        let task = tokio::spawn(pod_worker(self.client.clone(), self.config.clone(), self.events.clone(), rx));
        self.workers.insert(key, Worker { uid, updates, task });
    }

    fn delete(&mut self, key: &ObjectKey) {
        if let Some(worker) = self.workers.remove(key) {
            worker.task.abort();
        }
    }

    fn delete_unlisted(&mut self, listed: &HashSet<ObjectKey>) {
        let held = self.workers.keys().cloned().collect();
        wharf_kube::delete_missing(self, held, listed);
    }
}

/// Probe state of one container.
struct ContainerProbe {
    name: String,
    check: Option<Check>,
    ready: bool,
    successes: i32,
    failures: i32,
    success_threshold: i32,
    failure_threshold: i32,
    period: Duration,
    timeout: Duration,
    next: Instant,
}

fn probes_for(pod: &Pod, pod_ip: IpAddr, policy: &ProbePolicy) -> Vec<ContainerProbe> {
    let was_ready: HashMap<&str, bool> =
        pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).into_iter().flatten().map(|c| (c.name.as_str(), c.ready)).collect();
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            let probe = c.readiness_probe.as_ref();
            let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
            let check = probe.map(|p| probe::check_for(c, p, pod_ip, policy));
            if let Some(Check::Unsupported(why)) = &check {
                tracing::warn!(pod = ?pod.metadata.name, container = %c.name, "readiness probe cannot run: {why}");
            }
            ContainerProbe {
                name: c.name.clone(),
                ready: probe.is_none() || was_ready.get(c.name.as_str()).copied().unwrap_or(false),
                check,
                successes: 0,
                failures: 0,
                success_threshold: probe.and_then(|p| p.success_threshold).unwrap_or(1).max(1),
                failure_threshold: probe.and_then(|p| p.failure_threshold).unwrap_or(3).max(1),
                period: secs(probe.and_then(|p| p.period_seconds), 10).max(Duration::from_millis(100)),
                timeout: secs(probe.and_then(|p| p.timeout_seconds), 1).max(Duration::from_millis(100)),
                next: Instant::now() + secs(probe.and_then(|p| p.initial_delay_seconds), 0),
            }
        })
        .collect()
}

impl ContainerProbe {
    /// Records a result; true if readiness flipped.
    fn record(&mut self, passed: bool) -> bool {
        if passed {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let flip = if self.ready { self.failures >= self.failure_threshold } else { self.successes >= self.success_threshold };
        if flip {
            self.ready = !self.ready;
        }
        flip
    }
}

/// The IP the pod is reached at: one a client set, else the node's.
fn pod_ip(pod: &Pod, node_ip: IpAddr) -> IpAddr {
    pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()).unwrap_or(node_ip)
}

/// The pod's IPs, one per family: the node's (host-network model), or
/// what a client set, as a kubelet would, when its IP is not the node's.
fn pod_ips(pod: &Pod, node_ips: &NodeIps) -> Vec<String> {
    let ip = pod_ip(pod, node_ips.primary());
    if node_ips.iter().any(|n| n == ip) {
        return node_ips.iter().map(|n| n.to_string()).collect();
    }
    let listed: Vec<String> = pod.status.iter().flat_map(|s| s.pod_ips.iter().flatten()).map(|p| p.ip.clone()).collect();
    if listed.first() == Some(&ip.to_string()) {
        listed
    } else {
        vec![ip.to_string()]
    }
}

fn condition(current: Option<&PodStatus>, type_: &str, ok: bool, reason: Option<String>, message: Option<String>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let previous = current.and_then(|s| s.conditions.as_ref()).into_iter().flatten().find(|c| c.type_ == type_);
    let since = previous.filter(|c| c.status == status).and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason,
        message,
        last_transition_time: Some(since.unwrap_or_else(|| Time(jiff::Timestamp::now()))),
        ..Default::default()
    }
}

/// The status a kubelet would report for this pod.
fn desired_status(pod: &Pod, node_ips: &NodeIps, probes: &[ContainerProbe]) -> PodStatus {
    let current = pod.status.as_ref();
    let ips = pod_ips(pod, node_ips);
    let node_ip = node_ips.primary();
    let started = current.and_then(|s| s.start_time.clone()).unwrap_or_else(|| Time(jiff::Timestamp::now()));
    let unready: Vec<&str> = probes.iter().filter(|p| !p.ready).map(|p| p.name.as_str()).collect();
    let ready = unready.is_empty();
    let (reason, message) = if ready {
        (None, None)
    } else {
        (Some("ContainersNotReady".to_string()), Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    let spec = pod.spec.as_ref();
    let statuses = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .zip(probes)
        .map(|(c, p)| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: Some(format!("wharf://{}/{}", pod.metadata.uid.as_deref().unwrap_or_default(), c.name)),
            ready: p.ready,
            restart_count: 0,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(started.clone()) }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    PodStatus {
        phase: Some("Running".into()),
        host_ip: Some(node_ip.to_string()),
        host_ips: Some(node_ips.iter().map(|ip| HostIP { ip: ip.to_string() }).collect()),
        pod_ip: ips.first().cloned(),
        pod_ips: Some(ips.into_iter().map(|ip| PodIP { ip }).collect()),
        start_time: Some(started),
        qos_class: current.and_then(|s| s.qos_class.clone()).or_else(|| Some("BestEffort".into())),
        conditions: Some(vec![
            condition(current, "PodReadyToStartContainers", true, None, None),
            condition(current, "Initialized", true, None, None),
            condition(current, "Ready", ready, reason.clone(), message.clone()),
            condition(current, "ContainersReady", ready, reason, message),
            condition(current, "PodScheduled", true, None, None),
        ]),
        container_statuses: Some(statuses),
        ..Default::default()
    }
}

async fn write_status(api: &Api<Pod>, pod: &Pod, status: &PodStatus) {
    if pod.status.as_ref() == Some(status) {
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = serde_json::json!({"status": status});
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::warn!(pod = %name, error = %e, "pod status update failed");
    }
}

/// Removes a terminating pod whose grace period ended or whose workload
/// stopped (the uid guards against removing a pod created anew).
async fn finish(api: &Api<Pod>, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match api.delete(&name, &params).await {
            Ok(_) => return,
            // Gone already, or a new pod of the same name: nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, retry_in = ?delay, "removing a terminated pod failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn deletion_deadline(pod: &Pod) -> Option<Instant> {
    let at = pod.metadata.deletion_timestamp.as_ref()?.0;
    let left = at.duration_since(jiff::Timestamp::now());
    Some(Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO))
}

async fn pod_worker(client: kube::Client, config: AgentConfig, events: Recorder, mut updates: channel::Receiver<Pod>) {
    let (node_ips, metrics) = (config.node_ips.clone(), config.metrics.clone());
    let node_ip = node_ips.primary();
    let mut pod = updates.borrow_and_update().clone();
    if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return;
    }
    let api: Api<Pod> = Api::namespaced(client, pod.metadata.namespace.as_deref().unwrap_or_default());
    let mut probes = probes_for(&pod, pod_ip(&pod, node_ip), &config.probes);
    write_status(&api, &pod, &desired_status(&pod, &node_ips, &probes)).await;
    let far = || Instant::now() + Duration::from_secs(3600);
    loop {
        let next_probe = probes.iter().filter(|p| p.check.is_some()).map(|p| p.next).min().unwrap_or_else(far);
        let deadline = deletion_deadline(&pod).unwrap_or_else(far);
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                pod = updates.borrow_and_update().clone();
                write_status(&api, &pod, &desired_status(&pod, &node_ips, &probes)).await;
            }
            _ = tokio::time::sleep_until(next_probe) => {
                let now = Instant::now();
                let mut flipped = false;
                for p in probes.iter_mut().filter(|p| p.next <= now) {
                    p.next = now + p.period;
                    let Some(check) = &p.check else { continue };
                    let result = probe::run(check, p.timeout).await;
                    metrics.probed(result.is_ok());
                    if let Err(why) = &result {
                        let mut container = wharf_kube::events::reference(&pod);
                        container.field_path = Some(format!("spec.containers{{{}}}", p.name));
                        events.warn(container, "Unhealthy", format!("Readiness probe failed: {why}"));
                    }
                    flipped |= p.record(result.is_ok());
                }
                if flipped {
                    let terminating = pod.metadata.deletion_timestamp.is_some();
                    if terminating && probes.iter().any(|p| !p.ready) {
                        finish(&api, &pod).await;
                        return;
                    }
                    write_status(&api, &pod, &desired_status(&pod, &node_ips, &probes)).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                finish(&api, &pod).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u1"},
            "spec": {"nodeName": "n", "containers": [
                {"name": "a", "image": "x", "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"tcpSocket": {"port": "http"}, "failureThreshold": 2, "successThreshold": 1, "periodSeconds": 1}},
                {"name": "b", "image": "y"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn status_is_running_with_the_node_ip_unless_one_was_set() {
        let node = &"127.0.0.7,fd00::7".parse::<NodeIps>().unwrap();
        let p = pod(serde_json::json!({}));
        let probes = probes_for(&p, node.primary(), &ProbePolicy::default());
        let status = desired_status(&p, node, &probes);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.7"));
        let ips: Vec<&str> = status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
        assert_eq!(ips, ["127.0.0.7", "fd00::7"], "one per family, as the node has");
        let ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [a]"));
        let set = pod(serde_json::json!({"podIP": "198.18.0.5"}));
        let status = desired_status(&set, node, &probes);
        assert_eq!(status.pod_ip.as_deref(), Some("198.18.0.5"));
        assert_eq!(status.pod_ips.unwrap().len(), 1);
        let both = pod(serde_json::json!({"podIP": "198.18.0.5", "podIPs": [{"ip": "198.18.0.5"}, {"ip": "fd00:18::5"}]}));
        assert_eq!(desired_status(&both, node, &probes).pod_ips.unwrap().len(), 2);
    }

    #[test]
    fn thresholds_decide_flips() {
        let p = pod(serde_json::json!({}));
        let mut probes = probes_for(&p, "127.0.0.1".parse().unwrap(), &ProbePolicy::default());
        let a = &mut probes[0];
        assert!(!a.ready);
        assert!(a.record(true));
        assert!(a.ready);
        assert!(!a.record(false));
        assert!(a.record(false));
        assert!(!a.ready);
        assert!(probes[1].ready, "a container without a probe is ready");
    }

    #[test]
    fn a_written_status_is_stable() {
        let node = &NodeIps::from("127.0.0.7".parse::<IpAddr>().unwrap());
        let mut p = pod(serde_json::json!({}));
        let probes = probes_for(&p, node.primary(), &ProbePolicy::default());
        let first = desired_status(&p, node, &probes);
        p.status = Some(first.clone());
        assert_eq!(desired_status(&p, node, &probes), first);
    }
}
