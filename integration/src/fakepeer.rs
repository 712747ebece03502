//! A lying peer (a fake of our own service, for fault tests): it tells the scheduler it holds
//! every piece of a task and serves random bytes of the right length for any piece; or
//! ([`Lie::Stall`]) that every piece is arriving at it, and answers a piece request with a
//! 200 and then nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use shoal_p2p::cluster::{self, Cluster};
use shoal_p2p::piece::Layout;
use shoal_p2p::proto::scheduler_client::SchedulerClient;
use shoal_p2p::proto::{AnnounceRequest, AttachRequest, Host, PieceSet, Task, WatchRequest};
use shoal_p2p::swarm::scheduler_channel;
use shoal_p2p::{Bitmap, TaskId};

/// What the lying peer claims and does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    /// Holds every piece; serves random bytes.
    Corrupt,
    /// Every piece is arriving (announced once the task's length is known); answers 200 and
    /// never sends a byte of the body.
    Stall,
}

pub struct CorruptPeer {
    /// Piece requests it answered.
    pub requests: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for CorruptPeer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl CorruptPeer {
    /// Joins the swarm of the scheduler on `127.0.0.1:scheduler_port` as `member` (a cluster
    /// member gone bad; `None` without cluster TLS), claiming all of `task` (`length` bytes).
    pub async fn join(
        scheduler_port: u16,
        member: Option<Arc<Cluster>>,
        task: &TaskId,
        length: u64,
    ) -> CorruptPeer {
        let scheduler = format!("http://127.0.0.1:{scheduler_port}");
        let ip = "127.0.0.1".parse().expect("ip");
        Self::join_at(&scheduler, member, ip, task, length).await
    }

    /// Joins the swarm of the scheduler at `scheduler` (a URL), serving on `ip`.
    pub async fn join_at(
        scheduler: &str,
        member: Option<Arc<Cluster>>,
        ip: std::net::IpAddr,
        task: &TaskId,
        length: u64,
    ) -> CorruptPeer {
        Self::join_lying(scheduler, member, ip, task, length, Lie::Corrupt).await
    }

    /// [`join_at`](Self::join_at), telling `lie`.
    pub async fn join_lying(
        scheduler: &str,
        member: Option<Arc<Cluster>>,
        ip: std::net::IpAddr,
        task: &TaskId,
        length: u64,
        lie: Lie,
    ) -> CorruptPeer {
        let layout = Layout::for_length(length).expect("a length a task can have");
        let requests = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counter = requests.clone();
        let tls = member.as_ref().map(|m| {
            let config = m
                .server_config(vec![b"http/1.1".to_vec()])
                .expect("a server config");
            tokio_rustls::TlsAcceptor::from(config)
        });
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (counter, tls) = (counter.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let n: u32 = req
                                .uri()
                                .path()
                                .rsplit('/')
                                .next()
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            let r = layout.range(n.min(layout.piece_count() - 1));
                            let body: BoxBody<Bytes, Infallible> = match lie {
                                Lie::Corrupt => {
                                    let junk = crate::random_bytes((r.end - r.start) as usize);
                                    Full::new(junk).boxed()
                                }
                                Lie::Stall => {
                                    let never = futures_util::stream::pending::<
                                        Result<Frame<Bytes>, Infallible>,
                                    >();
                                    StreamBody::new(never).boxed()
                                }
                            };
                            let resp = Response::builder()
                                .header(http::header::CONTENT_LENGTH, r.end - r.start)
                                .body(body)
                                .expect("a response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => match cluster::accept(&tls, stream).await {
                            Ok((stream, _)) => {
                                http.serve_connection(TokioIo::new(stream), svc).await
                            }
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), svc).await,
                    };
                });
            }
        });
        let channel = scheduler_channel(scheduler, Duration::from_secs(3), member.as_ref())
            .expect("a scheduler URL");
        let mut client = SchedulerClient::new(channel);
        let id = member.as_ref().map_or("liar".into(), |m| m.me().id.clone());
        let host = Host {
            id: id.clone(),
            upload_addr: addr.to_string(),
            upload_slots: 64,
            ..Default::default()
        };
        let mut attach = client
            .attach(AttachRequest {
                host: Some(host.clone()),
            })
            .await
            .expect("attach")
            .into_inner();
        let attached =
            tokio::spawn(async move { while let Ok(Some(_)) = attach.message().await {} });
        let have = PieceSet {
            length_known: true,
            content_length: length,
            bitmap: (0..layout.piece_count())
                .map(|_| true)
                .collect::<Bitmap>()
                .as_bytes()
                .to_vec(),
            ..Default::default()
        };
        let task_msg = Task {
            id: task.to_string(),
            ..Default::default()
        };
        let have = match lie {
            Lie::Corrupt => have,
            Lie::Stall => PieceSet {
                arriving: have.bitmap,
                bitmap: Vec::new(),
                ..have
            },
        };
        let mut watch = client
            .watch(WatchRequest {
                host: Some(host),
                task: Some(task_msg),
                have: Some(have.clone()),
                digest_deltas: false,
            })
            .await
            .expect("watch")
            .into_inner();
        let announce = AnnounceRequest {
            host_id: id,
            task_id: task.to_string(),
            pieces: Some(have),
            failure: None,
            withdrawn: false,
        };
        client.announce(announce.clone()).await.expect("announce");
        let watching = tokio::spawn(async move {
            // Arriving pieces count once the length is known: said again when it is.
            let mut told = lie != Lie::Stall;
            while let Ok(Some(view)) = watch.message().await {
                if !told && view.length_known {
                    told = client.announce(announce.clone()).await.is_ok();
                }
            }
        });
        CorruptPeer {
            requests,
            tasks: vec![server, attached, watching],
        }
    }
}
