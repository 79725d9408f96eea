//! The last decision trace of each CRM record, kept so admins can ask why (the HTTP explain
//! endpoint). Bounded: beyond the capacity the oldest traces are forgotten first. Local to the
//! instance: traces are not in the changelog, so a restored store has none from before.

use crmflow_domain::CrmChangeExplanation;
use rocksdb::IteratorMode;

use super::StateStore;
use crate::encoding::{self, display_key, Family};
use crate::error::StoreError;

/// A CRM record's last decision trace and when it was kept.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptExplanation {
    /// Its place in the order traces are kept (and forgotten) in.
    pub sequence: u64,
    /// The trace.
    pub explanation: CrmChangeExplanation,
}

/// The sequence numbers of the traces kept: `oldest..next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TraceWindow {
    next: u64,
    oldest: u64,
}

impl StateStore {
    /// Stages `explanation` as its CRM record's last trace; beyond `capacity` traces, the
    /// oldest are forgotten. Written with the next RocksDB batch, dropped with a discarded one.
    pub fn stage_explanation(&mut self, explanation: &CrmChangeExplanation, capacity: usize) -> Result<(), StoreError> {
        if capacity == 0 {
            return Ok(());
        }
        let key = explanation_key(explanation);
        let mut window = self.trace_window()?;
        let sequence = window.next;
        let mut value = sequence.to_be_bytes().to_vec();
        value.extend(self.encode(Family::Explanations, &key, explanation)?);
        let mut undo = Vec::new();
        self.put_staged(Family::Explanations, key.clone(), Some(value), &mut undo);
        self.put_staged(Family::ExplanationOrder, encoding::sequence_key(sequence).to_vec(), Some(key), &mut undo);
        window.next += 1;
        while window.next - window.oldest > capacity as u64 {
            let order_key = encoding::sequence_key(window.oldest).to_vec();
            if let Some(traced) = self.get_raw(Family::ExplanationOrder, &order_key)? {
                // The record may have been traced again since: then its trace is newer, and stays.
                let current = self.get_raw(Family::Explanations, &traced)?;
                if current.as_deref().and_then(sequence_of) == Some(window.oldest) {
                    self.put_staged(Family::Explanations, traced, None, &mut undo);
                }
            }
            self.put_staged(Family::ExplanationOrder, order_key, None, &mut undo);
            window.oldest += 1;
        }
        self.trace_window = Some(window);
        Ok(())
    }

    /// The committed last trace of a CRM record, if one is kept.
    pub fn explanation(
        &self,
        company_id: &str,
        integration_id: &str,
        object_type: &str,
        object_id: &str,
    ) -> Result<Option<KeptExplanation>, StoreError> {
        let key = encoding::key(&[company_id, integration_id, object_type, object_id]);
        let cf = self.cf(Family::Explanations)?;
        let Some(bytes) =
            self.db.get_pinned_cf(cf, &key).map_err(|source| self.read_error(Family::Explanations, &key, source))?
        else {
            return Ok(None);
        };
        let sequence = sequence_of(&bytes).ok_or_else(|| StoreError::Inconsistent {
            path: self.path.clone(),
            family: Family::Explanations.name(),
            key: display_key(&key),
            problem: "the value is shorter than its sequence number".into(),
        })?;
        let explanation = self.decode(Family::Explanations, &key, &bytes[8..])?;
        Ok(Some(KeptExplanation { sequence, explanation }))
    }

    /// The window of kept traces, read from the committed order the first time.
    fn trace_window(&mut self) -> Result<TraceWindow, StoreError> {
        if let Some(window) = self.trace_window {
            return Ok(window);
        }
        let family = Family::ExplanationOrder;
        let cf = self.cf(family)?;
        let sequence_at = |mode| -> Result<Option<u64>, StoreError> {
            match self.db.iterator_cf(cf, mode).next() {
                None => Ok(None),
                Some(item) => {
                    let (key, _) = item.map_err(|source| StoreError::Iterate {
                        path: self.path.clone(),
                        family: family.name(),
                        source,
                    })?;
                    Ok(sequence_of(&key))
                }
            }
        };
        let window = match (sequence_at(IteratorMode::Start)?, sequence_at(IteratorMode::End)?) {
            (Some(oldest), Some(last)) => TraceWindow { next: last + 1, oldest },
            _ => TraceWindow { next: 0, oldest: 0 },
        };
        self.trace_window = Some(window);
        Ok(window)
    }
}

/// The key of a CRM record's trace.
fn explanation_key(explanation: &CrmChangeExplanation) -> Vec<u8> {
    encoding::key(&[
        &explanation.company_id,
        &explanation.integration_id,
        &explanation.object_type,
        &explanation.object_id,
    ])
}

/// The big-endian sequence number that starts a trace's value (or is an order key).
fn sequence_of(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}
