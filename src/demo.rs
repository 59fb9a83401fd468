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

/// Starts the echo upstream: on `preferred` when it is free (the port of the last run, so a
/// config written then still points at it), else on a free port of `127.0.0.1`. Every
/// request is answered with a JSON description of what arrived (method, path, headers),
/// so the identity headers the gateway adds are visible.
pub async fn start_echo(preferred: Option<SocketAddr>) -> std::io::Result<SocketAddr> {
    let listener = match preferred {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await?,
        },
        None => TcpListener::bind("127.0.0.1:0").await?,
    };
    Ok(serve_echo(listener))
}

/// Starts the echo upstream on exactly `addr`; `None` when something else listens there.
pub async fn start_echo_at(addr: SocketAddr) -> Option<SocketAddr> {
    TcpListener::bind(addr).await.ok().map(serve_echo)
}

fn serve_echo(listener: TcpListener) -> SocketAddr {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
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
    addr
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

/// The three addresses the demo listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
}

impl Default for Ports {
    /// The documented example's ports, the gateway on loopback.
    fn default() -> Self {
        Ports {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9444)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Addresses asked for on the command line (`--listen`, `--admin-listen`,
/// `--metrics-listen`); the demo picks the others.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// The demo's configuration: the documented example, listening on `ports` and forwarding
/// to the built-in echo upstream at `echo`, with enrollment links on the gateway's port.
/// Written to the file (rather than changed in memory) so that `certgate admin --config …`
/// and a reload see the same values.
pub fn demo_config(echo: SocketAddr, ports: Ports) -> String {
    CONFIG_TEMPLATE
        .replacen(
            "listen: \"0.0.0.0:8443\"",
            &format!("listen: \"{}\"", ports.listen),
            1,
        )
        .replacen(
            "url: \"http://127.0.0.1:8080\"",
            &format!("url: \"http://{echo}\""),
            1,
        )
        .replacen(
            "public_url: \"https://localhost:8443\"",
            &format!("public_url: \"https://localhost:{}\"", ports.listen.port()),
            1,
        )
        .replacen(
            "  listen: \"127.0.0.1:9444\"",
            &format!("  listen: \"{}\"", ports.admin),
            1,
        )
        .replacen(
            "  listen: \"127.0.0.1:9090\"",
            &format!("  listen: \"{}\"", ports.metrics),
            1,
        )
}

/// Whether the demo may rewrite the config file whose text is `text` (loaded as `cfg`):
/// it is the untouched template or exactly what [`demo_config`] wrote, and not edited
/// since. Returns the echo address and ports it names (none for the template).
pub fn written_by_demo(
    text: &str,
    cfg: Option<&crate::config::Config>,
) -> Option<Option<(SocketAddr, Ports)>> {
    if text == CONFIG_TEMPLATE {
        return Some(None);
    }
    let cfg = cfg?;
    let url = &cfg.upstream.url;
    let echo: SocketAddr = format!("{}:{}", url.host()?, url.port_u16()?)
        .parse()
        .ok()?;
    let ports = Ports {
        listen: cfg.listen,
        admin: cfg.admin.listen,
        metrics: cfg.metrics.listen,
    };
    (demo_config(echo, ports) == text).then_some(Some((echo, ports)))
}

/// An address for `what`: the one asked for with `flag` (which must be free), else
/// `preferred` when it is free, else a free port on the same IP address. The probe socket
/// is returned so the caller holds the port while it picks the others; the note says what
/// was chosen instead of `preferred`.
pub fn choose(
    flag_name: &str,
    flag: Option<SocketAddr>,
    preferred: SocketAddr,
) -> Result<(SocketAddr, std::net::TcpListener, Option<String>), String> {
    use std::net::TcpListener as Probe;
    if let Some(addr) = flag {
        // Port 0 asks for any free port: the one the probe got is written down.
        return Probe::bind(addr)
            .and_then(|probe| Ok((probe.local_addr()?, probe, None)))
            .map_err(|e| {
                format!(
                    "{flag_name} {addr}: {e}; choose another address, or leave {flag_name} \
                     out and the demo picks a free port"
                )
            });
    }
    if let Ok(probe) = Probe::bind(preferred) {
        return Ok((preferred, probe, None));
    }
    let probe = Probe::bind(SocketAddr::new(preferred.ip(), 0))
        .map_err(|e| format!("no free port on {} for {flag_name}: {e}", preferred.ip()))?;
    let addr = probe.local_addr().map_err(|e| e.to_string())?;
    let note = format!(
        "{preferred} is taken, so the demo uses {addr} instead (pick one with {flag_name} ADDR)"
    );
    Ok((addr, probe, Some(note)))
}

/// [`choose`] for all three addresses: `Wanted` first, else `preferred`, else free ports.
pub fn choose_ports(wanted: Wanted, preferred: Ports) -> Result<(Ports, Vec<String>), String> {
    let (listen, p1, n1) = choose("--listen", wanted.listen, preferred.listen)?;
    let (admin, p2, n2) = choose("--admin-listen", wanted.admin, preferred.admin)?;
    let (metrics, p3, n3) = choose("--metrics-listen", wanted.metrics, preferred.metrics)?;
    drop((p1, p2, p3));
    let notes = [n1, n2, n3].into_iter().flatten().collect();
    Ok((
        Ports {
            listen,
            admin,
            metrics,
        },
        notes,
    ))
}

/// `path` as the demo prints it: `..` resolved lexically, and relative to the working
/// folder when it is below it (so the commands stay short and can be pasted).
pub fn shown(path: &Path) -> String {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(rel) = out.strip_prefix(&cwd)
        && !rel.as_os_str().is_empty()
    {
        return rel.display().to_string();
    }
    out.display().to_string()
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
        let text = demo_config("127.0.0.1:45678".parse().unwrap(), Ports::default());
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
    fn demo_config_uses_the_chosen_ports_everywhere() {
        let ports = Ports {
            listen: "127.0.0.1:18443".parse().unwrap(),
            admin: "127.0.0.1:19444".parse().unwrap(),
            metrics: "127.0.0.1:19090".parse().unwrap(),
        };
        let dir = tempfile::tempdir().unwrap();
        ensure_initialised(dir.path()).unwrap();
        let text = demo_config("127.0.0.1:45678".parse().unwrap(), ports);
        let path = dir.path().join(CONFIG_REL);
        std::fs::write(&path, &text).unwrap();
        let cfg = crate::config::Config::load(&path).unwrap();
        assert_eq!(cfg.listen, ports.listen);
        assert_eq!(cfg.admin.listen, ports.admin);
        assert_eq!(cfg.metrics.listen, ports.metrics);
        assert_eq!(
            cfg.enrollment.as_ref().unwrap().public_url,
            "https://localhost:18443"
        );
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
        // Recognised as the demo's own file, and no longer once edited.
        assert_eq!(
            written_by_demo(&text, Some(&cfg)),
            Some(Some(("127.0.0.1:45678".parse().unwrap(), ports)))
        );
        let edited = text.replacen("level: info", "level: debug", 1);
        assert_ne!(edited, text, "the template has a log level to edit");
        assert_eq!(written_by_demo(&edited, Some(&cfg)), None);
        assert_eq!(written_by_demo(CONFIG_TEMPLATE, None), Some(None));
    }

    #[test]
    fn printed_paths_are_tidy() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            shown(&cwd.join("demo/config/../certs/a.pem")),
            "demo/certs/a.pem"
        );
        assert_eq!(shown(Path::new("/x/y/../z")), "/x/z");
        assert_eq!(shown(Path::new("../a/./b")), "../a/b");
    }

    #[test]
    fn a_taken_port_is_replaced_by_a_free_one_unless_asked_for() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (chosen, _probe, note) = choose("--listen", None, addr).unwrap();
        assert_ne!(chosen, addr);
        assert_eq!(chosen.ip(), addr.ip());
        let note = note.unwrap();
        assert!(note.contains(&format!("{addr} is taken")), "{note}");
        let err = choose("--listen", Some(addr), addr).unwrap_err();
        assert!(
            err.contains("--listen") && err.contains("leave --listen out"),
            "{err}"
        );
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
