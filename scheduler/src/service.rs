//! The gRPC face of the scheduler.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::Stream;
use shoal_p2p::Bitmap;
use shoal_p2p::cluster::{Member, Role};
use shoal_p2p::piece::{Layout, MAX_CONTENT_LENGTH, MAX_PIECE_LENGTH};
use shoal_p2p::proto::scheduler_server::Scheduler as SchedulerRpc;
use shoal_p2p::proto::{
    AnnounceRequest, AnnounceResponse, AttachRequest, Fault, Host, Job, PieceSet, ReportRequest,
    ReportResponse, StatsRequest, StatsResponse, Task, TaskView, WatchRequest,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::state::{self, Merge, State};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How often a watcher gets its view again even when nothing changed (its liveness check).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// How soon a view that changes with time alone is sent again.
const RECHECK: Duration = Duration::from_millis(250);

pub struct Service {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) metrics: Metrics,
    pub(crate) traffic: Arc<crate::traffic::Traffic>,
    /// Cluster TLS is on: every request must come from a member.
    pub(crate) members_only: bool,
}

/// How often (ms) a host may tell its traffic when `hosts` are attached: the more hosts, the
/// less often, so that `Stats` stays a small share of a core (about 30 µs a call, measured with
/// bench-scheduler: at most ~3,300 calls a second): 2 s up to 6,666 hosts, 30 s at 100,000.
pub fn stats_every_ms(hosts: usize) -> u64 {
    (hosts as u64)
        .saturating_mul(3)
        .div_ceil(10)
        .max(shoal_p2p::swarm::STATS_EVERY_MS)
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        state::lock(&self.state)
    }

    /// Checks that the request comes from host `host_id` (and, with `seed`, from a seed): the
    /// member its connection's certificate names. Without cluster TLS the message is believed.
    fn caller(
        &self,
        extensions: &tonic::Extensions,
        host_id: &str,
        seed: bool,
    ) -> Result<(), Error> {
        let Some(member) = extensions.get::<Member>() else {
            return if self.members_only {
                Err(Error::NotMember)
            } else {
                Ok(())
            };
        };
        if member.id != host_id {
            return Err(Error::NotThatHost {
                member: member.to_string(),
                claimed: host_id.to_owned(),
            });
        }
        if seed && !member.is(Role::Seed) {
            return Err(Error::NotSeed(member.to_string()));
        }
        Ok(())
    }
}

/// Sends seed jobs; a seed whose queue is full or closed is left to its attach stream's end.
pub(crate) fn dispatch(
    state: &Mutex<State>,
    metrics: &Metrics,
    jobs: impl IntoIterator<Item = (String, Job)>,
) {
    let state = state::lock(state);
    for (seed, job) in jobs {
        if let Some(a) = state.hosts.get(&seed) {
            metrics.seed_triggers.inc();
            if a.jobs.try_send(job).is_err() {
                tracing::warn!(seed, "seed job queue full or closed");
            }
        }
    }
}

fn check_host(host: Option<Host>) -> Result<Host, Error> {
    let host = host.ok_or(Error::Missing("host"))?;
    if host.id.is_empty() || host.id.len() > 256 {
        return Err(Error::HostId);
    }
    Ok(host)
}

/// A piece set from the network: a length no task can have, or a bitmap or digest list longer
/// than the most pieces a task can have, is refused before it reaches the state.
fn check_pieces(pieces: &PieceSet) -> Result<(), Error> {
    let max_pieces = (MAX_CONTENT_LENGTH / MAX_PIECE_LENGTH) as usize;
    if pieces.length_known && Layout::for_length(pieces.content_length).is_none() {
        return Err(Error::ContentLength(pieces.content_length));
    }
    if pieces.bitmap.len() > max_pieces.div_ceil(8)
        || pieces.arriving.len() > max_pieces.div_ceil(8)
        || pieces.digests.len() > max_pieces
        || pieces.sources.len() > 64
    {
        return Err(Error::PieceSet);
    }
    Ok(())
}

fn check_task_id(id: &str) -> Result<(), Error> {
    id.parse::<shoal_p2p::TaskId>()?;
    Ok(())
}

/// A task's URL (when it names one) must be the task's: it hashes to the id with the task's id
/// options, as a seed checks again before fetching it. Else a watcher could point everyone's
/// fetcher at another address.
fn check_task_url(task: &Task) -> Result<(), Error> {
    if task.url.is_empty() {
        return Ok(());
    }
    task.checked_url().map(|_| ()).map_err(|_| Error::TaskUrl)
}

#[tonic::async_trait]
impl SchedulerRpc for Service {
    type WatchStream = Stream_<TaskView>;
    type AttachStream = Stream_<Job>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        let (_, extensions, req) = request.into_parts();
        let host = check_host(req.host)?;
        self.caller(&extensions, &host.id, false)?;
        let task = req.task.ok_or(Error::Missing("task"))?;
        check_task_id(&task.id)?;
        check_task_url(&task)?;
        let have = req.have.unwrap_or_default();
        check_pieces(&have)?;
        let deltas = req.digest_deltas;
        let task_id = task.id.clone();
        let (mut changed, assigned) = {
            let mut state = self.lock();
            if !state.hosts.contains_key(&host.id) {
                return Err(Error::NotAttached.into());
            }
            state.watch(&host, task, &have)
        };
        if assigned.back_to_source_peer {
            self.metrics.back_to_source.inc();
        }
        dispatch(&self.state, &self.metrics, assigned.seed_job);
        self.metrics
            .schedule_seconds
            .observe(started.elapsed().as_secs_f64());

        let (tx, mut rx) = mpsc::channel::<Result<TaskView, Status>>(4);
        let state = self.state.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            // The digests this stream sent.
            let mut sent = Bitmap::default();
            loop {
                let (view, assigned) = {
                    let mut s = state::lock(&state);
                    let assigned = s.plan(&task_id, Some(&host.id));
                    let sent = deltas.then_some(&mut sent);
                    (s.view_since(&task_id, &host, sent), assigned)
                };
                if assigned.back_to_source_peer {
                    metrics.back_to_source.inc();
                }
                dispatch(&state, &metrics, assigned.seed_job);
                let Some((view, expiring)) = view else { break };
                changed.borrow_and_update();
                metrics.views.inc();
                if tx.send(Ok(view)).await.is_err() {
                    break;
                }
                // A view that changes by itself (a seed's piece offered to everyone after a
                // while) is sent again soon even if nothing is announced.
                let wait = if expiring { RECHECK } else { KEEPALIVE };
                tokio::select! {
                    r = changed.changed() => if r.is_err() { break },
                    () = tokio::time::sleep(wait) => {}
                    () = tx.closed() => break,
                }
                // Coalesce bursts of announcements into one view.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            state::lock(&state).unwatch(&task_id, &host.id);
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        self.caller(request.extensions(), &request.get_ref().host_id, false)?;
        let req = request.into_inner();
        check_task_id(&req.task_id)?;
        if let Some(pieces) = &req.pieces {
            check_pieces(pieces)?;
        }
        let mut state = self.lock();
        if req.withdrawn {
            state.withdraw(&req.task_id, &req.host_id);
            return Ok(Response::new(AnnounceResponse {}));
        }
        if let Some(failure) = req.failure {
            // Only the host sent to the origin speaks for it.
            let fetcher = state
                .tasks
                .get(&req.task_id)
                .and_then(|t| t.fetcher.clone());
            if fetcher.as_deref() == Some(req.host_id.as_str()) {
                state.fail(&req.task_id, &req.host_id, failure);
            }
        }
        let merged = req
            .pieces
            .as_ref()
            .map(|pieces| state.merge(&req.task_id, &req.host_id, pieces));
        if merged == Some(Merge::Disputed) {
            self.metrics.disputed.inc();
        }
        if let Some(pieces) = req.pieces
            && merged == Some(Merge::UnknownTask)
        {
            // A task the scheduler forgot (e.g. after a restart): learn it from the holder.
            let task = shoal_p2p::proto::Task {
                id: req.task_id.clone(),
                ..Default::default()
            };
            let host = state.hosts.get(&req.host_id).map(|a| a.host.clone());
            if let Some(host) = host {
                let _ = state.watch(&host, task, &pieces);
                state.unwatch(&req.task_id, &req.host_id);
            }
        }
        Ok(Response::new(AnnounceResponse {}))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        self.caller(request.extensions(), &request.get_ref().host_id, false)?;
        let req = request.into_inner();
        check_task_id(&req.task_id)?;
        let corrupt = req.fault == Fault::Corrupt as i32;
        if corrupt {
            tracing::warn!(
                task = req.task_id,
                parent = req.parent_id,
                reporter = req.host_id,
                "corrupt piece reported"
            );
        }
        self.lock()
            .report(&req.task_id, &req.host_id, &req.parent_id, corrupt);
        Ok(Response::new(ReportResponse {}))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let (_, extensions, req) = request.into_parts();
        self.caller(&extensions, &req.host_id, false)?;
        let known: std::collections::HashSet<String> = {
            let s = self.lock();
            if !s.hosts.contains_key(&req.host_id) {
                return Err(Status::failed_precondition("attach before sending stats"));
            }
            req.tasks
                .iter()
                .filter(|t| s.tasks.contains_key(&t.task_id))
                .map(|t| t.task_id.clone())
                .collect()
        };
        self.traffic.put(req, |id| known.contains(id));
        Ok(Response::new(StatsResponse {}))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (_, extensions, req) = request.into_parts();
        let host = check_host(req.host)?;
        self.caller(&extensions, &host.id, host.seed)?;
        if host.upload_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::UploadAddr.into());
        }
        let (tx, rx) = mpsc::channel::<Job>(64);
        let id = host.id.clone();
        let (generation, hosts) = {
            let mut s = self.lock();
            (s.attach(host, tx.clone()), s.hosts.len())
        };
        self.metrics.hosts.inc();
        tracing::info!(host = id, "host attached");
        // The stream ends when the host goes away: then its pieces are no longer offered.
        let (out_tx, mut out_rx) = mpsc::channel::<Result<Job, Status>>(64);
        let state = self.state.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            loop {
                tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => if out_tx.send(Ok(job)).await.is_err() { break },
                        None => break,
                    },
                    () = out_tx.closed() => break,
                }
            }
            drop(tx);
            let jobs = state::lock(&state).detach(&id, generation);
            metrics.hosts.dec();
            tracing::info!(host = id, "host detached");
            dispatch(&state, &metrics, jobs);
        });
        let stream = futures_util::stream::poll_fn(move |cx| out_rx.poll_recv(cx));
        let mut response = Response::new(Box::pin(stream) as Self::AttachStream);
        // The host measures its clock against this one (`shoal doctor` tells a skew).
        response.metadata_mut().insert(
            shoal_p2p::swarm::TIME_HEADER,
            tonic::metadata::MetadataValue::from(shoal_p2p::swarm::unix_ms()),
        );
        response.metadata_mut().insert(
            shoal_p2p::swarm::STATS_HEADER,
            tonic::metadata::MetadataValue::from(stats_every_ms(hosts)),
        );
        Ok(response)
    }
}
