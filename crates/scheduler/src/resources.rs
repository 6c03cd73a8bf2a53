//! Resource amounts as the scheduler counts them: cpu in millicores, everything else in
//! whole units (bytes, pods, extended resources).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), hugepages and the like.
    pub scalar: BTreeMap<String, i64>,
}

/// A quantity's value in units, or in thousandths for cpu; rounded up as upstream does.
fn amount(name: &str, quantity: &Quantity) -> i64 {
    let value = rkube_api::quantity::parse(&quantity.0).unwrap_or(0.0);
    let scaled = if name == "cpu" { value * 1000.0 } else { value };
    scaled.ceil() as i64
}

impl Resources {
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut out = Self::default();
        for (name, quantity) in list.into_iter().flatten() {
            out.set(name, amount(name, quantity));
        }
        out
    }

    fn set(&mut self, name: &str, value: i64) {
        match name {
            "cpu" => self.milli_cpu = value,
            "memory" => self.memory = value,
            "ephemeral-storage" => self.ephemeral_storage = value,
            "pods" => self.pods = value,
            other => {
                self.scalar.insert(other.to_string(), value);
            }
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (name, value) in &other.scalar {
            *self.scalar.entry(name.clone()).or_default() += value;
        }
    }

    /// Each resource the larger of the two (init containers run one at a time).
    fn max(&mut self, other: &Self) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, value) in &other.scalar {
            let entry = self.scalar.entry(name.clone()).or_default();
            *entry = (*entry).max(*value);
        }
    }
}

/// What a pod asks of a node: the sum of its containers' requests or its largest init
/// container's, whichever is more, plus its overhead; and one pod.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Resources::default()
        };
    };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    let mut total = Resources::default();
    for container in &spec.containers {
        total.add(&requests(container));
    }
    for init in spec.init_containers.iter().flatten() {
        total.max(&requests(init));
    }
    total.add(&Resources::from_list(spec.overhead.as_ref()));
    total.pods = 1;
    total
}

/// Requests for scoring: containers that ask for no cpu or memory count as asking for
/// 100m and 200Mi, as upstream's scoring does, so empty pods still spread.
pub fn pod_requests_non_zero(pod: &Pod) -> (i64, i64) {
    let mut cpu = 0;
    let mut memory = 0;
    for container in pod.spec.iter().flat_map(|s| &s.containers) {
        let r = Resources::from_list(container.resources.as_ref().and_then(|r| r.requests.as_ref()));
        cpu += if r.milli_cpu == 0 { 100 } else { r.milli_cpu };
        memory += if r.memory == 0 { 200 * 1024 * 1024 } else { r.memory };
    }
    (cpu, memory)
}

pub fn allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    Resources::from_list(status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())))
}
