//! The user's handle: [`Client`] and its event stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::{Actor, Addr};
use rtcroom_actors::core::Call;
use rtcroom_actors::media::PcRole;
use rtcroom_actors::{
    ClientActor, ClientEvent, ClientHub, ClientRequest, ConnectionState, GetRemoteStats,
    RemoteMutedState, RemoteStreamInfo, Shutdown, SubscribeParams,
};
use rtcroom_protocol::signal::{StreamType, VideoStreamType};
use rtcroom_protocol::{ErrorCode, Mode, Role, RtcError, UserId};
use tokio::sync::mpsc;

use crate::config::{ClientConfig, JoinOptions, SeiOptions};
use crate::media::{LocalStream, RemoteStreamStats, SubscribeOptions, TransportStats};

/// Create a client (TRTC's `TRTC.createClient`). The configuration is checked at once:
/// a bad field fails with INVALID_PARAMETER and TRTC's extra code (5001 missing sdkAppId,
/// 5003 empty userId / userSig, 5008 userId too long, ...). No connection is opened until
/// [`Client::join`].
pub fn create_client(config: ClientConfig) -> Result<Client, RtcError> {
    let settings = config.validate()?;
    let arbiter = crate::runtime::engine()?;
    let hub = Arc::new(ClientHub::new());
    let user_id = settings.user_id.clone();
    let actor_hub = hub.clone();
    let addr =
        ClientActor::start_in_arbiter(&arbiter, move |_| ClientActor::new(settings, actor_hub));
    Ok(Client {
        addr,
        hub,
        user_id,
        mode: config.mode,
        use_string_room_id: config.use_string_room_id,
    })
}

/// The shortest `audio-volume` interval (TRTC: 16 ms).
pub const MIN_AUDIO_VOLUME_INTERVAL: std::time::Duration = std::time::Duration::from_millis(16);

/// One client: one user in (at most) one room at a time (`leave` then `join` starts a new
/// session). Dropping it leaves the room (best effort) and stops its actors.
///
/// Calls made in the wrong state fail at once with INVALID_OPERATION: `join` twice, room
/// calls after `leave` (a later `join` starts a new session on the same client, as TRTC
/// allows), `switch_role` before `join` or in rtc mode, `leave` before `join`.
#[derive(Debug)]
pub struct Client {
    addr: Addr<ClientActor>,
    hub: Arc<ClientHub>,
    user_id: UserId,
    mode: Mode,
    use_string_room_id: bool,
}

fn mailbox_error() -> RtcError {
    RtcError::new(ErrorCode::Unknown, "the client actor is not running")
}

impl Client {
    /// This client's user id.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The room mode the client was created with.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A stream of [`ClientEvent`]s. The first call's stream starts at the client's creation,
    /// whenever it is made: events emitted before it (the room's members and streams,
    /// announced while `join` resolves) are kept for it, up to 4,096. Each later call makes
    /// an independent stream of the events from then on. Events are buffered (unbounded)
    /// until read. The stream ends when the client is dropped (or its actor dies).
    pub fn events(&self) -> EventStream {
        EventStream {
            rx: self.hub.subscribe(),
        }
    }

    /// Enter a room (TRTC's `client.join`). Resolves once the server has accepted the join;
    /// `peer-join` / `stream-added` events for those already in the room are on the event
    /// stream (the first [`events`](Self::events) stream has them even when it is asked for
    /// after `join`). Errors: INVALID_PARAMETER for a bad room id (5013, 5012, 5016, 5019);
    /// INVALID_OPERATION when already joining or joined (5104) or after `leave`; the
    /// server's refusal with its code and extra code (e.g. 0x4001/70009 wrong key,
    /// 0x4004/-102052 room full); JOIN_ROOM_FAILED "join room timeout" when the server does
    /// not answer within the join timeout (5 s).
    pub async fn join(&self, options: JoinOptions) -> Result<(), RtcError> {
        let params = options.validate(self.use_string_room_id)?;
        self.request(Call::Join(params)).await
    }

    /// Leave the room (TRTC's `client.leave`). The state goes to DISCONNECTED at once; the
    /// server is told when joined. A join in flight fails with JOIN_ROOM_FAILED. The client
    /// may `join` again (a new session). Resolves once its subscriptions' pipelines have stopped (recordings
    /// finalised; at most `STOP_TIMEOUT` + 1 s).
    pub async fn leave(&self) -> Result<(), RtcError> {
        let left = self.request(Call::Leave).await;
        // Subscriptions' pipelines stop on threads of their own: wait for them, so a program
        // that exits after leave() (a recording bot) leaves finalised files behind.
        let limit = rtcroom_pipelines::STOP_TIMEOUT + std::time::Duration::from_secs(1);
        if !rtcroom_actors::media::remote::stopped_pipelines(limit).await {
            tracing::warn!("receive pipelines still stopping after {limit:?}");
        }
        left
    }

    /// Change role in live mode (TRTC's `client.switchRole`): audience → anchor makes this
    /// client visible to the others (`peer-join`), anchor → audience hides it again.
    /// A later silent re-join keeps the new role.
    pub async fn switch_role(&self, role: Role) -> Result<(), RtcError> {
        self.request(Call::SwitchRole(role)).await
    }

    /// Publish a local stream (TRTC's `client.publish`): one uplink peer connection to the
    /// SFU; resolves once it is connected, and the others get `stream-added`. Errors:
    /// INVALID_OPERATION before `join` (or while reconnecting), for a live audience member
    /// (extra 5107), or when a stream of that type is already published (extra 5104).
    /// After a signalling re-join the stream is published again without a call.
    pub async fn publish(&self, stream: &LocalStream) -> Result<(), RtcError> {
        self.request(Call::publish(stream.media.clone())).await
    }

    /// Stop publishing (TRTC's `client.unpublish`); the others get `stream-removed`.
    /// INVALID_OPERATION before `join` or when this stream is not published.
    pub async fn unpublish(&self, stream: &LocalStream) -> Result<(), RtcError> {
        self.request(Call::unpublish(stream.media.clone())).await
    }

    /// Subscribe to a remote stream (TRTC's `client.subscribe`), as announced by
    /// [`ClientEvent::StreamAdded`]. Resolves once the downlink is connected;
    /// [`ClientEvent::StreamSubscribed`] follows and media flows to `options.output`.
    /// Subscribing again replaces the subscription. Errors: INVALID_OPERATION before
    /// `join` or with neither audio nor video; REMOTE_STREAM_NOT_EXIST (0x4010) when the
    /// stream is not (or no longer) published.
    pub async fn subscribe(
        &self,
        stream: &RemoteStreamInfo,
        options: SubscribeOptions,
    ) -> Result<(), RtcError> {
        self.request(Call::Subscribe(SubscribeParams {
            user_id: stream.user_id.clone(),
            stream_type: stream.stream_type,
            audio: options.audio,
            video: options.video,
            output: options.output,
            jitter_latency: options.jitter_latency,
            video_type: options.video_type,
        }))
        .await
    }

    /// Receive the big or the small layer of a remote stream with a small stream (TRTC's
    /// `setRemoteVideoStreamType(remoteStream, 'big' | 'small')`). For a subscribed stream
    /// the server switches at the next keyframe of that layer (asked for at once), and
    /// [`ClientEvent::VideoLayerChanged`] reports it; the choice is also kept for the
    /// stream's later subscriptions in this session (as TRTC 4.12.5+ does, it may be made
    /// before subscribing), unless [`SubscribeOptions::video_type`] says otherwise. A stream
    /// without a small stream has nothing to switch: `Ok`, nothing changes. Errors:
    /// INVALID_OPERATION before `join`; the server's refusal.
    pub async fn set_remote_video_stream_type(
        &self,
        user_id: &UserId,
        stream_type: StreamType,
        video_type: VideoStreamType,
    ) -> Result<(), RtcError> {
        self.request(Call::SetRemoteVideoStreamType {
            user_id: user_id.clone(),
            stream_type,
            video_type,
        })
        .await
    }

    /// End a subscription (TRTC's `client.unsubscribe`). INVALID_OPERATION when not
    /// subscribed.
    pub async fn unsubscribe(&self, stream: &RemoteStreamInfo) -> Result<(), RtcError> {
        self.request(Call::Unsubscribe {
            user_id: stream.user_id.clone(),
            stream_type: stream.stream_type,
        })
        .await
    }

    /// TRTC's `enableAudioVolumeEvaluation(interval)`: from now on, every `interval`, an
    /// [`ClientEvent::AudioVolume`] with the loudest volume (0–100) of each audio stream since
    /// the last one: what this client publishes (its own user id; 0 while muted) and the
    /// subscriptions that decode audio (Play and Frames outputs; Record and Discard do not
    /// decode, so they are not measured). Intervals below 16 ms are taken as 16 ms (TRTC's
    /// minimum); a zero interval stops the reports.
    pub fn enable_audio_volume_evaluation(&self, interval: std::time::Duration) {
        let interval = if interval.is_zero() {
            interval
        } else {
            interval.max(MIN_AUDIO_VOLUME_INTERVAL)
        };
        self.addr
            .do_send(rtcroom_actors::EnableAudioVolumeEvaluation(interval));
    }

    /// Send an SEI message in the video of a published stream (TRTC's `sendSEIMessage`): it
    /// rides the next encoded frame, and subscribers get [`ClientEvent::SeiMessage`] with
    /// that frame. H.264 video only. TRTC's limits: 1 byte to 1 KB, payload type 5 or 243
    /// (INVALID_PARAMETER), at most 30 messages and 8 KB per second (over it:
    /// INVALID_OPERATION, not sent); a stream that is not published with H.264 video:
    /// INVALID_OPERATION. Resolves when the message is queued for the next frame.
    pub async fn send_sei_message(
        &self,
        data: impl Into<Vec<u8>>,
        options: SeiOptions,
    ) -> Result<(), RtcError> {
        self.request(Call::SendSei {
            stream_type: options.stream_type,
            payload_type: options.payload_type,
            data: data.into(),
        })
        .await
    }

    /// Send a custom message to every other member of the room (TRTC's `sendCustomMessage`;
    /// they get [`ClientEvent::CustomMessage`] with this client's user id and a sequence
    /// number). TRTC's limits: `cmd_id` 1–10, 1 byte to 1 KB (INVALID_PARAMETER 5005 / 5017 /
    /// 5018), anchors only (INVALID_OPERATION 5107), at most 30 messages and 8 KB per second
    /// (over it: INVALID_OPERATION, not sent). Resolves once the server has taken it; reliable
    /// and in order over the signalling connection.
    pub async fn send_custom_message(
        &self,
        cmd_id: u8,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), RtcError> {
        self.request(Call::CustomMessage {
            cmd_id,
            data: data.into(),
        })
        .await
    }

    /// Receive counters of every subscribed stream (TRTC's `getRemoteVideoStats` and
    /// `getRemoteAudioStats` in one): packets, bytes, losses, decoded frames, frame size.
    /// An empty list when nothing is subscribed; an error when the client's actor is no
    /// longer running (not an empty list that looks like "no streams").
    pub async fn get_remote_stats(&self) -> Result<Vec<RemoteStreamStats>, RtcError> {
        Ok(self
            .addr
            .send(GetRemoteStats)
            .await
            .map_err(|_| mailbox_error())?
            .into_iter()
            .map(|(user_id, stream_type, stats)| RemoteStreamStats {
                user_id,
                stream_type,
                stats,
            })
            .collect())
    }

    /// Transport stats of every connected peer connection (TRTC's `getTransportStats`):
    /// bytes on the wire and, when measured, the round-trip time to the server. An error
    /// when the client's actor is no longer running.
    pub async fn get_transport_stats(&self) -> Result<Vec<TransportStats>, RtcError> {
        Ok(self
            .addr
            .send(rtcroom_actors::GetTransportStats)
            .await
            .map_err(|_| mailbox_error())?
            .into_iter()
            .map(|(uplink, user_id, stream_type, s)| TransportStats {
                uplink,
                user_id,
                stream_type,
                rtt: s.rtt,
                bytes_sent: s.bytes_sent,
                bytes_received: s.bytes_received,
            })
            .collect())
    }

    /// Fault injection: stop the client's actor while this handle lives (what a crash of
    /// the engine's actor looks like to the user). Only with the `fault-injection` feature;
    /// not public API.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub async fn stop_actor_for_test(&self) {
        let _ = self.addr.send(Shutdown).await;
    }

    /// Fault injection for supervision tests: panic every peer connection actor of this
    /// client; returns how many. The client rebuilds and renegotiates them. Only with the
    /// `fault-injection` feature; not public API.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub async fn crash_peer_connections_for_test(&self) -> usize {
        self.addr
            .send(rtcroom_actors::CrashPeerConnections)
            .await
            .unwrap_or(0)
    }

    /// Fault injection for supervision tests: make every receive pipeline of this client
    /// fail (a real element error on its GStreamer bus), or, with `crash_watchers`, panic
    /// the actors that watch them; returns how many. The client rebuilds the pipelines and
    /// renegotiates. Only with the `fault-injection` feature; not public API.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub async fn fail_remote_pipelines_for_test(&self, crash_watchers: bool) -> usize {
        self.addr
            .send(rtcroom_actors::FailRemotePipelines { crash_watchers })
            .await
            .unwrap_or(0)
    }

    async fn request(&self, call: Call<PcRole>) -> Result<(), RtcError> {
        self.addr
            .send(ClientRequest(call))
            .await
            .unwrap_or_else(|_| Err(mailbox_error()))
    }

    /// TRTC's `getRemoteMutedState()`: one entry per remote member with a published main
    /// stream.
    pub fn get_remote_muted_state(&self) -> Vec<RemoteMutedState> {
        self.hub.muted()
    }

    /// The connection state now.
    pub fn connection_state(&self) -> ConnectionState {
        self.hub.connection_state()
    }

    /// The remote members this client can see now (everyone in rtc mode, anchors in live
    /// mode).
    pub fn remote_users(&self) -> Vec<UserId> {
        self.hub.remote_users()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.addr.do_send(Shutdown);
    }
}

/// The events of one client, in order. Also a [`futures_util::Stream`].
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl EventStream {
    /// The next event; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for EventStream {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn handles_cross_threads() {
        // Users share a client between tasks of a multi-threaded runtime.
        send_sync::<Client>();
        send::<EventStream>();
        send::<ClientEvent>();
    }

    #[test]
    fn bad_config_fails_before_any_thread_starts() {
        let e = create_client(ClientConfig::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter);
        assert_eq!(e.extra_code, Some(5001));
    }
}
