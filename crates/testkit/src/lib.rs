//! Dev-only fixtures for rkube's tests and benchmarks. Never a dependency of the product.

pub mod etcd;

pub use etcd::{EtcdCluster, EtcdError};
