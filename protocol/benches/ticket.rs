//! Ticket verification speed (target ≤ 10 µs per ticket; see BENCHMARKS.md).
//!
//! Run: `cargo bench -p rtcroom-protocol --bench ticket`

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use rtcroom_protocol::RoomId;
use rtcroom_protocol::usersig::{
    Privileges, gen_private_map_key, gen_user_sig, verify_private_map_key, verify_user_sig,
};

const APP: u64 = 1_400_000_000;
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
const NOW: u64 = 1_700_000_000;
/// An official-library vector (npm tls-sig-api-v2 1.0.2), zlib default level.
const OFFICIAL: &str = "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwimpeXmVUInilOzEgoLMFCUrQxMDKIDIlGTmpipZGZqjiqZWFGQWgcRNTU2N4KLFmelKVkppUb5BwfnGjqlhBb6VgU5RhQGG-kkRoUbGqdpGyYku2qX57j4epkmGRh4mtkq1AAf0MDY_";

fn bench(c: &mut Criterion) {
    let ours = gen_user_sig(APP, KEY, "denny", 86_400, NOW);
    let room = RoomId::numeric(10001).unwrap();
    let pmk = gen_private_map_key(APP, KEY, "denny", 86_400, NOW, &room, Privileges::ALL);

    c.bench_function("verify_user_sig/official_vector", |b| {
        b.iter(|| verify_user_sig(black_box(OFFICIAL), APP, KEY, "denny", NOW).unwrap())
    });
    c.bench_function("verify_user_sig/generated", |b| {
        b.iter(|| verify_user_sig(black_box(&ours), APP, KEY, "denny", NOW).unwrap())
    });
    c.bench_function("verify_private_map_key", |b| {
        b.iter(|| verify_private_map_key(black_box(&pmk), APP, KEY, "denny", &room, NOW).unwrap())
    });
    c.bench_function("verify_user_sig/wrong_key", |b| {
        b.iter(|| verify_user_sig(black_box(&ours), APP, "wrong", "denny", NOW).unwrap_err())
    });
    c.bench_function("gen_user_sig", |b| {
        b.iter(|| gen_user_sig(APP, KEY, black_box("denny"), 86_400, NOW))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
