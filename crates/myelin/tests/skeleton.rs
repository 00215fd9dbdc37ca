//! The server skeleton over HTTP, on both databases: versions, the signed server key and its
//! stability across restarts, federation version, well-known, health, metrics, errors, CORS,
//! request ids, the body limit and graceful shutdown.

use std::collections::BTreeMap;

use myelin_testkit::{TestServer, test_backends};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

#[tokio::test]
async fn client_versions_answers() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let response = server
            .http
            .get(server.client_url("/_matrix/client/versions"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{kind:?}");
        let body = json(response).await;
        let versions = body["versions"].as_array().expect("versions is an array");
        // Real clients (matrix-sdk) refuse every /v3 endpoint unless v1.1 or later is listed.
        assert!(versions.iter().any(|v| v == "v1.1"), "{kind:?}: {body}");
        server.stop().await;
    }
}

/// Fetches the key object over TLS and checks its self-signature with the key it publishes.
async fn fetch_and_verify_key(server: &TestServer) -> (String, String) {
    let response = server
        .federation_client()
        .get(server.federation_url("/_matrix/key/v2/server"))
        .send()
        .await
        .expect("TLS request with certificate and host name verified");
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    assert_eq!(body["server_name"], "localhost");
    let valid_until = body["valid_until_ts"].as_i64().unwrap();
    assert!(valid_until > myelin_service::now_millis(), "{body}");

    let verify_keys = body["verify_keys"].as_object().unwrap();
    assert_eq!(verify_keys.len(), 1, "{body}");
    let (key_id, key) = verify_keys.iter().next().unwrap();
    let public_key = key["key"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("ed25519:"), "{key_id}");

    let object: ruma::CanonicalJsonObject = serde_json::from_value(body.clone()).unwrap();
    let mut keys = BTreeMap::new();
    keys.insert(
        key_id.clone(),
        ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(&public_key).unwrap(),
    );
    let mut key_map = BTreeMap::new();
    key_map.insert("localhost".to_owned(), keys);
    ruma::signatures::verify_json(&key_map, &object)
        .expect("signature verifies with the published key");

    // And a tampered object does not.
    let mut tampered = object.clone();
    tampered.insert(
        "valid_until_ts".to_owned(),
        ruma::CanonicalJsonValue::Integer(1u32.into()),
    );
    assert!(ruma::signatures::verify_json(&key_map, &tampered).is_err());
    (key_id.clone(), public_key)
}

#[tokio::test]
async fn server_key_is_signed_and_stable_across_restarts() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let first = fetch_and_verify_key(&server).await;
        server.restart().await;
        let second = fetch_and_verify_key(&server).await;
        assert_eq!(first, second, "{kind:?}: the key changed across a restart");
        server.stop().await;
    }
}

#[tokio::test]
async fn federation_version_names_the_server() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let response = server
            .federation_client()
            .get(server.federation_url("/_matrix/federation/v1/version"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        assert_eq!(body["server"]["name"], "Myelin", "{kind:?}");
        assert_eq!(body["server"]["version"], env!("CARGO_PKG_VERSION"));
        server.stop().await;
    }
}

#[tokio::test]
async fn well_known_is_404_unless_configured() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        for path in ["/.well-known/matrix/client", "/.well-known/matrix/server"] {
            let response = server
                .http
                .get(server.client_url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(json(response).await["errcode"], "M_NOT_FOUND");
        }
        server.stop().await;

        let server = TestServer::start_with(kind, |config| {
            config.well_known.client = Some("https://matrix.example.org".to_owned());
            config.well_known.server = Some("matrix.example.org:443".try_into().unwrap());
        })
        .await;
        let client = json(
            server
                .http
                .get(server.client_url("/.well-known/matrix/client"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            client["m.homeserver"]["base_url"],
            "https://matrix.example.org"
        );
        let fed = json(
            server
                .http
                .get(server.client_url("/.well-known/matrix/server"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(fed["m.server"], "matrix.example.org:443");
        server.stop().await;
    }
}

#[tokio::test]
async fn unknown_path_and_wrong_method_are_unrecognized() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let response = server
            .http
            .get(server.client_url("/_matrix/client/v3/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(json(response).await["errcode"], "M_UNRECOGNIZED");

        let response = server
            .http
            .post(server.client_url("/_matrix/client/versions"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
        assert_eq!(json(response).await["errcode"], "M_UNRECOGNIZED");

        let response = server
            .federation_client()
            .get(server.federation_url("/_matrix/federation/v1/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(json(response).await["errcode"], "M_UNRECOGNIZED");

        // Complement's TestUnknownEndpoints: a known path with a method it lacks is 405
        // M_UNRECOGNIZED, for the client and media APIs on the client listener and the
        // federation API on the federation listener.
        for (method, url) in [
            (
                reqwest::Method::PUT,
                server.client_url("/_matrix/client/v3/login"),
            ),
            (
                reqwest::Method::PATCH,
                server.client_url("/_matrix/media/v3/upload"),
            ),
            (
                reqwest::Method::PUT,
                server.federation_url("/_matrix/federation/v1/version"),
            ),
        ] {
            let client = if url.contains("/_matrix/client") || url.contains("/_matrix/media") {
                server.http.clone()
            } else {
                server.federation_client()
            };
            let response = client.request(method.clone(), &url).send().await.unwrap();
            assert_eq!(response.status(), 405, "{method} {url}");
            assert_eq!(
                json(response).await["errcode"],
                "M_UNRECOGNIZED",
                "{method} {url}"
            );
        }
        server.stop().await;
    }
}

/// `listen.federation_on_client`: the client listener serves the federation and key APIs too
/// (a reverse proxy forwarding both to one port), with their 404/405; off (the default), it
/// serves neither.
#[tokio::test]
async fn the_client_listener_serves_federation_only_when_configured() {
    for kind in test_backends() {
        for on in [false, true] {
            let server = TestServer::start_with(kind, |config| {
                config.listen.federation_on_client = on;
            })
            .await;
            let response = server
                .http
                .get(server.client_url("/_matrix/federation/v1/version"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), if on { 200 } else { 404 }, "{on}");
            let body = json(response).await;
            if on {
                assert_eq!(body["server"]["name"], "Myelin", "{body}");
            } else {
                assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{body}");
            }
            let response = server
                .http
                .get(server.client_url("/_matrix/key/v2/server"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), if on { 200 } else { 404 }, "{on}");
            for (method, path, status) in [
                (reqwest::Method::PUT, "/_matrix/federation/v1/version", 405),
                (reqwest::Method::PUT, "/_matrix/key/v2/query", 405),
                (reqwest::Method::GET, "/_matrix/federation/v1/nope", 404),
            ] {
                let response = server
                    .http
                    .request(method.clone(), server.client_url(path))
                    .send()
                    .await
                    .unwrap();
                let expected = if on { status } else { 404 };
                assert_eq!(response.status(), expected, "{on} {method} {path}");
                assert_eq!(json(response).await["errcode"], "M_UNRECOGNIZED");
            }
            // Inbound federation requests still need X-Matrix on this listener.
            let response = server
                .http
                .get(server.client_url("/_matrix/federation/v1/query/profile?user_id=%40a%3Ab"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), if on { 401 } else { 404 }, "{on}");
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn cors_request_id_health_and_metrics() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let preflight = server
            .http
            .request(
                reqwest::Method::OPTIONS,
                server.client_url("/_matrix/client/versions"),
            )
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
            .await
            .unwrap();
        assert!(preflight.status().is_success(), "{}", preflight.status());
        assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
        let allowed = preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");

        let response = server
            .http
            .get(server.client_url("/_matrix/client/versions"))
            .header("Origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!id.is_empty());
        let next = server
            .http
            .get(server.client_url("/_matrix/client/versions"))
            .send()
            .await
            .unwrap();
        assert_ne!(
            next.headers()["x-request-id"].to_str().unwrap(),
            id,
            "request ids are unique"
        );

        let health = server
            .http
            .get(server.client_url("/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        let _ = server
            .http
            .get(server.client_url("/no/such/path"))
            .send()
            .await
            .unwrap();
        let metrics = server
            .http
            .get(server.client_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(r#"myelin_http_requests_total{method="GET",route="/_matrix/client/versions",status="200"} 2"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"route="unmatched",status="404""#),
            "{metrics}"
        );
        assert!(
            metrics.contains("myelin_http_request_duration_seconds_bucket"),
            "{metrics}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn oversized_body_is_too_large() {
    for kind in test_backends() {
        let server =
            TestServer::start_with(kind, |config| config.http.max_request_size = 2048).await;
        let response = server
            .http
            .get(server.client_url("/_matrix/client/versions"))
            .body(vec![b'x'; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(json(response).await["errcode"], "M_TOO_LARGE");
        server.stop().await;
    }
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let (client_addr, _) = server.addrs();
        // A request whose body is still arriving when the shutdown signal comes.
        let mut stream = tokio::net::TcpStream::connect(client_addr).await.unwrap();
        stream
            .write_all(
                b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{",
            )
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        server.signal_stop();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // New connections are refused once shutdown has begun...
        assert!(
            tokio::net::TcpStream::connect(client_addr).await.is_err(),
            "{kind:?}"
        );
        // ...but the request in flight completes.
        stream.write_all(b"}").await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200"), "{kind:?}: {response}");
        server.wait_stopped().await;
    }
}
