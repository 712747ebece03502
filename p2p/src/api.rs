//! The node's local API (HTTP/1.1 + JSON on a unix socket): where its socket is, its request
//! and answer types, and a client. The node (`shoal-node`) serves it.
//!
//! `POST /v1/get` with a [`GetRequest`] answers a stream of newline-delimited [`Event`]s: progress
//! while the task downloads, then one `done` or `failed`. Bulk bytes never cross the socket: the
//! daemon links or copies the content to `output`, or the caller reads the task file named in
//! `done` (both are on this host). `GET /v1/tasks` lists the store; `GET /v1/status` tells the
//! daemon's schedulers, bytes by source and tasks (`shoal status`).

use std::path::{Path, PathBuf};

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::download::DownloadRequest;
use crate::error::{Error, Fault};
use crate::id::IdOptions;
use crate::metrics::BySource;
use crate::origin::OriginRequest;

mod prefetch;
pub use prefetch::PrefetchList;

/// The header of a lazy layer's requests to the node's mirror, on a blob GET: `index` (the
/// layer's gzip index, from the swarm only), `prefetch` (its [`PrefetchList`], from the swarm
/// only) or `present` (with a `Range`: those bytes made present in the node's task file, which
/// a 204 names in [`TASK_FILE_HEADER`]); on a blob PUT, `prefetch` publishes the list.
pub const LAZY_HEADER: &str = "x-shoal-lazy";
/// The task file a `present` answer names (the bytes never cross the socket).
pub const TASK_FILE_HEADER: &str = "x-shoal-task-file";
/// `1` on a `present` answer once the node holds the whole layer, checked.
pub const COMPLETE_HEADER: &str = "x-shoal-complete";
/// The largest gzip index a node serves or a snapshotter takes.
pub const MAX_GZIP_INDEX: u64 = 256 << 20;

/// Binds a unix socket at `path` that only this user may connect to (mode 0600), replacing a
/// file left there (the caller checks first that no one answers on it) and making its directory.
pub fn bind_private_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The local API socket's path for a data directory.
pub fn socket_in(data_dir: &Path) -> PathBuf {
    data_dir.join("shoal.sock")
}

/// `$SHOAL_DATA_DIR`, else `/var/lib/shoal` for root, else `$XDG_DATA_HOME/shoal` or
/// `~/.local/share/shoal`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHOAL_DATA_DIR") {
        return dir.into();
    }
    if is_root() {
        return "/var/lib/shoal".into();
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/shoal"),
        None => "/var/lib/shoal".into(),
    }
}

fn is_root() -> bool {
    // The owner of our own /proc entry is our effective uid; no libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A download a local client asks the daemon for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub url: String,
    /// Sent to the origin with every request; may hold credentials, so never logged.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub application: Option<String>,
    #[serde(default)]
    pub filtered_query_params: Option<Vec<String>>,
    #[serde(default)]
    pub digest: Option<Digest>,
    /// Where the daemon puts the content (absolute); none to only fill the cache.
    #[serde(default)]
    pub output: Option<PathBuf>,
}

impl GetRequest {
    /// Checks the request and turns it into a download.
    pub fn to_download(&self) -> Result<DownloadRequest, Error> {
        let url: url::Url = self
            .url
            .parse()
            .map_err(|e| Error::InvalidRequest(format!("URL {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidRequest(format!(
                "only http and https URLs can be downloaded, not {}",
                url.scheme()
            )));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| Error::InvalidRequest(format!("header name {k:?} is not valid")))?;
            // The value is not echoed: it may be a credential.
            let value = HeaderValue::from_str(v.trim()).map_err(|_| {
                Error::InvalidRequest(format!("the value of header {name} is not valid"))
            })?;
            headers.append(name, value);
        }
        crate::origin::mark_sensitive(&mut headers);
        if let Some(out) = &self.output
            && !out.is_absolute()
        {
            return Err(Error::InvalidRequest(format!(
                "output {} must be an absolute path",
                out.display()
            )));
        }
        Ok(DownloadRequest {
            origin: OriginRequest { url, headers },
            id_options: IdOptions {
                tag: self.tag.clone(),
                application: self.application.clone(),
                filtered_query_params: self.filtered_query_params.clone(),
            },
            digest: self.digest,
            task_id: None,
        })
    }
}

/// One line of the `/v1/get` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Progress {
        done: u64,
        total: u64,
    },
    Done {
        task: String,
        path: PathBuf,
        content_length: u64,
        from_cache: bool,
        /// The content's bytes by where this download got them.
        #[serde(default)]
        by_source: BySource,
    },
    Failed(Failure),
}

/// Why a download failed, in a form that survives the socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    pub kind: FailureKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The origin answered with this HTTP status.
    OriginStatus(u16),
    /// The origin could not be reached or broke off.
    Origin,
    /// The content does not have the digest the request named.
    DigestMismatch,
    /// The request was invalid.
    Request,
    /// Something on this host failed (disk, store).
    Local,
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        let kind = match (e, e.fault()) {
            (Error::OriginStatus { status, .. }, _) => FailureKind::OriginStatus(*status),
            (Error::DigestMismatch { .. }, _) => FailureKind::DigestMismatch,
            (_, Fault::Origin) => FailureKind::Origin,
            (_, Fault::Request) => FailureKind::Request,
            (_, Fault::Local) => FailureKind::Local,
        };
        Failure {
            message: e.to_string(),
            kind,
        }
    }
}

/// A task as `/v1/tasks` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task: String,
    pub url: String,
    pub content_length: u64,
    pub complete: bool,
    /// Bytes of checked pieces held (the content length once complete).
    #[serde(default)]
    pub stored: u64,
}

/// What `GET /v1/status` answers: the daemon, its schedulers, its bytes by source, its tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub data_dir: PathBuf,
    /// This host in the swarm; none when no scheduler is configured.
    pub host: Option<HostStatus>,
    pub schedulers: Vec<SchedulerStatus>,
    /// Bytes received since the daemon started, by source (`origin`, `peer`, `seed`, `cache`).
    pub downloaded: std::collections::BTreeMap<String, u64>,
    /// Piece bytes sent to other peers since the daemon started.
    pub uploaded: u64,
    pub tasks: Vec<TaskInfo>,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "data dir   {}", self.data_dir.display())?;
        match &self.host {
            Some(h) => writeln!(
                f,
                "host       {} (pieces served on {}{})",
                h.id,
                h.upload_addr,
                if h.seed { ", seed" } else { "" }
            )?,
            None => writeln!(f, "host       not in a swarm (no scheduler configured)")?,
        }
        for s in &self.schedulers {
            let state = if s.attached {
                "attached"
            } else {
                "not attached"
            };
            match (&s.error, s.attached) {
                (Some(why), false) => writeln!(f, "scheduler  {} ({state}: {why})", s.url)?,
                _ => writeln!(f, "scheduler  {} ({state})", s.url)?,
            }
        }
        let got = |k: &str| self.downloaded.get(k).copied().unwrap_or(0);
        writeln!(
            f,
            "received   origin {}  peers {}  seeds {}  cache {}",
            human(got("origin")),
            human(got("peer")),
            human(got("seed")),
            human(got("cache"))
        )?;
        writeln!(f, "sent       {} to peers", human(self.uploaded))?;
        writeln!(f, "tasks      {}", self.tasks.len())?;
        for t in &self.tasks {
            writeln!(
                f,
                "  {:<16} {:>10} {:>9} {}",
                t.task.get(..16).unwrap_or(&t.task),
                human(t.content_length),
                match t.complete {
                    true => "complete".to_owned(),
                    false => format!(
                        "{}%",
                        t.stored
                            .saturating_mul(100)
                            .checked_div(t.content_length)
                            .unwrap_or(0)
                    ),
                },
                t.url
            )?;
        }
        Ok(())
    }
}

/// Bytes in binary units with one decimal.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostStatus {
    pub id: String,
    pub upload_addr: String,
    pub seed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchedulerStatus {
    pub url: String,
    pub attached: bool,
    /// Why the last attach failed, while not attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The scheduler's clock minus this host's (ms), measured when it attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

/// Talks to a daemon's local API.
pub struct LocalClient {
    socket: PathBuf,
}

/// Errors talking to the daemon itself (not download failures, which arrive as events).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("daemon API: {0}")]
    Protocol(String),
}

impl LocalClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LocalClient {
            socket: socket.into(),
        }
    }

    /// Whether a daemon answers on `socket` (a stale socket file does not count).
    pub async fn is_running(socket: &Path) -> bool {
        tokio::net::UnixStream::connect(socket).await.is_ok()
    }

    /// Asks for a download, calling `on_event` for every event; returns the last one.
    pub async fn get(
        &self,
        req: &GetRequest,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Event, ClientError> {
        let body = serde_json::to_vec(req).expect("GetRequest serializes");
        let mut resp = self.send(http::Method::POST, "/v1/get", body).await?;
        let mut buf = BytesMut::new();
        let mut last = None;
        while let Some(frame) = resp.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(format!("reading events: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                let event: Event = serde_json::from_slice(&line[..nl])
                    .map_err(|e| ClientError::Protocol(format!("bad event line: {e}")))?;
                on_event(&event);
                last = Some(event);
            }
        }
        last.filter(|e| !matches!(e, Event::Progress { .. }))
            .ok_or_else(|| {
                ClientError::Protocol("the daemon closed the stream without a result".into())
            })
    }

    /// The tasks in the daemon's store.
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, ClientError> {
        self.get_json("/v1/tasks").await
    }

    /// The daemon's state: its schedulers, bytes by source, tasks.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get_json("/v1/status").await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(http::Method::GET, path, Vec::new()).await?;
        let body = resp
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .aggregate();
        serde_json::from_reader(body.reader()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "shoal")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .expect("static request parts are valid");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Protocol(format!(
                "{status}: {}",
                String::from_utf8_lossy(&text)
            )));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_round_trip() {
        for e in [
            Event::Progress { done: 1, total: 2 },
            Event::Done {
                task: "t".into(),
                path: "/p".into(),
                content_length: 3,
                from_cache: true,
                by_source: BySource {
                    cache: 3,
                    ..BySource::default()
                },
            },
            Event::Failed(Failure {
                message: "m".into(),
                kind: FailureKind::OriginStatus(404),
            }),
        ] {
            let line = serde_json::to_string(&e).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        }
    }

    #[test]
    fn bad_requests_are_refused_without_echoing_header_values() {
        let bad_scheme = GetRequest {
            url: "ftp://h/f".into(),
            ..Default::default()
        };
        assert!(bad_scheme.to_download().is_err());
        let relative = GetRequest {
            url: "http://h/f".into(),
            output: Some("out".into()),
            ..Default::default()
        };
        assert!(relative.to_download().is_err());
        let secret = GetRequest {
            url: "http://h/f".into(),
            headers: vec![("Authorization".into(), "Bearer s3cr3t\n".into())],
            ..Default::default()
        };
        // A trailing newline is trimmed; an embedded one is refused without showing the value.
        assert!(secret.to_download().is_ok());
        let embedded = GetRequest {
            headers: vec![("X".into(), "a\nb s3cr3t".into())],
            ..secret
        };
        let err = embedded.to_download().unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
