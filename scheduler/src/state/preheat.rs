//! What a preheat asks of the state: a task made present on chosen hosts, and how far it got.

use shoal_p2p::proto::{Job, Task};

use super::State;
use crate::task::TaskEntry;

/// Where a preheated task stands on the hosts it was meant for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// The hosts (of those asked about) that hold all of it.
    pub whole: Vec<String>,
    /// Why nobody can fetch it from the origin, when the origin refused the fetcher (a 401,
    /// 403, 404: the preheat's credentials, or content that is not there).
    pub refused: Option<String>,
    /// The hosts (of those asked about) whose origin fetch of it failed lately.
    pub failed: Vec<String>,
}

impl State {
    /// The jobs that make `task` present on `targets` (host ids): the seed that fetches it from
    /// the origin when nobody live holds it (planned as for any downloader), and each target that
    /// holds less than all of it and has no job from this call yet. The task is taken with the
    /// preheat's request when the scheduler knows it without credentials.
    pub fn preheat(&mut self, task: Task, targets: &[String]) -> Vec<(String, Job)> {
        let id = task.id.clone();
        let entry = self
            .tasks
            .entry(id.clone())
            .or_insert_with(|| TaskEntry::new(task.clone()));
        if entry.task.url.is_empty() || (entry.task.headers.is_empty() && !task.headers.is_empty())
        {
            entry.task = task;
        }
        entry.last_active = std::time::Instant::now();
        let mut jobs: Vec<(String, Job)> = self.plan(&id, None).seed_job.into_iter().collect();
        let entry = &self.tasks[&id];
        for host in targets {
            let planned = jobs.iter().any(|(h, _)| h == host);
            if !planned && self.hosts.contains_key(host) && !holds_whole(entry, host) {
                let job = Job {
                    task: Some(entry.task.clone()),
                };
                jobs.push((host.clone(), job));
            }
        }
        jobs
    }

    /// Where `task_id` stands on `hosts` (`None`: the scheduler does not know the task).
    pub fn presence(&self, task_id: &str, hosts: &[String]) -> Option<Presence> {
        let entry = self.tasks.get(task_id)?;
        Some(Presence {
            whole: hosts
                .iter()
                .filter(|h| holds_whole(entry, h))
                .cloned()
                .collect(),
            refused: entry.recent_failure().map(|f| match f.http_status {
                0 => f.message.clone(),
                status => format!("the origin answered {status}: {}", f.message),
            }),
            failed: hosts
                .iter()
                .filter(|h| entry.failed_recently(h))
                .cloned()
                .collect(),
        })
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
