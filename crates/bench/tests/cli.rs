//! The benchmark binary's contract: its JSON lines and its errors. (Figures are measured,
//! never asserted.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rkube-bench"))
}

/// The figures a successful `--json` run printed, as "case metric"; each line one figure.
fn figures(out: &std::process::Output, bench: &str) -> HashSet<String> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let figure: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(figure["bench"], bench);
        assert!(figure["unit"].is_string());
        assert!(figure["value"].is_number(), "{line}");
        seen.insert(format!(
            "{} {}",
            figure["case"].as_str().unwrap(),
            figure["metric"].as_str().unwrap()
        ));
    }
    seen
}

#[test]
fn store_bench_prints_one_json_object_per_figure() {
    let out = bench()
        .args(["store", "--quick", "--json", "--backends", "sqlite", "--watchers", "10"])
        .output()
        .unwrap();
    let seen = figures(&out, "store");
    for (case, metric) in [
        ("sqlite/1 client", "creates_per_sec"),
        ("sqlite/16 clients", "creates_per_sec"),
        ("sqlite/64 clients", "create_p99"),
        ("sqlite/1000 keys", "get_p99"),
        ("sqlite/1000 keys", "range_all_p50"),
        ("sqlite/10 watchers", "lag_p99"),
        ("sqlite/10 watchers", "events_missed"),
        ("sqlite/churn 5000 updates", "disk_after"),
    ] {
        assert!(
            seen.contains(&format!("{case} {metric}")),
            "missing {case} {metric}: {seen:?}"
        );
    }
    // Progress goes to stderr, so stdout stays machine-readable.
    assert!(String::from_utf8_lossy(&out.stderr).contains("[sqlite] creates with"));
}

#[test]
fn unknown_backend_is_refused() {
    let out = bench().args(["store", "--backends", "mysql"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend \"mysql\""), "{err}");
}

#[test]
fn api_bench_reports_every_figure() {
    let rkube = std::path::Path::new(env!("CARGO_BIN_EXE_rkube-bench")).with_file_name("rkube");
    assert!(
        rkube.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        rkube.display()
    );
    let out = bench()
        .args(["api", "--quick", "--json", "--watchers", "5", "--rkube"])
        .arg(&rkube)
        .output()
        .unwrap();
    let seen = figures(&out, "api");
    // Pod counts in case names depend on how fast the creates went.
    for (prefix, suffix) in [
        ("sqlite/server rss_idle", ""),
        ("sqlite/create, 1000/s paced p99", ""),
        ("sqlite/get p50", ""),
        ("sqlite/list ", " pods p50"),
        ("sqlite/list ", " pods page_of_500_p50"),
        ("sqlite/server, ", " pods per_pod"),
        ("sqlite/5 watchers lag_p99", ""),
        ("sqlite/5 watchers events_missed", ""),
    ] {
        assert!(
            seen.iter().any(|f| f.starts_with(prefix) && f.ends_with(suffix)),
            "missing {prefix}…{suffix}: {seen:?}"
        );
    }
}

#[test]
fn hollow_nodes_bench_reports_its_figures() {
    let rkube = std::path::Path::new(env!("CARGO_BIN_EXE_rkube-bench")).with_file_name("rkube");
    let out = bench()
        .args(["hollow-nodes", "--count", "20", "--seconds", "2", "--json", "--rkube"])
        .arg(&rkube)
        .output()
        .unwrap();
    let seen = figures(&out, "hollow-nodes");
    for metric in ["register_per_sec", "lease_renewals_per_sec", "process_rss", "per_node"] {
        assert!(
            seen.contains(&format!("hollow/20 nodes {metric}")),
            "missing {metric}: {seen:?}"
        );
    }
}

#[test]
fn scheduler_bench_reports_every_workload_every_way() {
    let rkube = std::path::Path::new(env!("CARGO_BIN_EXE_rkube-bench")).with_file_name("rkube");
    let out = bench()
        .args(["scheduler", "--quick", "--with-kubelets", "--json", "--rkube"])
        .arg(&rkube)
        .output()
        .unwrap();
    let seen = figures(&out, "scheduler");
    for figure in [
        "in process/SchedulingBasic 100 nodes pods_per_sec",
        "end to end/SchedulingBasic 100 nodes pods_per_sec",
        "in process/SchedulingPodAntiAffinity 100 nodes pods_per_sec",
        "end to end/SchedulingPodAntiAffinity 100 nodes pods_per_sec",
        "in process/TopologySpreading 99 nodes pods_per_sec",
        "end to end/TopologySpreading 99 nodes pods_per_sec",
        "end to end/TopologySpreading 99 nodes server_rss",
        "with kubelets/SchedulingBasic 100 nodes pods_per_sec",
        "with kubelets/TopologySpreading 99 nodes server_cpu_per_pod",
    ] {
        assert!(seen.contains(figure), "missing {figure}: {seen:?}");
    }
}

#[test]
fn controllers_bench_reports_its_figures() {
    let rkube = std::path::Path::new(env!("CARGO_BIN_EXE_rkube-bench")).with_file_name("rkube");
    let out = bench()
        .args(["controllers", "--quick", "--json", "--rkube"])
        .arg(&rkube)
        .output()
        .unwrap();
    let seen = figures(&out, "controllers");
    for metric in ["pods_running_per_sec", "all_available", "server_cpu", "server_rss"] {
        let figure = format!("end to end/10 deployments x 3 on 5 nodes {metric}");
        assert!(seen.contains(&figure), "missing {figure}: {seen:?}");
    }
}
