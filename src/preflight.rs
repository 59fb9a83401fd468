//! `certgate check-config --online`: what a valid configuration cannot show on paper. The
//! state store answers, the upstream accepts connections, the certificates chain and are
//! within their validity, and the private files are private. Each check is reported as ok
//! or failed with the reason; nothing is bound and nothing is written.

use std::path::Path;
use std::time::{Duration, Instant};

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::config::{Config, PemCerts, StateBackend};

/// How long one network check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A certificate expiring sooner than this is reported (still ok).
const EXPIRY_NOTICE: i64 = 30 * 86_400;

/// One check's result.
#[derive(Debug)]
pub struct Check {
    /// What was checked: a config key (`tls.cert`) or `state` / `upstream`.
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn ok(what: &str, detail: impl Into<String>) -> Check {
        Check {
            what: what.to_string(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(what: &str, detail: impl Into<String>) -> Check {
        Check {
            what: what.to_string(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Runs every check for `cfg`.
pub async fn run(cfg: &Config) -> Vec<Check> {
    let mut out = vec![store(cfg).await, upstream(cfg).await];
    if let Some(url) = &cfg.telemetry.otlp_endpoint {
        out.push(collector(url).await);
    }
    let now = crate::core::clock::now();
    out.push(chain("tls.cert", &cfg.tls.cert, now, true));
    if let Some(en) = &cfg.enrollment {
        out.push(chain("enrollment.ca_cert", &en.ca_cert, now, false));
    }
    for (i, ca) in cfg.client_auth.trusted_cas.iter().enumerate() {
        out.push(chain(
            &format!("client_auth.trusted_cas[{i}]"),
            ca,
            now,
            false,
        ));
    }
    out.push(private("tls.key", &cfg.tls.key.path));
    if let Some(en) = &cfg.enrollment {
        out.push(private("enrollment.ca_key", &en.ca_key.path));
    }
    out.push(private("admin.token_file", &cfg.admin.token_file));
    if let Some(a) = &cfg.headers.assertion {
        out.push(private("headers.assertion.key_file", &a.key_file));
        if a.previous_key.is_some() {
            out.push(private(
                "headers.assertion.previous_key_file",
                &a.previous_key_file,
            ));
        }
    }
    out
}

async fn store(cfg: &Config) -> Check {
    let what = "state";
    match &cfg.state.backend {
        // Not opened: a running gateway holds the file's lock.
        StateBackend::Embedded { path } => match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() > 0 => Check::ok(
                what,
                format!("embedded store {} ({} bytes)", path.display(), m.len()),
            ),
            Ok(m) if m.is_file() => Check::failed(
                what,
                format!(
                    "{} is empty (0 bytes): not a store; restore it from a backup",
                    path.display()
                ),
            ),
            Ok(_) => Check::failed(what, format!("{} is not a file", path.display())),
            Err(e) => Check::failed(
                what,
                format!(
                    "{}: {e} (start with `certgate run --create-store` the first time)",
                    path.display()
                ),
            ),
        },
        StateBackend::Redis(r) => {
            let shown = r.describe();
            let store = match crate::state::redis::RedisStore::open(r) {
                Ok(s) => s,
                Err(e) => return Check::failed(what, format!("{shown}: {e}")),
            };
            let started = Instant::now();
            let answer =
                tokio::time::timeout(CHECK_TIMEOUT, crate::state::StateStore::ping(&store)).await;
            match answer {
                Ok(Ok(())) => Check::ok(
                    what,
                    format!("{shown} answered in {} ms", started.elapsed().as_millis()),
                ),
                Ok(Err(e)) => Check::failed(what, format!("{shown}: {e}")),
                Err(_) => Check::failed(
                    what,
                    format!("{shown} did not answer within {}s", CHECK_TIMEOUT.as_secs()),
                ),
            }
        }
    }
}

/// A TCP connection to `url`'s host and port within `timeout`, and that `host:port`; or
/// why there is none.
async fn connect(
    url: &http::Uri,
    timeout: std::time::Duration,
    key: &str,
) -> Result<(tokio::net::TcpStream, String), String> {
    let https = url.scheme_str() == Some("https");
    let host = url.host().unwrap_or_default().to_string();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let connect = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await;
    match connect {
        Ok(Ok(t)) => Ok((t, authority)),
        Ok(Err(e)) => Err(format!("{url}: cannot connect to {authority}: {e}")),
        Err(_) => Err(format!("{url}: no connection to {authority} within {key}")),
    }
}

/// `telemetry.otlp_endpoint`: the collector accepts connections.
async fn collector(url: &http::Uri) -> Check {
    let what = "telemetry.otlp_endpoint";
    let started = Instant::now();
    match connect(url, CHECK_TIMEOUT, &format!("{}s", CHECK_TIMEOUT.as_secs())).await {
        Ok((_, authority)) => Check::ok(
            what,
            format!(
                "{url}: {authority} accepts connections ({} ms)",
                started.elapsed().as_millis()
            ),
        ),
        Err(e) => Check::failed(
            what,
            format!("{e} (is the OpenTelemetry collector running? spans would be dropped)"),
        ),
    }
}

async fn upstream(cfg: &Config) -> Check {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = "upstream.url";
    let url = &cfg.upstream.url;
    let https = url.scheme_str() == Some("https");
    let started = Instant::now();
    let timeout = cfg.upstream.connect_timeout.min(CHECK_TIMEOUT);
    let (mut tcp, authority) = match connect(url, timeout, "upstream.connect_timeout").await {
        Ok(c) => c,
        Err(e) => return Check::failed(what, format!("{e} (is the application running?)")),
    };
    if https {
        return Check::ok(
            what,
            format!(
                "{url}: {authority} accepts connections ({} ms; TLS not tried here)",
                started.elapsed().as_millis()
            ),
        );
    }
    let request = format!("HEAD / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 64];
    let exchange = tokio::time::timeout(CHECK_TIMEOUT, async {
        tcp.write_all(request.as_bytes()).await?;
        let n = tcp.read(&mut head).await?;
        Ok::<usize, std::io::Error>(n)
    })
    .await;
    let line = match exchange {
        Ok(Ok(n)) => String::from_utf8_lossy(&head[..n]).to_string(),
        Ok(Err(e)) => return Check::failed(what, format!("{url}: connected, then {e}")),
        Err(_) => {
            return Check::failed(
                what,
                format!(
                    "{url}: connected, but no HTTP answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ),
            );
        }
    };
    match line.strip_prefix("HTTP/1.").and_then(|r| r.get(2..5)) {
        Some(status) => Check::ok(
            what,
            format!(
                "{url}: answered HTTP {status} to HEAD / in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        None => Check::failed(
            what,
            format!("{url}: {authority} accepts connections but does not answer HTTP/1.1"),
        ),
    }
}

/// A certificate file: every certificate within its validity, each signed by the next
/// (a chain in order), and for the server's leaf the serverAuth purpose.
fn chain(what: &str, pem: &PemCerts, now: i64, server: bool) -> Check {
    let mut parsed = Vec::new();
    for der in &pem.certs {
        match X509Certificate::from_der(der) {
            Ok((_, c)) => parsed.push(c),
            Err(e) => return Check::failed(what, format!("{}: {e}", pem.path.display())),
        }
    }
    let Some(leaf) = parsed.first() else {
        return Check::failed(what, format!("{}: no certificate", pem.path.display()));
    };
    for c in &parsed {
        let subject = c.subject().to_string();
        let (from, to) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        if now < from {
            return Check::failed(
                what,
                format!("{subject} is not valid before {}", c.validity().not_before),
            );
        }
        if now > to {
            return Check::failed(
                what,
                format!("{subject} expired on {}", c.validity().not_after),
            );
        }
    }
    for pair in parsed.windows(2) {
        if pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .is_err()
        {
            return Check::failed(
                what,
                format!(
                    "{}: {} is not signed by the next certificate in the file ({}): put the \
                     chain in order, leaf first",
                    pem.path.display(),
                    pair[0].subject(),
                    pair[1].subject()
                ),
            );
        }
    }
    if server
        && let Ok(Some(eku)) = leaf.extended_key_usage()
        && !eku.value.server_auth
        && !eku.value.any
    {
        return Check::failed(
            what,
            format!(
                "{}: the leaf lacks the serverAuth purpose; browsers refuse it",
                leaf.subject()
            ),
        );
    }
    let left = leaf.validity().not_after.timestamp() - now;
    let mut detail = format!(
        "{}, valid until {} ({} days), {} certificate{}",
        leaf.subject(),
        leaf.validity().not_after,
        left / 86_400,
        parsed.len(),
        if parsed.len() == 1 {
            ""
        } else {
            "s, chain in order"
        }
    );
    if left < EXPIRY_NOTICE {
        detail.push_str("; renew it soon");
    }
    Check::ok(what, detail)
}

/// A secret file readable by its owner only (group read allowed, as for a group-owned
/// mount; other users never).
fn private(what: &str, path: &Path) -> Check {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o007 != 0 {
                    Check::failed(
                        what,
                        format!(
                            "{} is mode {mode:04o}: other users can read it; chmod 600 {}",
                            path.display(),
                            path.display()
                        ),
                    )
                } else {
                    Check::ok(what, format!("{} is mode {mode:04o}", path.display()))
                }
            }
            Err(e) => Check::failed(what, format!("{}: {e}", path.display())),
        }
    }
    #[cfg(not(unix))]
    Check::ok(
        what,
        format!("{} (permissions not checked here)", path.display()),
    )
}
