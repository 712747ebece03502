//! A host's view of a task: its length, digests, sources and the parents offered to it.

use shoal_p2p::Bitmap;
use shoal_p2p::proto::{Host, Parent, TaskView};

use super::{MAX_PARENTS, State};
use crate::task::{Holder, MAX_STRIKES, same_place};

impl State {
    /// What `host` should know about the task now, and whether the view changes by itself later
    /// (a seed's piece offered to every host once [`SEED_EXCLUSIVE`] is over).
    pub fn view(&self, task_id: &str, host: &Host) -> Option<(TaskView, bool)> {
        let entry = self.tasks.get(task_id)?;
        let me = entry.holders.get(&host.id);
        let n = entry.piece_count();
        let mine = me
            .map(|h| Bitmap::from_bytes(h.bitmap.as_bytes(), n))
            .unwrap_or_else(|| Bitmap::new(n));
        // Which attached holders may be offered to `host` (attachment is checked by the one
        // lookup each pass makes per holder).
        let usable = |id: &String, h: &Holder| {
            *id != host.id && h.strikes < MAX_STRIKES && me.is_none_or(|m| !m.avoid.contains(id))
        };
        let offer = entry.seed_offer(host, &self.hosts, |id, h| usable(id, h));
        let mut parents: Vec<_> = entry
            .holders
            .iter()
            .filter(|(id, h)| usable(id, h))
            .filter_map(|(id, h)| {
                let attached = self.hosts.get(id)?;
                let source = entry.is_source(id, attached);
                // A host elsewhere offers only what is new to this host's place (its turn).
                let offered = match source {
                    true => Some(&offer.pieces),
                    false => (!same_place(&attached.host, host)).then_some(&offer.fresh),
                };
                // Counted word by word, without a copy (most holders are not chosen) when the
                // holder's bitmap has the task's length, as it has once the length is known.
                let fitted;
                let bits = if h.bitmap.len() == n {
                    &h.bitmap
                } else {
                    fitted = Bitmap::from_bytes(h.bitmap.as_bytes(), n);
                    &fitted
                };
                let useful = match offered {
                    Some(o) => {
                        bits.count_in_not_in(o, &mine)
                            + (!source)
                                .then(|| h.arriving.count_in_not_in(o, &mine))
                                .unwrap_or(0)
                    }
                    None => bits.count_not_in(&mine) + h.arriving.count_not_in(&mine),
                };
                if useful == 0 {
                    return None;
                }
                let shared = attached
                    .host
                    .labels
                    .iter()
                    .filter(|(k, v)| host.labels.get(*k) == Some(v))
                    .count() as i64;
                // Locality first, then the peers with more to give; seeds last among equals so
                // their upload is kept for pieces only they hold.
                let score =
                    shared * 1_000_000 + i64::from(useful) * 2 - i64::from(attached.host.seed);
                Some((score, id, h, attached, source, offered))
            })
            .collect();
        let order = |a: &(i64, &String, _, _, _, _), b: &(i64, &String, _, _, _, _)| {
            b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        if parents.len() > MAX_PARENTS {
            parents.select_nth_unstable_by(MAX_PARENTS - 1, order);
            parents.truncate(MAX_PARENTS);
        }
        parents.sort_by(order);
        let parents: Vec<Parent> = parents
            .into_iter()
            .map(|(_, id, h, attached, source, offered)| {
                let mut bitmap = Bitmap::from_bytes(h.bitmap.as_bytes(), n);
                let mut arriving = Bitmap::from_bytes(h.arriving.as_bytes(), n);
                if let Some(o) = offered {
                    bitmap.intersect(o);
                    arriving.intersect(o);
                }
                // A source's arriving pieces come from the origin, their digests not known yet.
                let arriving = match source {
                    true => Vec::new(),
                    false => arriving.as_bytes().to_vec(),
                };
                Parent {
                    host_id: id.clone(),
                    upload_addr: attached.host.upload_addr.clone(),
                    bitmap: bitmap.as_bytes().to_vec(),
                    seed: attached.host.seed,
                    arriving,
                }
            })
            .collect();
        let view = TaskView {
            length_known: entry.length.is_some(),
            content_length: entry.length.unwrap_or(0),
            digests: entry
                .digests
                .iter()
                .map(|d| d.clone().unwrap_or_default())
                .collect(),
            parents,
            back_to_source: entry.fetcher.as_deref() == Some(host.id.as_str()) && !entry.authored(),
            failure: entry.recent_failure().cloned(),
            sources: entry.sources.clone(),
        };
        Some((view, offer.expiring))
    }
}
