//! What this host holds of its unfinished tasks, piece by piece, for the upload server and for
//! local readers waiting for a piece (complete tasks are known to the store itself).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::bitmap::Bitmap;
use crate::id::TaskId;

/// Pieces of unfinished tasks this host holds (complete tasks are known to the store). Local
/// readers [`subscribe`](Holdings::subscribe) to learn when a piece arrives.
pub struct Holdings {
    active: Mutex<HashMap<TaskId, Bitmap>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Holdings {
    fn default() -> Self {
        Holdings {
            active: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
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

    /// Whether `id` is downloading here.
    pub fn is_active(&self, id: &TaskId) -> bool {
        self.lock().contains_key(id)
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
