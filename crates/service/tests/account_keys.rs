//! The account-key service on both databases: lazy keys for accounts that predate them, the
//! translation of client-named users to keys that never guesses, and `/query/accounts`
//! serving (signed answers, M_UNKNOWN, the request cap, the erasure cursor).

use myelin_room_version::{
    CanonicalJsonObject, KeyFormUserId,
    query_accounts::{AnswerVerdict, classify_answer},
};
use myelin_service::{Config, Error, Services, account_keys::QueryAccounts};
use myelin_store::test_support::{TestDatabase, create_test_user, test_backends};

async fn services(db: &TestDatabase, dir: &tempfile::TempDir) -> std::sync::Arc<Services> {
    let mut config = Config {
        server_name: "test".try_into().unwrap(),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.database.url = Some(db.url.clone());
    Services::start(config).await.unwrap()
}

#[tokio::test]
async fn keys_are_made_lazily_once_and_names_are_never_guessed() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let services = services(&db, &dir).await;
        let keys = &services.account_keys;
        // An account written without a key (as before account keys existed).
        create_test_user(&services.store, "alice").await;
        assert_eq!(keys.known_local_user_id("alice"), None);
        let alice = keys.to_key_form("@alice:test").await.unwrap();
        let parsed = KeyFormUserId::parse(&alice).unwrap();
        assert_eq!(parsed.server_name, "test");
        // Made once: the same key every time, also after a restart.
        assert_eq!(keys.to_key_form("@alice:test").await.unwrap(), alice);
        assert_eq!(keys.to_key_form(&alice).await.unwrap(), alice);
        drop(services);
        let services = self::services(&db, &dir).await;
        let keys = &services.account_keys;
        assert_eq!(
            keys.known_local_user_id("alice").as_deref(),
            Some(alice.as_str())
        );
        assert_eq!(keys.local_user_id("alice").await.unwrap(), alice);
        // The sealed key opens and is alice's.
        let pair = keys.signing_key("alice").await.unwrap();
        assert_eq!(pair.account_key(), parsed.key);

        // Never guessed: remote names, unknown keys (local or remote), accounts that do not
        // exist, key-shaped names, not user ids.
        let stranger = myelin_room_version::KeyPair::from_seed(&[9; 32]).account_key();
        for bad in [
            "@bob:elsewhere.example".to_owned(),
            format!("@{stranger}:elsewhere.example"),
            format!("@{stranger}:test"),
            "@nobody:test".to_owned(),
            "not a user".to_owned(),
        ] {
            let err = keys.to_key_form(&bad).await.unwrap_err();
            assert!(matches!(err, Error::InvalidParam(_)), "{bad}: {err:?}");
        }
        // And nothing was made for them.
        assert_eq!(keys.known_local_user_id("nobody"), None);
    }
}

#[tokio::test]
async fn query_accounts_answers_only_for_our_keys() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let services = services(&db, &dir).await;
        let keys = &services.account_keys;
        create_test_user(&services.store, "alice").await;
        let alice = KeyFormUserId::parse(&keys.to_key_form("@alice:test").await.unwrap()).unwrap();
        let stranger = myelin_room_version::KeyPair::from_seed(&[9; 32]).account_key();
        let reply = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![alice.key.to_string(), stranger.to_string()],
                erasure: None,
            })
            .await
            .unwrap();
        let answer: CanonicalJsonObject =
            serde_json::from_value(reply["account_keys"][alice.key.as_str()].clone()).unwrap();
        assert_eq!(
            classify_answer(&alice, Some(&answer)),
            AnswerVerdict::Verified {
                account_name: "alice".to_owned()
            }
        );
        // The key is the map key, not inside the signed object.
        assert!(!answer.contains_key("account_key"));
        assert_eq!(
            reply["account_keys"][stranger.as_str()],
            serde_json::json!({"errcode": "M_UNKNOWN"})
        );
        assert!(reply.get("erasure").is_none());
        // 2048 keys are served, 2049 refused.
        let many = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![stranger.to_string(); 2048],
                erasure: None,
            })
            .await;
        assert!(many.is_ok());
        let too_many = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![stranger.to_string(); 2049],
                erasure: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(too_many, Error::InvalidParam(_)), "{too_many:?}");
        // Erasure cursor with nobody erased; a limit beyond the cap is capped, not refused.
        let reply = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![],
                erasure: Some((0, 1_000_000)),
            })
            .await
            .unwrap();
        assert_eq!(
            reply["erasure"],
            serde_json::json!({"id": 0, "has_more": false})
        );
        // Erasing alice (deactivated first, as /account/deactivate does): answered with the
        // signed M_ERASED, counted by the cursor with limits.
        services
            .store
            .deactivate_user("@alice:test", 1, None)
            .await
            .unwrap();
        assert!(keys.erase("alice").await.unwrap());
        assert!(!keys.erase("alice").await.unwrap());
        let reply = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![],
                erasure: Some((0, 0)),
            })
            .await
            .unwrap();
        assert_eq!(
            reply["erasure"],
            serde_json::json!({"id": 0, "has_more": true})
        );
        assert_eq!(reply["account_keys"], serde_json::json!({}));
        let reply = keys
            .query_accounts(&QueryAccounts {
                account_keys: vec![alice.key.to_string()],
                erasure: Some((0, 5)),
            })
            .await
            .unwrap();
        let answer: CanonicalJsonObject =
            serde_json::from_value(reply["account_keys"][alice.key.as_str()].clone()).unwrap();
        assert_eq!(
            classify_answer(&alice, Some(&answer)),
            AnswerVerdict::Erased
        );
        assert_eq!(
            reply["erasure"],
            serde_json::json!({"id": 1, "has_more": false})
        );
        // An erased account's key can no longer sign, and it gets no new key.
        assert!(keys.signing_key("alice").await.is_err());
        assert!(keys.local_user_id("alice").await.is_err());
        assert_eq!(keys.known_local_user_id("alice"), None);
    }
}
