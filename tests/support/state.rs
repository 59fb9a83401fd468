//! Shared pieces for state tests: backend factories for the contract suite, and a wrapper
//! store that counts, fails or holds calls for the cache tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use certgate::config::{RedisConfig, RedisMode};
use certgate::state::embedded::EmbeddedStore;
use certgate::state::redis::RedisStore;
use certgate::state::{
    AccountState, BoxFut, CertRecord, Revocation, StateStore, StoreError, TicketRecord, UnixTime,
};
use tokio::sync::Semaphore;

/// Opens one backend's persistent state. Every call opens the same state, so dropping the
/// handle and opening again is a restart. Drop the previous handle first: a backend may
/// hold an exclusive lock (the embedded file does).
pub trait StoreFactory: Send + Sync {
    fn open(&self) -> BoxFut<'_, Arc<dyn StateStore>>;
}

/// The embedded backend in a fresh temporary folder (removed on drop).
pub struct EmbeddedFactory {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl EmbeddedFactory {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data/certgate.db");
        Self { _dir: dir, path }
    }
}

impl StoreFactory for EmbeddedFactory {
    fn open(&self) -> BoxFut<'_, Arc<dyn StateStore>> {
        Box::pin(async move {
            Arc::new(EmbeddedStore::open_or_create(&self.path).expect("open embedded store"))
                as Arc<dyn StateStore>
        })
    }
}

/// The in-memory store (`state::memory`); opening again returns the same store, which is
/// what a restart means for it.
pub struct MemoryFactory(Arc<certgate::state::memory::MemoryStore>);

impl MemoryFactory {
    pub fn new() -> Self {
        Self(Arc::new(certgate::state::memory::MemoryStore::new()))
    }
}

impl StoreFactory for MemoryFactory {
    fn open(&self) -> BoxFut<'_, Arc<dyn StateStore>> {
        Box::pin(async move { self.0.clone() as Arc<dyn StateStore> })
    }
}

#[path = "redis.rs"]
pub mod redis_server;

/// The Redis backend on a `redis-server` of its own (killed on drop). Opening again is a
/// new client on the same server, i.e. a gateway restart.
pub struct RedisFactory {
    pub server: redis_server::RedisServer,
    pub config: RedisConfig,
}

impl RedisFactory {
    /// `None` when redis-server is not installed (the test is skipped, loudly).
    pub fn start() -> Option<Self> {
        let server = redis_server::RedisServer::start()?;
        let config = redis_config(&server.url());
        Some(Self { server, config })
    }
}

/// A standalone `state.redis` section for `url`.
pub fn redis_config(url: &str) -> RedisConfig {
    RedisConfig {
        mode: RedisMode::Standalone,
        url: url.to_string(),
        urls: Vec::new(),
        sentinel_master: String::new(),
        password: None,
        tls_ca: None,
        key_prefix: "certgate:".into(),
    }
}

impl StoreFactory for RedisFactory {
    fn open(&self) -> BoxFut<'_, Arc<dyn StateStore>> {
        Box::pin(async move {
            Arc::new(RedisStore::open(&self.config).expect("open redis store"))
                as Arc<dyn StateStore>
        })
    }
}

/// Wraps a store: counts reads, fails every call while `down`, and can hold reads after
/// they have read the inner store until the test releases them.
pub struct TestStore {
    inner: Arc<dyn StateStore>,
    pub revocation_calls: AtomicUsize,
    pub account_calls: AtomicUsize,
    down: AtomicBool,
    hold: std::sync::Mutex<Option<Arc<Semaphore>>>,
}

impl TestStore {
    pub fn new(inner: Arc<dyn StateStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            revocation_calls: AtomicUsize::new(0),
            account_calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            hold: std::sync::Mutex::new(None),
        })
    }

    pub fn inner(&self) -> &Arc<dyn StateStore> {
        &self.inner
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn revocation_calls(&self) -> usize {
        self.revocation_calls.load(Ordering::SeqCst)
    }

    pub fn account_calls(&self) -> usize {
        self.account_calls.load(Ordering::SeqCst)
    }

    /// From now on, `revocation` and `account` wait (after reading) until
    /// [`TestStore::release_reads`].
    pub fn hold_reads(&self) {
        *self.hold.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }

    pub fn release_reads(&self) {
        if let Some(s) = self.hold.lock().unwrap().take() {
            s.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test store is down".into()))
        } else {
            Ok(())
        }
    }

    async fn held(&self) {
        let gate = self.hold.lock().unwrap().clone();
        if let Some(gate) = gate {
            let _permit = gate.acquire().await.expect("gate open");
        }
    }
}

impl StateStore for TestStore {
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.ping().await
        })
    }

    fn account(&self, account: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move {
            self.account_calls.fetch_add(1, Ordering::SeqCst);
            self.check()?;
            let out = self.inner.account(&account).await;
            self.held().await;
            out
        })
    }

    fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move {
            self.check()?;
            self.inner.enable_two_factor(&account, now).await
        })
    }

    fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move {
            self.check()?;
            self.inner.reset_account(&account, now).await
        })
    }

    fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move {
            self.revocation_calls.fetch_add(1, Ordering::SeqCst);
            self.check()?;
            let out = self.inner.revocation(&serial).await;
            self.held().await;
            out
        })
    }

    fn revoke(&self, revocation: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.revoke(revocation).await
        })
    }

    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.revocations().await
        })
    }

    fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.record_certificate(cert).await
        })
    }

    fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
        let serial = serial.to_owned();
        Box::pin(async move {
            self.check()?;
            self.inner.certificate(&serial).await
        })
    }

    fn certificates_of(&self, account: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
        let account = account.to_owned();
        Box::pin(async move {
            self.check()?;
            self.inner.certificates_of(&account).await
        })
    }

    fn put_ticket(&self, ticket: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.put_ticket(ticket).await
        })
    }

    fn peek_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move {
            self.check()?;
            self.inner.peek_ticket(&hash, now).await
        })
    }

    fn consume_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move {
            self.check()?;
            self.inner.consume_ticket(&hash, now).await
        })
    }

    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.next_crl_number().await
        })
    }

    fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.sweep(now).await
        })
    }
}
