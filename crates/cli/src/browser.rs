//! Headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in a
//! NUL byte on file descriptors 3 and 4), so a test looks at a page the
//! way a user's browser runs it, scripts and all, without a WebSocket
//! client or a driver. The browser test and `crowdtrain bench dashboard`
//! use it; any failure to talk to the browser panics (both want to stop
//! loudly).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian installs it; `CROWDTRAIN_CHROMIUM` names another.
#[allow(dead_code)] // the browser test's; the benchmark takes --chromium
pub fn chromium_path() -> String {
    std::env::var("CROWDTRAIN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A headless Chromium with one page, killed when dropped.
pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    replies: std::sync::mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, or says loudly why it cannot: the browser tests
    /// need it (`scripts/install-prerequisites.sh --browser` installs it).
    /// Returns `None` only if `CROWDTRAIN_SKIP_BROWSER_TESTS` is set.
    #[allow(dead_code)] // the browser test's
    pub fn launch(log: &Path) -> Option<Self> {
        Self::launch_at(&chromium_path(), log)
    }

    /// [`Browser::launch`] with the browser at `path`.
    pub fn launch_at(path: &str, log: &Path) -> Option<Self> {
        if !Path::new(&path).exists() {
            let message = format!(
                "THE BROWSER TEST NEEDS CHROMIUM, AND {path} IS MISSING: install it with \
                 `scripts/install-prerequisites.sh --browser` (Debian package chromium), or set \
                 CROWDTRAIN_SKIP_BROWSER_TESTS=1 to skip this test knowingly"
            );
            if std::env::var_os("CROWDTRAIN_SKIP_BROWSER_TESTS").is_some() {
                eprintln!("SKIPPED: {message}");
                return None;
            }
            panic!("{message}");
        }
        let profile = tempfile::tempdir().unwrap();
        let (to_browser, commands) = std::io::pipe().unwrap();
        let (replies_pipe, from_browser) = std::io::pipe().unwrap();
        let (read_fd, write_fd) = (to_browser.as_raw_fd(), from_browser.as_raw_fd());
        let mut command = Command::new(path);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                "--window-size=1280,1800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        // SAFETY: dup2 is async-signal-safe; between fork and exec it only
        // puts this child's ends of the pipes where Chromium expects them.
        unsafe {
            command.pre_exec(move || {
                // Copied above 4 first, in case either end sits on 3 or 4.
                let read = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let write = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|error| panic!("could not start {path}: {error}"));
        drop((to_browser, from_browser));
        let (sender, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies_pipe);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|read| read > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser =
            Self { child, commands, replies, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached =
            browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        browser.session = attached["sessionId"].as_str().expect("a session id").to_owned();
        Some(browser)
    }

    /// Sends one command (to the page's session unless `session` is
    /// `None` and this is the browser's) and waits for its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = self
                .replies
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("Chromium did not answer {method}"));
            if reply["id"].as_u64() == Some(id) {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Opens `url` in the page.
    pub fn open(&mut self, url: &str) {
        self.page("Page.enable", json!({}));
        self.page("Page.navigate", json!({ "url": url }));
    }

    /// The value of a JavaScript expression in the page (awaited if it is
    /// a promise); `null` if it threw.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.page(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if result.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true, or fails after `seconds`,
    /// naming `what`.
    pub fn wait_until(&mut self, seconds: u64, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while self.eval(expression) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for the page to show {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the whole page.
    #[allow(dead_code)] // the browser test's
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot =
            self.page("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("image data")).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
