//! Per-user data over the client API, on both databases: filters, account data (global and per
//! room), room tags, push rules, capabilities, VoIP and profiles, with every error path.

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Client<'a> {
    server: &'a TestServer,
}

impl Client<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .server
            .http
            .request(method, self.server.client_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .server
            .http
            .request(method, self.server.client_url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn get(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&user.access_token), None)
            .await
    }
    async fn put(&self, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(&user.access_token), Some(body))
            .await
    }
    async fn post(&self, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&user.access_token), Some(body))
            .await
    }
    async fn delete(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(&user.access_token), None)
            .await
    }
}

fn user_path(user: &TestUser, rest: &str) -> String {
    format!("/_matrix/client/v3/user/{}{rest}", enc(&user.user_id))
}

const ROOM: &str = "!someroom:example.org";

#[track_caller]
fn assert_error(status: StatusCode, body: &Value, want_status: u16, errcode: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["errcode"], errcode, "{body}");
}

#[tokio::test]
async fn filters_are_stored_per_user() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let filter = json!({
            "room": {"timeline": {"limit": 10, "types": ["m.room.message"]}},
            "event_fields": ["type", "content"],
        });

        let (status, body) = c
            .post(&user_path(&alice, "/filter"), &alice, filter.clone())
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let filter_id = body["filter_id"].as_str().unwrap().to_owned();
        assert!(!filter_id.starts_with('{'));

        let (status, body) = c
            .get(&user_path(&alice, &format!("/filter/{filter_id}")), &alice)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room"]["timeline"]["limit"], 10);
        assert_eq!(body["room"]["timeline"]["types"], json!(["m.room.message"]));
        assert_eq!(body["event_fields"], json!(["type", "content"]));

        // The same filter again gets the same id; a different one a new id.
        let (_, again) = c
            .post(&user_path(&alice, "/filter"), &alice, filter.clone())
            .await;
        assert_eq!(again["filter_id"], filter_id.as_str());
        let (_, other) = c
            .post(
                &user_path(&alice, "/filter"),
                &alice,
                json!({"presence": {"limit": 0}}),
            )
            .await;
        assert_ne!(other["filter_id"], filter_id.as_str());

        // Unknown ids, non-numeric ids and another user's filter are not found.
        let (status, body) = c.get(&user_path(&alice, "/filter/999999"), &alice).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        let (status, body) = c.get(&user_path(&alice, "/filter/nonsense"), &alice).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        let (status, body) = c
            .get(&user_path(&bob, &format!("/filter/{filter_id}")), &bob)
            .await;
        assert_error(status, &body, 404, "M_NOT_FOUND");

        // Only for yourself.
        let (status, body) = c
            .post(&user_path(&bob, "/filter"), &alice, filter.clone())
            .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        let (status, body) = c
            .get(&user_path(&alice, &format!("/filter/{filter_id}")), &bob)
            .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");

        // Not a user id.
        let (status, body) = c
            .post(
                "/_matrix/client/v3/user/notauser/filter",
                &alice,
                filter.clone(),
            )
            .await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");

        // Bad filters.
        let (status, body) = c
            .post(
                &user_path(&alice, "/filter"),
                &alice,
                json!({"room": {"timeline": {"limit": "ten"}}}),
            )
            .await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (status, body) = c
            .raw(
                Method::POST,
                &user_path(&alice, "/filter"),
                &alice.access_token,
                "{not json",
            )
            .await;
        assert_error(status, &body, 400, "M_NOT_JSON");

        // No token.
        let (status, body) = c
            .call(
                Method::POST,
                &user_path(&alice, "/filter"),
                None,
                Some(filter),
            )
            .await;
        assert_error(status, &body, 401, "M_MISSING_TOKEN");
    }
}

#[tokio::test]
async fn global_account_data_round_trips() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let path = user_path(&alice, "/account_data/org.example.custom");

        let (status, body) = c.get(&path, &alice).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");

        let (status, body) = c.put(&path, &alice, json!({"a": 1})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body, json!({}));
        let (status, body) = c.get(&path, &alice).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"a": 1}));

        // Replaced, not merged.
        c.put(&path, &alice, json!({"b": [true, null]})).await;
        let (_, body) = c.get(&path, &alice).await;
        assert_eq!(body, json!({"b": [true, null]}));

        // Other users' account data is neither readable nor writable.
        let (status, body) = c.get(&path, &bob).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        let (status, body) = c.put(&path, &bob, json!({})).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        // Bob's own space is separate.
        let (status, body) = c
            .get(&user_path(&bob, "/account_data/org.example.custom"), &bob)
            .await;
        assert_error(status, &body, 404, "M_NOT_FOUND");

        // Content must be a JSON object.
        let (status, body) = c.put(&path, &alice, json!([1, 2])).await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (status, body) = c
            .raw(Method::PUT, &path, &alice.access_token, "not json")
            .await;
        assert_error(status, &body, 400, "M_NOT_JSON");
        let (_, body) = c.get(&path, &alice).await;
        assert_eq!(
            body,
            json!({"b": [true, null]}),
            "a refused write changed nothing"
        );

        // m.push_rules belongs to the server.
        let (status, body) = c
            .put(
                &user_path(&alice, "/account_data/m.push_rules"),
                &alice,
                json!({}),
            )
            .await;
        assert_error(status, &body, 405, "M_BAD_JSON");
    }
}

#[tokio::test]
async fn room_account_data_round_trips() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let path = user_path(
            &alice,
            &format!("/rooms/{}/account_data/org.example.room", enc(ROOM)),
        );
        let global = user_path(&alice, "/account_data/org.example.room");

        let (status, body) = c.get(&path, &alice).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        let (status, body) = c.put(&path, &alice, json!({"colour": "blue"})).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let (status, body) = c.get(&path, &alice).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"colour": "blue"}));
        // Room and global account data of the same type are distinct.
        let (status, body) = c.get(&global, &alice).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        // So are rooms.
        let other_room = user_path(
            &alice,
            &format!(
                "/rooms/{}/account_data/org.example.room",
                enc("!other:example.org")
            ),
        );
        let (status, body) = c.get(&other_room, &alice).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");

        let (status, body) = c.get(&path, &bob).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        let (status, body) = c.put(&path, &bob, json!({})).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");

        let (status, body) = c.put(&path, &alice, json!("a string")).await;
        assert_error(status, &body, 400, "M_BAD_JSON");

        // m.fully_read is set through /read_markers.
        let fully_read = user_path(
            &alice,
            &format!("/rooms/{}/account_data/m.fully_read", enc(ROOM)),
        );
        let (status, body) = c.put(&fully_read, &alice, json!({"event_id": "$x"})).await;
        assert_error(status, &body, 405, "M_BAD_JSON");

        // Not a room id.
        let bad_room = user_path(
            &alice,
            &format!(
                "/rooms/{}/account_data/org.example.room",
                enc("@notaroom:example.org")
            ),
        );
        let (status, body) = c.get(&bad_room, &alice).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
        let (status, body) = c.put(&bad_room, &alice, json!({})).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
}

#[tokio::test]
async fn room_tags_are_m_tag_account_data() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let tags = user_path(&alice, &format!("/rooms/{}/tags", enc(ROOM)));

        let (status, body) = c.get(&tags, &alice).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body, json!({"tags": {}}));

        let (status, body) = c
            .put(
                &format!("{tags}/m.favourite"),
                &alice,
                json!({"order": 0.25}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({}));
        c.put(&format!("{tags}/u.work"), &alice, json!({})).await;
        let (_, body) = c.get(&tags, &alice).await;
        assert_eq!(
            body,
            json!({"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
        );

        // Sync delivers tags as the room's m.tag account data.
        let m_tag = user_path(&alice, &format!("/rooms/{}/account_data/m.tag", enc(ROOM)));
        let (status, body) = c.get(&m_tag, &alice).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
        );

        let (status, body) = c.delete(&format!("{tags}/m.favourite"), &alice).await;
        assert_eq!(status, 200, "{body}");
        let (_, body) = c.get(&tags, &alice).await;
        assert_eq!(body, json!({"tags": {"u.work": {}}}));
        // Deleting a tag that is not there is fine.
        let (status, _) = c.delete(&format!("{tags}/m.favourite"), &alice).await;
        assert_eq!(status, 200);

        for (status, body) in [
            c.get(&tags, &bob).await,
            c.put(&format!("{tags}/u.x"), &bob, json!({})).await,
            c.delete(&format!("{tags}/u.work"), &bob).await,
        ] {
            assert_error(status, &body, 403, "M_FORBIDDEN");
        }
        let (status, body) = c
            .put(&format!("{tags}/u.x"), &alice, json!({"order": "first"}))
            .await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (_, body) = c.get(&tags, &alice).await;
        assert_eq!(body, json!({"tags": {"u.work": {}}}));
    }
}

#[tokio::test]
async fn capabilities_list_room_versions() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let (status, body) = c.get("/_matrix/client/v3/capabilities", &alice).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let caps = &body["capabilities"];
        assert_eq!(caps["m.room_versions"]["default"], "12");
        assert_eq!(
            caps["m.room_versions"]["available"],
            json!({"1": "stable", "2": "stable", "3": "stable", "4": "stable", "5": "stable",
                   "6": "stable", "7": "stable", "8": "stable", "9": "stable", "10": "stable",
                   "11": "stable", "12": "stable", "org.matrix.12.4243": "unstable"})
        );
        assert_eq!(caps["m.change_password"]["enabled"], true);
        assert_eq!(caps["m.set_displayname"]["enabled"], true);
        assert_eq!(caps["m.set_avatar_url"]["enabled"], true);
        assert_eq!(caps["m.3pid_changes"]["enabled"], false);

        let (status, body) = c
            .call(Method::GET, "/_matrix/client/v3/capabilities", None, None)
            .await;
        assert_error(status, &body, 401, "M_MISSING_TOKEN");
        server.stop().await;

        // rooms.default_room_version: what createRoom without a version makes, and what the
        // capability advertises.
        let server = TestServer::start_with(kind, |config| {
            config.rooms.default_room_version = "10".to_owned();
        })
        .await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let (_, body) = c.get("/_matrix/client/v3/capabilities", &alice).await;
        assert_eq!(body["capabilities"]["m.room_versions"]["default"], "10");
        let room = server.create_room(&alice, json!({})).await;
        let (status, create) = c
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                    enc(&room)
                ),
                &alice,
            )
            .await;
        assert_eq!(status, 200, "{create}");
        assert_eq!(create["room_version"], "10");
        assert_eq!(create["creator"], alice.user_id);
        server.stop().await;
    }
}

#[test]
fn the_default_room_version_must_be_stable_and_creatable() {
    let mut config = myelin_service::config::Config::default();
    assert_eq!(config.rooms.default_room_version, "12");
    config.validate().unwrap();
    for bad in ["org.matrix.12.4243", "99", ""] {
        config.rooms.default_room_version = bad.to_owned();
        let problem = config.validate().unwrap_err();
        assert_eq!(problem.key, "rooms.default_room_version", "{bad}");
    }
    config.rooms.default_room_version = "1".to_owned();
    config.validate().unwrap();
}

#[tokio::test]
async fn turn_server_is_empty_when_unconfigured() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let (status, body) = c.get("/_matrix/client/v3/voip/turnServer", &alice).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body, json!({}));
        let (status, body) = c
            .call(
                Method::GET,
                "/_matrix/client/v3/voip/turnServer",
                None,
                None,
            )
            .await;
        assert_error(status, &body, 401, "M_MISSING_TOKEN");
    }
}

#[tokio::test]
async fn profiles_of_local_users() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let profile = format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id));

        // A new account's display name is its localpart; no avatar.
        let (status, body) = c.get(&profile, &bob).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body, json!({"displayname": "alice"}));
        let (status, body) = c.get(&format!("{profile}/displayname"), &bob).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"displayname": "alice"}));
        let (status, body) = c.get(&format!("{profile}/avatar_url"), &bob).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({}));

        let (status, body) = c
            .put(
                &format!("{profile}/displayname"),
                &alice,
                json!({"displayname": "Alice A."}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = c
            .put(
                &format!("{profile}/avatar_url"),
                &alice,
                json!({"avatar_url": "mxc://example.org/abc"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, body) = c.get(&profile, &bob).await;
        assert_eq!(
            body,
            json!({"displayname": "Alice A.", "avatar_url": "mxc://example.org/abc"})
        );
        let (_, body) = c.get(&format!("{profile}/avatar_url"), &alice).await;
        assert_eq!(body, json!({"avatar_url": "mxc://example.org/abc"}));

        // Profiles can be read without a token.
        let (status, body) = c.call(Method::GET, &profile, None, None).await;
        assert_eq!(status, 200, "{body}");

        // Clearing the display name.
        let (status, _) = c
            .put(&format!("{profile}/displayname"), &alice, json!({}))
            .await;
        assert_eq!(status, 200);
        let (_, body) = c.get(&profile, &bob).await;
        assert_eq!(body, json!({"avatar_url": "mxc://example.org/abc"}));

        // Only the owner changes a profile.
        let (status, body) = c
            .put(
                &format!("{profile}/displayname"),
                &bob,
                json!({"displayname": "evil"}),
            )
            .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        let (status, body) = c
            .put(
                &format!("{profile}/avatar_url"),
                &bob,
                json!({"avatar_url": "mxc://x/y"}),
            )
            .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");

        // Too long.
        let (status, body) = c
            .put(
                &format!("{profile}/displayname"),
                &alice,
                json!({"displayname": "x".repeat(300)}),
            )
            .await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (status, body) = c
            .put(
                &format!("{profile}/displayname"),
                &alice,
                json!({"displayname": 5}),
            )
            .await;
        assert_error(status, &body, 400, "M_BAD_JSON");

        // Unknown local users are not found; a remote user's server that cannot be reached
        // is a 502 (as Synapse answers).
        let server_name = alice.user_id.split_once(':').unwrap().1;
        for (user, status_wanted, errcode) in [
            (format!("@nobody:{server_name}"), 404, "M_NOT_FOUND"),
            ("@someone:remote.example".to_owned(), 502, "M_UNKNOWN"),
        ] {
            let unknown = format!("/_matrix/client/v3/profile/{}", enc(&user));
            for path in [
                unknown.clone(),
                format!("{unknown}/displayname"),
                format!("{unknown}/avatar_url"),
            ] {
                let (status, body) = c.get(&path, &alice).await;
                assert_error(status, &body, status_wanted, errcode);
            }
        }
    }
}

fn rule_ids(rules: &Value) -> Vec<&str> {
    rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn push_rules_default_and_user_changes() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let base = "/_matrix/client/v3/pushrules";

        // The spec's defaults.
        let (status, body) = c.get(&format!("{base}/"), &alice).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let global = &body["global"];
        assert_eq!(global["override"][0]["rule_id"], ".m.rule.master");
        assert_eq!(global["override"][0]["enabled"], false);
        assert!(rule_ids(&global["underride"]).contains(&".m.rule.message"));
        let invite = global["override"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule_id"] == ".m.rule.invite_for_me")
            .expect("invite_for_me");
        assert!(invite.to_string().contains(&alice.user_id));
        // The legacy mention rules of the spec version spoken (v1.12), where it puts them.
        let overrides = rule_ids(&global["override"]);
        let after = |id: &str| overrides[overrides.iter().position(|r| *r == id).unwrap() + 1];
        assert_eq!(
            after(".m.rule.is_user_mention"),
            ".m.rule.contains_display_name",
            "{kind:?}: {overrides:?}"
        );
        assert_eq!(after(".m.rule.is_room_mention"), ".m.rule.roomnotif");
        assert_eq!(
            global["content"],
            json!([{
                "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
                "pattern": "alice",
                "actions": ["notify", {"set_tweak": "sound", "value": "default"},
                    {"set_tweak": "highlight"}],
            }])
        );
        let (status, scope) = c.get(&format!("{base}/global/"), &alice).await;
        assert_eq!(status, 200);
        assert_eq!(
            scope, body["global"],
            "the global scope is the ruleset itself"
        );

        // A new content rule; defaults stay after it.
        let (status, body) = c
            .put(
                &format!("{base}/global/content/nocake"),
                &alice,
                json!({"pattern": "cake*lie", "actions": ["notify"]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, rule) = c
            .get(&format!("{base}/global/content/nocake"), &alice)
            .await;
        assert_eq!(status, 200);
        assert_eq!(rule["pattern"], "cake*lie");
        assert_eq!(rule["enabled"], true);
        assert_eq!(rule["default"], false);
        assert_eq!(rule["actions"], json!(["notify"]));

        // Ordering with before/after among user rules.
        c.put(
            &format!("{base}/global/content/second"),
            &alice,
            json!({"pattern": "b", "actions": []}),
        )
        .await;
        let (_, body) = c.get(&format!("{base}/"), &alice).await;
        let content = rule_ids(&body["global"]["content"]);
        assert_eq!(&content[..2], ["second", "nocake"], "new rules come first");
        let (status, body) = c
            .put(
                &format!("{base}/global/content/third?after=nocake"),
                &alice,
                json!({"pattern": "c", "actions": []}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = c
            .put(
                &format!("{base}/global/content/zeroth?before=second"),
                &alice,
                json!({"pattern": "z", "actions": []}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, body) = c.get(&format!("{base}/"), &alice).await;
        let content = rule_ids(&body["global"]["content"]);
        assert_eq!(&content[..4], ["zeroth", "second", "nocake", "third"]);
        assert!(
            content[4..].iter().all(|id| id.starts_with('.')),
            "{content:?}"
        );

        // Override rules go after the master rule.
        let (status, _) = c
            .put(
                &format!("{base}/global/override/mine"),
                &alice,
                json!({"conditions": [], "actions": []}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, body) = c.get(&format!("{base}/"), &alice).await;
        assert_eq!(
            &rule_ids(&body["global"]["override"])[..2],
            [".m.rule.master", "mine"]
        );
        // Room and sender rules.
        let room_rule = format!("{base}/global/room/{}", enc(ROOM));
        let (status, body) = c
            .put(&room_rule, &alice, json!({"actions": ["notify"]}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = c.get(&room_rule, &alice).await;
        assert_eq!(status, 200);
        assert_eq!(body["rule_id"], ROOM);

        // enabled and actions, on a user rule and on a default rule.
        let (status, body) = c
            .get(&format!("{base}/global/content/nocake/enabled"), &alice)
            .await;
        assert_eq!((status.as_u16(), body), (200, json!({"enabled": true})));
        let (status, _) = c
            .put(
                &format!("{base}/global/content/nocake/enabled"),
                &alice,
                json!({"enabled": false}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, body) = c
            .get(&format!("{base}/global/content/nocake/enabled"), &alice)
            .await;
        assert_eq!(body, json!({"enabled": false}));
        let (status, _) = c
            .put(
                &format!("{base}/global/override/.m.rule.master/enabled"),
                &alice,
                json!({"enabled": true}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, body) = c
            .get(&format!("{base}/global/override/.m.rule.master"), &alice)
            .await;
        assert_eq!(body["enabled"], true);
        assert_eq!(body["default"], true);
        let (status, _) = c
            .put(
                &format!("{base}/global/underride/.m.rule.message/actions"),
                &alice,
                json!({"actions": ["notify", {"set_tweak": "sound", "value": "bing"}]}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body) = c
            .get(
                &format!("{base}/global/underride/.m.rule.message/actions"),
                &alice,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"actions": ["notify", {"set_tweak": "sound", "value": "bing"}]})
        );

        // The ruleset is the user's m.push_rules account data, which sync delivers.
        let (status, body) = c
            .get(&user_path(&alice, "/account_data/m.push_rules"), &alice)
            .await;
        assert_eq!(status, 200);
        assert_eq!(&rule_ids(&body["global"]["content"])[..1], ["zeroth"]);
        assert_eq!(body["global"]["override"][0]["enabled"], true);

        // Delete.
        let (status, body) = c
            .delete(&format!("{base}/global/content/nocake"), &alice)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = c
            .get(&format!("{base}/global/content/nocake"), &alice)
            .await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        let (status, body) = c
            .delete(&format!("{base}/global/content/nocake"), &alice)
            .await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        let (status, body) = c
            .delete(&format!("{base}/global/override/.m.rule.master"), &alice)
            .await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");

        // Not found for every per-rule read and write.
        let missing = format!("{base}/global/content/missing");
        for (status, body) in [
            c.get(&missing, &alice).await,
            c.get(&format!("{missing}/enabled"), &alice).await,
            c.get(&format!("{missing}/actions"), &alice).await,
            c.put(
                &format!("{missing}/enabled"),
                &alice,
                json!({"enabled": true}),
            )
            .await,
            c.put(
                &format!("{missing}/actions"),
                &alice,
                json!({"actions": []}),
            )
            .await,
        ] {
            assert_error(status, &body, 404, "M_NOT_FOUND");
        }

        // Bad rules.
        let (status, body) = c
            .put(
                &format!("{base}/global/content/.m.mine"),
                &alice,
                json!({"pattern": "x", "actions": []}),
            )
            .await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
        let (status, body) = c
            .put(
                &format!("{base}/global/content/x?before=.m.rule.contains_user_name"),
                &alice,
                json!({"pattern": "x", "actions": []}),
            )
            .await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
        let (status, body) = c
            .put(
                &format!("{base}/global/content/x?before=nosuchrule"),
                &alice,
                json!({"pattern": "x", "actions": []}),
            )
            .await;
        assert_error(status, &body, 400, "M_UNKNOWN");
        let (status, body) = c
            .put(
                &format!("{base}/global/content/x"),
                &alice,
                json!({"actions": []}),
            )
            .await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (status, body) = c
            .put(
                &format!("{base}/global/content/x/enabled"),
                &alice,
                json!({"enabled": "yes"}),
            )
            .await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (_, body) = c.get(&format!("{base}/"), &alice).await;
        assert!(
            !rule_ids(&body["global"]["content"]).contains(&"x"),
            "refused rules are not stored"
        );

        let (status, body) = c.call(Method::GET, &format!("{base}/"), None, None).await;
        assert_error(status, &body, 401, "M_MISSING_TOKEN");
    }
}

#[tokio::test]
async fn push_rules_are_per_user() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let rule = "/_matrix/client/v3/pushrules/global/content/mine";
        let (status, _) = c
            .put(rule, &alice, json!({"pattern": "p", "actions": []}))
            .await;
        assert_eq!(status, 200, "{kind:?}");
        let (status, body) = c.get(rule, &bob).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
        let (_, body) = c.get("/_matrix/client/v3/pushrules/", &bob).await;
        let invite = body["global"]["override"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule_id"] == ".m.rule.invite_for_me")
            .unwrap()
            .to_string();
        assert!(invite.contains(&bob.user_id) && !invite.contains(&alice.user_id));
    }
}

#[tokio::test]
async fn profile_change_updates_member_events_in_joined_rooms() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let alice = server.register("alice").await;
        let (status, body) = c
            .post("/_matrix/client/v3/createRoom", &alice, json!({}))
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        let room_id = body["room_id"].as_str().unwrap().to_owned();
        let member = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room_id),
            enc(&alice.user_id)
        );
        let profile = format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id));

        let (status, _) = c
            .put(
                &format!("{profile}/displayname"),
                &alice,
                json!({"displayname": "Alice Liddell"}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body) = c.get(&member, &alice).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["membership"], "join");
        assert_eq!(body["displayname"], "Alice Liddell", "{body}");

        let (status, _) = c
            .put(
                &format!("{profile}/avatar_url"),
                &alice,
                json!({"avatar_url": "mxc://example.org/pic"}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, body) = c.get(&member, &alice).await;
        assert_eq!(body["avatar_url"], "mxc://example.org/pic", "{body}");
        assert_eq!(body["displayname"], "Alice Liddell", "{body}");
    }
}
