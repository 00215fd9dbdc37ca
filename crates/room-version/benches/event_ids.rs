//! What computing an event's id and content hash costs in each room version: a typical member
//! event and a message are parsed into a [`Pdu`] (format checks + id: the reference hash over
//! the version's redacted form, or in rooms 1 and 2 the id carried in the PDU) and their content
//! hash computed. The bar: no version slower than room 12.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
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

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_id_and_content_hash");
    // The account-key version hashes like room 12; its senders need key-form ids, so it is
    // left out rather than given different events.
    for version in RoomVersion::all().iter().filter(|v| !v.uses_account_keys()) {
        let evs = events(version);
        group.bench_with_input(BenchmarkId::from_parameter(version.id()), &evs, |b, evs| {
            b.iter(|| {
                for e in evs {
                    let pdu = Pdu::from_canonical(black_box(e.clone()), version).unwrap();
                    black_box(pdu.event_id());
                    black_box(content_hash(pdu.json()));
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);

/// The allocator of the server binary (crates/myelin), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
