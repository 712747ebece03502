//! The scheduler protocol's client: attach to the schedulers, watch tasks, announce pieces,
//! report bad parents, receive seed jobs. Several schedulers share the tasks by rendezvous
//! hashing of the task id; the host attaches to all of them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Uploads served at once; a peer asking beyond them is answered "busy" and asks another
    /// parent. Few, so each upload goes at a good part of the uplink and a piece passes on
    /// soon: in the lab (32 hosts at 50 Mbit/s) 64 left 31 hosts sharing the uplink of the one
    /// host holding a new piece (a piece took 11 s per hop at the median; 2.8-3.0x the ideal
    /// time), 8 took it to 2.2x, 4 to 2.1x with hosts stalling to the origin.
    pub upload_slots: usize,
    /// Send uploads at low priority: DSCP Lower Effort (RFC 8622) on the wire and the bulk
    /// socket priority on the host, which Linux's default qdisc (`pfifo_fast`) queues behind
    /// everything else. A host whose uplink is full of pieces for its peers then still sends
    /// the ACKs of its own downloads (the seed's origin fetch) and its other traffic at once.
    pub upload_low_priority: bool,
    /// Pieces fetched from peers at once, per download.
    pub piece_concurrency: usize,
    /// Pass pieces on while they arrive (cut-through): a piece being fetched from a peer is
    /// announced as arriving, and the upload server serves it as its bytes come, its end only
    /// once it matched its digest. Off: a piece is offered once stored (store-and-forward).
    pub cut_through: bool,
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
            upload_slots: 8,
            upload_low_priority: true,
            piece_concurrency: 8,
            cut_through: true,
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

/// The longest wait for an announce or a report.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an idle connection to a scheduler is pinged, and how long the answer may take:
/// a scheduler that stops answering (black-holed, not refused) is known lost within the sum,
/// shorter than the default stall timeout, and its tasks move to the next scheduler.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections to the schedulers and this host's description.
pub struct Swarm {
    host: Host,
    /// This host's cluster identity; `None` when the config says `insecure`.
    cluster: Option<Arc<Cluster>>,
    schedulers: Vec<(String, SchedulerClient<Channel>)>,
    /// Whether this host's attach stream to each scheduler is open.
    attached: Vec<AtomicBool>,
    /// Each scheduler's link as `shoal status` and `shoal doctor` tell it.
    links: Vec<Mutex<Link>>,
    config: SwarmConfig,
}

/// What this host knows of its link to one scheduler besides whether it is attached.
#[derive(Clone, Debug, Default)]
pub struct Link {
    /// Why the last attach failed (its whole chain of causes); none once attached.
    pub error: Option<String>,
    /// The scheduler's clock minus this host's, in ms, measured at the last attach.
    pub clock_skew_ms: Option<i64>,
    /// Attaches so far: a scheduler attached again has forgotten what it was told.
    pub attaches: u64,
    /// How often (ms) the scheduler takes this host's `Stats`, as it said at the last attach.
    pub stats_every_ms: u64,
}

/// The response header of an attach that carries the scheduler's clock (Unix ms).
pub const TIME_HEADER: &str = "shoal-time";
/// The response header of an attach that says how often (ms) the host may send `Stats`.
pub const STATS_HEADER: &str = "shoal-stats-every-ms";
/// `Stats` at most this often (ms), whatever a scheduler says.
pub const STATS_EVERY_MS: u64 = 2000;

/// Unix time in ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
            links: schedulers.iter().map(|_| Mutex::default()).collect(),
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

    /// Each scheduler's URL, whether this host is attached to it now, and what else it knows
    /// of the link.
    pub fn schedulers(&self) -> Vec<(String, bool, Link)> {
        self.schedulers
            .iter()
            .zip(&self.attached)
            .zip(&self.links)
            .map(|(((url, _), a), l)| {
                let link = l.lock().expect("link lock").clone();
                (url.clone(), a.load(Ordering::Relaxed), link)
            })
            .collect()
    }

    /// The schedulers in the order they own `task`: the rendezvous hash of the task id and each
    /// scheduler's URL, highest first. Every host configured with the same scheduler URLs agrees.
    fn ranked(&self, task: &str) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.schedulers.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(rendezvous(task, &self.schedulers[i].0)));
        order
    }

    /// The scheduler that owns `task` now: the first in the task's order that this host is
    /// attached to, so that when a scheduler is lost its tasks move to the next one; the first
    /// of all when none is attached (at start, or with one scheduler).
    pub fn owner(&self, task: &str) -> Option<usize> {
        self.owner_unless_lost(task, None)
    }

    /// Whether scheduler `lost` owned `task` before this host lost it.
    pub fn owned_before_losing(&self, task: &str, lost: usize) -> bool {
        self.owner_unless_lost(task, Some(lost)) == Some(lost)
    }

    /// The owner, counting scheduler `also` as attached.
    fn owner_unless_lost(&self, task: &str, also: Option<usize>) -> Option<usize> {
        let order = self.ranked(task);
        order
            .iter()
            .copied()
            .find(|&i| Some(i) == also || self.attached[i].load(Ordering::Relaxed))
            .or_else(|| order.first().copied())
    }

    /// Opens the task's watch stream at its owner; returns which scheduler that is, so that
    /// what the download tells about the task goes to the same one.
    pub async fn watch(
        &self,
        task: Task,
        have: PieceSet,
    ) -> Result<(usize, tonic::Streaming<TaskView>), tonic::Status> {
        let index = self
            .owner(&task.id)
            .ok_or_else(|| tonic::Status::unavailable("no scheduler configured"))?;
        let mut client = self.schedulers[index].1.clone();
        let req = WatchRequest {
            host: Some(self.host.clone()),
            task: Some(task),
            have: Some(have),
            digest_deltas: true,
        };
        let call = client.watch(req);
        match tokio::time::timeout(self.config.connect_timeout * 2, call).await {
            Ok(r) => r.map(|r| (index, r.into_inner())),
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
        self.announce_at(self.owner(task.as_str()), task, pieces, failure)
            .await;
    }

    /// [`Swarm::announce`] to scheduler `index` (the one a download watches the task at, or
    /// the one that sent a job for it).
    pub async fn announce_at(
        &self,
        index: Option<usize>,
        task: &TaskId,
        pieces: Option<PieceSet>,
        failure: Option<crate::proto::Failure>,
    ) {
        self.send_announce(
            index,
            AnnounceRequest {
                host_id: self.host.id.clone(),
                task_id: task.to_string(),
                pieces,
                failure,
                withdrawn: false,
            },
        )
        .await;
    }

    /// Tells the task's scheduler this host no longer holds it.
    pub async fn withdraw(&self, task: &TaskId) {
        let req = AnnounceRequest {
            host_id: self.host.id.clone(),
            task_id: task.to_string(),
            withdrawn: true,
            ..Default::default()
        };
        self.send_announce(self.owner(task.as_str()), req).await;
    }

    async fn send_announce(&self, index: Option<usize>, req: AnnounceRequest) {
        let Some(mut client) = index
            .and_then(|i| self.schedulers.get(i))
            .map(|s| s.1.clone())
        else {
            return;
        };
        if let Ok(Err(e)) = tokio::time::timeout(RPC_TIMEOUT, client.announce(req)).await {
            tracing::debug!(error = %e, "announce failed");
        }
    }

    /// Reports to scheduler `index` a parent that failed this host.
    pub(crate) async fn report_at(&self, index: usize, task: &TaskId, parent: &str, fault: Fault) {
        let Some(mut client) = self.schedulers.get(index).map(|s| s.1.clone()) else {
            return;
        };
        let req = ReportRequest {
            host_id: self.host.id.clone(),
            task_id: task.to_string(),
            parent_id: parent.to_owned(),
            fault: fault as i32,
        };
        let _ = tokio::time::timeout(RPC_TIMEOUT, client.report(req)).await;
    }

    /// Tells scheduler `index` this host's traffic (for its console); whether it took it.
    pub async fn send_stats(&self, index: usize, req: crate::proto::StatsRequest) -> bool {
        let Some(mut client) = self.schedulers.get(index).map(|s| s.1.clone()) else {
            return false;
        };
        matches!(
            tokio::time::timeout(RPC_TIMEOUT, client.stats(req)).await,
            Ok(Ok(_))
        )
    }

    /// Stays attached to scheduler `index` until `cancel`: re-attaches with backoff, calls
    /// `changed(index, true)` after each (re-)attach and `changed(index, false)` when the attach
    /// stream is lost (to announce what this host holds to the tasks' owners now), and `job` for
    /// every seed job.
    pub async fn attach_loop(
        &self,
        index: usize,
        changed: impl Fn(usize, bool) + Send + Sync,
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
            let asked = unix_ms();
            let result = tokio::select! {
                r = call => r,
                () = cancel.cancelled() => return,
            };
            let answered = unix_ms();
            match result {
                Ok(resp) => {
                    tracing::info!(scheduler = url, host = self.host.id, "attached");
                    let header = |name: &str| {
                        let v = resp.metadata().get(name)?;
                        v.to_str().ok()?.parse::<i64>().ok()
                    };
                    let theirs = header(TIME_HEADER);
                    let every = header(STATS_HEADER)
                        .and_then(|ms| u64::try_from(ms).ok())
                        .unwrap_or(0)
                        .max(STATS_EVERY_MS);
                    {
                        let mut link = self.links[index].lock().expect("link lock");
                        link.error = None;
                        // Against the middle of the round trip.
                        link.clock_skew_ms = theirs
                            .map(|t| t.saturating_sub(asked / 2).saturating_sub(answered / 2));
                        link.attaches += 1;
                        link.stats_every_ms = every;
                    }
                    backoff = Duration::from_millis(100);
                    self.attached[index].store(true, Ordering::Relaxed);
                    changed(index, true);
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
                    changed(index, false);
                }
                Err(e) => {
                    let why = causes(&e);
                    tracing::debug!(scheduler = url, error = why, "attach failed");
                    self.links[index].lock().expect("link lock").error = Some(why);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A failed call's code and message with its chain of causes (a TLS failure is three levels
/// under tonic's status), each said once.
fn causes(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut next = std::error::Error::source(status);
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = if text.is_empty() {
                c
            } else {
                format!("{text}: {c}")
            };
        }
        next = cause.source();
    }
    text
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
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
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
