//! Reads for operators and admins (the HTTP queries): committed state only, never the open
//! batch, and always within one company's keys.

use crmflow_domain::{Account, Integration, LedgerEntry};
use rocksdb::{Direction, IteratorMode};

use super::StateStore;
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

impl StateStore {
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
    pub fn committed_integration(
        &self,
        company_id: &str,
        integration_id: &str,
    ) -> Result<Option<Integration>, StoreError> {
        self.read_committed(Family::Integrations, &encoding::key(&[company_id, integration_id]))
    }

    /// The integration's provisioned users with their teams, ordered by CRM user id.
    pub fn provisioned_users(
        &self,
        company_id: &str,
        integration_id: &str,
    ) -> Result<Vec<ProvisionedUser>, StoreError> {
        let mut accounts = Vec::new();
        self.scan(Family::Accounts, &encoding::prefix(&[company_id, integration_id]), |key, value| {
            let crm_user_id = self.key_part(Family::Accounts, key, 2)?;
            let account: Account = self.decode(Family::Accounts, key, value)?;
            accounts.push((crm_user_id, account));
            Ok(true)
        })?;
        accounts
            .into_iter()
            .map(|(crm_user_id, account)| {
                let team_id = self.read_committed(Family::Teams, &encoding::key(&[company_id, &account.user_id]))?;
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
        let Some(account) = self.read_committed::<Account>(Family::Accounts, &key)? else { return Ok(None) };
        let team_id = self.read_committed(Family::Teams, &encoding::key(&[company_id, &account.user_id]))?;
        Ok(Some(ProvisionedUser { crm_user_id: crm_user_id.to_owned(), user_id: account.user_id, team_id }))
    }

    /// The company's accepted activities of one account, latest first, at most `limit`.
    pub fn activities_of(
        &self,
        company_id: &str,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, LedgerEntry)>, StoreError> {
        let mut entries = Vec::new();
        self.scan(Family::Ledger, &encoding::prefix(&[company_id]), |key, value| {
            let entry: LedgerEntry = self.decode(Family::Ledger, key, value)?;
            if entry.user_id == user_id {
                entries.push((self.key_part(Family::Ledger, key, 1)?, entry));
            }
            Ok(true)
        })?;
        entries.sort_by(|(a_id, a), (b_id, b)| b.occurred_at.cmp(&a.occurred_at).then_with(|| a_id.cmp(b_id)));
        entries.truncate(limit);
        Ok(entries)
    }

    /// A committed ledger entry: an activity currently accepted.
    pub fn committed_activity(&self, company_id: &str, activity_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        self.read_committed(Family::Ledger, &encoding::key(&[company_id, activity_id]))
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

    /// Calls `visit` with each committed key and value under `prefix`, in key order, while it
    /// returns `true`.
    fn scan(
        &self,
        family: Family,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let cf = self.cf(family)?;
        for item in self.db.iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) =
                item.map_err(|source| StoreError::Iterate { path: self.path.clone(), family: family.name(), source })?;
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

    /// The id at `index` of a stored key.
    fn key_part(&self, family: Family, key: &[u8], index: usize) -> Result<String, StoreError> {
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
