//! `listen_proxy_protocol: true`: the PROXY header's client address is the one the gateway
//! uses (X-Forwarded-For), and a connection without a header is refused.

mod support;

use support::{Echo, Harness, LeafSpec, Options, within};

fn options() -> Options {
    Options {
        extra: "listen_proxy_protocol: true\n".into(),
        ..Options::default()
    }
}

#[tokio::test]
async fn v1_header_names_the_client() {
    let h = Harness::with(options()).await;
    let alice = h.pki.client_ca.issue(&LeafSpec::account("alice"));
    let conn = within(
        "connect",
        h.raw(Some(&alice))
            .connect_after(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n"),
    )
    .await
    .expect("handshake after the PROXY header");
    let mut h1 = conn.into_http1().await;
    let r = h1.get("/app").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.all("x-forwarded-for"), vec!["203.0.113.7".to_string()]);
}

#[tokio::test]
async fn v2_header_names_the_client() {
    let h = Harness::with(options()).await;
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 198, 51, 100, 20, 127, 0, 0, 1]);
    header.extend_from_slice(&50000u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    let conn = within("connect", h.raw(None).connect_after(&header))
        .await
        .expect("handshake after the PROXY header");
    let mut h1 = conn.into_http1().await;
    let r = h1.get("/public/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        Echo::parse(&r.body).all("x-forwarded-for"),
        vec!["198.51.100.20".to_string()]
    );
}

#[tokio::test]
async fn connection_without_a_header_is_refused() {
    let h = Harness::with(options()).await;
    let failure = h.raw(None).expect_refused("no PROXY header").await;
    assert!(
        failure.alert.is_none(),
        "closed before TLS, no alert: {failure:?}"
    );
}
