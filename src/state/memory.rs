//! An in-memory [`StateStore`] for tests (`cfg(any(test, feature = "test-util"))`): the
//! contract of the embedded store without a file, plus what tests of the layers above
//! need: a switch that makes every call fail (with a message of the test's choosing),
//! counts of the writes and of the per-request reads (`revocation`, `account`) that
//! reached it, and a gate that holds those reads until the test releases them.
//! It passes the same contract suite as the real backends (`tests/state_contract.rs`).
//! Never part of a release build's behaviour: nothing but tests constructs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{
    AccountState, BoxFut, CertRecord, REVOCATION_RETENTION_AFTER_EXPIRY, Revocation,
    SessionBinding, StateStore, StoreError, TicketRecord, UnixTime,
};

/// See the module header. Cheap to share behind an `Arc`; a "restart" is the same value.
#[derive(Default)]
pub struct MemoryStore {
    data: Mutex<Records>,
    /// `Some(message)`: every call fails with `Unavailable(message)`.
    failing: Mutex<Option<String>>,
    writes: AtomicUsize,
    revocation_reads: AtomicUsize,
    account_reads: AtomicUsize,
    hold: Mutex<Option<Arc<Semaphore>>>,
}

/// What the store holds, for tests that look inside (see [`MemoryStore::records`]).
#[derive(Default)]
pub struct Records {
    pub accounts: HashMap<String, AccountState>,
    pub revoked: HashMap<String, Revocation>,
    pub certs: HashMap<String, CertRecord>,
    pub tickets: HashMap<String, TicketRecord>,
    pub sessions: HashMap<String, SessionBinding>,
    pub crl_number: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every call fails with [`StoreError::Unavailable`]`(message)`; `None`
    /// makes the store answer again.
    pub fn set_failing(&self, message: Option<&str>) {
        *lock(&self.failing) = message.map(str::to_owned);
    }

    /// The records as they are now (a test's direct look, or a change no call can make).
    pub fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        lock(&self.data)
    }

    /// How many writes reached the store (failed calls do not count).
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// How many `revocation` calls reached the store (failed ones included).
    pub fn revocation_reads(&self) -> usize {
        self.revocation_reads.load(Ordering::SeqCst)
    }

    /// How many `account` calls reached the store (failed ones included).
    pub fn account_reads(&self) -> usize {
        self.account_reads.load(Ordering::SeqCst)
    }

    /// From now on `revocation` and `account` wait, after reading, until
    /// [`MemoryStore::release_reads`].
    pub fn hold_reads(&self) {
        *lock(&self.hold) = Some(Arc::new(Semaphore::new(0)));
    }

    pub fn release_reads(&self) {
        if let Some(s) = lock(&self.hold).take() {
            s.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// A per-request read: counted, and held while [`MemoryStore::hold_reads`] is on.
    fn held_read<T: Send + 'static>(
        &self,
        counter: &AtomicUsize,
        f: impl FnOnce(&Records) -> T,
    ) -> BoxFut<'_, Result<T, StoreError>> {
        counter.fetch_add(1, Ordering::SeqCst);
        let out = self.check().map(|()| f(&lock(&self.data)));
        let gate = lock(&self.hold).clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                let _permit = gate.acquire().await;
            }
            out
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        match lock(&self.failing).as_ref() {
            Some(m) => Err(StoreError::Unavailable(m.clone())),
            None => Ok(()),
        }
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Records) -> T,
    ) -> BoxFut<'_, Result<T, StoreError>> {
        let out = self.check().map(|()| f(&lock(&self.data)));
        Box::pin(std::future::ready(out))
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Records) -> T,
    ) -> BoxFut<'_, Result<T, StoreError>> {
        let out = self.check().map(|()| {
            self.writes.fetch_add(1, Ordering::SeqCst);
            f(&mut lock(&self.data))
        });
        Box::pin(std::future::ready(out))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_account(account: &str, now: UnixTime) -> AccountState {
    AccountState {
        account: account.to_owned(),
        generation: 1,
        two_factor: false,
        created_at: now,
        reset_at: None,
    }
}

impl StateStore for MemoryStore {
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        self.read(|_| ())
    }

    fn account(&self, account: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>> {
        let account = account.to_owned();
        self.held_read(&self.account_reads, move |m| {
            m.accounts.get(&account).cloned()
        })
    }

    fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        self.write(move |m| {
            let a = m
                .accounts
                .entry(account.clone())
                .or_insert_with(|| new_account(&account, now));
            a.two_factor = true;
            a.clone()
        })
    }

    fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        self.write(move |m| {
            let a = m
                .accounts
                .entry(account.clone())
                .or_insert_with(|| new_account(&account, now));
            a.generation += 1;
            a.reset_at = Some(now);
            let a = a.clone();
            m.tickets.retain(|_, t| t.account != account);
            a
        })
    }

    fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
        let serial = serial.to_owned();
        self.held_read(&self.revocation_reads, move |m| {
            m.revoked.get(&serial).cloned()
        })
    }

    fn revoke(&self, r: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
        self.write(move |m| m.revoked.entry(r.serial.clone()).or_insert(r).clone())
    }

    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
        self.read(|m| {
            let mut v: Vec<Revocation> = m.revoked.values().cloned().collect();
            v.sort_by(|a, b| a.serial.cmp(&b.serial));
            v
        })
    }

    fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
        self.write(move |m| {
            m.certs.insert(cert.serial.clone(), cert);
        })
    }

    fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
        let serial = serial.to_owned();
        self.read(move |m| m.certs.get(&serial).cloned())
    }

    fn certificates_of(&self, account: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
        let account = account.to_owned();
        self.read(move |m| {
            let mut v: Vec<CertRecord> = m
                .certs
                .values()
                .filter(|c| c.account == account)
                .cloned()
                .collect();
            v.sort_by(|a, b| a.serial.cmp(&b.serial));
            v
        })
    }

    fn put_ticket(&self, t: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
        self.write(move |m| {
            m.tickets.insert(t.hash.clone(), t);
        })
    }

    fn peek_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        self.read(move |m| m.tickets.get(&hash).filter(|t| t.expires_at > now).cloned())
    }

    fn consume_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        self.write(move |m| m.tickets.remove(&hash).filter(|t| t.expires_at > now))
    }

    fn bind_session(
        &self,
        b: SessionBinding,
        replace: bool,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>> {
        self.write(move |m| {
            if !replace
                && let Some(existing) = m.sessions.get(&b.hash)
                && existing.expires_at > b.bound_at
            {
                return Some(existing.clone());
            }
            m.sessions.insert(b.hash.clone(), b);
            None
        })
    }

    fn session(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>> {
        let hash = hash.to_owned();
        self.read(move |m| {
            m.sessions
                .get(&hash)
                .filter(|b| b.expires_at > now)
                .cloned()
        })
    }

    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        self.write(|m| {
            m.crl_number += 1;
            m.crl_number
        })
    }

    fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
        self.write(move |m| {
            let before = m.tickets.len() + m.revoked.len() + m.sessions.len();
            m.tickets.retain(|_, t| t.expires_at > now);
            m.sessions.retain(|_, b| b.expires_at > now);
            m.revoked.retain(|_, r| {
                r.not_after
                    .is_none_or(|na| na.saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY) >= now)
            });
            (before - m.tickets.len() - m.revoked.len() - m.sessions.len()) as u64
        })
    }
}
