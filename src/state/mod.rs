//! Shared state: revocations, account generations and resets, the issued-certificate
//! registry and enrollment tickets.
//!
//! [`StateStore`] is the one interface; `embedded/` (redb, the zero-setup default) and
//! `redis/` (shared state for many instances) are the backends, and `cache.rs` puts a moka read-through cache in front of any backend. Request
//! handlers and the admin API see `Arc<dyn StateStore>` / [`cache::StateCache`], never a
//! concrete backend: only `app` names one.

pub mod cache;
pub mod embedded;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

pub use crate::core::records::{
    AccountState, CertRecord, Revocation, RevocationReason, SessionBinding, TicketRecord, UnixTime,
};

/// What a backend reports to the cache in front of it: records other instances changed,
/// and the state of the link that carries those reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The revocation status of this serial changed.
    Serial(String),
    /// This account's record changed (reset, two-factor).
    Account(String),
    /// The link that carries these events was lost: events may be missed until
    /// [`Invalidation::Resubscribed`].
    LinkLost,
    /// Events flow again; anything cached before may have missed some.
    Resubscribed,
    /// The store's contents changed as a whole (an operator accepted a data loss).
    All,
}

/// Where a backend sends its [`Invalidation`]s.
pub type Events = tokio::sync::mpsc::UnboundedSender<Invalidation>;

/// A boxed future, so the trait stays object-safe (`Arc<dyn StateStore>`).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or failed; the state is unknown.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The stored data could not be decoded (a bug or a corrupted store).
    #[error("state store data is corrupt: {0}")]
    Corrupt(String),
}

/// The storage contract. Every write is durable when its future resolves. All methods are
/// cancel-safe from the caller's point of view (a dropped future either did the whole
/// write or none of it).
pub trait StateStore: Send + Sync + 'static {
    /// A cheap round trip; `Ok` means the store answers.
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>>;

    fn account(&self, account: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>>;

    /// Sets `two_factor`, creating the record (generation 1) if there is none.
    fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>>;

    /// generation + 1 (creating the record at generation 2 if there is none — a reset is
    /// meant to invalidate whatever certificates already exist), `reset_at = now`, and
    /// every open ticket of the account voided.
    fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>>;

    fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>>;

    /// Idempotent: revoking a revoked serial keeps the first record and returns it.
    fn revoke(&self, revocation: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>>;

    /// Every revocation still on record (for the CRL and the admin API).
    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>>;

    fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>>;

    fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>>;

    fn certificates_of(&self, account: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>>;

    fn put_ticket(&self, ticket: TicketRecord) -> BoxFut<'_, Result<(), StoreError>>;

    /// Reads a ticket without consuming it: `None` when unknown or expired at `now`. For
    /// showing the enrollment page; issuing always goes through [`Self::consume_ticket`].
    fn peek_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>>;

    /// Atomically removes and returns the ticket if it exists and has not expired at `now`.
    /// Of two racing calls for one hash, exactly one gets `Some`.
    fn consume_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>>;

    /// Records which account's certificate received a session cookie. With `replace` any
    /// binding of the same hash is replaced and `None` returned; without it an existing
    /// (unexpired) binding is kept and returned instead, atomically (first use wins).
    fn bind_session(
        &self,
        binding: SessionBinding,
        replace: bool,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>>;

    /// The binding of a session cookie's hash: `None` when unknown or expired at `now`.
    fn session(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>>;

    /// Returns the next CRL number (strictly increasing, persisted).
    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>>;

    /// Drops expired tickets and revocations whose certificate expired before `now`.
    /// Returns how many records were removed.
    fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>>;

    /// False while the backend knows its answers cannot be trusted even though it responds
    /// (the Redis data-loss guard tripped). Default: always trusted.
    fn trusted(&self) -> bool {
        true
    }

    /// Starts the backend's own background work (the Redis backend: its pub/sub listener),
    /// which reports what other instances changed as [`Invalidation`]s on `events` (the
    /// cache in front of the store follows them, see `StateCache::follow`) and its health
    /// on `metrics`. The caller aborts the returned tasks on shutdown. Default: nothing to
    /// run, no events (a single-instance backend sees every write go through its cache).
    fn start_background(
        self: std::sync::Arc<Self>,
        events: Events,
        metrics: crate::metrics::Metrics,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = (events, metrics);
        Vec::new()
    }

    /// How often the store should be probed without traffic, so that readiness and
    /// `certgate_state_store_up` stay current and a lost link reconnects. `None`: only with
    /// the periodic sweep.
    fn probe_interval(&self) -> Option<std::time::Duration> {
        None
    }
}

/// How long a revocation is kept after its certificate's `notAfter` before `sweep` may drop
/// it (seconds). RFC 5280 §3.3 asks that an entry stay on at least one CRL issued after the
/// certificate expired; a day covers a daily CRL and any clock skew between the CA and the
/// gateways. A certificate past `notAfter` is refused as `expired` anyway.
pub const REVOCATION_RETENTION_AFTER_EXPIRY: i64 = 24 * 60 * 60;

/// Makes a ticket for `account` at `generation` and stores its hash; returns the ticket
/// string, the only copy (see `core::ticket`).
pub async fn issue_ticket(
    store: &dyn StateStore,
    account: &str,
    generation: u64,
    ttl: std::time::Duration,
    now: UnixTime,
) -> Result<String, StoreError> {
    let (ticket, record) = crate::core::ticket::new(account, generation, ttl, now);
    store.put_ticket(record).await?;
    Ok(ticket)
}
