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

/// The pod's images as nodes name them, once per decision.
pub fn pod_images(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .map(|c| normalized(c.image.as_deref().unwrap_or_default()))
        .collect()
}

/// 0..=100 for `node`; `spread` says on how many of `total` nodes each image is.
pub fn score(images: &[String], node: &NodeInfo, spread: &HashMap<String, usize>, total: usize) -> i64 {
    if node.images.is_empty() {
        return 0;
    }
    let sum: i64 = images
        .iter()
        .filter_map(|name| {
            let size = node.images.get(name)?;
            let share = spread.get(name).copied().unwrap_or(1) as f64 / total.max(1) as f64;
            Some((*size as f64 * share) as i64)
        })
        .sum();
    let containers = i64::try_from(images.len()).unwrap_or(i64::MAX).max(1);
    let max_threshold = MAX_CONTAINER_THRESHOLD * containers;
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
        let images = pod_images(&p);
        assert_eq!(score(&images, &with, &spread, 2), 100 * (250 - 23) / (1000 - 23));
        assert_eq!(score(&images, &without, &spread, 2), 0);
        let small = pod(json!({"spec": {"containers": [{"name": "c", "image": "pause:3.9"}]}}));
        assert_eq!(score(&pod_images(&small), &with, &spread, 1), 0);
    }
}
