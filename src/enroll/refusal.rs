//! Every way an enrollment request is refused, with its one status, token and page.

use super::limits::*;
use std::borrow::Cow;

use crate::core::decision::Decision;
use crate::core::outcome::{MethodNotAllowed, Outcome};
use crate::http::pages;
use crate::pki::ca::CsrError;
use crate::state::StoreError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Why an enrollment request was refused; one mapping to status, token and text.
#[derive(Debug)]
pub(super) enum Refusal {
    TooManyAttempts,
    /// A browser posted from another site (`Origin`, `Sec-Fetch-Site`).
    CrossSite,
    MissingTicket,
    MissingBearer,
    /// Unknown, already used or expired: the store cannot tell these apart, and saying
    /// which would help a guesser.
    UnknownTicket,
    /// Made for an older generation of the account (a reset came after it).
    StaleTicket,
    ShortPassphrase,
    LongPassphrase,
    NotAForm,
    BadForm,
    TooLarge,
    BodyTimeout,
    BadBody,
    BadCsr(CsrError),
    /// `POST /enroll/pkcs12` with `enrollment.server_side_keys: false`.
    ServerKeysOff,
    /// Renewal: the connection's certificate is refused by the gate (none, revoked, reset,
    /// expired, store unavailable): that decision's own answer.
    Gate(Decision),
    /// Renewal: a certificate certgate did not issue (its own CA renews it).
    NotRenewable,
    /// Renewal: not yet within `enrollment.renew_before` of expiry; opens at this Unix time.
    NotDue(i64),
    /// Renewal: `enrollment.renew_before: 0s`.
    RenewalOff,
    /// Renewal: the account already has this many working certificates.
    TooManyCertificates(usize),
    StoreUnavailable(StoreError),
    /// Details are logged, not sent.
    Internal(String),
}

impl Refusal {
    /// Counts towards the per-address limit (a wrong ticket was presented).
    pub(super) fn is_ticket_failure(&self) -> bool {
        matches!(self, Refusal::UnknownTicket | Refusal::StaleTicket)
    }
}

impl Outcome for Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            Refusal::MissingBearer => StatusCode::UNAUTHORIZED,
            Refusal::UnknownTicket
            | Refusal::StaleTicket
            | Refusal::CrossSite
            | Refusal::ServerKeysOff
            | Refusal::NotRenewable
            | Refusal::NotDue(_)
            | Refusal::RenewalOff
            | Refusal::TooManyCertificates(_) => StatusCode::FORBIDDEN,
            Refusal::Gate(d) => d.status(),
            Refusal::MissingTicket
            | Refusal::ShortPassphrase
            | Refusal::LongPassphrase
            | Refusal::BadForm
            | Refusal::BadBody
            | Refusal::BadCsr(_) => StatusCode::BAD_REQUEST,
            Refusal::NotAForm => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn token(&self) -> &'static str {
        match self {
            Refusal::TooManyAttempts => "too_many_attempts",
            Refusal::CrossSite => "cross_site_request",
            Refusal::MissingTicket | Refusal::MissingBearer => "missing_ticket",
            Refusal::UnknownTicket => "invalid_ticket",
            Refusal::StaleTicket => "stale_ticket",
            Refusal::ShortPassphrase => "passphrase_too_short",
            Refusal::LongPassphrase => "passphrase_too_long",
            Refusal::NotAForm => "unsupported_media_type",
            Refusal::BadForm | Refusal::BadBody => "bad_request",
            Refusal::TooLarge => "payload_too_large",
            Refusal::BodyTimeout => "request_timeout",
            Refusal::BadCsr(CsrError::Malformed(_)) => "bad_csr",
            Refusal::BadCsr(CsrError::BadSignature) => "bad_csr_signature",
            Refusal::BadCsr(_) => "unsupported_key",
            Refusal::ServerKeysOff => "server_side_keys_off",
            Refusal::Gate(d) => d.as_str(),
            Refusal::NotRenewable => "not_renewable",
            Refusal::NotDue(_) => "renewal_not_due",
            Refusal::RenewalOff => "renewal_off",
            Refusal::TooManyCertificates(_) => "too_many_certificates",
            Refusal::StoreUnavailable(_) => "store_unavailable",
            Refusal::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Refusal::TooManyAttempts => "Too many attempts",
            Refusal::CrossSite => "Request from another site",
            Refusal::MissingTicket | Refusal::MissingBearer => "Enrollment link incomplete",
            Refusal::UnknownTicket => "Enrollment link not valid",
            Refusal::StaleTicket => "Enrollment link replaced",
            Refusal::ShortPassphrase | Refusal::LongPassphrase => "Choose another passphrase",
            Refusal::NotAForm | Refusal::BadForm | Refusal::BadBody => "Bad request",
            Refusal::TooLarge => "Request too large",
            Refusal::BodyTimeout => "Request too slow",
            Refusal::BadCsr(_) => "Certificate request refused",
            Refusal::ServerKeysOff => "Your browser must make the key",
            Refusal::Gate(d) => Outcome::title(d),
            Refusal::NotRenewable | Refusal::RenewalOff => "Renewal not available",
            Refusal::NotDue(_) => "Renewal not due yet",
            Refusal::TooManyCertificates(_) => "Too many certificates",
            Refusal::StoreUnavailable(_) => "Temporarily unavailable",
            Refusal::Internal(_) => "Enrollment failed",
        }
    }

    fn message(&self) -> Cow<'static, str> {
        Cow::Owned(self.message_text())
    }

    fn steps(&self) -> &'static [&'static str] {
        match self {
            Refusal::Gate(d) => Outcome::steps(d),
            Refusal::NotRenewable | Refusal::RenewalOff | Refusal::TooManyCertificates(_) => {
                &["Ask your administrator for a new certificate before this one expires."]
            }
            Refusal::UnknownTicket => &[
                "Already generated your certificate with this link? Then you are done: open the downloaded <code>.p12</code> file to import it, and sign in.",
                "Otherwise ask your administrator for a new enrollment link. Each link works once, and only for a limited time.",
            ],
            Refusal::StaleTicket => &[
                "Use the newest enrollment link you were sent, or ask your administrator for a new one.",
            ],
            Refusal::MissingTicket => &[
                "Copy the whole link from the message you received, or ask your administrator for a new one.",
            ],
            Refusal::ServerKeysOff => &[
                "Turn JavaScript on for this site (or use a browser that runs it), open your enrollment link again and click <b>Generate Certificate</b>: the page makes your key in the browser.",
                "Or make the key yourself with the command shown on the enrollment page and send only the certificate request.",
            ],
            _ => &[],
        }
    }

    fn add_headers(&self, h: &mut HeaderMap) {
        match self {
            Refusal::TooManyAttempts => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(FAILURE_WINDOW.as_secs()),
                );
            }
            Refusal::MissingBearer => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"certgate enrollment\""),
                );
            }
            _ => {}
        }
    }
}

impl Refusal {
    fn message_text(&self) -> String {
        match self {
            Refusal::TooManyAttempts => format!(
                "Too many enrollment attempts with links that do not work came from your address, or with this link. A link that works is never refused: check that you opened the complete, latest link your administrator sent you, or wait a minute ({} s) and try again.",
                FAILURE_WINDOW.as_secs()
            ),
            Refusal::CrossSite => {
                "This enrollment form was submitted from another web site. Open your enrollment link and submit the form on that page.".into()
            }
            Refusal::MissingTicket => {
                "This address lacks its ticket (the part after \"ticket=\"). Open the complete link your administrator sent you.".into()
            }
            Refusal::MissingBearer => {
                "Send the enrollment ticket as \"Authorization: Bearer <ticket>\".".into()
            }
            Refusal::UnknownTicket => {
                "This enrollment link does not work: it was already used, it expired, or it was never valid.".into()
            }
            Refusal::StaleTicket => {
                "This enrollment link was replaced: your account's certificate was reset after the link was made.".into()
            }
            Refusal::ShortPassphrase => format!(
                "The passphrase must have at least {MIN_PASSPHRASE_CHARS} characters. Your link is still valid: go back and choose a longer one."
            ),
            Refusal::LongPassphrase => format!(
                "The passphrase may have at most {MAX_PASSPHRASE_CHARS} characters. Your link is still valid: go back and choose a shorter one."
            ),
            Refusal::NotAForm => {
                "Send the form as application/x-www-form-urlencoded with the fields ticket and passphrase.".into()
            }
            Refusal::BadForm => "The form could not be read.".into(),
            Refusal::BadBody => "The request body could not be read.".into(),
            Refusal::TooLarge => format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
            Refusal::BodyTimeout => "The request body did not arrive in time.".into(),
            Refusal::BadCsr(e) => format!("{e}. Your ticket is still valid."),
            Refusal::Gate(d) => Outcome::message(d).into_owned(),
            Refusal::NotRenewable => {
                "This certificate was not issued by this gateway, so it cannot be renewed here.".into()
            }
            Refusal::RenewalOff => {
                "Certificates are not renewed by their holders on this gateway.".into()
            }
            Refusal::TooManyCertificates(n) => format!(
                "Your account already has {n} working certificates, the most that can be renewed without your administrator. Sign in once with the newest one (that retires the one it renewed), or ask your administrator."
            ),
            Refusal::NotDue(at) => format!(
                "Your certificate can be renewed from {} on (shortly before it expires).",
                crate::core::text::rfc3339(*at)
            ),
            Refusal::ServerKeysOff => {
                "This gateway does not make private keys: your browser makes yours, on the enrollment page, with JavaScript. Your link is still valid.".into()
            }
            Refusal::StoreUnavailable(_) => {
                "Enrollment cannot be completed right now. Your link is still valid: try again in a moment.".into()
            }
            Refusal::Internal(_) => {
                "The certificate could not be issued. Your link is still valid: try again, and tell your administrator if it keeps failing.".into()
            }
        }
    }
}

pub(super) fn refusal(refused: Refusal, headers: &HeaderMap) -> Response<Full<Bytes>> {
    pages::render(&refused, headers)
}

pub(super) fn method_not_allowed(
    allow: &'static str,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    pages::render(&MethodNotAllowed(allow), headers)
}

pub(super) fn with_type(
    mut r: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The headers every enrollment answer carries (the ticket is in the URL).
pub(super) fn no_store(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
