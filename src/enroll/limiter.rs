//! Failed ticket attempts, counted per client address (IPv6 per /64) and per presented
//! ticket, bounded in memory.
//!
//! Neither count ever stands between a valid ticket and its certificate: behind NAT or a
//! load balancer without the PROXY protocol many users share one address, and one of them
//! guessing must not lock the others out. So a valid ticket is always looked up and
//! honoured; what the counts change is the answer to *failures*:
//!
//! - an address over [`MAX_FAILED_ATTEMPTS`] in [`FAILURE_WINDOW`] gets 429 (with
//!   `Retry-After`) instead of "unknown ticket" for each further failure, so a guesser
//!   learns nothing new and is told to slow down;
//! - a ticket string that failed that often (a used or expired link opened again and
//!   again, from anywhere) is refused with 429 without asking the store at all. A valid
//!   ticket cannot collect failures: presenting it succeeds.

use super::limits::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

type Counts<K> = moka::sync::Cache<K, Arc<AtomicU32>>;

/// Counts failed ticket attempts in fixed one-minute windows (from the first failure).
/// Bounded: at most 100,000 addresses and 100,000 tickets are tracked; the least recently
/// seen go first.
pub(super) struct FailureLimiter {
    addresses: Counts<IpAddr>,
    /// Keyed by the ticket's store hash, never the ticket itself.
    tickets: Counts<String>,
}

fn counts<K: std::hash::Hash + Eq + Send + Sync + 'static>() -> Counts<K> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(FAILURE_WINDOW)
        .build()
}

fn over<K: std::hash::Hash + Eq + Send + Sync + 'static>(c: &Counts<K>, key: &K) -> bool {
    c.get(key)
        .is_some_and(|n| n.load(Ordering::Relaxed) >= MAX_FAILED_ATTEMPTS)
}

impl FailureLimiter {
    pub(super) fn new() -> Self {
        FailureLimiter {
            addresses: counts(),
            tickets: counts(),
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

    /// The address has failed too often in this window.
    pub(super) fn address_over(&self, ip: IpAddr) -> bool {
        over(&self.addresses, &Self::key(ip))
    }

    /// This ticket (by its store hash) has failed too often in this window.
    pub(super) fn ticket_over(&self, ticket_hash: &str) -> bool {
        over(&self.tickets, &ticket_hash.to_string())
    }

    /// Counts one failure of `ticket_hash` (when one was presented) from `ip`.
    pub(super) fn failed(&self, ip: IpAddr, ticket_hash: Option<&str>) {
        self.addresses
            .get_with(Self::key(ip), || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
        if let Some(h) = ticket_hash {
            self.tickets
                .get_with(h.to_string(), || Arc::new(AtomicU32::new(0)))
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
