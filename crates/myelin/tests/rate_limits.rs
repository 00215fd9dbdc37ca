//! Rate limits on the endpoints the spec marks as rate-limited: per address before login, per
//! user after; 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`; off when `rate_limits.enabled` is
//! false (every other test runs that way).

use myelin_service::config::Bucket;
use myelin_testkit::{TestServer, test_backends};
use serde_json::json;

#[tokio::test]
async fn logins_are_limited_per_address_and_sends_per_user() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.rate_limits.enabled = true;
            config.rate_limits.per_address = Bucket {
                per_second: 0.01,
                burst: 3,
            };
            config.rate_limits.per_user = Bucket {
                per_second: 0.01,
                burst: 4,
            };
        })
        .await;
        // Registration itself counts against the address: one of the three.
        let alice = server.register("alice").await;
        let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"});
        for _ in 0..2 {
            let (status, _) = server
                .call(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/login",
                    None,
                    Some(login.clone()),
                )
                .await;
            assert_eq!(status, 403);
        }
        let (status, body) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(login),
            )
            .await;
        assert_eq!(status, 429, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        assert!(
            body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 1000),
            "{body}"
        );

        // A logged-in user has a bucket of their own.
        let (_, room) = server
            .post(
                "/_matrix/client/v3/createRoom",
                &alice.access_token,
                json!({}),
            )
            .await;
        let room = room["room_id"].as_str().unwrap().replace('!', "%21");
        let mut statuses = Vec::new();
        for i in 0..6 {
            let (status, _) = server
                .put(
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r{i}"),
                    &alice.access_token,
                    json!({"body": "x", "msgtype": "m.text"}),
                )
                .await;
            statuses.push(status.as_u16());
        }
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert!(limited >= 2 && statuses[0] == 200, "{statuses:?}");
        server.stop().await;
    }
}
