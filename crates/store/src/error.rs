//! What can go wrong with a state store.

use std::path::PathBuf;

/// A state store operation failed; says where (path, family, key) and why.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's directory could not be created.
    #[error("cannot create state store directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stale store could not be deleted before its full restore.
    #[error("cannot delete the stale state store at {}: {source}; delete the directory by hand", path.display())]
    Destroy {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// RocksDB refused to open the store.
    #[error("cannot open state store at {}: {source}", path.display())]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// Why.
        source: rocksdb::Error,
    },
    /// A column family the store needs is not open (should not happen after `open`).
    #[error("state store at {} has no column family `{family}`", path.display())]
    MissingFamily {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
    },
    /// Reading a key failed.
    #[error("cannot read `{family}` key `{key}` in state store at {}: {source}", path.display())]
    Read {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// The key, escaped for display.
        key: String,
        /// Why.
        source: rocksdb::Error,
    },
    /// A stored value could not be decoded.
    #[error("corrupted value at `{family}` key `{key}` in state store at {}: {source}", path.display())]
    Decode {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// The key, escaped for display.
        key: String,
        /// What is wrong with the bytes.
        source: FormatError,
    },
    /// A value could not be encoded.
    #[error("cannot encode value for `{family}` key `{key}` in state store at {}: {source}", path.display())]
    Encode {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// The key, escaped for display.
        key: String,
        /// Why.
        source: FormatError,
    },
    /// The stored data contradicts itself (e.g. a remembered event id without its sequence entry).
    #[error("inconsistent state store at {} (`{family}` key `{key}`): {problem}", path.display())]
    Inconsistent {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// The key, escaped for display.
        key: String,
        /// What does not add up.
        problem: String,
    },
    /// The atomic write of a commit failed; the staged writes are kept.
    #[error(
        "cannot commit {writes} staged writes and {positions} input positions to state store at {}: {source}",
        path.display()
    )]
    Commit {
        /// The store's directory.
        path: PathBuf,
        /// How many staged writes the batch held.
        writes: usize,
        /// How many input positions the batch held.
        positions: usize,
        /// Why.
        source: rocksdb::Error,
    },
    /// A write would make a changelog record larger than the changelog can take: nothing of its
    /// decision is staged.
    #[error(
        "the `{family}` value for key `{key}` would make a changelog record of {bytes} bytes, above the {limit} \
         bytes the changelog takes (the smaller of the producer's message.max.bytes and the changelog topic's \
         max.message.bytes, less framing)"
    )]
    TooLarge {
        /// The column family.
        family: &'static str,
        /// The key, escaped for display.
        key: String,
        /// The changelog record's key and value bytes.
        bytes: usize,
        /// The most the changelog takes.
        limit: usize,
    },
    /// Writing a batch of restored changelog records failed.
    #[error("cannot write restored changelog records into state store at {}: {source}", path.display())]
    RestoreBatch {
        /// The store's directory.
        path: PathBuf,
        /// Why.
        source: rocksdb::Error,
    },
    /// Flushing restored records to disk failed.
    #[error("cannot flush state store at {} to disk: {source}", path.display())]
    Flush {
        /// The store's directory.
        path: PathBuf,
        /// Why.
        source: rocksdb::Error,
    },
    /// A changelog record names a column family this store does not have.
    #[error("changelog record for unknown column family `{family}` (key `{key}`) in state store at {}", path.display())]
    UnknownFamily {
        /// The store's directory.
        path: PathBuf,
        /// The family named by the record.
        family: String,
        /// The key, escaped for display.
        key: String,
    },
    /// Iterating over a column family failed.
    #[error("cannot iterate `{family}` in state store at {}: {source}", path.display())]
    Iterate {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// Why.
        source: rocksdb::Error,
    },
    /// Reading a RocksDB property (a size, for the metrics) failed.
    #[error("cannot read `{property}` of `{family}` in state store at {}: {source}", path.display())]
    Property {
        /// The store's directory.
        path: PathBuf,
        /// The column family.
        family: &'static str,
        /// The property.
        property: &'static str,
        /// Why.
        source: rocksdb::Error,
    },
}

/// Why bytes are not a valid value; opaque so the value format can change.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FormatError(pub(crate) serde_json::Error);
