//! Where this host's recent tasks got their bytes (origin, peers, seeds, cache), piece by
//! piece as they are stored: the provenance the scheduler's console shows, during a pull too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{BySource, Source};

/// The tasks kept; the oldest goes first.
const KEPT: usize = 256;

/// Each recent task's bytes by source, summed over its downloads on this host.
#[derive(Debug, Default)]
pub struct Traffic {
    tasks: Mutex<HashMap<String, Entry>>,
    /// Counts changes, so that an unchanged record is not sent again.
    version: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    length: u64,
    by: BySource,
    /// When it last changed, in [`Traffic::version`]s.
    at: u64,
}

impl Traffic {
    /// Adds `n` bytes of task `task` (of `length` bytes) that came from `from`.
    pub(crate) fn add(&self, task: &str, length: u64, from: Source, n: u64) {
        let mut tasks = self.tasks.lock().expect("traffic lock");
        let at = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let e = tasks.entry(task.to_owned()).or_insert(Entry {
            length,
            by: BySource::default(),
            at,
        });
        e.length = length;
        e.at = at;
        let counter = match from {
            Source::Origin => &mut e.by.origin,
            Source::Peer => &mut e.by.peer,
            Source::Seed => &mut e.by.seed,
            Source::Cache => &mut e.by.cache,
        };
        *counter += n;
        if tasks.len() > KEPT
            && let Some(oldest) = tasks
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
        {
            tasks.remove(&oldest);
        }
    }

    /// `(task, content length, bytes by source)`, the newest first.
    pub fn recent(&self) -> Vec<(String, u64, BySource)> {
        let tasks = self.tasks.lock().expect("traffic lock");
        let mut all: Vec<_> = tasks.iter().collect();
        all.sort_by_key(|(_, e)| std::cmp::Reverse(e.at));
        all.into_iter()
            .map(|(k, e)| (k.clone(), e.length, e.by))
            .collect()
    }

    /// Changes so far: a record is unchanged while this is.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_of_a_task_add_up_and_the_oldest_task_goes_first() {
        let t = Traffic::default();
        let by = |origin, cache| BySource {
            origin,
            cache,
            ..BySource::default()
        };
        t.add("a", 10, Source::Origin, 10);
        t.add("a", 10, Source::Cache, 10);
        assert_eq!(t.recent(), vec![("a".to_owned(), 10, by(10, 10))]);
        for i in 0..KEPT {
            t.add(&format!("t{i}"), 1, Source::Origin, 1);
        }
        let recent = t.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].0, format!("t{}", KEPT - 1));
        assert!(recent.iter().all(|(k, ..)| k != "a"), "the oldest stays");
        assert_eq!(t.version(), KEPT as u64 + 2);
    }
}
