//! ImageLocality: favour nodes that already hold the pod's images, weighting each image by
//! its size and by how many nodes have it (an image every node has says nothing), scaled
//! between 23 MiB and 1000 MiB per container as upstream does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::NodeInfo;

const MIB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MIB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MIB;

/// An image name as nodes report it: without a tag or digest it means `:latest`.
pub fn normalized(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The images a node reports, by each of their names, with their sizes.
pub fn node_images(node: &Node) -> HashMap<String, i64> {
    node.status
        .iter()
        .flat_map(|s| s.images.iter().flatten())
        .flat_map(|image| {
            let size = image.size_bytes.unwrap_or(0);
            image.names.iter().flatten().map(move |name| (normalized(name), size))
        })
        .collect()
}

/// 0..=100 for `node`; `spread` says on how many of `total` nodes each image is.
pub fn score(pod: &Pod, node: &NodeInfo, spread: &HashMap<String, usize>, total: usize) -> i64 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    let images = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter_map(|c| c.image.as_deref());
    let mut containers = 0i64;
    let mut sum = 0i64;
    for image in images {
        containers += 1;
        let name = normalized(image);
        if let Some(size) = node.images.get(&name) {
            let share = spread.get(&name).copied().unwrap_or(1) as f64 / total.max(1) as f64;
            sum += (*size as f64 * share) as i64;
        }
    }
    let max_threshold = MAX_CONTAINER_THRESHOLD * containers.max(1);
    let clamped = sum.clamp(MIN_THRESHOLD, max_threshold);
    100 * (clamped - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn names_without_tags_mean_latest() {
        assert_eq!(normalized("nginx"), "nginx:latest");
        assert_eq!(normalized("registry:5000/app"), "registry:5000/app:latest");
        assert_eq!(normalized("nginx:1.7.9"), "nginx:1.7.9");
        assert_eq!(normalized("nginx@sha256:abc"), "nginx@sha256:abc");
    }

    #[test]
    fn big_images_present_everywhere_score_high_and_small_ones_not_at_all() {
        let with = node(
            "a",
            json!({"status": {"images": [{"names": ["nginx:1.7.9"], "sizeBytes": 500 * MIB},
                                          {"names": ["pause:3.9"], "sizeBytes": MIB}]}}),
        );
        let without = node("b", json!({}));
        let spread: HashMap<String, usize> = [("nginx:1.7.9".to_string(), 1), ("pause:3.9".to_string(), 1)].into();
        let p = pod(json!({"spec": {"containers": [{"name": "c", "image": "nginx:1.7.9"}]}}));
        // 500 MiB on 1 of 2 nodes: 250 MiB, (250-23)/(1000-23) of the range.
        assert_eq!(score(&p, &with, &spread, 2), 100 * (250 - 23) / (1000 - 23));
        assert_eq!(score(&p, &without, &spread, 2), 0);
        let small = pod(json!({"spec": {"containers": [{"name": "c", "image": "pause:3.9"}]}}));
        assert_eq!(score(&small, &with, &spread, 1), 0);
    }
}
