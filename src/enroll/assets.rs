//! The enrollment page's script (`assets/enroll/dist/enroll.js`: PKI.js and asn1js bundled
//! by `assets/enroll/build.sh`), embedded in the binary so the gateway needs no CDN and
//! works offline. Served at [`SCRIPT_PATH`] with its Subresource Integrity digest on the
//! page.

use std::sync::OnceLock;

use base64::Engine as _;
use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::Full;

/// The script, as built.
pub(super) const SCRIPT: &[u8] = include_bytes!("../../assets/enroll/dist/enroll.js");

/// Where the page loads it from (under `/.certgate`).
pub(super) const SCRIPT_PATH: &str = "/assets/enroll.js";

/// `sha384-…` of [`SCRIPT`], for the page's `integrity` attribute.
pub(super) fn integrity() -> &'static str {
    static SRI: OnceLock<String> = OnceLock::new();
    SRI.get_or_init(|| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, SCRIPT);
        format!(
            "sha384-{}",
            base64::engine::general_purpose::STANDARD.encode(d.as_ref())
        )
    })
}

/// `GET /.certgate/assets/enroll.js`.
pub(super) fn script() -> Response<Full<Bytes>> {
    let mut r = super::refusal::with_type(
        Response::new(Full::new(Bytes::from_static(SCRIPT))),
        "text/javascript; charset=utf-8",
    );
    r.headers_mut().insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}
