//! CPU time and memory from the kernel's own accounting (`/proc`), so that server cost is
//! measured per process whatever else the machine is doing.

use std::fs;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux x86_64/arm64).
const TICKS: f64 = 100.0;

/// CPU seconds of a process (all its threads, living and exited): user and kernel (system)
/// time, utime and stime of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    /// The CPU used between two readings.
    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            sys: self.sys - before.sys,
        }
    }
}

pub fn cpu(pid: u32) -> Option<Cpu> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Cpu {
        user: utime as f64 / TICKS,
        sys: stime as f64 / TICKS,
    })
}

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu(pid).map(Cpu::total)
}

/// Sum of [`cpu`] over `pids` (a missing process counts 0).
pub fn cpu_all(pids: &[u32]) -> Cpu {
    pids.iter()
        .filter_map(|p| cpu(*p))
        .fold(Cpu::default(), |a, b| Cpu {
            user: a.user + b.user,
            sys: a.sys + b.sys,
        })
}

pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Per core: (busy ticks, total ticks) from `/proc/stat`.
pub fn core_ticks() -> Vec<(u64, u64)> {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            let total: u64 = v.iter().take(8).sum();
            (total - idle, total)
        })
        .collect()
}

/// Busy fraction of each core between two [`core_ticks`] samples.
pub fn core_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            if total == 0 {
                0.0
            } else {
                a.0.saturating_sub(b.0) as f64 / total as f64
            }
        })
        .collect()
}

fn status_kb(pid: u32, file: &str, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "status", "VmRSS:")
}

/// Proportional set size in KiB (shared pages split between the processes sharing them,
/// so a master and its workers are not counted twice).
pub fn pss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "smaps_rollup", "Pss:")
}

/// Peak resident set size since the process started (VmHWM), in KiB.
pub fn hwm_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "status", "VmHWM:")
}
