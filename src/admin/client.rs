//! The client side of `certgate admin enable|reset|ticket|revoke|status`.
//!
//! The admin listener (served by `admin`) speaks plain HTTP/1.1 and binds to loopback by
//! default, so this client speaks plain HTTP only and refuses `https://` URLs with a clear
//! message. `cli` parses the arguments, reads the token with [`read_token_file`], calls
//! [`run`] (or one of the per-command helpers) and prints either the JSON (`--json`) or
//! [`render`]'s text.
//!
//! Errors are [`ClientError`]s whose `Display` is meant for the operator: a refused
//! connection names the URL and suggests the gateway is not running, a 401 points at
//! `admin.token_file`, and an API error repeats the server's message and code.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::api::{
    AccountChange, AccountStatus, CertificateStatus, CloseConnectionsRequest, Endpoint, ErrorBody,
    RevokeRequest, Revoked,
};
pub use super::render::render;

/// Time allowed to open the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read (admin answers are small).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid admin URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "admin URL {0} uses https, but the admin listener speaks plain http (it binds to \
         loopback by default); use http://host:port"
    )]
    HttpsUnsupported(String),
    #[error(
        "cannot connect to the admin API at {url}: {detail}. Is the gateway running, and is \
         admin.listen this address?"
    )]
    Connect { url: String, detail: String },
    #[error("the admin API at {url} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("admin token rejected (check admin.token_file)")]
    Unauthorized,
    #[error("admin request to {url} failed: {detail}")]
    Http { url: String, detail: String },
    #[error("the admin API answered {status} with a body that is not JSON")]
    BadResponse { status: StatusCode },
    /// The server refused the request; `message` is its explanation.
    #[error("{message} ({status}, {code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("cannot use the admin token file {path}: {detail}")]
    TokenFile { path: String, detail: String },
}

/// One `certgate admin …` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `admin enable <account>`: turn on two-factor and get an enrollment link.
    Enable { account: String },
    /// `admin reset <account>`: new generation (older certificates refused), new link.
    Reset { account: String },
    /// `admin ticket <account>`: a new enrollment link for the current generation.
    Ticket { account: String },
    /// `admin revoke <serial> [--reason R]`: RFC 5280 reason name, default `unspecified`.
    Revoke {
        serial: String,
        reason: Option<String>,
    },
    /// `admin status <account>`: the account and its certificates.
    Status { account: String },
    /// `admin status --serial <serial>`: one certificate and its revocation.
    CertificateStatus { serial: String },
    /// `admin connections <account>`: this instance's open connections of the account.
    Connections { account: String },
    /// `admin connections <account> --close [--serial S]`: close them.
    CloseConnections {
        account: String,
        serial: Option<String>,
    },
}

impl AdminCommand {
    pub fn method(&self) -> Method {
        self.endpoint().method()
    }

    /// The route this command calls (the one route table, shared with the server).
    pub fn endpoint(&self) -> Endpoint<'_> {
        match self {
            AdminCommand::Enable { account } => Endpoint::EnableTwoFactor(account),
            AdminCommand::Reset { account } => Endpoint::Reset(account),
            AdminCommand::Ticket { account } => Endpoint::Tickets(account),
            AdminCommand::Revoke { serial, .. } => Endpoint::Revoke(serial),
            AdminCommand::Status { account } => Endpoint::Account(account),
            AdminCommand::CertificateStatus { serial } => Endpoint::Certificate(serial),
            AdminCommand::Connections { account } => Endpoint::Connections(account),
            AdminCommand::CloseConnections { account, .. } => Endpoint::CloseConnections(account),
        }
    }

    /// The request path, with the id percent-encoded.
    pub fn path(&self) -> String {
        self.endpoint().path()
    }

    pub fn body(&self) -> Option<Value> {
        match self {
            AdminCommand::Revoke {
                reason: Some(r), ..
            } => serde_json::to_value(RevokeRequest {
                reason: Some(r.clone()),
            })
            .ok(),
            AdminCommand::CloseConnections {
                serial: Some(s), ..
            } => serde_json::to_value(CloseConnectionsRequest {
                serial: Some(s.clone()),
            })
            .ok(),
            _ => None,
        }
    }
}

/// The admin base URL for a configured `admin.listen` address: an unspecified address
/// (`0.0.0.0`, `::`) is reached through loopback.
pub fn url_from_listen(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Reads the admin token (trimmed); an empty file is an error, as the server refuses it.
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let err = |detail: String| ClientError::TokenFile {
        path: path.display().to_string(),
        detail,
    };
    let text =
        crate::config::read::regular_text(path, 64 * 1024).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(token.to_string())
}

/// Joins the base URL (`http://host:port`, optionally with a path prefix; a bare
/// `host:port` means http) and an API path.
fn request_uri(base: &str, path: &str) -> Result<Uri, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = base.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(ClientError::HttpsUnsupported(base.to_string())),
        _ => return Err(invalid("only http:// URLs are supported")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if uri.query().is_some() {
        return Err(invalid("a query is not allowed in the base URL"));
    }
    let prefix = uri.path().trim_end_matches('/');
    format!("http://{authority}{prefix}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))
}

/// Sends one request to the admin API at `url` and returns the status and the JSON body.
///
/// Any answer with a JSON body is `Ok`, error statuses included (the body is then
/// `{"error", "message"}`), except 401, which is [`ClientError::Unauthorized`]. Transport
/// problems are errors: [`ClientError::Connect`] names the URL.
pub async fn call(
    url: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), ClientError> {
    let uri = request_uri(url, path)?;
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("certgate/", env!("CARGO_PKG_VERSION")));
    // The token's bytes go only into this header; a token that is not a valid header
    // value could never match, so say so without echoing it.
    let auth =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::TokenFile {
            path: "(token)".into(),
            detail: "the token contains characters not allowed in a header".into(),
        })?;
    builder = builder.header(AUTHORIZATION, auth);
    let payload = match body {
        Some(v) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = builder
        .body(Full::new(payload))
        .map_err(|e| ClientError::Http {
            url: url.to_string(),
            detail: e.to_string(),
        })?;

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);

    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            let detail = crate::core::text::error_chain(&e);
            if e.is_connect() {
                ClientError::Connect {
                    url: url.to_string(),
                    detail,
                }
            } else {
                ClientError::Http {
                    url: url.to_string(),
                    detail,
                }
            }
        })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                url: url.to_string(),
                detail: e.to_string(),
            })?
            .to_bytes();
        Ok::<_, ClientError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            url: url.to_string(),
        })??;

    if status == StatusCode::UNAUTHORIZED {
        return Err(ClientError::Unauthorized);
    }
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| ClientError::BadResponse { status })?;
    Ok((status, value))
}

/// Runs `cmd`; a non-2xx answer becomes [`ClientError::Api`] with the server's code and
/// message.
impl ClientError {
    /// Whether the error is in what the operator typed (a malformed URL, an account or
    /// serial the API refuses as invalid) rather than in the gateway or the network: the
    /// command exits 2 for those, like any usage error.
    pub fn is_usage(&self) -> bool {
        match self {
            ClientError::InvalidUrl { .. } | ClientError::HttpsUnsupported(_) => true,
            ClientError::Api { status, .. } => {
                *status == StatusCode::BAD_REQUEST || *status == StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => false,
        }
    }
}

pub async fn run(url: &str, token: &str, cmd: &AdminCommand) -> Result<Value, ClientError> {
    let (status, value) = call(url, token, cmd.method(), &cmd.path(), cmd.body()).await?;
    if status.is_success() {
        return Ok(value);
    }
    let body: ErrorBody = serde_json::from_value(value).unwrap_or_default();
    let or = |s: String, default: &str| if s.is_empty() { default.to_string() } else { s };
    Err(ClientError::Api {
        status,
        code: or(body.error, "unknown"),
        message: or(body.message, "(no message)"),
    })
}

/// Runs `cmd` and reads the answer as `T`.
async fn run_typed<T: serde::de::DeserializeOwned>(
    url: &str,
    token: &str,
    cmd: AdminCommand,
) -> Result<T, ClientError> {
    let value = run(url, token, &cmd).await?;
    serde_json::from_value(value).map_err(|_| ClientError::BadResponse {
        status: StatusCode::OK,
    })
}

/// `POST /v1/accounts/{account}/two-factor`.
pub async fn enable(url: &str, token: &str, account: &str) -> Result<AccountChange, ClientError> {
    let account = account.into();
    run_typed(url, token, AdminCommand::Enable { account }).await
}

/// `POST /v1/accounts/{account}/reset`.
pub async fn reset(url: &str, token: &str, account: &str) -> Result<AccountChange, ClientError> {
    let account = account.into();
    run_typed(url, token, AdminCommand::Reset { account }).await
}

/// `POST /v1/accounts/{account}/tickets`.
pub async fn ticket(url: &str, token: &str, account: &str) -> Result<AccountChange, ClientError> {
    let account = account.into();
    run_typed(url, token, AdminCommand::Ticket { account }).await
}

/// `POST /v1/certificates/{serial}/revoke`.
pub async fn revoke(
    url: &str,
    token: &str,
    serial: &str,
    reason: Option<&str>,
) -> Result<Revoked, ClientError> {
    let serial = serial.into();
    let reason = reason.map(str::to_string);
    run_typed(url, token, AdminCommand::Revoke { serial, reason }).await
}

/// `GET /v1/accounts/{account}`.
pub async fn status(url: &str, token: &str, account: &str) -> Result<AccountStatus, ClientError> {
    let account = account.into();
    run_typed(url, token, AdminCommand::Status { account }).await
}

/// `GET /v1/certificates/{serial}`.
pub async fn certificate_status(
    url: &str,
    token: &str,
    serial: &str,
) -> Result<CertificateStatus, ClientError> {
    let serial = serial.into();
    run_typed(url, token, AdminCommand::CertificateStatus { serial }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        assert_eq!(
            request_uri("http://127.0.0.1:9444", "/v1/accounts/a")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9444/v1/accounts/a"
        );
        assert_eq!(
            request_uri("http://127.0.0.1:9444/", "/healthz")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9444/healthz"
        );
        assert_eq!(
            request_uri("127.0.0.1:9444", "/healthz")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9444/healthz"
        );
        assert_eq!(
            request_uri("http://gw.internal/admin/", "/healthz")
                .unwrap()
                .to_string(),
            "http://gw.internal/admin/healthz"
        );
        assert!(matches!(
            request_uri("https://127.0.0.1:9444", "/x"),
            Err(ClientError::HttpsUnsupported(_))
        ));
        assert!(matches!(
            request_uri("ftp://h", "/x"),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            request_uri("http://", "/x"),
            Err(ClientError::InvalidUrl { .. })
        ));
        let msg = request_uri("https://h:1", "/x").unwrap_err().to_string();
        assert!(msg.contains("plain http"), "{msg}");
    }

    #[test]
    fn listen_address_to_url() {
        assert_eq!(
            url_from_listen("127.0.0.1:9444".parse().unwrap()),
            "http://127.0.0.1:9444"
        );
        assert_eq!(
            url_from_listen("0.0.0.0:9444".parse().unwrap()),
            "http://127.0.0.1:9444"
        );
        assert_eq!(
            url_from_listen("[::]:9444".parse().unwrap()),
            "http://[::1]:9444"
        );
    }

    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(
            AdminCommand::Enable {
                account: "alice@example.com".into()
            }
            .path(),
            "/v1/accounts/alice%40example.com/two-factor"
        );
        assert_eq!(
            AdminCommand::Revoke {
                serial: "AB:CD".into(),
                reason: None
            }
            .path(),
            "/v1/certificates/AB%3ACD/revoke"
        );
        assert_eq!(
            AdminCommand::Status {
                account: "a/../b".into()
            }
            .path(),
            "/v1/accounts/a%2F..%2Fb"
        );
        assert_eq!(
            AdminCommand::Status {
                account: "..".into()
            }
            .path(),
            "/v1/accounts/%2E%2E"
        );
        assert_eq!(
            AdminCommand::Status {
                account: "a.b".into()
            }
            .path(),
            "/v1/accounts/a.b"
        );
        assert_eq!(
            AdminCommand::Status {
                account: "x".into()
            }
            .method(),
            Method::GET
        );
        assert_eq!(
            AdminCommand::Reset {
                account: "x".into()
            }
            .method(),
            Method::POST
        );
        assert_eq!(
            AdminCommand::Revoke {
                serial: "01".into(),
                reason: Some("superseded".into())
            }
            .body(),
            Some(json!({"reason": "superseded"}))
        );
        assert_eq!(
            AdminCommand::Revoke {
                serial: "01".into(),
                reason: None
            }
            .body(),
            None
        );
    }

    #[test]
    fn token_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  s3cret\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_token_file(&p),
            Err(ClientError::TokenFile { .. })
        ));
        assert!(matches!(
            read_token_file(&dir.path().join("missing")),
            Err(ClientError::TokenFile { .. })
        ));
    }

    #[tokio::test]
    async fn refused_connection_names_the_url() {
        // Bind, learn a free port, close it: nothing listens there now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = call(&url, "t", Method::GET, "/healthz", None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&url) && msg.contains("Is the gateway running"),
            "{msg}"
        );
    }

    #[test]
    fn render_enable_shows_the_link() {
        let v = json!({
            "account": "alice", "generation": 1, "two_factor": true,
            "created_at": "2026-01-01T00:00:00Z", "reset_at": null,
            "ticket": "T", "enroll_url": "https://gw/.certgate/enroll?ticket=T",
            "ticket_expires_at": "2026-01-02T00:00:00Z",
        });
        let out = render(
            &AdminCommand::Enable {
                account: "alice".into(),
            },
            &v,
        );
        assert!(
            out.contains("Two-factor enabled for account alice (generation 1)"),
            "{out}"
        );
        assert!(
            out.contains("\n    https://gw/.certgate/enroll?ticket=T\n"),
            "{out}"
        );
        assert!(out.contains("expires 2026-01-02T00:00:00Z"), "{out}");
    }

    #[test]
    fn render_note_without_link() {
        let v =
            json!({"account": "bob", "generation": 2, "two_factor": false, "note": "no ticket"});
        let out = render(
            &AdminCommand::Reset {
                account: "bob".into(),
            },
            &v,
        );
        assert!(out.contains("Account bob reset: now generation 2"), "{out}");
        assert!(out.contains("Note: no ticket"), "{out}");
        assert!(!out.contains("Enrollment link"), "{out}");
    }

    #[test]
    fn render_status_table() {
        let v = json!({
            "account": "alice", "generation": 2, "two_factor": true,
            "created_at": "2026-01-01T00:00:00Z", "reset_at": "2026-02-01T00:00:00Z",
            "certificates": [
                {"serial": "aa01", "generation": 1, "not_after": "2027-01-01T00:00:00Z", "revoked": false, "fingerprint": "f"},
                {"serial": "bb02", "generation": 2, "not_after": "2027-02-01T00:00:00Z", "revoked": true, "fingerprint": "f"},
                {"serial": "cc03", "generation": 2, "not_after": "2027-03-01T00:00:00Z", "revoked": false, "fingerprint": "f"},
            ],
        });
        let out = render(
            &AdminCommand::Status {
                account: "alice".into(),
            },
            &v,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.contains(&"last reset  2026-02-01T00:00:00Z"), "{out}");
        assert!(
            out.contains("SERIAL  GEN  NOT AFTER             STATUS"),
            "{out}"
        );
        assert!(
            out.contains("aa01    1    2027-01-01T00:00:00Z  refused (older generation)"),
            "{out}"
        );
        assert!(
            out.contains("bb02    2    2027-02-01T00:00:00Z  revoked"),
            "{out}"
        );
        assert!(
            out.contains("cc03    2    2027-03-01T00:00:00Z  valid"),
            "{out}"
        );

        let empty =
            json!({"account": "x", "generation": 1, "two_factor": false, "certificates": []});
        let out = render(
            &AdminCommand::Status {
                account: "x".into(),
            },
            &empty,
        );
        assert!(
            out.contains("No certificates on record.") && out.contains("last reset  never"),
            "{out}"
        );
    }

    #[test]
    fn render_revoke_and_certificate() {
        let v = json!({"serial": "abcd", "account": null, "revoked": true, "reason": "keyCompromise", "revoked_at": "2026-01-01T00:00:00Z"});
        let out = render(
            &AdminCommand::Revoke {
                serial: "abcd".into(),
                reason: None,
            },
            &v,
        );
        assert_eq!(
            out,
            "Certificate abcd revoked (reason keyCompromise, since 2026-01-01T00:00:00Z).\n"
        );
        let out = render(
            &AdminCommand::CertificateStatus {
                serial: "abcd".into(),
            },
            &v,
        );
        assert!(
            out.contains("account      (not in the certificate registry)"),
            "{out}"
        );
        assert!(
            out.contains("revoked      yes (keyCompromise, since 2026-01-01T00:00:00Z)"),
            "{out}"
        );
    }
}
