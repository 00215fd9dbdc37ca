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

/// Retries are claimed, not just read: only unverified keys past their retry time that are
/// still members of a room here, the most overdue chosen first; a claimed key is not claimed again until
/// its lease runs out (another process, or the next round, leaves it alone).
#[tokio::test]
async fn due_unverified_keys_of_room_members_are_claimed_once() {
    use myelin_store::{CurrentStateChange, NewEvent};
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        let room = store
            .create_room(
                "!r:my.example",
                "org.matrix.12.4243",
                "@C:my.example",
                false,
                0,
            )
            .await
            .unwrap();
        let mut before = None;
        for (depth, (id, member, membership)) in [
            ("$create", None, None),
            ("$m1", Some("@M1:a.example"), Some("join")),
            ("$m2", Some("@M2:a.example"), Some("invite")),
            ("$m3", Some("@M3:a.example"), Some("leave")),
            ("$m4", Some("@M4:a.example"), Some("join")),
        ]
        .into_iter()
        .enumerate()
        {
            let (kind, state_key) = match member {
                Some(member) => ("m.room.member", member),
                None => ("m.room.create", ""),
            };
            let persisted = store
                .persist_event(&NewEvent {
                    room_nid: room,
                    event_id: id,
                    event_type: kind,
                    state_key: Some(state_key),
                    sender: member.unwrap_or("@C:my.example"),
                    depth: depth as i64 + 1,
                    origin_server_ts: 1,
                    json: "{}",
                    state_group_before: before,
                    current_state: CurrentStateChange::Extend,
                    membership: member.zip(membership),
                    now: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            before = persisted.state_group;
        }
        let unverified = |at| RemoteKeyVerdict::Unverified {
            outcome: "unreachable",
            next_attempt_ts: at,
        };
        // M1 and M2 are due (M2 longer overdue), M3 left the room, M4 is not due yet, and N
        // is in no room.
        for (key, at) in [("M1", 50), ("M2", 40), ("M3", 10), ("M4", 500), ("N", 10)] {
            store
                .record_remote_account_key(key, "a.example", &unverified(at), 1)
                .await
                .unwrap();
        }
        let mut claimed = store.claim_due_account_keys(100, 1000, 10).await.unwrap();
        claimed.sort();
        assert_eq!(
            claimed,
            vec!["@M1:a.example".to_owned(), "@M2:a.example".to_owned()],
            "{kind:?}"
        );
        // With room for one, the longer overdue goes first.
        store
            .record_remote_account_key("M1", "a.example", &unverified(50), 2)
            .await
            .unwrap();
        store
            .record_remote_account_key("M2", "a.example", &unverified(40), 2)
            .await
            .unwrap();
        let first = store.claim_due_account_keys(100, 1000, 1).await.unwrap();
        assert_eq!(first, vec!["@M2:a.example".to_owned()], "{kind:?}");
        store
            .record_remote_account_key("M1", "a.example", &unverified(1000), 3)
            .await
            .unwrap();
        // Leased until 1000: not claimed again before then, claimed after.
        assert!(
            store
                .claim_due_account_keys(200, 1200, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = store.claim_due_account_keys(1000, 2000, 1).await.unwrap();
        assert_eq!(again.len(), 1, "{kind:?}: the limit holds");
        store.close().await;
    }
}

/// One answer's verdicts recorded together (one transaction) follow the same transitions as
/// one at a time, in order: a verification, a missing key, an erasure, a key already verified
/// for another domain (stays unverified), and a later verdict in the same batch about a key
/// verified earlier in it (not downgraded). An empty batch writes nothing.
#[tokio::test]
async fn one_answer_is_recorded_at_once_under_the_same_transitions() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        let verified = |account_name| RemoteKeyVerdict::Verified { account_name };
        let missing = RemoteKeyVerdict::Unverified {
            outcome: "missing",
            next_attempt_ts: 100,
        };
        assert_eq!(
            store
                .record_remote_account_key("D", "b.example", &verified("dora"), 5)
                .await
                .unwrap(),
            KeyState::Verified
        );
        let states = store
            .record_remote_account_keys(
                "a.example",
                &[
                    ("A", verified("alice")),
                    ("B", missing.clone()),
                    ("C", RemoteKeyVerdict::Erased { attestation: "{}" }),
                    ("D", verified("dora")),
                    ("A", missing.clone()),
                ],
                10,
            )
            .await
            .unwrap();
        assert_eq!(
            states,
            vec![
                KeyState::Verified,
                KeyState::Unverified,
                KeyState::Erased,
                KeyState::Unverified,
                KeyState::Verified,
            ],
            "{kind:?}"
        );
        let ids: Vec<String> = ["A", "B", "C", "D"]
            .iter()
            .map(|key| format!("@{key}:a.example"))
            .collect();
        let mut rows = store.account_keys_by_user_ids(&ids).await.unwrap();
        rows.sort_by(|a, b| a.account_key.cmp(&b.account_key));
        assert_eq!(rows.len(), 4, "{kind:?}");
        assert_eq!(rows[0].account_name.as_deref(), Some("alice"), "{kind:?}");
        assert_eq!(rows[0].first_verified_ts, Some(10), "{kind:?}");
        assert_eq!(rows[1].next_attempt_ts, Some(100), "{kind:?}");
        assert_eq!(rows[1].last_outcome.as_deref(), Some("missing"), "{kind:?}");
        assert_eq!(rows[2].state, KeyState::Erased, "{kind:?}");
        assert_eq!(rows[3].state, KeyState::Unverified, "{kind:?}");
        assert!(
            store
                .record_remote_account_keys("a.example", &[], 20)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.unverified_account_key_count().await.unwrap(),
            2,
            "{kind:?}"
        );
        store.close().await;
    }
}

/// Reads that go by account across rooms (MSC4243.md §2.7: presence, device lists, who shares a
/// room with whom) find a remote account through its verified key in an account-key room and
/// name it by account; keys held unverified or erased name nobody (and are not counted as
/// joined); a key verified late announces its account's device list to this server's clients.
#[tokio::test]
async fn cross_room_reads_name_remote_members_by_account() {
    use myelin_store::{CurrentStateChange, NewEvent};
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        store
            .create_user(&myelin_store::UserRow {
                user_id: "@alice:my.example".to_owned(),
                localpart: "alice".to_owned(),
                password_hash: None,
                is_admin: false,
                created_ts: 0,
                deactivated_ts: None,
            })
            .await
            .unwrap();
        store
            .insert_local_account_key(&local("KA", "alice"))
            .await
            .unwrap();
        let verified = |name| RemoteKeyVerdict::Verified { account_name: name };
        let unverified = RemoteKeyVerdict::Unverified {
            outcome: "unreachable",
            next_attempt_ts: 10,
        };
        store
            .record_remote_account_key("KB", "b.example", &verified("bob"), 1)
            .await
            .unwrap();
        store
            .record_remote_account_key("KU", "b.example", &unverified, 1)
            .await
            .unwrap();
        store
            .record_remote_account_key("KE", "c.example", &verified("erin"), 1)
            .await
            .unwrap();
        store
            .record_remote_account_key(
                "KE",
                "c.example",
                &RemoteKeyVerdict::Erased { attestation: "{}" },
                2,
            )
            .await
            .unwrap();
        let room = store
            .create_room(
                "!r:my.example",
                "org.matrix.12.4243",
                "@KA:my.example",
                true,
                0,
            )
            .await
            .unwrap();
        let mut before = None;
        for (depth, (id, member)) in [
            ("$create", None),
            ("$alice", Some("@KA:my.example")),
            ("$bob", Some("@KB:b.example")),
            ("$ursula", Some("@KU:b.example")),
            ("$erin", Some("@KE:c.example")),
        ]
        .into_iter()
        .enumerate()
        {
            let (kind, state_key) = match member {
                Some(member) => ("m.room.member", member),
                None => ("m.room.create", ""),
            };
            let persisted = store
                .persist_event(&NewEvent {
                    room_nid: room,
                    event_id: id,
                    event_type: kind,
                    state_key: Some(state_key),
                    sender: member.unwrap_or("@KA:my.example"),
                    depth: depth as i64 + 1,
                    origin_server_ts: 1,
                    json: "{}",
                    state_group_before: before,
                    current_state: CurrentStateChange::Extend,
                    membership: member.map(|m| (m, "join")),
                    now: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            before = persisted.state_group;
        }
        let alice = "@alice:my.example";
        let bob = "@bob:b.example";

        let mut mates = store.room_mates(alice).await.unwrap();
        mates.sort();
        assert_eq!(mates, vec![alice.to_owned(), bob.to_owned()], "{kind:?}");
        let mut new_mates = store.room_mates_since(alice, 0).await.unwrap();
        new_mates.sort();
        assert_eq!(new_mates, vec![bob.to_owned()], "{kind:?}");
        let sharing = store
            .sharing_a_room(alice, &[bob, "@carol:b.example", "@KU:b.example"])
            .await
            .unwrap();
        assert_eq!(sharing.get(bob), Some(&true), "{kind:?}");
        assert_eq!(sharing.get("@carol:b.example"), Some(&false), "{kind:?}");
        assert!(
            store
                .shares_room_with_server(bob, "my.example")
                .await
                .unwrap(),
            "{kind:?}"
        );
        assert!(
            !store
                .shares_room_with_server("@ursula:b.example", "my.example")
                .await
                .unwrap(),
            "{kind:?}: an unverified key is nobody's"
        );
        assert!(
            store
                .shared_rooms_changed_since(bob, "my.example", 0)
                .await
                .unwrap(),
            "{kind:?}"
        );
        let mut changes: Vec<String> = store
            .device_list_membership_changes(alice, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.user_id)
            .collect();
        changes.sort();
        assert_eq!(changes, vec![bob.to_owned()], "{kind:?}");
        // Joined: alice and bob; not the unverified or erased keys.
        let space = store
            .space_room_state(room, &["m.room.name"], "m.space.child")
            .await
            .unwrap();
        assert_eq!(space.joined_members, 2, "{kind:?}");
        let published = store.published_rooms(&["m.room.name"]).await.unwrap();
        assert_eq!(published.len(), 1, "{kind:?}");
        assert_eq!(published[0].joined_members, 2, "{kind:?}");

        // Ursula's key is verified at the second ask: her account's device list becomes this
        // server's clients' business.
        let lists_before = store.stream_position("device_lists").await.unwrap();
        store
            .record_remote_account_key("KU", "b.example", &verified("ursula"), 3)
            .await
            .unwrap();
        let lists_now = store.stream_position("device_lists").await.unwrap();
        assert_eq!(
            store
                .device_list_changes(lists_before, lists_now)
                .await
                .unwrap(),
            vec!["@ursula:b.example".to_owned()],
            "{kind:?}"
        );
        assert!(
            store
                .shares_room_with_server("@ursula:b.example", "my.example")
                .await
                .unwrap(),
            "{kind:?}"
        );
        // Nora joins, and her key is verified at the first ask, which ran beside the append:
        // she is announced all the same.
        store
            .persist_event(&NewEvent {
                room_nid: room,
                event_id: "$nora",
                event_type: "m.room.member",
                state_key: Some("@KN:b.example"),
                sender: "@KN:b.example",
                depth: 10,
                origin_server_ts: 1,
                json: "{}",
                state_group_before: before,
                current_state: CurrentStateChange::Extend,
                membership: Some(("@KN:b.example", "join")),
                now: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .record_remote_account_key("KN", "b.example", &verified("nora"), 4)
            .await
            .unwrap();
        let lists_after = store.stream_position("device_lists").await.unwrap();
        assert_eq!(
            store
                .device_list_changes(lists_now, lists_after)
                .await
                .unwrap(),
            vec!["@nora:b.example".to_owned()],
            "{kind:?}"
        );
        store.close().await;
    }
}
