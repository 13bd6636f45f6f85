//! Several rtcroom nodes sharing rooms through Redis (`cluster.redis_url`), the way LiveKit
//! does: no cluster protocol of our own, just keys in Redis that every node reads and writes
//! atomically.
//!
//! - **Nodes**: every node keeps a hash `{prefix}node:{id}` (its signalling URL and load:
//!   rooms, members, forwarded packets/s, CPU) alive with a heartbeat and a TTL, and lists its
//!   id in the set `{prefix}nodes`. A node whose hash has expired is gone.
//! - **Rooms**: `{prefix}room:{sdkAppId}/{roomId}` holds the id of the node the room lives on.
//!   The first join places it with one Lua script (atomic in Redis): keep the owner while its
//!   node is alive, else write the candidate. The candidate is the least-loaded live node
//!   (`cluster.placement`); a join that arrives proxied from another node claims the room for
//!   the node it reached (the proxy already looked it up).
//! - A client may connect to any node: a node that does not own the room proxies the
//!   signalling connection to the owner (`session.rs`), so clients need no redirect support;
//!   media goes straight to the owner's media addresses, which its SDP answer carries.
//! - Redis unreachable: rooms this node holds keep working (joins to them need no Redis); new
//!   placements fail with a clear error; when Redis comes back (even empty, after a restart)
//!   the next heartbeat registers the node again and re-asserts the rooms it holds.
//!
//! The placement decision itself is plain logic ([`pick_candidate`]), tested without Redis;
//! the Redis part is tested against a real `redis-server` (`server/tests/cluster.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rtcroom_protocol::{ErrorCode, RtcError};
use sha2::Sha256;

use crate::config::{ClusterConfig, Placement, ServerConfig};
use crate::metrics::Metrics;
use crate::room::RoomKey;

/// How long any one Redis call may take before it counts as Redis being unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a room found on another node is remembered.
const REMOTE_CACHE_FOR: Duration = Duration::from_secs(10);
/// Rooms on other nodes remembered at most (past it the memory starts over).
const REMOTE_CACHE_MAX: usize = 100_000;
/// How long a node-to-node credential stays valid (clocks of nodes differ by less).
const NODE_AUTH_WINDOW_S: u64 = 60;
/// The header a proxying node authenticates itself with.
pub const NODE_AUTH_HEADER: &str = "x-rtcroom-node-auth";

/// Keep the room's owner while its node is alive, else place it on the candidate.
/// KEYS[1] room key; ARGV[1] candidate node id; ARGV[2] node key prefix. Returns the owner.
const PLACE_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', ARGV[2] .. cur) == 1 then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// Delete the room's key only if this node still owns it. KEYS[1] room key; ARGV[1] node id.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A live node as the last heartbeat read it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Its signalling base URL (`ws://host:port`).
    pub url: String,
    /// Rooms it holds.
    pub rooms: i64,
    /// Members in its rooms.
    pub members: i64,
}

/// Where a room lives, for a join.
#[derive(Clone, Debug, PartialEq)]
pub enum Owner {
    /// On this node.
    Here,
    /// On another node.
    Node(RemoteNode),
}

/// Another node that owns a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its id.
    pub id: String,
    /// Its signalling base URL (`ws://host:port`): the WebSocket is `{url}/ws`.
    pub url: String,
}

impl RemoteNode {
    /// The URL of `req` (path and query) on this node: where an HTTP request for one of its
    /// rooms is redirected or forwarded.
    pub fn same_request(&self, req: &actix_web::HttpRequest) -> String {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| req.path());
        format!("{}{path}", http_base(&self.url))
    }
}

/// What a lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// A join arriving from a client: place the room if it has no live owner.
    Join,
    /// A join proxied here by another node: the room is ours unless a live node owns it.
    JoinHere,
    /// Anything else (admin, WHIP's room mode): never places.
    Lookup,
}

/// The node to place a new room on: by `placement`, among `nodes` (this node included when
/// alive), this node (`me`) on ties and when it is the only one known.
pub fn pick_candidate<'a>(placement: Placement, me: &'a str, nodes: &'a [NodeInfo]) -> &'a str {
    match placement {
        Placement::Local => me,
        Placement::LeastLoaded => {
            let mine = nodes
                .iter()
                .find(|n| n.id == me)
                .map(|n| n.members)
                .unwrap_or(0);
            nodes
                .iter()
                .filter(|n| n.members < mine)
                // Fewest members, then fewest rooms, then by id (every node picks alike).
                .min_by(|a, b| (a.members, a.rooms, &a.id).cmp(&(b.members, b.rooms, &b.id)))
                .map(|n| n.id.as_str())
                .unwrap_or(me)
        }
    }
}

/// The HTTP base URL of a node advertised as `ws://host:port` (`wss://` → `https://`).
pub fn http_base(ws_url: &str) -> String {
    if let Some(rest) = ws_url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = ws_url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        ws_url.to_owned()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(secret: &str, node: &str, ts: u64) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key");
    m.update(b"rtcroom-node\n");
    m.update(node.as_bytes());
    m.update(b"\n");
    m.update(ts.to_string().as_bytes());
    m
}

/// A node's credential for `secret` at `ts` (unix seconds): `{node}.{ts}.{hex hmac}`.
pub fn node_credential(secret: &str, node: &str, ts: u64) -> String {
    let tag = mac(secret, node, ts).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{node}.{ts}.{hex}")
}

/// The node id a credential proves, if it is valid for `secret` within the window of `now`.
pub fn check_node_credential(secret: &str, credential: &str, now: u64) -> Option<String> {
    let mut parts = credential.rsplitn(3, '.');
    let hex = parts.next()?;
    let ts: u64 = parts.next()?.parse().ok()?;
    let node = parts.next()?;
    if now.abs_diff(ts) > NODE_AUTH_WINDOW_S || hex.len() != 64 {
        return None;
    }
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    mac(secret, node, ts)
        .verify_slice(&tag)
        .ok()
        .map(|()| node.to_owned())
}

/// How long a room's cascade flag lasts after it was last raised (it is deleted with the room).
const CASCADE_FLAG_TTL_S: u64 = 3600;

fn redis_down(e: impl std::fmt::Display) -> RtcError {
    RtcError::new(
        ErrorCode::JoinRoomFailed,
        format!("the cluster directory (Redis) is unreachable, so no new room can be placed: {e}"),
    )
}

/// This node's part in the cluster. Shared (`Arc`) by the registry, the shards (rooms that
/// close) and the heartbeat task.
pub struct Cluster {
    id: String,
    url: String,
    config: ClusterConfig,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    /// Live nodes as of the last heartbeat (this node included once registered).
    nodes: Mutex<Vec<NodeInfo>>,
    /// Rooms placed on this node that it has not released.
    owned: Mutex<HashSet<RoomKey>>,
    /// This node's hash existed at the last heartbeat (a missing one means Redis lost it).
    registered: Mutex<bool>,
    /// Rooms recently found on other nodes, so joins to a busy room do not ask Redis each
    /// time. A stale entry costs at most one extra hop (the node reached routes the join on)
    /// or one failed connect (then [`Cluster::forget`] and the join asks Redis again).
    remote: Mutex<HashMap<RoomKey, (RemoteNode, std::time::Instant)>>,
    /// Live rooms of this node flagged for cascading ([`Cluster::flag_cascading`]).
    cascading: Mutex<HashSet<RoomKey>>,
    metrics: Arc<Metrics>,
    place: redis::Script,
    release: redis::Script,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data (plain
    // sets and lists) is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// This node's cluster state for `config` (whose `cluster.redis_url` is set), serving
    /// signalling on `local` (used for the advertised URL when none is configured). `None`
    /// without `cluster.redis_url`.
    pub fn new(
        config: &ServerConfig,
        local: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Arc<Cluster>>> {
        let c = &config.cluster;
        let Some(redis_url) = &c.redis_url else {
            return Ok(None);
        };
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let client = redis::Client::open(redis_url.as_str())
            .map_err(|e| invalid(format!("cluster.redis_url: {e}")))?;
        let url = match &c.advertise_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if local.ip().is_unspecified() => {
                return Err(invalid(
                    "cluster.advertise_url is required when listening on all addresses \
                     (the other nodes need an address they can reach)"
                        .into(),
                ));
            }
            None => {
                let scheme = if config.tls.is_some() { "wss" } else { "ws" };
                format!("{scheme}://{local}")
            }
        };
        let id = c.node_id.clone().unwrap_or_else(|| {
            use rand::Rng;
            format!("node-{:08x}", rand::thread_rng().r#gen::<u32>())
        });
        Ok(Some(Arc::new(Cluster {
            id,
            url,
            config: c.clone(),
            client,
            conn: Mutex::new(None),
            nodes: Mutex::new(Vec::new()),
            owned: Mutex::new(HashSet::new()),
            registered: Mutex::new(false),
            remote: Mutex::new(HashMap::new()),
            cascading: Mutex::new(HashSet::new()),
            metrics,
            place: redis::Script::new(PLACE_LUA),
            release: redis::Script::new(RELEASE_LUA),
        })))
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This node's advertised signalling URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A credential proving this node to another (for [`NODE_AUTH_HEADER`]).
    pub fn credential(&self) -> String {
        node_credential(self.secret(), &self.id, unix_now())
    }

    /// The node a credential from another node proves, if valid.
    pub fn check_credential(&self, credential: &str) -> Option<String> {
        check_node_credential(self.secret(), credential, unix_now())
    }

    fn secret(&self) -> &str {
        // `ClusterConfig::validate` requires the secret whenever `redis_url` is set.
        self.config.secret.as_deref().unwrap_or_default()
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.config.key_prefix)
    }

    fn node_key(&self, id: &str) -> String {
        self.key(&format!("node:{id}"))
    }

    fn room_key(&self, key: &RoomKey) -> String {
        self.key(&format!("room:{key}"))
    }

    fn connection(&self) -> Result<ConnectionManager, RtcError> {
        lock(&self.conn)
            .clone()
            .ok_or_else(|| redis_down("not connected yet"))
    }

    /// One Redis call, bounded by [`REDIS_TIMEOUT`]; a failure is counted and reads as Redis
    /// being unreachable.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RtcError> {
        let failed = |e: &dyn std::fmt::Display| {
            Metrics::inc(&self.metrics.cluster_redis_errors);
            redis_down(e)
        };
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(&e)),
            Err(_) => Err(failed(&"timed out")),
        }
    }

    /// Where room `key` lives for `intent`, placing it if the intent is a join and it has no
    /// live owner.
    pub async fn owner(&self, key: &RoomKey, intent: Intent) -> Result<Owner, RtcError> {
        if lock(&self.owned).contains(key) {
            return Ok(Owner::Here);
        }
        if intent == Intent::Join
            && let Some((node, at)) = lock(&self.remote).get(key)
            && at.elapsed() < REMOTE_CACHE_FOR
        {
            return Ok(Owner::Node(node.clone()));
        }
        let owner: Option<String> = match intent {
            Intent::Lookup => {
                let Ok(mut conn) = self.connection() else {
                    // Unknown here and Redis unreachable: this node cannot tell; it answers
                    // for its own rooms only.
                    return Ok(Owner::Here);
                };
                let mut get = redis::cmd("GET");
                get.arg(self.room_key(key));
                self.bounded(get.query_async::<Option<String>>(&mut conn))
                    .await?
            }
            Intent::Join | Intent::JoinHere => {
                let mut conn = self.connection()?;
                let candidate = if intent == Intent::JoinHere {
                    self.id.clone()
                } else {
                    let nodes = lock(&self.nodes);
                    pick_candidate(self.config.placement, &self.id, &nodes).to_owned()
                };
                let mut call = self.place.key(self.room_key(key));
                call.arg(&candidate).arg(self.node_key(""));
                let owner = self.bounded(call.invoke_async::<String>(&mut conn)).await?;
                if owner == candidate {
                    Metrics::inc(&self.metrics.cluster_placements);
                    // Count it against the node at once, so a burst of new rooms spreads
                    // before the next heartbeat brings real loads.
                    if let Some(n) = lock(&self.nodes).iter_mut().find(|n| n.id == owner) {
                        n.rooms += 1;
                        n.members += 1;
                    }
                }
                Some(owner)
            }
        };
        match owner {
            None => Ok(Owner::Here),
            Some(id) if id == self.id => {
                if intent != Intent::Lookup {
                    lock(&self.owned).insert(key.clone());
                }
                Ok(Owner::Here)
            }
            Some(id) => {
                let node = self.remote(id).await?;
                if intent == Intent::Join {
                    let mut cache = lock(&self.remote);
                    if cache.len() >= REMOTE_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(key.clone(), (node.clone(), std::time::Instant::now()));
                }
                Ok(Owner::Node(node))
            }
        }
    }

    /// Whether this is the first use of `token` in the cluster within `ttl_s` seconds
    /// (recorded in Redis). With Redis unreachable it says yes (each node still keeps its own
    /// record), so admin calls keep working.
    pub async fn first_use(&self, token: &str, ttl_s: u64) -> bool {
        let Ok(mut conn) = self.connection() else {
            return true;
        };
        let mut set = redis::cmd("SET");
        set.arg(self.key(&format!("once:{token}")))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl_s.max(1));
        match self
            .bounded(set.query_async::<Option<String>>(&mut conn))
            .await
        {
            Ok(set) => set.is_some(),
            Err(_) => true,
        }
    }

    /// Whether an audience member of live room `key` (on another node) joining through this
    /// node is served here as an edge (`cascade.rs`): always with `edge_after_audience` 0,
    /// else once the room's node has flagged the room ([`Cluster::flag_cascading`]). Redis
    /// unreachable reads as not flagged (the join is proxied, as before cascading).
    pub async fn serves_edge(&self, key: &RoomKey) -> bool {
        if self.config.edge_after_audience == 0 {
            return true;
        }
        let Ok(mut conn) = self.connection() else {
            return false;
        };
        let mut get = redis::cmd("EXISTS");
        get.arg(self.cascade_key(key));
        self.bounded(get.query_async::<i64>(&mut conn))
            .await
            .is_ok_and(|n| n > 0)
    }

    /// The audience count at which this node flags a live room for cascading (0: never
    /// needed, every node serves audience from the start).
    pub fn edge_after_audience(&self) -> u32 {
        self.config.edge_after_audience
    }

    /// Live room `key` of this node holds `edge_after_audience` audience members: from now on
    /// other nodes serve its audience joining through them. The flag lasts an hour after the
    /// last time it was raised and goes with the room.
    pub fn flag_cascading(self: &Arc<Self>, key: &RoomKey) {
        lock(&self.cascading).insert(key.clone());
        let (Ok(mut conn), Ok(rt)) = (self.connection(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let flag = self.cascade_key(key);
        let this = self.clone();
        rt.spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(flag).arg(1).arg("EX").arg(CASCADE_FLAG_TTL_S);
            let _ = this.bounded(set.query_async::<()>(&mut conn)).await;
        });
    }

    /// Another node to serve an audience member of live room `key` of this node, once the
    /// room is flagged for cascading ([`Cluster::flag_cascading`]; never with
    /// `edge_after_audience` 0): the live node with the fewest members (then rooms, id), as of
    /// the last heartbeat. `None`: serve it here.
    pub fn edge_for(&self, key: &RoomKey) -> Option<RemoteNode> {
        if self.config.edge_after_audience == 0 || !lock(&self.cascading).contains(key) {
            return None;
        }
        lock(&self.nodes)
            .iter()
            .filter(|n| n.id != self.id)
            .min_by(|a, b| (a.members, a.rooms, &a.id).cmp(&(b.members, b.rooms, &b.id)))
            .map(|n| RemoteNode {
                id: n.id.clone(),
                url: n.url.clone(),
            })
    }

    fn cascade_key(&self, key: &RoomKey) -> String {
        self.key(&format!("cascade:{key}"))
    }

    /// Room `key` was not where the cache said (its node did not answer): ask Redis next time.
    pub fn forget(&self, key: &RoomKey) {
        lock(&self.remote).remove(key);
    }

    async fn remote(&self, id: String) -> Result<RemoteNode, RtcError> {
        if let Some(n) = lock(&self.nodes).iter().find(|n| n.id == id) {
            return Ok(RemoteNode {
                id,
                url: n.url.clone(),
            });
        }
        // Placed by a node this one has not seen yet (it joined since the last heartbeat).
        let mut conn = self.connection()?;
        let mut hget = redis::cmd("HGET");
        hget.arg(self.node_key(&id)).arg("url");
        match self
            .bounded(hget.query_async::<Option<String>>(&mut conn))
            .await?
        {
            Some(url) => Ok(RemoteNode { id, url }),
            None => Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                format!("the room's node {id} has just gone; try again"),
            )),
        }
    }

    /// A room of this node closed: release its key (unless another node has taken it).
    pub fn room_closed(self: &Arc<Self>, key: &RoomKey) {
        lock(&self.cascading).remove(key);
        if !lock(&self.owned).remove(key) {
            return;
        }
        let Ok(mut conn) = self.connection() else {
            return;
        };
        // A key left behind is harmless: it names this live node, which creates the room
        // again for the next join.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let room_key = self.room_key(key);
        let flag = self.cascade_key(key);
        let this = self.clone();
        rt.spawn(async move {
            let mut call = this.release.key(room_key);
            call.arg(&this.id);
            let _ = this.bounded(call.invoke_async::<i64>(&mut conn)).await;
            let mut del = redis::cmd("DEL");
            del.arg(flag);
            let _ = this.bounded(del.query_async::<i64>(&mut conn)).await;
        });
    }

    fn load(&self) -> Vec<(&'static str, String)> {
        let m = &self.metrics;
        let (pps_out, peers) = m
            .media()
            .map(|s| {
                (
                    s.packets_out.load(Ordering::Relaxed),
                    s.peers.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0));
        vec![
            ("url", self.url.clone()),
            ("rooms", m.rooms.load(Ordering::Relaxed).to_string()),
            ("members", m.members.load(Ordering::Relaxed).to_string()),
            ("packets_out", pps_out.to_string()),
            ("peers", peers.to_string()),
            ("updated", unix_now().to_string()),
        ]
    }

    /// One heartbeat: connect if needed, register this node with its load, re-assert the
    /// rooms it holds if Redis lost them, and read the live nodes. Errors are counted and
    /// logged; the next heartbeat tries again.
    pub async fn heartbeat(&self) {
        match tokio::time::timeout(REDIS_TIMEOUT * 3, self.try_heartbeat()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.cluster_redis_errors);
                tracing::warn!(error = %e, "cluster heartbeat failed");
            }
            Err(_) => {
                Metrics::inc(&self.metrics.cluster_redis_errors);
                tracing::warn!("cluster heartbeat timed out");
            }
        }
    }

    async fn try_heartbeat(&self) -> redis::RedisResult<()> {
        let conn = lock(&self.conn).clone();
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
                *lock(&self.conn) = Some(c.clone());
                c
            }
        };
        let me = self.node_key(&self.id);
        let ttl_ms = (self.config.node_ttl_s * 1000.0) as u64;
        let (existed,): (bool,) = redis::pipe()
            .exists(&me)
            .hset_multiple(&me, &self.load())
            .ignore()
            .pexpire(&me, ttl_ms as i64)
            .ignore()
            .sadd(self.key("nodes"), &self.id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        let was = std::mem::replace(&mut *lock(&self.registered), true);
        if was && !existed {
            // Redis restarted empty (or this node was cut off past its TTL): claim again the
            // rooms it holds, unless another node has taken one meanwhile.
            let owned: Vec<RoomKey> = lock(&self.owned).iter().cloned().collect();
            tracing::warn!(
                rooms = owned.len(),
                "this node's registration was gone from Redis; re-asserting its rooms"
            );
            for key in owned {
                let mut call = self.place.key(self.room_key(&key));
                call.arg(&self.id).arg(self.node_key(""));
                let owner: String = call.invoke_async(&mut conn).await?;
                if owner != self.id {
                    tracing::warn!(room = %key, owner, "room now owned by another node");
                }
            }
        }
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("nodes"))
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.node_key(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut nodes = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, h) in ids.into_iter().zip(hashes) {
            match h.get("url") {
                Some(url) => nodes.push(NodeInfo {
                    url: url.clone(),
                    rooms: h.get("rooms").and_then(|v| v.parse().ok()).unwrap_or(0),
                    members: h.get("members").and_then(|v| v.parse().ok()).unwrap_or(0),
                    id,
                }),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            redis::cmd("SREM")
                .arg(self.key("nodes"))
                .arg(&gone)
                .query_async::<()>(&mut conn)
                .await?;
        }
        let m = &self.metrics;
        m.cluster_nodes.store(nodes.len() as i64, Ordering::Relaxed);
        m.cluster_rooms
            .store(nodes.iter().map(|n| n.rooms).sum(), Ordering::Relaxed);
        m.cluster_members
            .store(nodes.iter().map(|n| n.members).sum(), Ordering::Relaxed);
        *lock(&self.nodes) = nodes;
        Ok(())
    }

    /// Leave the cluster: delete this node's registration and release its rooms' keys (a
    /// clean shutdown; a killed node's keys expire instead).
    pub async fn deregister(&self) {
        let Ok(mut conn) = self.connection() else {
            return;
        };
        let owned: Vec<RoomKey> = lock(&self.owned).drain().collect();
        let mut pipe = redis::pipe();
        pipe.del(self.node_key(&self.id))
            .ignore()
            .srem(self.key("nodes"), &self.id)
            .ignore();
        for key in &owned {
            pipe.cmd("EVAL")
                .arg(RELEASE_LUA)
                .arg(1)
                .arg(self.room_key(key))
                .arg(&self.id)
                .ignore();
        }
        let done = pipe.query_async::<()>(&mut conn);
        if !matches!(tokio::time::timeout(REDIS_TIMEOUT, done).await, Ok(Ok(()))) {
            tracing::warn!("could not deregister from the cluster; its keys will expire");
        }
    }

    /// Heartbeat period.
    pub fn heartbeat_every(&self) -> Duration {
        Duration::from_secs_f64(self.config.heartbeat_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, rooms: i64, members: i64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("ws://{id}"),
            rooms,
            members,
        }
    }

    #[test]
    fn least_loaded_picks_the_fewest_members_and_keeps_ties_local() {
        let nodes = [node("a", 1, 10), node("b", 3, 2), node("c", 1, 2)];
        assert_eq!(pick_candidate(Placement::LeastLoaded, "a", &nodes), "c");
        // This node is as empty as any: it keeps the room (no hop for the first joiner).
        let even = [node("a", 0, 0), node("b", 0, 0)];
        assert_eq!(pick_candidate(Placement::LeastLoaded, "b", &even), "b");
        // Not registered yet (no heartbeat read): itself.
        assert_eq!(pick_candidate(Placement::LeastLoaded, "z", &[]), "z");
        assert_eq!(pick_candidate(Placement::Local, "a", &nodes), "a");
    }

    #[test]
    fn node_credentials_verify_only_with_the_secret_and_in_time() {
        let secret = "0123456789abcdef-secret";
        let c = node_credential(secret, "node-1.eu", 1_000_000);
        assert_eq!(
            check_node_credential(secret, &c, 1_000_030).as_deref(),
            Some("node-1.eu")
        );
        assert_eq!(check_node_credential(secret, &c, 1_000_061), None, "stale");
        assert_eq!(
            check_node_credential("another-secret-123", &c, 1_000_000),
            None
        );
        let forged = c.replace("node-1.eu", "node-2");
        assert_eq!(check_node_credential(secret, &forged, 1_000_000), None);
        for junk in ["", "a.b", "x.1.zz", "n.1.é", &c[..c.len() - 1]] {
            assert_eq!(
                check_node_credential(secret, junk, 1_000_000),
                None,
                "{junk}"
            );
        }
    }
}
