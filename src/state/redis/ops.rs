//! Every store operation of the Redis backend, step by step (the order of the steps of a
//! write that spans slots is explained at the top of `redis/mod.rs`). `StateStore` in
//! `mod.rs` wraps each in the call timeout.

use super::RedisStore;
use super::codec::*;
use super::meta::Marked;
use crate::state::{
    AccountState, CertRecord, REVOCATION_RETENTION_AFTER_EXPIRY, Revocation, SessionBinding,
    StoreError, TicketRecord, UnixTime,
};

impl RedisStore {
    pub(super) async fn account_inner(
        &self,
        account: &str,
    ) -> Result<Option<AccountState>, StoreError> {
        let fields = self.guarded_hash(self.keys.account(account)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_account(account, &fields).map(Some)
    }

    pub(super) async fn enable_two_factor_inner(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .enable_two_factor
            .key(self.keys.account(account))
            .arg(now)
            .invoke_async::<Vec<String>>(&mut conn)
            .await;
        let fields = pairs(self.check(id, r, "enable two-factor")?);
        self.replicated(id, &mut conn, &self.keys.account(account))
            .await?;
        let state = decode_account(account, &fields)?;
        self.publish(format!("account {account}")).await;
        Ok(state)
    }

    pub(super) async fn reset_account_inner(
        &self,
        account: &str,
        now: UnixTime,
    ) -> Result<AccountState, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .reset_account
            .key(self.keys.account(account))
            .key(self.keys.account_tickets(account))
            .arg(now)
            .invoke_async::<(Vec<String>, Vec<String>)>(&mut conn)
            .await;
        let (fields, tickets) = self.check(id, r, "reset")?;
        self.replicated(id, &mut conn, &self.keys.account(account))
            .await?;
        let state = decode_account(account, &pairs(fields))?;
        // The generation is bumped: old certificates are refused from here on. Tell every
        // instance before the (slower, cross-slot) ticket cleanup.
        self.publish(format!("account {account}")).await;
        if !tickets.is_empty() {
            let dels = tickets
                .iter()
                .map(|h| {
                    let mut c = redis::cmd("DEL");
                    c.arg(self.keys.ticket(h));
                    c
                })
                .collect();
            self.each::<i64>(dels, "void tickets").await?;
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.account_tickets(account)).arg(&tickets);
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(self.keys.tickets_index()).arg(
                tickets
                    .iter()
                    .map(|h| format!("{h} {account}"))
                    .collect::<Vec<_>>(),
            );
            self.each::<i64>(vec![srem, zrem], "void tickets").await?;
        }
        Ok(state)
    }

    pub(super) async fn revocation_inner(
        &self,
        serial: &str,
    ) -> Result<Option<Revocation>, StoreError> {
        let fields = self.guarded_hash(self.keys.revoked(serial)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_revocation(serial, &fields).map(Some)
    }

    pub(super) async fn revoke_inner(
        &self,
        revocation: Revocation,
    ) -> Result<Revocation, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let serial = revocation.serial.clone();
        let drop_at = revocation
            .not_after
            .map(|na| na.saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY));
        let r = self
            .scripts
            .revoke
            .key(self.keys.revoked(&serial))
            .arg(revocation.reason.as_str())
            .arg(revocation.revoked_at)
            .arg(
                revocation
                    .not_after
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(drop_at.map(|v| v.to_string()).unwrap_or_default())
            .invoke_async::<(i64, Vec<String>)>(&mut conn)
            .await;
        let (written, existing) = self.check(id, r, "revoke")?;
        let stored = if written == 1 {
            revocation
        } else {
            decode_revocation(&serial, &pairs(existing))?
        };
        // The CRL index entry, on the same connection, after the record: a crash between
        // the two leaves the record, and a repeated revoke (idempotent) adds the entry.
        let score = stored
            .not_after
            .map(|na| {
                na.saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY)
                    .to_string()
            })
            .unwrap_or_else(|| "+inf".into());
        let r = redis::cmd("ZADD")
            .arg(self.keys.revoked_index())
            .arg(score)
            .arg(&serial)
            .query_async::<i64>(&mut conn)
            .await;
        self.check(id, r, "index revocation")?;
        // Both steps reach a replica before the revocation counts as done, so a failover
        // right after it loses neither the refusal nor the CRL entry. One `WAIT` covers
        // every earlier write on a connection; in Cluster the index lives in another slot,
        // so its master is asked separately.
        self.replicated(id, &mut conn, &self.keys.revoked(&serial))
            .await?;
        if self.link.is_cluster() {
            self.replicated(id, &mut conn, &self.keys.revoked_index())
                .await?;
        }
        self.publish(format!("revoke {serial}")).await;
        Ok(stored)
    }

    pub(super) async fn revocations_inner(&self) -> Result<Vec<Revocation>, StoreError> {
        self.admitted().await?;
        let (serials, records) = if self.per_slot() {
            // The CRL reads revocations too: each read beside its slot marker.
            let serials = self
                .marked(Marked::List, &self.keys.revoked_index())
                .await?;
            let mut records = Vec::with_capacity(serials.len());
            for serial in &serials {
                let fields = self
                    .marked(Marked::Read, &self.keys.revoked(serial))
                    .await?;
                records.push(pairs(fields));
            }
            (serials, records)
        } else {
            let (id, mut conn) = self.link.conn().await?;
            let r = redis::cmd("ZRANGE")
                .arg(self.keys.revoked_index())
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await;
            let serials = self.check(id, r, "list revocations")?;
            let records = self
                .hashes(&serials, |s| self.keys.revoked(s), "list revocations")
                .await?;
            (serials, records)
        };
        let mut out = Vec::new();
        for (serial, fields) in serials.iter().zip(records) {
            // Gone by EXPIREAT, not yet swept from the index.
            if !fields.is_empty() {
                out.push(decode_revocation(serial, &fields)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn record_certificate_inner(
        &self,
        cert: CertRecord,
    ) -> Result<(), StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let drop_at = cert
            .not_after
            .saturating_add(REVOCATION_RETENTION_AFTER_EXPIRY);
        let r = self
            .scripts
            .record_cert
            .key(self.keys.cert(&cert.serial))
            .arg(&cert.account)
            .arg(cert.generation)
            .arg(&cert.fingerprint)
            .arg(cert.not_after)
            .arg(cert.issued_at)
            .arg(drop_at)
            .arg(cert.issued_from.as_deref().unwrap_or(""))
            .invoke_async::<String>(&mut conn)
            .await;
        let previous = self.check(id, r, "record certificate")?;
        self.replicated(id, &mut conn, &self.keys.cert(&cert.serial))
            .await?;
        let mut cmds = Vec::new();
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.account_certs(&cert.account))
            .arg(&cert.serial);
        cmds.push(sadd);
        if !previous.is_empty() && previous != cert.account {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.account_certs(&previous))
                .arg(&cert.serial);
            cmds.push(srem);
        }
        self.each::<i64>(cmds, "index certificate").await?;
        Ok(())
    }

    /// The registry is not a decision input (lookups read revocations and accounts), so it
    /// stays readable while data loss is suspected: the admin API needs it to re-apply
    /// revocations.
    pub(super) async fn certificate_inner(
        &self,
        serial: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("HGETALL")
            .arg(self.keys.cert(serial))
            .query_async::<Fields>(&mut conn)
            .await;
        let fields = self.check(id, r, "read certificate")?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_cert(serial, &fields).map(Some)
    }

    pub(super) async fn certificates_of_inner(
        &self,
        account: &str,
    ) -> Result<Vec<CertRecord>, StoreError> {
        self.admitted_write().await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("SMEMBERS")
            .arg(self.keys.account_certs(account))
            .query_async::<Vec<String>>(&mut conn)
            .await;
        let serials = self.check(id, r, "list certificates")?;
        let records = self
            .hashes(&serials, |s| self.keys.cert(s), "list certificates")
            .await?;
        let mut out = Vec::new();
        for (serial, fields) in serials.iter().zip(records) {
            if fields.is_empty() {
                continue; // expired record; the set entry is harmless
            }
            let c = decode_cert(serial, &fields)?;
            // A set entry left by a moved record (see the module header).
            if c.account == account {
                out.push(c);
            }
        }
        out.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
        Ok(out)
    }

    pub(super) async fn put_ticket_inner(&self, ticket: TicketRecord) -> Result<(), StoreError> {
        self.admitted_write().await?;
        // The account's set first, so a reset racing this put cannot miss the ticket.
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.account_tickets(&ticket.account))
            .arg(&ticket.hash);
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.tickets_index())
            .arg(ticket.expires_at)
            .arg(format!("{} {}", ticket.hash, ticket.account));
        self.each::<i64>(vec![sadd, zadd], "index ticket").await?;
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .put_ticket
            .key(self.keys.ticket(&ticket.hash))
            .arg(&ticket.account)
            .arg(ticket.generation)
            .arg(ticket.expires_at)
            .invoke_async::<String>(&mut conn)
            .await;
        let previous = self.check(id, r, "put ticket")?;
        self.replicated(id, &mut conn, &self.keys.ticket(&ticket.hash))
            .await?;
        if !previous.is_empty() && previous != ticket.account {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.account_tickets(&previous))
                .arg(&ticket.hash);
            self.each::<i64>(vec![srem], "index ticket").await?;
        }
        Ok(())
    }

    pub(super) async fn bind_session_inner(
        &self,
        b: SessionBinding,
        replace: bool,
    ) -> Result<Option<SessionBinding>, StoreError> {
        self.admitted().await?;
        let key = self.keys.session(&b.hash);
        let (id, mut conn) = self.link.conn().await?;
        let r = self
            .scripts
            .bind_session
            .key(&key)
            .arg(&b.account)
            .arg(&b.serial)
            .arg(b.bound_at)
            .arg(b.expires_at)
            .arg(if replace { "1" } else { "0" })
            .invoke_async::<Vec<String>>(&mut conn)
            .await;
        let existing = self.check(id, r, "bind session")?;
        if !existing.is_empty() {
            return decode_session(&b.hash, &pairs(existing)).map(Some);
        }
        self.replicated(id, &mut conn, &key).await?;
        Ok(None)
    }

    pub(super) async fn session_inner(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> Result<Option<SessionBinding>, StoreError> {
        let fields = self.guarded_hash(self.keys.session(hash)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let b = decode_session(hash, &fields)?;
        Ok((now < b.expires_at).then_some(b))
    }

    pub(super) async fn peek_ticket_inner(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> Result<Option<TicketRecord>, StoreError> {
        self.admitted().await?;
        let fields = if self.per_slot() {
            pairs(self.marked(Marked::Read, &self.keys.ticket(hash)).await?)
        } else {
            let (id, mut conn) = self.link.conn().await?;
            let r = redis::cmd("HGETALL")
                .arg(self.keys.ticket(hash))
                .query_async::<Fields>(&mut conn)
                .await;
            self.check(id, r, "read ticket")?
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let ticket = decode_ticket(hash, &fields)?;
        Ok((now < ticket.expires_at).then_some(ticket))
    }

    pub(super) async fn consume_ticket_inner(
        &self,
        hash: &str,
        now: UnixTime,
    ) -> Result<Option<TicketRecord>, StoreError> {
        self.admitted().await?;
        let fields = if self.per_slot() {
            let fields = pairs(
                self.marked(Marked::Consume, &self.keys.ticket(hash))
                    .await?,
            );
            let (id, mut conn) = self.link.conn().await?;
            self.replicated(id, &mut conn, &self.keys.ticket(hash))
                .await?;
            fields
        } else {
            let (id, mut conn) = self.link.conn().await?;
            let r = self
                .scripts
                .consume_ticket
                .key(self.keys.ticket(hash))
                .invoke_async::<Vec<String>>(&mut conn)
                .await;
            let fields = pairs(self.check(id, r, "consume ticket")?);
            self.replicated(id, &mut conn, &self.keys.ticket(hash))
                .await?;
            fields
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let ticket = decode_ticket(hash, &fields)?;
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.account_tickets(&ticket.account))
            .arg(hash);
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.keys.tickets_index())
            .arg(format!("{hash} {}", ticket.account));
        // Index cleanup only; `sweep` repeats it if this fails.
        if let Err(e) = self.each::<i64>(vec![srem, zrem], "unindex ticket").await {
            tracing::debug!(error = %e, "ticket index cleanup deferred to the sweep");
        }
        // A ticket is usable strictly before `expires_at`; an expired one is gone either way.
        if now >= ticket.expires_at {
            return Ok(None);
        }
        Ok(Some(ticket))
    }

    pub(super) async fn next_crl_number_inner(&self) -> Result<u64, StoreError> {
        self.admitted().await?;
        if self.per_slot() {
            let out = self.marked(Marked::Incr, &self.keys.crl_number()).await?;
            let (id, mut conn) = self.link.conn().await?;
            self.replicated(id, &mut conn, &self.keys.crl_number())
                .await?;
            return out
                .first()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("crl number: INCR said {out:?}")));
        }
        let (id, mut conn) = self.link.conn().await?;
        let r = redis::cmd("INCR")
            .arg(self.keys.crl_number())
            .query_async::<u64>(&mut conn)
            .await;
        let n = self.check(id, r, "crl number")?;
        self.replicated(id, &mut conn, &self.keys.crl_number())
            .await?;
        Ok(n)
    }

    pub(super) async fn sweep_inner(&self, now: UnixTime) -> Result<u64, StoreError> {
        self.admitted().await?;
        let (id, mut conn) = self.link.conn().await?;
        let mut removed = 0u64;

        // Tickets: usable strictly before expires_at, so a score <= now is expired.
        let r = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.tickets_index())
            .arg("-inf")
            .arg(now)
            .query_async::<Vec<String>>(&mut conn)
            .await;
        let members = self.check(id, r, "sweep tickets")?;
        for member in &members {
            let Some((hash, account)) = member.split_once(' ') else {
                continue;
            };
            let key = self.keys.ticket(hash);
            let r = redis::cmd("HGET")
                .arg(&key)
                .arg("expires_at")
                .query_async::<Option<i64>>(&mut conn)
                .await;
            // A ticket put again under the same hash with a later expiry stays.
            let expires_at = self.check(id, r, "sweep tickets")?;
            if expires_at.is_none_or(|e| e <= now) {
                let r = redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<i64>(&mut conn)
                    .await;
                removed += u64::try_from(self.check(id, r, "sweep tickets")?).unwrap_or(0);
                let mut srem = redis::cmd("SREM");
                srem.arg(self.keys.account_tickets(account)).arg(hash);
                self.each::<i64>(vec![srem], "sweep tickets").await?;
            }
            let r = redis::cmd("ZREM")
                .arg(self.keys.tickets_index())
                .arg(member)
                .query_async::<i64>(&mut conn)
                .await;
            self.check(id, r, "sweep tickets")?;
        }

        // Revocations: scored by not_after + retention; drop those strictly before now.
        let r = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.revoked_index())
            .arg("-inf")
            .arg(format!("({now}"))
            .query_async::<Vec<String>>(&mut conn)
            .await;
        let serials = self.check(id, r, "sweep revocations")?;
        for serial in &serials {
            let r = redis::cmd("DEL")
                .arg(self.keys.revoked(serial))
                .query_async::<i64>(&mut conn)
                .await;
            removed += u64::try_from(self.check(id, r, "sweep revocations")?).unwrap_or(0);
            let r = redis::cmd("ZREM")
                .arg(self.keys.revoked_index())
                .arg(serial)
                .query_async::<i64>(&mut conn)
                .await;
            self.check(id, r, "sweep revocations")?;
        }
        Ok(removed)
    }
}
