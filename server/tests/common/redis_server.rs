//! A `redis-server` of a test's own (shared by the server's and the engine's cluster tests).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of the test's own on a loopback port, without persistence (a restart
/// comes back empty, as a Redis without disk would).
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis { port, child: None };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup-debian.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.conn().is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server starts");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Make `config` a node `id` of a cluster on this Redis, with fast heartbeats (0.1 s) and
    /// a node counted gone 1 s after its last.
    pub fn node(
        &self,
        mut config: rtcroom_server::ServerConfig,
        id: &str,
    ) -> rtcroom_server::ServerConfig {
        config.cluster.redis_url = Some(self.url());
        config.cluster.node_id = Some(id.into());
        config.cluster.secret = Some("cluster-test-secret-0123".into());
        config.cluster.heartbeat_s = 0.1;
        config.cluster.node_ttl_s = 1.0;
        config
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    /// The node room `room` (numeric) of app `app` is placed on.
    pub fn owner(&self, app: u32, room: u32) -> Option<String> {
        let mut c = self.conn().ok()?;
        redis::cmd("GET")
            .arg(format!("rtcroom:room:{app}/{room}"))
            .query(&mut c)
            .ok()?
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
