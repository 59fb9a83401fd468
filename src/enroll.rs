//! certgate's own endpoints under `/.certgate/`: the enrollment CA certificate today; the
//! initialization page, PKCS#12 and CSR enrollment and the CRL with the enrollment issue.
//!
//! Neighbours: `proxy` routes every `/.certgate/…` request here (with the connection's
//! client address, for rate limiting), `ca` issues, `state` holds tickets and the registry.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pages;
use crate::state::cache::StateCache;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("enrollment CA: {0}")]
    Ca(String),
}

/// The `/.certgate/` endpoints. Built once per configuration.
pub struct Enrollment {
    ca_pem: Option<Bytes>,
    #[allow(dead_code)]
    cache: Arc<StateCache>,
    #[allow(dead_code)]
    metrics: Metrics,
}

impl Enrollment {
    pub fn new(
        cfg: &Config,
        cache: Arc<StateCache>,
        metrics: Metrics,
    ) -> Result<Self, EnrollError> {
        let ca_pem = cfg
            .enrollment
            .as_ref()
            .and_then(|e| e.ca_cert.certs.first())
            .map(|c| Bytes::from(pem_encode("CERTIFICATE", c.as_ref())));
        Ok(Enrollment {
            ca_pem,
            cache,
            metrics,
        })
    }

    /// Handles `/.certgate{path}` (`path` is normalised, e.g. `/ca.pem`). `peer` is the
    /// client's address. Never fails: every outcome is a response.
    pub async fn handle(
        &self,
        path: &str,
        _peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        match (req.method(), path, &self.ca_pem) {
            (&Method::GET | &Method::HEAD, "/ca.pem", Some(pem)) => {
                let mut r = Response::new(Full::new(pem.clone()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
            _ => pages::render(&pages::NOT_FOUND, req.headers()),
        }
    }
}

/// PEM text of one DER object, 64 columns.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}
