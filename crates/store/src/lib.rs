//! RocksDB-backed state stores for crmflow's projections.
//!
//! The runtime gives every input partition its own [`StateStore`], a RocksDB database
//! at `<state_dir>/<partition>/`. The store implements [`crmflow_domain::StateView`],
//! so [`crmflow_domain::decide()`] reads it directly, and it persists the
//! [`crmflow_domain::StateChange`]s that decisions ask for.
//!
//! # Layout
//!
//! One column family per projection, plus bookkeeping:
//!
//! | family         | key                                   | value                          |
//! |----------------|---------------------------------------|--------------------------------|
//! | `integrations` | company, integration                  | [`crmflow_domain::Integration`] |
//! | `accounts`     | company, integration, CRM user        | [`crmflow_domain::Account`]     |
//! | `teams`        | company, user                         | team id (JSON string)          |
//! | `ledger`       | company, activity                     | [`crmflow_domain::LedgerEntry`] |
//! | `seen`         | company, event id                     | its sequence number (`u64`)    |
//! | `seen_order`   | company, sequence number (big-endian `u64`) | the `seen` key (local, rebuilt on restore) |
//! | `meta`         | `seen_next\0<company>`, `seen_oldest\0<company>` | the company's sequence counters (JSON `u64`) |
//! | `meta`         | `position\0<topic>\0<partition>`      | [`InputPosition`] (JSON)       |
//! | `explanations` | company, integration, object type, id | sequence (`u64`) + trace (JSON) |
//! | `user_activities` | company, user, inverted date, activity | empty (local, derived from `ledger`) |
//!
//! `explanations` keeps each CRM record's last decision trace, bounded like the seen ids, for
//! the explain query; the order to forget them in is rebuilt in memory from the sequence
//! numbers. It is local: never written to the changelog. So is `user_activities`, the ledger
//! indexed by account, latest first, which every ledger write (or restored ledger record) keeps
//! in step.
//!
//! Operators' queries read a [`CommittedView`]: the same RocksDB handle, without the stage, so
//! they never wait for processing; each reads one [`CommittedSnapshot`].
//!
//! Keys join the identifying strings with a `0x00` byte, company first, so all keys
//! of a company are adjacent. Values are `serde_json` of the domain types: simple to
//! debug with `ldb`. Both are defined in one private module (`encoding`), so the
//! format can change in one place.
//!
//! Processed event ids are remembered in a bounded FIFO per company, exactly like
//! [`crmflow_domain::MemoryState`]: each newly remembered id gets its company's next sequence
//! number, and when more than [`StoreOptions::seen_capacity`] of a company are remembered its
//! oldest are forgotten (deleted from `seen` and `seen_order`). Per company, not per store: which
//! resends are recognised then depends neither on the partition count nor on what other
//! companies share the partition, so `crmflow simulate` decides them alike.
//!
//! # The stage/commit cycle
//!
//! The runtime decides many events between commits (about every 100 ms):
//!
//! 1. `let decision = decide(&store, &event)?;` reads the projections: first the
//!    staged writes of the open batch, then (for integrations) a small cache of
//!    decoded values, then RocksDB. So every decision sees the earlier ones.
//! 2. `store.stage(&decision.changes)?;` records the writes in memory only.
//! 3. [`StateStore::changelog_records`] lists them, with the input positions, as
//!    [`ChangelogRecord`]s for the store's changelog partition (same transaction as
//!    the outputs).
//! 4. `store.commit(&positions, changelog_next)?;` writes every staged write plus the
//!    input positions (next offset to read, per topic partition) and the changelog
//!    offset the store now reflects in ONE RocksDB `WriteBatch`: after a crash the
//!    state and the positions always agree. The batch is not fsynced: after a machine
//!    crash the store may be behind its changelog, never ahead, and the tail is restored. [`StateStore::positions`] and
//!    [`StateStore::changelog_next`] read them back on startup.
//! 5. If the batch cannot be completed (e.g. its outputs failed to publish),
//!    [`StateStore::discard_staged`] forgets the staged writes instead.
//!
//! To rebuild a lost or stale store, replay its changelog (all of it, or the tail after
//! [`StateStore::changelog_next`]) in batches: [`StateStore::prepare_restore`] checks them,
//! [`StateStore::apply_restore`] writes each with the changelog position it reaches, and
//! [`StateStore::finish_restore`] puts the result on disk.
#![deny(missing_docs)]

mod changelog;
mod encoding;
mod error;
mod store;

pub use changelog::ChangelogRecord;
pub use error::{FormatError, StoreError};
pub use store::{
    check_changelog_record_sizes, ChangelogPosition, CommittedSnapshot, CommittedView, InputPosition, KeptExplanation,
    ProvisionedUser, RestoreBatch, StateStore, StoreOptions, CHANGELOG_RECORD_FRAMING,
    DEFAULT_MAX_CHANGELOG_RECORD_BYTES,
};
