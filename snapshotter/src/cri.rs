//! The CRI image-service proxy, as stargz, nydus and SOCI offer it: containerd gives a
//! snapshotter no credentials, so the kubelet is pointed at the snapshotter's own socket for
//! images (`--image-service-endpoint=unix://<data_dir>/snapshotter.sock`). Every
//! `runtime.v1.ImageService` call is forwarded to containerd's CRI unchanged, as bytes; a
//! `PullImage`'s credentials (the pod's image pull secret) are first kept in memory — never on
//! disk, never in a log — for the one repository the pull names, and the remote path reads that
//! image's layers with them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use prost::Message as _;
use shoal_seed::registry::Credentials;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::proto::runtime::v1::{AuthConfig, PullImageRequest};

/// The service the kubelet calls.
pub const SERVICE: &str = "runtime.v1.ImageService";
const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
/// How long a pull's credentials are kept after it (the layers are prepared during it).
const KEPT_FOR: Duration = Duration::from_secs(3600);
/// Repositories whose credentials are kept at most (the oldest go first).
const MAX_KEPT: usize = 1024;

/// Credentials kept from pulls, by (registry host, repository).
#[derive(Default)]
pub struct Keychain {
    kept: Mutex<HashMap<(String, String), (Credentials, Instant)>>,
}

impl Keychain {
    /// Keeps `credentials` for the repository of `image` (a reference as CRI names it).
    pub fn keep(&self, image: &str, credentials: Credentials) {
        let Some(key) = crate::remote::split_reference(image) else {
            return;
        };
        let mut kept = self.kept.lock().expect("keychain lock");
        let now = Instant::now();
        kept.retain(|_, (_, at)| now.duration_since(*at) < KEPT_FOR);
        if kept.len() >= MAX_KEPT
            && !kept.contains_key(&key)
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            kept.remove(&oldest);
        }
        kept.insert(key, (credentials, now));
    }

    /// The credentials last given for `registry`/`repository`, if still kept.
    pub fn get(&self, registry: &str, repository: &str) -> Option<Credentials> {
        let kept = self.kept.lock().expect("keychain lock");
        let (credentials, at) = kept.get(&(registry.to_owned(), repository.to_owned()))?;
        (at.elapsed() < KEPT_FOR).then(|| credentials.clone())
    }
}

/// What a CRI `AuthConfig` says, as the registry client's credentials. An identity token (an
/// OAuth refresh token) is not used: containerd's own path reads such images.
fn credentials(auth: &AuthConfig) -> Option<Credentials> {
    use base64::Engine as _;
    if !auth.registry_token.is_empty() {
        let mut header =
            http::HeaderValue::from_str(&format!("Bearer {}", auth.registry_token)).ok()?;
        header.set_sensitive(true);
        return Some(Credentials::Header(header));
    }
    if !auth.username.is_empty() {
        return Some(Credentials::Basic {
            user: auth.username.clone(),
            password: auth.password.clone(),
        });
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&auth.auth)
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    None
}

/// `runtime.v1.ImageService`, forwarded to containerd.
#[derive(Clone)]
pub struct ImageProxy {
    upstream: Channel,
    keychain: Arc<Keychain>,
}

impl ImageProxy {
    /// Forwards to containerd's socket at `containerd` (connected at the first call, and again
    /// after containerd restarts).
    pub fn new(containerd: &std::path::Path, keychain: Arc<Keychain>) -> ImageProxy {
        ImageProxy {
            upstream: crate::client::connect_lazy(containerd),
            keychain,
        }
    }

    /// Keeps the credentials of a pull (a request that does not decode is containerd's to
    /// refuse).
    fn remember(&self, request: &Bytes) {
        let Ok(pull) = PullImageRequest::decode(request.clone()) else {
            return;
        };
        let (Some(image), Some(auth)) = (pull.image, pull.auth) else {
            return;
        };
        match credentials(&auth) {
            Some(c) => self.keychain.keep(&image.image, c),
            None if !auth.identity_token.is_empty() => tracing::info!(
                image = image.image,
                "a pull with an identity token: its layers are read by containerd"
            ),
            None => {}
        }
    }
}

impl tonic::server::NamedService for ImageProxy {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> tower_service::Service<http::Request<B>> for ImageProxy
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let forward = Forward {
            path: req.uri().path().to_owned(),
            proxy: self.clone(),
        };
        Box::pin(async move { Ok(tonic::server::Grpc::new(Raw).unary(forward, req).await) })
    }
}

/// One call, forwarded.
struct Forward {
    path: String,
    proxy: ImageProxy,
}

impl tonic::server::UnaryService<Bytes> for Forward {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (path, proxy) = (self.path.clone(), self.proxy.clone());
        Box::pin(async move {
            if path == PULL_IMAGE {
                proxy.remember(request.get_ref());
            }
            let path = http::uri::PathAndQuery::try_from(path)
                .map_err(|_| Status::unimplemented("not a method path"))?;
            let mut containerd = tonic::client::Grpc::new(proxy.upstream);
            containerd
                .ready()
                .await
                .map_err(|e| Status::unavailable(format!("containerd: {e}")))?;
            containerd.unary(request, path, Raw).await
        })
    }
}

/// Messages as bytes, unchanged both ways.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_of(c: Option<Credentials>) -> String {
        format!("{c:?}")
    }

    #[test]
    fn pull_credentials_are_kept_for_the_repository_the_pull_names_only() {
        let keychain = Keychain::default();
        let auth = AuthConfig {
            username: "carol".into(),
            password: "secret".into(),
            ..Default::default()
        };
        keychain.keep("registry.example/team/app:v1", credentials(&auth).unwrap());
        assert_eq!(
            user_of(keychain.get("registry.example", "team/app")),
            "Some(Basic(carol, <redacted>))"
        );
        assert!(keychain.get("registry.example", "team/other").is_none());
        assert!(keychain.get("other.example", "team/app").is_none());
        // Short names are Docker Hub's, as containerd names them in the layer labels.
        keychain.keep("nginx:1.25", credentials(&auth).unwrap());
        assert!(keychain.get("docker.io", "library/nginx").is_some());
        // Bounded.
        for i in 0..MAX_KEPT + 10 {
            keychain.keep(&format!("r.example/app{i}"), Credentials::Anonymous);
        }
        assert_eq!(keychain.kept.lock().unwrap().len(), MAX_KEPT);
    }

    #[test]
    fn auth_configs_as_kubelet_sends_them() {
        use base64::Engine as _;
        let encoded = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("robot$ci:tok:en"),
            ..Default::default()
        };
        assert_eq!(
            user_of(credentials(&encoded)),
            "Some(Basic(robot$ci, <redacted>))"
        );
        let token = AuthConfig {
            registry_token: "abc".into(),
            username: "ignored".into(),
            ..Default::default()
        };
        assert_eq!(user_of(credentials(&token)), "Some(Header(<redacted>))");
        let identity = AuthConfig {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        assert!(credentials(&identity).is_none());
        let garbage = AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        };
        assert!(credentials(&garbage).is_none());
        assert!(credentials(&AuthConfig::default()).is_none());
    }
}
