//! Process metrics read from `/proc/self` at each scrape (the names and meanings of the
//! Prometheus client libraries' process collectors): CPU time, resident memory, open file
//! descriptors and their limit, start time. Absent where `/proc` is not readable.

use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

static START: OnceLock<f64> = OnceLock::new();

/// Notes the process start (the first call wins); done when the metrics are built.
pub fn mark_start() {
    START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    });
}

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What `/proc/self` says now.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
}

/// Reads `/proc/self`.
pub fn sample() -> Sample {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let cpu_seconds = stat
        .as_deref()
        .and_then(cpu_ticks)
        .map(|t| t as f64 / USER_HZ);
    let resident_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| resident_kib(&s))
        .map(|kib| kib * 1024);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as i64 - 1); // the directory being read
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| open_files_limit(&s));
    Sample {
        cpu_seconds,
        resident_bytes,
        open_fds,
        max_fds,
    }
}

/// The unit of `/proc/*/stat` times: Linux reports them in USER_HZ, 100 on every
/// architecture it runs on (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: f64 = 100.0;

/// `VmRSS` of `/proc/self/status`, in KiB.
fn resident_kib(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime from `/proc/self/stat` (fields 14 and 15, after the `(comm)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft limit of the `Max open files` line.
fn open_files_limit(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = sample();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(e)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                let g = ConstGauge::new(v);
                let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(e)?;
            }
        }
        if let Some(start) = START.get() {
            let g = ConstGauge::new(*start);
            let e = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g.metric_type(),
            )?;
            g.encode(e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (cert gate) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn resident_memory_from_status() {
        let status = "Name:\tcertgate\nVmPeak:\t  9000 kB\nVmRSS:\t   14336 kB\nThreads:\t3\n";
        assert_eq!(resident_kib(status), Some(14336));
        assert_eq!(resident_kib("Name: x\n"), None);
    }

    #[test]
    fn the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(open_files_limit(limits), Some(1024));
    }

    #[test]
    fn this_process_is_sampled() {
        let s = sample();
        assert!(s.resident_bytes.is_some_and(|b| b > 0));
        assert!(s.open_fds.is_some_and(|n| n >= 3));
        assert!(s.cpu_seconds.is_some());
        assert!(s.max_fds.is_some_and(|n| n > 0));
    }
}
