//! `shoal-snapshotter`: a containerd snapshotter served to containerd as a `proxy_plugins`
//! entry (`type = "snapshot"`): containerd's Snapshots gRPC service on a unix socket, from proto
//! files the project writes itself (`proto/`).
//!
//! The plain path ([`Snapshotter`]) keeps snapshots on overlayfs exactly as containerd's own
//! overlayfs snapshotter does, so `ctr images pull --snapshotter shoal` and `ctr run` behave as
//! with it. The remote path (layers prepared from the swarm, see DESIGN.md "Lazy pulling") is
//! built on it; it asks the local node for content through `shoal_p2p::api`, never through node
//! internals.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshotter = shoal_snapshotter::Snapshotter::open("/var/lib/shoal/snapshotter".as_ref())?;
//! let socket = tokio::net::UnixListener::bind("/run/shoal/snapshotter.sock")?;
//! shoal_snapshotter::serve(snapshotter, None, None, socket, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod client;
mod config;
pub mod cri;
mod error;
mod extract;
mod filter;
pub mod install;
pub mod lazy;
pub mod pull;
pub mod remote;
mod service;
mod snapshots;

pub use config::{DEFAULT_CONTAINERD, Setup, SnapshotterConfig};
pub use error::{Error, Result};
pub use remote::Remote;
pub use snapshots::{Kind, Mount, Snapshot, Snapshotter, Usage};

/// The generated gRPC code. Its modules nest as the proto packages do (the generated code
/// names `containerd.types` relative to the service's package); `types` and `snapshots` are the
/// short names.
pub mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
            pub mod content {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.content.v1");
                }
            }
            pub mod images {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.images.v1");
                }
            }
            pub mod leases {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.leases.v1");
                }
            }
        }
    }
    /// Kubernetes' CRI (`runtime.v1`): the image pull.
    pub mod runtime {
        pub mod v1 {
            tonic::include_proto!("runtime.v1");
        }
    }
    pub use containerd::services::content::v1 as content;
    pub use containerd::services::images::v1 as images;
    pub use containerd::services::leases::v1 as leases;
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}

/// Binds the snapshotter's socket at `path` (mode 0600: containerd runs as root), replacing a
/// socket nobody answers on; refuses if another snapshotter answers there.
pub fn bind(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another snapshotter answers on {}", path.display()),
        ));
    }
    shoal_p2p::api::bind_private_socket(path)
}

/// Serves the Snapshots service for `snapshotter` on `listener` until `shutdown` resolves;
/// with `remote`, layers prepared with CRI's labels are read through the local node; with
/// `containerd` (its socket), CRI's image service too, forwarded there ([`cri`]).
pub async fn serve(
    snapshotter: Snapshotter,
    remote: Option<Remote>,
    containerd: Option<&std::path::Path>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let images = containerd.map(|c| {
        let keychain = remote
            .as_ref()
            .map(|r| r.keychain.clone())
            .unwrap_or_default();
        cri::ImageProxy::new(c, keychain)
    });
    let snapshotter = std::sync::Arc::new(snapshotter);
    if let Some(r) = &remote {
        r.restore(&snapshotter).await;
    }
    let service = service::Service {
        snapshotter,
        remote: remote.map(std::sync::Arc::new),
    };
    let incoming = futures_util::stream::poll_fn(move |cx| {
        listener
            .poll_accept(cx)
            .map(|r| Some(r.map(|(stream, _)| stream)))
    });
    tonic::transport::Server::builder()
        .add_service(proto::snapshots::snapshots_server::SnapshotsServer::new(
            service,
        ))
        .add_optional_service(images)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other)
}
