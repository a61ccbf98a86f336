//! A watch of one kind as a stream of kube-runtime watcher events: list,
//! then watch, relist after 410 Gone, reconnect with backoff. Errors are
//! logged at warn (with the kind) and retried by the watcher itself, so
//! consumers only see events.

use std::fmt::Debug;

use futures::stream::{BoxStream, StreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde::de::DeserializeOwned;

/// Watches `api` with `config`, forever (until the stream is dropped).
pub fn watch<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, Event<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::kind(&());
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let event = match event {
                // No consumer reads field ownership; it is often half an object.
                Ok(event) => Some(event.modify(|obj| obj.meta_mut().managed_fields = None)),
                // A watch that fell behind the server's history: expected
                // after a long gap, and answered by a relist.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::info!(kind = %kind, "watch expired (410); relisting");
                    None
                }
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "watch failed; retrying with backoff");
                    None
                }
            };
            futures::future::ready(event)
        })
        .boxed()
}

/// Watches every object of the kind, in every namespace.
pub fn watch_all<K>(client: &kube::Client) -> BoxStream<'static, Event<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watch(Api::<K>::all(client.clone()), watcher::Config::default())
}

/// A watch event carrying what a consumer keeps of the object (a compact
/// view, `T: From<K>`) instead of the object: applied to each event as it
/// arrives, before anything holds it (a relist's buffer included).
pub fn kept<K, T: From<K>>(event: Event<K>) -> Event<T> {
    match event {
        Event::Apply(o) => Event::Apply(T::from(o)),
        Event::Delete(o) => Event::Delete(T::from(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(T::from(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// A watch event for a consumer that has nothing to do with the objects
/// `wanted` refuses (the mirroring controller and services that select
/// pods): it holds them as missing. An update that makes an object
/// unwanted comes out as its deletion, and a relist leaves it out (None:
/// nothing to pass on), so at 10,000 services it holds only the few it
/// acts on. A later update that makes it wanted again applies it.
pub fn only_wanted<T>(event: Event<T>, wanted: impl Fn(&T) -> bool) -> Option<Event<T>> {
    match event {
        Event::Apply(o) if !wanted(&o) => Some(Event::Delete(o)),
        Event::InitApply(o) if !wanted(&o) => None,
        event => Some(event),
    }
}
