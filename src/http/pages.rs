//! Responses certgate writes itself: refusals and gateway errors. Browsers (`Accept` with
//! `text/html`) get a small self-contained HTML page that says what happened and what to
//! do; every other client gets `{"error": "<token>", "message": "…"}`. Neither ever
//! carries internals (addresses, error chains); those go to the log. What each outcome
//! says lives beside its type ([`Outcome`] implementations); this file only renders.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::core::outcome::Outcome;

/// Whether the client prefers HTML (a browser).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")))
}

/// The one conversion from an outcome to a response: HTML for a client whose request had
/// `headers` asking for it (a browser), JSON for everyone else.
pub fn render(outcome: &impl Outcome, headers: &HeaderMap) -> Response<Full<Bytes>> {
    if wants_html(headers) {
        html(outcome)
    } else {
        json(outcome)
    }
}

/// `{"error": token, "message": message}` with the outcome's status.
pub fn json(outcome: &impl Outcome) -> Response<Full<Bytes>> {
    let body =
        serde_json::json!({ "error": outcome.token(), "message": outcome.message() }).to_string();
    finish(outcome, build(outcome.status(), "application/json", body))
}

/// A small self-contained page: title, lead, what to do, and the status and token.
pub fn html(outcome: &impl Outcome) -> Response<Full<Bytes>> {
    let mut steps = String::new();
    for s in outcome.steps() {
        steps.push_str("<li>");
        steps.push_str(s);
        steps.push_str("</li>");
    }
    let steps = if steps.is_empty() {
        String::new()
    } else {
        format!("<ol>{steps}</ol>")
    };
    let status = outcome.status();
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{css}</style></head><body><main>\
<h1>{title}</h1><p class=\"lead\">{message}</p>{steps}\
<p class=\"code\">Status {status} &middot; <code>{token}</code></p></main></body></html>\n",
        title = escape_html(outcome.title()),
        css = CSS,
        message = escape_html(&outcome.message()),
        steps = steps,
        status = status.as_u16(),
        token = escape_html(outcome.token()),
    );
    finish(outcome, build(status, "text/html; charset=utf-8", body))
}

fn finish(outcome: &impl Outcome, mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    outcome.add_headers(resp.headers_mut());
    resp
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
    use crate::core::decision::Decision;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn json_for_api_clients() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let r = render(&Decision::Revoked, &h);
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
        let r = render(&Decision::Reset, &h);
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
        let r = json(&Decision::StoreUnavailable);
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
