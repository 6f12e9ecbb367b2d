//! The sidecar's HTTP port on a developer's machine: it answers only loopback `Host` names (and
//! those `--allowed-hosts` adds), whatever the route; devstack's state changes refuse a foreign
//! `Origin` and a body that is not JSON; Dapr's own binding API keeps daprd's behaviour.

use reqwest::StatusCode;
use serde_json::Value;
use test_support::devstack::ASPNET_BODY;

use crate::{QUEUE, harness::InProcess};

async fn get_with_host(sidecar: &InProcess, path: &str, host: &str) -> (StatusCode, Value) {
    let response = sidecar
        .http
        .get(sidecar.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_every_route_and_an_allowed_one_answered() {
    let sidecar = InProcess::start(&["--allowed-hosts", "devbox.lan,.app.github.dev"]).await;
    let port = sidecar.http_addr.port();
    for path in [
        "/devstack/status",
        "/devstack/",
        "/v1.0/metadata",
        "/v1.0/healthz",
    ] {
        let (status, body) = get_with_host(&sidecar, path, "evil.example").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains("--allowed-hosts"),
            "{path}: {body}"
        );
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            format!("devbox.lan:{port}"),
            format!("my-{port}.app.github.dev"),
        ] {
            let (status, _) = get_with_host(&sidecar, path, &host).await;
            assert!(
                status.is_success() || status.is_redirection(),
                "{path} {host}: {status}"
            );
        }
    }
    // The binding API too: a DNS-rebinding page cannot reach it under its own name.
    let refused = sidecar
        .http
        .post(sidecar.url(&format!("/v1.0/bindings/{QUEUE}")))
        .header("host", format!("evil.example:{port}"))
        .body(ASPNET_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(sidecar.counts(QUEUE).await.produced, 0);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_cross_origin_state_change_is_refused_and_daprs_binding_api_keeps_daprds_behaviour() {
    let sidecar = InProcess::start(&[]).await;
    let own = format!("http://{}", sidecar.http_addr);
    for path in [
        "/devstack/faults",
        "/devstack/dead-letters/message-queue/purge",
        "/devstack/produce",
    ] {
        for (origin, content_type, status) in [
            ("http://evil.example", "application/json", 403),
            ("null", "application/json", 403),
            (own.as_str(), "text/plain", 415),
        ] {
            let answer = sidecar
                .http
                .post(sidecar.url(path))
                .header("origin", origin)
                .header("content-type", content_type)
                .body(r#"{"all":true}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status().as_u16(), status, "{path} from {origin}");
            let body: Value = answer.json().await.unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
        // Its own page may: past the guard (the route's own answer, whatever it is).
        let answer = sidecar
            .http
            .post(sidecar.url(path))
            .header("origin", &own)
            .header("content-type", "application/json")
            .body(r#"{"all":true}"#)
            .send()
            .await
            .unwrap();
        assert!(
            ![StatusCode::FORBIDDEN, StatusCode::UNSUPPORTED_MEDIA_TYPE].contains(&answer.status()),
            "{path}: {}",
            answer.status()
        );
    }
    // daprd takes a cross-origin text/plain POST on its binding API (a browser sends one without
    // a preflight); so does the sidecar, as docs/local-stack.md says.
    let taken = sidecar
        .http
        .post(sidecar.url(&format!("/v1.0/bindings/{QUEUE}")))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(ASPNET_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), StatusCode::NO_CONTENT);
    assert!(taken.headers().get("access-control-allow-origin").is_none());
    assert_eq!(sidecar.counts(QUEUE).await.produced, 1);
    sidecar.stop().await;
}
