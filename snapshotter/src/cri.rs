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
use std::sync::atomic::{AtomicU64, Ordering};
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
/// The largest message forwarded (the kubelet's and containerd's limit).
const MAX_MESSAGE: usize = 16 << 20;

/// Credentials kept from pulls, by (registry host, repository).
#[derive(Default)]
pub struct Keychain {
    kept: Mutex<HashMap<(String, String), Entry>>,
    generation: AtomicU64,
}

#[derive(Clone)]
struct Entry {
    credentials: Credentials,
    at: Instant,
    generation: u64,
}

/// Credentials just kept, and what they replaced (see [`Keychain::undo`]).
pub struct Kept {
    key: (String, String),
    generation: u64,
    replaced: Option<Entry>,
}

impl Keychain {
    /// Keeps `credentials` for the repository of `image` (a reference as CRI names it).
    pub fn keep(&self, image: &str, credentials: Credentials) -> Option<Kept> {
        let key = crate::remote::split_reference(image)?;
        let mut kept = self.kept.lock().expect("keychain lock");
        let now = Instant::now();
        kept.retain(|_, e| now.duration_since(e.at) < KEPT_FOR);
        if kept.len() >= MAX_KEPT
            && !kept.contains_key(&key)
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
        {
            kept.remove(&oldest);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            credentials,
            at: now,
            generation,
        };
        let replaced = kept.insert(key.clone(), entry);
        Some(Kept {
            key,
            generation,
            replaced,
        })
    }

    /// Puts back what `kept` replaced, unless newer credentials came since: the pull they came
    /// with failed (a wrong secret does not evict good credentials).
    pub fn undo(&self, kept: Kept) {
        let mut all = self.kept.lock().expect("keychain lock");
        if all
            .get(&kept.key)
            .is_some_and(|e| e.generation == kept.generation)
        {
            match kept.replaced {
                Some(e) => all.insert(kept.key, e),
                None => all.remove(&kept.key),
            };
        }
    }

    /// The credentials last given for `registry`/`repository`, if still kept.
    pub fn get(&self, registry: &str, repository: &str) -> Option<Credentials> {
        let kept = self.kept.lock().expect("keychain lock");
        let e = kept.get(&(registry.to_owned(), repository.to_owned()))?;
        (e.at.elapsed() < KEPT_FOR).then(|| e.credentials.clone())
    }
}

/// The metadata `shoal pull` lends its registry credentials to the snapshotter with, on the
/// prepares it sends the snapshotter's own socket (an `Authorization` value: `Basic …` or
/// `Bearer …`): they are kept as a kubelet's pull's are, for the image the labels name.
pub const LEND: &str = "shoal-registry-authorization";

/// The credentials an `Authorization` value stands for (`Basic …` or `Bearer …`).
pub fn from_authorization(value: &str) -> Option<Credentials> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        return Credentials::from_basic_token(rest);
    }
    let mut header = http::HeaderValue::from_str(value).ok()?;
    header.set_sensitive(true);
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(Credentials::Header(header))
}

/// What a CRI `AuthConfig` says, as the registry client's credentials. An identity token (an
/// OAuth refresh token) is not used: containerd's own path reads such images.
fn credentials(auth: &AuthConfig) -> Option<Credentials> {
    if !auth.identity_token.is_empty() {
        return None;
    }
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
        return Credentials::from_basic_token(&auth.auth);
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
    fn remember(&self, request: &Bytes) -> Option<Kept> {
        let pull = PullImageRequest::decode(request.clone()).ok()?;
        let (image, auth) = (pull.image?, pull.auth?);
        match credentials(&auth) {
            Some(c) => self.keychain.keep(&image.image, c),
            None if !auth.identity_token.is_empty() => {
                tracing::info!(
                    image = image.image,
                    "a pull with an identity token: its layers are read by containerd"
                );
                None
            }
            None => None,
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
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw).max_decoding_message_size(MAX_MESSAGE);
            Ok(grpc.unary(forward, req).await)
        })
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
            let kept = match path == PULL_IMAGE {
                true => proxy.remember(request.get_ref()),
                false => None,
            };
            let path = http::uri::PathAndQuery::try_from(path)
                .map_err(|_| Status::unimplemented("not a method path"))?;
            let mut containerd =
                tonic::client::Grpc::new(proxy.upstream).max_decoding_message_size(MAX_MESSAGE);
            let answer = match containerd.ready().await {
                Ok(()) => containerd.unary(request, path, Raw).await,
                Err(e) => Err(Status::unavailable(format!("containerd: {e}"))),
            };
            if let (Err(_), Some(kept)) = (&answer, kept) {
                proxy.keychain.undo(kept);
            }
            answer
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
        // A pull that failed puts back what it replaced, unless newer ones came since.
        let wrong = AuthConfig {
            username: "mallory".into(),
            ..Default::default()
        };
        let kept = keychain.keep("registry.example/team/app:v2", credentials(&wrong).unwrap());
        keychain.undo(kept.unwrap());
        assert_eq!(
            user_of(keychain.get("registry.example", "team/app")),
            "Some(Basic(carol, <redacted>))"
        );
        let kept = keychain.keep("registry.example/new/app", credentials(&wrong).unwrap());
        keychain.undo(kept.unwrap());
        assert!(keychain.get("registry.example", "new/app").is_none());
        let first = keychain.keep("registry.example/team/app", credentials(&wrong).unwrap());
        keychain.keep("registry.example/team/app", credentials(&auth).unwrap());
        keychain.undo(first.unwrap());
        assert_eq!(
            user_of(keychain.get("registry.example", "team/app")),
            "Some(Basic(carol, <redacted>))",
            "newer credentials stay"
        );
        // Docker Hub's names as containerd normalizes them.
        keychain.keep("docker.io/redis", credentials(&auth).unwrap());
        assert!(keychain.get("docker.io", "library/redis").is_some());
        keychain.keep("index.docker.io/team/x", credentials(&auth).unwrap());
        assert!(keychain.get("docker.io", "team/x").is_some());
        // Bounded.
        for i in 0..MAX_KEPT + 10 {
            keychain.keep(&format!("r.example/app{i}"), Credentials::Anonymous);
        }
        assert_eq!(keychain.kept.lock().unwrap().len(), MAX_KEPT);
    }

    #[test]
    fn lent_credentials_go_both_ways() {
        let basic = Credentials::Basic {
            user: "carol".into(),
            password: "p:w".into(),
        };
        let value = basic.authorization().unwrap();
        assert_eq!(
            user_of(from_authorization(value.to_str().unwrap())),
            "Some(Basic(carol, <redacted>))"
        );
        let bearer = from_authorization("Bearer abc").unwrap();
        assert_eq!(bearer.authorization().unwrap(), "Bearer abc");
        assert!(Credentials::Anonymous.authorization().is_none());
        for bad in ["Basic !!!", "Digest x", "Basic", "", "Bearer \n"] {
            assert!(from_authorization(bad).is_none(), "{bad:?}");
        }
    }

    /// With containerd down (or not there), a kubelet's call gets `Unavailable` at once, and the
    /// pull's credentials are not kept.
    #[tokio::test]
    async fn calls_fail_fast_when_containerd_is_not_there() {
        use crate::proto::runtime::v1::image_service_client::ImageServiceClient;
        use crate::proto::runtime::v1::{ImageSpec, ImageStatusRequest};
        let dir = tempfile::tempdir().unwrap();
        let keychain = Arc::new(Keychain::default());
        let proxy = ImageProxy::new(&dir.path().join("no-containerd.sock"), keychain.clone());
        let socket = dir.path().join("proxy.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let incoming = futures_util::stream::poll_fn(move |cx| {
            listener
                .poll_accept(cx)
                .map(|r| Some(r.map(|(stream, _)| stream)))
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proxy)
                .serve_with_incoming(incoming),
        );
        let channel = crate::client::connect(&socket).await.unwrap();
        let mut kubelet = ImageServiceClient::new(channel);
        let image = Some(ImageSpec {
            image: "registry.example/team/app:v1".into(),
            annotations: Default::default(),
        });
        let started = Instant::now();
        let status = kubelet
            .image_status(ImageStatusRequest {
                image: image.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let pulled = kubelet
            .pull_image(PullImageRequest {
                image,
                auth: Some(AuthConfig {
                    username: "carol".into(),
                    password: "secret".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(pulled.code(), tonic::Code::Unavailable, "{pulled:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            keychain.get("registry.example", "team/app").is_none(),
            "a failed pull's credentials are not kept"
        );
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
            username: "00000000-0000-0000-0000-000000000000".into(),
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
