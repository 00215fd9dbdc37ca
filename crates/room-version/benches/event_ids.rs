//! What computing an event's id and content hash costs in each room version: a typical member
//! event and a message are parsed into a [`Pdu`] (format checks + id: the reference hash over
//! the version's redacted form, or in rooms 1 and 2 the id carried in the PDU) and their content
//! hash computed. The bar: no version slower than room 12.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use myelin_room_version::canonical::content_hash;
use myelin_room_version::pdu::Pdu;
use myelin_room_version::version::RoomVersion;

#[path = "support/event_ids_input.rs"]
mod event_ids_input;
use event_ids_input::events;

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
