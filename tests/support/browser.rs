//! A small Chrome DevTools Protocol (CDP) harness: launch headless Chromium, open pages, run
//! JavaScript in them and wait for conditions, every wait bounded by a deadline.
//!
//! ```ignore
//! mod support;
//! use support::browser::Browser;
//!
//! #[tokio::test]
//! async fn it_works() -> anyhow::Result<()> {
//!     let browser = Browser::launch().await?;
//!     let page = browser.new_page().await?;
//!     page.goto("http://127.0.0.1:8080/healthz").await?;
//!     let two = page.eval("1 + 1").await?;
//!     page.wait_for("document.readyState === 'complete'", Duration::from_secs(5)).await?;
//!     Ok(())
//! }
//! ```
//!
//! Each test launches its own [`Browser`] (a fresh profile in a temp dir, its own process and
//! CDP connection), so tests of one file may run in parallel. Dropping it kills Chromium (its
//! whole process group) and removes the temp dir. Chromium is found through `$CHROMIUM`, else
//! `chromium`, `chromium-browser` or `google-chrome` on `PATH`; when none is there the launch
//! fails with a message naming `scripts/setup-debian.sh`.
//!
//! One CDP connection per browser: a reader task hands replies to their callers by `id` and
//! page events to their [`Page`] by `sessionId`. Pages record their console output, uncaught
//! exceptions and browser log entries in a bounded buffer, which errors include and which is
//! printed when a test panics while the page is alive.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

/// How long Chromium may take to start and open its DevTools endpoint.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may take to be answered.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Page::eval`] waits for an expression (and the promise it returns).
pub const EVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Page::goto`] waits for the page's load event.
pub const GOTO_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between two evaluations in [`Page::wait_for`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Console lines kept per page (older ones are dropped).
pub const CONSOLE_LINES: usize = 400;
/// Console lines quoted in an error.
const ERROR_CONSOLE_LINES: usize = 60;
/// Lines of Chromium's stderr quoted in an error.
const STDERR_LINES: usize = 40;

/// The binaries tried, in order, when `$CHROMIUM` is not set.
const CANDIDATES: &[&str] = &["chromium", "chromium-browser", "google-chrome"];

/// The flags every browser starts with (besides `--user-data-dir`).
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    // Containers often have a small /dev/shm; Chromium crashes when it fills up.
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--disable-features=Translate,MediaRouter",
    // Background pages (a second tab) must not be throttled: tests drive several at once.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-port=0",
];

/// A headless Chromium with one CDP connection. Dropping it kills the browser.
pub struct Browser {
    child: Option<Child>,
    binary: PathBuf,
    dir: PathBuf,
    cdp: Arc<Cdp>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A page (tab) attached with its own CDP session.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target: String,
    state: Arc<PageState>,
    closed: bool,
}

/// Where the CDP connection stands: the callers waiting for replies, or why it closed.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Value, String>>>,
    closed: Option<String>,
}

/// The shared side of the CDP connection.
struct Cdp {
    out: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
    pages: Mutex<HashMap<String, Arc<PageState>>>,
    stderr: PathBuf,
}

/// What the reader task records for a page.
struct PageState {
    console: Mutex<VecDeque<String>>,
    /// Loader ids whose document fired its `load` lifecycle event.
    loaded: Mutex<HashSet<String>>,
    /// Bumped on every lifecycle event, to wake [`Page::goto`].
    lifecycle: watch::Sender<u64>,
}

impl PageState {
    fn new() -> PageState {
        PageState {
            console: Mutex::new(VecDeque::new()),
            loaded: Mutex::new(HashSet::new()),
            lifecycle: watch::channel(0).0,
        }
    }

    fn log(&self, line: String) {
        let mut c = self.console.lock().unwrap();
        if c.len() >= CONSOLE_LINES {
            c.pop_front();
        }
        c.push_back(line);
    }
}

impl Browser {
    /// Start headless Chromium with a fresh profile and connect to it over CDP.
    pub async fn launch() -> anyhow::Result<Browser> {
        let binary = find_chromium()?;
        let dir = temp_dir()?;
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile)
            .with_context(|| format!("creating {}", profile.display()))?;
        let stderr = dir.join("chromium.log");
        let log =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let mut cmd = Command::new(&binary);
        cmd.args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group, so Drop can kill the renderers and helpers too.
            .process_group(0);
        // Should the test process die without running Drop, take the browser down with it.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                bail!("could not start {}: {e}", binary.display());
            }
        };
        // From here on, Drop cleans up.
        let (out, out_rx) = mpsc::unbounded_channel();
        let mut browser = Browser {
            child: Some(child),
            binary,
            dir,
            cdp: Arc::new(Cdp {
                out,
                next_id: AtomicU64::new(1),
                pending: Mutex::new(Pending::default()),
                pages: Mutex::new(HashMap::new()),
                stderr,
            }),
            tasks: Vec::new(),
        };
        let ws_url = browser.await_devtools(&profile).await?;
        let (ws, _) =
            tokio::time::timeout(LAUNCH_TIMEOUT, tokio_tungstenite::connect_async(&ws_url))
                .await
                .map_err(|_| browser.fail(format!("connecting to {ws_url} timed out")))?
                .map_err(|e| browser.fail(format!("connecting to {ws_url}: {e}")))?;
        let (sink, stream) = ws.split();
        browser.tasks.push(tokio::spawn(write_loop(sink, out_rx)));
        browser
            .tasks
            .push(tokio::spawn(read_loop(stream, browser.cdp.clone())));
        Ok(browser)
    }

    /// Wait for `DevToolsActivePort` in the profile; returns the browser's WebSocket URL.
    async fn await_devtools(&mut self, profile: &Path) -> anyhow::Result<String> {
        let file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next())
                    && let Ok(port) = port.trim().parse::<u16>()
                    // The whole path (`/devtools/browser/<uuid>`), not a half-written file.
                    && path
                        .trim()
                        .strip_prefix("/devtools/browser/")
                        .is_some_and(|id| id.len() >= 36)
                {
                    return Ok(format!("ws://127.0.0.1:{port}{}", path.trim()));
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(self.fail(format!("chromium exited during startup ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!(
                    "chromium did not write {} within {LAUNCH_TIMEOUT:?}",
                    file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An error naming the binary, with the tail of Chromium's stderr.
    fn fail(&self, what: String) -> anyhow::Error {
        anyhow!(
            "{what} ({})\n--- chromium stderr (tail) ---\n{}",
            self.binary.display(),
            self.stderr_tail(STDERR_LINES)
        )
    }

    /// The last `lines` lines of Chromium's stdout and stderr (without its D-Bus complaints).
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.cdp.stderr, lines)
    }

    /// The Chromium binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The browser's product string (`Chrome/…`).
    pub async fn version(&self) -> anyhow::Result<String> {
        let v = self.cdp.call(None, "Browser.getVersion", json!({})).await?;
        Ok(v["product"].as_str().unwrap_or_default().to_owned())
    }

    /// Send a browser-level CDP command and return its result.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.cdp.call(None, method, params).await
    }

    /// Open a new page on `about:blank`, attached with its own session, with the Page, Runtime,
    /// Log and Inspector domains enabled (console output and exceptions are recorded from here).
    pub async fn new_page(&self) -> anyhow::Result<Page> {
        let created = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target = str_field(&created, "targetId")?;
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        let session = str_field(&attached, "sessionId")?;
        let state = Arc::new(PageState::new());
        self.cdp
            .pages
            .lock()
            .unwrap()
            .insert(session.clone(), state.clone());
        let page = Page {
            cdp: self.cdp.clone(),
            session,
            target,
            state,
            closed: false,
        };
        for (method, params) in [
            ("Page.enable", json!({})),
            ("Page.setLifecycleEventsEnabled", json!({"enabled": true})),
            ("Runtime.enable", json!({})),
            ("Log.enable", json!({})),
            ("Inspector.enable", json!({})),
        ] {
            page.call(method, params).await?;
        }
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: a plain syscall; the group is the one this browser leads.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for t in &self.tasks {
            t.abort();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- chromium stderr (tail) ---\n{}",
                self.stderr_tail(STDERR_LINES)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Page {
    /// Send a CDP command in this page's session and return its result.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.cdp
            .call(Some(&self.session), method, params)
            .await
            .map_err(|e| self.with_console(e))
    }

    /// Navigate to `url` and wait for the new document's load event.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        let mut changes = self.state.lifecycle.subscribe();
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(err) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(self.with_console(anyhow!("navigating to {url}: {err}")));
        }
        // No loader id: a same-document navigation, already done.
        let Some(loader) = nav["loaderId"].as_str().map(str::to_owned) else {
            return Ok(());
        };
        let loaded = async {
            loop {
                if self.state.loaded.lock().unwrap().contains(&loader) {
                    return Ok(());
                }
                if changes.changed().await.is_err() {
                    return Err(anyhow!("page state dropped"));
                }
            }
        };
        match tokio::time::timeout(GOTO_TIMEOUT, loaded).await {
            Ok(r) => r.map_err(|e| self.with_console(e)),
            Err(_) => Err(self.with_console(anyhow!(
                "{url} did not fire its load event within {GOTO_TIMEOUT:?}"
            ))),
        }
    }

    /// Evaluate `js` (an expression; a promise is awaited) and return its value as JSON
    /// (`undefined` → `null`). A thrown exception or a rejected promise is an error with its
    /// text and stack. Bounded by [`EVAL_TIMEOUT`].
    pub async fn eval(&self, js: &str) -> anyhow::Result<Value> {
        self.eval_timeout(js, EVAL_TIMEOUT).await
    }

    /// [`Page::eval`] with its own time limit.
    pub async fn eval_timeout(&self, js: &str, timeout: Duration) -> anyhow::Result<Value> {
        let params = json!({
            "expression": js,
            "awaitPromise": true,
            "returnByValue": true,
            "userGesture": true,
        });
        let r = self
            .cdp
            .call_timeout(Some(&self.session), "Runtime.evaluate", params, timeout)
            .await
            .map_err(|e| self.with_console(e.context(format!("evaluating {}", short(js)))))?;
        if let Some(details) = r.get("exceptionDetails") {
            return Err(self.with_console(anyhow!(
                "evaluating {} threw: {}",
                short(js),
                format_exception(details)
            )));
        }
        let result = &r["result"];
        Ok(match result.get("value") {
            Some(v) => v.clone(),
            // NaN, Infinity, -0, bigint: their text.
            None => match result.get("unserializableValue") {
                Some(v) => v.clone(),
                None => Value::Null,
            },
        })
    }

    /// Evaluate `js` until its value is truthy (JS rules) and return that value; re-evaluated
    /// every [`POLL_INTERVAL`]. An exception ends the wait at once with an error; so does the
    /// deadline, with the last value and the page's recent console output.
    pub async fn wait_for(&self, js: &str, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .eval_timeout(js, left.max(Duration::from_secs(1)))
                .await?;
            if truthy(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(self.with_console(anyhow!(
                    "timed out after {:?} waiting for {}; last value: {v}",
                    start.elapsed(),
                    short(js)
                )));
            }
            tokio::time::sleep(POLL_INTERVAL.min(left)).await;
        }
    }

    /// The recorded console output, exceptions and log entries, oldest first.
    pub fn console(&self) -> Vec<String> {
        self.state.console.lock().unwrap().iter().cloned().collect()
    }

    /// The last `lines` recorded console lines, one per line.
    pub fn console_tail(&self, lines: usize) -> String {
        let c = self.state.console.lock().unwrap();
        let skip = c.len().saturating_sub(lines);
        c.iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `e` (its whole chain) followed by the page's recent console output.
    pub fn with_console(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = self.console_tail(ERROR_CONSOLE_LINES);
        if tail.is_empty() {
            anyhow!("{e:#}\n--- page console: nothing logged ---")
        } else {
            anyhow!("{e:#}\n--- page console (tail) ---\n{tail}")
        }
    }

    /// Close the page (tab).
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.closed = true;
        self.cdp.pages.lock().unwrap().remove(&self.session);
        self.cdp
            .call(None, "Target.closeTarget", json!({"targetId": self.target}))
            .await?;
        Ok(())
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- page {} console (tail) ---\n{}",
                self.target,
                self.console_tail(ERROR_CONSOLE_LINES)
            );
        }
        if !self.closed {
            self.cdp.pages.lock().unwrap().remove(&self.session);
            // Fire and forget: nobody waits for the reply.
            let id = self.cdp.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = json!({"id": id, "method": "Target.closeTarget",
                             "params": {"targetId": self.target}});
            let _ = self.cdp.out.send(msg.to_string());
        }
    }
}

impl Cdp {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.call_timeout(session, method, params, CALL_TIMEOUT)
            .await
    }

    async fn call_timeout(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::from(s);
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap();
            if let Some(why) = &p.closed {
                return Err(self.closed_error(method, why));
            }
            p.waiting.insert(id, tx);
        }
        if self.out.send(msg.to_string()).is_err() {
            self.pending.lock().unwrap().waiting.remove(&id);
            return Err(self.closed_error(method, "the writer stopped"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(anyhow!("CDP {method} failed: {e}")),
            Ok(Err(_)) => {
                let why = self.pending.lock().unwrap().closed.clone();
                Err(self.closed_error(method, why.as_deref().unwrap_or("unknown")))
            }
            Err(_) => {
                self.pending.lock().unwrap().waiting.remove(&id);
                Err(anyhow!("CDP {method} got no reply within {timeout:?}"))
            }
        }
    }

    fn closed_error(&self, method: &str, why: &str) -> anyhow::Error {
        anyhow!(
            "CDP connection closed ({why}) during {method}\n--- chromium stderr (tail) ---\n{}",
            tail(&self.stderr, STDERR_LINES)
        )
    }

    /// Route one frame from the browser.
    fn dispatch(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let waiter = self.pending.lock().unwrap().waiting.remove(&id);
            if let Some(tx) = waiter {
                let r = match msg.get("error") {
                    Some(e) => Err(match e.get("data").and_then(Value::as_str) {
                        Some(d) => format!("{} ({d})", e["message"].as_str().unwrap_or("?")),
                        None => e["message"].as_str().unwrap_or("?").to_owned(),
                    }),
                    None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = tx.send(r);
            }
            return;
        }
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            return;
        };
        let params = &msg["params"];
        // Browser-level: a session went away.
        if method == "Target.detachedFromTarget" {
            if let Some(s) = params["sessionId"].as_str()
                && let Some(page) = self.pages.lock().unwrap().get(s)
            {
                page.log("[detached] the page's CDP session ended".into());
            }
            return;
        }
        let Some(session) = msg.get("sessionId").and_then(Value::as_str) else {
            return;
        };
        let Some(page) = self.pages.lock().unwrap().get(session).cloned() else {
            return;
        };
        match method {
            "Runtime.consoleAPICalled" => {
                let args = params["args"]
                    .as_array()
                    .map(|a| a.iter().map(format_remote).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                page.log(format!(
                    "[console.{}] {args}",
                    params["type"].as_str().unwrap_or("log")
                ));
            }
            "Runtime.exceptionThrown" => {
                page.log(format!(
                    "[exception] {}",
                    format_exception(&params["exceptionDetails"])
                ));
            }
            "Log.entryAdded" => {
                let e = &params["entry"];
                let url = e["url"]
                    .as_str()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default();
                page.log(format!(
                    "[log.{} {}] {}{url}",
                    e["level"].as_str().unwrap_or("?"),
                    e["source"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or("")
                ));
            }
            "Inspector.targetCrashed" => page.log("[crash] the page's renderer crashed".into()),
            "Page.lifecycleEvent" => {
                if params["name"] == "load"
                    && let Some(loader) = params["loaderId"].as_str()
                {
                    page.loaded.lock().unwrap().insert(loader.to_owned());
                }
                page.lifecycle.send_modify(|n| *n += 1);
            }
            _ => {}
        }
    }

    /// The connection ended: fail every waiting call and any later one.
    fn close(&self, why: String) {
        let mut p = self.pending.lock().unwrap();
        p.closed.get_or_insert(why);
        // Dropping the senders wakes the callers.
        p.waiting.clear();
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WsStream, Message>,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    while let Some(text) = rx.recv().await {
        if sink.send(Message::text(text)).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

async fn read_loop(mut stream: futures_util::stream::SplitStream<WsStream>, cdp: Arc<Cdp>) {
    let why = loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => cdp.dispatch(t.as_str()),
            Some(Ok(Message::Close(f))) => break format!("closed by the browser: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("read error: {e}"),
            None => break "end of stream".to_owned(),
        }
    };
    cdp.close(why);
}

/// `$CHROMIUM`, else the first of [`CANDIDATES`] on `PATH`.
fn find_chromium() -> anyhow::Result<PathBuf> {
    const HINT: &str = "install it with scripts/setup-debian.sh (Debian package `chromium`), \
                        or point $CHROMIUM at a Chromium or Chrome binary";
    if let Some(v) = std::env::var_os("CHROMIUM").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        let found = if p.components().count() > 1 {
            is_executable(&p).then_some(p)
        } else {
            on_path(&v.to_string_lossy())
        };
        return found.ok_or_else(|| {
            anyhow!(
                "$CHROMIUM is {}, which is not an executable; {HINT}",
                v.to_string_lossy()
            )
        });
    }
    CANDIDATES
        .iter()
        .find_map(|name| on_path(name))
        .ok_or_else(|| {
            anyhow!(
                "no Chromium found (looked for $CHROMIUM, then {} on PATH): the browser tests \
                 need headless Chromium; {HINT}",
                CANDIDATES.join(", ")
            )
        })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A new, empty directory under the system temp dir.
fn temp_dir() -> anyhow::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let dir = std::env::temp_dir().join(format!(
            "rtcroom-browser-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "could not create a temp dir under {}",
        std::env::temp_dir().display()
    )
}

/// The last `lines` lines of Chromium's log (reading at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    // Without a system bus (containers, CI) Chromium logs D-Bus failures all the time.
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(":ERROR:dbus/") && !l.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn str_field(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("CDP reply without {field}: {v}"))
}

/// JavaScript truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty() && s != "NaN" && s != "-0",
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A console argument as text.
fn format_remote(o: &Value) -> String {
    if let Some(v) = o.get("value") {
        return match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    }
    if let Some(v) = o.get("unserializableValue").and_then(Value::as_str) {
        return v.to_owned();
    }
    if let Some(d) = o.get("description").and_then(Value::as_str) {
        return d.to_owned();
    }
    o["type"].as_str().unwrap_or("?").to_owned()
}

/// An `ExceptionDetails` as text: the exception's description (message and stack), else its
/// value, else the text; plus the stack frames when the description has none.
fn format_exception(d: &Value) -> String {
    let ex = &d["exception"];
    let mut s = if let Some(desc) = ex.get("description").and_then(Value::as_str) {
        desc.to_owned()
    } else if let Some(v) = ex.get("value") {
        format!("{} {}", d["text"].as_str().unwrap_or("Uncaught"), v)
    } else {
        d["text"].as_str().unwrap_or("exception").to_owned()
    };
    if !s.contains("\n    at ")
        && let Some(frames) = d["stackTrace"]["callFrames"].as_array()
    {
        for f in frames {
            s.push_str(&format!(
                "\n    at {} ({}:{}:{})",
                f["functionName"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("<anonymous>"),
                f["url"].as_str().unwrap_or(""),
                f["lineNumber"].as_u64().unwrap_or(0) + 1,
                f["columnNumber"].as_u64().unwrap_or(0) + 1
            ));
        }
    }
    s
}

/// A JS snippet shortened for error messages.
fn short(js: &str) -> String {
    let one_line: String = js.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= 160 {
        format!("`{one_line}`")
    } else {
        format!("`{}…`", one_line.chars().take(160).collect::<String>())
    }
}
