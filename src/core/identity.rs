//! The typed client identity: what certgate knows about the client of one connection,
//! parsed once from the verified leaf (`tls::identity::parse`) and carried to every request
//! of the connection as an `Arc<ClientIdentity>`.

use http::HeaderValue;

/// SAN URI that carries the certificate's generation (only on enrollment-CA certificates).
pub const GENERATION_URI_PREFIX: &str = "urn:certgate:generation:";

/// SAN URI of a renewed certificate naming the serial (lowercase hex) it replaces.
pub const RENEWS_URI_PREFIX: &str = "urn:certgate:renews:";

/// Where the account id of a client certificate comes from, tried in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSource {
    SanUri,
    SanEmail,
    SubjectCn,
}

/// Everything certgate knows about the client of one connection.
#[derive(Clone)]
pub struct ClientIdentity {
    /// `None` when no `identity.account_from` source matched (or the value is not a valid
    /// account id); such a certificate has no account state to check but is still subject
    /// to revocation.
    pub account: Option<String>,
    /// Lowercase hex of the serial's bytes, no leading sign byte.
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    /// RFC 4514 subject.
    pub subject: String,
    /// Raw DER of the issuer name (for matching configured CRLs).
    pub issuer_raw: Vec<u8>,
    pub san_uris: Vec<String>,
    pub san_emails: Vec<String>,
    pub san_dns: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `urn:certgate:generation:<n>`, only when the certificate was issued by the
    /// enrollment CA.
    pub generation: Option<u64>,
    pub issued_by_enrollment_ca: bool,
    /// Pre-rendered identity header values.
    pub headers: IdentityHeaders,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("account", &self.account)
            .field("serial", &self.serial)
            .field("fingerprint", &self.fingerprint)
            .field("subject", &self.subject)
            .field("generation", &self.generation)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// The serial this certificate renews, when the enrollment CA issued it as a renewal.
    pub fn renews(&self) -> Option<&str> {
        if !self.issued_by_enrollment_ca {
            return None;
        }
        self.san_uris
            .iter()
            .find_map(|u| u.strip_prefix(RENEWS_URI_PREFIX))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

/// Header values for the forwarded request; see DESIGN.md "Forwarding".
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    pub account: Option<HeaderValue>,
    pub serial: HeaderValue,
    pub fingerprint: HeaderValue,
    pub subject: HeaderValue,
    pub not_after: HeaderValue,
    /// RFC 9440 `Client-Cert`: `:base64(DER):`.
    pub client_cert: HeaderValue,
    /// Envoy-style `X-Forwarded-Client-Cert`.
    pub xfcc: HeaderValue,
}
