//! State resolution of two forks whose states differ in N events (N = 1,000 and 10,000).
//!
//! The room (v12 and the account-key version) has N joined members; fork A and fork B each
//! changed every member's display name, so N state keys are conflicted and every conflicted
//! event goes through mainline ordering and the iterative auth checks. Auth chains are given
//! (as a caller with an auth-chain index would); the conflicted subgraph is left to the crate,
//! which finds no conflicted event in any auth chain here and so has no subgraph to walk.
//! Allocation uses the server binary's allocator (mimalloc).

use std::collections::{HashMap, HashSet};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use myelin_room_version::auth::auth_chain;
use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::Pdu;
use myelin_room_version::signing::KeyPair;
use myelin_room_version::state_res::{StateMap, resolve_state};
use myelin_room_version::version::RoomVersion;
use serde_json::{Value, json};

struct Fixture {
    events: HashMap<String, Pdu>,
    forks: Vec<StateMap>,
    chains: Vec<HashSet<String>>,
}

fn user(version: &RoomVersion, i: usize) -> String {
    if version.uses_account_keys() {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        KeyPair::from_seed(&seed)
            .account_key()
            .user_id("example.org")
    } else {
        format!("@user{i}:example.org")
    }
}

fn fixture(version: &'static RoomVersion, n: usize) -> Fixture {
    let mut events = HashMap::new();
    let mut ts = 0u64;
    let creator = user(version, 0);
    let mut add = |id: String,
                   kind: &str,
                   sender: &str,
                   state_key: &str,
                   content: Value,
                   auth: Vec<String>| {
        ts += 1;
        let mut e = json!({"type": kind, "sender": sender, "state_key": state_key, "content": content,
                           "origin_server_ts": ts, "depth": ts, "prev_events": [], "auth_events": auth});
        if kind != "m.room.create" {
            e["room_id"] = json!("!create");
        }
        let pdu = Pdu::from_stored(&id, value_to_object(e).unwrap(), version).unwrap();
        events.insert(id.clone(), pdu);
        id
    };
    let create = add(
        "$create".into(),
        "m.room.create",
        &creator,
        "",
        json!({"room_version": version.id()}),
        vec![],
    );
    let _ = create;
    let cj = add(
        "$creator-join".into(),
        "m.room.member",
        &creator,
        &creator,
        json!({"membership": "join"}),
        vec![],
    );
    let pl = add(
        "$pl".into(),
        "m.room.power_levels",
        &creator,
        "",
        json!({}),
        vec![cj.clone()],
    );
    let jr = add(
        "$jr".into(),
        "m.room.join_rules",
        &creator,
        "",
        json!({"join_rule": "public"}),
        vec![cj.clone(), pl.clone()],
    );
    let mut base: StateMap = HashMap::new();
    base.insert(("m.room.create".into(), String::new()), "$create".into());
    base.insert(("m.room.member".into(), creator.clone()), cj.clone());
    base.insert(("m.room.power_levels".into(), String::new()), pl.clone());
    base.insert(("m.room.join_rules".into(), String::new()), jr.clone());
    let mut fork_a = base.clone();
    let mut fork_b = base;
    for i in 1..=n {
        let u = user(version, i);
        let join = add(
            format!("$join{i}"),
            "m.room.member",
            &u,
            &u,
            json!({"membership": "join"}),
            vec![pl.clone(), jr.clone()],
        );
        for (fork, tag) in [(&mut fork_a, "a"), (&mut fork_b, "b")] {
            let id = add(
                format!("$name{i}{tag}"),
                "m.room.member",
                &u,
                &u,
                json!({"membership": "join", "displayname": tag}),
                vec![pl.clone(), jr.clone(), join.clone()],
            );
            fork.insert(("m.room.member".into(), u.clone()), id);
        }
    }
    let forks = vec![fork_a, fork_b];
    let chains = forks
        .iter()
        .map(|f| auth_chain(f.values().map(String::as_str), |id| events.get(id)))
        .collect();
    Fixture {
        events,
        forks,
        chains,
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_res_two_forks");
    group.sample_size(10);
    for version_id in ["12", "org.matrix.12.4243"] {
        let version = RoomVersion::get(version_id).unwrap();
        for n in [1_000usize, 10_000] {
            let f = fixture(version, n);
            // Sanity: the resolution is real work with the expected outcome size.
            let resolved =
                resolve_state(version, &f.forks, &f.chains, |id| f.events.get(id), None).unwrap();
            assert_eq!(resolved.len(), n + 4);
            group.bench_with_input(BenchmarkId::new(version_id, n), &f, |b, f| {
                b.iter(|| {
                    black_box(
                        resolve_state(version, &f.forks, &f.chains, |id| f.events.get(id), None)
                            .unwrap(),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The allocator of the server binary (crates/myelin), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
