//! An informer: a watch of every object of a kind feeding a reflector store, whose changes
//! are handed to the controller (which usually queues the owner's key).

use std::future::Future;

use futures_util::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// Spawns the watch of every `K` into `tasks` and returns its store; `handle` gets each
/// object seen (`false`) or deleted (`true`).
pub fn spawn<K, F, Fut>(tasks: &mut tokio::task::JoinSet<()>, client: &kube::Client, handle: F) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(K, bool) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    spawn_with(tasks, Api::<K>::all(client.clone()), watcher::Config::default(), handle)
}

/// [`spawn`] over some of the objects: those `api` reaches (a namespace) that `config`
/// selects (labels).
pub fn spawn_with<K, F, Fut>(
    tasks: &mut tokio::task::JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    handle: F,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(K, bool) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (store, writer) = reflector::store::<K>();
    let events = watcher(api, config)
        .default_backoff()
        .modify(crate::trim)
        .reflect(writer);
    tasks.spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => handle(object, false).await,
                Ok(watcher::Event::Delete(object)) => handle(object, true).await,
                _ => {}
            }
        }
    });
    store
}
