//! Pieces a reader waits for: a lazily mounted layer's file read needs a few pieces now, while
//! the rest of the layer comes in the background. [`Reading::present`] marks the pieces it
//! waits for; the piece loop asks for marked pieces before any other (and past its usual
//! limits, so a read never queues behind the background), until they are stored.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::reader::Reading;
use crate::error::{Error, Result};
use crate::id::TaskId;

/// The pieces readers wait for, by task; a change is told on `changed` (a generation count).
pub(crate) struct Urgent {
    /// How many readers wait for each piece.
    wanted: Mutex<HashMap<TaskId, BTreeMap<u32, usize>>>,
    changed: watch::Sender<u64>,
}

impl Default for Urgent {
    fn default() -> Self {
        Urgent {
            wanted: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Urgent {
    /// Marks `pieces` of `task` wanted until the guard is dropped.
    fn want(self: &Arc<Self>, task: &TaskId, pieces: Range<u32>) -> Want {
        {
            let mut wanted = self.lock();
            let counts = wanted.entry(task.clone()).or_default();
            for n in pieces.clone() {
                *counts.entry(n).or_default() += 1;
            }
        }
        self.changed.send_modify(|g| *g += 1);
        Want {
            urgent: self.clone(),
            task: task.clone(),
            pieces,
        }
    }

    /// The pieces of `task` some reader waits for, in order.
    pub(crate) fn pieces(&self, task: &TaskId) -> Vec<u32> {
        self.lock()
            .get(task)
            .map(|c| c.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Changes whenever a reader starts waiting.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, BTreeMap<u32, usize>>> {
        self.wanted.lock().expect("urgent pieces lock")
    }
}

/// Pieces marked wanted; unmarked when dropped.
struct Want {
    urgent: Arc<Urgent>,
    task: TaskId,
    pieces: Range<u32>,
}

impl Drop for Want {
    fn drop(&mut self) {
        let mut wanted = self.urgent.lock();
        let Some(counts) = wanted.get_mut(&self.task) else {
            return;
        };
        for n in self.pieces.clone() {
            if let Some(c) = counts.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(&n);
                }
            }
        }
        if counts.is_empty() {
            wanted.remove(&self.task);
        }
        drop(wanted);
        // A reader that stops waiting lets the background go on at once.
        self.urgent.changed.send_modify(|g| *g += 1);
    }
}

impl Reading {
    /// Waits until the bytes of `range` (within the content) are stored and verified in the
    /// task file ([`crate::AsyncStore::data_path`]), asking for their pieces before any other.
    /// Unlike [`Reading::stream`], the content's last piece does not wait for the whole
    /// content's check: each piece is checked against its own digest before it is stored.
    pub async fn present(&mut self, range: Range<u64>) -> Result<(), Arc<Error>> {
        let len = self.layout.content_length;
        if range.start >= range.end || self.complete {
            return Ok(());
        }
        if range.end > len {
            return Err(Arc::new(Error::InvalidRequest(format!(
                "bytes {}-{} are past the content's {len}",
                range.start,
                range.end - 1
            ))));
        }
        let pieces = self.layout.pieces_covering(range);
        let holdings = self.downloader.holdings().clone();
        let mut changes = holdings.subscribe();
        let _want = self.downloader.urgent.want(&self.task, pieces.clone());
        loop {
            let finished = self.done.borrow_and_update().clone();
            match finished {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(e),
                None if pieces.clone().all(|n| holdings.has(&self.task, n)) => return Ok(()),
                None => {}
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = self.done.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_pieces_are_counted_per_reader_and_forgotten_when_all_are_done() {
        let urgent = Arc::new(Urgent::default());
        let task: TaskId = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let mut changed = urgent.subscribe();
        let a = urgent.want(&task, 2..4);
        let b = urgent.want(&task, 3..5);
        assert!(changed.has_changed().unwrap());
        changed.mark_unchanged();
        assert_eq!(urgent.pieces(&task), vec![2, 3, 4]);
        drop(a);
        assert_eq!(urgent.pieces(&task), vec![3, 4]);
        drop(b);
        assert!(urgent.pieces(&task).is_empty());
        assert!(urgent.lock().is_empty());
    }
}
