//! Headless Chromium driven over the DevTools protocol: its first page, and more opened on
//! demand (a second reader of the same dashboard), JavaScript evaluated in each, screenshots. Finds the browser on PATH (or `$CHROMIUM`); where there is none, the caller is
//! told to skip, unless `REQUIRE_BROWSER=1` or `CI` is set, where a missing browser fails.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use super::WAIT;

/// The command that installs the browser on Debian and Ubuntu, as `.ci/run` does.
pub const INSTALL: &str = "apt-get install -y chromium";
/// Most DevTools messages read while waiting for one answer (events come in between).
const MAX_MESSAGES_PER_ANSWER: usize = 10_000;

/// The browser to run: `$CHROMIUM`, else the first of the usual names on PATH. `None` when there
/// is none and the environment allows skipping; panics when it requires a browser.
pub fn find() -> Option<PathBuf> {
    let found = std::env::var_os("CHROMIUM").map(PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| {
                ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name))
            })
            .find(|candidate| candidate.is_file())
    });
    let required = std::env::var("REQUIRE_BROWSER").is_ok_and(|v| v == "1")
        || std::env::var_os("CI").is_some();
    match found {
        Some(path) => Some(path),
        None if required => panic!(
            "no Chromium on PATH (nor $CHROMIUM) and REQUIRE_BROWSER=1 or CI is set; install it: {INSTALL}"
        ),
        None => None,
    }
}

/// A headless Chromium, killed on drop; its first page is [`Browser::page`] (and the browser
/// derefs to it), more come from [`Browser::open`].
pub struct Browser {
    child: Child,
    page: Page,
    /// DevTools' HTTP endpoint, `127.0.0.1:PORT`.
    http: String,
    profile: PathBuf,
}

/// One page (tab) of the browser, over its own DevTools connection.
pub struct Page {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl std::ops::Deref for Browser {
    type Target = Page;

    fn deref(&self) -> &Page {
        &self.page
    }
}

impl std::ops::DerefMut for Browser {
    fn deref_mut(&mut self) -> &mut Page {
        &mut self.page
    }
}

/// Attaches to the page whose DevTools WebSocket is `url`.
async fn attach(url: &str) -> Page {
    let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connecting to the page in time")
        .expect("connecting to the page");
    Page { socket, next_id: 0 }
}

impl Browser {
    /// Starts `chromium` with a fresh profile under `scratch` and a `width` x `height` window,
    /// and attaches to its page.
    pub async fn start(chromium: &Path, scratch: &Path, width: u32, height: u32) -> Self {
        let profile = scratch.join(format!("chromium-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("creating the browser profile");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                // Root in a container has no user namespace for the sandbox; the page is local.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // Nothing but the page: no update checks, sync or QUIC on a closed network.
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .env_clear()
            .env("HOME", &profile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
        // The readiness signal: "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID".
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let mut seen = Vec::new();
        let browser_url = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = stderr.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_owned());
                }
                seen.push(line);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "Chromium did not say where DevTools listens; stderr:\n{}",
                seen.join("\n")
            )
        });
        // Keep draining stderr, so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let http = browser_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws:// URL")
            .to_owned();
        let targets: Value = reqwest::Client::new()
            .get(format!("http://{http}/json/list"))
            .timeout(WAIT)
            .send()
            .await
            .expect("DevTools lists its targets")
            .json()
            .await
            .expect("the targets are JSON");
        let page_url = targets
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page among the targets: {targets}"))
            .to_owned();
        Self {
            child,
            page: attach(&page_url).await,
            http,
            profile,
        }
    }

    /// Opens a new page at `url`, as a second tab, in front: its own scripts, its own
    /// connection.
    pub async fn open(&self, url: &str) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!("http://{}/json/new?{url}", self.http))
            .timeout(WAIT)
            .send()
            .await
            .expect("DevTools opens a page")
            .json()
            .await
            .expect("the new page's target is JSON");
        let page_url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebSocket for the new page: {target}"));
        attach(page_url).await
    }

    /// Closes the browser and removes its profile.
    pub async fn close(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Page {
    /// One DevTools command on the page; its `result`. Panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .expect("sending to DevTools");
        let answer = tokio::time::timeout(WAIT, async {
            for _ in 0..MAX_MESSAGES_PER_ANSWER {
                let Some(Ok(message)) = self.socket.next().await else {
                    return None;
                };
                let Ok(text) = message.into_text() else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str()).ok()?;
                if value["id"] == id {
                    return Some(value);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no answer from DevTools to {method}"));
        assert!(
            answer.get("error").is_none(),
            "DevTools refused {method}: {answer}"
        );
        answer["result"].clone()
    }

    /// Makes it the page in front: a page behind another gets no animation frames, which
    /// [`next_frame`](Self::next_frame) waits for.
    pub async fn bring_to_front(&mut self) {
        self.call("Page.bringToFront", json!({})).await;
    }

    /// Closes the page (the tab), not the browser.
    pub async fn close_page(mut self) {
        self.call("Page.close", json!({})).await;
    }

    /// Loads `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a JavaScript expression evaluated in the page (awaited if a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until `pred` holds of its value, at most [`WAIT`], paced by the
    /// browser's own answers; the last value, or a panic saying `what` never showed.
    pub async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = Value::Null;
        // Until the page has loaded, its elements are not there: null, and look again.
        let tolerant = format!("try {{ ({expression}) }} catch (e) {{ null }}");
        while tokio::time::Instant::now() < deadline {
            last = self.eval(&tolerant).await;
            if pred(&last) {
                return last;
            }
            self.next_frame().await;
        }
        panic!("the page never showed {what}; last {expression} = {last}");
    }

    /// Returns after the page's next animation frame (and 50 ms): it has rendered what it had
    /// received. Paces a look at the DOM; never what a test waits on.
    pub async fn next_frame(&mut self) {
        self.eval("new Promise(r => requestAnimationFrame(() => setTimeout(() => r(true), 50)))")
            .await;
    }

    /// The page's viewport size, as a phone or a narrow window has it.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// A PNG of the viewport as rendered, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        self.capture(path, json!({ "format": "png" })).await;
    }

    /// A PNG of the whole page, however tall, at the viewport's width, written to `path`.
    pub async fn screenshot_full(&mut self, path: &Path) {
        let size = self
            .eval("[document.documentElement.clientWidth, document.documentElement.scrollHeight]")
            .await;
        let clip = json!({ "x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1 });
        self.capture(
            path,
            json!({ "format": "png", "captureBeyondViewport": true, "clip": clip }),
        )
        .await;
    }

    async fn capture(&mut self, path: &Path, params: Value) {
        let shot = self.call("Page.captureScreenshot", params).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("creating the screenshot's folder");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }
}
