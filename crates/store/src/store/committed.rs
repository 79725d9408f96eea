//! Reads for operators and admins (the HTTP queries): committed state only, never the open
//! batch, and always within one company's keys. A [`CommittedView`] shares the store's RocksDB
//! handle, so queries run beside processing without waiting for it; each query reads one
//! [`CommittedSnapshot`], so it sees one committed batch throughout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crmflow_domain::{Account, Integration, LedgerEntry};
use rocksdb::{ColumnFamily, Direction, IteratorMode, SnapshotWithThreadMode, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::explanations::{sequence_of, short_value, KeptExplanation};
use crate::encoding::{self, display_key, Family};
use crate::error::StoreError;

/// A provisioned CRM user as the team dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProvisionedUser {
    /// The CRM user.
    pub crm_user_id: String,
    /// Their crmflow account.
    pub user_id: String,
    /// Their team; `None` while they wait to be placed (their activities are ignored).
    pub team_id: Option<String>,
}

/// One store's committed state: the RocksDB handle the store writes through, and its directory
/// for error messages. Batches are written only once their round is committed, so whatever
/// RocksDB holds is committed.
#[derive(Clone)]
pub struct CommittedView {
    pub(super) path: PathBuf,
    pub(super) db: Arc<DB>,
}

impl std::fmt::Debug for CommittedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommittedView").field("path", &self.path).finish_non_exhaustive()
    }
}

impl CommittedView {
    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent read of the committed state as it is now.
    pub fn snapshot(&self) -> CommittedSnapshot<'_> {
        CommittedSnapshot { view: self, snapshot: self.db.snapshot() }
    }

    /// Bytes the store takes: its files on disk and its memtables, over every family.
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for family in Family::ALL {
            let cf = self.cf(family)?;
            for property in ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"] {
                let value = self.db.property_int_value_cf(cf, property).map_err(|source| StoreError::Property {
                    path: self.path.clone(),
                    family: family.name(),
                    property,
                    source,
                })?;
                total += value.unwrap_or(0);
            }
        }
        Ok(total)
    }

    pub(super) fn cf(&self, family: Family) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(family.name())
            .ok_or_else(|| StoreError::MissingFamily { path: self.path.clone(), family: family.name() })
    }

    /// A committed value, decoded (outside any snapshot: the store's own bookkeeping).
    pub(super) fn read_committed<T: DeserializeOwned>(
        &self,
        family: Family,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let found =
            self.db.get_pinned_cf(self.cf(family)?, key).map_err(|source| self.read_error(family, key, source))?;
        found.map(|bytes| self.decode(family, key, &bytes)).transpose()
    }

    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        family: Family,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        encoding::decode(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            family: family.name(),
            key: display_key(key),
            source,
        })
    }

    pub(super) fn encode<T: Serialize>(&self, family: Family, key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
        encoding::encode(value).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            family: family.name(),
            key: display_key(key),
            source,
        })
    }

    pub(super) fn read_error(&self, family: Family, key: &[u8], source: rocksdb::Error) -> StoreError {
        StoreError::Read { path: self.path.clone(), family: family.name(), key: display_key(key), source }
    }

    pub(super) fn iterate_error(&self, family: Family, source: rocksdb::Error) -> StoreError {
        StoreError::Iterate { path: self.path.clone(), family: family.name(), source }
    }

    /// The id at `index` of a stored key.
    pub(super) fn key_part(&self, family: Family, key: &[u8], index: usize) -> Result<String, StoreError> {
        encoding::parts(key).and_then(|mut parts| (index < parts.len()).then(|| parts.swap_remove(index))).ok_or_else(
            || StoreError::Inconsistent {
                path: self.path.clone(),
                family: family.name(),
                key: display_key(key),
                problem: format!("the key does not hold id number {}", index + 1),
            },
        )
    }
}

/// The committed state of one store at one moment, for one query.
pub struct CommittedSnapshot<'a> {
    view: &'a CommittedView,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl CommittedSnapshot<'_> {
    /// Whether the store holds anything of this company: settings, accounts, teams or activities.
    pub fn holds_company(&self, company_id: &str) -> Result<bool, StoreError> {
        let prefix = encoding::prefix(&[company_id]);
        for family in [Family::Integrations, Family::Accounts, Family::Teams, Family::Ledger] {
            let mut found = false;
            self.scan(family, &prefix, |_, _| {
                found = true;
                Ok(false)
            })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An integration's committed settings and workflows.
    pub fn integration(&self, company_id: &str, integration_id: &str) -> Result<Option<Integration>, StoreError> {
        self.read(Family::Integrations, &encoding::key(&[company_id, integration_id]))
    }

    /// The integration's provisioned users with their teams, ordered by CRM user id.
    pub fn provisioned_users(
        &self,
        company_id: &str,
        integration_id: &str,
    ) -> Result<Vec<ProvisionedUser>, StoreError> {
        let mut accounts = Vec::new();
        self.scan(Family::Accounts, &encoding::prefix(&[company_id, integration_id]), |key, value| {
            let crm_user_id = self.view.key_part(Family::Accounts, key, 2)?;
            let account: Account = self.view.decode(Family::Accounts, key, value)?;
            accounts.push((crm_user_id, account));
            Ok(true)
        })?;
        accounts
            .into_iter()
            .map(|(crm_user_id, account)| {
                let team_id = self.read(Family::Teams, &encoding::key(&[company_id, &account.user_id]))?;
                Ok(ProvisionedUser { crm_user_id, user_id: account.user_id, team_id })
            })
            .collect()
    }

    /// One provisioned user of the integration, if the CRM user has an account.
    pub fn provisioned_user(
        &self,
        company_id: &str,
        integration_id: &str,
        crm_user_id: &str,
    ) -> Result<Option<ProvisionedUser>, StoreError> {
        let key = encoding::key(&[company_id, integration_id, crm_user_id]);
        let Some(account) = self.read::<Account>(Family::Accounts, &key)? else { return Ok(None) };
        let team_id = self.read(Family::Teams, &encoding::key(&[company_id, &account.user_id]))?;
        Ok(Some(ProvisionedUser { crm_user_id: crm_user_id.to_owned(), user_id: account.user_id, team_id }))
    }

    /// The company's accepted activities of one account, latest first (then by activity id), at
    /// most `limit`: read through the `user_activities` index, never the company's whole ledger.
    pub fn activities_of(
        &self,
        company_id: &str,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, LedgerEntry)>, StoreError> {
        let mut activity_ids = Vec::new();
        if limit > 0 {
            self.scan(Family::UserActivities, &encoding::prefix(&[company_id, user_id]), |key, _| {
                activity_ids.push(self.view.key_part(Family::UserActivities, key, 3)?);
                Ok(activity_ids.len() < limit)
            })?;
        }
        activity_ids
            .into_iter()
            .map(|activity_id| {
                let key = encoding::key(&[company_id, &activity_id]);
                let entry =
                    self.read::<LedgerEntry>(Family::Ledger, &key)?.ok_or_else(|| StoreError::Inconsistent {
                        path: self.view.path.clone(),
                        family: Family::UserActivities.name(),
                        key: display_key(&key),
                        problem: "the index names an activity the ledger does not hold".into(),
                    })?;
                Ok((activity_id, entry))
            })
            .collect()
    }

    /// A committed ledger entry: an activity currently accepted.
    pub fn activity(&self, company_id: &str, activity_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        self.read(Family::Ledger, &encoding::key(&[company_id, activity_id]))
    }

    /// The last trace of a CRM record, if one is kept.
    pub fn explanation(
        &self,
        company_id: &str,
        integration_id: &str,
        object_type: &str,
        object_id: &str,
    ) -> Result<Option<KeptExplanation>, StoreError> {
        let key = encoding::key(&[company_id, integration_id, object_type, object_id]);
        let family = Family::Explanations;
        let Some(bytes) = self
            .snapshot
            .get_pinned_cf(self.view.cf(family)?, &key)
            .map_err(|source| self.view.read_error(family, &key, source))?
        else {
            return Ok(None);
        };
        let sequence = sequence_of(&bytes).ok_or_else(|| short_value(&self.view.path, &key))?;
        let explanation = self.view.decode(family, &key, &bytes[8..])?;
        Ok(Some(KeptExplanation { sequence, explanation }))
    }

    fn read<T: DeserializeOwned>(&self, family: Family, key: &[u8]) -> Result<Option<T>, StoreError> {
        let found = self
            .snapshot
            .get_pinned_cf(self.view.cf(family)?, key)
            .map_err(|source| self.view.read_error(family, key, source))?;
        found.map(|bytes| self.view.decode(family, key, &bytes)).transpose()
    }

    /// Calls `visit` with each committed key and value under `prefix`, in key order, while it
    /// returns `true`.
    fn scan(
        &self,
        family: Family,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let cf = self.view.cf(family)?;
        for item in self.snapshot.iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item.map_err(|source| self.view.iterate_error(family, source))?;
            if !key.starts_with(prefix) {
                break;
            }
            // A longer id that starts with a NUL sorts among these keys: not this company's.
            if !encoding::has_prefix(&key, prefix) {
                continue;
            }
            if !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }
}
