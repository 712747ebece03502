//! `shoal get`: download one URL through the swarm, like wget or dfget.
//!
//! When a daemon answers on the data directory's socket, the download is the daemon's: it fetches,
//! verifies and links or copies the result to the output path, and this process only shows
//! progress. Otherwise the download runs here, against the same data directory, so it is cached
//! and resumable all the same.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use shoal_p2p::api::{Event, Failure, FailureKind, GetRequest, LocalClient};
use shoal_p2p::{AsyncStore, BySource, Downloader, Error, Metrics, Origin, OriginConfig, Progress};

use crate::summary::Summary;

/// Where the content goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct GetOptions {
    /// The download; its `output` is filled in from [`GetOptions::output`].
    pub request: GetRequest,
    pub output: Output,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// Show a progress bar (when standard error is a terminal).
    pub progress: bool,
    /// What `shoal get` says when it is done.
    pub report: Report,
    pub origin: OriginConfig,
}

/// What `shoal get` says when the download is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Nothing,
    /// One line on standard error, as wget's: size, time, rate, bytes by source.
    Line,
    /// The same as a JSON object on standard output.
    Json,
}

/// What a successful get did.
#[derive(Clone, Debug)]
pub struct Got {
    pub task: String,
    pub content_length: u64,
    pub from_cache: bool,
    pub via_daemon: bool,
    /// The content's bytes by where they came from.
    pub by_source: BySource,
}

/// Runs a get; a failure comes back as the [`Failure`] to report.
pub async fn get(mut opts: GetOptions) -> Result<Got, Failure> {
    opts.request.output = match &opts.output {
        Output::Stdout => None,
        Output::File(p) => Some(
            std::path::absolute(p).map_err(|e| local(Error::io("resolve output path", p, e)))?,
        ),
    };
    let bar = progress_bar(opts.progress);
    let result = if LocalClient::is_running(&opts.socket).await {
        via_daemon(&opts, &bar).await
    } else {
        standalone(&opts, &bar).await
    };
    bar.finish_and_clear();
    let (got, path) = result?;
    if opts.output == Output::Stdout {
        let mut stdout = std::io::stdout().lock();
        crate::output::copy_to(&path, &mut stdout).map_err(local)?;
    }
    Ok(got)
}

async fn via_daemon(opts: &GetOptions, bar: &ProgressBar) -> Result<(Got, PathBuf), Failure> {
    let client = LocalClient::new(&opts.socket);
    let last = client
        .get(&opts.request, |e| {
            if let Event::Progress { done, total } = e {
                bar.set_length(*total);
                bar.set_position(*done);
            }
        })
        .await
        .map_err(|e| Failure {
            message: e.to_string(),
            kind: FailureKind::Local,
        })?;
    match last {
        Event::Done {
            task,
            path,
            content_length,
            from_cache,
            by_source,
        } => Ok((
            Got {
                task,
                content_length,
                from_cache,
                via_daemon: true,
                by_source,
            },
            path,
        )),
        Event::Failed(f) => Err(f),
        Event::Progress { .. } => Err(Failure {
            message: "the daemon sent no result".into(),
            kind: FailureKind::Local,
        }),
    }
}

async fn standalone(opts: &GetOptions, bar: &ProgressBar) -> Result<(Got, PathBuf), Failure> {
    let download = opts.request.to_download().map_err(|e| Failure::from(&e))?;
    let store = AsyncStore::open(&opts.data_dir).map_err(local)?;
    let origin = Origin::new(opts.origin.clone()).map_err(local)?;
    let downloader = Downloader::new(store, origin, Metrics::default());
    let progress = Progress::default();
    let work = downloader.download(&download, &progress);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let done = loop {
        tokio::select! {
            r = &mut work => break r.map_err(|e| Failure::from(&e))?,
            _ = tick.tick() => {
                let (done, total) = progress.get();
                bar.set_length(total);
                bar.set_position(done);
            }
        }
    };
    if let Some(out) = &opts.request.output {
        crate::output::link_or_copy(&done.path, out).map_err(local)?;
    }
    let got = Got {
        task: done.task.to_string(),
        content_length: done.meta.layout.content_length,
        from_cache: done.from_cache,
        via_daemon: false,
        by_source: progress.by_source(),
    };
    Ok((got, done.path))
}

fn local(e: Error) -> Failure {
    Failure::from(&e)
}

fn progress_bar(wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static progress template is valid"),
    );
    bar
}

/// Runs a get as the `shoal get` command: a failure is told on standard error, and the process
/// exit code comes back.
pub async fn run(opts: GetOptions) -> u8 {
    let started = std::time::Instant::now();
    let (report, output) = (opts.report, opts.output.clone());
    match get(opts).await {
        Ok(got) => {
            let summary = Summary {
                bytes: got.content_length,
                elapsed: started.elapsed(),
                by_source: Some(got.by_source),
            };
            match report {
                Report::Nothing => {}
                Report::Line => {
                    let to = match &output {
                        Output::Stdout => "standard output".into(),
                        Output::File(p) => format!("'{}'", p.display()),
                    };
                    eprintln!("shoal get: {to}: {summary}");
                }
                Report::Json => {
                    let mut v = summary.json();
                    v["task"] = got.task.into();
                    println!("{v}");
                }
            }
            0
        }
        Err(failure) => {
            eprintln!("shoal get: {}", failure.message);
            exit_code(failure.kind)
        }
    }
}

/// The process exit code for a failure (documented in the README).
pub fn exit_code(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Local => 1,
        FailureKind::Request => 2,
        FailureKind::Origin => 4,
        FailureKind::OriginStatus(_) => 8,
        FailureKind::DigestMismatch => 10,
    }
}
