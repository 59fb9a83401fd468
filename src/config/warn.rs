//! What is valid but almost certainly not meant, for [`super::Config::warnings`]: checks
//! across keys that no single validator sees.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::Config;

impl Config {
    /// What is valid but almost certainly not meant: printed by `check-config` and logged
    /// at every (re)load.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.routes.public.iter().any(|p| p == "/") {
            out.push(
                "routes.public contains \"/\": every path is public, so no request needs a \
                 client certificate and none is forwarded with identity headers (certgate \
                 only terminates TLS); list the public prefixes instead"
                    .to_string(),
            );
        }
        out.extend(public_url(self));
        out
    }
}

/// `enrollment.public_url` against where certgate listens and the names it serves: the
/// URL goes into every enrollment link, so a mismatch sends users to a page that does not
/// open (wrong port) or that the browser refuses (a name the server certificate lacks).
fn public_url(cfg: &Config) -> Vec<String> {
    let Some(en) = &cfg.enrollment else {
        return Vec::new();
    };
    let Ok(url) = en.public_url.parse::<http::Uri>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let shown = &en.public_url;
    if url.scheme_str() == Some("http") {
        out.push(format!(
            "enrollment.public_url {shown:?} is http://, but certgate serves HTTPS only: \
             enrollment links will not open; use https://"
        ));
    }
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let default_port = if url.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let port = url.port_u16().unwrap_or(default_port);
    if cfg.listen.port() != 0 && port != cfg.listen.port() {
        out.push(format!(
            "enrollment.public_url {shown:?} has port {port} but listen is {}: enrollment \
             links point at port {port}. That is right behind a load balancer or port forward from \
             {port} to {}; otherwise set public_url to https://{host}:{}",
            cfg.listen,
            cfg.listen.port(),
            cfg.listen.port()
        ));
    }
    let ip: Option<IpAddr> = host.parse().ok();
    if ip.is_none()
        && !cfg.server_names.is_empty()
        && !cfg.server_names.iter().any(|n| name_matches(n, &host))
    {
        out.push(format!(
            "enrollment.public_url host {host:?} is not in server_names ({}): a browser \
             following an enrollment link is refused in the handshake; add it to \
             server_names or fix public_url",
            cfg.server_names.join(", ")
        ));
    }
    if let Some(leaf) = cfg.tls.cert.certs.first()
        && let Ok((_, cert)) = X509Certificate::from_der(leaf)
    {
        let (dns, ips) = names_of(&cert);
        let covered = match ip {
            Some(ip) => ips.contains(&ip),
            None => dns.iter().any(|n| name_matches(n, &host)),
        };
        if !covered {
            let mut names: Vec<String> = dns.clone();
            names.extend(ips.iter().map(ToString::to_string));
            out.push(format!(
                "enrollment.public_url host {host:?} is not a name of the server certificate \
                 ({}, names: {}): browsers refuse the enrollment page; use one of its names \
                 in public_url or a certificate for {host}",
                cfg.tls.cert.path.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    out
}

/// The DNS names and IP addresses of a certificate's subjectAltName.
fn names_of(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}

/// `pattern` (a name, or `*.example.com` covering one label) matches `host`.
fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "gate.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("Gate.Example.com", "gate.example.com"));
    }
}
