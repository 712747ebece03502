//! A host's view of a task: its length, digests, sources and the parents offered to it.

use shoal_p2p::Bitmap;
use shoal_p2p::proto::{Host, Parent, PieceDigest, TaskView};

use super::{MAX_PARENTS, State};
use crate::task::{Holder, MAX_STRIKES, same_place};

impl State {
    /// What `host` should know about the task now, and whether the view changes by itself later
    /// (a seed's piece offered to more hosts as [`SEED_EXCLUSIVE`] passes, a piece from another
    /// place once its chosen host gained nothing for that long).
    pub fn view(&self, task_id: &str, host: &Host) -> Option<(TaskView, bool)> {
        self.view_since(task_id, host, None)
    }

    /// [`State::view`], its digests only those not in `sent` (the ones a watch stream sent
    /// before; marked there now) when given: a view with `digests_delta`. It is whole when
    /// `sent` does not fit the task (the stream's first view, or the length became known) or
    /// names a digest the task no longer has.
    pub fn view_since(
        &self,
        task_id: &str,
        host: &Host,
        sent: Option<&mut Bitmap>,
    ) -> Option<(TaskView, bool)> {
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
                // (A source's arriving pieces are not offered: see below.)
                let useful = match offered {
                    Some(o) if source => bits.count_in_not_in(o, &mine),
                    Some(o) => {
                        bits.count_in_not_in(o, &mine) + h.arriving.count_in_not_in(o, &mine)
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
                    elsewhere: !same_place(&attached.host, host),
                }
            })
            .collect();
        let (digests, new_digests, digests_delta) = digests(&entry.digests, sent);
        let view = TaskView {
            length_known: entry.length.is_some(),
            content_length: entry.length.unwrap_or(0),
            digests,
            digests_delta,
            new_digests,
            parents,
            back_to_source: entry.fetcher.as_deref() == Some(host.id.as_str()) && !entry.authored(),
            failure: entry.recent_failure().cloned(),
            sources: entry.sources.clone(),
        };
        Some((view, offer.expiring))
    }
}

/// A view's digests: all of them, or (with `sent` fitting them) the ones not sent yet, which
/// are marked sent. `(digests, new digests, whether a delta)`.
fn digests(
    known: &[Option<Vec<u8>>],
    sent: Option<&mut Bitmap>,
) -> (Vec<Vec<u8>>, Vec<PieceDigest>, bool) {
    let whole = |known: &[Option<Vec<u8>>]| {
        known
            .iter()
            .map(|d| d.clone().unwrap_or_default())
            .collect()
    };
    let Some(sent) = sent else {
        return (whole(known), Vec::new(), false);
    };
    // (Before the length is known there are no digests: the view is whole, and so is the
    // first once it is known.)
    let fits = !known.is_empty()
        && sent.len() as usize == known.len()
        && (0u32..)
            .zip(known)
            .all(|(i, d)| d.is_some() || !sent.get(i));
    if !fits {
        *sent = known.iter().map(Option::is_some).collect();
        return (whole(known), Vec::new(), false);
    }
    let mut new = Vec::new();
    for (i, d) in (0u32..).zip(known) {
        if let Some(d) = d
            && !sent.get(i)
        {
            sent.set(i);
            new.push(PieceDigest {
                number: i,
                blake3: d.clone(),
            });
        }
    }
    (Vec::new(), new, true)
}
