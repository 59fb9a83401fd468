//! What an answer certgate writes itself is made of. Every outcome that ends in such an
//! answer — a refused request ([`crate::core::decision::Decision`]), a refused enrollment,
//! an admin error, an upstream failure — implements [`Outcome`] beside the type that
//! defines it, so its status, token and text live in one place; `http::pages` turns any
//! outcome into a response (HTML for browsers, JSON for everyone else) in one place.

use std::borrow::Cow;

use http::StatusCode;
use http::header::HeaderMap;

/// One answer certgate writes itself, before it is rendered.
pub trait Outcome {
    fn status(&self) -> StatusCode;
    /// Machine token: the `error` field of JSON answers and the code on HTML pages.
    fn token(&self) -> &'static str;
    /// The heading of the HTML page.
    fn title(&self) -> &'static str;
    /// One sentence, plain text, for JSON and the HTML lead.
    fn message(&self) -> Cow<'static, str>;
    /// What to do, as HTML list items (static text only).
    fn steps(&self) -> &'static [&'static str] {
        &[]
    }
    /// Headers the answer needs beyond the common ones (`Allow`, `WWW-Authenticate`,
    /// `Retry-After`).
    fn add_headers(&self, _headers: &mut HeaderMap) {}
}

/// An outcome whose text is fixed: most refusals are one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub status: StatusCode,
    pub token: &'static str,
    pub title: &'static str,
    pub message: &'static str,
    pub steps: &'static [&'static str],
}

impl Outcome for Page {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn token(&self) -> &'static str {
        self.token
    }
    fn title(&self) -> &'static str {
        self.title
    }
    fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.message)
    }
    fn steps(&self) -> &'static [&'static str] {
        self.steps
    }
}

impl<T: Outcome + ?Sized> Outcome for &T {
    fn status(&self) -> StatusCode {
        (**self).status()
    }
    fn token(&self) -> &'static str {
        (**self).token()
    }
    fn title(&self) -> &'static str {
        (**self).title()
    }
    fn message(&self) -> Cow<'static, str> {
        (**self).message()
    }
    fn steps(&self) -> &'static [&'static str] {
        (**self).steps()
    }
    fn add_headers(&self, headers: &mut HeaderMap) {
        (**self).add_headers(headers)
    }
}

/// A request with a method the endpoint does not take; `allow` is the `Allow` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodNotAllowed(pub &'static str);

impl Outcome for MethodNotAllowed {
    fn status(&self) -> StatusCode {
        StatusCode::METHOD_NOT_ALLOWED
    }
    fn token(&self) -> &'static str {
        "method_not_allowed"
    }
    fn title(&self) -> &'static str {
        "Method not allowed"
    }
    fn message(&self) -> Cow<'static, str> {
        Cow::Owned(format!("Use {}.", self.0))
    }
    fn add_headers(&self, headers: &mut HeaderMap) {
        headers.insert(http::header::ALLOW, http::HeaderValue::from_static(self.0));
    }
}

/// No such endpoint under certgate's own prefix.
pub const NOT_FOUND: Page = Page {
    status: StatusCode::NOT_FOUND,
    token: "not_found",
    title: "Not found",
    message: "There is no such certgate endpoint.",
    steps: &[],
};
