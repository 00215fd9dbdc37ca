//! The bounds on user-interactive authentication (issue 13), on both databases: password
//! guesses through UIA are limited per user (with rate limits otherwise off, as in every test
//! server: this bound is not a throughput limit), and one client address cannot hold more than
//! its share of live UIA sessions. Each refusal sits next to the allowed request.

use myelin_testkit::{TestServer, TestUser, test_backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Mirrors `myelin_service::uia::MAX_PASSWORD_FAILURES` and `MAX_SESSIONS_PER_ADDRESS`.
const MAX_PASSWORD_FAILURES: usize = 5;
const MAX_SESSIONS_PER_ADDRESS: usize = 32;

fn password_auth(user: &TestUser, password: &str, session: &str) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id},
           "password": password, "session": session})
}

/// Logs `user` in again as a new device `device_id`.
async fn second_device(server: &TestServer, user: &TestUser, device_id: &str) {
    let (status, body) = server
        .call(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": user.user_id},
                        "password": user.password, "device_id": device_id})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn delete_device(
    server: &TestServer,
    user: &TestUser,
    device: &str,
    body: Value,
) -> (StatusCode, Value) {
    server
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{device}"),
            Some(&user.access_token),
            Some(body),
        )
        .await
}

async fn session_of(server: &TestServer, user: &TestUser, device: &str) -> String {
    let (status, challenge) = delete_device(server, user, device, json!({})).await;
    assert_eq!(status, 401, "{challenge}");
    challenge["session"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn password_guesses_through_uia_are_limited_per_user() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let guesser = server.register("guesser").await;
        let control = server.register("control").await;
        for user in [&guesser, &control] {
            second_device(&server, user, "PHONE").await;
            second_device(&server, user, "TABLET").await;
        }

        // Wrong passwords are failed stages (401, M_FORBIDDEN), up to the bound.
        let session = session_of(&server, &guesser, "PHONE").await;
        for attempt in 0..MAX_PASSWORD_FAILURES {
            let (status, body) = delete_device(
                &server,
                &guesser,
                "PHONE",
                json!({"auth": password_auth(&guesser, &format!("guess{attempt}"), &session)}),
            )
            .await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")),
                "{body}"
            );
        }
        // Past it, even the right password is not checked: 429, and the device stays.
        let (status, body) = delete_device(
            &server,
            &guesser,
            "PHONE",
            json!({"auth": password_auth(&guesser, &guesser.password, &session)}),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        let retry = body["retry_after_ms"].as_u64().unwrap();
        assert!((1..=60_000).contains(&retry), "{retry}");
        let (status, _) = server
            .get("/_matrix/client/v3/devices/PHONE", &guesser.access_token)
            .await;
        assert_eq!(status, 200, "the device is still there");
        // The bound is the user's, whichever endpoint: POST /delete_devices too.
        let (status, challenge) = server
            .post(
                "/_matrix/client/v3/delete_devices",
                &guesser.access_token,
                json!({"devices": ["TABLET"]}),
            )
            .await;
        assert_eq!(status, 401, "{challenge}");
        let (status, body) = server
            .post(
                "/_matrix/client/v3/delete_devices",
                &guesser.access_token,
                json!({"devices": ["TABLET"],
                       "auth": password_auth(&guesser, &guesser.password, challenge["session"].as_str().unwrap())}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("M_LIMIT_EXCEEDED")),
            "{body}"
        );

        // Positive control: another user, after a wrong guess of their own, deletes with the
        // right password through both endpoints.
        let session = session_of(&server, &control, "PHONE").await;
        let (status, _) = delete_device(
            &server,
            &control,
            "PHONE",
            json!({"auth": password_auth(&control, "wrong", &session)}),
        )
        .await;
        assert_eq!(status, 401);
        let (status, body) = delete_device(
            &server,
            &control,
            "PHONE",
            json!({"auth": password_auth(&control, &control.password, &session)}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (_, challenge) = server
            .post(
                "/_matrix/client/v3/delete_devices",
                &control.access_token,
                json!({"devices": ["TABLET"]}),
            )
            .await;
        let (status, body) = server
            .post(
                "/_matrix/client/v3/delete_devices",
                &control.access_token,
                json!({"devices": ["TABLET"],
                       "auth": password_auth(&control, &control.password, challenge["session"].as_str().unwrap())}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = server
            .get("/_matrix/client/v3/devices/TABLET", &control.access_token)
            .await;
        assert_eq!(status, 404);
        server.stop().await;
    }
}

#[tokio::test]
async fn many_uia_sessions_from_one_address_replace_its_oldest_and_never_fail() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let user = server.register("flooder").await;
        second_device(&server, &user, "PHONE").await;
        let first = session_of(&server, &user, "PHONE").await;
        // Asking again with a live session answers with that session.
        let (status, body) =
            delete_device(&server, &user, "PHONE", json!({"auth": {"session": first}})).await;
        assert_eq!(
            (status, body["session"].as_str()),
            (StatusCode::UNAUTHORIZED, Some(first.as_str())),
            "{body}"
        );

        // Many more flows from the same address (anonymous registrations): each a 401
        // challenge, never a 5xx.
        let mut newest = String::new();
        for _ in 0..MAX_SESSIONS_PER_ADDRESS * 3 {
            let (status, body) = server
                .call(
                    Method::POST,
                    "/_matrix/client/v3/register",
                    None,
                    Some(json!({"password": "pw"})),
                )
                .await;
            assert_eq!(status, 401, "{body}");
            newest = body["session"].as_str().unwrap().to_owned();
        }
        // The oldest session made room: asking with it starts a new one ...
        let (status, body) =
            delete_device(&server, &user, "PHONE", json!({"auth": {"session": first}})).await;
        assert_eq!(status, 401, "{body}");
        assert_ne!(
            body["session"].as_str(),
            Some(first.as_str()),
            "the oldest session was replaced"
        );
        // ... while the newest is live, and a flow started now completes.
        let (status, body) = server
            .call(Method::POST, "/_matrix/client/v3/register", None,
                  Some(json!({"username": "late", "password": "pw", "auth": {"type": "m.login.dummy", "session": newest}})))
            .await;
        assert_eq!(status, 200, "{body}");
        let session = session_of(&server, &user, "PHONE").await;
        let (status, body) = delete_device(
            &server,
            &user,
            "PHONE",
            json!({"auth": password_auth(&user, &user.password, &session)}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}
