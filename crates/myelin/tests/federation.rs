//! Federation transport between real servers over TLS on loopback: key fetching and caching,
//! the notary, signed requests and the inbound X-Matrix check, the federation profile and
//! directory endpoints, and the refusal of private destinations by default. On both backends.

use myelin_federation::{FederationError, xmatrix};
use myelin_service::now_millis;
use myelin_testkit::{
    TestServer,
    federation::{TestCa, free_port, start_federation},
    test_backends,
};
use ruma::{
    OwnedServerName, UserId,
    api::federation::{discovery::get_server_keys, query::get_profile_information},
};
use serde_json::{Value, json};

fn server_name(server: &TestServer) -> OwnedServerName {
    server.config.server_name.clone()
}

async fn set_displayname(server: &TestServer, user: &myelin_testkit::TestUser, name: &str) {
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                myelin_testkit::enc(&user.user_id)
            ),
            &user.access_token,
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_server_fetches_keys_and_queries_profiles_over_signed_requests() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let bob = b.register("bob").await;
        set_displayname(b, &bob, "Bob B").await;

        // A fetches B's keys directly: B's current key, as B publishes it.
        let keys = a
            .services()
            .remote_keys
            .keys_for(&server_name(b), &[], now_millis())
            .await
            .unwrap();
        let b_key_id = b.services().server_keys.key_id().to_owned();
        assert!(keys.contains_key(&b_key_id), "{kind:?}: {keys:?}");
        assert_eq!(
            keys[&b_key_id].key.to_bytes().to_vec(),
            base64_decode(&b.services().server_keys.public_key_base64())
        );

        // A asks B for Bob's profile; B checks A's signature, fetching A's key once.
        let bob_id = UserId::parse(&bob.user_id).unwrap();
        let profile = a
            .services()
            .federation
            .send(
                &server_name(b),
                get_profile_information::v1::Request::new(bob_id.clone()),
            )
            .await
            .expect("signed profile query");
        assert_eq!(
            profile.data.get("displayname"),
            Some(&Value::from("Bob B")),
            "{kind:?}"
        );
        let b_keys = &b.services().remote_keys;
        assert_eq!(b_keys.requests_sent(), 1, "B fetched A's key");

        // The key is cached: a second request costs B no key request.
        a.services()
            .federation
            .send(
                &server_name(b),
                get_profile_information::v1::Request::new(bob_id.clone()),
            )
            .await
            .expect("second query");
        assert_eq!(b_keys.requests_sent(), 1, "{kind:?}: cached key reused");

        // Once the cached copy has expired, the key is fetched again.
        myelin_store::test_support::expire_remote_server_keys(&b.services().store, a.name()).await;
        a.services()
            .federation
            .send(
                &server_name(b),
                get_profile_information::v1::Request::new(bob_id),
            )
            .await
            .expect("query after expiry");
        assert_eq!(b_keys.requests_sent(), 2, "{kind:?}: expired key refetched");

        // An unknown user is 404 M_NOT_FOUND.
        let unknown = UserId::parse(format!("@nobody:{}", b.name())).unwrap();
        match a
            .services()
            .federation
            .send(
                &server_name(b),
                get_profile_information::v1::Request::new(unknown),
            )
            .await
        {
            Err(FederationError::Status { status, body }) => {
                assert_eq!(status, 404);
                assert!(body.contains("M_NOT_FOUND"), "{body}");
            }
            other => panic!("{kind:?}: unknown user: {other:?}"),
        }

        for server in servers {
            server.stop().await;
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn concurrent_lookups_of_one_key_make_one_request() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let b_name = server_name(b);
        let key_id = vec![b.services().server_keys.key_id().to_owned()];
        let lookups = (0..8).map(|_| {
            a.services()
                .remote_keys
                .keys_for(&b_name, &key_id, now_millis())
        });
        let results = futures::future::join_all(lookups).await;
        for keys in results {
            assert!(keys.unwrap().contains_key(&key_id[0]));
        }
        assert_eq!(a.services().remote_keys.requests_sent(), 1, "{kind:?}");
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn keys_come_through_a_notary_when_the_server_does_not_answer() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let dead = free_port();
        // C trusts B as a notary and cannot reach A itself.
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |i, config| {
                if i == 2 {
                    config.federation.trusted_key_servers = vec!["hs-b.test".try_into().unwrap()];
                    config
                        .federation
                        .destination_overrides
                        .insert("hs-a.test".to_owned(), format!("127.0.0.1:{dead}"));
                }
            },
        )
        .await;
        let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
        let a_key_id = a.services().server_keys.key_id().to_owned();

        // B's notary API relays A's key object, signed by A and by B.
        let client = ca.client(&[(b.name(), b.addrs().1)]);
        let url = format!(
            "https://{}:{}/_matrix/key/v2/query/{}",
            b.name(),
            b.addrs().1.port(),
            a.name()
        );
        let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        let object = &body["server_keys"][0];
        assert_eq!(object["server_name"], a.name(), "{kind:?}: {body}");
        assert!(object["verify_keys"][&a_key_id].is_object());
        assert!(object["signatures"][a.name()][&a_key_id].is_string());
        assert!(object["signatures"][b.name()].is_object(), "{body}");

        // The batch form with minimum_valid_until_ts.
        let batch: Value = client
            .post(format!(
                "https://{}:{}/_matrix/key/v2/query",
                b.name(),
                b.addrs().1.port()
            ))
            .json(&json!({ "server_keys": { a.name(): { &a_key_id: { "minimum_valid_until_ts": now_millis() } } } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(batch["server_keys"][0]["server_name"], a.name(), "{batch}");
        // An unreachable server gives an empty list, not an error.
        let none: Value = client
            .get(format!(
                "https://{}:{}/_matrix/key/v2/query/unreachable.invalid",
                b.name(),
                b.addrs().1.port()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(none["server_keys"], json!([]), "{none}");

        // C gets A's key through B, A being unreachable from C.
        let keys = c
            .services()
            .remote_keys
            .keys_for(
                &server_name(a),
                std::slice::from_ref(&a_key_id),
                now_millis(),
            )
            .await
            .unwrap();
        assert!(keys.contains_key(&a_key_id), "{kind:?}: {keys:?}");
        // One direct try at A, one fetch of B's own key, one notary query.
        assert_eq!(c.services().remote_keys.requests_sent(), 3);

        for server in servers {
            server.stop().await;
        }
    }
}

/// A request to B's federation listener signed as A would sign it, with parts of the signing
/// input replaced to make it wrong.
struct Forged<'a> {
    destination: &'a str,
    key_id: Option<String>,
    key: Option<myelin_room_version::KeyPair>,
    signed_uri: Option<&'a str>,
}

async fn send_forged(
    ca: &TestCa,
    a: &TestServer,
    b: &TestServer,
    path: &str,
    forged: Option<Forged<'_>>,
) -> (u16, Value) {
    let client = ca.client(&[(b.name(), b.addrs().1)]);
    let url = format!("https://{}:{}{path}", b.name(), b.addrs().1.port());
    let mut request = client.get(&url);
    if let Some(forged) = forged {
        let (own_key_id, own_key) = a.services().server_keys.request_signing_key();
        let key_id = forged.key_id.unwrap_or(own_key_id);
        let key = forged.key.unwrap_or(own_key);
        let object = xmatrix::request_object(
            "GET",
            forged.signed_uri.unwrap_or(path),
            a.name(),
            forged.destination,
            b"",
        )
        .unwrap();
        let header =
            xmatrix::authorization_header(&object, a.name(), forged.destination, &key_id, &key)
                .unwrap();
        request = request.header("Authorization", header);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn inbound_requests_without_a_valid_x_matrix_signature_are_401() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let bob = b.register("bob").await;
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            myelin_testkit::enc(&bob.user_id)
        );
        let good = || Forged {
            destination: b.name(),
            key_id: None,
            key: None,
            signed_uri: None,
        };

        // Positive control: a correctly signed request passes.
        let (status, body) = send_forged(&ca, a, b, &path, Some(good())).await;
        assert_eq!(status, 200, "{kind:?}: {body}");

        let stranger = myelin_room_version::KeyPair::from_seed(&[42; 32]);
        let cases: Vec<(&str, Option<Forged<'_>>)> = vec![
            ("no Authorization header", None),
            (
                "wrong destination",
                Some(Forged {
                    destination: "hs-c.test",
                    ..good()
                }),
            ),
            (
                "unknown key",
                Some(Forged {
                    key_id: Some("ed25519:nosuchkey".to_owned()),
                    ..good()
                }),
            ),
            (
                "bad signature",
                Some(Forged {
                    key: Some(stranger),
                    ..good()
                }),
            ),
            (
                "signature over another URI",
                Some(Forged {
                    signed_uri: Some("/_matrix/federation/v1/query/profile?user_id=x"),
                    ..good()
                }),
            ),
        ];
        for (what, forged) in cases {
            let (status, body) = send_forged(&ca, a, b, &path, forged).await;
            assert_eq!(status, 401, "{kind:?}: {what}: {body}");
            assert_eq!(
                body["errcode"], "M_UNAUTHORIZED",
                "{kind:?}: {what}: {body}"
            );
        }

        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn federation_public_rooms_lists_the_directory() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        let (a, b) = (&servers[0], &servers[1]);
        let bob = b.register("bob").await;
        let room = b
            .create_room(&bob, json!({ "visibility": "public", "name": "Lobby" }))
            .await;
        let page = a
            .services()
            .federation
            .send(
                &server_name(b),
                ruma::api::federation::directory::get_public_rooms::v1::Request::new(),
            )
            .await
            .expect("GET publicRooms");
        assert_eq!(page.chunk.len(), 1, "{kind:?}");
        assert_eq!(page.chunk[0].room_id.as_str(), room);
        let mut filtered =
            ruma::api::federation::directory::get_public_rooms_filtered::v1::Request::new();
        filtered.filter.generic_search_term = Some("nothing like it".to_owned());
        let page = a
            .services()
            .federation
            .send(&server_name(b), filtered)
            .await
            .expect("POST publicRooms");
        assert!(page.chunk.is_empty(), "{kind:?}");
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    for kind in test_backends() {
        let ca = TestCa::new();
        // B is a real server on loopback; A keeps the default address policy.
        let servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |i, config| {
            if i == 0 {
                config.federation.allow_private_addresses = false;
            }
        })
        .await;
        let (a, b) = (&servers[0], &servers[1]);
        let port = b.addrs().1.port();
        for destination in [
            // Through the override (an IP literal)...
            b.name().to_owned(),
            // ...an IP-literal server name...
            format!("127.0.0.1:{port}"),
            // ...and a name that DNS (or the hosts file) resolves to loopback.
            format!("localhost:{port}"),
        ] {
            let name: OwnedServerName = destination.as_str().try_into().unwrap();
            let result = a
                .services()
                .federation
                .send(&name, get_server_keys::v2::Request::new())
                .await;
            match result {
                Err(FederationError::PrivateAddress(_)) => {}
                Err(FederationError::Transport(text)) => {
                    assert!(
                        text.contains("no publicly routable address"),
                        "{kind:?}: {destination}: {text}"
                    );
                }
                other => panic!("{kind:?}: {destination}: {other:?}"),
            }
        }
        // Positive control: B (private addresses allowed) reaches A the same way.
        b.services()
            .federation
            .send(&server_name(a), get_server_keys::v2::Request::new())
            .await
            .expect("allowed private destination");
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn certificates_are_checked_unless_turned_off() {
    for kind in test_backends() {
        let ca = TestCa::new();
        // A trusts no extra CA: B's certificate is from an unknown authority. C trusts none
        // either but does not check certificates.
        let servers = start_federation(
            kind,
            &ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |i, config| {
                if i != 1 {
                    config.federation.trusted_ca_files.clear();
                }
                if i == 2 {
                    config.federation.verify_certificates = false;
                }
            },
        )
        .await;
        let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
        let refused = a
            .services()
            .federation
            .send(&server_name(b), get_server_keys::v2::Request::new())
            .await;
        assert!(
            matches!(&refused, Err(FederationError::Transport(text)) if text.contains("certificate")),
            "{kind:?}: {refused:?}"
        );
        c.services()
            .federation
            .send(&server_name(b), get_server_keys::v2::Request::new())
            .await
            .expect("certificate checks off");
        for server in servers {
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn old_verify_keys_are_fetched_with_their_expiry() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let mut servers = start_federation(kind, &ca, &["hs-a.test", "hs-b.test"], |_, _| {}).await;
        // B retired a key at t = 1000 s; it publishes it under old_verify_keys after a restart.
        let old_public = myelin_room_version::KeyPair::from_seed(&[5; 32]).public_key();
        servers[1]
            .services()
            .store
            .insert_signing_key(&myelin_store::StoredSigningKey {
                key_id: "a_old".to_owned(),
                public_key: old_public.to_vec(),
                private_key_enc: vec![0; 60],
                created_ts: 1,
                expired_ts: Some(1_000_000),
            })
            .await
            .unwrap();
        servers[1].restart().await;
        let (a, b) = (&servers[0], &servers[1]);
        let keys = a
            .services()
            .remote_keys
            .keys_for(&server_name(b), &["ed25519:a_old".to_owned()], now_millis())
            .await
            .unwrap();
        let old = keys.get("ed25519:a_old").expect("old key fetched");
        assert_eq!(old.key.to_bytes(), old_public, "{kind:?}");
        assert_eq!(old.valid_until_ts, 1_000_000, "{kind:?}: expired_ts kept");
        // Positive control: the current key comes with a validity in the future.
        let current = a
            .services()
            .remote_keys
            .keys_for(&server_name(b), &[], now_millis())
            .await
            .unwrap();
        let current = &current[b.services().server_keys.key_id()];
        assert!(current.valid_until_ts > u64::try_from(now_millis()).unwrap());
        for server in servers {
            server.stop().await;
        }
    }
}
