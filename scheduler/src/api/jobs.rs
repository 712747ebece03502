//! Preheat jobs as the API keeps them: what was asked, how far each blob got, how it ended.
//! Kept in an embedded store (`jobs.redb` in the API's directory) so that Harbor's polling and
//! `shoal preheat --list` see a job across a scheduler restart. A job's registry credentials
//! are never part of it: they live in the running job's memory only, so a job a restart
//! interrupted ends as a failure that says so.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// Jobs listed at most (the newest).
pub const MAX_LISTED: usize = 200;

/// Where a job stands (Dragonfly's group job states; Harbor maps them).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Running,
    Success,
    Failure,
}

impl JobState {
    pub fn done(self) -> bool {
        matches!(self, JobState::Success | JobState::Failure)
    }
}

/// Which hosts a preheat puts the image on.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The one seed the scheduler chooses for each blob (Dragonfly's default).
    SingleSeedPeer,
    /// Every seed.
    AllSeedPeers,
    /// Every seed and every other host.
    AllPeers,
    /// This many hosts besides the seeds (the same hosts for every blob of the image).
    Count(u32),
    /// This percentage of the hosts besides the seeds.
    Percentage(u8),
}

impl Scope {
    /// Dragonfly's `scope` (empty: its default) with its `count` / `percentage` (count first).
    pub fn parse(scope: &str, count: Option<u32>, percentage: Option<u8>) -> Result<Scope, String> {
        match (scope, count, percentage) {
            (_, Some(n), _) if (1..=100_000).contains(&n) => Ok(Scope::Count(n)),
            (_, None, Some(p)) if (1..=100).contains(&p) => Ok(Scope::Percentage(p)),
            (_, Some(_), _) => Err("count is 1 to 100000".into()),
            (_, None, Some(_)) => Err("percentage is 1 to 100".into()),
            ("" | "single_seed_peer", None, None) => Ok(Scope::SingleSeedPeer),
            ("all_seed_peers", None, None) => Ok(Scope::AllSeedPeers),
            ("all_peers", None, None) => Ok(Scope::AllPeers),
            (other, None, None) => Err(format!(
                "scope {other:?} is none of single_seed_peer, all_seed_peers, all_peers"
            )),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::SingleSeedPeer => f.write_str("single_seed_peer"),
            Scope::AllSeedPeers => f.write_str("all_seed_peers"),
            Scope::AllPeers => f.write_str("all_peers"),
            Scope::Count(n) => write!(f, "{n} peers"),
            Scope::Percentage(p) => write!(f, "{p}% of peers"),
        }
    }
}

/// A host a blob was meant for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostResult {
    pub host: String,
    /// The host's upload address (`ip:port`).
    pub addr: String,
    /// It holds all of the blob.
    pub held: bool,
    /// Why it does not, when that is known.
    pub error: String,
}

/// One blob of the image (a layer, a config, or a layer's gzip index).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobProgress {
    /// The blob's URL at the registry (no credentials).
    pub url: String,
    pub digest: String,
    pub size: u64,
    /// A layer's gzip index for lazy pulling, not the blob itself: its failure fails no job.
    #[serde(default)]
    pub index: bool,
    pub hosts: Vec<HostResult>,
    pub done: bool,
}

/// A preheat job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreheatJob {
    pub id: u64,
    /// Seconds since the epoch.
    pub created_at: u64,
    pub updated_at: u64,
    pub state: JobState,
    /// The manifest URL asked for (`https://registry/v2/<repo>/manifests/<ref>`).
    pub url: String,
    /// The digest the reference resolved to (empty until it is resolved).
    #[serde(default)]
    pub image_digest: String,
    pub scope: Scope,
    /// What asked: `dragonfly`, `dragonfly-legacy`, `kraken`, `webhook`, `cli`.
    pub via: String,
    pub blobs: Vec<BlobProgress>,
    /// Why it failed.
    pub error: String,
}

impl PreheatJob {
    pub fn new(id: u64, url: String, scope: Scope, via: &str) -> PreheatJob {
        let now = now();
        PreheatJob {
            id,
            created_at: now,
            updated_at: now,
            state: JobState::Pending,
            url,
            image_digest: String::new(),
            scope,
            via: via.to_owned(),
            blobs: Vec::new(),
            error: String::new(),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The job store.
pub struct Jobs {
    db: redb::Database,
}

impl Jobs {
    /// Opens (or makes) the store in `dir`. Jobs a stop interrupted end as failures: their
    /// credentials went with the process.
    pub fn open(dir: &Path) -> std::io::Result<Jobs> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("jobs.redb")).map_err(db)?;
        let jobs = Jobs { db };
        for mut job in jobs.list(usize::MAX)? {
            if !job.state.done() {
                job.state = JobState::Failure;
                job.error = "the scheduler stopped while the job ran (its registry credentials \
                             are kept in memory only): run the preheat again"
                    .into();
                job.updated_at = now();
                jobs.put(&job)?;
            }
        }
        Ok(jobs)
    }

    /// Makes and keeps a new job (its id the next one).
    pub fn create(&self, url: String, scope: Scope, via: &str) -> std::io::Result<PreheatJob> {
        let txn = self.db.begin_write().map_err(db)?;
        let job = {
            let mut table = txn.open_table(JOBS).map_err(db)?;
            let id = table.last().map_err(db)?.map_or(1, |(k, _)| k.value() + 1);
            let job = PreheatJob::new(id, url, scope, via);
            let bytes = serde_json::to_vec(&job).map_err(std::io::Error::other)?;
            table.insert(id, bytes.as_slice()).map_err(db)?;
            job
        };
        txn.commit().map_err(db)?;
        Ok(job)
    }

    pub fn put(&self, job: &PreheatJob) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(job).map_err(std::io::Error::other)?;
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut table = txn.open_table(JOBS).map_err(db)?;
            table.insert(job.id, bytes.as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    pub fn get(&self, id: u64) -> std::io::Result<Option<PreheatJob>> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = match txn.open_table(JOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        let Some(v) = table.get(id).map_err(db)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(std::io::Error::other)
    }

    /// The newest `limit` jobs, newest first.
    pub fn list(&self, limit: usize) -> std::io::Result<Vec<PreheatJob>> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = match txn.open_table(JOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)?.rev().take(limit) {
            let (_, v) = entry.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(std::io::Error::other)?);
        }
        Ok(out)
    }
}

fn db(e: impl Into<redb::Error>) -> std::io::Error {
    std::io::Error::other(e.into().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_survive_a_restart_and_a_running_one_ends_as_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path()).unwrap();
        let mut done = jobs
            .create("https://r/v2/a/manifests/v1".into(), Scope::AllPeers, "cli")
            .unwrap();
        assert_eq!(done.id, 1);
        done.state = JobState::Success;
        jobs.put(&done).unwrap();
        let mut running = jobs
            .create(
                "https://r/v2/b/manifests/v1".into(),
                Scope::Count(3),
                "dragonfly",
            )
            .unwrap();
        assert_eq!(running.id, 2);
        running.state = JobState::Running;
        jobs.put(&running).unwrap();
        drop(jobs);
        let jobs = Jobs::open(dir.path()).unwrap();
        assert_eq!(jobs.get(1).unwrap().unwrap(), done);
        let after = jobs.get(2).unwrap().unwrap();
        assert_eq!(after.state, JobState::Failure);
        assert!(
            after.error.contains("run the preheat again"),
            "{}",
            after.error
        );
        assert_eq!(
            jobs.create(String::new(), Scope::AllPeers, "cli")
                .unwrap()
                .id,
            3
        );
        let listed: Vec<u64> = jobs.list(10).unwrap().iter().map(|j| j.id).collect();
        assert_eq!(listed, [3, 2, 1]);
    }

    #[test]
    fn scopes_are_dragonflys() {
        assert_eq!(Scope::parse("", None, None), Ok(Scope::SingleSeedPeer));
        assert_eq!(Scope::parse("all_peers", None, None), Ok(Scope::AllPeers));
        assert_eq!(
            Scope::parse("all_peers", Some(3), Some(50)),
            Ok(Scope::Count(3))
        );
        assert_eq!(Scope::parse("", None, Some(50)), Ok(Scope::Percentage(50)));
        assert!(Scope::parse("everyone", None, None).is_err());
        assert!(Scope::parse("", None, Some(0)).is_err());
    }
}
