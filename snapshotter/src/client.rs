//! Reaching containerd (its socket) and registries (Docker's config file's credentials).

use std::path::{Path, PathBuf};

use shoal_seed::registry::Credentials;
use tonic::transport::Channel;

/// The credentials Docker's config file (`auths.<host>.auth`, `user:password` in base64)
/// holds for `host`.
pub fn docker_credentials(config: &Path, host: &str) -> Option<Credentials> {
    let text = std::fs::read(config).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let hub = "https://index.docker.io/v1/";
    let auths = value.get("auths")?;
    let auth = [host, if host == "docker.io" { hub } else { host }]
        .iter()
        .find_map(|h| auths.get(*h)?.get("auth")?.as_str())?;
    Credentials::from_basic_token(auth)
}

/// The node's registry mirror `mirror` as the registry `host` (`?ns=host`).
pub fn through_mirror(mirror: &url::Url, host: &str) -> url::Url {
    let mut base = mirror.clone();
    base.query_pairs_mut().append_pair("ns", host);
    base
}

/// The registry host of an image reference.
pub fn registry_of(reference: &str) -> Option<String> {
    crate::remote::split_reference(reference).map(|(host, _)| host)
}

/// A channel to containerd's socket.
pub async fn connect(path: &Path) -> Result<Channel, String> {
    endpoint()
        .connect_with_connector(Uds(path.to_owned()))
        .await
        .map_err(|e| format!("containerd at {}: {e}", path.display()))
}

/// A channel to containerd's socket that connects when first used (and again after a
/// restart of containerd).
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(Uds(path.to_owned()))
}

fn endpoint() -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_static("http://[::]:50051")
}

#[derive(Clone)]
struct Uds(PathBuf);
impl tower_service::Service<http::Uri> for Uds {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    }
}
