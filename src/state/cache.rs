//! Read-through cache in front of any [`StateStore`]: what the per-request check reads.
//!
//! This module owns freshness, coalescing and the failure policy. The store contract and the
//! backends live beside it (`state/mod.rs`, `state/embedded/`, `state/redis/`); the pub/sub listener that
//! calls the `invalidate_*` methods lives with the Redis backend; the proxy calls
//! [`StateCache::lookup`] once per request and the admin API uses the write-through helpers.
//!
//! How it works:
//! - Two moka tables, revocations by serial and accounts by id. Negative answers ("not
//!   revoked", "no such account") are cached like positive ones: they are most lookups.
//! - Every value carries the time it was read from the store, on the cache's own [`Clock`].
//!   An entry younger than `state.cache.ttl` is fresh and answers without touching the store.
//!   moka's own TTL only evicts, it cannot mark an entry stale; it is set to the longest any
//!   entry may be useful (`ttl`, or `max_stale` under `serve_stale`) and bounds memory.
//! - Concurrent misses on one key share one store call (a per-key in-flight load), and a miss
//!   also replaces a stale entry, which moka's `try_get_with` cannot do.
//! - Invalidation is synchronous: when `invalidate_*` returns, no later lookup sees the old
//!   entry, and a load that was already in flight when it ran is not cached (an epoch check
//!   under the in-flight lock), so the old value cannot come back. This is why the tables are
//!   `moka::sync::Cache`: `future::Cache` only invalidates from async code.
//! - Store failure, no fresh entry: `fail_closed` refuses ([`Unavailable`] → 503);
//!   `serve_stale` answers from an entry up to `state.max_stale` old, then refuses. Never open.
//! - An outage does not empty the cache. While the store is unreachable, lookups do not wait
//!   for it: after a failed call, one lookup per [`RETRY_WHILE_DOWN`] tries the store (and
//!   the background probe does); the rest are answered from the cache or refused at once.
//!   While the store's event link is lost, entries keep answering for `ttl` (no invalidation
//!   can arrive: a revocation elsewhere reaches this instance within `ttl`, as without
//!   events); once the link is back, entries read before are checked with the store again
//!   before they answer (one within `ttl` still answers while the store cannot be read).
//!
//! A hit takes no lock and allocates nothing ([`StateCache::lookup_shared`]): moka looks the
//! `&str` up and hands back an `Arc`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::OnceCell;

use super::{AccountState, Events, Invalidation, Revocation, StateStore, StoreError, UnixTime};
use crate::config::{OnError, StateConfig};
use crate::core::clock::{Clock, SystemClock};
use crate::core::gate::{CertState, StateView, Unavailable};
use crate::metrics::{CacheLabels, CacheResult, Metrics};

/// [`CertState`] as the cache holds it: cloning is a reference-count increment, so a cache
/// hit that returns it allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedCertState {
    pub revocation: Option<Arc<Revocation>>,
    pub account: Option<Arc<AccountState>>,
}

impl SharedCertState {
    /// The borrowed form the gate decides on.
    pub fn view(&self) -> StateView<'_> {
        StateView {
            revoked: self.revocation.is_some(),
            account: self.account.as_deref(),
        }
    }

    /// The owned form (copies the records' strings).
    pub fn to_cert_state(&self) -> CertState {
        CertState {
            revocation: self.revocation.as_deref().cloned(),
            account: self.account.as_deref().cloned(),
        }
    }
}

/// One cached answer: the record (or its absence) and when the store gave it.
struct Cached<T> {
    value: Option<Arc<T>>,
    fetched_at: Instant,
}

/// The store call behind a miss failed. The cause was counted and logged where it happened.
#[derive(Debug, Clone, Copy)]
struct LoadFailed;

type Loaded<T> = Result<Arc<Cached<T>>, LoadFailed>;

/// One store read that every concurrent miss on its key waits for.
struct Flight<T> {
    /// The table's epoch when the flight started; if an invalidation bumped it since, the
    /// result is handed to the waiters but not cached.
    epoch: u64,
    result: OnceCell<Loaded<T>>,
}

struct Loads<T> {
    epoch: u64,
    flights: HashMap<Box<str>, Arc<Flight<T>>>,
}

/// A caller's membership in a flight. When the flight is done (or its last caller gave up
/// before it finished), dropping this retires it, so the next miss reads the store again.
struct Joined<'a, T> {
    table: &'a Table<T>,
    key: &'a str,
    flight: Arc<Flight<T>>,
}

impl<T> Drop for Joined<'_, T> {
    fn drop(&mut self) {
        let mut loads = lock(&self.table.loads);
        let current = loads
            .flights
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
        // Two references: the map's and ours. Joining clones under this same lock.
        let abandoned = Arc::strong_count(&self.flight) <= 2;
        if current && (self.flight.result.initialized() || abandoned) {
            loads.flights.remove(self.key);
        }
    }
}

enum Peek<T> {
    Fresh(Arc<Cached<T>>),
    /// Missing, or present but older than `ttl` (kept for `serve_stale`).
    Expired(Option<Arc<Cached<T>>>),
}

/// One keyed table: entries plus the in-flight loads.
struct Table<T> {
    entries: moka::sync::Cache<Box<str>, Arc<Cached<T>>>,
    loads: Mutex<Loads<T>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded sections cannot panic half-way, so a poisoned lock's data is consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Send + Sync + 'static> Table<T> {
    fn new(max_entries: u64, evict_after: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(evict_after)
                .build(),
            loads: Mutex::new(Loads {
                epoch: 0,
                flights: HashMap::new(),
            }),
        }
    }

    /// `resync`: entries read before it (before the event link came back) are checked
    /// with the store again before they answer.
    fn peek(&self, key: &str, now: Instant, ttl: Duration, resync: Instant) -> Peek<T> {
        match self.entries.get(key) {
            Some(c)
                if now.saturating_duration_since(c.fetched_at) < ttl && c.fetched_at >= resync =>
            {
                Peek::Fresh(c)
            }
            other => Peek::Expired(other),
        }
    }

    /// Reads `key` through `fetch`, sharing one call among concurrent callers.
    async fn load<F, Fut>(&self, key: &str, clock: &dyn Clock, fetch: F) -> Loaded<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, StoreError>>,
    {
        let flight = {
            let mut loads = lock(&self.loads);
            let epoch = loads.epoch;
            match loads.flights.get(key) {
                Some(f) => Arc::clone(f),
                None => {
                    let f = Arc::new(Flight {
                        epoch,
                        result: OnceCell::new(),
                    });
                    loads.flights.insert(key.into(), Arc::clone(&f));
                    f
                }
            }
        };
        let joined = Joined {
            table: self,
            key,
            flight,
        };
        let flight = &joined.flight;
        // If the caller running `fetch` is dropped, tokio's OnceCell lets the next waiter run
        // its own, so a cancelled request cannot strand the others.
        flight
            .result
            .get_or_init(|| async {
                // Freshness counts from before the read: never older data than claimed.
                let started = clock.now();
                let value = fetch().await.map_err(|_| LoadFailed)?;
                let cached = Arc::new(Cached {
                    value: value.map(Arc::new),
                    fetched_at: started,
                });
                let loads = lock(&self.loads);
                if loads.epoch == flight.epoch {
                    self.entries.insert(key.into(), Arc::clone(&cached));
                }
                Ok(cached)
            })
            .await
            .clone()
    }

    fn invalidate(&self, key: &str) {
        let mut loads = lock(&self.loads);
        loads.epoch = loads.epoch.wrapping_add(1);
        loads.flights.remove(key);
        self.entries.invalidate(key);
    }

    fn invalidate_all(&self) {
        let mut loads = lock(&self.loads);
        loads.epoch = loads.epoch.wrapping_add(1);
        loads.flights.clear();
        self.entries.invalidate_all();
    }
}

/// How bad one lookup was, for `certgate_state_cache_total{result}`: a lookup reads up to
/// two entries and is counted once, by its worst part.
fn rank(r: CacheResult) -> u8 {
    match r {
        CacheResult::hit => 0,
        CacheResult::miss => 1,
        CacheResult::stale => 2,
        CacheResult::error => 3,
    }
}

fn worse(a: CacheResult, b: CacheResult) -> CacheResult {
    if rank(b) > rank(a) { b } else { a }
}

/// The `certgate_state_cache_total` series, resolved once so the hot path is one atomic add.
struct CacheCounters {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    error: Counter,
}

impl CacheCounters {
    fn new(metrics: &Metrics) -> Self {
        let get = |result| {
            metrics
                .state_cache
                .get_or_create(&CacheLabels { result })
                .clone()
        };
        Self {
            hit: get(CacheResult::hit),
            miss: get(CacheResult::miss),
            stale: get(CacheResult::stale),
            error: get(CacheResult::error),
        }
    }

    fn count(&self, r: CacheResult) {
        match r {
            CacheResult::hit => self.hit.inc(),
            CacheResult::miss => self.miss.inc(),
            CacheResult::stale => self.stale.inc(),
            CacheResult::error => self.error.inc(),
        };
    }
}

/// While the store is down, how often a lookup tries it (the others do not wait).
pub const RETRY_WHILE_DOWN: Duration = Duration::from_millis(250);

/// What the cache knows of the store's health (changed on the slow path only).
#[derive(Debug, Default)]
struct Health {
    /// When the current outage began (the first failed call after a success).
    down_since: Option<Instant>,
    /// While down: the earliest time a lookup may try the store again.
    next_trial: Option<Instant>,
    /// The event link is lost: no invalidation can arrive until it is back.
    unlinked_since: Option<Instant>,
}

pub struct StateCache {
    store: Arc<dyn StateStore>,
    metrics: Metrics,
    counters: CacheCounters,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    on_error: OnError,
    max_stale: Duration,
    revocations: Table<Revocation>,
    accounts: Table<AccountState>,
    /// The store has answered at least once.
    ready: AtomicBool,
    /// The last store call succeeded (logs only the transitions).
    up: AtomicBool,
    health: Mutex<Health>,
    /// When the event link last came back (see [`StateCache::apply`]), as nanoseconds
    /// after `origin` (an atomic: every lookup reads it).
    origin: Instant,
    resync: AtomicU64,
    /// Where every change this cache learns is reported (the open-connection registry).
    changes: std::sync::OnceLock<Events>,
}

impl StateCache {
    pub fn new(store: Arc<dyn StateStore>, cfg: &StateConfig, metrics: Metrics) -> Self {
        Self::with_clock(store, cfg, metrics, Arc::new(SystemClock))
    }

    /// Like [`StateCache::new`], with the clock that decides freshness and staleness
    /// (tests pass a [`crate::core::clock::ManualClock`]).
    ///
    /// `state.cache.max_entries` bounds each of the two tables (revocations, accounts).
    pub fn with_clock(
        store: Arc<dyn StateStore>,
        cfg: &StateConfig,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let ttl = cfg.cache.ttl;
        let keep = match cfg.on_error {
            OnError::FailClosed => ttl,
            OnError::ServeStale => ttl.max(cfg.max_stale),
        }
        .max(Duration::from_millis(1));
        let now_at_start = clock.now();
        let max = cfg.cache.max_entries;
        Self {
            store,
            counters: CacheCounters::new(&metrics),
            metrics,
            clock,
            ttl,
            on_error: cfg.on_error,
            max_stale: cfg.max_stale,
            revocations: Table::new(max, keep),
            accounts: Table::new(max, keep),
            ready: AtomicBool::new(false),
            up: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            origin: now_at_start,
            resync: AtomicU64::new(0),
            changes: std::sync::OnceLock::new(),
        }
    }

    /// The metric handles this cache counts into (backends that run background work
    /// report through the same ones).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The backend, for calls the cache does not wrap (tickets, registry, CRL number).
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The per-request check: revocation of `serial` and, when given, the account record.
    ///
    /// Copies the records out of the cache; [`StateCache::lookup_shared`] is the
    /// allocation-free form.
    pub async fn lookup(
        &self,
        serial: &str,
        account: Option<&str>,
    ) -> Result<CertState, Unavailable> {
        self.lookup_shared(serial, account)
            .await
            .map(|s| s.to_cert_state())
    }

    /// The per-request check, answering with the cached `Arc`s.
    ///
    /// Fails closed: `Err(Unavailable)` when an entry is missing or older than
    /// `state.cache.ttl` and the store cannot be read, unless `state.on_error` is
    /// `serve_stale` and the entry is at most `state.max_stale` old.
    pub async fn lookup_shared(
        &self,
        serial: &str,
        account: Option<&str>,
    ) -> Result<SharedCertState, Unavailable> {
        let now = self.clock.now();
        let resync = self.resync_at();
        let rev = self.revocations.peek(serial, now, self.ttl, resync);
        let acct = account.map(|a| self.accounts.peek(a, now, self.ttl, resync));

        // The hot path: everything fresh, no await, no lock, no allocation.
        if let Peek::Fresh(r) = &rev {
            let account = match &acct {
                None => Some(None),
                Some(Peek::Fresh(a)) => Some(a.value.clone()),
                Some(Peek::Expired(_)) => None,
            };
            if let Some(account) = account {
                self.counters.count(CacheResult::hit);
                return Ok(SharedCertState {
                    revocation: r.value.clone(),
                    account,
                });
            }
        }

        let store = &self.store;
        let rev_fut = self.resolve(&self.revocations, serial, rev, || store.revocation(serial));
        let acct_fut = async {
            match (account, acct) {
                (Some(a), Some(peek)) => {
                    self.resolve(&self.accounts, a, peek, || store.account(a))
                        .await
                }
                _ => (CacheResult::hit, Some(None)),
            }
        };
        let ((rev_result, revocation), (acct_result, account)) = tokio::join!(rev_fut, acct_fut);
        let result = worse(rev_result, acct_result);
        self.counters.count(result);
        match (revocation, account) {
            (Some(revocation), Some(account)) => Ok(SharedCertState {
                revocation,
                account,
            }),
            _ => Err(Unavailable),
        }
    }

    /// One entry: fresh from the cache, else from the store, else (policy permitting) stale.
    /// `None` as the answer means undecidable.
    async fn resolve<T, F, Fut>(
        &self,
        table: &Table<T>,
        key: &str,
        peek: Peek<T>,
        fetch: F,
    ) -> (CacheResult, Option<Option<Arc<T>>>)
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, StoreError>>,
    {
        let stale = match peek {
            Peek::Fresh(c) => return (CacheResult::hit, Some(c.value.clone())),
            Peek::Expired(stale) => stale,
        };
        let fetch = || async {
            let r = fetch().await;
            self.note(&r);
            r
        };
        let loaded = if self.may_try() {
            table.load(key, &*self.clock, fetch).await
        } else {
            Err(LoadFailed)
        };
        match loaded {
            Ok(c) => (CacheResult::miss, Some(c.value.clone())),
            Err(LoadFailed) => {
                let now = self.clock.now();
                let age = |c: &Cached<T>| now.saturating_duration_since(c.fetched_at);
                // A store that distrusts its own data (the data-loss guard) refuses every
                // lookup, cached or not, until the loss is acknowledged.
                let trusted = self.store.trusted();
                match stale {
                    Some(c)
                        if trusted
                            && (self.on_error == OnError::ServeStale
                                && age(&c) <= self.max_stale)
                            // Read before the event link came back, still within ttl: it
                            // was good enough while the link was away, and still is while
                            // the store cannot say otherwise.
                            || (trusted && c.fetched_at < self.resync_at() && age(&c) < self.ttl) =>
                    {
                        (CacheResult::stale, Some(c.value.clone()))
                    }
                    _ => (CacheResult::error, None),
                }
            }
        }
    }

    /// Whether a lookup may call the store now: always while it is up; while it is down,
    /// one lookup per [`RETRY_WHILE_DOWN`] (the others are answered without waiting).
    fn may_try(&self) -> bool {
        if self.up.load(Ordering::Acquire) || !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let now = self.clock.now();
        let mut h = lock(&self.health);
        match h.next_trial {
            Some(t) if now < t => false,
            _ => {
                h.next_trial = Some(now + RETRY_WHILE_DOWN);
                true
            }
        }
    }

    /// Records the outcome of one store call: readiness, `certgate_state_store_up`,
    /// `certgate_state_store_errors_total`, and one log line when an outage begins and one
    /// when it ends, with its duration (not one per failed call).
    fn note<T>(&self, r: &Result<T, StoreError>) {
        match r {
            Ok(_) => {
                self.ready.store(true, Ordering::Release);
                self.metrics.state_store_up.set(1);
                if !self.up.swap(true, Ordering::AcqRel) {
                    let began = {
                        let mut h = lock(&self.health);
                        h.next_trial = None;
                        h.down_since.take()
                    };
                    match began {
                        Some(t) => tracing::warn!(
                            outage_ms =
                                self.clock.now().saturating_duration_since(t).as_millis() as u64,
                            "state store outage over: the store answers again"
                        ),
                        None => tracing::info!("state store is answering"),
                    }
                }
            }
            Err(e) => {
                self.metrics.state_store_errors.inc();
                self.metrics.state_store_up.set(0);
                if self.up.swap(false, Ordering::AcqRel) {
                    let now = self.clock.now();
                    {
                        let mut h = lock(&self.health);
                        h.down_since = Some(now);
                        h.next_trial = Some(now + RETRY_WHILE_DOWN);
                    }
                    self.metrics.state_store_outages.inc();
                    tracing::error!(
                        error = %e,
                        on_error = self.on_error.as_str(),
                        "state store outage: the store does not answer; cached answers are \
                         used as state.on_error allows, other protected requests get 503"
                    );
                } else {
                    tracing::debug!(error = %e, "state store call failed");
                }
            }
        }
    }

    fn resync_at(&self) -> Instant {
        self.origin + Duration::from_nanos(self.resync.load(Ordering::Acquire))
    }

    /// Whether the store failed its last call (an outage is on).
    pub fn degraded(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.up.load(Ordering::Acquire)
    }

    /// Ready for protected traffic: the store has answered at least once and trusts its
    /// own data (see [`StateStore::trusted`]). Stays true during an outage that began
    /// after that ([`StateCache::degraded`]): the cache still answers what it holds, and
    /// every instance of a shared store is in the same outage, so taking them all out of a
    /// load balancer would only turn a partial outage into a total one.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.store.trusted()
    }

    /// Pings the store; updates readiness and `certgate_state_store_up`.
    pub async fn probe(&self) -> bool {
        self.probe_result().await.is_ok()
    }

    /// [`StateCache::probe`], with the store's error.
    pub async fn probe_result(&self) -> Result<(), StoreError> {
        let r = self.store.ping().await;
        self.note(&r);
        r
    }

    /// Follows the invalidation events of the store: returns the sender to hand to
    /// [`StateStore::start_background`] and the task that applies what arrives (it ends when
    /// every sender is gone).
    pub fn follow(self: &Arc<Self>) -> (Events, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cache = Arc::clone(self);
        let task = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                cache.apply(&event);
            }
        });
        (tx, task)
    }

    /// Reports every change this cache learns from now on to `to`, after the cache has
    /// applied it: a serial or account invalidated (by an event of the store or by this
    /// cache's own write-through), the event link back, the store replaced. Set once.
    pub fn report_changes(&self, to: Events) {
        let _ = self.changes.set(to);
    }

    fn report(&self, change: Invalidation) {
        if let Some(to) = self.changes.get() {
            let _ = to.send(change);
        }
    }

    /// Applies one event of the store.
    pub fn apply(&self, event: &Invalidation) {
        match event {
            Invalidation::Serial(serial) => self.invalidate_serial(serial),
            Invalidation::Account(account) => self.invalidate_account(account),
            Invalidation::LinkLost => {
                // Keep every entry: they are what answers while the store is away. No event
                // can arrive now, so `ttl` alone bounds how old an answer is.
                let mut h = lock(&self.health);
                if h.unlinked_since.is_none() {
                    h.unlinked_since = Some(self.clock.now());
                    tracing::warn!(
                        ttl_ms = self.ttl.as_millis() as u64,
                        "state store event link lost; cached answers are kept for up to \
                         state.cache.ttl until it is back"
                    );
                }
            }
            Invalidation::Resubscribed => {
                // Subscribed again: what was published while away is unknown, so every
                // entry read before now is checked with the store again before it answers.
                // Entries are not dropped: in a Cluster the subscription can be back while
                // some slots are not, and an entry within ttl must still answer then.
                let since = self.clock.now().saturating_duration_since(self.origin);
                self.resync.store(
                    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Release,
                );
                let was = lock(&self.health).unlinked_since.take();
                match was {
                    Some(t) => tracing::info!(
                        away_ms = self.clock.now().saturating_duration_since(t).as_millis() as u64,
                        "state store event link back; cached entries are checked with the store \
                         again to pick up what was missed"
                    ),
                    None => tracing::debug!("subscribed to state events"),
                }
                self.report(Invalidation::Resubscribed);
            }
            Invalidation::All => self.invalidate_all(),
        }
    }

    /// Drops the cached revocation status of `serial`; the next lookup reads the store.
    pub fn invalidate_serial(&self, serial: &str) {
        self.revocations.invalidate(serial);
        self.report(Invalidation::Serial(serial.to_string()));
    }

    /// Drops the cached record of `account`; the next lookup reads the store.
    pub fn invalidate_account(&self, account: &str) {
        self.accounts.invalidate(account);
        self.report(Invalidation::Account(account.to_string()));
    }

    /// Drops everything (e.g. after a pub/sub reconnect, when events may have been missed).
    pub fn invalidate_all(&self) {
        self.revocations.invalidate_all();
        self.accounts.invalidate_all();
        self.report(Invalidation::All);
    }

    /// Write-through: revoke, then drop the cached entry so the next request sees it.
    ///
    /// The entry is dropped after a failed write too: a write that timed out may still have
    /// landed, and a needless re-read is cheap.
    pub async fn revoke(&self, r: Revocation) -> Result<Revocation, StoreError> {
        let serial = r.serial.clone();
        let out = self.store.revoke(r).await;
        self.note(&out);
        self.invalidate_serial(&serial);
        out
    }

    /// Write-through: reset, then drop the cached account (see [`StateCache::revoke`]).
    pub async fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        let out = self.store.reset_account(account, now).await;
        self.note(&out);
        self.invalidate_account(account);
        out
    }

    /// Write-through: enable two-factor, then drop the cached account.
    pub async fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        let out = self.store.enable_two_factor(account, now).await;
        self.note(&out);
        self.invalidate_account(account);
        out
    }
}
