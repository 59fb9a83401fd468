//! `identity.session_cookie`: the application's session cookie stays with the certificate
//! that received it.
//!
//! When a response of the application sets the cookie on a connection whose certificate
//! names an account, the binding (hash of the value → account, serial, lifetime) is written
//! to the state store before the response leaves, so every instance knows it. A cookie
//! certgate has not seen set is bound on its first protected request that is allowed
//! (first use wins, atomically in the store). On every request that carries the cookie:
//!
//! - bound to another account, or presented with a certificate that names none: refused,
//!   403 `session_mismatch` (logged without the value);
//! - bound to this account but dropped (its certificate revoked, or the account reset since
//!   it was bound), or presented without any certificate: the cookie is removed from the
//!   request, the application sees no session;
//! - store unreadable: 503 `store_unavailable` (fail closed).
//!
//! Bindings are cached in-process for `state.cache.ttl` (the known ones and the unknown
//! ones); only the SHA-256 of a value is ever kept or logged.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::core::cookie;
use crate::core::decision::Decision;
use crate::core::identity::ClientIdentity;
use crate::core::text;
use crate::state::SessionBinding;
use crate::state::cache::StateCache;

/// Who is on the connection a cookie arrived on (or is set on).
#[derive(Clone, Copy)]
pub(super) struct Holder<'a> {
    pub identity: Option<&'a ClientIdentity>,
    pub peer: std::net::SocketAddr,
}

/// The longest a binding lives, whatever the cookie says (RFC 6265bis caps cookie
/// lifetimes at 400 days).
const MAX_LIFETIME: i64 = 400 * 86_400;

pub(super) struct SessionGuard {
    name: String,
    /// Lifetime of a binding whose cookie has no `Max-Age`/`Expires`.
    default_ttl: i64,
    /// SHA-256 of a value → its binding (`None`: the store knows none).
    known: moka::sync::Cache<[u8; 32], Option<Arc<SessionBinding>>>,
}

/// What one request's cookie comes to.
enum Verdict {
    Forward,
    Strip,
}

impl SessionGuard {
    pub(super) fn new(cfg: &Config) -> Option<Self> {
        let name = cfg.identity.session_cookie.clone()?;
        let ttl = cfg.state.cache.ttl.max(Duration::from_millis(1));
        Some(SessionGuard {
            name,
            default_ttl: i64::try_from(cfg.identity.session_cookie_ttl.as_secs())
                .unwrap_or(i64::MAX)
                .max(1),
            known: moka::sync::Cache::builder()
                .max_capacity(cfg.state.cache.max_entries.max(1))
                .time_to_live(ttl)
                .build(),
        })
    }

    /// The request side: refuses, strips the cookie from `headers`, or lets it through.
    /// `allowed` is true on a protected route the gate allowed (where a cookie not yet
    /// bound is bound to this certificate's account).
    pub(super) async fn check(
        &self,
        conn: Holder<'_>,
        headers: &mut HeaderMap,
        allowed: bool,
        state: &StateCache,
    ) -> Result<(), Decision> {
        let mut digests: Vec<[u8; 32]> = Vec::new();
        for h in headers.get_all(header::COOKIE) {
            let h = h.as_bytes();
            if cookie::mentions(h, &self.name) {
                digests.extend(
                    cookie::values(h, &self.name).map(|v| <[u8; 32]>::from(Sha256::digest(v))),
                );
            }
        }
        if digests.is_empty() {
            return Ok(());
        }
        let mut strip = false;
        for digest in &digests {
            if let Verdict::Strip = self.judge(conn, digest, allowed, state).await? {
                strip = true;
            }
        }
        if strip {
            let kept: Vec<HeaderValue> = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|h| cookie::without(h.as_bytes(), &self.name))
                .filter_map(|v| HeaderValue::from_bytes(&v).ok())
                .collect();
            headers.remove(header::COOKIE);
            for v in kept {
                headers.append(header::COOKIE, v);
            }
        }
        Ok(())
    }

    async fn judge(
        &self,
        conn: Holder<'_>,
        digest: &[u8; 32],
        allowed: bool,
        state: &StateCache,
    ) -> Result<Verdict, Decision> {
        let id = conn.identity;
        let binding = match self.lookup(digest, state).await? {
            Some(b) => b,
            None => {
                let Some((id, account)) = id.and_then(|i| Some((i, i.account.as_deref()?))) else {
                    return Ok(Verdict::Forward);
                };
                if !allowed {
                    return Ok(Verdict::Forward);
                }
                // First use: bind it to this certificate, unless another instance did first.
                let now = crate::core::clock::now();
                let b = SessionBinding {
                    hash: text::hex(digest),
                    account: account.to_string(),
                    serial: id.serial.clone(),
                    bound_at: now,
                    expires_at: now.saturating_add(self.default_ttl),
                };
                match state.store().bind_session(b.clone(), false).await {
                    Ok(None) => {
                        self.known.insert(*digest, Some(Arc::new(b)));
                        return Ok(Verdict::Forward);
                    }
                    Ok(Some(existing)) => {
                        let existing = Arc::new(existing);
                        self.known.insert(*digest, Some(existing.clone()));
                        existing
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot bind the session cookie; refusing the request");
                        return Err(Decision::StoreUnavailable);
                    }
                }
            }
        };
        let Some(id) = id else {
            // A bound session without any certificate is not its holder's browser.
            return Ok(Verdict::Strip);
        };
        if id.account.as_deref() != Some(binding.account.as_str()) {
            tracing::warn!(
                target: "certgate::access",
                account = id.account.as_deref().unwrap_or("-"),
                serial = %id.serial,
                bound_account = %binding.account,
                peer = %conn.peer,
                "session cookie of another account's certificate; refused"
            );
            return Err(Decision::SessionMismatch);
        }
        let view = state
            .lookup_shared(&binding.serial, Some(&binding.account))
            .await
            .map_err(|_| Decision::StoreUnavailable)?;
        let reset = view
            .account
            .as_deref()
            .and_then(|a| a.reset_at)
            .is_some_and(|r| r >= binding.bound_at);
        if view.revocation.is_some() || reset {
            tracing::debug!(account = %binding.account, "session cookie of a revoked or reset binding; not forwarded");
            return Ok(Verdict::Strip);
        }
        Ok(Verdict::Forward)
    }

    async fn lookup(
        &self,
        digest: &[u8; 32],
        state: &StateCache,
    ) -> Result<Option<Arc<SessionBinding>>, Decision> {
        let now = crate::core::clock::now();
        if let Some(known) = self.known.get(digest) {
            match known {
                Some(b) if b.expires_at <= now => {}
                other => return Ok(other),
            }
        }
        match state.store().session(&text::hex(digest), now).await {
            Ok(b) => {
                let b = b.map(Arc::new);
                self.known.insert(*digest, b.clone());
                Ok(b)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session binding; refusing the request");
                Err(Decision::StoreUnavailable)
            }
        }
    }

    /// The response side: when the application sets the cookie on a connection whose
    /// certificate names an account, records the binding before the response is sent.
    /// `Err` when it cannot be recorded (the response must not go out).
    pub(super) async fn bind_response(
        &self,
        conn: Holder<'_>,
        headers: &HeaderMap,
        state: &StateCache,
    ) -> Result<(), Decision> {
        let Some(id) = conn.identity else {
            return Ok(());
        };
        let Some(account) = id.account.as_deref() else {
            return Ok(());
        };
        let now = crate::core::clock::now();
        for h in headers.get_all(header::SET_COOKIE) {
            let Some(set) = cookie::parse_set_cookie(h.as_bytes(), now) else {
                continue;
            };
            if set.name != self.name.as_bytes() || set.deletes(now) {
                continue;
            }
            let digest: [u8; 32] = Sha256::digest(set.value).into();
            let cap = now.saturating_add(MAX_LIFETIME);
            let b = SessionBinding {
                hash: text::hex(&digest),
                account: account.to_string(),
                serial: id.serial.clone(),
                bound_at: now,
                expires_at: set
                    .expires_at
                    .unwrap_or(now.saturating_add(self.default_ttl))
                    .min(cap),
            };
            if let Err(e) = state.store().bind_session(b.clone(), true).await {
                tracing::warn!(error = %e, "cannot record the session cookie's binding; the response is withheld");
                return Err(Decision::StoreUnavailable);
            }
            self.known.insert(digest, Some(Arc::new(b)));
        }
        Ok(())
    }
}
