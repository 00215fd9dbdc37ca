//! Client-side helpers for tests with several servers: polling until something holds, and the
//! room reads and writes those tests repeat (joining through a server, saying something,
//! reading messages and memberships).

use serde_json::json;

use crate::{TestServer, TestUser, enc};

/// Polls `check` until it holds (20 s at most).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The bodies of the room's messages as `user` reads them on `server`, oldest first.
pub async fn bodies(server: &TestServer, user: &TestUser, room_id: &str) -> Vec<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(room_id)
            ),
            &user.access_token,
        )
        .await;
    if status != 200 {
        return Vec::new();
    }
    let mut out: Vec<String> = body["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    out
}

/// `user_id`'s membership in the room's current state as `user` reads it on `server`.
pub async fn membership(
    server: &TestServer,
    user: &TestUser,
    room_id: &str,
    user_id: &str,
) -> Option<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room_id),
                enc(user_id)
            ),
            &user.access_token,
        )
        .await;
    (status == 200)
        .then(|| body["membership"].as_str().map(str::to_owned))
        .flatten()
}

/// Sends `text` as an `m.room.message` (the text is the transaction id too).
pub async fn say(server: &TestServer, user: &TestUser, room_id: &str, text: &str) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room_id),
                enc(text)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// `user` joins `room_id` through `via` (200 asserted).
pub async fn join_via(server: &TestServer, user: &TestUser, room_id: &str, via: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}?via={via}", enc(room_id)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{} joining: {body}", user.user_id);
}
