//! Shared pieces for state tests: backend factories for the contract suite (the cache
//! tests use `certgate::state::memory::MemoryStore`, which counts, fails and holds calls).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use certgate::config::{RedisConfig, RedisMode};
use certgate::state::embedded::EmbeddedStore;
use certgate::state::redis::RedisStore;
use certgate::state::{BoxFut, StateStore};

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
        timeout: std::time::Duration::from_millis(500),
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
