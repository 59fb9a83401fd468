//! Read-through cache (moka) in front of any [`StateStore`].
//!
//! PLACEHOLDER IMPLEMENTATION: passes every call straight to the store. The signatures
//! below are the contract the proxy and the admin API code against.

use std::sync::Arc;

use super::{AccountState, Revocation, StateStore, StoreError, UnixTime};
use crate::config::StateConfig;
use crate::metrics::Metrics;

/// What the gate needs to decide one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertState {
    pub revocation: Option<Revocation>,
    pub account: Option<AccountState>,
}

/// The state could not be decided (store down and no usable cache entry).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("state store unavailable and no usable cached entry")]
pub struct Unavailable;

pub struct StateCache {
    store: Arc<dyn StateStore>,
    #[allow(dead_code)]
    metrics: Metrics,
}

impl StateCache {
    pub fn new(store: Arc<dyn StateStore>, _cfg: &StateConfig, metrics: Metrics) -> Self {
        Self { store, metrics }
    }

    /// The backend, for calls the cache does not wrap (tickets, registry, CRL number).
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The per-request check: revocation of `serial` and, when given, the account record.
    pub async fn lookup(
        &self,
        serial: &str,
        account: Option<&str>,
    ) -> Result<CertState, Unavailable> {
        let revocation = self
            .store
            .revocation(serial)
            .await
            .map_err(|_| Unavailable)?;
        let account = match account {
            Some(a) => self.store.account(a).await.map_err(|_| Unavailable)?,
            None => None,
        };
        Ok(CertState {
            revocation,
            account,
        })
    }

    /// True once the store has answered at least once.
    pub fn ready(&self) -> bool {
        true
    }

    /// Pings the store; updates readiness and `certgate_state_store_up`.
    pub async fn probe(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    pub fn invalidate_serial(&self, _serial: &str) {}
    pub fn invalidate_account(&self, _account: &str) {}
    pub fn invalidate_all(&self) {}

    /// Write-through: revoke, then drop the cached entry so the next request sees it.
    pub async fn revoke(&self, r: Revocation) -> Result<Revocation, StoreError> {
        let serial = r.serial.clone();
        let out = self.store.revoke(r).await?;
        self.invalidate_serial(&serial);
        Ok(out)
    }

    pub async fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        let out = self.store.reset_account(account, now).await?;
        self.invalidate_account(account);
        Ok(out)
    }

    pub async fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        let out = self.store.enable_two_factor(account, now).await?;
        self.invalidate_account(account);
        Ok(out)
    }
}
