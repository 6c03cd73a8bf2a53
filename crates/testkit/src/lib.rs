//! Dev-only fixtures for rkube's tests and benchmarks. Never a dependency of the product.

pub mod etcd;
pub mod hollow;
pub mod server;

pub use etcd::{EtcdCluster, EtcdError};
pub use hollow::{HollowError, HollowNodes, HollowOptions, HollowStats};
pub use server::{Kubectl, RkubeServer, ServerError, resolve_kubectl};
