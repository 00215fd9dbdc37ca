//! Event id + content hash per room version, measured interleaved: each round times every
//! version in turn, and the best round counts. On a shared, loaded machine this compares the
//! versions more fairly than criterion's one-version-after-another runs (`benches/event_ids.rs`).
//!
//! `cargo run --release -p myelin-room-version --example event_id_timing`

use std::hint::black_box;
use std::time::{Duration, Instant};

use myelin_room_version::canonical::{content_hash, value_to_object};
use myelin_room_version::pdu::Pdu;
use myelin_room_version::version::{RoomIdFormat, RoomVersion};
use ruma::CanonicalJsonObject;
use serde_json::json;

fn events(version: &RoomVersion) -> Vec<CanonicalJsonObject> {
    let cite = |n: u32| {
        let id = if version.event_ids_in_pdu() {
            format!("$prev{n}:a.example")
        } else {
            "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg".to_owned()
        };
        if version.event_ids_in_pdu() {
            json!([id, {"sha256": "Rqnc+F+dvnEYJTyHq/iKxU2bZ1CI92+kuZq3a5lr5Zg"}])
        } else {
            json!(id)
        }
    };
    let room_id = match version.room_id_format() {
        RoomIdFormat::ServerScoped => "!room:a.example".to_owned(),
        RoomIdFormat::CreateEventHash => "!Aqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg".to_owned(),
    };
    let sig =
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg";
    [
        json!({"type": "m.room.member", "state_key": "@bob:a.example",
               "content": {"membership": "join", "displayname": "Bob",
                           "avatar_url": "mxc://a.example/abcdef"}}),
        json!({"type": "m.room.message",
               "content": {"msgtype": "m.text", "body": "hello ".repeat(40)}}),
    ]
    .into_iter()
    .map(|mut e| {
        let o = e.as_object_mut().unwrap();
        o.insert("room_id".into(), json!(room_id));
        o.insert("sender".into(), json!("@bob:a.example"));
        o.insert("origin".into(), json!("a.example"));
        o.insert("origin_server_ts".into(), json!(1_700_000_000_000u64));
        o.insert("depth".into(), json!(42));
        o.insert("prev_events".into(), json!([cite(1)]));
        o.insert("auth_events".into(), json!([cite(2), cite(3), cite(4)]));
        o.insert(
            "hashes".into(),
            json!({"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}),
        );
        o.insert(
            "signatures".into(),
            json!({"a.example": {"ed25519:a1": sig}}),
        );
        if version.event_ids_in_pdu() {
            o.insert("event_id".into(), json!("$abcdef:a.example"));
        }
        value_to_object(e).unwrap()
    })
    .collect()
}

fn main() {
    let versions: Vec<&RoomVersion> = RoomVersion::all()
        .iter()
        .copied()
        .filter(|v| !v.uses_account_keys())
        .collect();
    let inputs: Vec<Vec<CanonicalJsonObject>> = versions.iter().map(|v| events(v)).collect();
    const ITERS: u32 = 100;
    const ROUNDS: usize = 400;
    let mut best = vec![Duration::MAX; versions.len()];
    for _ in 0..ROUNDS {
        for (i, version) in versions.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..ITERS {
                for e in &inputs[i] {
                    let pdu = Pdu::from_canonical(black_box(e.clone()), version).unwrap();
                    black_box(pdu.event_id());
                    black_box(content_hash(pdu.json()));
                }
            }
            best[i] = best[i].min(start.elapsed() / ITERS);
        }
    }
    let v12 = versions
        .iter()
        .position(|v| v.id() == "12")
        .map(|i| best[i])
        .unwrap_or(Duration::MAX);
    for (version, time) in versions.iter().zip(&best) {
        println!(
            "room {:>2}: {:>7.2} µs for a member event + a message ({:.2}× room 12)",
            version.id(),
            time.as_secs_f64() * 1e6,
            time.as_secs_f64() / v12.as_secs_f64()
        );
    }
}

/// The allocator of the server binary (crates/myelin), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
