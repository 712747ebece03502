//! The seed role as the node sees it: a [`JobHandler`] takes the seed jobs a scheduler sends
//! (fetch this task from the origin for the swarm). `shoal-seed` implements it; a node built
//! with one attaches to its schedulers as a seed.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::download::Downloader;
use crate::proto::Job;

/// What a seed does with the jobs its schedulers send.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job to its end with this host's `downloader`. The node runs each job on a task
    /// of its own and lets it finish at shutdown within its grace period.
    fn run(&self, downloader: Arc<Downloader>, job: Job) -> BoxFuture<'static, ()>;
}
