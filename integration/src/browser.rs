//! Debian's Chromium, headless, driven through ChromeDriver's W3C WebDriver API (plain HTTP and
//! JSON): for tests of the web console as a user's browser sees it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::free_port;
use crate::process::ChildGuard;

/// The W3C key of a web element in WebDriver's answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; the browser and its driver stop when it is dropped.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
    _driver: ChildGuard,
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts ChromeDriver and a Chromium session with a window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let driver = ChildGuard::spawn(cmd);
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(b) = r.bytes().await
                && let Ok(v) = serde_json::from_slice::<Value>(&b)
                && v["value"]["ready"] == true
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        // As root, with no network beyond loopback: no sandbox, no background requests.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let answer = json_of(http.post(format!("{base}/session")), Some(caps)).await;
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"));
        let browser = Browser {
            session: format!("{base}/session/{id}"),
            http,
            _profile: profile,
            _driver: driver,
        };
        // Finding waits up to 5 s for what a navigation still under way will show.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"implicit": 5000})),
            )
            .await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let req = self.http.request(method, format!("{}{path}", self.session));
        let answer = json_of(req, body).await;
        if answer["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits (up to 10 s) until the page's URL ends with `suffix` (a click's navigation may
    /// still be under way when the click returns); the URL then.
    pub async fn wait_for_url(&self, suffix: &str) -> String {
        for _ in 0..100 {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return url;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the browser never got to …{suffix}: it is at {}",
            self.url().await
        )
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The elements `css` selects (none is no error).
    pub async fn all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element {
                browser: self,
                id: id.to_owned(),
            })
            .collect()
    }

    /// The one element `css` selects; panics when there is none.
    pub async fn find(&self, css: &str) -> Element<'_> {
        self.all(css)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("nothing matches {css}"))
    }

    /// Saves what the window shows as a PNG file.
    pub async fn screenshot(&self, to: &Path) {
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(to, bytes).expect("write screenshot");
    }
}

/// Sends `req` with `body` as JSON; the JSON answer.
async fn json_of(mut req: reqwest::RequestBuilder, body: Option<Value>) -> Value {
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let bytes = req
        .send()
        .await
        .expect("chromedriver answers")
        .bytes()
        .await
        .expect("chromedriver's answer");
    serde_json::from_slice(&bytes).expect("JSON from chromedriver")
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}{what}", self.id)
    }

    pub async fn text(&self) -> String {
        let v = self
            .browser
            .call(reqwest::Method::GET, &self.path("/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    pub async fn attr(&self, name: &str) -> Option<String> {
        let v = self
            .browser
            .call(
                reqwest::Method::GET,
                &self.path(&format!("/attribute/{name}")),
                None,
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    pub async fn click(&self) {
        self.browser
            .call(reqwest::Method::POST, &self.path("/click"), Some(json!({})))
            .await;
    }

    pub async fn type_text(&self, text: &str) {
        self.browser
            .call(
                reqwest::Method::POST,
                &self.path("/value"),
                Some(json!({"text": text})),
            )
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser; the driver is killed after.
        let (http, session) = (self.http.clone(), self.session.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), http.delete(session).send())
                            .await;
                });
            }
        })
        .join();
    }
}
