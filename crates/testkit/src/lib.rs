//! Dev-only fixtures for rkube's tests and benchmarks. Never a dependency of the product.

pub mod etcd;
pub mod hollow;
pub mod server;
pub mod slim_pod;

pub use etcd::{EtcdCluster, EtcdError};
pub use hollow::{HollowError, HollowNodes, HollowOptions, HollowStats};
pub use server::{Control, Kubectl, RkubeServer, ServerError, resolve_kubectl};
pub use slim_pod::SlimPod;

/// Polls `check` until it yields a value, panicking with `what` after `within`. For tests
/// of things that happen asynchronously (a pod scheduled, a lease renewed); the timeout
/// only bounds a hang, it is not a performance assertion.
pub async fn eventually<T>(what: &str, within: std::time::Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
