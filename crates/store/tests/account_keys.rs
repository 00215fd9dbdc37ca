//! The account-key table (MSC4243.md Q3) on both backends: local keys are immutable, remote
//! claims follow the allowed transitions, and local erasure destroys the key and the name and
//! takes the next position of the erasure log.

use myelin_store::{
    KeyState, NewLocalAccountKey, RemoteKeyVerdict, Store, StoreOptions,
    test_support::{TestDatabase, test_backends},
};

async fn open(kind: myelin_store::DatabaseKind) -> (TestDatabase, Store) {
    let db = TestDatabase::create(kind).await;
    let store = Store::open(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    (db, store)
}

fn local<'a>(key: &'a str, name: &'a str) -> NewLocalAccountKey<'a> {
    NewLocalAccountKey {
        account_key: key,
        domain: "my.example",
        account_name: name,
        private_key_enc: b"sealed",
        now: 1,
    }
}

#[tokio::test]
async fn a_local_account_keeps_its_first_key() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        assert!(
            store
                .local_account_key("alice", "my.example")
                .await
                .unwrap()
                .is_none()
        );
        let first = store
            .insert_local_account_key(&local("K1", "alice"))
            .await
            .unwrap();
        assert_eq!(first.account_key, "K1");
        assert_eq!(first.user_id, "@K1:my.example");
        assert_eq!(first.state, KeyState::Local);
        assert_eq!(first.private_key_enc.as_deref(), Some(&b"sealed"[..]));
        // A racing second creation gets the first key back; its own is not stored.
        let second = store
            .insert_local_account_key(&local("K2", "alice"))
            .await
            .unwrap();
        assert_eq!(second.account_key, "K1", "{kind:?}");
        assert!(
            store
                .account_keys_by_user_ids(&["@K2:my.example".to_owned()])
                .await
                .unwrap()
                .is_empty()
        );
        let bob = store
            .insert_local_account_key(&local("K3", "bob"))
            .await
            .unwrap();
        assert_eq!(bob.account_name.as_deref(), Some("bob"));
        let found = store
            .account_keys_by_user_ids(&["@K1:my.example".to_owned(), "@K3:my.example".to_owned()])
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(store.known_account_keys().await.unwrap().len(), 2);
        store.close().await;
    }
}

#[tokio::test]
async fn remote_claims_follow_the_allowed_transitions() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        let unverified = RemoteKeyVerdict::Unverified {
            outcome: "missing",
            next_attempt_ts: 100,
        };
        // New key, no answer: unverified with its bookkeeping.
        let state = store
            .record_remote_account_key("R", "a.example", &unverified, 10)
            .await
            .unwrap();
        assert_eq!(state, KeyState::Unverified);
        let row = &store
            .account_keys_by_user_ids(&["@R:a.example".to_owned()])
            .await
            .unwrap()[0];
        assert_eq!((row.attempts, row.next_attempt_ts), (1, Some(100)));
        assert_eq!(row.last_outcome.as_deref(), Some("missing"));
        // Unverified -> verified.
        let verified = RemoteKeyVerdict::Verified {
            account_name: "alice",
        };
        assert_eq!(
            store
                .record_remote_account_key("R", "a.example", &verified, 20)
                .await
                .unwrap(),
            KeyState::Verified
        );
        // Verified is never downgraded, and the first name stays.
        assert_eq!(
            store
                .record_remote_account_key("R", "a.example", &unverified, 30)
                .await
                .unwrap(),
            KeyState::Verified
        );
        store
            .record_remote_account_key(
                "R",
                "a.example",
                &RemoteKeyVerdict::Verified {
                    account_name: "mallory",
                },
                40,
            )
            .await
            .unwrap();
        let row = &store
            .account_keys_by_user_ids(&["@R:a.example".to_owned()])
            .await
            .unwrap()[0];
        assert_eq!(row.account_name.as_deref(), Some("alice"), "{kind:?}");
        assert_eq!(row.first_verified_ts, Some(20));
        // The same key on another domain is another member that can never be verified.
        assert_eq!(
            store
                .record_remote_account_key("R", "b.example", &verified, 50)
                .await
                .unwrap(),
            KeyState::Unverified
        );
        // Verified -> erased, terminal; the name mapping is deleted.
        let erased = RemoteKeyVerdict::Erased { attestation: "{}" };
        assert_eq!(
            store
                .record_remote_account_key("R", "a.example", &erased, 60)
                .await
                .unwrap(),
            KeyState::Erased
        );
        assert_eq!(
            store
                .record_remote_account_key("R", "a.example", &verified, 70)
                .await
                .unwrap(),
            KeyState::Erased
        );
        let row = &store
            .account_keys_by_user_ids(&["@R:a.example".to_owned()])
            .await
            .unwrap()[0];
        assert_eq!(row.account_name, None);
        // Unverified -> erased.
        assert_eq!(
            store
                .record_remote_account_key("S", "a.example", &erased, 80)
                .await
                .unwrap(),
            KeyState::Erased
        );
        store.close().await;
    }
}

#[tokio::test]
async fn local_erasure_destroys_key_and_name_and_logs_in_order() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        for (key, name) in [("K1", "alice"), ("K2", "bob"), ("K3", "carol")] {
            store
                .insert_local_account_key(&local(key, name))
                .await
                .unwrap();
        }
        assert_eq!(store.latest_erasure_id("my.example").await.unwrap(), 0);
        assert_eq!(
            store
                .erase_local_account_key("bob", "my.example", "{\"b\":1}", 5)
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(
            store
                .erase_local_account_key("alice", "my.example", "{\"a\":1}", 6)
                .await
                .unwrap(),
            Some(2)
        );
        // Twice, or an unknown account: nothing.
        assert_eq!(
            store
                .erase_local_account_key("bob", "my.example", "{}", 7)
                .await
                .unwrap(),
            None
        );
        assert!(
            store
                .local_account_key("bob", "my.example")
                .await
                .unwrap()
                .is_none()
        );
        let log = store.erasures_after("my.example", 0, 10).await.unwrap();
        let keys: Vec<_> = log.iter().map(|r| r.account_key.as_str()).collect();
        assert_eq!(keys, ["K2", "K1"], "{kind:?}");
        let bob = &log[0];
        assert_eq!(bob.state, KeyState::Erased);
        assert_eq!(bob.account_name, None);
        assert_eq!(bob.private_key_enc, None);
        assert_eq!(bob.erasure_attestation.as_deref(), Some("{\"b\":1}"));
        assert_eq!(
            store
                .erasures_after("my.example", 1, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .erasures_after("my.example", 0, 1)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.latest_erasure_id("my.example").await.unwrap(), 2);
        // Carol untouched.
        assert!(
            store
                .local_account_key("carol", "my.example")
                .await
                .unwrap()
                .is_some()
        );
        store.close().await;
    }
}
