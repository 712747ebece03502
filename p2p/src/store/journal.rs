//! A task's piece journal: one fixed-size record per stored piece, appended while the task is
//! unfinished, and the digest encoding redb shares with it.

use std::fs::File;
use std::io;

use crate::digest::{Algorithm, Digest};

/// Length of one encoded digest: the algorithm's byte, then its 32 bytes.
const DIGEST_LEN: usize = 33;
/// Length of one record: piece number (u32 LE) and encoded digest.
const RECORD_LEN: usize = 4 + DIGEST_LEN;

/// Appends "piece `n` is stored, with digest `d`" to a task's journal. The journal is never
/// fsynced: a process crash keeps it (page cache), and after a power loss every record is checked
/// against the bytes before the task resumes, so a record can only ever save work, never lie.
pub fn append_record(journal: &mut File, n: u32, d: &Digest) -> io::Result<()> {
    let mut rec = [0u8; RECORD_LEN];
    rec[..4].copy_from_slice(&n.to_le_bytes());
    rec[4..].copy_from_slice(&encode_digest(d));
    io::Write::write_all(journal, &rec)
}

/// The records of a journal's bytes; a torn last record and unknown algorithms are skipped.
pub(crate) fn records(journal: &[u8]) -> impl Iterator<Item = (u32, Digest)> + '_ {
    journal.chunks_exact(RECORD_LEN).filter_map(|rec| {
        let n = u32::from_le_bytes(rec[..4].try_into().ok()?);
        Some((n, decode_digest(&rec[4..])?))
    })
}

pub(crate) fn encode_digest(d: &Digest) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    out[0] = match d.algorithm() {
        Algorithm::Sha256 => 1,
        Algorithm::Blake3 => 2,
    };
    out[1..].copy_from_slice(d.bytes());
    out
}

pub(crate) fn decode_digest(bytes: &[u8]) -> Option<Digest> {
    let algo = match bytes.first()? {
        1 => Algorithm::Sha256,
        2 => Algorithm::Blake3,
        _ => return None,
    };
    Some(Digest::new(
        algo,
        bytes.get(1..DIGEST_LEN)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut f = File::create(&path).unwrap();
        let a = Digest::piece(b"a");
        let b = Digest::of(Algorithm::Sha256, b"b");
        append_record(&mut f, 0, &a).unwrap();
        append_record(&mut f, 7, &b).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(records(&bytes).collect::<Vec<_>>(), vec![(0, a), (7, b)]);
    }
}
