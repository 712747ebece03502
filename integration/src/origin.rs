//! A test HTTP origin: serves in-memory files over real sockets and counts what it sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Clone)]
pub struct OriginBuilder {
    files: HashMap<String, Bytes>,
    redirects: HashMap<String, String>,
    ranges: bool,
    rate: Option<u64>,
    slow_after: Option<(u64, u64)>,
    ip: IpAddr,
    signature: Option<String>,
    claims_all: bool,
}

impl OriginBuilder {
    /// Serves `data` at `path` (e.g. `/file`).
    pub fn file(mut self, path: &str, data: Bytes) -> Self {
        self.files.insert(path.to_owned(), data);
        self
    }

    /// Answers `path` with `302 Found` to `location`.
    pub fn redirect(mut self, path: &str, location: &str) -> Self {
        self.redirects.insert(path.to_owned(), location.to_owned());
        self
    }

    /// Ignore `Range` headers (answer 200 with everything), as some servers do.
    pub fn no_ranges(mut self) -> Self {
        self.ranges = false;
        self
    }

    /// Send at most `bytes_per_sec` in total over all connections.
    pub fn rate(mut self, bytes_per_sec: u64) -> Self {
        self.rate = Some(bytes_per_sec);
        self
    }

    /// Send the first `bytes` of every response at full speed, the rest at `bytes_per_sec` (a
    /// connection that slows down, as one to an overloaded object store does).
    pub fn slow_after(mut self, bytes: u64, bytes_per_sec: u64) -> Self {
        self.slow_after = Some((bytes, bytes_per_sec));
        self
    }

    /// Serve only `GET`s whose query holds `param` (`Signature=…`), as an object store serves a
    /// presigned URL: anything else is `403`.
    pub fn signed(mut self, param: &str) -> Self {
        self.signature = Some(param.to_owned());
        self
    }

    /// Answer every `HEAD` with 200 and a Content-Length, as a server that claims to hold
    /// anything would; a `GET` of a path it does not hold is still 404.
    pub fn claims_all(mut self) -> Self {
        self.claims_all = true;
        self
    }

    /// Listen on this loopback address instead of 127.0.0.1 (another "host" for redirects).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    pub async fn start(self) -> TestOrigin {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(self.ip, 0))
            .await
            .expect("bind test origin");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(State {
            config: self,
            sent: AtomicU64::new(0),
            seen: Mutex::default(),
            next_send: tokio::sync::Mutex::new(Instant::now()),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestOrigin { addr, state, task }
    }
}

struct State {
    config: OriginBuilder,
    sent: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    next_send: tokio::sync::Mutex<Instant>,
}

/// A running test origin; stops when dropped.
pub struct TestOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestOrigin {
    pub fn builder() -> OriginBuilder {
        OriginBuilder {
            files: HashMap::new(),
            redirects: HashMap::new(),
            ranges: true,
            rate: None,
            slow_after: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            claims_all: false,
            signature: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Body bytes sent so far (all requests).
    pub fn bytes_sent(&self) -> u64 {
        self.state.sent.load(Ordering::Relaxed)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    state.seen.lock().expect("seen lock").push(Seen {
        method: req.method().clone(),
        path: path.clone(),
        headers: req.headers().clone(),
    });
    if let Some(param) = &state.config.signature {
        let signed = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == param));
        if !signed || req.method() != Method::GET {
            return Ok(Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(full(Bytes::from_static(b"signature does not match")))
                .expect("valid response"));
        }
    }
    if let Some(location) = state.config.redirects.get(&path) {
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header(http::header::LOCATION, location)
            .body(full(Bytes::new()))
            .expect("valid response"));
    }
    let Some(data) = state.config.files.get(&path).cloned() else {
        if state.config.claims_all && req.method() == Method::HEAD {
            return Ok(Response::builder()
                .header(http::header::CONTENT_LENGTH, 1 << 20)
                .body(full(Bytes::new()))
                .expect("valid response"));
        }
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(Bytes::from_static(b"not found")))
            .expect("valid response"));
    };
    let total = data.len() as u64;
    let range = req
        .headers()
        .get(http::header::RANGE)
        .filter(|_| state.config.ranges)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, total));
    let (status, body) = match range {
        Some((a, b)) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(a as usize..=b as usize),
        ),
        None => (StatusCode::OK, data),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, body.len());
    if state.config.ranges {
        resp = resp.header(http::header::ACCEPT_RANGES, "bytes");
    }
    if let Some((a, b)) = range {
        resp = resp.header(
            http::header::CONTENT_RANGE,
            format!("bytes {a}-{b}/{total}"),
        );
    }
    let body = if req.method() == Method::HEAD {
        full(Bytes::new())
    } else {
        paced(state, body)
    };
    Ok(resp.body(body).expect("valid response"))
}

fn full(b: Bytes) -> Body {
    Full::new(b).boxed()
}

/// Streams `data` in 64 KiB frames, paced by the origin's rate, counting what was handed to the
/// connection.
fn paced(state: Arc<State>, data: Bytes) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut here = 0;
        for chunk in data.chunks(64 << 10) {
            here += chunk.len() as u64;
            if let Some((fast, rate)) = state.config.slow_after
                && here > fast
            {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
            }
            if let Some(rate) = state.config.rate {
                let wait = {
                    let mut next = state.next_send.lock().await;
                    let now = Instant::now();
                    let start = (*next).max(now);
                    *next = start + Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                    start - now
                };
                tokio::time::sleep(wait).await;
            }
            if tx.send(data.slice_ref(chunk)).await.is_err() {
                return;
            }
            state.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive bounds within `total`.
fn parse_range(v: &str, total: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (a, b) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(a), Some(b)) => (a, b.min(total.checked_sub(1)?)),
        (Some(a), None) => (a, total.checked_sub(1)?),
        (None, Some(n)) => (total.checked_sub(n)?, total.checked_sub(1)?),
        (None, None) => return None,
    };
    (a <= b).then_some((a, b))
}
