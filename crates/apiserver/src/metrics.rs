//! Prometheus metrics at `/metrics`: requests by verb, resource and code with latency
//! histograms, open watches, and datastore latency by operation (upstream's names).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rkube_store::{Bytes, KeyValue, RangeRequest, RangeResponse, Store, Watcher};

type Labels = Vec<(String, String)>;

fn request_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    watches: Family<Labels, Gauge>,
    store_latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(request_histogram);
        let watches = Family::<Labels, Gauge>::default();
        let store_latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(request_histogram);
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, resource and HTTP response code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb and resource",
            latency.clone(),
        );
        registry.register(
            "apiserver_longrunning_requests",
            "Gauge of all active long-running apiserver requests (watches) broken out by verb and resource",
            watches.clone(),
        );
        registry.register(
            "etcd_request_duration_seconds",
            "Datastore request latency in seconds for each operation",
            store_latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            watches,
            store_latency,
        }
    }

    pub fn observe_request(&self, verb: &str, resource: &str, code: u16, started: Instant) {
        let labels = vec![
            ("verb".to_string(), verb.to_string()),
            ("resource".to_string(), resource.to_string()),
        ];
        self.latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let mut with_code = labels;
        with_code.push(("code".to_string(), code.to_string()));
        self.requests.get_or_create(&with_code).inc();
    }

    /// Counts an open watch until the returned guard is dropped.
    pub fn watch_started(self: &Arc<Self>, resource: &str) -> WatchGuard {
        let labels = vec![
            ("verb".to_string(), "WATCH".to_string()),
            ("resource".to_string(), resource.to_string()),
        ];
        self.watches.get_or_create(&labels).inc();
        WatchGuard {
            metrics: Arc::clone(self),
            labels,
        }
    }

    fn observe_store(&self, operation: &str, started: Instant) {
        let labels = vec![("operation".to_string(), operation.to_string())];
        self.store_latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &self.registry) {
            tracing::warn!(%err, "encoding metrics failed");
        }
        text
    }
}

pub(crate) struct WatchGuard {
    metrics: Arc<Metrics>,
    labels: Labels,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.metrics.watches.get_or_create(&self.labels).dec();
    }
}

/// The store with every operation timed.
pub(crate) struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn write_intents(&self) -> Option<&rkube_store::WriteIntents> {
        self.inner.write_intents()
    }

    async fn current_revision(&self) -> rkube_store::Result<i64> {
        let started = Instant::now();
        let result = self.inner.current_revision().await;
        self.metrics.observe_store("revision", started);
        result
    }

    async fn compacted_revision(&self) -> rkube_store::Result<i64> {
        self.inner.compacted_revision().await
    }

    async fn get(&self, key: &str) -> rkube_store::Result<(i64, Option<KeyValue>)> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.observe_store("get", started);
        result
    }

    async fn range(&self, request: RangeRequest) -> rkube_store::Result<RangeResponse> {
        let started = Instant::now();
        let result = self.inner.range(request).await;
        self.metrics.observe_store("range", started);
        result
    }

    async fn count(&self, prefix: &str) -> rkube_store::Result<(i64, i64)> {
        let started = Instant::now();
        let result = self.inner.count(prefix).await;
        self.metrics.observe_store("count", started);
        result
    }

    async fn create(&self, key: &str, value: Bytes) -> rkube_store::Result<i64> {
        let started = Instant::now();
        let result = self.inner.create(key, value).await;
        self.metrics.observe_store("create", started);
        result
    }

    async fn update(&self, key: &str, value: Bytes, expected_mod_revision: i64) -> rkube_store::Result<i64> {
        let started = Instant::now();
        let result = self.inner.update(key, value, expected_mod_revision).await;
        self.metrics.observe_store("update", started);
        result
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> rkube_store::Result<(i64, KeyValue)> {
        let started = Instant::now();
        let result = self.inner.delete(key, expected_mod_revision).await;
        self.metrics.observe_store("delete", started);
        result
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> rkube_store::Result<Watcher> {
        let started = Instant::now();
        let result = self.inner.watch(prefix, after_revision).await;
        self.metrics.observe_store("watch", started);
        result
    }

    async fn compact(&self, revision: i64) -> rkube_store::Result<()> {
        let started = Instant::now();
        let result = self.inner.compact(revision).await;
        self.metrics.observe_store("compact", started);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_names() {
        let metrics = Arc::new(Metrics::new());
        metrics.observe_request("LIST", "pods", 200, Instant::now());
        let guard = metrics.watch_started("pods");
        let text = metrics.render();
        assert!(
            text.contains(r#"apiserver_request_total{verb="LIST",resource="pods",code="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("apiserver_request_duration_seconds_bucket"), "{text}");
        assert!(
            text.contains(r#"apiserver_longrunning_requests{verb="WATCH",resource="pods"} 1"#),
            "{text}"
        );
        drop(guard);
        assert!(
            metrics
                .render()
                .contains(r#"apiserver_longrunning_requests{verb="WATCH",resource="pods"} 0"#)
        );
    }
}
