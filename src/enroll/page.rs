//! The Client Certificate Initialization page (HTML, no JavaScript needed).

use super::limits::*;
use crate::http::pages::{self, escape_html};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The Client Certificate Initialization page.
pub(super) fn enrollment_page(
    ca_name: &str,
    public_url: &str,
    account: &str,
    ticket: &str,
    dev_server_ca: bool,
) -> Response<Full<Bytes>> {
    // The command must work as pasted: with the development server CA of `certgate init`
    // curl does not trust the server unless told to.
    let (cacert, cacert_note) = if dev_server_ca {
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
    let account = escape_html(account);
    let ticket = escape_html(ticket);
    let ca_name = escape_html(ca_name);
    let base = escape_html(public_url);
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Client Certificate Initialization</title><style>{css}{extra}</style></head>
<body><main>
<h1>Client Certificate Initialization</h1>
<p class="lead">Set up the client certificate for account <b id="account">{account}</b>.
Two-factor sign-in for this account needs it: from now on your browser presents it every time you sign in.</p>
<ol>
<li><b>Generate.</b> Choose a passphrase (at least {min} characters) and click <b>Generate Certificate</b>.
Your browser downloads <code>{account}.p12</code>: your certificate and its private key, protected by the passphrase.
This link works once.</li>
<li><b>Import.</b> Open the downloaded file and enter the passphrase (or import it in the browser's settings: Privacy and security &rarr; Security &rarr; Manage certificates &rarr; Import).</li>
<li><b>Sign in.</b> Go back to the application. When the browser asks for a certificate, pick the one for <b>{account}</b> issued by <i>{ca_name}</i>.</li>
<li><b>Lost it?</b> New computer, reinstalled browser, deleted file: ask your administrator to reset your certificate. You get a new link, and the old certificate stops working.</li>
</ol>
<form method="post" action="/.certgate/enroll/pkcs12" autocomplete="off">
<input type="hidden" name="ticket" value="{ticket}">
<label for="passphrase">Passphrase for the certificate file</label>
<input id="passphrase" name="passphrase" type="password" minlength="{min}" maxlength="{max}" required autocomplete="new-password">
<button id="generate" type="submit">Generate Certificate</button>
</form>
<details><summary>Keep the private key on your own machine instead (command line)</summary>
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
    );
    let mut resp = pages::build(StatusCode::OK, "text/html; charset=utf-8", body);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    resp.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

pub(super) const PAGE_CSS: &str = "form{margin:1.5rem 0;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}\
label{width:100%;font-weight:600}input[type=password]{flex:1;min-width:12rem;padding:.5rem;\
border:1px solid #99a;border-radius:4px;font-size:1rem}button{padding:.55rem 1.2rem;font-size:1rem;\
background:#1f5fbf;color:#fff;border:0;border-radius:4px;cursor:pointer}\
pre{background:#f4f5f7;padding:.75rem;overflow-x:auto;font-size:.8rem}summary{cursor:pointer}";
