//! The Client Certificate Initialization page: HTML that works without JavaScript, and
//! with it the key made in the browser (`assets/enroll`).

use super::limits::*;
use crate::http::pages::{self, escape_html};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// What the page shows.
pub(super) struct PageFacts<'a> {
    pub ca_name: &'a str,
    pub public_url: &'a str,
    pub account: &'a str,
    pub ticket: &'a str,
    /// The server certificate comes from `certgate init`'s development server CA.
    pub dev_server_ca: bool,
    /// `enrollment.server_side_keys`.
    pub server_side_keys: bool,
    /// The page script's path and its `sha384-…` digest.
    pub script: &'a str,
    pub integrity: &'a str,
}

/// The Client Certificate Initialization page. With JavaScript its script makes the key in
/// the browser and sends only a CSR; without, the form asks the gateway for a PKCS#12.
pub(super) fn enrollment_page(f: &PageFacts<'_>) -> Response<Full<Bytes>> {
    // The command must work as pasted: with the development server CA of `certgate init`
    // curl does not trust the server unless told to.
    let (cacert, cacert_note) = if f.dev_server_ca {
        (
            "--cacert server-ca.pem ",
            "<code>server-ca.pem</code> is the development server CA this gateway's certificate comes from \
             (<code>certs/server-ca.pem</code> where <code>certgate init</code> ran); ask your administrator for it.",
        )
    } else {
        (
            "",
            "If curl says the server certificate is not trusted, it comes from a private CA: add \
             <code>--cacert</code> with that CA's file.",
        )
    };
    let account = escape_html(f.account);
    let ticket = escape_html(f.ticket);
    let ca_name = escape_html(f.ca_name);
    let base = escape_html(f.public_url);
    let script = escape_html(f.script);
    let integrity = escape_html(f.integrity);
    // Replaced by the script when it runs (it says the key stays in the browser).
    let mode = if f.server_side_keys {
        "Without JavaScript, the gateway makes your private key and sends it to you inside the \
         passphrase-protected file; it keeps no copy. With JavaScript on, your browser makes the key \
         itself and it never leaves this page."
    } else {
        "Your browser makes your private key on this page; the gateway never sees it."
    };
    let noscript = if f.server_side_keys {
        ""
    } else {
        "<noscript><p class=\"error\">This page needs JavaScript: on this gateway only your browser \
         makes private keys. Turn JavaScript on for this site, or use the command line below.</p></noscript>"
    };
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Client Certificate Initialization</title><style>{css}{extra}</style>
<script src="{script}" integrity="{integrity}" defer></script></head>
<body><main>
<h1>Client Certificate Initialization</h1>
<p class="lead">Set up the client certificate for account <b id="account">{account}</b>.
Two-factor sign-in for this account needs it: from now on your browser presents it every time you sign in.</p>
<p id="mode" class="mode">{mode}</p>
{noscript}
<ol>
<li><b>Generate.</b> Choose a passphrase (at least {min} characters) and click <b>Generate Certificate</b>.
Your browser downloads <code>{account}.p12</code>: your certificate and its private key, protected by the passphrase.
This link works once.</li>
<li><b>Import.</b> Open the downloaded file and enter the passphrase (see <i>Importing the file</i> below for your system).</li>
<li><b>Sign in.</b> Go back to the application. When the browser asks for a certificate, pick the one for <b>{account}</b> issued by <i>{ca_name}</i>.</li>
<li><b>Lost it?</b> New computer, reinstalled browser, deleted file: ask your administrator to reset your certificate. You get a new link, and the old certificate stops working.</li>
</ol>
<form id="enroll-form" data-account="{account}" method="post" action="/.certgate/enroll/pkcs12" autocomplete="off">
<input type="hidden" name="ticket" value="{ticket}">
<label for="passphrase">Passphrase for the certificate file</label>
<input id="passphrase" name="passphrase" type="password" minlength="{min}" maxlength="{max}" required autocomplete="new-password">
<span id="key-choice" hidden><label for="key_type">Key type</label>
<select id="key_type" name="key_type">
<option value="ec-p256" selected>ECDSA P-256 (recommended: current Windows, macOS, Linux, Firefox, Chrome)</option>
<option value="rsa-2048">RSA 2048 (for Windows 7 and 8, and devices or smart cards without EC keys)</option>
</select></span>
<button id="generate" type="submit">Generate Certificate</button>
</form>
<p id="status" role="status" hidden></p>
<p id="error" class="error" role="alert" hidden></p>
<p id="browser-note" hidden></p>
<section id="done" hidden>
<h2>Your certificate is ready</h2>
<p>Your browser saved <code>{account}.p12</code> (<a id="download" hidden>save it again</a>). Import it as described below, then sign in.
The file holds your private key: keep it, and its passphrase, to yourself.</p>
</section>
{import_help}
<details><summary>Or use the command line (openssl and curl)</summary>
<p>Make a key and a certificate signing request, and send the request with this page's ticket (it is filled in below, and works once):</p>
<pre id="cli">openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout {account}.key -subj /CN={account} -out {account}.csr
curl {cacert}--fail --data-binary @{account}.csr -H "Authorization: Bearer {ticket}" \
  -o {account}.pem {base}/.certgate/enroll/csr</pre>
<p>{cacert_note}</p>
<p>Only the request's public key is used; the certificate's names are set by the gateway. Accepted keys: ECDSA P-256 or P-384, Ed25519, RSA of 2048 bits or more.</p>
</details>
</main></body></html>
"#,
        css = pages::CSS,
        extra = PAGE_CSS,
        min = MIN_PASSPHRASE_CHARS,
        max = MAX_PASSPHRASE_CHARS,
        import_help = import_help(&account, &ca_name),
    );
    with_page_headers(pages::build(
        StatusCode::OK,
        "text/html; charset=utf-8",
        body,
    ))
}

/// Whether, and when, the holder can renew the certificate on the page.
pub(super) enum Renewal {
    /// Within `enrollment.renew_before` of expiry.
    Due,
    /// Opens at this Unix time.
    OpensAt(i64),
    /// `enrollment.renew_before: 0s`.
    Off,
    /// Not from the enrollment CA.
    NotOurs,
}

/// What "Managing your client certificate" shows.
pub(super) struct CertificateFacts<'a> {
    pub account: &'a str,
    pub serial: &'a str,
    pub ca_name: &'a str,
    pub not_before: i64,
    pub not_after: i64,
    /// From the store's record, when certgate issued it: when, and to which address.
    pub issued_at: Option<i64>,
    pub issued_from: Option<&'a str>,
    /// The account's other certificates that still work: serial, notAfter.
    pub others: &'a [(String, i64)],
    pub renewal: Renewal,
    pub public_url: &'a str,
    pub script: &'a str,
    pub integrity: &'a str,
    pub now: i64,
}

/// `GET /.certgate/certificate`: the signed-in certificate, the account's others, renewal.
pub(super) fn certificate_page(f: &CertificateFacts<'_>) -> Response<Full<Bytes>> {
    use crate::core::text::rfc3339;
    let account = escape_html(f.account);
    let ca_name = escape_html(f.ca_name);
    let serial = escape_html(f.serial);
    let base = escape_html(f.public_url);
    let days_left = (f.not_after - f.now).max(0) / 86_400;
    let issued = f
        .issued_at
        .map(|t| {
            let from = f
                .issued_from
                .map(|a| format!(" to <span id=\"issued-from\">{}</span>", escape_html(a)))
                .unwrap_or_default();
            format!("<tr><th>Issued</th><td>{}{from}</td></tr>", rfc3339(t))
        })
        .unwrap_or_default();
    let others = if f.others.is_empty() {
        "<p id=\"others\">No other certificate of this account works at the moment.</p>".to_string()
    } else {
        let items: String = f
            .others
            .iter()
            .map(|(s, until)| {
                format!(
                    "<li><code>{}</code>, valid until {}</li>",
                    escape_html(s),
                    rfc3339(*until)
                )
            })
            .collect();
        format!(
            "<p>Other certificates of this account that work (on other devices or browsers):</p><ul id=\"others\">{items}</ul>"
        )
    };
    let renewal = match f.renewal {
        Renewal::Due => format!(
            r#"<section id="renew">
<h2>Renew your certificate</h2>
<p class="notice" id="renew-notice">Your certificate expires on {until} (in {days_left} days). Renew it now: your browser makes a new key, the gateway certifies it, and you import the new file.
The current certificate keeps working until you first sign in with the new one; then it stops working.</p>
<noscript><p class="error">Renewing on this page needs JavaScript. Or use the command line below.</p></noscript>
<form id="enroll-form" data-account="{account}" data-endpoint="/.certgate/renew" method="post" action="/.certgate/renew" autocomplete="off">
<label for="passphrase">Passphrase for the new certificate file</label>
<input id="passphrase" name="passphrase" type="password" minlength="{min}" maxlength="{max}" required autocomplete="new-password">
<span id="key-choice" hidden><label for="key_type">Key type</label>
<select id="key_type" name="key_type">
<option value="ec-p256" selected>ECDSA P-256 (recommended)</option>
<option value="rsa-2048">RSA 2048 (for Windows 7 and 8, and devices without EC keys)</option>
</select></span>
<button id="generate" type="submit" disabled>Renew Certificate</button>
</form>
<p id="status" role="status" hidden></p>
<p id="error" class="error" role="alert" hidden></p>
<p id="browser-note" hidden></p>
<section id="done" hidden>
<h2>Your new certificate is ready</h2>
<p>Your browser saved <code>{account}.p12</code> (<a id="download" hidden>save it again</a>). Import it as described below, close every window of the browser, and sign in again with the new certificate (issued {today}).</p>
</section>
{import_help}
<details><summary>Or renew on the command line (openssl and curl)</summary>
<pre id="cli">openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout {account}-new.key -subj /CN={account} -out {account}-new.csr
curl --fail --cert {account}.pem --key {account}.key --data-binary @{account}-new.csr \
  -o {account}-new.pem {base}/.certgate/renew</pre>
<p>The current certificate and its key authenticate the request; no ticket is needed.</p>
</details>
</section>"#,
            until = rfc3339(f.not_after),
            min = MIN_PASSPHRASE_CHARS,
            max = MAX_PASSPHRASE_CHARS,
            today = rfc3339(f.now),
            import_help = import_help(&account, &ca_name),
        ),
        Renewal::OpensAt(t) => format!(
            "<p id=\"renew-later\">You can renew this certificate here from {} on (before it expires on {}).</p>",
            rfc3339(t),
            rfc3339(f.not_after)
        ),
        Renewal::Off | Renewal::NotOurs => "<p id=\"renew-later\">Ask your administrator for a new certificate before this one expires.</p>".to_string(),
    };
    let script = escape_html(f.script);
    let integrity = escape_html(f.integrity);
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Managing your client certificate</title><style>{css}{extra}</style>
<script src="{script}" integrity="{integrity}" defer></script></head>
<body><main>
<h1>Managing your client certificate</h1>
<p class="lead">Your browser signed in with the certificate of account <b id="account">{account}</b>.</p>
<table id="current">
<tr><th>Account</th><td>{account}</td></tr>
<tr><th>Serial</th><td><code id="serial">{serial}</code></td></tr>
<tr><th>Issued by</th><td>{ca_name}</td></tr>
<tr><th>Valid from</th><td>{from}</td></tr>
<tr><th>Valid until</th><td id="not-after">{until} ({days_left} days left)</td></tr>
{issued}
</table>
{renewal}
{others}
<h2>Lost a certificate, or someone else may have it?</h2>
<p>Ask your administrator to reset your certificate. Every certificate of your account stops working at once, and you get a new enrollment link to make a new one.</p>
</main></body></html>
"#,
        css = pages::CSS,
        extra = PAGE_CSS,
        from = rfc3339(f.not_before),
        until = rfc3339(f.not_after),
    );
    with_page_headers(pages::build(
        StatusCode::OK,
        "text/html; charset=utf-8",
        body,
    ))
}

/// The CSP and framing headers of the pages that run the script.
fn with_page_headers(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    resp.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// How to import `<account>.p12` on each platform, and what to do when the browser offers
/// the wrong certificate (`account` and `ca_name` already escaped).
fn import_help(account: &str, ca_name: &str) -> String {
    format!(
        r#"<details id="import-help"><summary>Importing the file</summary>
<ul>
<li><b>Windows</b> (Edge, Chrome): double-click <code>{account}.p12</code>; the Certificate Import Wizard opens. Choose <i>Current User</i>, enter the passphrase, keep the suggested store, finish.</li>
<li><b>macOS</b> (Safari, Chrome): double-click <code>{account}.p12</code>; Keychain Access opens. Add it to the <i>login</i> keychain and enter the passphrase.</li>
<li><b>Firefox</b> (every system): Settings &rarr; Privacy &amp; Security &rarr; Certificates &rarr; View Certificates &rarr; Your Certificates &rarr; Import, pick the file, enter the passphrase.</li>
<li><b>Chromium or Chrome on Linux</b>: Settings &rarr; Privacy and security &rarr; Security &rarr; Manage certificates &rarr; Your certificates &rarr; Import (or <code>pk12util -i {account}.p12 -d sql:$HOME/.pki/nssdb</code>).</li>
<li><b>The browser offers the wrong certificate, or none?</b> Close every window of the browser and start it again (browsers remember the choice while running), or try a private window. Pick the certificate for <b>{account}</b> issued by <i>{ca_name}</i>.</li>
</ul>
</details>"#
    )
}

/// The page's Content-Security-Policy: its own script only (no inline script), requests
/// to its own origin only, its inline styles, forms to itself.
pub(super) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub(super) const PAGE_CSS: &str = "form{margin:1.5rem 0;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}\
label{width:100%;font-weight:600}input[type=password]{flex:1;min-width:12rem;padding:.5rem;\
border:1px solid #99a;border-radius:4px;font-size:1rem}button{padding:.55rem 1.2rem;font-size:1rem;\
background:#1f5fbf;color:#fff;border:0;border-radius:4px;cursor:pointer}\
pre{background:#f4f5f7;padding:.75rem;overflow-x:auto;font-size:.8rem}summary{cursor:pointer}\
[hidden]{display:none!important}select{padding:.4rem;font-size:.95rem;max-width:100%}\
#key-choice{width:100%;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}\
.mode{color:#345}.error{color:#a11;font-weight:600}\
.notice{background:#fff6d6;border-left:4px solid #d9a400;padding:.6rem .8rem}\
table{border-collapse:collapse;margin:1rem 0}th{text-align:left;padding:.25rem 1rem .25rem 0;\
font-weight:600;vertical-align:top}td{padding:.25rem 0}";
