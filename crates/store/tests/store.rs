//! The store on both backends: migrations, the schema-version guard, signing keys.

use myelin_store::{
    RemoteServerKey, Store, StoreError, StoreOptions, StoredSigningKey,
    test_support::{TestDatabase, test_backends},
};

fn key(id: &str, created_ts: i64) -> StoredSigningKey {
    StoredSigningKey {
        key_id: id.to_owned(),
        public_key: vec![1; 32],
        private_key_enc: vec![2; 60],
        created_ts,
        expired_ts: None,
    }
}

#[tokio::test]
async fn signing_keys_round_trip_and_conflict() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.kind(), kind);
        assert!(store.signing_keys().await.unwrap().is_empty());

        store.insert_signing_key(&key("a_old", 1)).await.unwrap();
        store.insert_signing_key(&key("a_new", 2)).await.unwrap();
        let keys = store.signing_keys().await.unwrap();
        assert_eq!(keys, vec![key("a_new", 2), key("a_old", 1)], "{kind:?}");

        let err = store
            .insert_signing_key(&key("a_new", 3))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{kind:?}: {err}");
        store.close().await;
    }
}

fn remote(server: &str, key_id: &str, valid_until_ts: i64, object: &str) -> RemoteServerKey {
    RemoteServerKey {
        server_name: server.to_owned(),
        key_id: key_id.to_owned(),
        public_key: vec![3; 32],
        valid_until_ts,
        is_old: false,
        cache_until_ts: valid_until_ts,
        fetched_ts: 1,
        key_object: object.to_owned(),
    }
}

#[tokio::test]
async fn remote_server_keys_are_cached_per_server_and_replaced_on_refetch() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        assert!(store.remote_server_keys("a.org").await.unwrap().is_empty());
        let first = remote("a.org", "ed25519:1", 100, "{}");
        let other = remote("b.org", "ed25519:1", 100, "{}");
        store
            .store_remote_server_keys(&[first.clone(), other])
            .await
            .unwrap();
        assert_eq!(
            store.remote_server_keys("a.org").await.unwrap(),
            vec![first]
        );
        let mut refetched = remote("a.org", "ed25519:1", 200, r#"{"new":true}"#);
        refetched.is_old = true;
        store
            .store_remote_server_keys(std::slice::from_ref(&refetched))
            .await
            .unwrap();
        assert_eq!(
            store.remote_server_keys("a.org").await.unwrap(),
            vec![refetched],
            "{kind:?}"
        );
        myelin_store::test_support::expire_remote_server_keys(&store, "a.org").await;
        assert_eq!(
            store.remote_server_keys("a.org").await.unwrap()[0].cache_until_ts,
            0
        );
        assert_eq!(
            store.remote_server_keys("b.org").await.unwrap()[0].cache_until_ts,
            100
        );
        store.close().await;
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_reapply_migrations() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        store.insert_signing_key(&key("a_1", 1)).await.unwrap();
        store.close().await;

        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(
            store.signing_keys().await.unwrap(),
            vec![key("a_1", 1)],
            "{kind:?}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn database_from_a_newer_schema_is_refused() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        myelin_store::test_support::record_future_migration(&store, 99_999).await;
        store.close().await;

        let err = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap_err();
        match err {
            StoreError::SchemaTooNew { found, known } => {
                assert_eq!(found, 99_999, "{kind:?}");
                assert!(known < found);
                assert!(err_text(found, known).contains("newer version of Myelin"));
            }
            other => panic!("{kind:?}: expected SchemaTooNew, got {other}"),
        }
    }
}

fn err_text(found: i64, known: i64) -> String {
    StoreError::SchemaTooNew { found, known }.to_string()
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let db = TestDatabase::create(myelin_store::DatabaseKind::Sqlite).await;
    let store = Store::open(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        myelin_store::test_support::sqlite_journal_mode(&store).await,
        "wal"
    );
}

#[tokio::test]
async fn unknown_url_scheme_is_an_invalid_url() {
    let err = Store::open("mysql://localhost/x", &StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err}");
}
