//! The changelog's record format: every write of a store, as a Kafka record.
//!
//! A store's changelog partition holds, in commit order, each staged write of each RocksDB batch
//! plus the input positions that batch records. Replaying it into an empty store gives back the
//! same projections and positions, so a lost state directory is rebuilt without the inputs'
//! history. The record key is the column family's name, a `0x00`, then the store key (family
//! names contain no NUL); compaction keeps the last value per key. A delete is a tombstone (no
//! value); a present value may be empty (the `seen` markers).

use crate::encoding::Family;

/// One write of a store, as published to (and read back from) its changelog partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// Family name, `0x00`, store key.
    pub key: Vec<u8>,
    /// The new value; `None` deletes the key (a tombstone).
    pub value: Option<Vec<u8>>,
}

/// The bytes of the changelog key of a store key, without building it.
pub(crate) fn record_key_len(family: Family, key: &[u8]) -> usize {
    family.name().len() + 1 + key.len()
}

/// The changelog key of a store key.
pub(crate) fn record_key(family: Family, key: &[u8]) -> Vec<u8> {
    let name = family.name().as_bytes();
    let mut record_key = Vec::with_capacity(name.len() + 1 + key.len());
    record_key.extend_from_slice(name);
    record_key.push(0);
    record_key.extend_from_slice(key);
    record_key
}

/// Splits a changelog key into its family name and store key; `None` without the separator.
pub(crate) fn split_key(record_key: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = record_key.iter().position(|b| *b == 0)?;
    Some((&record_key[..at], &record_key[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_for_every_family() {
        for family in Family::ALL {
            let key = record_key(family, b"acme\0u1");
            let (name, store_key) = split_key(&key).expect("has a separator");
            assert_eq!(Family::from_name(std::str::from_utf8(name).expect("utf-8")), Some(family));
            assert_eq!(store_key, b"acme\0u1");
        }
        assert_eq!(split_key(b"no separator"), None);
    }
}
