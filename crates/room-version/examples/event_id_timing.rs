//! Event id + content hash per room version, measured interleaved: each round times every
//! version in turn, and the best round counts. On a shared, loaded machine this compares the
//! versions more fairly than criterion's one-version-after-another runs (`benches/event_ids.rs`).
//!
//! `cargo run --release -p myelin-room-version --example event_id_timing`

use std::hint::black_box;
use std::time::{Duration, Instant};

use myelin_room_version::canonical::content_hash;
use myelin_room_version::pdu::Pdu;
use myelin_room_version::version::RoomVersion;
use ruma::CanonicalJsonObject;

#[path = "../benches/support/event_ids_input.rs"]
mod event_ids_input;
use event_ids_input::events;

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
