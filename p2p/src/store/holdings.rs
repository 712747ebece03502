//! What this host holds of its unfinished tasks, piece by piece, for the upload server and for
//! local readers waiting for a piece (complete tasks are known to the store itself); and which
//! tasks are being read, which the disk's garbage collection leaves alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bitmap::Bitmap;
use crate::id::TaskId;
use crate::relay::Relays;

/// Pieces of unfinished tasks this host holds (complete tasks are known to the store). Local
/// readers [`subscribe`](Holdings::subscribe) to learn when a piece arrives.
pub struct Holdings {
    active: Mutex<HashMap<TaskId, Bitmap>>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Readers (local readers, uploads) per task being read.
    readers: Mutex<HashMap<TaskId, usize>>,
    /// Pieces arriving from peers, which the upload server passes on as they come.
    relays: Arc<Relays>,
}

impl Default for Holdings {
    fn default() -> Self {
        Holdings {
            active: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
            readers: Mutex::default(),
            relays: Arc::default(),
        }
    }
}

impl Holdings {
    /// Offers the stored pieces `have` of `id` until the guard is dropped (the download ended).
    pub fn hold(&self, id: &TaskId, have: Bitmap) -> HoldingGuard<'_> {
        self.lock().insert(id.clone(), have);
        self.bump();
        HoldingGuard {
            holdings: self,
            id: id.clone(),
        }
    }

    pub fn add(&self, id: &TaskId, n: u32) {
        if let Some(b) = self.lock().get_mut(id) {
            b.set(n);
        }
        self.bump();
    }

    /// Whether piece `n` of the unfinished task `id` is stored here.
    pub fn has(&self, id: &TaskId, n: u32) -> bool {
        self.lock().get(id).is_some_and(|b| b.get(n))
    }

    /// The pieces arriving here from peers (see [`crate::relay`]).
    pub fn relays(&self) -> &Arc<Relays> {
        &self.relays
    }

    /// Whether `id` is downloading here.
    pub fn is_active(&self, id: &TaskId) -> bool {
        self.lock().contains_key(id)
    }

    /// Marks `id` as being read until the guard is dropped.
    pub fn reading(self: &Arc<Self>, id: &TaskId) -> ReadGuard {
        *self.readers().entry(id.clone()).or_default() += 1;
        ReadGuard {
            holdings: self.clone(),
            id: id.clone(),
        }
    }

    /// Whether `id` is downloading or being read here: not to be removed.
    pub fn in_use(&self, id: &TaskId) -> bool {
        self.is_active(id) || self.readers().contains_key(id)
    }

    fn readers(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, usize>> {
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes on every start, stored piece and stop (of any task).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Bitmap>> {
        self.active.lock().expect("holdings lock")
    }
}

/// Stops offering a download's pieces as unfinished when dropped.
pub struct HoldingGuard<'a> {
    holdings: &'a Holdings,
    id: TaskId,
}

impl Drop for HoldingGuard<'_> {
    fn drop(&mut self) {
        self.holdings.lock().remove(&self.id);
        self.holdings.bump();
    }
}

/// A task being read (see [`Holdings::reading`]).
pub struct ReadGuard {
    holdings: Arc<Holdings>,
    id: TaskId,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut readers = self.holdings.readers();
        if let Some(n) = readers.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.id);
            }
        }
    }
}
