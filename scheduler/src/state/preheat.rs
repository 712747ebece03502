//! What a preheat asks of the state: a task made present on chosen hosts, and how far it got.

use std::time::Instant;

use shoal_p2p::proto::{Job, Task};

use super::State;
use crate::task::{TaskEntry, rendezvous};

/// Where a preheated task stands on the hosts it was meant for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// The hosts (of those asked about) that hold all of it.
    pub whole: Vec<String>,
    /// Why nobody can fetch it from the origin, when the origin refused the fetcher since the
    /// preheat began (a 401, 403, 404: the preheat's credentials, or content that is not there).
    pub refused: Option<String>,
    /// The hosts (of those asked about) whose origin fetch of it failed since the preheat began.
    pub failed: Vec<String>,
}

impl State {
    /// The jobs that make `task` present on `targets` (host ids): the seed that fetches it from
    /// the origin when nobody live holds it (planned as for any downloader), and each target that
    /// holds less than all of it and has no job from this call yet. The task is taken with the
    /// preheat's request (its credentials are the ones given now; an older request's may have
    /// expired). A host that is not a seed gets its job without the credentials: it takes the
    /// task from the swarm.
    pub fn preheat(&mut self, task: Task, targets: &[String]) -> Vec<(String, Job)> {
        let id = task.id.clone();
        let entry = self
            .tasks
            .entry(id.clone())
            .or_insert_with(|| TaskEntry::new(task.clone()));
        if entry.task.url.is_empty() || !task.headers.is_empty() {
            entry.task = task.clone();
        }
        entry.last_active = Instant::now();
        let mut jobs: Vec<(String, Job)> = self.plan(&id, None).seed_job.into_iter().collect();
        let entry = &self.tasks[&id];
        for host in targets {
            let planned = jobs.iter().any(|(h, _)| h == host);
            let Some(attached) = self.hosts.get(host) else {
                continue;
            };
            if !planned && !holds_whole(entry, host) {
                let task = match attached.host.seed {
                    true => task.clone(),
                    false => Task {
                        headers: Vec::new(),
                        ..task.clone()
                    },
                };
                jobs.push((host.clone(), Job { task: Some(task) }));
            }
        }
        jobs
    }

    /// Where `task_id` stands on `hosts` (`None`: the scheduler does not know the task), with
    /// the origin's refusals and fetch failures since `since`.
    pub fn presence(&self, task_id: &str, hosts: &[String], since: Instant) -> Option<Presence> {
        let entry = self.tasks.get(task_id)?;
        Some(Presence {
            whole: hosts
                .iter()
                .filter(|h| holds_whole(entry, h))
                .cloned()
                .collect(),
            refused: entry
                .failure
                .as_ref()
                .filter(|(_, at)| *at >= since)
                .and(entry.recent_failure())
                .map(|f| match f.http_status {
                    0 => f.message.clone(),
                    status => format!("the origin answered {status}: {}", f.message),
                }),
            failed: hosts
                .iter()
                .filter(|h| entry.failed_fetchers.get(*h).is_some_and(|at| *at >= since))
                .cloned()
                .collect(),
        })
    }

    /// Whether any live host holds all of `task_id`.
    pub fn held_whole(&self, task_id: &str) -> bool {
        self.tasks.get(task_id).is_some_and(|e| {
            e.holders
                .keys()
                .any(|h| self.hosts.contains_key(h) && holds_whole(e, h))
        })
    }

    /// The seed a preheat to one seed puts `task_id` on: the one whose fetch did not fail
    /// since `since` that the task's rendezvous ranks first (the seed the scheduler plans
    /// for it).
    pub fn preheat_seed(&self, task_id: &str, since: Instant) -> Option<String> {
        let failed = |id: &str| {
            self.tasks
                .get(task_id)
                .and_then(|e| e.failed_fetchers.get(id))
                .is_some_and(|at| *at >= since)
        };
        self.hosts
            .values()
            .filter(|a| a.host.seed && !failed(&a.host.id))
            .max_by_key(|a| rendezvous(task_id, &a.host.id))
            .map(|a| a.host.id.clone())
    }
}

/// Whether `host` holds every piece of the task (its length known).
fn holds_whole(entry: &TaskEntry, host: &str) -> bool {
    let n = entry.piece_count();
    entry.length.is_some()
        && entry
            .holders
            .get(host)
            .is_some_and(|h| (0..n).all(|p| h.bitmap.get(p)))
}
