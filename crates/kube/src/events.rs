//! Events, as Kubernetes' components write them, so `kubectl describe`
//! and `kubectl get events` tell what happened to an object. Writes go out
//! in the background; the same event on the same object within
//! `REPEAT_WINDOW` is written once (bounded memory: at most `REMEMBERED`
//! recent events are remembered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::Resource;

const REPEAT_WINDOW: Duration = Duration::from_secs(600);
const REMEMBERED: usize = 4096;

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    /// The writing component, as `source.component` (`wharf-proxy`).
    component: &'static str,
    host: String,
    recent: Arc<Mutex<HashMap<EventKey, Instant>>>,
}

/// (namespace, kind, name) of the object; reason; message.
type EventKey = ((String, String, String), String, String);

/// A reference to `obj` for an event's `involvedObject`.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str, host: impl Into<String>) -> Self {
        Self { client, component, host: host.into(), recent: Arc::default() }
    }

    /// Whether this event was written recently (and remembers it if not).
    fn is_repeat(&self, object: &ObjectReference, reason: &str, message: &str) -> bool {
        let key = (
            (
                object.namespace.clone().unwrap_or_default(),
                object.kind.clone().unwrap_or_default(),
                object.name.clone().unwrap_or_default(),
            ),
            reason.to_string(),
            message.to_string(),
        );
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if recent.get(&key).is_some_and(|at| now.duration_since(*at) < REPEAT_WINDOW) {
            return true;
        }
        if recent.len() >= REMEMBERED {
            recent.retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
            if recent.len() >= REMEMBERED {
                recent.clear();
            }
        }
        recent.insert(key, now);
        false
    }

    /// Writes a Warning event about `object`.
    pub fn warn(&self, object: ObjectReference, reason: &str, message: String) {
        self.publish(object, "Warning", reason, message);
    }

    /// Writes a Normal event about `object`.
    pub fn normal(&self, object: ObjectReference, reason: &str, message: String) {
        self.publish(object, "Normal", reason, message);
    }

    fn publish(&self, object: ObjectReference, type_: &str, reason: &str, message: String) {
        if self.is_repeat(&object, reason, &message) {
            return;
        }
        let namespace = object.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let now = Time(jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", object.name.as_deref().unwrap_or("event"))),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource { component: Some(self.component.into()), host: Some(self.host.clone()) }),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.host.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(error = %e, reason = ?event.reason, "writing an event failed");
            }
        });
    }
}
