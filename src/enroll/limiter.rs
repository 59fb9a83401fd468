//! Failed ticket attempts per client address (IPv6 per /64), bounded in memory.

use super::limits::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Counts failed ticket attempts per client address in fixed one-minute windows (from the
/// first failure). IPv6 addresses count per /64, the block one client usually holds.
/// Bounded: at most 100,000 addresses are tracked; the least recently seen go first.
pub(super) struct FailureLimiter {
    pub(super) counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl FailureLimiter {
    pub(super) fn new() -> Self {
        FailureLimiter {
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        }
    }

    pub(super) fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut s = v6.segments();
                    s[4..].fill(0);
                    IpAddr::V6(s.into())
                }
            },
        }
    }

    pub(super) fn blocked(&self, ip: IpAddr) -> bool {
        self.counts
            .get(&Self::key(ip))
            .is_some_and(|c| c.load(Ordering::Relaxed) >= MAX_FAILED_ATTEMPTS)
    }

    pub(super) fn failed(&self, ip: IpAddr) {
        self.counts
            .get_with(Self::key(ip), || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }
}
