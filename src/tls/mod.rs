//! TLS termination: builds the rustls `ServerConfig` (client-certificate verifier over the
//! trusted CAs, the enrollment CA and the configured CRLs) and runs the handshake of one
//! accepted TCP connection, yielding the stream and the client's typed identity.
//!
//! Neighbours: `config` supplies validated PEM material, `identity` parses the leaf once per
//! connection, `proxy` decides every request of the connection, `app` owns the accept loop.
//!
//! The verifier is webpki's, wrapped by [`crate::tls::verifier::RememberingVerifier`] so that a
//! chain accepted once is not validated again on every full handshake of the same client.
//!
//! Session resumption stays on (TLS 1.3 tickets from a rotating ticketer, TLS 1.2 session
//! ids): it is most of the handshake speed. A resumed session skips the verifier and the
//! CRL check, which would delay a revocation by the session lifetime — that is safe here
//! only because `proxy` decides every request again against the state store and the CRL
//! index ([`CrlIndex`]). A reload of CAs or CRLs builds a new ticketer, so tickets issued
//! under the old trust material stop resuming.

pub mod identity;
pub mod verifier;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::version::{TLS12, TLS13};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ClientAuthMode, Config, TlsMinVersion};
use crate::core::identity::ClientIdentity;
use crate::metrics::{HandshakeLabels, HandshakeResult, Metrics, Resumed};
use identity::IdentityOptions;
use verifier::RememberingVerifier;

/// Sessions kept for TLS 1.2 resumption by session id (TLS 1.3 uses stateless tickets).
const SESSION_CACHE_SIZE: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("a trusted CA certificate could not be used as a root: {0}")]
    BadRoot(String),
    #[error("server certificate or key rejected by rustls: {0}")]
    ServerCert(String),
    #[error("session ticketer: {0}")]
    Ticketer(String),
}

/// Revoked serials from the configured CRLs, for the per-request check (a resumed session
/// skipped the handshake's check). Keyed by serial, then issuer name DER.
#[derive(Debug, Default)]
pub struct CrlIndex {
    by_serial: HashMap<String, Vec<Vec<u8>>>,
}

impl CrlIndex {
    pub fn from_config(cfg: &Config) -> Self {
        let mut by_serial: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for crl in &cfg.client_auth.crls {
            for (issuer, serial) in &crl.revoked {
                by_serial
                    .entry(serial.clone())
                    .or_default()
                    .push(issuer.clone());
            }
        }
        CrlIndex { by_serial }
    }

    /// Whether the certificate `(issuer, serial)` is listed. Allocation-free.
    pub fn contains(&self, issuer_raw: &[u8], serial: &str) -> bool {
        self.by_serial
            .get(serial)
            .is_some_and(|issuers| issuers.iter().any(|i| i.as_slice() == issuer_raw))
    }

    pub fn is_empty(&self) -> bool {
        self.by_serial.is_empty()
    }
}

/// Everything the handshake needs, built once per (re)load of the configuration.
pub struct TlsMaterial {
    pub server_config: Arc<ServerConfig>,
    pub identity: IdentityOptions,
    pub crls: CrlIndex,
    /// Lower-case server names; empty = any SNI (or none) is accepted.
    pub server_names: Vec<String>,
    pub handshake_timeout: Duration,
    /// Parsed identities by SHA-256 of the leaf: a returning client (a resumed session, a
    /// new connection of the same browser) skips the parse and the enrollment-CA signature
    /// check. Lives with the material, so a reload (new CAs, new identity options) starts
    /// empty.
    identities: moka::sync::Cache<[u8; 32], Arc<ClientIdentity>>,
}

/// Identities kept per configuration.
const IDENTITY_CACHE_SIZE: u64 = 10_000;
/// How long a parsed identity is reused.
const IDENTITY_CACHE_TTL: Duration = Duration::from_secs(600);

impl TlsMaterial {
    pub fn from_config(cfg: &Config) -> Result<Self, TlsError> {
        Ok(TlsMaterial {
            server_config: build_server_config(cfg)?,
            identity: identity_options(cfg),
            crls: CrlIndex::from_config(cfg),
            server_names: cfg.server_names.clone(),
            handshake_timeout: cfg.limits.handshake_timeout,
            identities: moka::sync::Cache::builder()
                .max_capacity(IDENTITY_CACHE_SIZE)
                .time_to_live(IDENTITY_CACHE_TTL)
                .build(),
        })
    }

    /// The identity of a verified leaf, parsed once per distinct certificate.
    pub fn identity(&self, leaf: &[u8]) -> Result<Arc<ClientIdentity>, identity::IdentityError> {
        use sha2::{Digest, Sha256};
        let key: [u8; 32] = Sha256::digest(leaf).into();
        if let Some(id) = self.identities.get(&key) {
            return Ok(id);
        }
        let id = Arc::new(identity::parse_digested(leaf, &key, &self.identity)?);
        self.identities.insert(key, id.clone());
        Ok(id)
    }
}

/// The TLS side of an outbound HTTP client (the upstream, the trace collector): the
/// system's roots for an `https` URL; for plain `http` none, so start-up does not depend on
/// the system trust store for a TLS side that is never used.
pub fn client_tls(
    https: bool,
) -> std::io::Result<hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>>
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    if https {
        return builder.with_provider_and_native_roots(provider);
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(builder.with_tls_config(tls))
}

pub fn identity_options(cfg: &Config) -> IdentityOptions {
    IdentityOptions {
        account_from: cfg.identity.account_from.clone(),
        uri_prefix: cfg.identity.uri_prefix.clone(),
        enrollment_ca: cfg
            .enrollment
            .as_ref()
            .and_then(|e| e.ca_cert.certs.first())
            .map(|c| c.as_ref().to_vec()),
    }
}

/// Builds the rustls server configuration from validated config.
pub fn build_server_config(cfg: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = RootCertStore::empty();
    let mut add_roots = |certs: &[rustls_pki_types::CertificateDer<'static>]| {
        for c in certs {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::BadRoot(e.to_string()))?;
        }
        Ok::<_, TlsError>(())
    };
    for ca in &cfg.client_auth.trusted_cas {
        add_roots(&ca.certs)?;
    }
    if let Some(e) = &cfg.enrollment {
        // The enrollment CA is trusted automatically; only its own certificate, not a chain.
        add_roots(&e.ca_cert.certs[..1.min(e.ca_cert.certs.len())])?;
    }

    let crls: Vec<_> = cfg.client_auth.crls.iter().map(|c| c.der.clone()).collect();
    let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        // A CA without a CRL (e.g. the enrollment CA, whose revocations live in the state
        // store) must not be refused for lacking one; an expired CRL fails closed.
        vb = vb
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .enforce_revocation_expiration();
    }
    if cfg.client_auth.mode == ClientAuthMode::Optional {
        vb = vb.allow_unauthenticated();
    }
    let verifier = vb.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut verifier = RememberingVerifier::new(verifier, cfg.client_auth.crl_deadline());
    if let Some(ca) = cfg
        .enrollment
        .as_ref()
        .and_then(|e| e.ca_cert.certs.first())
        && let Ok((_, cert)) = x509_parser::parse_x509_certificate(ca.as_ref())
    {
        verifier = verifier.with_expired_page_issuer(cert.subject().as_raw().to_vec());
    }
    let verifier = Arc::new(verifier);

    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.tls.min_version {
        TlsMinVersion::Tls12 => &[&TLS13, &TLS12],
        TlsMinVersion::Tls13 => &[&TLS13],
    };
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::ServerCert(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cfg.tls.cert.certs.clone(), cfg.tls.key.key.clone_key())
        .map_err(|e| TlsError::ServerCert(e.to_string()))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if cfg.tls.session_resumption {
        sc.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| TlsError::Ticketer(e.to_string()))?;
        sc.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    } else {
        sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        sc.send_tls13_tickets = 0;
    }
    Ok(Arc::new(sc))
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("SNI {0:?} is not among server_names")]
    UnrecognizedName(Option<String>),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("client certificate could not be parsed: {0}")]
    Identity(identity::IdentityError),
}

/// A completed handshake.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    pub identity: Option<Arc<ClientIdentity>>,
    pub sni: Option<String>,
    /// The negotiated ALPN protocol is `h2`.
    pub h2: bool,
    pub resumed: bool,
    /// `TLSv1.3` or `TLSv1.2`.
    pub tls_version: &'static str,
}

/// The TLS alert record `fatal unrecognized_name` (RFC 6066), sent before dropping a
/// connection whose SNI is not served.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Runs the TLS handshake on `tcp` within the material's handshake timeout.
pub async fn accept(
    tcp: TcpStream,
    material: &TlsMaterial,
    metrics: &Metrics,
) -> Result<Accepted, HandshakeError> {
    let deadline = tokio::time::Instant::now() + material.handshake_timeout;
    let res = tokio::time::timeout_at(deadline, handshake(tcp, material)).await;
    let res = match res {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    };
    let (result, resumed) = match &res {
        Ok(a) => (HandshakeResult::ok, a.resumed),
        Err(HandshakeError::Timeout) => (HandshakeResult::timeout, false),
        Err(_) => (HandshakeResult::failed, false),
    };
    let resumed = if resumed { Resumed::yes } else { Resumed::no };
    metrics
        .tls_handshakes
        .get_or_create(&HandshakeLabels { result, resumed })
        .inc();
    if let Ok(a) = &res
        && let (Some(id), false) = (&a.identity, a.resumed)
    {
        {
            let remaining = id.not_after - crate::core::clock::now();
            metrics
                .client_cert_not_after
                .observe(remaining.max(0) as f64);
        }
    }
    res
}

async fn handshake(tcp: TcpStream, material: &TlsMaterial) -> Result<Accepted, HandshakeError> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(HandshakeError::Tls)?;
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.to_ascii_lowercase());
    if !material.server_names.is_empty()
        && !sni
            .as_deref()
            .is_some_and(|s| material.server_names.iter().any(|n| n == s))
    {
        let mut io = start.io;
        let _ = io.write_all(&ALERT_UNRECOGNIZED_NAME).await;
        let _ = io.shutdown().await;
        return Err(HandshakeError::UnrecognizedName(sni));
    }
    let stream = start
        .into_stream(material.server_config.clone())
        .await
        .map_err(HandshakeError::Tls)?;
    let (_, conn) = stream.get_ref();
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let tls_version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "-",
    };
    let identity = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => Some(
            material
                .identity(leaf.as_ref())
                .map_err(HandshakeError::Identity)?,
        ),
        None => None,
    };
    Ok(Accepted {
        stream,
        identity,
        sni,
        h2,
        resumed,
        tls_version,
    })
}
