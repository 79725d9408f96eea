//! [`StateStore`]: one partition's projections in RocksDB, with a stage for the open batch.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crmflow_domain::state::DEFAULT_SEEN_CAPACITY;
use crmflow_domain::{Account, Integration, LedgerEntry, StateChange, StateView};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::changelog::{self, ChangelogRecord};
use crate::encoding::{self, display_key, Family, FAMILY_COUNT};
use crate::error::StoreError;

/// How far an input topic partition has been processed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InputPosition {
    /// The input topic.
    pub topic: String,
    /// The partition of that topic.
    pub partition: i32,
    /// The next offset to read, i.e. one past the last offset the state reflects.
    pub next_offset: i64,
}

/// How far a store reflects its changelog partition, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogPosition {
    /// The next changelog offset the store reflects.
    pub next: i64,
    /// When the changelog record before `next` was written (epoch ms), or earlier: every record
    /// from `next` on was written after it. Says whether the compaction of the changelog may
    /// since have dropped deletions that a tail restore from `next` would need.
    pub written_at: i64,
}

/// The largest changelog record (key and value bytes) a store writes by default: librdkafka's
/// default `message.max.bytes` (below Kafka's default `max.message.bytes`), less
/// [`CHANGELOG_RECORD_FRAMING`].
pub const DEFAULT_MAX_CHANGELOG_RECORD_BYTES: usize = 1_000_000 - CHANGELOG_RECORD_FRAMING;

/// Bytes set aside for a changelog record's framing in its batch (batch and record headers).
pub const CHANGELOG_RECORD_FRAMING: usize = 512;

/// How a [`StateStore`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// How many processed event ids of each company to remember (at least 1, like
    /// [`crmflow_domain::MemoryState`]).
    pub seen_capacity: usize,
    /// How many integrations to keep decoded in memory (0 disables the cache).
    pub cache_capacity: usize,
    /// The largest changelog record (key and value bytes) a write may make; a larger one is
    /// refused with [`StoreError::TooLarge`], as the changelog could never take it.
    pub max_changelog_record_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            seen_capacity: DEFAULT_SEEN_CAPACITY,
            cache_capacity: 1024,
            max_changelog_record_bytes: DEFAULT_MAX_CHANGELOG_RECORD_BYTES,
        }
    }
}

/// Column families that stores of earlier versions have and this one no longer uses:
/// `explanation_order` (the traces' order is now rebuilt from their sequence numbers).
const OBSOLETE_FAMILIES: [&str; 1] = ["explanation_order"];

/// Changelog records checked and ready to write ([`StateStore::prepare_restore`]).
#[derive(Default)]
pub struct RestoreBatch {
    batch: WriteBatch,
    // Integrations it rewrites: their cached copies go once it is written.
    integrations: Vec<Vec<u8>>,
    // Its `seen` writes in order (key, value): their `seen_order` entries are added when written.
    seen: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    // Its `ledger` writes in order (key, value): their `user_activities` entries likewise.
    ledger: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for RestoreBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreBatch").field("records", &self.batch.len()).finish_non_exhaustive()
    }
}

/// Staged writes of one family: key → new value, `None` meaning delete.
type Stage = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a staged write replaced, so a failed [`StateStore::stage`] can be undone.
type Undo = (Family, Vec<u8>, Option<Option<Vec<u8>>>);

/// One partition's projections on disk.
///
/// Decisions read through the staged (uncommitted) writes first; [`StateStore::commit`]
/// persists them atomically together with the input positions. See the crate docs.
pub struct StateStore {
    // The RocksDB handle, shared with operators' queries (see `committed`).
    view: CommittedView,
    seen_capacity: u64,
    max_changelog_record_bytes: usize,
    // Ordered maps, so the changelog sees the writes of a batch in a stable order.
    staged: [Stage; FAMILY_COUNT],
    // Committed integrations only, never staged ones: discarding the stage then needs
    // no cache repair. A Mutex (not RefCell) keeps the store `Sync`.
    cache: Mutex<IntegrationCache>,
    // The kept traces' order, staged ones included; read from disk when first needed.
    trace_index: Option<explanations::TraceIndex>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.view.path)
            .field("seen_capacity", &self.seen_capacity)
            .field("staged_writes", &self.staged.iter().map(BTreeMap::len).sum::<usize>())
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (or creates, with its directories) the store at `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::CreateDir { path: path.to_owned(), source })?;
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        // Restores write without RocksDB's log (`apply_restore`): flushing every family together
        // keeps what is on disk a prefix of the batches, each carrying its changelog position.
        db_options.set_atomic_flush(true);
        let families = Family::ALL.map(|family| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(DBCompressionType::Lz4);
            // Most reads are point look-ups of keys that do not exist yet (an event id not seen, an
            // activity not in the ledger): once state outgrows the memtable, a bloom filter per
            // table file answers those without reading its blocks.
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            cf_options.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(family.name(), cf_options)
        });
        // A store must be opened with every column family it has: open the obsolete ones too,
        // then drop them.
        let existing = DB::list_cf(&db_options, path).unwrap_or_default();
        let obsolete: Vec<&str> =
            OBSOLETE_FAMILIES.into_iter().filter(|name| existing.iter().any(|e| e == name)).collect();
        let descriptors = families
            .into_iter()
            .chain(obsolete.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default())));
        let mut db = DB::open_cf_descriptors(&db_options, path, descriptors)
            .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        for name in obsolete {
            db.drop_cf(name).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        }
        let view = CommittedView { path: path.to_owned(), db: Arc::new(db) };
        if !existing.is_empty() && !existing.iter().any(|name| name == Family::UserActivities.name()) {
            // A store from before the index: derive it once from the ledger.
            index_ledger(&view)?;
        }
        Ok(StateStore {
            view,
            seen_capacity: u64::try_from(options.seen_capacity.max(1)).unwrap_or(u64::MAX),
            max_changelog_record_bytes: options.max_changelog_record_bytes,
            staged: Default::default(),
            cache: Mutex::new(IntegrationCache::new(options.cache_capacity)),
            trace_index: None,
        })
    }

    /// Whether the store holds nothing but its own bookkeeping (a new store, perhaps told which
    /// changelog it belongs to).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        for family in Family::ALL {
            let cf = self.view.cf(family)?;
            for item in self.view.db.iterator_cf(cf, IteratorMode::Start) {
                let (key, _) = item.map_err(|source| self.view.iterate_error(family, source))?;
                if family != Family::Meta || !encoding::LOCAL_META.contains(&&key[..]) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.view.path
    }

    /// The store's committed state, for operators' queries beside processing. Withdraw every
    /// copy before dropping the store: dropping it waits for them.
    pub fn committed_view(&self) -> CommittedView {
        self.view.clone()
    }

    /// Stages the changes of a decision; later reads see them. All or nothing: if a change
    /// fails, or one would make a changelog record larger than the changelog takes
    /// ([`StoreError::TooLarge`]), the changes of this call are taken back.
    pub fn stage(&mut self, changes: &[StateChange]) -> Result<(), StoreError> {
        let mut undo = Vec::new();
        let staged = changes.iter().try_for_each(|change| self.stage_one(change, &mut undo));
        if let Err(error) = staged.and_then(|()| self.check_record_sizes(&undo)) {
            for (family, key, previous) in undo.into_iter().rev() {
                let stage = &mut self.staged[family.index()];
                match previous {
                    Some(value) => stage.insert(key, value),
                    None => stage.remove(&key),
                };
            }
            return Err(error);
        }
        Ok(())
    }

    /// Refuses writes whose changelog record would be larger than the changelog takes: sent, it
    /// would be refused, and every attempt at the round after it too.
    fn check_record_sizes(&self, written: &[Undo]) -> Result<(), StoreError> {
        for (family, key, _) in written.iter().filter(|(family, _, _)| family.changelogged()) {
            let value = self.staged[family.index()].get(key).and_then(Option::as_ref).map_or(0, Vec::len);
            let bytes = changelog::record_key_len(*family, key) + value;
            if bytes > self.max_changelog_record_bytes {
                return Err(StoreError::TooLarge {
                    family: family.name(),
                    key: display_key(key),
                    bytes,
                    limit: self.max_changelog_record_bytes,
                });
            }
        }
        Ok(())
    }

    /// Persists all staged writes plus input positions, and the changelog position they reach
    /// (`None`: unchanged), in one atomic write, then clears the stage. On error nothing
    /// is written and the stage is kept.
    pub fn commit(
        &mut self,
        positions: &[InputPosition],
        changelog: Option<ChangelogPosition>,
    ) -> Result<(), StoreError> {
        let writes: usize = self.staged.iter().map(BTreeMap::len).sum();
        if writes == 0 && positions.is_empty() && changelog.is_none() {
            // Nothing to persist: skip the fsync.
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for family in Family::ALL {
            let cf = self.view.cf(family)?;
            for (key, value) in &self.staged[family.index()] {
                match value {
                    Some(value) => batch.put_cf(cf, key, value),
                    None => batch.delete_cf(cf, key),
                }
            }
        }
        let meta = self.view.cf(Family::Meta)?;
        for position in positions {
            let key = encoding::position_key(&position.topic, position.partition);
            let value = self.view.encode(Family::Meta, &key, position)?;
            batch.put_cf(meta, key, value);
        }
        if let Some(changelog) = changelog {
            self.put_changelog_position(&mut batch, changelog)?;
        }
        // Not synced: RocksDB's log keeps batches in order, so after a machine crash the store
        // holds a prefix of them and is at most behind its changelog, whose tail restores the rest
        // (see `crmflow_runtime::restore`). A process crash loses nothing. An fsync per partition
        // per commit would cost more than the commit itself.
        self.view.db.write(batch).map_err(|source| StoreError::Commit {
            path: self.view.path.clone(),
            writes,
            positions: positions.len(),
            source,
        })?;
        let staged = std::mem::take(&mut self.staged);
        let cache = self.cache.get_mut().unwrap_or_else(PoisonError::into_inner);
        for key in staged[Family::Integrations.index()].keys() {
            cache.invalidate(key);
        }
        Ok(())
    }

    /// Drops staged writes (e.g. after a failed transaction); reads see the committed state.
    pub fn discard_staged(&mut self) {
        self.staged = Default::default();
        self.trace_index = None;
    }

    /// The committed input positions (next offset to read), ordered by topic and partition.
    pub fn positions(&self) -> Result<Vec<InputPosition>, StoreError> {
        let family = Family::Meta;
        let cf = self.view.cf(family)?;
        let mode = IteratorMode::From(encoding::POSITION_PREFIX, Direction::Forward);
        let mut positions = Vec::new();
        for item in self.view.db.iterator_cf(cf, mode) {
            let (key, value) = item.map_err(|source| self.view.iterate_error(family, source))?;
            if !key.starts_with(encoding::POSITION_PREFIX) {
                break;
            }
            positions.push(self.view.decode(family, &key, &value)?);
        }
        positions.sort();
        Ok(positions)
    }

    /// The changelog records of the open batch: every staged write, then the input positions
    /// the batch will record. Families come in a fixed order, keys in byte order within one.
    pub fn changelog_records(&self, positions: &[InputPosition]) -> Result<Vec<ChangelogRecord>, StoreError> {
        let mut records: Vec<ChangelogRecord> = Family::ALL
            .into_iter()
            .filter(|family| family.changelogged())
            .flat_map(|family| {
                self.staged[family.index()].iter().map(move |(key, value)| ChangelogRecord {
                    key: changelog::record_key(family, key),
                    value: value.clone(),
                })
            })
            .collect();
        for position in positions {
            let key = encoding::position_key(&position.topic, position.partition);
            let value = self.view.encode(Family::Meta, &key, position)?;
            records.push(ChangelogRecord { key: changelog::record_key(Family::Meta, &key), value: Some(value) });
        }
        Ok(records)
    }

    /// The next changelog offset the store reflects (`None`: it never recorded one, e.g. a new
    /// store, or one that predates changelogs).
    pub fn changelog_next(&self) -> Result<Option<i64>, StoreError> {
        self.view.read_committed(Family::Meta, encoding::CHANGELOG_NEXT)
    }

    /// How far the store reflects its changelog and since when (`None`: it never recorded a
    /// position). A store that recorded no time counts as written at the epoch's start: too old
    /// for its tail to be trusted.
    pub fn changelog_position(&self) -> Result<Option<ChangelogPosition>, StoreError> {
        let Some(next) = self.changelog_next()? else { return Ok(None) };
        let written_at = self.view.read_committed(Family::Meta, encoding::CHANGELOG_WRITTEN_AT)?.unwrap_or(0);
        Ok(Some(ChangelogPosition { next, written_at }))
    }

    /// The id of the changelog topic the store's content comes from (`None`: not recorded).
    pub fn changelog_id(&self) -> Result<Option<String>, StoreError> {
        self.view.read_committed(Family::Meta, encoding::CHANGELOG_ID)
    }

    /// Records the id of the changelog topic the store's content comes from: a store whose id
    /// differs from its changelog's belongs to another history (the topic was deleted and
    /// created again, by a reset say) and is restored in full.
    pub fn set_changelog_id(&self, id: &str) -> Result<(), StoreError> {
        let key = encoding::CHANGELOG_ID;
        let value = self.view.encode(Family::Meta, key, &id)?;
        self.view.db.put_cf(self.view.cf(Family::Meta)?, key, value).map_err(|source| StoreError::Commit {
            path: self.view.path.clone(),
            writes: 1,
            positions: 0,
            source,
        })
    }

    fn put_changelog_position(&self, batch: &mut WriteBatch, changelog: ChangelogPosition) -> Result<(), StoreError> {
        let meta = self.view.cf(Family::Meta)?;
        let ChangelogPosition { next, written_at } = changelog;
        batch.put_cf(meta, encoding::CHANGELOG_NEXT, self.view.encode(Family::Meta, encoding::CHANGELOG_NEXT, &next)?);
        let key = encoding::CHANGELOG_WRITTEN_AT;
        batch.put_cf(meta, key, self.view.encode(Family::Meta, key, &written_at)?);
        Ok(())
    }

    /// Applies a changelog record read back from Kafka (restore), bypassing decisions and the
    /// stage. Refuses records that are not a store write, or whose value does not decode.
    ///
    /// Written without RocksDB's log, since a restore writes many records: after a crash the
    /// store holds a prefix of the restored batches, and the changelog position the last of them
    /// carries ([`StateStore::apply_restore`]); restoring again from there writes the rest.
    /// [`StateStore::finish_restore`] puts them on disk.
    pub fn restore(&self, record_key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.restore_all([(record_key, value)])
    }

    /// Applies changelog records read back from Kafka, in order, as one RocksDB batch (a restore
    /// applies many), checking each as [`StateStore::restore`] does; nothing of the batch is
    /// written if one record is refused. Without the log, like [`StateStore::restore`].
    pub fn restore_all<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), StoreError> {
        let batch = self.prepare_restore(records)?;
        self.apply_restore(batch, None)
    }

    /// Checks changelog records and builds their RocksDB batch, without touching the store: the
    /// first half of [`StateStore::restore_all`], which a restore runs on the thread that reads
    /// the changelog while [`StateStore::apply_restore`] writes the previous batch.
    pub fn prepare_restore<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<RestoreBatch, StoreError> {
        let mut prepared = RestoreBatch::default();
        for (record_key, value) in records {
            let (family, key) = self.restored_key(record_key)?;
            if let Some(value) = value {
                self.check_value(family, key, value)?;
            }
            let cf = self.view.cf(family)?;
            match value {
                Some(value) => prepared.batch.put_cf(cf, key, value),
                None => prepared.batch.delete_cf(cf, key),
            }
            match family {
                Family::Integrations => prepared.integrations.push(key.to_vec()),
                Family::Seen => prepared.seen.push((key.to_vec(), value.map(<[u8]>::to_vec))),
                Family::Ledger => prepared.ledger.push((key.to_vec(), value.map(<[u8]>::to_vec))),
                _ => {}
            }
        }
        Ok(prepared)
    }

    /// Writes a batch from [`StateStore::prepare_restore`]: its records, the `seen_order`
    /// entries of its seen ids (they depend on what earlier batches wrote), and `next`, the
    /// changelog offset the store reflects with it. Batches must come in changelog order.
    ///
    /// Without RocksDB's log, like [`StateStore::restore`]: whatever a crash leaves is a prefix of
    /// the batches (families flush together), and the position in it says how far it got.
    pub fn apply_restore(&self, prepared: RestoreBatch, reached: Option<ChangelogPosition>) -> Result<(), StoreError> {
        let RestoreBatch { mut batch, integrations, seen, ledger } = prepared;
        // Sequence numbers of the seen ids this batch remembers, for a forget later in the batch.
        let mut sequences: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (key, value) in seen {
            self.restore_seen_order(&mut batch, &mut sequences, key, value)?;
        }
        self.restore_user_activities(&mut batch, ledger)?;
        if let Some(reached) = reached {
            self.put_changelog_position(&mut batch, reached)?;
        }
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        self.view
            .db
            .write_opt(batch, &unlogged)
            .map_err(|source| StoreError::RestoreBatch { path: self.view.path.clone(), source })?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for key in integrations {
            cache.invalidate(&key);
        }
        Ok(())
    }

    /// Keeps `seen_order` in step with a restored `seen` record: the order is not in the
    /// changelog, the sequence number is the seen id's value. Its writes follow the batch's
    /// other writes; only their order among themselves matters, as nothing else writes there.
    fn restore_seen_order(
        &self,
        batch: &mut WriteBatch,
        sequences: &mut HashMap<Vec<u8>, Vec<u8>>,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let order = self.view.cf(Family::SeenOrder)?;
        match value {
            // Empty: remembered before the lean format, its order came through the changelog.
            Some(sequence) if sequence.len() == 8 => {
                batch.put_cf(order, self.seen_order_key_of(&key, &sequence)?, &key);
                sequences.insert(key, sequence);
            }
            Some(_) => {}
            None => {
                let sequence = match sequences.remove(&key) {
                    Some(sequence) => Some(sequence),
                    None => self
                        .view
                        .db
                        .get_cf(self.view.cf(Family::Seen)?, &key)
                        .map_err(|source| self.view.read_error(Family::Seen, &key, source))?,
                };
                if let Some(sequence) = sequence.filter(|s| s.len() == 8) {
                    batch.delete_cf(order, self.seen_order_key_of(&key, &sequence)?);
                }
            }
        }
        Ok(())
    }

    /// The `seen_order` key of the seen id stored under `seen_key` with this 8-byte sequence.
    fn seen_order_key_of(&self, seen_key: &[u8], sequence: &[u8]) -> Result<Vec<u8>, StoreError> {
        let company_id = self.view.key_part(Family::Seen, seen_key, 0)?;
        let sequence = sequence.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Inconsistent {
            path: self.view.path.clone(),
            family: Family::Seen.name(),
            key: display_key(seen_key),
            problem: "its sequence number is not 8 bytes".into(),
        })?;
        Ok(encoding::seen_order_key(&company_id, sequence))
    }

    /// Keeps `user_activities` in step with restored `ledger` records: each replaces the index
    /// entry of the value it overwrites (written earlier in the batch, or before it).
    fn restore_user_activities(
        &self,
        batch: &mut WriteBatch,
        ledger: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let index = self.view.cf(Family::UserActivities)?;
        let mut written: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for (key, value) in ledger {
            let previous = match written.get(&key) {
                Some(previous) => previous.clone(),
                None => self
                    .view
                    .db
                    .get_cf(self.view.cf(Family::Ledger)?, &key)
                    .map_err(|source| self.view.read_error(Family::Ledger, &key, source))?,
            };
            if let Some(previous) = previous {
                batch.delete_cf(index, user_activity_key_of(&self.view, &key, &previous)?);
            }
            if let Some(value) = &value {
                batch.put_cf(index, user_activity_key_of(&self.view, &key, value)?, []);
            }
            written.insert(key, value);
        }
        Ok(())
    }

    /// The family and store key of a changelog record key, refusing what is no store write.
    fn restored_key<'k>(&self, record_key: &'k [u8]) -> Result<(Family, &'k [u8]), StoreError> {
        let unknown = |family: &[u8]| StoreError::UnknownFamily {
            path: self.view.path.clone(),
            family: String::from_utf8_lossy(family).into_owned(),
            key: display_key(record_key),
        };
        let (name, key) = changelog::split_key(record_key).ok_or_else(|| unknown(record_key))?;
        let family = std::str::from_utf8(name).ok().and_then(Family::from_name).ok_or_else(|| unknown(name))?;
        if (family == Family::Meta && encoding::LOCAL_META.contains(&key)) || !family.restorable() {
            // Local bookkeeping never belongs in a changelog.
            return Err(unknown(record_key));
        }
        Ok((family, key))
    }

    /// Ends a restore (finished or interrupted): records the changelog position it `reached`
    /// (`None`: it applied nothing, the store's own stands) and flushes every family, so the
    /// restored records, which went around RocksDB's log, are on disk before later writes go
    /// through it.
    pub fn finish_restore(&self, reached: Option<ChangelogPosition>) -> Result<(), StoreError> {
        self.apply_restore(RestoreBatch::default(), reached)?;
        let families = Family::ALL.map(|family| self.view.cf(family)).into_iter().collect::<Result<Vec<_>, _>>()?;
        self.view
            .db
            .flush_cfs_opt(&families, &rocksdb::FlushOptions::default())
            .map_err(|source| StoreError::Flush { path: self.view.path.clone(), source })
    }

    /// Deletes the store from disk (a stale store about to be restored in full from its
    /// changelog), returning its directory.
    pub fn destroy(self) -> Result<PathBuf, StoreError> {
        let path = self.view.path.clone();
        drop(self);
        std::fs::remove_dir_all(&path).map_err(|source| StoreError::Destroy { path: path.clone(), source })?;
        Ok(path)
    }

    fn stage_one(&mut self, change: &StateChange, undo: &mut Vec<Undo>) -> Result<(), StoreError> {
        match change {
            StateChange::PutIntegration { company_id, integration_id, integration } => {
                self.stage_value(Family::Integrations, encoding::key(&[company_id, integration_id]), integration, undo)
            }
            StateChange::PutAccount { company_id, integration_id, crm_user_id, account } => {
                let key = encoding::key(&[company_id, integration_id, crm_user_id]);
                self.stage_value(Family::Accounts, key, account, undo)
            }
            StateChange::PutTeam { company_id, user_id, team_id } => {
                self.stage_value(Family::Teams, encoding::key(&[company_id, user_id]), team_id, undo)
            }
            StateChange::RemoveTeam { company_id, user_id } => {
                self.put_staged(Family::Teams, encoding::key(&[company_id, user_id]), None, undo);
                Ok(())
            }
            StateChange::PutLedger { company_id, activity_id, entry } => {
                let key = encoding::key(&[company_id, activity_id]);
                self.unindex_activity(company_id, activity_id, &key, undo)?;
                let index = encoding::user_activity_key(company_id, &entry.user_id, entry.occurred_at.0, activity_id);
                self.put_staged(Family::UserActivities, index, Some(Vec::new()), undo);
                self.stage_value(Family::Ledger, key, entry, undo)
            }
            StateChange::RemoveLedger { company_id, activity_id } => {
                let key = encoding::key(&[company_id, activity_id]);
                self.unindex_activity(company_id, activity_id, &key, undo)?;
                self.put_staged(Family::Ledger, key, None, undo);
                Ok(())
            }
            StateChange::RememberEvent { company_id, event_id } => {
                self.remember(company_id, encoding::key(&[company_id, event_id]), undo)
            }
        }
    }

    /// Stages the removal of an activity's `user_activities` entry, if the ledger holds it now
    /// (its account or date may change with the write that follows).
    fn unindex_activity(
        &mut self,
        company_id: &str,
        activity_id: &str,
        ledger_key: &[u8],
        undo: &mut Vec<Undo>,
    ) -> Result<(), StoreError> {
        if let Some(entry) = self.read::<LedgerEntry>(Family::Ledger, ledger_key)? {
            let index = encoding::user_activity_key(company_id, &entry.user_id, entry.occurred_at.0, activity_id);
            self.put_staged(Family::UserActivities, index, None, undo);
        }
        Ok(())
    }

    /// Remembers an event id of a company the way `MemoryState` does: ids already remembered
    /// keep their place; beyond the capacity (per company), the company's oldest are forgotten
    /// first.
    fn remember(&mut self, company_id: &str, seen_key: Vec<u8>, undo: &mut Vec<Undo>) -> Result<(), StoreError> {
        if self.contains(Family::Seen, &seen_key)? {
            return Ok(());
        }
        // Sequences are handed out contiguously per company and evicted from the front, so the
        // two counters say how many are remembered without scanning `seen_order`.
        let next_key = encoding::seen_counter_key(encoding::SEEN_NEXT, company_id);
        let oldest_key = encoding::seen_counter_key(encoding::SEEN_OLDEST, company_id);
        let next = self.counter(&next_key)?;
        let mut oldest = self.counter(&oldest_key)?;
        self.put_staged(Family::Seen, seen_key.clone(), Some(encoding::sequence_key(next).to_vec()), undo);
        self.put_staged(Family::SeenOrder, encoding::seen_order_key(company_id, next), Some(seen_key), undo);
        let next = next + 1;
        while next.saturating_sub(oldest) > self.seen_capacity {
            let order_key = encoding::seen_order_key(company_id, oldest);
            let Some(evicted) = self.get_raw(Family::SeenOrder, &order_key)? else {
                return Err(StoreError::Inconsistent {
                    path: self.view.path.clone(),
                    family: Family::SeenOrder.name(),
                    key: display_key(&order_key),
                    problem: format!(
                        "no event id for sequence {oldest}, though the counters say ids {oldest}..{next} are remembered"
                    ),
                });
            };
            self.put_staged(Family::Seen, evicted, None, undo);
            self.put_staged(Family::SeenOrder, order_key, None, undo);
            oldest += 1;
        }
        self.stage_value(Family::Meta, next_key, &next, undo)?;
        self.stage_value(Family::Meta, oldest_key, &oldest, undo)
    }

    /// A seen-id counter from `meta`; 0 in a fresh store.
    fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self.read(Family::Meta, key)?.unwrap_or(0))
    }

    fn stage_value<T: Serialize>(
        &mut self,
        family: Family,
        key: Vec<u8>,
        value: &T,
        undo: &mut Vec<Undo>,
    ) -> Result<(), StoreError> {
        let value = self.view.encode(family, &key, value)?;
        self.put_staged(family, key, Some(value), undo);
        Ok(())
    }

    fn put_staged(&mut self, family: Family, key: Vec<u8>, value: Option<Vec<u8>>, undo: &mut Vec<Undo>) {
        let previous = self.staged[family.index()].insert(key.clone(), value);
        undo.push((family, key, previous));
    }

    /// The current bytes of a key: staged first, then committed.
    fn get_raw(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(staged) = self.staged[family.index()].get(key) {
            return Ok(staged.clone());
        }
        self.view.db.get_cf(self.view.cf(family)?, key).map_err(|source| self.view.read_error(family, key, source))
    }

    /// Whether a key currently exists, staged first, then committed.
    fn contains(&self, family: Family, key: &[u8]) -> Result<bool, StoreError> {
        if let Some(staged) = self.staged[family.index()].get(key) {
            return Ok(staged.is_some());
        }
        let found = self
            .view
            .db
            .get_pinned_cf(self.view.cf(family)?, key)
            .map_err(|source| self.view.read_error(family, key, source))?;
        Ok(found.is_some())
    }

    /// The current value of a key, decoded; staged first, then committed.
    fn read<T: DeserializeOwned>(&self, family: Family, key: &[u8]) -> Result<Option<T>, StoreError> {
        if let Some(staged) = self.staged[family.index()].get(key) {
            return staged.as_deref().map(|bytes| self.view.decode(family, key, bytes)).transpose();
        }
        self.view.read_committed(family, key)
    }

    /// Checks that a restored value decodes as what its family holds.
    fn check_value(&self, family: Family, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match family {
            Family::Integrations => self.view.decode::<Integration>(family, key, value).map(drop),
            Family::Accounts => self.view.decode::<Account>(family, key, value).map(drop),
            Family::Teams => self.view.decode::<String>(family, key, value).map(drop),
            Family::Ledger => self.view.decode::<LedgerEntry>(family, key, value).map(drop),
            Family::Meta if encoding::is_seen_counter(key) => self.view.decode::<u64>(family, key, value).map(drop),
            Family::Meta if key.starts_with(encoding::POSITION_PREFIX) => {
                self.view.decode::<InputPosition>(family, key, value).map(drop)
            }
            // Presence markers and stored keys: any bytes will do (local families never come).
            Family::Seen | Family::SeenOrder | Family::Meta | Family::Explanations | Family::UserActivities => Ok(()),
        }
    }
}

impl StateView for StateStore {
    type Error = StoreError;

    fn integration(&self, company_id: &str, integration_id: &str) -> Result<Option<Arc<Integration>>, StoreError> {
        let key = encoding::key(&[company_id, integration_id]);
        if let Some(staged) = self.staged[Family::Integrations.index()].get(&key) {
            let staged: Option<Integration> =
                staged.as_deref().map(|bytes| self.view.decode(Family::Integrations, &key, bytes)).transpose()?;
            return Ok(staged.map(Arc::new));
        }
        // Every CRM change reads its integration: keep decoded ones at hand.
        if let Some(cached) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(cached);
        }
        let integration: Option<Arc<Integration>> =
            self.view.read_committed::<Integration>(Family::Integrations, &key)?.map(Arc::new);
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key, integration.clone());
        Ok(integration)
    }

    fn account(
        &self,
        company_id: &str,
        integration_id: &str,
        crm_user_id: &str,
    ) -> Result<Option<Account>, StoreError> {
        self.read(Family::Accounts, &encoding::key(&[company_id, integration_id, crm_user_id]))
    }

    fn team_of(&self, company_id: &str, user_id: &str) -> Result<Option<String>, StoreError> {
        self.read(Family::Teams, &encoding::key(&[company_id, user_id]))
    }

    fn ledger_entry(&self, company_id: &str, activity_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        self.read(Family::Ledger, &encoding::key(&[company_id, activity_id]))
    }

    fn has_seen(&self, company_id: &str, event_id: &str) -> Result<bool, StoreError> {
        self.contains(Family::Seen, &encoding::key(&[company_id, event_id]))
    }
}

/// Whether `changes` can all be written within a changelog that takes records of at most `limit`
/// key and value bytes: the rule [`StateStore::stage`] enforces (with the bytes it stages), for
/// those that keep state elsewhere (`crmflow simulate`). Deletes and bookkeeping are never larger
/// than the writes checked here.
pub fn check_changelog_record_sizes(changes: &[StateChange], limit: usize) -> Result<(), StoreError> {
    // The changelog carries a key's last write of a batch, as the stage keeps it.
    let mut writes: BTreeMap<(Family, Vec<u8>), usize> = BTreeMap::new();
    for change in changes {
        let (family, key, value) = match change {
            StateChange::PutIntegration { company_id, integration_id, integration } => {
                (Family::Integrations, encoding::key(&[company_id, integration_id]), encoding::encode(integration))
            }
            StateChange::PutAccount { company_id, integration_id, crm_user_id, account } => {
                (Family::Accounts, encoding::key(&[company_id, integration_id, crm_user_id]), encoding::encode(account))
            }
            StateChange::PutTeam { company_id, user_id, team_id } => {
                (Family::Teams, encoding::key(&[company_id, user_id]), encoding::encode(team_id))
            }
            StateChange::RemoveTeam { company_id, user_id } => {
                (Family::Teams, encoding::key(&[company_id, user_id]), Ok(Vec::new()))
            }
            StateChange::PutLedger { company_id, activity_id, entry } => {
                (Family::Ledger, encoding::key(&[company_id, activity_id]), encoding::encode(entry))
            }
            StateChange::RemoveLedger { company_id, activity_id } => {
                (Family::Ledger, encoding::key(&[company_id, activity_id]), Ok(Vec::new()))
            }
            StateChange::RememberEvent { company_id, event_id } => {
                (Family::Seen, encoding::key(&[company_id, event_id]), Ok(encoding::sequence_key(0).to_vec()))
            }
        };
        let value = value.map_err(|source| StoreError::Encode {
            path: PathBuf::new(),
            family: family.name(),
            key: display_key(&key),
            source,
        })?;
        writes.insert((family, key), value.len());
    }
    for ((family, key), value) in writes {
        let bytes = changelog::record_key_len(family, &key) + value;
        if bytes > limit {
            return Err(StoreError::TooLarge { family: family.name(), key: display_key(&key), bytes, limit });
        }
    }
    Ok(())
}

impl Drop for StateStore {
    fn drop(&mut self) {
        // Operators' queries hold the RocksDB handle while they read (their owner withdraws it
        // from them first): wait for the last, so the store is closed when this returns and can
        // be opened or deleted at once.
        let started = Instant::now();
        while Arc::strong_count(&self.view.db) > 1 {
            if started.elapsed() > CLOSE_WAIT {
                tracing::warn!(path = %self.view.path.display(), "closing a store that a query still reads");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// How long closing a store waits for the queries that read it.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The `user_activities` key of the ledger entry `entry` stored under `ledger_key`.
fn user_activity_key_of(view: &CommittedView, ledger_key: &[u8], entry: &[u8]) -> Result<Vec<u8>, StoreError> {
    let entry: LedgerEntry = view.decode(Family::Ledger, ledger_key, entry)?;
    let company_id = view.key_part(Family::Ledger, ledger_key, 0)?;
    let activity_id = view.key_part(Family::Ledger, ledger_key, 1)?;
    Ok(encoding::user_activity_key(&company_id, &entry.user_id, entry.occurred_at.0, &activity_id))
}

/// Writes the `user_activities` index of a store whose ledger was written without it.
fn index_ledger(view: &CommittedView) -> Result<(), StoreError> {
    let ledger = view.cf(Family::Ledger)?;
    let index = view.cf(Family::UserActivities)?;
    let mut batch = WriteBatch::default();
    for item in view.db.iterator_cf(ledger, IteratorMode::Start) {
        let (key, value) = item.map_err(|source| view.iterate_error(Family::Ledger, source))?;
        batch.put_cf(index, user_activity_key_of(view, &key, &value)?, []);
        if batch.len() >= 10_000 {
            write_index(view, std::mem::take(&mut batch))?;
        }
    }
    write_index(view, batch)
}

fn write_index(view: &CommittedView, batch: WriteBatch) -> Result<(), StoreError> {
    view.db.write(batch).map_err(|source| StoreError::RestoreBatch { path: view.path.clone(), source })
}

/// Committed integrations (including known absences), decoded, up to a capacity.
struct IntegrationCache {
    capacity: usize,
    entries: HashMap<Vec<u8>, Option<Arc<Integration>>>,
}

impl IntegrationCache {
    fn new(capacity: usize) -> Self {
        IntegrationCache { capacity, entries: HashMap::new() }
    }

    fn get(&self, key: &[u8]) -> Option<Option<Arc<Integration>>> {
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: Vec<u8>, value: Option<Arc<Integration>>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // A partition has few integrations; evicting an arbitrary one is good enough.
            if let Some(victim) = self.entries.keys().next().cloned() {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(key, value);
    }

    fn invalidate(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }
}

mod committed;
mod explanations;

pub use committed::{CommittedSnapshot, CommittedView, ProvisionedUser};
pub use explanations::KeptExplanation;

#[cfg(test)]
mod tests;
