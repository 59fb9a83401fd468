//! The access log and the request id.
//!
//! One flat line per request (target `certgate::access`), written when the response body
//! has gone to the client (or the client went away), so it carries the bytes sent and
//! the whole duration, as nginx's `$request_time` does. Field names are stable and listed
//! in the README; durations are integers of microseconds. Refused requests are always
//! logged; every request with `log.access: true`.
//!
//! The request id (`X-Request-Id`) is made here: a per-process random prefix and a
//! counter, so it is unique without a random draw per request. A client's own value is
//! kept only with `headers.request_id: accept` (and only when it is short and plain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use crate::config::RequestIdMode;
use crate::core::decision::Decision;
use crate::core::identity::ClientIdentity;
use crate::logging;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client request id kept with `headers.request_id: accept`.
const MAX_CLIENT_ID: usize = 128;
/// Longest user agent written to the log.
const MAX_USER_AGENT: usize = 256;

/// Makes request ids.
pub struct RequestIds {
    mode: RequestIdMode,
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new(mode: RequestIdMode) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys are drawn from the OS once per process: a random prefix.
        let prefix = std::hash::RandomState::new().build_hasher().finish();
        RequestIds {
            mode,
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// The request's id, set in `headers` for the application (`None` with
    /// `headers.request_id: off`, and then the client's header is dropped too).
    pub fn assign(&self, headers: &mut HeaderMap) -> Option<HeaderValue> {
        match self.mode {
            RequestIdMode::Off => {
                headers.remove(&X_REQUEST_ID);
                None
            }
            RequestIdMode::Accept => {
                let mut own = headers.get_all(&X_REQUEST_ID).iter();
                if let (Some(v), None) = (own.next(), own.next())
                    && is_plain_id(v.as_bytes())
                {
                    return Some(v.clone());
                }
                Some(self.generate_into(headers))
            }
            RequestIdMode::Generate => Some(self.generate_into(headers)),
        }
    }

    fn generate_into(&self, headers: &mut HeaderMap) -> HeaderValue {
        let v = self.generate();
        headers.insert(X_REQUEST_ID.clone(), v.clone());
        v
    }

    fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex16(self.prefix, &mut buf[..16]);
        hex16(n, &mut buf[16..]);
        HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
    }
}

fn hex16(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// A client request id worth keeping: 1 to 128 of `A-Z a-z 0-9 - _ . : / + =`.
fn is_plain_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_CLIENT_ID
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

/// What the upstream answered, left in the response's extensions by the proxy.
#[derive(Clone)]
pub struct UpstreamInfo {
    /// `None` when it gave no answer (timeout, refused connection).
    pub status: Option<u16>,
    pub micros: u64,
    /// The request body as read from the client.
    pub body: Arc<BodyStats>,
}

/// A forwarded request body: whether reading it failed, and how many bytes were read.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub failed: std::sync::atomic::AtomicBool,
    pub bytes: AtomicU64,
}

/// The start of a request, taken before it is routed: cheap clones only (the URI and
/// header values are reference-counted), so requests that are not logged pay little.
pub struct Start {
    pub at: Instant,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The `Host` header; an HTTP/2 `:authority` (in `uri`) wins when the line is written.
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
}

impl Start {
    pub fn of<B>(req: &http::Request<B>, request_id: Option<HeaderValue>) -> Self {
        let h = req.headers();
        Start {
            at: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: h.get(http::header::HOST).cloned(),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            request_id,
        }
    }
}

/// The connection a request came on, as the log names it.
pub struct Via<'a> {
    pub peer: SocketAddr,
    pub sni: Option<&'a str>,
    pub tls_version: &'static str,
    /// The client certificate's identity (its account and serial are logged); shared,
    /// not copied.
    pub identity: Option<&'a Arc<ClientIdentity>>,
}

/// One request's line, written by [`Record::finish`] when its response body is done.
#[derive(Clone)]
pub struct Record {
    start: Arc<Start>,
    peer: SocketAddr,
    sni: Option<Box<str>>,
    tls_version: &'static str,
    identity: Option<Arc<ClientIdentity>>,
    decision: Decision,
    status: u16,
    upstream: Option<UpstreamInfo>,
}

impl Record {
    pub fn new(
        start: Start,
        via: Via<'_>,
        decision: Decision,
        status: u16,
        upstream: Option<UpstreamInfo>,
    ) -> Self {
        Record {
            start: Arc::new(start),
            peer: via.peer,
            sni: via.sni.map(Into::into),
            tls_version: via.tls_version,
            identity: via.identity.cloned(),
            decision,
            status,
            upstream,
        }
    }

    /// Writes the line: `bytes_out` response body bytes went out, `complete` when the
    /// body reached its end (false: the client went away, or the connection was cut).
    pub fn finish(&self, bytes_out: u64, complete: bool) {
        if !tracing::enabled!(target: "certgate::access", tracing::Level::INFO) {
            return;
        }
        let s = &self.start;
        let up = self.upstream.as_ref();
        let id = self.identity.as_deref();
        let user_agent = s.user_agent.as_ref().map(|v| {
            let mut b = &v.as_bytes()[..v.len().min(MAX_USER_AGENT)];
            // A cut in the middle of a character drops that character's first bytes.
            if b.len() < v.len()
                && let Err(e) = std::str::from_utf8(b)
                && e.error_len().is_none()
            {
                b = &b[..e.valid_up_to()];
            }
            String::from_utf8_lossy(b)
        });
        let host = match s.uri.authority() {
            Some(a) => Some(std::borrow::Cow::Borrowed(a.as_str())),
            None => s
                .host
                .as_ref()
                .map(|h| String::from_utf8_lossy(h.as_bytes())),
        };
        // Made here as hex digits, or a client's kept only when plain (`is_plain_id`).
        let request_id = s.request_id.as_ref().and_then(|v| v.to_str().ok());
        logging::AccessLine::info("request")
            .str("request_id", request_id)
            .str("method", Some(s.method.as_str()))
            .str("path", Some(s.uri.path()))
            .str("host", host.as_deref())
            .str("sni", self.sni.as_deref())
            .str("tls_version", Some(self.tls_version))
            .str("protocol", Some(protocol(s.version)))
            .str("user_agent", user_agent.as_deref())
            .addr("peer", self.peer)
            .str("decision", Some(self.decision.as_str()))
            .num("status", Some(u64::from(self.status)))
            .str("account", id.and_then(|i| i.account.as_deref()))
            .str("serial", id.map(|i| i.serial.as_str()))
            .num(
                "bytes_in",
                Some(up.map_or(0, |u| u.body.bytes.load(Ordering::Relaxed))),
            )
            .num("bytes_out", Some(bytes_out))
            .num("upstream_status", up.and_then(|u| u.status).map(u64::from))
            .num("upstream_us", up.map(|u| u.micros))
            .num("duration_us", Some(s.at.elapsed().as_micros() as u64))
            .bool("complete", complete)
            .write();
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A record waiting in the response's extensions for the body to finish.
#[derive(Clone)]
pub struct Pending(pub Box<Record>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_hex_and_replace_the_clients() {
        let ids = RequestIds::new(RequestIdMode::Generate);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("spoofed"));
        let a = ids.assign(&mut h).unwrap();
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        assert_eq!(h[&X_REQUEST_ID], a);
        let b = ids.assign(&mut HeaderMap::new()).unwrap();
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert_eq!(v.len(), 32);
            assert!(v.as_bytes().iter().all(u8::is_ascii_hexdigit), "{v:?}");
        }
    }

    #[test]
    fn accept_keeps_one_plain_client_id_only() {
        let ids = RequestIds::new(RequestIdMode::Accept);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("abc-123:x"));
        assert_eq!(ids.assign(&mut h).unwrap(), "abc-123:x");
        for bad in ["has space", "", "a\"b", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID.clone(), HeaderValue::from_str(bad).unwrap());
            let got = ids.assign(&mut h).unwrap();
            assert_ne!(got, bad);
            assert_eq!(got.len(), 32);
            assert_eq!(h[&X_REQUEST_ID], got);
        }
        // Two values: neither is trusted.
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID.clone(), HeaderValue::from_static("a"));
        h.append(X_REQUEST_ID.clone(), HeaderValue::from_static("b"));
        assert_eq!(ids.assign(&mut h).unwrap().len(), 32);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn off_sends_none_and_drops_the_clients() {
        let ids = RequestIds::new(RequestIdMode::Off);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("mine"));
        assert!(ids.assign(&mut h).is_none());
        assert!(h.get(&X_REQUEST_ID).is_none());
    }
}
