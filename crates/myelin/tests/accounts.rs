//! Accounts over the client API, on both databases: registration (UIA, tokens, disabled, name
//! rules), login, access tokens, refresh, logout, devices, password change, deactivation, and
//! Synapse-compatible shared-secret registration.

use hmac::{Hmac, Mac};
use myelin_testkit::{SHARED_SECRET, TestServer, TestUser, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Client<'a> {
    server: &'a TestServer,
}

impl Client<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
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
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }
    async fn login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
    }
    async fn whoami(&self, token: &str) -> (StatusCode, Value) {
        self.get("/_matrix/client/v3/account/whoami", Some(token))
            .await
    }
}

fn password_auth(user: &TestUser, password: &str, session: &str) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id}, "password": password, "session": session})
}

#[tokio::test]
async fn registration_goes_through_uia_and_logs_in() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let (status, body) = c
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": "alice", "password": "pw"}),
            )
            .await;
        assert_eq!(status, 401, "{kind:?}: {body}");
        assert_eq!(body["flows"], json!([{"stages": ["m.login.dummy"]}]));
        let session = body["session"].as_str().unwrap().to_owned();

        let (status, body) = c
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": "alice", "password": "pw", "initial_device_display_name": "phone",
                       "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], "@alice:localhost");
        let token = body["access_token"].as_str().unwrap();
        let (status, me) = c.whoami(token).await;
        assert_eq!(status, 200);
        assert_eq!(me["user_id"], "@alice:localhost");
        assert_eq!(me["device_id"], body["device_id"]);
        assert_ne!(me["is_guest"], true, "absent or false");

        let (status, devices) = c.get("/_matrix/client/v3/devices", Some(token)).await;
        assert_eq!(status, 200);
        assert_eq!(devices["devices"][0]["display_name"], "phone");

        // inhibit_login: an account, no session.
        let (status, body) = c
            .post("/_matrix/client/v3/register", None,
                  json!({"username": "bob", "password": "pw", "inhibit_login": true, "auth": {"type": "m.login.dummy"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("access_token").is_none(), "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn registration_refuses_bad_taken_and_reserved_names_and_can_be_disabled() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        server.register("carol").await;
        let dummy = json!({"type": "m.login.dummy"});
        for (name, errcode) in [
            ("carol", "M_USER_IN_USE"),
            // Names are lower-cased first: `Carol` is `carol`, which is taken.
            ("Carol", "M_USER_IN_USE"),
            ("ca rol", "M_INVALID_USERNAME"),
            // 43 characters of the url-safe base64 alphabet: the shape of an account key.
            (
                "l8hft5qxkn1vfhrg3p4-w8gelqvo8n13jklumfmn2sq",
                "M_INVALID_USERNAME",
            ),
        ] {
            let (status, body) = c
                .post(
                    "/_matrix/client/v3/register",
                    None,
                    json!({"username": name, "password": "pw", "auth": dummy}),
                )
                .await;
            assert_eq!(status, 400, "{kind:?} {name}: {body}");
            assert_eq!(body["errcode"], errcode, "{name}");
        }
        let (status, body) = c
            .get("/_matrix/client/v3/register/available?username=carol", None)
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::BAD_REQUEST, json!("M_USER_IN_USE"))
        );
        let (status, body) = c
            .get("/_matrix/client/v3/register/available?username=dave", None)
            .await;
        assert_eq!(
            (status, body["available"].clone()),
            (StatusCode::OK, json!(true))
        );
        let (status, body) = c
            .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
            .await;
        assert_eq!(status, 403, "{body}");
        server.stop().await;

        let server =
            TestServer::start_with(kind, |config| config.registration.enabled = false).await;
        let c = Client { server: &server };
        let (status, body) = c
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": "eve", "password": "pw", "auth": dummy}),
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        server.stop().await;
    }
}

#[tokio::test]
async fn registration_tokens_gate_registration() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.registration.tokens = vec!["letmein".to_owned()]
        })
        .await;
        let c = Client { server: &server };
        let (status, body) = c
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": "t1", "password": "pw"}),
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(
            body["flows"],
            json!([{"stages": ["m.login.registration_token"]}])
        );
        let session = body["session"].as_str().unwrap().to_owned();

        // Dummy is not a stage here.
        let (status, body) = c
            .post("/_matrix/client/v3/register", None,
                  json!({"username": "t1", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}))
            .await;
        assert_eq!(status, 401, "{body}");

        let (status, body) = c
            .post("/_matrix/client/v3/register", None,
                  json!({"username": "t1", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}}))
            .await;
        assert_eq!(status, 401);
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");

        let (status, body) = c
            .post("/_matrix/client/v3/register", None,
                  json!({"username": "t1", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein", "session": session}}))
            .await;
        assert_eq!(status, 200, "{body}");

        let (_, valid) = c
            .get(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token=letmein",
                None,
            )
            .await;
        assert_eq!(valid["valid"], true);
        let (_, invalid) = c
            .get(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token=nope",
                None,
            )
            .await;
        assert_eq!(invalid["valid"], false);
        server.stop().await;
    }
}

#[tokio::test]
async fn login_logout_and_token_errors() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let user = server.register("dora").await;

        let (status, flows) = c.get("/_matrix/client/v3/login", None).await;
        assert_eq!(status, 200);
        assert_eq!(flows["flows"][0]["type"], "m.login.password");

        for identifier in ["dora", "@dora:localhost", "DORA"] {
            let (status, body) = c.login(identifier, &user.password).await;
            assert_eq!(status, 200, "{kind:?} {identifier}: {body}");
            assert_eq!(body["user_id"], "@dora:localhost");
        }
        // The deprecated top-level `user` field.
        let (status, _) = c
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({"type": "m.login.password", "user": "dora", "password": user.password}),
            )
            .await;
        assert_eq!(status, 200);

        for (who, password) in [
            ("dora", "wrong"),
            ("nobody", "pw"),
            ("@dora:elsewhere.example", user.password.as_str()),
        ] {
            let (status, body) = c.login(who, password).await;
            assert_eq!(status, 403, "{who}");
            assert_eq!(body["errcode"], "M_FORBIDDEN");
        }

        let (status, body) = c.get("/_matrix/client/v3/account/whoami", None).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::UNAUTHORIZED, json!("M_MISSING_TOKEN"))
        );
        let (status, body) = c.whoami("not-a-token").await;
        assert_eq!(status, 401);
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        assert_ne!(body["soft_logout"], true, "absent or false: {body}");
        let (status, threepids) = c
            .get("/_matrix/client/v3/account/3pid", Some(&user.access_token))
            .await;
        assert_eq!(status, StatusCode::OK);
        // ruma leaves an empty list out; either way the client reads "none".
        assert!(
            threepids.get("threepids").is_none_or(|t| *t == json!([])),
            "{threepids}"
        );
        // The deprecated query parameter still authenticates.
        let (status, _) = c
            .get(
                &format!(
                    "/_matrix/client/v3/account/whoami?access_token={}",
                    user.access_token
                ),
                None,
            )
            .await;
        assert_eq!(status, 200);

        let (_, second) = c.login("dora", &user.password).await;
        let second = second["access_token"].as_str().unwrap().to_owned();
        let (status, _) = c
            .post(
                "/_matrix/client/v3/logout",
                Some(&user.access_token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            c.whoami(&user.access_token).await.0,
            401,
            "logged-out token is dead"
        );
        assert_eq!(c.whoami(&second).await.0, 200, "other sessions live on");

        let (_, third) = c.login("dora", &user.password).await;
        let third = third["access_token"].as_str().unwrap().to_owned();
        let (status, _) = c
            .post("/_matrix/client/v3/logout/all", Some(&second), json!({}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(c.whoami(&second).await.0, 401);
        assert_eq!(c.whoami(&third).await.0, 401);
        let (_, devices) = c.login("dora", &user.password).await;
        let (_, list) = c
            .get(
                "/_matrix/client/v3/devices",
                devices["access_token"].as_str(),
            )
            .await;
        assert_eq!(
            list["devices"].as_array().unwrap().len(),
            1,
            "logout/all deleted the devices: {list}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_expired_tokens_soft_logout() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.sessions.refreshable_access_token_lifetime_secs = 1
        })
        .await;
        let c = Client { server: &server };
        let (status, body) = c
            .post("/_matrix/client/v3/register", None,
                  json!({"username": "fay", "password": "pw", "refresh_token": true, "auth": {"type": "m.login.dummy"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expires_in_ms"], 1000);
        let access = body["access_token"].as_str().unwrap().to_owned();
        let refresh = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(c.whoami(&access).await.0, 200);

        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (status, body) = c.whoami(&access).await;
        assert_eq!(status, 401);
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        assert_eq!(body["soft_logout"], true, "{body}");

        let (status, body) = c
            .post(
                "/_matrix/client/v3/refresh",
                None,
                json!({"refresh_token": refresh}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let new_access = body["access_token"].as_str().unwrap().to_owned();
        assert!(body["refresh_token"].is_string());
        assert_eq!(c.whoami(&new_access).await.0, 200);

        let (status, body) = c
            .post(
                "/_matrix/client/v3/refresh",
                None,
                json!({"refresh_token": refresh}),
            )
            .await;
        assert_eq!(status, 401, "a refresh token is single-use: {body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        server.stop().await;
    }
}

#[tokio::test]
async fn devices_rename_and_delete_with_password_uia() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let user = server.register("gus").await;
        let (_, other) = c
            .post("/_matrix/client/v3/login", None,
                  json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gus"}, "password": user.password, "device_id": "LAPTOP"}))
            .await;
        assert_eq!(other["device_id"], "LAPTOP");
        let laptop_token = other["access_token"].as_str().unwrap().to_owned();
        let token = Some(user.access_token.as_str());

        let (status, _) = c
            .call(
                reqwest::Method::PUT,
                "/_matrix/client/v3/devices/LAPTOP",
                token,
                Some(json!({"display_name": "work"})),
            )
            .await;
        assert_eq!(status, 200);
        let (status, device) = c.get("/_matrix/client/v3/devices/LAPTOP", token).await;
        assert_eq!(
            (status, device["display_name"].clone()),
            (StatusCode::OK, json!("work"))
        );
        let (status, body) = c.get("/_matrix/client/v3/devices/NOPE", token).await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
        );
        let (status, _) = c
            .call(
                reqwest::Method::PUT,
                "/_matrix/client/v3/devices/NOPE",
                token,
                Some(json!({"display_name": "x"})),
            )
            .await;
        assert_eq!(status, 404);

        let (status, challenge) = c
            .call(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/devices/LAPTOP",
                token,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(
            challenge["flows"],
            json!([{"stages": ["m.login.password"]}])
        );
        let session = challenge["session"].as_str().unwrap();
        let (status, body) = c
            .call(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/devices/LAPTOP",
                token,
                Some(json!({"auth": password_auth(&user, "wrong", session)})),
            )
            .await;
        // A failed stage is the 401 challenge again, with the error and the same session.
        assert_eq!(
            status, 401,
            "a wrong password is a failed UIA stage: {body}"
        );
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        assert_eq!(body["session"], session);
        assert_eq!(body["flows"], json!([{"stages": ["m.login.password"]}]));
        // Someone else's right password is no failed stage: the operation is refused outright.
        let other = server.register("ida").await;
        let (status, body) = c
            .call(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/devices/LAPTOP",
                token,
                Some(json!({"auth": password_auth(&other, &other.password, session)})),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::FORBIDDEN, json!("M_FORBIDDEN")),
            "{body}"
        );
        assert_eq!(
            c.whoami(&laptop_token).await.0,
            200,
            "nothing deleted on a failed stage"
        );
        let (status, body) = c
            .call(
                reqwest::Method::DELETE,
                "/_matrix/client/v3/devices/LAPTOP",
                token,
                Some(json!({"auth": password_auth(&user, &user.password, session)})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            c.whoami(&laptop_token).await.0,
            401,
            "the device's token died with it"
        );

        // delete_devices: several at once.
        let mut tokens = Vec::new();
        for id in ["A1", "A2"] {
            let (_, s) = c
                .post("/_matrix/client/v3/login", None,
                      json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gus"}, "password": user.password, "device_id": id}))
                .await;
            tokens.push(s["access_token"].as_str().unwrap().to_owned());
        }
        let (status, challenge) = c
            .post(
                "/_matrix/client/v3/delete_devices",
                token,
                json!({"devices": ["A1", "A2"]}),
            )
            .await;
        assert_eq!(status, 401);
        let (status, _) = c
            .post("/_matrix/client/v3/delete_devices", token,
                  json!({"devices": ["A1", "A2"], "auth": password_auth(&user, &user.password, challenge["session"].as_str().unwrap())}))
            .await;
        assert_eq!(status, 200);
        for t in &tokens {
            assert_eq!(c.whoami(t).await.0, 401);
        }
        let (_, list) = c.get("/_matrix/client/v3/devices", token).await;
        assert_eq!(list["devices"].as_array().unwrap().len(), 1);
        server.stop().await;
    }
}

#[tokio::test]
async fn password_change_and_deactivation() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let user = server.register("hal").await;
        let (_, other) = c.login("hal", &user.password).await;
        let other = other["access_token"].as_str().unwrap().to_owned();
        let token = Some(user.access_token.as_str());

        let (status, challenge) = c
            .post(
                "/_matrix/client/v3/account/password",
                token,
                json!({"new_password": "new-pw"}),
            )
            .await;
        assert_eq!(status, 401);
        let (status, body) = c
            .post("/_matrix/client/v3/account/password", token,
                  json!({"new_password": "new-pw", "auth": password_auth(&user, &user.password, challenge["session"].as_str().unwrap())}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            c.login("hal", &user.password).await.0,
            403,
            "old password no longer works"
        );
        assert_eq!(c.login("hal", "new-pw").await.0, 200);
        assert_eq!(
            c.whoami(&other).await.0,
            401,
            "other devices were logged out"
        );
        assert_eq!(
            c.whoami(&user.access_token).await.0,
            200,
            "this device stays"
        );

        let (_, challenge) = c
            .post("/_matrix/client/v3/account/deactivate", token, json!({}))
            .await;
        let (status, body) = c
            .post("/_matrix/client/v3/account/deactivate", token,
                  json!({"auth": password_auth(&user, "wrong", challenge["session"].as_str().unwrap())}))
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (reqwest::StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN")),
            "a wrong password is a failed UIA stage: {body}"
        );
        assert!(body["flows"].is_array(), "{body}");
        assert_eq!(
            c.whoami(&user.access_token).await.0,
            200,
            "nothing deactivated"
        );
        let mut moved = user.clone();
        moved.password = "new-pw".to_owned();
        let (status, body) = c
            .post("/_matrix/client/v3/account/deactivate", token,
                  json!({"auth": password_auth(&moved, "new-pw", challenge["session"].as_str().unwrap())}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id_server_unbind_result"], "no-support");
        assert_eq!(
            c.whoami(&user.access_token).await.0,
            401,
            "every login ended"
        );
        let (status, body) = c.login("hal", "new-pw").await;
        assert_eq!(status, 403);
        assert_eq!(body["errcode"], "M_USER_DEACTIVATED", "{body}");
        // The name stays taken.
        let (status, body) = c
            .get("/_matrix/client/v3/register/available?username=hal", None)
            .await;
        assert_eq!(
            (status, body["errcode"].clone()),
            (StatusCode::BAD_REQUEST, json!("M_USER_IN_USE"))
        );
        server.stop().await;
    }
}

fn mac(nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    let admin = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{user}\0{password}\0{admin}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn shared_secret_registration_is_synapse_compatible() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let c = Client { server: &server };
        let (status, body) = c.get("/_synapse/admin/v1/register", None).await;
        assert_eq!(status, 200);
        let nonce = body["nonce"].as_str().unwrap().to_owned();
        let request = json!({"nonce": nonce, "username": "ivy", "password": "pw", "admin": false, "mac": mac(&nonce, "ivy", "pw", false)});
        let (status, body) = c
            .post("/_synapse/admin/v1/register", None, request.clone())
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["user_id"], "@ivy:localhost");
        assert_eq!(
            c.whoami(body["access_token"].as_str().unwrap()).await.0,
            200
        );

        let (status, _) = c.post("/_synapse/admin/v1/register", None, request).await;
        assert_eq!(status, 400, "a nonce is single-use");

        let (_, body) = c.get("/_synapse/admin/v1/register", None).await;
        let nonce = body["nonce"].as_str().unwrap().to_owned();
        let (status, body) = c
            .post("/_synapse/admin/v1/register", None,
                  json!({"nonce": nonce, "username": "jay", "password": "pw", "mac": mac(&nonce, "jay", "pw", true)}))
            .await;
        assert_eq!(status, 403, "mac for admin, request for non-admin: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");

        let (status, body) = c
            .call(
                reqwest::Method::POST,
                "/_synapse/admin/v1/register",
                None,
                None,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        server.stop().await;

        let server =
            TestServer::start_with(kind, |config| config.registration.shared_secret = None).await;
        let (status, _) = Client { server: &server }
            .get("/_synapse/admin/v1/register", None)
            .await;
        assert_eq!(status, 404);
        server.stop().await;
    }
}

#[tokio::test]
async fn malformed_requests_get_spec_errors() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let response = server
            .http
            .post(server.client_url("/_matrix/client/v3/login"))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_NOT_JSON", "{body}");
        let (status, body) = Client { server: &server }
            .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": 5}, "password": []}))
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_json_body_is_not_json() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        // The bad bytes sit in a field the endpoint ignores, which JSON parsers skip over.
        let response = server
            .http
            .post(server.client_url("/_matrix/client/v3/register"))
            .header("Content-Type", "application/json")
            .body(b"{\"ignored\": \"\xff\xfe\"}".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{kind:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_NOT_JSON", "{body}");
        server.stop().await;
    }
}
