//! The last decision trace of each CRM record, kept so admins can ask why (the HTTP explain
//! endpoint). Bounded: beyond the capacity the oldest traces are forgotten first. Local to the
//! instance: traces are not in the changelog, so a restored store has none from before.
//!
//! The order traces are forgotten in is kept in memory ([`TraceIndex`]) and rebuilt from the
//! sequence numbers the traces are stored with, so keeping a trace costs one RocksDB write (and
//! one delete beyond the capacity) and no read: a persisted order cost two more writes and two
//! reads per CRM change, about a fifth of the processing thread.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

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

/// The traces kept, staged ones included, in the order they were kept: each with its sequence
/// number and its CRM record's key. A record traced again appears again; its older entry is
/// stale and forgets nothing when it leaves the window.
#[derive(Debug, Default)]
pub(super) struct TraceIndex {
    order: VecDeque<(u64, Vec<u8>)>,
    latest: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl StateStore {
    /// Stages `explanation` as its CRM record's last trace; beyond the last `capacity` traces,
    /// the oldest are forgotten. Written with the next RocksDB batch, dropped with a discarded one.
    pub fn stage_explanation(&mut self, explanation: &CrmChangeExplanation, capacity: usize) -> Result<(), StoreError> {
        if capacity == 0 {
            return Ok(());
        }
        let key = explanation_key(explanation);
        // Encoded before the index is taken: nothing after this can fail and lose the index.
        let trace = self.view.encode(Family::Explanations, &key, explanation)?;
        let mut index = match self.trace_index.take() {
            Some(index) => index,
            None => self.read_trace_index()?,
        };
        let sequence = index.next;
        let mut value = sequence.to_be_bytes().to_vec();
        value.extend(trace);
        let mut undo = Vec::new();
        self.put_staged(Family::Explanations, key.clone(), Some(value), &mut undo);
        index.latest.insert(key.clone(), sequence);
        index.order.push_back((sequence, key));
        index.next += 1;
        while index.order.len() > capacity {
            let Some((oldest, traced)) = index.order.pop_front() else { break };
            // The record may have been traced again since: then its trace is newer, and stays.
            if index.latest.get(&traced) == Some(&oldest) {
                index.latest.remove(&traced);
                self.put_staged(Family::Explanations, traced, None, &mut undo);
            }
        }
        self.trace_index = Some(index);
        Ok(())
    }

    /// The committed traces in the order they were kept, from their stored sequence numbers.
    fn read_trace_index(&self) -> Result<TraceIndex, StoreError> {
        let family = Family::Explanations;
        let cf = self.view.cf(family)?;
        let mut order = Vec::new();
        for item in self.view.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|source| self.view.iterate_error(family, source))?;
            let sequence = sequence_of(&value).ok_or_else(|| short_value(&self.view.path, &key))?;
            order.push((sequence, key.into_vec()));
        }
        order.sort_unstable();
        let latest = order.iter().map(|(sequence, key)| (key.clone(), *sequence)).collect();
        let next = order.last().map_or(0, |(sequence, _)| sequence + 1);
        Ok(TraceIndex { order: order.into(), latest, next })
    }
}

/// The error of a stored trace too short to start with its sequence number.
pub(super) fn short_value(path: &Path, key: &[u8]) -> StoreError {
    StoreError::Inconsistent {
        path: path.to_owned(),
        family: Family::Explanations.name(),
        key: display_key(key),
        problem: "the value is shorter than its sequence number".into(),
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

/// The big-endian sequence number that starts a trace's value.
pub(super) fn sequence_of(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}
