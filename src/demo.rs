//! `certgate demo`: a development PKI, a built-in echo upstream and the gateway, all on
//! this machine, plus the exact commands to try. Nothing here is used by `run`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::pki::ca;
use crate::state::cache::StateCache;

/// The config file `init` writes, relative to the init folder.
pub const CONFIG_REL: &str = "config/certgate.yaml";

/// The embedded store `init` creates, relative to the init folder: where the example
/// configuration's `state.path` points.
pub const STORE_REL: &str = "data/certgate.db";

/// The documented example configuration; `init` writes exactly this text.
pub const CONFIG_TEMPLATE: &str = include_str!("../config/certgate.yaml");

/// Starts the echo upstream on `127.0.0.1:0`: every request is answered with a JSON
/// description of what arrived (method, path, headers), so the identity headers the
/// gateway adds are visible.
pub async fn start_echo() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    service_fn(
                        |req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(&req)) },
                    );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into(),
        );
    }
    let body = serde_json::json!({
        "upstream": "certgate demo echo",
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Writes the development PKI and the config into `dir` unless they are already there.
/// Returns whether anything was written.
pub fn ensure_initialised(dir: &Path) -> Result<bool, ca::CaError> {
    if dir.join(CONFIG_REL).exists() && dir.join("certs/enroll-ca.key").exists() {
        return Ok(false);
    }
    ca::write_dev_pki(dir, true)?;
    ca::write_file(&dir.join(CONFIG_REL), CONFIG_TEMPLATE.as_bytes(), false)?;
    Ok(true)
}

/// The demo's configuration: the documented example, listening on loopback and
/// forwarding to the built-in echo upstream at `echo`. Written to the file (rather than
/// changed in memory) so that `certgate admin --config …` and a reload see the same values.
pub fn demo_config(echo: SocketAddr) -> String {
    CONFIG_TEMPLATE
        .replacen("listen: \"0.0.0.0:8443\"", "listen: \"127.0.0.1:8443\"", 1)
        .replacen(
            "url: \"http://127.0.0.1:8080\"",
            &format!("url: \"http://{echo}\""),
            1,
        )
}

/// Where the demo's commands put alice's key, CSR and certificate.
pub fn alice_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("alice.key"),
        dir.join("alice.csr"),
        dir.join("alice.pem"),
    )
}

/// Enables two-factor for `alice` (as `certgate admin enable alice` would) and returns two
/// enrollment tickets of her current generation: one for the command-line (CSR) path and
/// one for the browser. Tickets are single use.
pub async fn alice_tickets(
    cache: &Arc<StateCache>,
    ticket_ttl: std::time::Duration,
) -> Result<(String, String), crate::state::StoreError> {
    let now = crate::core::clock::now();
    let acct = cache.enable_two_factor("alice", now).await?;
    let store = cache.store().as_ref();
    let csr = crate::state::issue_ticket(store, "alice", acct.generation, ticket_ttl, now).await?;
    let browser =
        crate::state::issue_ticket(store, "alice", acct.generation, ticket_ttl, now).await?;
    Ok((csr, browser))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_points_at_the_echo_upstream_on_loopback() {
        let text = demo_config("127.0.0.1:45678".parse().unwrap());
        assert!(
            text.contains("listen: \"127.0.0.1:8443\""),
            "listen replaced"
        );
        assert!(
            text.contains("url: \"http://127.0.0.1:45678\""),
            "upstream replaced"
        );
        assert!(!text.contains("0.0.0.0:8443"));
    }

    #[test]
    fn the_store_init_creates_is_the_one_the_template_names() {
        let dir = tempfile::tempdir().unwrap();
        ensure_initialised(dir.path()).unwrap();
        let cfg = crate::config::Config::load(&dir.path().join(CONFIG_REL)).unwrap();
        let crate::config::StateBackend::Embedded { path } = &cfg.state.backend else {
            panic!("the template uses the embedded store");
        };
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let canon = |p: &Path| {
            let folder = p.parent().unwrap().canonicalize().unwrap();
            folder.join(p.file_name().unwrap())
        };
        assert_eq!(canon(path), canon(&dir.path().join(STORE_REL)));
    }
}
