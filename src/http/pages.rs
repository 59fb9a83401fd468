//! Responses certgate writes itself: refusals and gateway errors. Browsers (`Accept` with
//! `text/html`) get a small self-contained HTML page that says what happened and what to
//! do; every other client gets `{"error": "<token>", "message": "…"}`. Neither ever
//! carries internals (addresses, error chains); those go to the log.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// One kind of response certgate writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub status: StatusCode,
    /// Machine token: the decision (`no_cert`, `revoked`, …) or the error code.
    pub token: &'static str,
    pub title: &'static str,
    /// One sentence, plain text, for JSON and the HTML lead.
    pub message: &'static str,
    /// What to do, as HTML list items (static text only).
    pub steps: &'static [&'static str],
}

/// How to make the browser ask again for a certificate: browsers remember the choice (or
/// the refusal to choose) for the session. Shared by every certificate refusal.
const ASK_AGAIN: &str = "Picked the wrong certificate, or none? The browser remembers that choice until it restarts: close <b>every</b> window of the browser (on a Mac, quit it), open this page again and pick the right certificate when the browser asks. In Chrome, Edge and Firefox the certificate issued for your account shows your account name.";

pub const NO_CERT: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "no_cert",
    title: "Client certificate required",
    message: "This page requires your client certificate, and your browser did not present one.",
    steps: &[
        "Not set up yet? Open the enrollment link your administrator sent you (or sign in again: the application sends you there). On the <b>Client Certificate Initialization</b> page choose a passphrase and click <b>Generate Certificate</b>, open the downloaded file to import it, then come back here.",
        ASK_AGAIN,
        "Lost your certificate (new computer, reinstalled browser)? Ask your administrator to reset it; you will get a new enrollment link.",
    ],
};

pub const REVOKED: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "revoked",
    title: "Certificate revoked",
    message: "The client certificate your browser presented has been revoked: it no longer counts.",
    steps: &[
        "Ask your administrator to reset your certificate; you will get a new enrollment link to generate a new one.",
        "Already have a newer certificate? Your browser sent the old one: remove the old certificate from the browser's certificate settings, then close every window of the browser and try again.",
        ASK_AGAIN,
    ],
};

pub const RESET: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "reset",
    title: "Certificate replaced",
    message: "Your account's certificate was reset: the certificate your browser presented no longer counts.",
    steps: &[
        "Open the new enrollment link your administrator sent you (or sign in again: the application sends you there) and generate a new certificate. No link? Ask your administrator for one.",
        "Already generated a new one? Your browser sent the old one: remove the old certificate from the browser's certificate settings, then close every window of the browser and try again.",
        ASK_AGAIN,
    ],
};

pub const EXPIRED: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "expired",
    title: "Certificate expired",
    message: "The client certificate your browser presented has expired.",
    steps: &[
        "Ask your administrator for a new enrollment link and generate a new certificate.",
        ASK_AGAIN,
    ],
};

pub const STORE_UNAVAILABLE: Page = Page {
    status: StatusCode::SERVICE_UNAVAILABLE,
    token: "store_unavailable",
    title: "Temporarily unavailable",
    message: "Your certificate cannot be checked right now. Nothing is wrong with it.",
    steps: &["Try again in a moment."],
};

pub const MISDIRECTED: Page = Page {
    status: StatusCode::MISDIRECTED_REQUEST,
    token: "misdirected",
    title: "Wrong host for this connection",
    message: "This request names a different host than the connection it was sent on.",
    steps: &["Reload the page; the browser opens a new connection for the right host."],
};

pub const BAD_REQUEST: Page = Page {
    status: StatusCode::BAD_REQUEST,
    token: "bad_request",
    title: "Bad request",
    message: "The request path is not allowed (\"..\" segments, encoded slashes or backslashes, or invalid escapes).",
    steps: &["Check the address and try again."],
};

pub const NOT_FOUND: Page = Page {
    status: StatusCode::NOT_FOUND,
    token: "not_found",
    title: "Not found",
    message: "There is no such certgate endpoint.",
    steps: &[],
};

pub const BAD_GATEWAY: Page = Page {
    status: StatusCode::BAD_GATEWAY,
    token: "bad_gateway",
    title: "Application unavailable",
    message: "The application behind the gateway could not be reached.",
    steps: &["Try again in a moment. If it persists, tell your administrator."],
};

pub const GATEWAY_TIMEOUT: Page = Page {
    status: StatusCode::GATEWAY_TIMEOUT,
    token: "gateway_timeout",
    title: "Application too slow",
    message: "The application behind the gateway did not answer in time.",
    steps: &["Try again in a moment. If it persists, tell your administrator."],
};

/// Whether the client prefers HTML (a browser).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")))
}

/// Renders `page` for a client whose request had `headers`.
pub fn render(page: &Page, headers: &HeaderMap) -> Response<Full<Bytes>> {
    if wants_html(headers) {
        html(page)
    } else {
        json(page)
    }
}

pub fn json(page: &Page) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": page.token, "message": page.message }).to_string();
    build(page.status, "application/json", body)
}

pub fn html(page: &Page) -> Response<Full<Bytes>> {
    let steps: Vec<String> = page.steps.iter().map(|s| s.to_string()).collect();
    html_message(page.status, page.token, page.title, page.message, &steps)
}

/// A page like the refusal pages for a message made at run time: `message` is plain text
/// (escaped here), `steps_html` are HTML list items the caller built from escaped parts.
pub fn html_message(
    status: StatusCode,
    token: &str,
    title: &str,
    message: &str,
    steps_html: &[String],
) -> Response<Full<Bytes>> {
    let mut steps = String::new();
    for s in steps_html {
        steps.push_str("<li>");
        steps.push_str(s);
        steps.push_str("</li>");
    }
    let steps = if steps.is_empty() {
        String::new()
    } else {
        format!("<ol>{steps}</ol>")
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{css}</style></head><body><main>\
<h1>{title}</h1><p class=\"lead\">{message}</p>{steps}\
<p class=\"code\">Status {status} &middot; <code>{token}</code></p></main></body></html>\n",
        title = escape_html(title),
        css = CSS,
        message = escape_html(message),
        steps = steps,
        status = status.as_u16(),
        token = escape_html(token),
    );
    build(status, "text/html; charset=utf-8", body)
}

/// `{"error": token, "message": message}` with `status`.
pub fn json_message(status: StatusCode, token: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": token, "message": message }).to_string();
    build(status, "application/json", body)
}

/// [`html_message`] for browsers, [`json_message`] for everyone else.
pub fn render_message(
    headers: &HeaderMap,
    status: StatusCode,
    token: &str,
    title: &str,
    message: &str,
    steps_html: &[String],
) -> Response<Full<Bytes>> {
    if wants_html(headers) {
        html_message(status, token, title, message, steps_html)
    } else {
        json_message(status, token, message)
    }
}

/// The stylesheet every page certgate writes shares (inline: the pages load nothing).
pub const CSS: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2530;margin:0}\
main{max-width:40rem;margin:4rem auto;background:#fff;padding:2rem 2.5rem;border-radius:8px;\
box-shadow:0 1px 3px rgba(0,0,0,.12)}h1{font-size:1.5rem;margin-top:0}.lead{font-size:1.1rem}\
li{margin:.5rem 0}.code{color:#667;font-size:.85rem;margin-top:2rem}";

/// A response with the headers every page certgate writes carries: no caching, no
/// sniffing, no referrer, and a CSP that allows nothing but inline style.
pub fn build(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn json_for_api_clients() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let r = render(&REVOKED, &h);
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["error"], "revoked");
        assert!(v["message"].as_str().unwrap().contains("revoked"));
    }

    #[tokio::test]
    async fn html_for_browsers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        let r = render(&RESET, &h);
        assert_eq!(r.status(), 403);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let b = body(r).await;
        assert!(b.contains("<h1>Certificate replaced</h1>"), "{b}");
        assert!(b.contains("enrollment link"), "{b}");
    }

    #[test]
    fn retry_after_on_503() {
        let r = json(&STORE_UNAVAILABLE);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
