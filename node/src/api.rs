//! The local API's server side (HTTP/1.1 + JSON on the unix socket; the types and the client
//! are in [`shoal_p2p::api`]): `POST /v1/get`, `GET /v1/tasks`, `GET /v1/status`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shoal_p2p::api::{
    Event, Failure, FailureKind, GetRequest, HostStatus, SchedulerStatus, Status, TaskInfo,
};
use shoal_p2p::{Downloader, Error, Metrics, Progress, Result, Swarm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The local API's routes, `max_requests` served at once.
pub(crate) fn router(state: ApiState, max_requests: usize) -> Router {
    Router::new()
        .route("/v1/get", post(get_handler))
        .route("/v1/tasks", get(tasks_handler))
        .route("/v1/status", get(status_handler))
        .layer(tower::limit::ConcurrencyLimitLayer::new(max_requests))
        .with_state(Arc::new(state))
}

pub(crate) struct ApiState {
    pub downloader: Arc<Downloader>,
    pub metrics: Metrics,
    pub data_dir: PathBuf,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    pub progress_interval: Duration,
}

async fn get_handler(State(state): State<Arc<ApiState>>, Json(req): Json<GetRequest>) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(8);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        let last = tokio::select! {
            event = run_get(&task_state, &req, &tx) => event,
            () = task_state.cancel.cancelled() => Event::Failed(Failure {
                message: "the daemon is shutting down; run the command again to resume".into(),
                kind: FailureKind::Local,
            }),
        };
        let _ = tx.send(last).await;
    });
    let lines = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| {
            e.map(|e| {
                let mut line = serde_json::to_vec(&e).expect("events serialize");
                line.push(b'\n');
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
            })
        })
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// Downloads, reporting progress on `tx`, and places the output; returns the final event.
async fn run_get(state: &ApiState, req: &GetRequest, tx: &mpsc::Sender<Event>) -> Event {
    let download = match req.to_download() {
        Ok(d) => d,
        Err(e) => return Event::Failed((&e).into()),
    };
    let progress = Progress::default();
    let work = state.downloader.download(&download, &progress);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(state.progress_interval);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let (done, total) = progress.get();
                // A slow reader misses progress lines, never the result.
                let _ = tx.try_send(Event::Progress { done, total });
            }
        }
    };
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "download failed");
            return Event::Failed((&e).into());
        }
    };
    if let Some(out) = req.output.clone() {
        let src = done.path.clone();
        let placed = tokio::task::spawn_blocking(move || crate::output::link_or_copy(&src, &out))
            .await
            .expect("placing output does not panic");
        if let Err(e) = placed {
            return Event::Failed((&e).into());
        }
    }
    Event::Done {
        task: done.task.to_string(),
        path: done.path,
        content_length: done.meta.layout.content_length,
        from_cache: done.from_cache,
        by_source: progress.by_source(),
    }
}

async fn list_tasks(state: &ApiState) -> Result<Vec<TaskInfo>> {
    let store = state.downloader.store();
    let mut tasks = Vec::new();
    for (id, meta) in store.list().await? {
        let stored = match meta.complete {
            true => meta.layout.content_length,
            // Only a download's tasks are incomplete: few, and their journals are short. A task
            // gone (or unreadable) meanwhile holds nothing.
            false => store
                .state(&id)
                .await
                .ok()
                .flatten()
                .map_or(0, |s| s.stored_bytes()),
        };
        tasks.push(TaskInfo {
            task: id.to_string(),
            url: meta.url,
            content_length: meta.layout.content_length,
            complete: meta.complete,
            stored,
        });
    }
    Ok(tasks)
}

fn internal_error(e: &Error) -> Response {
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

async fn tasks_handler(State(state): State<Arc<ApiState>>) -> Response {
    match list_tasks(&state).await {
        Ok(tasks) => Json(tasks).into_response(),
        Err(e) => internal_error(&e),
    }
}

async fn status_handler(State(state): State<Arc<ApiState>>) -> Response {
    let tasks = match list_tasks(&state).await {
        Ok(t) => t,
        Err(e) => return internal_error(&e),
    };
    let got = state.metrics.received();
    let downloaded = [
        ("origin", got.origin),
        ("peer", got.peer),
        ("seed", got.seed),
        ("cache", got.cache),
    ]
    .into_iter()
    .map(|(name, n)| (name.to_owned(), n))
    .collect();
    let swarm = state.downloader.swarm().map(Arc::as_ref);
    Json(Status {
        data_dir: state.data_dir.clone(),
        host: swarm.map(|s| HostStatus {
            id: s.host().id.clone(),
            upload_addr: s.host().upload_addr.clone(),
            seed: s.host().seed,
        }),
        schedulers: swarm
            .map(Swarm::schedulers)
            .unwrap_or_default()
            .into_iter()
            .map(|(url, attached, link)| SchedulerStatus {
                url,
                attached,
                error: link.error.filter(|_| !attached),
                clock_skew_ms: link.clock_skew_ms,
            })
            .collect(),
        downloaded,
        uploaded: state.metrics.upload_bytes.get(),
        tasks,
    })
    .into_response()
}
