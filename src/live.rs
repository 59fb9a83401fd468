//! Open connections follow the decision: a registry of this instance's connections that
//! carry a client certificate, closed when the certificate is revoked, its account reset,
//! or its `notAfter` passes.
//!
//! - A connection with a certificate registers once, after the handshake ([`Registry::open`]);
//!   the [`LiveConn`] it gets is shared by its requests (one relaxed add each, for the
//!   requests-served count) and by an upgraded tunnel, and leaves the registry when the last
//!   holder drops it. About 150 bytes per connection (the entry, its map slot and the
//!   shared identity it points to, which exists anyway).
//! - The state cache reports every change it learns, from the store's events (other
//!   instances) and from its own write-through (this instance's admin API). [`follow`]
//!   looks up each affected connection's certificate again (a revocation by serial, a reset
//!   by account; after the event link comes back or the store is replaced, every connection)
//!   and closes those the gate now refuses as revoked, reset or expired.
//! - A lookup that fails (store unreachable, no usable cached entry) closes nothing: no
//!   connection is closed on a guess. When the store is back, the event link's return makes
//!   every connection be checked again, so a revocation learned then closes what it must.
//! - Expiry is a once-a-second sweep: a connection whose certificate's `notAfter` has
//!   passed is closed (reason `expired`) without asking the store.
//!
//! Closing is a signal ([`LiveConn::closed`]); the connection's own task acts on it (the
//! watchdog for HTTP/1.1 and HTTP/2, the tunnel's copy loop).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::decision::CloseReason;
use crate::core::gate::{Facts, judge};
use crate::core::identity::ClientIdentity;
use crate::metrics::{ConnectionsClosedLabels, Metrics};
use crate::state::Invalidation;
use crate::state::cache::StateCache;

/// The protocol a connection speaks (an HTTP/1.1 connection becomes `upgraded` after a
/// 101).
pub const PROTO_H1: u8 = 0;
pub const PROTO_H2: u8 = 1;
pub const PROTO_UPGRADED: u8 = 2;

/// One open connection with a client certificate.
pub struct LiveConn {
    id: u64,
    pub identity: Arc<ClientIdentity>,
    pub peer: SocketAddr,
    /// Unix seconds.
    pub opened_at: i64,
    protocol: AtomicU8,
    requests: AtomicU64,
    /// 0 while open, else a [`CloseReason`] + 1.
    closed: AtomicU8,
    notify: Notify,
    registry: Weak<Registry>,
}

impl LiveConn {
    /// Counts one request served on this connection.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn set_protocol(&self, p: u8) {
        self.protocol.store(p, Ordering::Relaxed);
    }

    pub fn protocol(&self) -> &'static str {
        match self.protocol.load(Ordering::Relaxed) {
            PROTO_H2 => "h2",
            PROTO_UPGRADED => "upgraded",
            _ => "http/1.1",
        }
    }

    /// Why the connection was told to close, once it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.closed.load(Ordering::Acquire))
    }

    /// Tells the connection's task to close. Returns false when it already was told.
    fn close(&self, reason: CloseReason) -> bool {
        let first = self
            .closed
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.notify.notify_waiters();
        }
        first
    }

    /// Resolves once the connection is to be closed.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.close_reason() {
                return r;
            }
            notified.await;
        }
    }
}

impl Drop for LiveConn {
    fn drop(&mut self) {
        if let Some(reg) = self.registry.upgrade() {
            reg.lock().remove(&self.id);
        }
    }
}

/// This instance's open connections with a client certificate.
pub struct Registry {
    conns: Mutex<HashMap<u64, Weak<LiveConn>>>,
    next: AtomicU64,
    metrics: Metrics,
}

impl Registry {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        for r in CloseReason::ALL {
            // Present at 0 from the start.
            let _ = metrics
                .connections_closed
                .get_or_create(&ConnectionsClosedLabels { reason: r });
        }
        Arc::new(Registry {
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<LiveConn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection that presented `identity`; it leaves the registry when the
    /// returned handle's last clone is dropped.
    pub fn open(
        self: &Arc<Self>,
        identity: Arc<ClientIdentity>,
        peer: SocketAddr,
        protocol: u8,
    ) -> Arc<LiveConn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(LiveConn {
            id,
            identity,
            peer,
            opened_at: crate::core::clock::now(),
            protocol: AtomicU8::new(protocol),
            requests: AtomicU64::new(0),
            closed: AtomicU8::new(0),
            notify: Notify::new(),
            registry: Arc::downgrade(self),
        });
        self.lock().insert(id, Arc::downgrade(&conn));
        conn
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open connections `pick` selects (those already told to close are left out).
    pub fn select(&self, mut pick: impl FnMut(&LiveConn) -> bool) -> Vec<Arc<LiveConn>> {
        let mut out: Vec<Arc<LiveConn>> = self
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| c.close_reason().is_none() && pick(c))
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// The open connections of `account`.
    pub fn of_account(&self, account: &str) -> Vec<Arc<LiveConn>> {
        self.select(|c| c.identity.account.as_deref() == Some(account))
    }

    /// Closes `conn` for `reason`; counted and logged once.
    pub fn close(&self, conn: &LiveConn, reason: CloseReason) -> bool {
        if !conn.close(reason) {
            return false;
        }
        self.metrics
            .connections_closed
            .get_or_create(&ConnectionsClosedLabels { reason })
            .inc();
        tracing::info!(
            reason = reason.as_str(),
            account = conn.identity.account.as_deref().unwrap_or("-"),
            serial = %conn.identity.serial,
            peer = %conn.peer,
            protocol = conn.protocol(),
            "closing an open connection"
        );
        true
    }

    /// Closes the connections whose certificate's `notAfter` is before `now` (Unix
    /// seconds). Returns how many.
    pub fn close_expired(&self, now: i64) -> usize {
        let due = self.select(|c| now > c.identity.not_after);
        due.iter()
            .filter(|c| self.close(c, CloseReason::Expired))
            .count()
    }

    /// Looks each of `conns` up again and closes those the gate now refuses as revoked,
    /// reset or expired. A lookup that fails closes nothing.
    pub async fn recheck(&self, cache: &StateCache, conns: &[Arc<LiveConn>]) -> usize {
        let mut closed = 0;
        for c in conns {
            let id = &c.identity;
            let Ok(state) = cache.lookup_shared(&id.serial, id.account.as_deref()).await else {
                tracing::debug!(
                    serial = %id.serial,
                    "open connection not checked again: state store unavailable"
                );
                continue;
            };
            let decision = judge(
                id,
                state.view(),
                Facts::default(),
                crate::core::clock::now(),
            );
            if let Some(reason) = CloseReason::of_decision(decision)
                && self.close(c, reason)
            {
                closed += 1;
            }
        }
        closed
    }

    /// The connections one change of the store may affect.
    fn affected(&self, change: &Invalidation) -> Vec<Arc<LiveConn>> {
        match change {
            Invalidation::Serial(s) => self.select(|c| c.identity.serial == *s),
            Invalidation::Account(a) => self.of_account(a),
            Invalidation::Resubscribed | Invalidation::All => self.select(|_| true),
            Invalidation::LinkLost => Vec::new(),
        }
    }
}

/// Runs the registry: applies every change the cache reports (see the module doc) and the
/// once-a-second expiry sweep, until `changes` closes.
pub async fn follow(
    registry: Arc<Registry>,
    cache: Arc<StateCache>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<Invalidation>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                if registry.is_empty() {
                    continue;
                }
                let conns = registry.affected(&change);
                if !conns.is_empty() {
                    registry.recheck(&cache, &conns).await;
                }
            }
            _ = tick.tick() => {
                registry.close_expired(crate::core::clock::now());
            }
        }
    }
}
