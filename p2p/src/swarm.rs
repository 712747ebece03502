//! The scheduler protocol's client: attach to the schedulers, watch tasks, announce pieces,
//! report bad parents, receive seed jobs. Several schedulers share the tasks by rendezvous
//! hashing of the task id; the host attaches to all of them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{Cluster, Member, Role};
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::proto::scheduler_client::SchedulerClient;
use crate::proto::{
    AnnounceRequest, AttachRequest, Fault, Host, Job, PieceSet, ReportRequest, Task, TaskView,
    WatchRequest,
};

/// Peer-to-peer settings of a daemon (the `[swarm]` table).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// Scheduler URLs (`http://host:8002`). None: every download goes to the origin.
    pub schedulers: Vec<String>,
    /// Where the upload server listens.
    pub upload_addr: SocketAddr,
    /// The address peers dial; by default the upload address, or, when that is unspecified
    /// (0.0.0.0), this host's address on the route to the first scheduler.
    pub advertise_ip: Option<IpAddr>,
    /// This host's identity; default `<hostname>-<advertised address>`.
    pub host_id: Option<String>,
    /// Locality labels (`idc`, `zone`, ...): parents sharing them are preferred.
    pub labels: BTreeMap<String, String>,
    /// Uploads served at once.
    pub upload_slots: usize,
    /// Pieces fetched from peers at once, per download.
    pub piece_concurrency: usize,
    /// Longest time for one piece from a peer.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// With no new piece anywhere in the swarm for this long, fetch the rest from the origin.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Time to connect to a scheduler.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `seed`: no longer read (a host is a seed when it runs `shoal seed` or `shoal up`).
    /// Accepted so that configs written for earlier versions still load; the node warns.
    #[serde(rename = "seed")]
    pub legacy_seed: Option<bool>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            schedulers: Vec::new(),
            upload_addr: SocketAddr::from(([0, 0, 0, 0], 4000)),
            advertise_ip: None,
            host_id: None,
            labels: BTreeMap::new(),
            upload_slots: 64,
            piece_concurrency: 8,
            peer_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            legacy_seed: None,
        }
    }
}

impl SwarmConfig {
    pub fn validate(&self) -> Result<(), String> {
        for s in &self.schedulers {
            s.parse::<http::Uri>()
                .map_err(|e| format!("scheduler {s:?}: {e}"))?;
        }
        if self.upload_slots == 0 || self.piece_concurrency == 0 {
            return Err("swarm.upload_slots and swarm.piece_concurrency must be at least 1".into());
        }
        Ok(())
    }
}

/// Connections to the schedulers and this host's description.
pub struct Swarm {
    host: Host,
    /// This host's cluster identity; `None` when the config says `insecure`.
    cluster: Option<Arc<Cluster>>,
    schedulers: Vec<(String, SchedulerClient<Channel>)>,
    /// Whether this host's attach stream to each scheduler is open.
    attached: Vec<AtomicBool>,
    config: SwarmConfig,
}

impl Swarm {
    /// `upload` is the bound upload address; `seed` says whether this host takes seed jobs;
    /// with `cluster`, this host is the member its certificate names, and talks to schedulers
    /// that prove they are the cluster's. Channels connect lazily and reconnect by themselves.
    pub fn new(
        config: SwarmConfig,
        upload: SocketAddr,
        seed: bool,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Swarm> {
        let mut schedulers = Vec::new();
        for url in &config.schedulers {
            let channel = scheduler_channel(url, config.connect_timeout, cluster.as_ref())?;
            schedulers.push((url.clone(), SchedulerClient::new(channel)));
        }
        let ip = match (config.advertise_ip, upload.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if !ip.is_unspecified() => ip,
            (None, _) => route_ip(config.schedulers.first())?,
        };
        let advertised = SocketAddr::new(ip, upload.port());
        let id = match &cluster {
            Some(cluster) => member_id(cluster.me(), config.host_id.as_deref(), seed)?,
            None => config
                .host_id
                .clone()
                .unwrap_or_else(|| format!("{}-{advertised}", hostname())),
        };
        let host = Host {
            id,
            upload_addr: advertised.to_string(),
            labels: config.labels.clone().into_iter().collect(),
            upload_slots: u32::try_from(config.upload_slots).unwrap_or(u32::MAX),
            seed,
        };
        Ok(Swarm {
            host,
            cluster,
            attached: schedulers.iter().map(|_| AtomicBool::new(false)).collect(),
            schedulers,
            config,
        })
    }

    /// This host's cluster identity, when cluster TLS is on.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_deref()
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    pub fn scheduler_count(&self) -> usize {
        self.schedulers.len()
    }

    /// Each scheduler's URL and whether this host is attached to it now.
    pub fn schedulers(&self) -> Vec<(String, bool)> {
        self.schedulers
            .iter()
            .zip(&self.attached)
            .map(|((url, _), a)| (url.clone(), a.load(Ordering::Relaxed)))
            .collect()
    }

    /// The scheduler that owns `task`.
    pub fn owner(&self, task: &str) -> Option<usize> {
        (0..self.schedulers.len()).max_by_key(|&i| rendezvous(task, &self.schedulers[i].0))
    }

    fn client(&self, task: &str) -> Option<SchedulerClient<Channel>> {
        self.owner(task).map(|i| self.schedulers[i].1.clone())
    }

    /// Opens the task's watch stream.
    pub async fn watch(
        &self,
        task: Task,
        have: PieceSet,
    ) -> Result<tonic::Streaming<TaskView>, tonic::Status> {
        let mut client = self
            .client(&task.id)
            .ok_or_else(|| tonic::Status::unavailable("no scheduler configured"))?;
        let req = WatchRequest {
            host: Some(self.host.clone()),
            task: Some(task),
            have: Some(have),
        };
        let call = client.watch(req);
        match tokio::time::timeout(self.config.connect_timeout * 2, call).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded("scheduler did not answer")),
        }
    }

    /// Tells the task's scheduler what this host holds (and what the origin answered).
    pub async fn announce(
        &self,
        task: &TaskId,
        pieces: Option<PieceSet>,
        failure: Option<crate::proto::Failure>,
    ) {
        self.send_announce(AnnounceRequest {
            host_id: self.host.id.clone(),
            task_id: task.to_string(),
            pieces,
            failure,
            withdrawn: false,
        })
        .await;
    }

    /// Tells the task's scheduler this host no longer holds it.
    pub async fn withdraw(&self, task: &TaskId) {
        self.send_announce(AnnounceRequest {
            host_id: self.host.id.clone(),
            task_id: task.to_string(),
            withdrawn: true,
            ..Default::default()
        })
        .await;
    }

    async fn send_announce(&self, req: AnnounceRequest) {
        let Some(mut client) = self.client(&req.task_id) else {
            return;
        };
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), client.announce(req)).await
        {
            tracing::debug!(error = %e, "announce failed");
        }
    }

    /// Reports a parent that failed this host.
    pub async fn report(&self, task: &TaskId, parent: &str, fault: Fault) {
        let Some(mut client) = self.client(task.as_str()) else {
            return;
        };
        let req = ReportRequest {
            host_id: self.host.id.clone(),
            task_id: task.to_string(),
            parent_id: parent.to_owned(),
            fault: fault as i32,
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), client.report(req)).await;
    }

    /// Stays attached to scheduler `index` until `cancel`: re-attaches with backoff, calls
    /// `attached` after each (re-)attach (to re-announce what this host holds), and `job` for every
    /// seed job.
    pub async fn attach_loop(
        &self,
        index: usize,
        attached: impl Fn(usize) + Send + Sync,
        job: impl Fn(Job) + Send + Sync,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let (url, client) = &self.schedulers[index];
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut client = client.clone();
            let call = client.attach(AttachRequest {
                host: Some(self.host.clone()),
            });
            let result = tokio::select! {
                r = call => r,
                () = cancel.cancelled() => return,
            };
            match result {
                Ok(resp) => {
                    tracing::info!(scheduler = url, host = self.host.id, "attached");
                    backoff = Duration::from_millis(100);
                    attached(index);
                    self.attached[index].store(true, Ordering::Relaxed);
                    let mut stream = resp.into_inner();
                    loop {
                        tokio::select! {
                            m = stream.message() => match m {
                                Ok(Some(j)) => job(j),
                                Ok(None) => break,
                                Err(e) => { tracing::warn!(scheduler = url, error = %e, "scheduler stream ended"); break }
                            },
                            () = cancel.cancelled() => return,
                        }
                    }
                    self.attached[index].store(false, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(scheduler = url, error = %e, "attach failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A member's host id is its certificate's: a configured `host_id` must agree, and a seed's
/// certificate must say it is one.
fn member_id(me: &Member, configured: Option<&str>, seed: bool) -> Result<String> {
    if let Some(id) = configured
        && id != me.id
    {
        return Err(Error::Config(format!(
            "swarm.host_id is {id:?} but this host's cluster certificate is {me}: leave \
             host_id unset, or issue the certificate for that id"
        )));
    }
    for (needed, role) in [(true, Role::Node), (seed, Role::Seed)] {
        if needed && !me.is(role) {
            return Err(Error::Config(format!(
                "this host's cluster certificate is {me}, not a {role}'s: issue it with \
                 `--role {role}`"
            )));
        }
    }
    Ok(me.id.clone())
}

/// A lazily connecting channel to the scheduler at `url`: with `cluster`, over mutual TLS to a
/// scheduler of the cluster (the URL's scheme is then not read).
pub fn scheduler_channel(
    url: &str,
    connect_timeout: Duration,
    cluster: Option<&Arc<Cluster>>,
) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::Config(format!("scheduler {url:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(match cluster {
        Some(cluster) => endpoint.connect_with_connector_lazy(TlsConnector {
            cluster: cluster.clone(),
            tls: Arc::new(cluster.client_config(Role::Scheduler, vec![b"h2".to_vec()])),
        }),
        None => endpoint.connect_lazy(),
    })
}

/// Connects to a scheduler over mutual TLS (the channel's URL gives host and port; its
/// scheme is not read).
#[derive(Clone)]
struct TlsConnector {
    cluster: Arc<Cluster>,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
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

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(8002);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.cluster.connect(tcp, this.tls.clone()).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// The same rendezvous hash the scheduler uses for seeds.
pub fn rendezvous(key: &str, node: &str) -> u64 {
    let h = blake3::hash(format!("{key}\0{node}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// This host's source address towards `scheduler` (a connected UDP socket sends nothing).
fn route_ip(scheduler: Option<&String>) -> Result<IpAddr> {
    let uri: http::Uri = scheduler
        .ok_or_else(|| {
            Error::Config(
                "swarm.upload_addr is unspecified and no scheduler is set: set swarm.advertise_ip"
                    .into(),
            )
        })?
        .parse()
        .map_err(|e| Error::Config(format!("scheduler URL: {e}")))?;
    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(8002);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config(format!("cannot resolve scheduler host {host}")))?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = std::net::UdpSocket::bind(bind)
        .map_err(|e| Error::io("find local address", "udp socket", e))?;
    sock.connect(target)
        .map_err(|e| Error::io("find route to", host, e))?;
    Ok(sock
        .local_addr()
        .map_err(|e| Error::io("find local address", host, e))?
        .ip())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}
