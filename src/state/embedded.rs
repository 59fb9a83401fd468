//! (pending) redb store.
use std::path::Path;

use super::*;

pub struct EmbeddedStore;

impl EmbeddedStore {
    pub fn open(_path: &Path) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable("pending".into()))
    }
}

macro_rules! pending {
    () => {
        Box::pin(async { Err(StoreError::Unavailable("pending".into())) })
    };
}

impl StateStore for EmbeddedStore {
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        pending!()
    }
    fn account(&self, _: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>> {
        pending!()
    }
    fn enable_two_factor(
        &self,
        _: &str,
        _: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        pending!()
    }
    fn reset_account(&self, _: &str, _: UnixTime) -> BoxFut<'_, Result<AccountState, StoreError>> {
        pending!()
    }
    fn revocation(&self, _: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
        pending!()
    }
    fn revoke(&self, _: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
        pending!()
    }
    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
        pending!()
    }
    fn record_certificate(&self, _: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
        pending!()
    }
    fn certificate(&self, _: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
        pending!()
    }
    fn certificates_of(&self, _: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
        pending!()
    }
    fn put_ticket(&self, _: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
        pending!()
    }
    fn consume_ticket(
        &self,
        _: &str,
        _: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        pending!()
    }
    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        pending!()
    }
    fn sweep(&self, _: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
        pending!()
    }
}
