//! Events, as Kubernetes' components write them, so `kubectl describe`
//! and `kubectl get events` tell what happened to an object. Writes go out
//! in the background. The same event on the same object within
//! `REPEAT_WINDOW` is aggregated as client-go's recorder does it: one Event
//! whose `count` and `lastTimestamp` grow (patched at most every
//! `PATCH_EVERY`, so a probe failing every second costs one write per
//! `PATCH_EVERY`). Memory is bounded: at most `REMEMBERED` recent events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;

const REPEAT_WINDOW: Duration = Duration::from_secs(600);
const REMEMBERED: usize = 4096;
const PATCH_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    /// The writing component, as `source.component` (`wharf-proxy`).
    component: &'static str,
    host: String,
    recent: Arc<Mutex<HashMap<EventKey, Seen>>>,
}

/// An event written recently: its name, how often it happened, and when
/// it was first written and last patched.
struct Seen {
    name: String,
    count: i32,
    first: Instant,
    patched: Instant,
}

/// What to write for one occurrence.
enum Write {
    Create { name: String },
    Count { name: String, count: i32 },
    Nothing,
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

    /// What one more occurrence of this event writes (and remembers it).
    fn occurrence(&self, object: &ObjectReference, reason: &str, message: &str) -> Write {
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
        if let Some(seen) = recent.get_mut(&key).filter(|s| now.duration_since(s.first) < REPEAT_WINDOW) {
            seen.count = seen.count.saturating_add(1);
            if now.duration_since(seen.patched) < PATCH_EVERY {
                return Write::Nothing;
            }
            seen.patched = now;
            return Write::Count { name: seen.name.clone(), count: seen.count };
        }
        if recent.len() >= REMEMBERED {
            recent.retain(|_, s| now.duration_since(s.first) < REPEAT_WINDOW);
            if recent.len() >= REMEMBERED {
                recent.clear();
            }
        }
        // Named as client-go names them: the object and a unique suffix.
        let stamp = jiff::Timestamp::now().as_nanosecond();
        let name = format!("{}.{stamp:x}", object.name.as_deref().unwrap_or("event"));
        recent.insert(key, Seen { name: name.clone(), count: 1, first: now, patched: now });
        Write::Create { name }
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
        let write = self.occurrence(&object, reason, &message);
        let namespace = object.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let now = Time(jiff::Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let event = |name: String| Event {
            metadata: ObjectMeta { name: Some(name), namespace: Some(namespace.clone()), ..Default::default() },
            involved_object: object.clone(),
            reason: Some(reason.into()),
            message: Some(message.clone()),
            type_: Some(type_.into()),
            source: Some(EventSource { component: Some(self.component.into()), host: Some(self.host.clone()) }),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.host.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now.clone()),
            count: Some(1),
            ..Default::default()
        };
        match write {
            Write::Nothing => {}
            Write::Create { name } => {
                let event = event(name);
                tokio::spawn(async move {
                    if let Err(e) = api.create(&PostParams::default(), &event).await {
                        tracing::warn!(error = %e, reason = ?event.reason, "writing an event failed");
                    }
                });
            }
            Write::Count { name, count } => {
                let patch = serde_json::json!({"count": count, "lastTimestamp": now});
                let fresh = event(name.clone());
                tokio::spawn(async move {
                    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        // Expired (or deleted) meanwhile: write it anew.
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            if let Err(e) = api.create(&PostParams::default(), &fresh).await {
                                tracing::warn!(error = %e, reason = ?fresh.reason, "writing an event failed");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, reason = ?fresh.reason, "updating an event's count failed"),
                        Ok(_) => {}
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repeats_are_counted_on_one_event_and_patched_at_a_bounded_rate() {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let recorder = Recorder::new(client, "test", "h");
        let pod = ObjectReference { name: Some("p".into()), namespace: Some("d".into()), kind: Some("Pod".into()), ..Default::default() };
        let Write::Create { name } = recorder.occurrence(&pod, "Unhealthy", "m") else { panic!("the first is created") };
        assert!(name.starts_with("p."), "{name}");
        assert!(matches!(recorder.occurrence(&pod, "Unhealthy", "m"), Write::Nothing), "counted, not yet written");
        assert!(matches!(recorder.occurrence(&pod, "Unhealthy", "other"), Write::Create { .. }), "another message, another event");
        for seen in recorder.recent.lock().unwrap().values_mut() {
            seen.patched = seen.patched.checked_sub(PATCH_EVERY).unwrap_or(seen.patched);
        }
        match recorder.occurrence(&pod, "Unhealthy", "m") {
            Write::Count { name: patched, count } => assert_eq!((patched, count), (name, 3)),
            _ => panic!("the third occurrence patches the count"),
        }
    }
}
