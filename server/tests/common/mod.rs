//! Test harness: a real server on a free loopback port and a real WebSocket client.
#![allow(dead_code)]

pub mod peer;
pub mod redis_server;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, JoinRequest, JoinResult, Reply, ReplyData, ReplyResult,
    ServerEvent, ServerMessage, decode_server, encode,
};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_protocol::{Mode, Role, RtcError, UserId};
use rtcroom_server::{RunningServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub const APP: u32 = 1_400_000_000;
pub const KEY: &str = "test-secret-key";
pub const ADMIN_TOKEN: &str = "admin-token";
/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn config() -> ServerConfig {
    let mut c = ServerConfig::single_app("127.0.0.1:0", APP, KEY);
    c.admin.token = Some(ADMIN_TOKEN.into());
    c.workers = Some(2);
    c.timeouts.shutdown_timeout_s = 1;
    c
}

pub fn start(config: ServerConfig) -> RunningServer {
    RunningServer::spawn(config).expect("server starts")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sig(user: &str) -> String {
    gen_user_sig(u64::from(APP), KEY, user, 86_400, now())
}

pub fn join_req(user: &str, room: &str, mode: Mode, role: Option<Role>) -> JoinRequest {
    JoinRequest {
        sdk_app_id: APP,
        user_id: UserId::new(user).unwrap(),
        user_sig: sig(user),
        room_id: room.into(),
        use_string_room_id: false,
        mode,
        role,
        private_map_key: None,
        auto_subscribe: true,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    ws: Ws,
    next_id: u64,
    events: VecDeque<ServerEvent>,
    replies: VecDeque<Reply>,
    /// The size of every coalesced `events` frame received, in order.
    pub batches: Vec<usize>,
    pub closed: Option<Option<CloseFrame>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, None).await
    }

    /// Connect with a TLS connector (for `wss://`).
    pub async fn connect_with(url: &str, tls: Option<tokio_tungstenite::Connector>) -> Client {
        let (ws, _) = tokio::time::timeout(
            DEADLINE,
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, tls),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        Client {
            ws,
            next_id: 1,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            batches: Vec::new(),
            closed: None,
        }
    }

    pub async fn send_raw(&mut self, msg: Message) {
        let _ = self.ws.send(msg).await;
    }

    pub async fn send(&mut self, msg: ClientMessage) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(Message::text(encode(&ClientEnvelope::new(id, msg))))
            .await;
        id
    }

    /// Read one server frame; false when the socket closed.
    async fn pump(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let next = tokio::time::timeout(DEADLINE, self.ws.next())
            .await
            .expect("a frame in time");
        match next {
            Some(Ok(Message::Text(t))) => {
                match decode_server(t.as_bytes()).expect("server frames decode") {
                    ServerMessage::Reply(r) => self.replies.push_back(r),
                    ServerMessage::Event(e) => self.events.push_back(e),
                    ServerMessage::Events { events } => {
                        self.batches.push(events.len());
                        self.events.extend(events);
                    }
                    other => panic!("unexpected {other:?}"),
                }
                true
            }
            Some(Ok(Message::Close(frame))) => {
                self.closed = Some(frame);
                false
            }
            Some(Ok(_)) => true,
            Some(Err(_)) | None => {
                self.closed = Some(None);
                false
            }
        }
    }

    /// The reply to request `id`.
    pub async fn reply(&mut self, id: u64) -> Reply {
        loop {
            if let Some(pos) = self.replies.iter().position(|r| r.id == id) {
                return self.replies.remove(pos).unwrap();
            }
            assert!(self.pump().await, "socket closed before reply {id}");
        }
    }

    pub async fn request(&mut self, msg: ClientMessage) -> Result<Option<ReplyData>, RtcError> {
        let id = self.send(msg).await;
        match self.reply(id).await.result {
            ReplyResult::Ok { data } => Ok(data),
            ReplyResult::Err { error } => Err(error),
        }
    }

    pub async fn join(&mut self, j: JoinRequest) -> Result<JoinResult, RtcError> {
        match self.request(ClientMessage::Join(j)).await? {
            Some(ReplyData::Joined(r)) => Ok(r),
            other => panic!("join reply without result: {other:?}"),
        }
    }

    /// The next event.
    pub async fn event(&mut self) -> ServerEvent {
        loop {
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            assert!(
                self.pump().await,
                "socket closed while waiting for an event"
            );
        }
    }

    /// The next reply of any id.
    pub async fn any_reply(&mut self) -> Reply {
        loop {
            if let Some(r) = self.replies.pop_front() {
                return r;
            }
            assert!(self.pump().await, "socket closed while waiting for a reply");
        }
    }

    /// The next reply, or None once the server closed the socket.
    pub async fn any_reply_or_close(&mut self) -> Option<Reply> {
        loop {
            if let Some(r) = self.replies.pop_front() {
                return Some(r);
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// Read until the server closes the socket; returns the close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        while self.pump().await {}
        self.closed.clone().unwrap()
    }

    pub fn pending_events(&self) -> usize {
        self.events.len()
    }
}

pub async fn joined(
    url: &str,
    user: &str,
    room: &str,
    mode: Mode,
    role: Option<Role>,
) -> (Client, JoinResult) {
    let mut c = Client::connect(url).await;
    let r = c
        .join(join_req(user, room, mode, role))
        .await
        .expect("join succeeds");
    (c, r)
}

/// A minimal HTTP/1.1 request over loopback: (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// A minimal HTTP/1.1 request over loopback: (status, response headers in lower case, body).
pub async fn http_full(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_ascii_lowercase(), b.to_owned()))
        .unwrap_or_default();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    (status, head, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((len, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

pub async fn admin(
    addr: std::net::SocketAddr,
    action: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, text) = http(
        addr,
        "POST",
        &format!("/admin/{action}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}
