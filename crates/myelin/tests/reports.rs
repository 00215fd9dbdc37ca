//! Reporting events, rooms and users, on both databases: what is stored for the admins, and the
//! `M_NOT_FOUND` answers that tell a reporter nothing about what they may not see.

use myelin_store::{Store, StoreOptions};
use myelin_testkit::{TestServer, enc, test_backends};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn reports_are_stored_and_refused_for_what_the_reporter_cannot_see() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let eve = server.register("eve").await;
        let room = server
            .create_room(
                &alice,
                json!({"preset": "private_chat", "invite": [bob.user_id]}),
            )
            .await;
        server
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                &bob.access_token,
                json!({}),
            )
            .await;
        let (_, sent) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t",
                    enc(&room)
                ),
                &alice.access_token,
                json!({"msgtype": "m.text", "body": "spam"}),
            )
            .await;
        let event = sent["event_id"].as_str().unwrap().to_owned();

        let report_event =
            |user: &myelin_testkit::TestUser, room: &str, event: &str, body: serde_json::Value| {
                let path = format!(
                    "/_matrix/client/v3/rooms/{}/report/{}",
                    enc(room),
                    enc(event)
                );
                let token = user.access_token.clone();
                let server = &server;
                async move { server.post(&path, &token, body).await }
            };
        // A member reports what they can see.
        let (status, body) = report_event(&bob, &room, &event, json!({"reason": "spam"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // A stranger, an unknown event and an unknown room all get the same answer.
        for (user, room, event) in [
            (&eve, room.as_str(), event.as_str()),
            (&bob, room.as_str(), "$nope"),
            (&bob, "!nope:localhost", event.as_str()),
        ] {
            let (status, body) = report_event(user, room, event, json!({"reason": "x"})).await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
                "{room} {event}"
            );
        }
        // A reason past the cap is refused and nothing is stored for it.
        let long = "x".repeat(myelin_service::rooms::MAX_REPORT_REASON_BYTES + 1);
        let (status, body) = report_event(&bob, &room, &event, json!({"reason": long})).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
        );

        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/rooms/{}/report", enc(&room)),
                &eve.access_token,
                json!({"reason": "bad room"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = server
            .post(
                "/_matrix/client/v3/rooms/%21nope%3Alocalhost/report",
                &eve.access_token,
                json!({"reason": "?"}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );

        let (status, body) = server
            .post(
                &format!("/_matrix/client/v3/users/{}/report", enc(&alice.user_id)),
                &eve.access_token,
                json!({"reason": "rude"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = server
            .post(
                "/_matrix/client/v3/users/%40ghost%3Alocalhost/report",
                &eve.access_token,
                json!({"reason": "?"}),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );

        let store = Store::open(&server.db.url, &StoreOptions::default())
            .await
            .unwrap();
        let reports = store.reports(10).await.unwrap();
        let summary: Vec<_> = reports
            .iter()
            .map(|r| {
                (
                    r.reporter.as_str(),
                    r.room_id.as_deref(),
                    r.event_id.as_deref(),
                    r.user_id.as_deref(),
                    r.reason.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    eve.user_id.as_str(),
                    None,
                    None,
                    Some(alice.user_id.as_str()),
                    Some("rude")
                ),
                (
                    eve.user_id.as_str(),
                    Some(room.as_str()),
                    None,
                    None,
                    Some("bad room")
                ),
                (
                    bob.user_id.as_str(),
                    Some(room.as_str()),
                    Some(event.as_str()),
                    None,
                    Some("spam")
                ),
            ]
        );
    }
}
