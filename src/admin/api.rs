//! The admin API's contract, shared by the server (`admin`) and the CLI (`admin::client`):
//! one route table ([`Endpoint`]) and the typed request and response bodies. A route or a
//! field is named here once; both sides follow.
//!
//! Response structs are also read by the CLI from servers of other versions: every field
//! has a default, so a missing one never makes the CLI fail (it prints `-`).

use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// One admin route; ids are path segments (raw, still percent-encoded, when parsed from a
/// request; plain when a client builds a path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Healthz,
    Readyz,
    /// The public keys that verify `X-Client-Assertion` (no token needed).
    Jwks,
    Account(&'a str),
    EnableTwoFactor(&'a str),
    Reset(&'a str),
    Tickets(&'a str),
    Certificate(&'a str),
    Revoke(&'a str),
    /// This instance's open connections of an account.
    Connections(&'a str),
    /// Closes this instance's open connections of an account (or of one serial of it).
    CloseConnections(&'a str),
}

/// Characters escaped in a path segment: everything but RFC 3986 unreserved ones. The
/// server percent-decodes segments before validating them.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl<'a> Endpoint<'a> {
    /// The route of a request path.
    pub fn parse(path: &'a str) -> Option<Endpoint<'a>> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        Some(match segments.as_slice() {
            ["healthz"] => Endpoint::Healthz,
            ["readyz"] => Endpoint::Readyz,
            ["jwks.json"] => Endpoint::Jwks,
            ["v1", "accounts", id] => Endpoint::Account(id),
            ["v1", "accounts", id, "two-factor"] => Endpoint::EnableTwoFactor(id),
            ["v1", "accounts", id, "reset"] => Endpoint::Reset(id),
            ["v1", "accounts", id, "tickets"] => Endpoint::Tickets(id),
            ["v1", "accounts", id, "connections"] => Endpoint::Connections(id),
            ["v1", "accounts", id, "connections", "close"] => Endpoint::CloseConnections(id),
            ["v1", "certificates", serial] => Endpoint::Certificate(serial),
            ["v1", "certificates", serial, "revoke"] => Endpoint::Revoke(serial),
            _ => return None,
        })
    }

    /// The request path, with the id percent-encoded.
    pub fn path(&self) -> String {
        let seg = |s: &str| match s {
            // Dot segments would be path steps to anything that normalises URLs.
            "." => "%2E".to_string(),
            ".." => "%2E%2E".to_string(),
            _ => utf8_percent_encode(s, SEGMENT).to_string(),
        };
        match self {
            Endpoint::Healthz => "/healthz".into(),
            Endpoint::Readyz => "/readyz".into(),
            Endpoint::Jwks => "/jwks.json".into(),
            Endpoint::Account(id) => format!("/v1/accounts/{}", seg(id)),
            Endpoint::EnableTwoFactor(id) => format!("/v1/accounts/{}/two-factor", seg(id)),
            Endpoint::Reset(id) => format!("/v1/accounts/{}/reset", seg(id)),
            Endpoint::Tickets(id) => format!("/v1/accounts/{}/tickets", seg(id)),
            Endpoint::Connections(id) => format!("/v1/accounts/{}/connections", seg(id)),
            Endpoint::CloseConnections(id) => {
                format!("/v1/accounts/{}/connections/close", seg(id))
            }
            Endpoint::Certificate(s) => format!("/v1/certificates/{}", seg(s)),
            Endpoint::Revoke(s) => format!("/v1/certificates/{}/revoke", seg(s)),
        }
    }

    /// The `route` label of `certgate_admin_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Healthz => "/healthz",
            Endpoint::Readyz => "/readyz",
            Endpoint::Jwks => "/jwks.json",
            Endpoint::Account(_) => "/v1/accounts/{id}",
            Endpoint::EnableTwoFactor(_) => "/v1/accounts/{id}/two-factor",
            Endpoint::Reset(_) => "/v1/accounts/{id}/reset",
            Endpoint::Tickets(_) => "/v1/accounts/{id}/tickets",
            Endpoint::Connections(_) => "/v1/accounts/{id}/connections",
            Endpoint::CloseConnections(_) => "/v1/accounts/{id}/connections/close",
            Endpoint::Certificate(_) => "/v1/certificates/{serial}",
            Endpoint::Revoke(_) => "/v1/certificates/{serial}/revoke",
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Endpoint::Healthz
            | Endpoint::Readyz
            | Endpoint::Jwks
            | Endpoint::Account(_)
            | Endpoint::Connections(_)
            | Endpoint::Certificate(_) => Method::GET,
            _ => Method::POST,
        }
    }
}

/// Body of the account routes: nothing, or an empty object.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// Body of `POST /v1/certificates/{serial}/revoke` (optional; the reason defaults to
/// `unspecified`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// An RFC 5280 reason name, e.g. `keyCompromise`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An account record. Times are RFC 3339 UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Account {
    pub account: String,
    pub generation: u64,
    pub two_factor: bool,
    pub created_at: String,
    pub reset_at: Option<String>,
}

/// Answer of the account changes (two-factor, reset, tickets): the record and either a
/// ticket with its link or a note saying why none was issued.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountChange {
    #[serde(flatten)]
    pub account: Account,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enroll_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One certificate in an account's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertificateSummary {
    pub serial: String,
    pub generation: u64,
    pub fingerprint: String,
    pub not_after: String,
    pub revoked: bool,
}

/// Answer of `GET /v1/accounts/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountStatus {
    #[serde(flatten)]
    pub account: Account,
    pub certificates: Vec<CertificateSummary>,
}

/// Answer of `POST /v1/certificates/{serial}/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Revoked {
    pub serial: String,
    /// `None` when the certificate is not in the registry.
    pub account: Option<String>,
    pub revoked: bool,
    pub reason: String,
    pub revoked_at: String,
}

/// Answer of `GET /v1/certificates/{serial}` (`None` where unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertificateStatus {
    pub serial: String,
    pub account: Option<String>,
    pub generation: Option<u64>,
    pub fingerprint: Option<String>,
    pub not_after: Option<String>,
    pub issued_at: Option<String>,
    pub revoked: bool,
    pub reason: Option<String>,
    pub revoked_at: Option<String>,
}

/// Body of `POST /v1/accounts/{id}/connections/close` (optional): only the connections of
/// this certificate serial.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseConnectionsRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// One open connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub peer: String,
    pub serial: String,
    /// `http/1.1`, `h2` or `upgraded` (a WebSocket or other tunnel after a 101).
    pub protocol: String,
    pub opened_at: String,
    pub requests: u64,
}

/// Answer of the connection routes: this instance's open connections of the account
/// (after `close`: the ones it closed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connections {
    /// Which instance answered (host name and process id): each instance knows only its
    /// own connections.
    pub instance: String,
    pub account: String,
    pub connections: Vec<Connection>,
    /// How many were closed (the close route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<usize>,
}

/// Every error answer: `{"error": "<code>", "message": "…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_parses_back_from_its_path() {
        for e in [
            Endpoint::Healthz,
            Endpoint::Readyz,
            Endpoint::Account("alice"),
            Endpoint::EnableTwoFactor("alice"),
            Endpoint::Reset("alice"),
            Endpoint::Tickets("alice"),
            Endpoint::Certificate("abcd"),
            Endpoint::Revoke("abcd"),
            Endpoint::Connections("alice"),
            Endpoint::CloseConnections("alice"),
        ] {
            let path = e.path();
            assert_eq!(Endpoint::parse(&path), Some(e), "{path}");
            assert!(e.label().starts_with('/'));
        }
        assert_eq!(Endpoint::parse("/v1/accounts"), None);
        assert_eq!(Endpoint::parse("v1/accounts/a"), None);
    }

    #[test]
    fn missing_fields_read_as_defaults() {
        let v: AccountChange = serde_json::from_str(r#"{"account":"a"}"#).unwrap();
        assert_eq!(v.account.account, "a");
        assert_eq!(v.ticket, None);
        let v: AccountStatus = serde_json::from_str(r#"{"generation":3}"#).unwrap();
        assert_eq!((v.account.generation, v.certificates.len()), (3, 0));
    }
}
