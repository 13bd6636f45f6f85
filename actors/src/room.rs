//! What a client knows about its room: the visible members and the published streams.
//!
//! Plain state: server events go in, [`ClientEvent`]s come out. A join result (first join or
//! re-join after a reconnect) is applied as a diff against what the client knew, so a re-join
//! reports only what changed while the client was away, and a first join reports everyone
//! already there (one `peer-join` per member, one `stream-added` per stream).
//! Duplicate or out-of-order server events (a leave for an unknown member, a second add)
//! are absorbed instead of being passed on twice.

use std::collections::{BTreeMap, BTreeSet};

use rtcroom_protocol::UserId;
use rtcroom_protocol::signal::{JoinResult, LeaveReason, ServerEvent, StreamInfo, StreamType};

use crate::event::{ClientEvent, RemoteMutedState};

/// The room as one client sees it.
#[derive(Clone, Debug, Default)]
pub struct RoomState {
    members: BTreeSet<UserId>,
    streams: BTreeMap<StreamKey, StreamInfo>,
}

/// Map key of a stream: `StreamType` is not `Ord` (it lives in the protocol crate), so the
/// type is keyed by its rank (main first).
type StreamKey = (UserId, u8);

fn rank(t: StreamType) -> u8 {
    match t {
        StreamType::Main => 0,
        StreamType::Auxiliary => 1,
    }
}

fn key(s: &StreamInfo) -> StreamKey {
    (s.user_id.clone(), rank(s.stream_type))
}

fn removed_info(user_id: &UserId, stream_type: StreamType) -> StreamInfo {
    StreamInfo {
        user_id: user_id.clone(),
        stream_type,
        has_audio: false,
        has_video: false,
        audio_muted: false,
        video_muted: false,
        video_codec: None,
        layers: Vec::new(),
    }
}

/// Mute events for the change from `old` to `new` of one stream.
fn mute_changes(old: &StreamInfo, new: &StreamInfo, out: &mut Vec<ClientEvent>) {
    let user_id = new.user_id.clone();
    if old.audio_muted != new.audio_muted {
        out.push(if new.audio_muted {
            ClientEvent::MuteAudio {
                user_id: user_id.clone(),
            }
        } else {
            ClientEvent::UnmuteAudio {
                user_id: user_id.clone(),
            }
        });
    }
    if old.video_muted != new.video_muted {
        out.push(if new.video_muted {
            ClientEvent::MuteVideo { user_id }
        } else {
            ClientEvent::UnmuteVideo { user_id }
        });
    }
}

impl RoomState {
    /// An empty room.
    pub fn new() -> Self {
        Self::default()
    }

    /// The visible members (not this client).
    pub fn members(&self) -> impl Iterator<Item = &UserId> {
        self.members.iter()
    }

    /// The published streams.
    pub fn streams(&self) -> impl Iterator<Item = &StreamInfo> {
        self.streams.values()
    }

    /// Forget everything (after leave or removal). Reports nothing: TRTC reports no
    /// peer-leave for the others when this client leaves.
    pub fn clear(&mut self) {
        self.members.clear();
        self.streams.clear();
    }

    /// A join (or re-join) succeeded with `result`: move to its snapshot and report the
    /// difference.
    pub fn joined(&mut self, result: &JoinResult) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        let new_members: BTreeSet<UserId> =
            result.members.iter().map(|m| m.user_id.clone()).collect();
        let new_streams: BTreeMap<StreamKey, StreamInfo> =
            result.streams.iter().map(|s| (key(s), s.clone())).collect();
        // Streams that went away, then members that went away.
        for (k, s) in &self.streams {
            if !new_streams.contains_key(k) {
                out.push(ClientEvent::StreamRemoved(s.clone()));
            }
        }
        for m in &self.members {
            if !new_members.contains(m) {
                out.push(ClientEvent::PeerLeave {
                    user_id: m.clone(),
                    reason: LeaveReason::Timeout,
                });
            }
        }
        // Members that appeared, then streams that appeared or changed.
        for m in &new_members {
            if !self.members.contains(m) {
                out.push(ClientEvent::PeerJoin { user_id: m.clone() });
            }
        }
        for (k, s) in &new_streams {
            match self.streams.get(k) {
                None => out.push(ClientEvent::StreamAdded(s.clone())),
                Some(old) => {
                    if old.has_audio != s.has_audio || old.has_video != s.has_video {
                        out.push(ClientEvent::StreamUpdated(s.clone()));
                    }
                    mute_changes(old, s, &mut out);
                }
            }
        }
        self.members = new_members;
        self.streams = new_streams;
        out
    }

    /// Apply a server event; `client-banned` is not a room event and yields nothing here.
    pub fn apply(&mut self, event: ServerEvent) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        match event {
            ServerEvent::PeerJoin { user_id } => {
                let fresh = self.members.insert(user_id.clone());
                if fresh {
                    out.push(ClientEvent::PeerJoin { user_id });
                }
            }
            ServerEvent::PeerLeave { user_id, reason } => {
                // The server removes the streams first; if it did not, do it here.
                let gone: Vec<_> = self
                    .streams
                    .keys()
                    .filter(|(u, _)| *u == user_id)
                    .cloned()
                    .collect();
                for k in gone {
                    if let Some(s) = self.streams.remove(&k) {
                        out.push(ClientEvent::StreamRemoved(s));
                    }
                }
                if self.members.remove(&user_id) {
                    out.push(ClientEvent::PeerLeave { user_id, reason });
                }
            }
            ServerEvent::StreamAdded(s) | ServerEvent::StreamUpdated(s) => {
                match self.streams.insert(key(&s), s.clone()) {
                    None => out.push(ClientEvent::StreamAdded(s)),
                    Some(old) => {
                        if old.has_audio != s.has_audio || old.has_video != s.has_video {
                            out.push(ClientEvent::StreamUpdated(s.clone()));
                        }
                        mute_changes(&old, &s, &mut out);
                    }
                }
            }
            ServerEvent::StreamRemoved {
                user_id,
                stream_type,
            } => {
                if let Some(s) = self.streams.remove(&(user_id, rank(stream_type))) {
                    out.push(ClientEvent::StreamRemoved(s));
                }
            }
            ServerEvent::MuteAudio { user_id } => {
                self.set_muted(&user_id, |s| s.audio_muted = true);
                out.push(ClientEvent::MuteAudio { user_id });
            }
            ServerEvent::UnmuteAudio { user_id } => {
                self.set_muted(&user_id, |s| s.audio_muted = false);
                out.push(ClientEvent::UnmuteAudio { user_id });
            }
            ServerEvent::MuteVideo { user_id } => {
                self.set_muted(&user_id, |s| s.video_muted = true);
                out.push(ClientEvent::MuteVideo { user_id });
            }
            ServerEvent::UnmuteVideo { user_id } => {
                self.set_muted(&user_id, |s| s.video_muted = false);
                out.push(ClientEvent::UnmuteVideo { user_id });
            }
            ServerEvent::CustomMessage {
                user_id,
                cmd_id,
                seq,
                data,
            } => out.push(ClientEvent::CustomMessage {
                user_id,
                cmd_id,
                seq,
                data,
            }),
            // Handled by the client actor (it ends the session).
            ServerEvent::ClientBanned { .. } => {}
            // A newer server may send events this client does not know yet.
            _ => {}
        }
        out
    }

    /// The mute events carry no stream type; they apply to the member's main stream (the
    /// camera/microphone), or to its only stream.
    fn set_muted(&mut self, user_id: &UserId, f: impl Fn(&mut StreamInfo)) {
        let main = (user_id.clone(), rank(StreamType::Main));
        if let Some(s) = self.streams.get_mut(&main) {
            f(s);
        } else if let Some(s) = self
            .streams
            .iter_mut()
            .find(|((u, _), _)| u == user_id)
            .map(|(_, s)| s)
        {
            f(s);
        }
    }

    /// `getRemoteMutedState()`: one entry per remote member with a published main stream.
    pub fn muted_state(&self) -> Vec<RemoteMutedState> {
        self.streams
            .values()
            .filter(|s| s.stream_type == StreamType::Main)
            .filter_map(|s| self.muted_state_of(&s.user_id))
            .collect()
    }

    /// [`muted_state`](Self::muted_state)'s entry for one member (`None`: no main stream).
    pub fn muted_state_of(&self, user_id: &UserId) -> Option<RemoteMutedState> {
        self.streams
            .get(&(user_id.clone(), rank(StreamType::Main)))
            .map(|s| RemoteMutedState {
                user_id: s.user_id.clone(),
                has_audio: s.has_audio,
                has_video: s.has_video,
                audio_muted: s.audio_muted,
                video_muted: s.video_muted,
                has_small: s.layers.len() > 1,
            })
    }

    /// A placeholder descriptor for a stream that is not known (used in tests and logs).
    pub fn unknown_stream(user_id: &UserId, stream_type: StreamType) -> StreamInfo {
        removed_info(user_id, stream_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcroom_protocol::signal::MemberInfo;
    use rtcroom_protocol::{Role, RoomId};

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn stream(user: &str, t: StreamType, audio: bool, video: bool) -> StreamInfo {
        StreamInfo {
            user_id: u(user),
            stream_type: t,
            has_audio: audio,
            has_video: video,
            audio_muted: false,
            video_muted: false,
            video_codec: None,
            layers: Vec::new(),
        }
    }

    fn result(members: &[&str], streams: Vec<StreamInfo>) -> JoinResult {
        JoinResult {
            room_id: RoomId::numeric(1).unwrap(),
            role: Role::Anchor,
            members: members
                .iter()
                .map(|m| MemberInfo {
                    user_id: u(m),
                    role: Role::Anchor,
                })
                .collect(),
            streams,
            heartbeat_interval_s: 2,
        }
    }

    #[test]
    fn first_join_reports_everyone_already_there() {
        let mut r = RoomState::new();
        let bob = stream("bob", StreamType::Main, true, true);
        let ev = r.joined(&result(&["bob", "carol"], vec![bob.clone()]));
        assert_eq!(
            ev,
            vec![
                ClientEvent::PeerJoin { user_id: u("bob") },
                ClientEvent::PeerJoin {
                    user_id: u("carol")
                },
                ClientEvent::StreamAdded(bob),
            ]
        );
        assert_eq!(r.members().count(), 2);
    }

    #[test]
    fn rejoin_reports_only_the_difference() {
        let mut r = RoomState::new();
        let bob = stream("bob", StreamType::Main, true, true);
        let carol = stream("carol", StreamType::Main, true, false);
        r.joined(&result(&["bob", "carol"], vec![bob.clone(), carol.clone()]));
        let mut bob2 = stream("bob", StreamType::Main, true, false);
        bob2.audio_muted = true;
        let dave = stream("dave", StreamType::Auxiliary, false, true);
        let ev = r.joined(&result(&["bob", "dave"], vec![bob2.clone(), dave.clone()]));
        assert_eq!(
            ev,
            vec![
                ClientEvent::StreamRemoved(carol),
                ClientEvent::PeerLeave {
                    user_id: u("carol"),
                    reason: LeaveReason::Timeout
                },
                ClientEvent::PeerJoin { user_id: u("dave") },
                ClientEvent::StreamUpdated(bob2.clone()),
                ClientEvent::MuteAudio { user_id: u("bob") },
                ClientEvent::StreamAdded(dave),
            ]
        );
        // Same snapshot again: nothing.
        let again = result(&["bob", "dave"], r.streams().cloned().collect());
        assert!(r.joined(&again).is_empty());
    }

    #[test]
    fn events_apply_once() {
        let mut r = RoomState::new();
        let bob = u("bob");
        let join = ServerEvent::PeerJoin {
            user_id: bob.clone(),
        };
        assert_eq!(r.apply(join.clone()).len(), 1);
        assert!(
            r.apply(join).is_empty(),
            "a duplicate peer-join is absorbed"
        );
        let s = stream("bob", StreamType::Main, true, true);
        assert_eq!(
            r.apply(ServerEvent::StreamAdded(s.clone())),
            vec![ClientEvent::StreamAdded(s.clone())]
        );
        // Re-publishing with the same tracks changes nothing; with fewer it is an update.
        assert!(r.apply(ServerEvent::StreamAdded(s.clone())).is_empty());
        let audio_only = stream("bob", StreamType::Main, true, false);
        assert_eq!(
            r.apply(ServerEvent::StreamUpdated(audio_only.clone())),
            vec![ClientEvent::StreamUpdated(audio_only.clone())]
        );
        // An update for a stream not seen yet is an add.
        let aux = stream("bob", StreamType::Auxiliary, false, true);
        assert_eq!(
            r.apply(ServerEvent::StreamUpdated(aux.clone())),
            vec![ClientEvent::StreamAdded(aux.clone())]
        );
        assert_eq!(
            r.apply(ServerEvent::StreamRemoved {
                user_id: bob.clone(),
                stream_type: StreamType::Auxiliary
            }),
            vec![ClientEvent::StreamRemoved(aux)]
        );
        assert!(
            r.apply(ServerEvent::StreamRemoved {
                user_id: bob.clone(),
                stream_type: StreamType::Auxiliary
            })
            .is_empty()
        );
        // A leave with streams still up removes them first.
        assert_eq!(
            r.apply(ServerEvent::PeerLeave {
                user_id: bob.clone(),
                reason: LeaveReason::Normal
            }),
            vec![
                ClientEvent::StreamRemoved(audio_only),
                ClientEvent::PeerLeave {
                    user_id: bob.clone(),
                    reason: LeaveReason::Normal
                }
            ]
        );
        assert!(
            r.apply(ServerEvent::PeerLeave {
                user_id: bob,
                reason: LeaveReason::Normal
            })
            .is_empty()
        );
    }

    #[test]
    fn mutes_update_the_muted_state() {
        let mut r = RoomState::new();
        let bob = u("bob");
        r.apply(ServerEvent::StreamAdded(stream(
            "bob",
            StreamType::Main,
            true,
            true,
        )));
        r.apply(ServerEvent::StreamAdded(stream(
            "bob",
            StreamType::Auxiliary,
            false,
            true,
        )));
        assert_eq!(
            r.apply(ServerEvent::MuteAudio {
                user_id: bob.clone()
            }),
            vec![ClientEvent::MuteAudio {
                user_id: bob.clone()
            }]
        );
        r.apply(ServerEvent::MuteVideo {
            user_id: bob.clone(),
        });
        let state = r.muted_state();
        assert_eq!(state.len(), 1, "main streams only");
        assert!(state[0].audio_muted && state[0].video_muted);
        assert!(state[0].has_audio && state[0].has_video);
        r.apply(ServerEvent::UnmuteAudio {
            user_id: bob.clone(),
        });
        r.apply(ServerEvent::UnmuteVideo {
            user_id: bob.clone(),
        });
        let state = r.muted_state();
        assert!(!state[0].audio_muted && !state[0].video_muted);
        // A mute for someone without streams is still reported.
        assert_eq!(
            r.apply(ServerEvent::MuteVideo { user_id: u("zed") }).len(),
            1
        );
        r.clear();
        assert!(r.muted_state().is_empty());
        assert_eq!(r.members().count(), 0);
    }

    #[test]
    fn banned_is_not_a_room_event() {
        let mut r = RoomState::new();
        assert!(
            r.apply(ServerEvent::ClientBanned {
                reason: rtcroom_protocol::signal::BanReason::Kick,
                message: String::new()
            })
            .is_empty()
        );
        assert_eq!(
            RoomState::unknown_stream(&u("a"), StreamType::Main).user_id,
            u("a")
        );
    }
}
