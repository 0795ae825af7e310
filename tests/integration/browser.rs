//! A headless Chromium driven over the DevTools protocol, for testing the report as a person
//! sees it: pages load from disk, scripts run, console errors and failed loads are collected,
//! screenshots are saved.
//!
//! The protocol runs over a pair of pipes (`--remote-debugging-pipe`: Chromium reads commands
//! on fd 3 and writes replies and events on fd 4, each a JSON message ended by a NUL byte), so
//! no port, no websocket and no client library are needed.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Chromium on this machine: `$CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// What loading a page produced.
#[derive(Debug)]
pub struct PageLoad {
    /// Uncaught exceptions, `console.error` calls and failed loads (a missing image, a script).
    pub errors: Vec<String>,
}

pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    messages: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events received while waiting for a reply.
    events: Vec<Value>,
    profile: tempfile::TempDir,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Browser {
    /// Starts headless Chromium with a fresh profile and opens one blank tab.
    pub fn launch(chromium: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (chromium_reads, commands) = std::io::pipe().unwrap();
        let (replies, chromium_writes) = std::io::pipe().unwrap();
        let (read_fd, write_fd) = (chromium_reads.as_raw_fd(), chromium_writes.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
                // Containers often give /dev/shm 64 MB; parallel browsers would crash in it.
                "--disable-dev-shm-usage",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.path().join("chromium.log")).unwrap());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe's
        // ends may themselves be fds 3 or 4: moved above 10 first, neither overwrites the other.
        unsafe {
            command.pre_exec(move || {
                let read = libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 10);
                let write = libc::fcntl(write_fd, libc::F_DUPFD_CLOEXEC, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
        drop((chromium_reads, chromium_writes));
        let (sender, messages) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                            if sender.send(value).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            messages,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    /// Sends a command (to the tab once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.receive(left, &format!("answer {method}"));
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("{method}: {error}");
                }
                return message["result"].clone();
            }
            self.events.push(message);
        }
    }

    /// Loads `url` and waits for its load event (images included); returns what went wrong.
    pub fn open(&mut self, url: &str) -> PageLoad {
        self.events.clear();
        let navigated = self.call("Page.navigate", json!({ "url": url }));
        // A missing file still fires a load event (of an error page): the reply says it failed.
        let failed = navigated["errorText"]
            .as_str()
            .map(|e| format!("navigation to {url}: {e}"));
        let deadline = Instant::now() + TIMEOUT;
        while !self
            .events
            .iter()
            .any(|e| e["method"] == "Page.loadEventFired")
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.receive(left, &format!("finish loading {url}"));
            self.events.push(message);
        }
        // Late errors (a script run on load) arrive just after the event.
        while let Ok(message) = self.messages.recv_timeout(Duration::from_millis(300)) {
            self.events.push(message);
        }
        let errors = failed
            .into_iter()
            .chain(self.events.iter().filter_map(error_of))
            .collect();
        PageLoad { errors }
    }

    /// The next message, or a panic saying whether Chromium is silent or gone (with its log).
    fn receive(&mut self, wait: Duration, doing: &str) -> Value {
        match self.messages.recv_timeout(wait) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                panic!("Chromium did not {doing} in {TIMEOUT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let log = std::fs::read_to_string(self.profile.path().join("chromium.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "Chromium exited ({status:?}) before it could {doing}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if let Some(details) = result.get("exceptionDetails") {
            panic!("{expression}: {details}");
        }
        result["result"]["value"].clone()
    }

    /// Saves a PNG of the whole page.
    pub fn screenshot(&mut self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 },
            }),
        );
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The error an event reports, if it reports one.
fn error_of(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(format!(
            "exception: {}",
            params["exceptionDetails"]["exception"]["description"]
                .as_str()
                .or(params["exceptionDetails"]["text"].as_str())
                .unwrap_or("?")
        )),
        "Runtime.consoleAPICalled"
            if matches!(params["type"].as_str(), Some("error" | "assert")) =>
        {
            Some(format!("console.{}: {}", params["type"], params["args"]))
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
            "{}: {} {}",
            params["entry"]["source"], params["entry"]["text"], params["entry"]["url"]
        )),
        _ => None,
    }
}

/// Standard base64 (what the protocol uses for binary data).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let digits: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in digits.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..digits.len()]);
    }
    out
}

#[test]
fn base64_decodes_padded_and_unpadded_text() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8hIQ=="), b"hello!!");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

/// The harness sees what the report tests rely on it to see: a script error, a `console.error`
/// and an image that does not load.
#[test]
fn the_browser_reports_exceptions_console_errors_and_failed_loads() {
    let Some(chromium) = find_chromium() else {
        panic!("no Chromium on PATH (set $CHROMIUM): scripts/test.sh installs Debian's chromium package");
    };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.html");
    std::fs::write(
        &good,
        "<!DOCTYPE html><html><body><p id=x>fine</p></body></html>",
    )
    .unwrap();
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        r#"<!DOCTYPE html><html><body><img src="missing.jpg"><script>console.error("boom"); undefinedFunction();</script></body></html>"#,
    )
    .unwrap();
    let mut browser = Browser::launch(&chromium);
    let load = browser.open(&format!("file://{}", good.display()));
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    assert_eq!(
        browser.eval("document.getElementById('x').textContent"),
        "fine"
    );
    let load = browser.open(&format!("file://{}", bad.display()));
    let errors = load.errors.join("\n");
    assert!(errors.contains("boom"), "{errors}");
    assert!(errors.contains("undefinedFunction"), "{errors}");
    assert!(errors.contains("missing.jpg"), "{errors}");
    let load = browser.open(&format!(
        "file://{}",
        dir.path().join("absent.html").display()
    ));
    assert!(
        load.errors.join("\n").contains("ERR_FILE_NOT_FOUND"),
        "{:?}",
        load.errors
    );
    let shot = dir.path().join("bad.png");
    browser.screenshot(&shot);
    assert!(image::open(&shot).unwrap().width() > 0);
}
