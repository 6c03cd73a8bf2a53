//! Figures, printed as a human table (backends side by side) or as JSON lines.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Figure {
    pub peer: String,
    pub case: String,
    pub metric: &'static str,
    pub unit: &'static str,
    pub value: f64,
}

pub struct Report {
    bench: &'static str,
    json: bool,
    figures: Vec<Figure>,
}

impl Report {
    pub fn new(bench: &'static str, json: bool) -> Self {
        Self {
            bench,
            json,
            figures: Vec::new(),
        }
    }

    /// Records a figure; in JSON mode it is printed at once, so a long run shows progress.
    pub fn add(&mut self, peer: &str, case: &str, metric: &'static str, unit: &'static str, value: f64) {
        let figure = Figure {
            peer: peer.to_string(),
            case: case.to_string(),
            metric,
            unit,
            value,
        };
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": self.bench,
                    "case": format!("{}/{}", figure.peer, figure.case),
                    "metric": figure.metric,
                    "unit": figure.unit,
                    "value": figure.value,
                })
            );
        }
        self.figures.push(figure);
    }

    pub fn print_table(&self) {
        if self.json {
            return;
        }
        let mut peers: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !peers.contains(&f.peer.as_str()) {
                peers.push(&f.peer);
            }
        }
        // Rows in first-seen order, one column per peer.
        let mut order: Vec<(String, &str, &str)> = Vec::new();
        let mut cells: BTreeMap<(String, &str, String), f64> = BTreeMap::new();
        for f in &self.figures {
            let row = (f.case.clone(), f.metric, f.unit);
            if !order.contains(&row) {
                order.push(row);
            }
            cells.insert((f.case.clone(), f.metric, f.peer.clone()), f.value);
        }
        let label = |(case, metric, unit): &(String, &str, &str)| format!("{case}  {metric} ({unit})");
        let width = order.iter().map(|r| label(r).len()).max().unwrap_or(10).max(10);
        let mut header = format!("{:width$}", self.bench);
        for peer in &peers {
            header.push_str(&format!(" {peer:>14}"));
        }
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
        for row in &order {
            let mut line = format!("{:width$}", label(row));
            for peer in &peers {
                match cells.get(&(row.0.clone(), row.1, peer.to_string())) {
                    Some(v) => line.push_str(&format!(" {:>14}", format_value(*v))),
                    None => line.push_str(&format!(" {:>14}", "-")),
                }
            }
            println!("{line}");
        }
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Starts the rkube binary given (or the one beside this binary) as a server for a run.
pub async fn start_server(
    rkube: Option<&std::path::Path>,
    args: &'static [&'static str],
    scheduler: bool,
) -> anyhow::Result<rkube_testkit::RkubeServer> {
    let control = if scheduler {
        rkube_testkit::Control::Scheduler
    } else {
        rkube_testkit::Control::ApiOnly
    };
    start_server_with(rkube, args, control).await
}

/// [`start_server`] with the given control-plane components.
pub async fn start_server_with(
    rkube: Option<&std::path::Path>,
    args: &'static [&'static str],
    control: rkube_testkit::Control,
) -> anyhow::Result<rkube_testkit::RkubeServer> {
    let binary = match rkube {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("rkube"),
    };
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it (cargo build --release -p rkube) or pass --rkube",
        binary.display()
    );
    let server =
        tokio::task::spawn_blocking(move || rkube_testkit::RkubeServer::start_as(&binary, args, control)).await??;
    Ok(server)
}

/// CPU time (user + system) a process has used, in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel's clock tick is 100 Hz on every Linux this runs on.
    Some(ticks / 100.0)
}

/// Resident memory of a process in MiB, from /proc.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
