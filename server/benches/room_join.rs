//! The room state machine's share of a join burst: 200 members joining one room, as the room
//! actor processes them one after another (the part of a burst that cannot run in parallel).
//!
//! Run: `cargo bench -p rtcroom-server --bench room_join`

use std::time::Instant;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use rtcroom_protocol::{Mode, Role, RoomId, UserId};
use rtcroom_server::room::{JoinInput, Room, RoomKey, RoomLimits};

fn burst(mode: Mode, n: u64, users: &[UserId]) -> usize {
    let mut room = Room::new(
        RoomKey {
            sdk_app_id: 1_400_000_000,
            room_id: RoomId::numeric(1234).expect("a valid room id"),
        },
        mode,
        RoomLimits::default(),
    );
    let now = Instant::now();
    let mut effects = 0;
    for (i, user) in users.iter().enumerate().take(n as usize) {
        let (joined, fx) = room
            .join(
                JoinInput {
                    session: i as u64 + 1,
                    user_id: user.clone(),
                    mode,
                    role: Some(if mode == Mode::Rtc {
                        Role::Anchor
                    } else {
                        Role::Audience
                    }),
                    privileges: None,
                    kind: Default::default(),
                },
                now,
            )
            .expect("joins succeed");
        effects += fx.len() + joined.members_json.len();
        black_box(&joined);
    }
    effects
}

fn bench(c: &mut Criterion) {
    let users: Vec<UserId> = (0..200)
        .map(|i| UserId::new(&format!("bench-{i}")).expect("a valid user id"))
        .collect();
    c.bench_function("room/200_joins_rtc", |b| {
        b.iter(|| burst(Mode::Rtc, 200, &users))
    });
    c.bench_function("room/200_joins_live_audience", |b| {
        b.iter(|| burst(Mode::Live, 200, &users))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
