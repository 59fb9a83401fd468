//! The embedded backend: one redb file, the zero-setup default for a single node.
//!
//! This module owns the on-disk layout only. The contract every backend keeps is the
//! [`StateStore`] trait in `state/mod.rs`; the read-through cache in front of any backend is
//! `state/cache.rs`; only `app` names this type.
//!
//! Layout. One table per record kind; values are JSON of the private `Stored*` types below
//! (the key is not repeated inside), so a field can be added later without a migration:
//! - `accounts`: account → `StoredAccount`
//! - `revoked`: serial → `StoredRevocation`
//! - `certs`: serial → `StoredCert`
//! - `certs_by_account`: account ⇉ serial (multimap index behind `certificates_of`)
//! - `tickets`: hex SHA-256 of the ticket → `StoredTicket`
//! - `tickets_by_account`: account ⇉ ticket hash (so a reset can void the open tickets)
//! - `sessions`: hex SHA-256 of an application session cookie → `StoredSession`
//! - `meta`: `schema_version`, `crl_number`
//!
//! Durability and atomicity. Every write is one redb write transaction committed with
//! [`Durability::Immediate`], so it is on disk when the returned future resolves, and a
//! crash leaves either all of it or none of it. redb serialises write transactions, which
//! is what makes `consume_ticket` and `revoke` race-free: their read-check-write happens
//! inside one transaction.
//!
//! Blocking. redb is synchronous, so every call runs on tokio's blocking pool. The work is
//! spawned when the future is first polled; once spawned it runs to the end even if the
//! caller's future is dropped, which keeps the trait's "all of the write or none of it"
//! promise.
//!
//! Locking. redb takes an exclusive lock on the file. A second process (or a second
//! `open` in this one) gets [`StoreError::Unavailable`] naming the file instead of
//! sharing, and so corrupting, it.

use std::fs::{DirBuilder, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, MultimapTableDefinition, ReadTransaction, ReadableDatabase,
    ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::records::{StoredAccount, StoredCert, StoredRevocation, StoredSession, StoredTicket};

use super::{
    AccountState, BoxFut, CertRecord, REVOCATION_RETENTION_AFTER_EXPIRY, Revocation,
    SessionBinding, StateStore, StoreError, TicketRecord, UnixTime,
};

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
const CERTS_BY_ACCOUNT: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("certs_by_account");
const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
const TICKETS_BY_ACCOUNT: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("tickets_by_account");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA_VERSION: &str = "schema_version";
const META_CRL_NUMBER: &str = "crl_number";
/// Bumped when the layout changes incompatibly; a newer file is refused, not misread.
const SCHEMA_VERSION: u64 = 1;

/// redb's page cache. The state is a few MB at most; redb's default (1 GiB) is only a cap,
/// but a small explicit cap keeps the gateway's memory predictable.
const PAGE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The redb-backed [`StateStore`]. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct EmbeddedStore {
    /// The open file. After an I/O error (a full disk, say) redb refuses every later call
    /// until the file is opened again; `poisoned` is then set and the next call reopens it.
    db: std::sync::Mutex<Option<Arc<Database>>>,
    poisoned: std::sync::atomic::AtomicBool,
    path: PathBuf,
}

/// The start of the message of every error that leaves the open file unusable (redb's
/// I/O errors): the store reopens the file on the next call.
const IO_FAILED: &str = "the store file could not be written or read";

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens the existing store at `path`. A missing or empty (0-byte) file is refused:
    /// the store holds every revocation and reset, so a file that vanished (a bad volume
    /// mount, an `rm`, a restore gone wrong) must stop the gateway rather than start it on
    /// an empty store that lets revoked certificates in again. A new store is made only
    /// when asked, by [`EmbeddedStore::open_or_create`] (`certgate init`, the demo,
    /// `certgate run --create-store`).
    ///
    /// Fails with [`StoreError::Unavailable`] when the file is missing or empty or another
    /// process holds it, and with [`StoreError::Corrupt`] when the file is not a valid store
    /// (redb verifies every page checksum on open, so a damaged file is refused rather than
    /// trusted).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Unavailable(format!(
                    "{shown} does not exist. It holds every revocation and reset, and certgate \
                     does not start on a new, empty store in its place. If this is the first \
                     start, create it once with `certgate run --create-store` (`certgate init` \
                     creates it too); if the file should be there, restore it (check the volume \
                     mount and state.path) before starting"
                )));
            }
            Err(e) => {
                return Err(StoreError::Unavailable(format!("cannot read {shown}: {e}")));
            }
            Ok(m) if m.len() == 0 => {
                return Err(StoreError::Unavailable(format!(
                    "{shown} is empty (0 bytes): it holds no store, and starting on it would \
                     forget every revocation and reset. Restore it from a backup; if it was \
                     never used (an interrupted first start), delete it and run `certgate run \
                     --create-store`"
                )));
            }
            Ok(_) => warn_if_shared(path),
        }
        Self::open_file(path)
    }

    /// Opens the store at `path`, first creating a new, empty one (and missing parent
    /// folders) when there is no file. An existing file is opened as [`EmbeddedStore::open`]
    /// does, and an empty (0-byte) one is refused the same way.
    ///
    /// New folders are created `0700` and a new file `0600`: the file names every account
    /// and holds the open enrollment tickets' hashes. An existing file keeps its mode (the
    /// operator may have set it on purpose); a group- or world-readable one is logged.
    pub fn open_or_create(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut dirs = DirBuilder::new();
            dirs.recursive(true);
            private_dir_mode(&mut dirs);
            dirs.create(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create folder {}: {e}", parent.display()))
            })?;
        }
        // Create the file ourselves so it is born private; redb would use the umask.
        let mut create = OpenOptions::new();
        create.write(true).create_new(true);
        private_file_mode(&mut create);
        match create.open(path) {
            Ok(_) => {
                let store = Self::open_file(path);
                if store.is_err() {
                    // Leave no 0-byte file behind to be refused on the next start.
                    let _ = std::fs::remove_file(path);
                } else {
                    tracing::warn!(path = %shown, "created a new, empty embedded state store");
                }
                store
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::open(path),
            Err(e) => Err(StoreError::Unavailable(format!(
                "cannot create {shown}: {e}"
            ))),
        }
    }

    /// Opens (or, for a file just created, formats) the redb file at `path`.
    fn open_file(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: std::sync::Mutex::new(Some(Arc::new(Self::open_database(path)?))),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            path: path.to_owned(),
        })
    }

    fn open_database(path: &Path) -> Result<Database, StoreError> {
        let shown = path.display();
        let db = Database::builder()
            .set_cache_size(PAGE_CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                    "{shown} is locked: another certgate process (or another store in this one) \
                     has it open"
                )),
                other => with_context(&format!("cannot open {shown}"), other.into()),
            })?;

        // Create every table up front so readers never see "table does not exist", and
        // refuse a file written by a newer, incompatible layout.
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        {
            tx.open_table(ACCOUNTS)?;
            tx.open_table(REVOKED)?;
            tx.open_table(CERTS)?;
            tx.open_multimap_table(CERTS_BY_ACCOUNT)?;
            tx.open_table(TICKETS)?;
            tx.open_multimap_table(TICKETS_BY_ACCOUNT)?;
            tx.open_table(SESSIONS)?;
            let mut meta = tx.open_table(META)?;
            let version = meta.get(META_SCHEMA_VERSION)?.map(|g| g.value());
            match version {
                None => {
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => {
                    return Err(StoreError::Unavailable(format!(
                        "{shown} has schema version {v}; this certgate reads version \
                         {SCHEMA_VERSION} (was it written by a newer release?)"
                    )));
                }
            }
        }
        tx.commit()?;
        Ok(db)
    }

    /// The open file, opened again first when an I/O error left it unusable (once no call
    /// still holds the old handle; until then, calls go on failing on it).
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        use std::sync::atomic::Ordering;
        let mut slot = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = self.poisoned.load(Ordering::Acquire)
            && slot.as_ref().is_none_or(|db| Arc::strong_count(db) == 1);
        if stale {
            // redb locks the file: the old handle must be closed before the new one opens.
            drop(slot.take());
            match Self::open_database(&self.path) {
                Ok(fresh) => {
                    *slot = Some(Arc::new(fresh));
                    self.poisoned.store(false, Ordering::Release);
                    tracing::warn!(
                        path = %self.path.display(),
                        "embedded state store file opened again after an I/O error"
                    );
                }
                Err(e) => {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "embedded state store file cannot be opened again"
                    );
                    return Err(e);
                }
            }
        }
        slot.as_ref().map(Arc::clone).ok_or_else(|| {
            StoreError::Unavailable(format!("{IO_FAILED}: {} is not open", self.path.display()))
        })
    }

    /// Notes an error that leaves the open file unusable.
    fn after<T>(&self, r: &Result<T, StoreError>) {
        if let Err(StoreError::Unavailable(m)) = r
            && m.contains(IO_FAILED)
        {
            self.poisoned
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a read transaction on the blocking pool.
    fn read<T, F>(&self, f: F) -> BoxFut<'_, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        Box::pin(async move {
            let db = self.database()?;
            let r = blocking(move || {
                let tx = db.begin_read()?;
                f(&tx)
            })
            .await;
            self.after(&r);
            r
        })
    }

    /// Runs `f` in a write transaction on the blocking pool and commits it durably. If `f`
    /// fails, the transaction is dropped, which aborts it: nothing is written.
    fn write<T, F>(&self, f: F) -> BoxFut<'_, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        Box::pin(async move {
            let db = self.database()?;
            let r = blocking(move || {
                let mut tx = db.begin_write()?;
                tx.set_durability(Durability::Immediate)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })
            .await;
            self.after(&r);
            r
        })
    }
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("{table} record {key:?} does not decode: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    // The Stored* types hold only strings and integers, so this cannot fail in practice.
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

fn with_context(context: &str, e: redb::Error) -> StoreError {
    match StoreError::from(e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{context}: {m}")),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{context}: {m}")),
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Corrupted(m) => StoreError::Corrupt(m),
            redb::Error::DatabaseAlreadyOpen => {
                StoreError::Unavailable("the store file is locked by another process".into())
            }
            e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => {
                StoreError::Unavailable(format!("{IO_FAILED} (is the disk full?): {e}"))
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

macro_rules! from_redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(unix)]
fn private_dir_mode(b: &mut DirBuilder) {
    use std::os::unix::fs::DirBuilderExt;
    b.mode(0o700);
}

#[cfg(not(unix))]
fn private_dir_mode(_: &mut DirBuilder) {}

#[cfg(unix)]
fn private_file_mode(o: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    o.mode(0o600);
}

#[cfg(not(unix))]
fn private_file_mode(_: &mut OpenOptions) {}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "state store file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_: &Path) {}

/// Writes `stored` under `key` and keeps the account index true: a record that moves to
/// another account leaves the old account's entry (one transaction: both or neither).
fn put_indexed<T: Serialize + DeserializeOwned>(
    tx: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    index: MultimapTableDefinition<&str, &str>,
    name: &str,
    key: &str,
    stored: &T,
    account_of: fn(&T) -> &str,
) -> Result<(), StoreError> {
    let mut records = tx.open_table(table)?;
    let mut by_account = tx.open_multimap_table(index)?;
    let previous: Option<T> = records
        .get(key)?
        .map(|g| decode(name, key, g.value()))
        .transpose()?;
    let account = account_of(stored);
    if let Some(previous) = previous.filter(|p| account_of(p) != account) {
        by_account.remove(account_of(&previous), key)?;
    }
    records.insert(key, encode(stored)?.as_slice())?;
    by_account.insert(account, key)?;
    Ok(())
}

fn get_account(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    account: &str,
) -> Result<Option<StoredAccount>, StoreError> {
    table
        .get(account)?
        .map(|g| decode("accounts", account, g.value()))
        .transpose()
}

impl StateStore for EmbeddedStore {
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        self.read(|tx| {
            tx.open_table(META)?.get(META_SCHEMA_VERSION)?;
            Ok(())
        })
    }

    fn account(&self, account: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>> {
        let account = account.to_owned();
        self.read(move |tx| {
            let table = tx.open_table(ACCOUNTS)?;
            Ok(get_account(&table, &account)?.map(|s| s.into_state(&account)))
        })
    }

    fn enable_two_factor(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(ACCOUNTS)?;
            let stored = match get_account(&table, &account)? {
                Some(mut s) => {
                    s.two_factor = true;
                    s
                }
                None => StoredAccount {
                    generation: 1,
                    two_factor: true,
                    created_at: now,
                    reset_at: None,
                },
            };
            table.insert(account.as_str(), encode(&stored)?.as_slice())?;
            Ok(stored.into_state(&account))
        })
    }

    fn reset_account(
        &self,
        account: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<AccountState, StoreError>> {
        let account = account.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(ACCOUNTS)?;
            let stored = match get_account(&table, &account)? {
                Some(mut s) => {
                    s.generation = s.generation.checked_add(1).ok_or_else(|| {
                        StoreError::Corrupt(format!("account {account:?}: generation overflow"))
                    })?;
                    s.reset_at = Some(now);
                    s
                }
                // Generation 2, so certificates issued before the record existed (generation 1
                // or none) are refused too.
                None => StoredAccount {
                    generation: 2,
                    two_factor: false,
                    created_at: now,
                    reset_at: Some(now),
                },
            };
            table.insert(account.as_str(), encode(&stored)?.as_slice())?;

            let mut by_account = tx.open_multimap_table(TICKETS_BY_ACCOUNT)?;
            let hashes = by_account
                .remove_all(account.as_str())?
                .map(|g| g.map(|g| g.value().to_owned()))
                .collect::<Result<Vec<String>, _>>()?;
            let mut tickets = tx.open_table(TICKETS)?;
            for hash in &hashes {
                tickets.remove(hash.as_str())?;
            }
            Ok(stored.into_state(&account))
        })
    }

    fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
        let serial = serial.to_owned();
        self.read(move |tx| {
            let table = tx.open_table(REVOKED)?;
            let stored: Option<StoredRevocation> = table
                .get(serial.as_str())?
                .map(|g| decode("revoked", &serial, g.value()))
                .transpose()?;
            Ok(stored.map(|s| s.into_revocation(&serial)))
        })
    }

    fn revoke(&self, revocation: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
        Box::pin(async move {
            // Re-revoking is a no-op; answering it from a read skips a durable commit.
            if let Some(first) = self.revocation(&revocation.serial).await? {
                return Ok(first);
            }
            self.write(move |tx| {
                let mut table = tx.open_table(REVOKED)?;
                let serial = revocation.serial.as_str();
                // Checked again inside the write transaction: two racing revokes both got
                // past the read above, and the first one to commit wins.
                let first: Option<StoredRevocation> = table
                    .get(serial)?
                    .map(|g| decode("revoked", serial, g.value()))
                    .transpose()?;
                if let Some(first) = first {
                    return Ok(first.into_revocation(serial));
                }
                let stored = StoredRevocation {
                    reason: revocation.reason,
                    revoked_at: revocation.revoked_at,
                    not_after: revocation.not_after,
                };
                table.insert(serial, encode(&stored)?.as_slice())?;
                Ok(revocation)
            })
            .await
        })
    }

    fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
        self.read(|tx| {
            let table = tx.open_table(REVOKED)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                let stored: StoredRevocation = decode("revoked", k.value(), v.value())?;
                out.push(stored.into_revocation(k.value()));
            }
            Ok(out)
        })
    }

    fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
        self.write(move |tx| {
            let stored = StoredCert {
                account: cert.account.clone(),
                generation: cert.generation,
                fingerprint: cert.fingerprint.clone(),
                not_after: cert.not_after,
                issued_at: cert.issued_at,
                issued_from: cert.issued_from.clone(),
            };
            put_indexed(
                tx,
                CERTS,
                CERTS_BY_ACCOUNT,
                "certs",
                &cert.serial,
                &stored,
                |s| &s.account,
            )
        })
    }

    fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
        let serial = serial.to_owned();
        self.read(move |tx| {
            let table = tx.open_table(CERTS)?;
            let stored: Option<StoredCert> = table
                .get(serial.as_str())?
                .map(|g| decode("certs", &serial, g.value()))
                .transpose()?;
            Ok(stored.map(|s| s.into_record(&serial)))
        })
    }

    fn certificates_of(&self, account: &str) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
        let account = account.to_owned();
        self.read(move |tx| {
            let certs = tx.open_table(CERTS)?;
            let by_account = tx.open_multimap_table(CERTS_BY_ACCOUNT)?;
            let mut out = Vec::new();
            for serial in by_account.get(account.as_str())? {
                let serial = serial?;
                let serial = serial.value();
                let Some(guard) = certs.get(serial)? else {
                    // Index and record are written in one transaction, so this is damage.
                    return Err(StoreError::Corrupt(format!(
                        "certs_by_account lists {serial:?} for {account:?} but certs has no record"
                    )));
                };
                let stored: StoredCert = decode("certs", serial, guard.value())?;
                out.push(stored.into_record(serial));
            }
            out.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
            Ok(out)
        })
    }

    fn put_ticket(&self, ticket: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
        self.write(move |tx| {
            let stored = StoredTicket {
                account: ticket.account.clone(),
                generation: ticket.generation,
                expires_at: ticket.expires_at,
            };
            put_indexed(
                tx,
                TICKETS,
                TICKETS_BY_ACCOUNT,
                "tickets",
                &ticket.hash,
                &stored,
                |s| &s.account,
            )
        })
    }

    fn peek_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        self.read(move |tx| {
            let Some(g) = tx.open_table(TICKETS)?.get(hash.as_str())? else {
                return Ok(None);
            };
            let ticket: StoredTicket = decode("tickets", &hash, g.value())?;
            Ok((!ticket.expired(now)).then(|| ticket.into_record(&hash)))
        })
    }

    fn consume_ticket(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(async move {
            // Unknown tickets (stale or guessed links) are answered from a read, so they cannot
            // be used to force a durable commit per request.
            let hash_for_read = hash.clone();
            let known = self
                .read(move |tx| {
                    Ok(tx
                        .open_table(TICKETS)?
                        .get(hash_for_read.as_str())?
                        .is_some())
                })
                .await?;
            if !known {
                return Ok(None);
            }
            // Read, check and delete in one write transaction: of racing consumers, the first
            // to get the writer lock removes the ticket and every later one finds nothing.
            self.write(move |tx| {
                let mut tickets = tx.open_table(TICKETS)?;
                let removed: Option<StoredTicket> = tickets
                    .remove(hash.as_str())?
                    .map(|g| decode("tickets", &hash, g.value()))
                    .transpose()?;
                let Some(ticket) = removed else {
                    return Ok(None);
                };
                tx.open_multimap_table(TICKETS_BY_ACCOUNT)?
                    .remove(ticket.account.as_str(), hash.as_str())?;
                // An expired ticket is removed as well: it can never become valid again.
                if ticket.expired(now) {
                    return Ok(None);
                }
                Ok(Some(ticket.into_record(&hash)))
            })
            .await
        })
    }

    fn bind_session(
        &self,
        b: SessionBinding,
        replace: bool,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>> {
        self.write(move |tx| {
            let mut table = tx.open_table(SESSIONS)?;
            if !replace {
                let existing = match table.get(b.hash.as_str())? {
                    Some(g) => Some(decode::<StoredSession>("sessions", &b.hash, g.value())?),
                    None => None,
                };
                if let Some(s) = existing.filter(|s| s.expires_at > b.bound_at) {
                    return Ok(Some(SessionBinding {
                        hash: b.hash,
                        account: s.account,
                        serial: s.serial,
                        bound_at: s.bound_at,
                        expires_at: s.expires_at,
                    }));
                }
            }
            let stored = StoredSession {
                account: b.account,
                serial: b.serial,
                bound_at: b.bound_at,
                expires_at: b.expires_at,
            };
            table.insert(b.hash.as_str(), encode(&stored)?.as_slice())?;
            Ok(None)
        })
    }

    fn session(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> BoxFut<'_, Result<Option<SessionBinding>, StoreError>> {
        let hash = hash.to_owned();
        self.read(move |tx| {
            let Some(g) = tx.open_table(SESSIONS)?.get(hash.as_str())? else {
                return Ok(None);
            };
            let s: StoredSession = decode("sessions", &hash, g.value())?;
            Ok((s.expires_at > now).then(|| SessionBinding {
                hash: hash.clone(),
                account: s.account,
                serial: s.serial,
                bound_at: s.bound_at,
                expires_at: s.expires_at,
            }))
        })
    }

    fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let current = meta.get(META_CRL_NUMBER)?.map(|g| g.value()).unwrap_or(0);
            let next = current
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("crl_number overflow".into()))?;
            meta.insert(META_CRL_NUMBER, next)?;
            Ok(next)
        })
    }

    /// Removes tickets expired at `now`, and revocations whose certificate's `notAfter` is
    /// more than [`REVOCATION_RETENTION_AFTER_EXPIRY`] before `now`. Revocations without a
    /// known `notAfter` and the certificate registry are kept. A record that does not decode
    /// is logged and left in place, so one damaged record cannot stop the cleanup.
    fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
        self.write(move |tx| {
            let mut removed = 0u64;

            let mut tickets = tx.open_table(TICKETS)?;
            let mut expired_tickets = Vec::new();
            for item in tickets.iter()? {
                let (k, v) = item?;
                match decode::<StoredTicket>("tickets", k.value(), v.value()) {
                    Ok(t) if t.expired(now) => {
                        expired_tickets.push((k.value().to_owned(), t.account))
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep skipped a damaged ticket"),
                }
            }
            let mut by_account = tx.open_multimap_table(TICKETS_BY_ACCOUNT)?;
            for (hash, account) in &expired_tickets {
                tickets.remove(hash.as_str())?;
                by_account.remove(account.as_str(), hash.as_str())?;
                removed += 1;
            }

            let mut sessions = tx.open_table(SESSIONS)?;
            let mut expired_sessions = Vec::new();
            for item in sessions.iter()? {
                let (k, v) = item?;
                match decode::<StoredSession>("sessions", k.value(), v.value()) {
                    Ok(s) if s.expires_at <= now => expired_sessions.push(k.value().to_owned()),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep skipped a damaged session binding"),
                }
            }
            for hash in &expired_sessions {
                sessions.remove(hash.as_str())?;
                removed += 1;
            }

            let mut revoked = tx.open_table(REVOKED)?;
            let cutoff = now.saturating_sub(REVOCATION_RETENTION_AFTER_EXPIRY);
            let mut expired_revocations = Vec::new();
            for item in revoked.iter()? {
                let (k, v) = item?;
                match decode::<StoredRevocation>("revoked", k.value(), v.value()) {
                    Ok(StoredRevocation {
                        not_after: Some(na),
                        ..
                    }) if na < cutoff => {
                        expired_revocations.push(k.value().to_owned());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep skipped a damaged revocation"),
                }
            }
            for serial in &expired_revocations {
                revoked.remove(serial.as_str())?;
                removed += 1;
            }
            Ok(removed)
        })
    }
}

mod records;

#[cfg(test)]
mod tests;
