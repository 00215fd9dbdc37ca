//! What one `/query/accounts` reply of 2,048 keys costs to check: parse each key with the strict
//! grammar (including point decompression) and verify its signed `{account_name, domain}` answer.
//! The batch API is measured on one thread and on all cores. Also: verifying 2,048
//! account-key-signed PDUs.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use myelin_room_version::account_key::AccountKey;
use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::{EventSigner, Pdu, build_pdu};
use myelin_room_version::signing::{
    KeyPair, sign_json_with_account_key, verify_json_with_account_key,
    verify_json_with_account_keys, verify_json_with_account_keys_threads,
};
use myelin_room_version::verify::{ServerKeys, Verified, verify_pdu};
use myelin_room_version::version::RoomVersion;
use ruma::CanonicalJsonObject;
use serde_json::json;

fn key(i: usize) -> KeyPair {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    KeyPair::from_seed(&seed)
}

fn bench(c: &mut Criterion) {
    let answers: Vec<(String, CanonicalJsonObject)> = (0..2048)
        .map(|i| {
            let k = key(i);
            let mut obj = value_to_object(
                json!({"account_name": format!("user{i}"), "domain": "example.org"}),
            )
            .unwrap();
            sign_json_with_account_key(&mut obj, &k).unwrap();
            (k.account_key().as_str().to_owned(), obj)
        })
        .collect();
    c.bench_function("verify_2048_account_key_answers", |b| {
        b.iter(|| {
            for (key_str, obj) in &answers {
                let key = AccountKey::parse(key_str).unwrap();
                verify_json_with_account_key(obj, &key).unwrap();
            }
        })
    });

    // The same with keys already parsed: the cost of the signature checks alone.
    let parsed: Vec<(AccountKey, &CanonicalJsonObject)> = answers
        .iter()
        .map(|(k, o)| (AccountKey::parse(k).unwrap(), o))
        .collect();
    c.bench_function("verify_2048_account_key_answers_keys_preparsed", |b| {
        b.iter(|| {
            for (key, obj) in &parsed {
                verify_json_with_account_key(obj, key).unwrap();
            }
        })
    });

    // The whole reply through the batch API on one thread (ed25519 batch equations).
    c.bench_function("verify_2048_account_key_answers_batch_one_thread", |b| {
        b.iter(|| {
            let items: Vec<(AccountKey, &CanonicalJsonObject)> = answers
                .iter()
                .map(|(k, o)| (AccountKey::parse(k).unwrap(), o))
                .collect();
            let results = verify_json_with_account_keys_threads(&items, 1);
            assert!(results.iter().all(Result::is_ok));
        })
    });

    // The whole reply through the batch API (split over the cores).
    c.bench_function("verify_2048_account_key_answers_batch", |b| {
        b.iter(|| {
            let items: Vec<(AccountKey, &CanonicalJsonObject)> = answers
                .iter()
                .map(|(k, o)| (AccountKey::parse(k).unwrap(), o))
                .collect();
            let results = verify_json_with_account_keys(&items);
            assert!(results.iter().all(Result::is_ok));
        })
    });

    let version = RoomVersion::get("org.matrix.12.4243").unwrap();
    let pdus: Vec<Pdu> = (0..2048)
        .map(|i| {
            let k = key(i);
            let partial = value_to_object(json!({"type": "m.room.message",
                "room_id": "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "sender": k.account_key().user_id("example.org"), "content": {"body": "hello"},
                "origin_server_ts": 1, "depth": 1, "prev_events": ["$p"], "auth_events": ["$a"]}))
            .unwrap();
            build_pdu(partial, version, EventSigner::Account(&k)).unwrap()
        })
        .collect();
    let none = ServerKeys::new();
    c.bench_function("verify_2048_account_key_pdus", |b| {
        b.iter(|| {
            for pdu in &pdus {
                assert_eq!(
                    black_box(verify_pdu(pdu, version, &none)),
                    Ok(Verified::All)
                );
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);

/// The allocator of the server binary (crates/myelin), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
