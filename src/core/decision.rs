//! The outcome of one request and, beside it, what a refused client is told: status,
//! token (also the metric label) and the page text, in one place.

use std::borrow::Cow;

use http::StatusCode;

use crate::core::outcome::{Outcome, Page};

/// The outcome for one request. The `as_str` tokens are the metric labels and the `error`
/// field of JSON refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Forward with identity headers.
    Allowed,
    /// Forward without identity headers (a `routes.public` path).
    Public,
    /// certgate's own endpoints under `/.certgate/`.
    Own,
    NoCert,
    Revoked,
    Reset,
    Expired,
    StoreUnavailable,
    Misdirected,
    BadRequest,
    /// The app's session cookie was set for another account's certificate
    /// (`identity.session_cookie`).
    SessionMismatch,
}

impl Decision {
    /// Every decision, in declaration order (`as usize` indexes this).
    pub const ALL: [Decision; 11] = [
        Decision::Allowed,
        Decision::Public,
        Decision::Own,
        Decision::NoCert,
        Decision::Revoked,
        Decision::Reset,
        Decision::Expired,
        Decision::StoreUnavailable,
        Decision::Misdirected,
        Decision::BadRequest,
        Decision::SessionMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Public => "public",
            Decision::Own => "own",
            Decision::NoCert => "no_cert",
            Decision::Revoked => "revoked",
            Decision::Reset => "reset",
            Decision::Expired => "expired",
            Decision::StoreUnavailable => "store_unavailable",
            Decision::Misdirected => "misdirected",
            Decision::BadRequest => "bad_request",
            Decision::SessionMismatch => "session_mismatch",
        }
    }

    /// HTTP status of a refusal (`Allowed`/`Public`/`Own` are not refusals: 200 by
    /// convention, never sent by the gate itself).
    pub fn status(self) -> StatusCode {
        self.refusal().map_or(StatusCode::OK, |p| p.status)
    }

    /// The answer to a refused request; `None` for the outcomes that are not refusals.
    pub fn refusal(self) -> Option<&'static Page> {
        Some(match self {
            Decision::Allowed | Decision::Public | Decision::Own => return None,
            Decision::NoCert => &NO_CERT,
            Decision::Revoked => &REVOKED,
            Decision::Reset => &RESET,
            Decision::Expired => &EXPIRED,
            Decision::StoreUnavailable => &STORE_UNAVAILABLE,
            Decision::Misdirected => &MISDIRECTED,
            Decision::BadRequest => &BAD_REQUEST,
            Decision::SessionMismatch => &SESSION_MISMATCH,
        })
    }

    /// Whether the request is forwarded or answered by certgate's own endpoints.
    pub fn is_refusal(self) -> bool {
        self.refusal().is_some()
    }
}

/// A decision that is not a refusal is never rendered; it answers as `bad_request` should a
/// caller try (the status stays 200, so the mistake shows).
impl Outcome for Decision {
    fn status(&self) -> StatusCode {
        Decision::status(*self)
    }
    fn token(&self) -> &'static str {
        self.as_str()
    }
    fn title(&self) -> &'static str {
        self.refusal().unwrap_or(&BAD_REQUEST).title
    }
    fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.refusal().unwrap_or(&BAD_REQUEST).message)
    }
    fn steps(&self) -> &'static [&'static str] {
        self.refusal().unwrap_or(&BAD_REQUEST).steps
    }
}

/// How to make the browser ask again for a certificate: browsers remember the choice (or
/// the refusal to choose) for the session. Shared by every certificate refusal.
const ASK_AGAIN: &str = "Picked the wrong certificate, or none? The browser remembers that choice until it restarts: close <b>every</b> window of the browser (on a Mac, quit it), open this page again and pick the right certificate when the browser asks. In Chrome, Edge and Firefox the certificate issued for your account shows your account name.";

const NO_CERT: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "no_cert",
    title: "Client certificate required",
    message: "This page requires your client certificate, and your browser did not present one.",
    steps: &[
        "Not set up yet? Open the enrollment link your administrator sent you (or sign in again: the application sends you there). On the <b>Client Certificate Initialization</b> page choose a passphrase and click <b>Generate Certificate</b>, open the downloaded file to import it, then come back here.",
        ASK_AGAIN,
        "Lost your certificate (new computer, reinstalled browser)? Ask your administrator to reset it; you will get a new enrollment link.",
        "Signed in with a certificate before, and now the browser does not ask? It may have expired: browsers stop offering an expired certificate. Ask your administrator to reset it; you will get a new enrollment link.",
    ],
};

const REVOKED: Page = Page {
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

const RESET: Page = Page {
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

const EXPIRED: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "expired",
    title: "Certificate expired",
    message: "The client certificate your browser presented has expired, so it no longer signs you in.",
    steps: &[
        "Have a newer certificate (renewed, or made from a new enrollment link)? Close every window of the browser, open this page again and pick the newest certificate for your account.",
        "Otherwise ask your administrator to reset your certificate: you get a new enrollment link and make a new certificate there. An expired certificate cannot be renewed.",
        ASK_AGAIN,
    ],
};

const STORE_UNAVAILABLE: Page = Page {
    status: StatusCode::SERVICE_UNAVAILABLE,
    token: "store_unavailable",
    title: "Temporarily unavailable",
    message: "Your certificate cannot be checked right now. Nothing is wrong with it.",
    steps: &["Try again in a moment."],
};

const MISDIRECTED: Page = Page {
    status: StatusCode::MISDIRECTED_REQUEST,
    token: "misdirected",
    title: "Wrong host for this connection",
    message: "This request names a different host than the connection it was sent on.",
    steps: &["Reload the page; the browser opens a new connection for the right host."],
};

const BAD_REQUEST: Page = Page {
    status: StatusCode::BAD_REQUEST,
    token: "bad_request",
    title: "Bad request",
    message: "The request is malformed: its path has \"..\" segments, encoded slashes or backslashes, invalid escapes or look-alike dots, or its Host is missing, repeated or contradicts the address.",
    steps: &["Check the address and try again."],
};

const SESSION_MISMATCH: Page = Page {
    status: StatusCode::FORBIDDEN,
    token: "session_mismatch",
    title: "Signed in as someone else",
    message: "This browser's session belongs to another account than the client certificate it presented.",
    steps: &[
        "Sign out of the application, close every window of the browser, and sign in again with your own account and certificate.",
        ASK_AGAIN,
    ],
};

/// Why a connection was closed by the registry (the `reason` label of
/// `certgate_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Revoked,
    Reset,
    Expired,
    /// An operator asked (`certgate admin connections ACCOUNT --close`).
    Admin,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::Revoked,
        CloseReason::Reset,
        CloseReason::Expired,
        CloseReason::Admin,
    ];

    pub fn from_u8(v: u8) -> Option<CloseReason> {
        CloseReason::ALL
            .get(usize::from(v).checked_sub(1)?)
            .copied()
    }

    pub fn to_u8(self) -> u8 {
        self as u8 + 1
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Revoked => "revoked",
            CloseReason::Reset => "reset",
            CloseReason::Expired => "expired",
            CloseReason::Admin => "admin",
        }
    }

    pub fn of_decision(decision: Decision) -> Option<CloseReason> {
        match decision {
            Decision::Revoked => Some(CloseReason::Revoked),
            Decision::Reset => Some(CloseReason::Reset),
            Decision::Expired => Some(CloseReason::Expired),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_page() {
        for d in Decision::ALL {
            match d.refusal() {
                None => {
                    assert!(matches!(
                        d,
                        Decision::Allowed | Decision::Public | Decision::Own
                    ));
                    assert_eq!(d.status(), StatusCode::OK);
                }
                Some(page) => {
                    assert_eq!(page.token, d.as_str(), "{d:?}");
                    assert_eq!(Outcome::token(&d), d.as_str());
                    assert!(page.status.is_client_error() || page.status.is_server_error());
                    assert!(!page.message.is_empty() && !page.title.is_empty());
                }
            }
        }
    }
}
