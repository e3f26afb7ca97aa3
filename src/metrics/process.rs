//! The process metrics every Prometheus user expects (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, open and most file descriptors, threads, start time), read
//! from `/proc/self` at scrape time, as the official clients' process collectors do.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of the times in `/proc` (USER_HZ, 100 on every Linux architecture).
const TICKS: f64 = 100.0;

#[derive(Debug)]
pub struct Process;

/// What `/proc` says of this process; `None` where it could not be read.
#[derive(Default)]
struct Reading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    start_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

fn read() -> Reading {
    let mut r = Reading::default();
    // Fields after the command name, which may hold spaces: state is field 3 of stat(5).
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        r.cpu_seconds = field(14).zip(field(15)).map(|(u, s)| (u + s) / TICKS);
        r.threads = field(20);
        r.virtual_bytes = field(23);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        r.start_seconds = field(22)
            .zip(boot)
            .map(|(ticks, boot)| boot + ticks / TICKS);
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        r.resident_bytes = status.lines().find_map(|l| {
            let kb = l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
            kb.trim().parse::<f64>().ok().map(|kb| kb * 1024.0)
        });
    }
    r.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        r.max_fds = limits.lines().find_map(|l| {
            let rest = l.strip_prefix("Max open files")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        });
    }
    r
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = read();
        if let Some(v) = r.cpu_seconds {
            let counter = ConstCounter::new(v);
            let help = "Total user and system CPU time spent in seconds.";
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                r.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                r.start_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                r.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                r.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_alive() {
        let r = read();
        assert!(r.cpu_seconds.is_some_and(|v| v >= 0.0));
        assert!(r.resident_bytes.is_some_and(|v| v > 0.0));
        assert!(r.threads.is_some_and(|v| v >= 1.0));
        assert!(r.open_fds.is_some_and(|v| v >= 1.0));
        assert!(r.max_fds.is_some_and(|v| v >= 1.0));
        assert!(r.start_seconds.is_some_and(|v| v > 1.6e9));
    }
}
