//! The per-request decision — the heart of certgate — as pure functions:
//! [`classify`] turns a request path into a [`Route`] (or refuses it), and [`judge`] turns
//! (identity, account state, now) into a [`Decision`]. No I/O; `proxy` fetches the state
//! and acts on the answer. Every branch is unit-tested below.

use std::borrow::Cow;

use crate::core::decision::Decision;
use crate::core::identity::ClientIdentity;
use crate::core::records::{AccountState, Revocation};

/// The reserved prefix of certgate's own endpoints.
pub const OWN_PREFIX: &str = "/.certgate";

/// Which kind of path a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/.certgate/...`: the rest of the normalised path after the prefix (e.g. `/enroll`).
    Own(Cow<'a, str>),
    Public,
    Protected,
}

/// Why a path was refused before any matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains a '..' segment")]
    DotDot,
    #[error("path contains an encoded '/' or '\\', or a backslash")]
    EncodedSeparator,
    #[error("path contains an invalid percent-encoding")]
    BadEncoding,
    #[error("path contains a control character")]
    ControlChar,
    /// A form that upstream servers resolve differently from each other (and from this
    /// classification): a dot segment with parameters (`..;`, `.;x`: Tomcat, Jetty and
    /// Spring read it as `..`), an escape that decodes to another escape (`%252e`: apps
    /// that decode twice), or a look-alike of `.`, `/` or `\` (fullwidth, one- and
    /// two-dot leaders, division slash: servers that fold Unicode).
    #[error(
        "path contains a segment upstream servers resolve differently (\"..;\", a double-encoded escape, or a look-alike dot or slash)"
    )]
    Ambiguous,
}

/// Characters some servers fold into `.`, `..`, `/` or `\` (NFKC and friends).
const LOOK_ALIKES: [char; 7] = [
    '\u{FF0E}', // fullwidth full stop
    '\u{2024}', // one dot leader
    '\u{2025}', // two dot leader
    '\u{FE52}', // small full stop
    '\u{FF0F}', // fullwidth solidus
    '\u{2215}', // division slash
    '\u{FF3C}', // fullwidth reverse solidus
];

/// `%` followed by two hex digits: after one decoding, a second escape.
fn has_escape(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Percent-decodes and dot-normalises `path` (without query). `.` segments and empty
/// segments are dropped; `..` segments, encoded `/` or `\`, a raw `\`, control characters
/// and malformed escapes are refused. Borrowed when the path is already normal (the
/// common case: no allocation).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    // One pass: anything that may need decoding or dot/slash normalisation takes the slow
    // path below ("/." also catches harmless names like "/.well-known": still correct).
    let needs_work = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            || b == b'\\'
            || b < 0x20
            || b == 0x7f
            || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'.')))
    });
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    // Decode.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEncoding);
            };
            let v = (hi * 16 + lo) as u8;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            decoded.push(v);
            i += 3;
        } else {
            if b == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathError::ControlChar);
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadEncoding)?;
    if has_escape(&decoded) || decoded.contains(LOOK_ALIKES) {
        return Err(PathError::Ambiguous);
    }
    let mut out = String::with_capacity(decoded.len());
    let trailing_slash = decoded.ends_with('/');
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(PathError::DotDot),
            s if matches!(s.split(';').next(), Some("." | "..")) => {
                return Err(PathError::Ambiguous);
            }
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether normalised `path` lies under `prefix` by whole segments. `prefix` is normalised
/// (leading `/`, no trailing `/` unless it is the root `/`).
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Classifies a request path (no query) against the reserved prefix and `public` routes.
pub fn classify<'a>(path: &'a str, public: &[String]) -> Result<Route<'a>, PathError> {
    let norm = normalize_path(path)?;
    if under_prefix(&norm, OWN_PREFIX) {
        let rest = match norm {
            Cow::Borrowed(p) => Cow::Borrowed(&p[OWN_PREFIX.len()..]),
            Cow::Owned(p) => Cow::Owned(p[OWN_PREFIX.len()..].to_string()),
        };
        return Ok(Route::Own(rest));
    }
    if public.iter().any(|p| under_prefix(&norm, p)) {
        return Ok(Route::Public);
    }
    Ok(Route::Protected)
}

/// The stored state of one request's certificate, as the gate needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateView<'a> {
    /// The serial is revoked in the state store.
    pub revoked: bool,
    /// The account record, when the certificate names an account that has one.
    pub account: Option<&'a AccountState>,
}

/// What the gate needs to decide one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertState {
    pub revocation: Option<Revocation>,
    pub account: Option<AccountState>,
}

impl CertState {
    /// The borrowed form the gate decides on.
    pub fn view(&self) -> StateView<'_> {
        StateView {
            revoked: self.revocation.is_some(),
            account: self.account.as_ref(),
        }
    }
}

/// Additional per-request facts that are not in the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// The serial is listed in a configured CRL of its issuer (checked per request because
    /// a resumed session skips the handshake's CRL check).
    pub crl_revoked: bool,
}

/// Decides a request for a protected path that presented `ident`.
///
/// Order (DESIGN.md): revoked → reset → expired → allowed. Fails closed: the caller maps a
/// store it cannot reach to [`Decision::StoreUnavailable`] and never calls this then.
pub fn judge(ident: &ClientIdentity, state: StateView<'_>, facts: Facts, now: i64) -> Decision {
    if facts.crl_revoked || state.revoked {
        return Decision::Revoked;
    }
    if let Some(acct) = state.account {
        let reset = if ident.issued_by_enrollment_ca {
            // An enrollment certificate without a generation URI cannot prove it is
            // current: treat it as generation 0, older than any account.
            ident.generation.unwrap_or(0) < acct.generation
        } else {
            acct.reset_at.is_some_and(|r| ident.not_before < r)
        };
        if reset {
            return Decision::Reset;
        }
    }
    if now > ident.not_after {
        return Decision::Expired;
    }
    Decision::Allowed
}

/// The state could not be decided (store down and no usable cache entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("state store unavailable and no usable cached entry")]
pub struct Unavailable;

/// The one decision for a protected path: no certificate, store unavailable, and what
/// [`judge`] says otherwise. `ident` is `None` without a client certificate; `state` is the
/// lookup of its serial and account (`None` when the caller did not look: no certificate).
pub fn decide(
    ident: Option<&ClientIdentity>,
    state: Option<Result<StateView<'_>, Unavailable>>,
    facts: Facts,
    now: i64,
) -> Decision {
    let Some(ident) = ident else {
        return Decision::NoCert;
    };
    match state {
        Some(Ok(s)) => judge(ident, s, facts, now),
        Some(Err(Unavailable)) | None => Decision::StoreUnavailable,
    }
}

/// Why a request's host is refused (400): RFC 9112 §3.2 and the ambiguities a proxy must
/// not pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an HTTP/1.1 request without a Host header")]
    Missing,
    #[error("more than one Host header")]
    Repeated,
    #[error("a Host header that is not visible ASCII")]
    Invalid,
    #[error("userinfo (user@) in the request target or Host")]
    UserInfo,
    #[error("the request target names another host than the Host header")]
    Conflict,
}

/// The one host of a request: the target's authority (absolute form, or h2's
/// `:authority`) or the `Host` header. `hosts` are the `Host` header values (`None` for one
/// that is not visible ASCII; at most two are looked at, so no list is built per request);
/// `requires_host` is true for HTTP/1.1.
pub fn request_host<'a>(
    requires_host: bool,
    authority: Option<&'a str>,
    hosts: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<Option<&'a str>, HostError> {
    let mut hosts = hosts.into_iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(one), None) => Some(one.ok_or(HostError::Invalid)?),
        (Some(_), Some(_)) => return Err(HostError::Repeated),
    };
    if authority.is_some_and(|a| a.contains('@')) || host.is_some_and(|h| h.contains('@')) {
        return Err(HostError::UserInfo);
    }
    if requires_host && host.is_none() {
        return Err(HostError::Missing);
    }
    match (authority, host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(HostError::Conflict),
        (a, h) => Ok(a.or(h)),
    }
}

/// `Host` (port ignored, case-insensitive) must equal the SNI when `server_names` is set.
pub fn host_matches_sni(host: Option<&str>, sni: Option<&str>) -> bool {
    let (Some(host), Some(sni)) = (host, sni) else {
        return false;
    };
    let host = strip_port(host);
    host.eq_ignore_ascii_case(sni.trim_end_matches('.'))
        || host
            .trim_end_matches('.')
            .eq_ignore_ascii_case(sni.trim_end_matches('.'))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::IdentityHeaders;
    use crate::core::records::RevocationReason;
    use http::HeaderValue;

    fn ident(
        enroll: bool,
        generation: Option<u64>,
        not_before: i64,
        not_after: i64,
    ) -> ClientIdentity {
        let hv = HeaderValue::from_static("x");
        ClientIdentity {
            account: Some("alice".into()),
            serial: "01".into(),
            fingerprint: "ff".into(),
            subject: "CN=alice".into(),
            issuer_raw: vec![],
            san_uris: vec![],
            san_emails: vec![],
            san_dns: vec![],
            not_before,
            not_after,
            generation,
            issued_by_enrollment_ca: enroll,
            headers: IdentityHeaders {
                account: Some(hv.clone()),
                serial: hv.clone(),
                fingerprint: hv.clone(),
                subject: hv.clone(),
                not_after: hv.clone(),
                client_cert: hv.clone(),
                xfcc: hv,
            },
        }
    }

    fn acct(generation: u64, reset_at: Option<i64>) -> AccountState {
        AccountState {
            account: "alice".into(),
            generation,
            two_factor: true,
            created_at: 0,
            reset_at,
        }
    }

    fn revoked() -> Revocation {
        Revocation {
            serial: "01".into(),
            reason: RevocationReason::KeyCompromise,
            revoked_at: 5,
            not_after: None,
        }
    }

    const NOW: i64 = 1_000;

    #[test]
    fn no_cert() {
        assert_eq!(decide(None, None, Facts::default(), NOW), Decision::NoCert);
    }

    #[test]
    fn store_unavailable_fails_closed() {
        let i = ident(false, None, 0, 2_000);
        assert_eq!(
            decide(Some(&i), Some(Err(Unavailable)), Facts::default(), NOW),
            Decision::StoreUnavailable
        );
        assert_eq!(
            decide(Some(&i), None, Facts::default(), NOW),
            Decision::StoreUnavailable
        );
    }

    #[test]
    fn allowed_without_records() {
        let i = ident(false, None, 0, 2_000);
        assert_eq!(
            judge(&i, CertState::default().view(), Facts::default(), NOW),
            Decision::Allowed
        );
    }

    #[test]
    fn revoked_by_store_and_by_crl() {
        let i = ident(false, None, 0, 2_000);
        let s = CertState {
            revocation: Some(revoked()),
            account: None,
        };
        assert_eq!(
            judge(&i, s.view(), Facts::default(), NOW),
            Decision::Revoked
        );
        let f = Facts { crl_revoked: true };
        assert_eq!(
            judge(&i, CertState::default().view(), f, NOW),
            Decision::Revoked
        );
    }

    #[test]
    fn revoked_wins_over_reset_and_expired() {
        let i = ident(true, Some(1), 0, 10);
        let s = CertState {
            revocation: Some(revoked()),
            account: Some(acct(2, Some(500))),
        };
        assert_eq!(
            judge(&i, s.view(), Facts::default(), NOW),
            Decision::Revoked
        );
    }

    #[test]
    fn reset_by_generation_for_enrollment_certs() {
        let old = ident(true, Some(1), 900, 2_000);
        let cur = ident(true, Some(2), 0, 2_000);
        let s = CertState {
            revocation: None,
            account: Some(acct(2, Some(950))),
        };
        assert_eq!(
            judge(&old, s.view(), Facts::default(), NOW),
            Decision::Reset
        );
        // Current generation passes even though its notBefore precedes reset_at.
        assert_eq!(
            judge(&cur, s.view(), Facts::default(), NOW),
            Decision::Allowed
        );
        // Missing generation on an enrollment certificate counts as 0.
        let none = ident(true, None, 990, 2_000);
        assert_eq!(
            judge(&none, s.view(), Facts::default(), NOW),
            Decision::Reset
        );
    }

    #[test]
    fn reset_by_not_before_for_foreign_certs() {
        // A foreign certificate claiming a future generation gets no credit for it.
        let before = ident(false, Some(99), 900, 2_000);
        let after = ident(false, None, 960, 2_000);
        let s = CertState {
            revocation: None,
            account: Some(acct(2, Some(950))),
        };
        assert_eq!(
            judge(&before, s.view(), Facts::default(), NOW),
            Decision::Reset
        );
        assert_eq!(
            judge(&after, s.view(), Facts::default(), NOW),
            Decision::Allowed
        );
        // Never reset: no reset_at, allowed.
        let s = CertState {
            revocation: None,
            account: Some(acct(1, None)),
        };
        assert_eq!(
            judge(&before, s.view(), Facts::default(), NOW),
            Decision::Allowed
        );
    }

    #[test]
    fn expired() {
        let i = ident(false, None, 0, NOW - 1);
        assert_eq!(
            judge(&i, CertState::default().view(), Facts::default(), NOW),
            Decision::Expired
        );
        let i = ident(false, None, 0, NOW);
        assert_eq!(
            judge(&i, CertState::default().view(), Facts::default(), NOW),
            Decision::Allowed
        );
    }

    #[test]
    fn normalisation() {
        assert!(matches!(normalize_path("/a/b"), Ok(Cow::Borrowed("/a/b"))));
        assert_eq!(normalize_path("/a/./b").unwrap(), "/a/b");
        assert_eq!(normalize_path("//a//b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/%73tatic/x").unwrap(), "/static/x");
        assert_eq!(normalize_path("/a/.").unwrap(), "/a");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/a/../b"), Err(PathError::DotDot));
        assert_eq!(normalize_path("/a/%2e%2e/b"), Err(PathError::DotDot));
        assert_eq!(normalize_path("/a/.."), Err(PathError::DotDot));
        assert_eq!(normalize_path("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a\\b"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%00"), Err(PathError::ControlChar));
        assert_eq!(normalize_path("/a%ff"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
    }

    /// Forms that upstreams resolve differently from each other are refused, whatever the
    /// route (the attacks of a public `/static` route reaching `/secret`).
    #[test]
    fn one_host_per_request() {
        let h = |v: &'static str| Some(v);
        assert_eq!(request_host(true, None, [h("a")]), Ok(Some("a")));
        assert_eq!(request_host(true, None, [None; 0]), Err(HostError::Missing));
        assert_eq!(request_host(false, None, [None; 0]), Ok(None), "HTTP/1.0");
        assert_eq!(
            request_host(false, Some("a"), [None; 0]),
            Ok(Some("a")),
            "h2"
        );
        assert_eq!(
            request_host(true, None, [h("a"), h("a")]),
            Err(HostError::Repeated)
        );
        assert_eq!(request_host(true, None, [None]), Err(HostError::Invalid));
        assert_eq!(
            request_host(true, Some("a@evil"), [h("evil")]),
            Err(HostError::UserInfo)
        );
        assert_eq!(
            request_host(true, None, [h("a@evil")]),
            Err(HostError::UserInfo)
        );
        assert_eq!(
            request_host(true, Some("evil"), [h("good")]),
            Err(HostError::Conflict)
        );
        assert_eq!(
            request_host(true, Some("Good:8443"), [h("good:8443")]),
            Ok(Some("Good:8443"))
        );
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        for path in [
            "/static/..;/secret",
            "/static/..%3b/secret",
            "/static/..%3B/secret",
            "/static/.;x/secret",
            "/static/..;jsessionid=1/secret",
            "/static/%252e%252e/secret",
            "/static/%252e%252e%252fsecret",
            "/static/%25%32%65",
            "/static/%ef%bc%8e%ef%bc%8e/secret",
            "/static/%e2%80%a5/secret",
            "/static/%e2%80%a4%e2%80%a4/secret",
            "/static/%ef%b9%92%ef%b9%92/secret",
            "/static%ef%bc%8fsecret",
            "/static%e2%88%95..%e2%88%95secret",
        ] {
            assert_eq!(normalize_path(path), Err(PathError::Ambiguous), "{path}");
            assert_eq!(
                classify(path, &["/static".to_string()]),
                Err(PathError::Ambiguous),
                "{path}"
            );
        }
        // Still fine: parameters on ordinary segments, a literal percent, dots in names.
        assert_eq!(normalize_path("/a;b/c").unwrap(), "/a;b/c");
        assert_eq!(normalize_path("/files/100%25").unwrap(), "/files/100%");
        assert_eq!(normalize_path("/a/..b/.c").unwrap(), "/a/..b/.c");
    }

    #[test]
    fn routes_match_whole_segments() {
        let public = vec!["/static".to_string(), "/login".to_string()];
        assert_eq!(classify("/static", &public), Ok(Route::Public));
        assert_eq!(classify("/static/x.css", &public), Ok(Route::Public));
        assert_eq!(classify("/staticx", &public), Ok(Route::Protected));
        assert_eq!(classify("/%73tatic/x", &public), Ok(Route::Public));
        assert_eq!(
            classify("/static/../admin", &public),
            Err(PathError::DotDot)
        );
        assert_eq!(
            classify("/static%2f..%2fadmin", &public),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(classify("/admin", &public), Ok(Route::Protected));
        assert_eq!(classify("/", &public), Ok(Route::Protected));
        assert_eq!(classify("/x", &["/".to_string()]), Ok(Route::Public));
    }

    #[test]
    fn own_prefix_wins_over_public() {
        let public = vec!["/".to_string()];
        assert_eq!(
            classify("/.certgate/enroll", &public),
            Ok(Route::Own(Cow::Borrowed("/enroll")))
        );
        assert_eq!(
            classify("/.certgate", &public),
            Ok(Route::Own(Cow::Borrowed("")))
        );
        assert_eq!(
            classify("/%2ecertgate/ca.pem", &public),
            Ok(Route::Own(Cow::Owned("/ca.pem".to_string())))
        );
        assert_eq!(classify("/.certgatex", &public), Ok(Route::Public));
    }

    #[test]
    fn host_vs_sni() {
        assert!(host_matches_sni(Some("example.com"), Some("example.com")));
        assert!(host_matches_sni(
            Some("EXAMPLE.com:8443"),
            Some("example.com")
        ));
        assert!(!host_matches_sni(Some("other.com"), Some("example.com")));
        assert!(!host_matches_sni(None, Some("example.com")));
        assert!(!host_matches_sni(Some("example.com"), None));
        assert!(host_matches_sni(Some("[::1]:8443"), Some("::1")));
    }

    #[test]
    fn statuses() {
        assert_eq!(Decision::Revoked.status(), 403);
        assert_eq!(Decision::StoreUnavailable.status(), 503);
        assert_eq!(Decision::Misdirected.status(), 421);
        assert_eq!(Decision::BadRequest.status(), 400);
    }
}
