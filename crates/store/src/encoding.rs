//! The on-disk format: column families, key layout and value encoding.
//!
//! Everything that decides what the bytes look like lives here, so the format can
//! change in one place (the changelog mirrors these same bytes).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::FormatError;

/// Number of column families; sizes the per-family arrays of the stage.
pub(crate) const FAMILY_COUNT: usize = 9;

/// One column family, i.e. one projection (or bookkeeping table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    /// `company \0 integration` → [`crmflow_domain::Integration`].
    Integrations,
    /// `company \0 integration \0 crm user` → [`crmflow_domain::Account`].
    Accounts,
    /// `company \0 user` → team id (a JSON string).
    Teams,
    /// `company \0 activity` → [`crmflow_domain::LedgerEntry`].
    Ledger,
    /// `company \0 event` → the sequence number it was remembered with (big-endian `u64`);
    /// presence is the fact. Stores before the changelog's lean format hold it empty.
    Seen,
    /// sequence (big-endian `u64`) → the `seen` key remembered with it. Local: a restore rebuilds
    /// it from the `seen` values, which halves the changelog records a CRM change costs.
    SeenOrder,
    /// Input positions and the seen-id counters.
    Meta,
    /// `company \0 integration \0 object type \0 object id` → the last decision's trace of that
    /// CRM record, after its sequence number (big-endian `u64`), which orders the traces for
    /// forgetting. Local only: never in the changelog.
    Explanations,
    /// `company \0 user \0 inverted date \0 activity` → nothing: the ledger indexed by account,
    /// latest first, so a user's latest activities are read without scanning the company's
    /// ledger. Local: derived from `ledger` as it is written or restored.
    UserActivities,
}

impl Family {
    /// All families, in the order the stage and the changelog list them.
    pub(crate) const ALL: [Family; FAMILY_COUNT] = [
        Family::Integrations,
        Family::Accounts,
        Family::Teams,
        Family::Ledger,
        Family::Seen,
        Family::SeenOrder,
        Family::Meta,
        Family::Explanations,
        Family::UserActivities,
    ];

    /// The RocksDB column family name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Integrations => "integrations",
            Family::Accounts => "accounts",
            Family::Teams => "teams",
            Family::Ledger => "ledger",
            Family::Seen => "seen",
            Family::SeenOrder => "seen_order",
            Family::Meta => "meta",
            Family::Explanations => "explanations",
            Family::UserActivities => "user_activities",
        }
    }

    /// Whether its writes go to the changelog. Traces are diagnostics: restoring them would
    /// double the changelog's traffic for no decision's sake.
    pub(crate) fn changelogged(self) -> bool {
        !matches!(self, Family::SeenOrder | Family::Explanations | Family::UserActivities)
    }

    /// Whether a changelog record of this family is restored. `seen_order` is not written any
    /// more, but changelogs from before still hold its records.
    pub(crate) fn restorable(self) -> bool {
        self.changelogged() || self == Family::SeenOrder
    }

    /// The family with this column family name, if it is one of ours.
    pub(crate) fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Position in [`Family::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Separates the identifying strings of a key.
const SEPARATOR: u8 = 0x00;
/// Follows a 0x00 that belongs to an id rather than separating ids; 0xFF never
/// occurs in UTF-8, so it cannot be mistaken for the first byte of the next id.
const ESCAPED_NUL: u8 = 0xFF;

/// Joins identifying strings (company first) into a key.
///
/// Ids are plain UTF-8 with 0x00 between them. Ids containing NUL themselves (not
/// expected, but the core accepts them) get it escaped as `00 FF`, which keeps
/// keys injective so such ids can never collide with other ids.
pub(crate) fn key(parts: &[&str]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len() + 1).sum();
    let mut key = Vec::with_capacity(len);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEPARATOR);
        }
        for &byte in part.as_bytes() {
            key.push(byte);
            if byte == SEPARATOR {
                key.push(ESCAPED_NUL);
            }
        }
    }
    key
}

/// The prefix every key of these leading ids starts with (company first): the joined ids and a
/// separator. A key under it may still belong to a longer id that merely starts with a NUL
/// (escaped as `00 FF`); [`has_prefix`] tells them apart.
pub(crate) fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut prefix = key(parts);
    prefix.push(SEPARATOR);
    prefix
}

/// Whether `key` lies under `prefix` (from [`prefix`]): it starts with it, and the separator that
/// ends the prefix is not an escaped NUL of a longer id (0xFF never starts a UTF-8 id).
pub(crate) fn has_prefix(key: &[u8], prefix: &[u8]) -> bool {
    key.starts_with(prefix) && key.get(prefix.len()) != Some(&ESCAPED_NUL)
}

/// The ids a key joins, unescaped; `None` if the bytes are not a key [`key`] wrote.
pub(crate) fn parts(key: &[u8]) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = key.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        if byte != SEPARATOR {
            part.push(byte);
        } else if bytes.peek() == Some(&ESCAPED_NUL) {
            bytes.next();
            part.push(SEPARATOR);
        } else {
            parts.push(String::from_utf8(std::mem::take(&mut part)).ok()?);
        }
    }
    parts.push(String::from_utf8(part).ok()?);
    Some(parts)
}

/// Key of a `user_activities` entry. The date is mapped to an unsigned number in the same order,
/// inverted, and written as 16 hex digits, so a user's keys sort latest first (then by activity).
pub(crate) fn user_activity_key(company_id: &str, user_id: &str, occurred_at: i64, activity_id: &str) -> Vec<u8> {
    let inverted = !((occurred_at as u64) ^ (1 << 63));
    key(&[company_id, user_id, &format!("{inverted:016x}"), activity_id])
}

/// The value of a `seen` entry: its sequence number, big-endian.
pub(crate) fn sequence_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// Start of the `meta` key of a company's next seen-id sequence number ([`seen_counter_key`]).
pub(crate) const SEEN_NEXT: &[u8] = b"seen_next";
/// Start of the `meta` key of the sequence number of a company's oldest event id still remembered.
pub(crate) const SEEN_OLDEST: &[u8] = b"seen_oldest";

/// The `meta` key of a company's seen-id counter (`SEEN_NEXT` or `SEEN_OLDEST`): the counter's
/// name, a separator, the company. (Stores from before seen ids were per company hold the
/// counters under the bare names; those are no longer read.)
pub(crate) fn seen_counter_key(counter: &[u8], company_id: &str) -> Vec<u8> {
    let mut key = counter.to_vec();
    key.push(SEPARATOR);
    key.extend(self::key(&[company_id]));
    key
}

/// Whether a `meta` key holds a seen-id counter.
pub(crate) fn is_seen_counter(key: &[u8]) -> bool {
    [SEEN_NEXT, SEEN_OLDEST]
        .iter()
        .any(|counter| key == *counter || (key.starts_with(counter) && key.get(counter.len()) == Some(&SEPARATOR)))
}

/// Key of a `seen_order` entry: the company, a separator, then its big-endian sequence number, so
/// RocksDB orders a company's entries oldest first.
pub(crate) fn seen_order_key(company_id: &str, sequence: u64) -> Vec<u8> {
    let mut key = self::key(&[company_id]);
    key.push(SEPARATOR);
    key.extend(sequence.to_be_bytes());
    key
}
/// `meta` key of the next changelog offset the store reflects. Local bookkeeping: it is never
/// itself written to the changelog.
pub(crate) const CHANGELOG_NEXT: &[u8] = b"changelog_next";
/// `meta` key of when the changelog record before `changelog_next` was written (epoch ms).
/// Local bookkeeping, like [`CHANGELOG_NEXT`].
pub(crate) const CHANGELOG_WRITTEN_AT: &[u8] = b"changelog_written_at";
/// `meta` key of the id of the changelog topic the store's content comes from. Local
/// bookkeeping, like [`CHANGELOG_NEXT`].
pub(crate) const CHANGELOG_ID: &[u8] = b"changelog_id";
/// The `meta` keys that are the store's own bookkeeping: never in a changelog.
pub(crate) const LOCAL_META: [&[u8]; 3] = [CHANGELOG_NEXT, CHANGELOG_WRITTEN_AT, CHANGELOG_ID];
/// Prefix of the `meta` keys holding input positions.
pub(crate) const POSITION_PREFIX: &[u8] = b"position\0";

/// `meta` key of the input position of one topic partition.
pub(crate) fn position_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = POSITION_PREFIX.to_vec();
    key.extend_from_slice(topic.as_bytes());
    key.push(SEPARATOR);
    // Decimal rather than binary: these keys are few and reading them in a dump matters more.
    key.extend_from_slice(partition.to_string().as_bytes());
    key
}

/// Encodes a value (JSON, for now).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(value).map_err(FormatError)
}

/// Decodes a value written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    serde_json::from_slice(bytes).map_err(FormatError)
}

/// Renders a key for error messages: printable ASCII as is, other bytes as `\xNN`.
pub(crate) fn display_key(key: &[u8]) -> String {
    key.iter().flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmflow_domain::{LedgerEntry, Timestamp};
    use proptest::prelude::*;

    #[test]
    fn plain_ids_are_joined_with_nul() {
        assert_eq!(key(&["acme", "sf", "005A"]), b"acme\0sf\x00005A".to_vec());
        assert!(key(&["acme", "sf"]).starts_with(b"acme\0"), "company first");
    }

    #[test]
    fn ids_containing_nul_do_not_collide() {
        assert_ne!(key(&["a\0b", "c"]), key(&["a", "b\0c"]));
        assert_ne!(key(&["a", ""]), key(&["a\0", ""]));
    }

    #[test]
    fn family_names_round_trip() {
        for family in Family::ALL {
            assert_eq!(Family::from_name(family.name()), Some(family));
            assert_eq!(Family::ALL[family.index()], family);
        }
        assert_eq!(Family::from_name("default"), None);
    }

    #[test]
    fn a_users_activity_keys_sort_latest_first_then_by_activity() {
        let keys: Vec<Vec<u8>> = [(i64::MAX, "b"), (5, "a"), (5, "b"), (0, "a"), (-1, "a"), (i64::MIN, "a")]
            .into_iter()
            .map(|(millis, activity)| user_activity_key("acme", "u1", millis, activity))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(parts(&keys[1]).map(|p| p[3].clone()), Some("a".to_owned()), "the activity is the last id");
    }

    #[test]
    fn seen_counters_are_recognised_per_company_and_in_the_old_place() {
        assert!(is_seen_counter(&seen_counter_key(SEEN_NEXT, "acme")));
        assert!(is_seen_counter(&seen_counter_key(SEEN_OLDEST, "")));
        assert!(is_seen_counter(SEEN_NEXT));
        assert!(!is_seen_counter(b"seen_nextx"));
        assert_ne!(seen_order_key("a", 0x00FF), seen_order_key("a\0", 0xFF), "orders do not collide");
    }

    #[test]
    fn keys_display_readably() {
        assert_eq!(display_key(b"acme\0sf"), "acme\\x00sf");
    }

    #[test]
    fn a_prefix_excludes_longer_ids_that_start_with_nul() {
        let acme = prefix(&["acme"]);
        assert!(has_prefix(&key(&["acme", "sf"]), &acme));
        assert!(!has_prefix(&key(&["acme\0x", "sf"]), &acme), "company `acme\\0x` is not `acme`");
        assert!(!has_prefix(&key(&["acmex", "sf"]), &acme));
    }

    proptest! {
        #[test]
        fn keys_are_injective(a in prop::collection::vec("[a\\x00]{0,3}", 1..4),
                              b in prop::collection::vec("[a\\x00]{0,3}", 1..4)) {
            let ka: Vec<&str> = a.iter().map(String::as_str).collect();
            let kb: Vec<&str> = b.iter().map(String::as_str).collect();
            prop_assert_eq!(key(&ka) == key(&kb), a == b);
        }

        #[test]
        fn keys_split_back_into_their_ids(a in prop::collection::vec("[a\\x00]{0,3}", 1..4)) {
            let ids: Vec<&str> = a.iter().map(String::as_str).collect();
            prop_assert_eq!(parts(&key(&ids)), Some(a.clone()));
        }

        #[test]
        fn a_prefix_holds_exactly_the_keys_of_its_ids(a in "[a\\x00]{0,3}", b in "[a\\x00]{0,3}", rest in "[a\\x00]{0,3}") {
            prop_assert_eq!(has_prefix(&key(&[&b, &rest]), &prefix(&[&a])), a == b);
        }

        // The core compares stored values with new ones to tell a revision from a
        // no-op, so a value must come back bit for bit.
        #[test]
        fn ledger_values_round_trip_exactly(value in prop::option::of(prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO),
                                            millis in -62_135_596_800_000i64..253_402_300_799_999) {
            let entry = LedgerEntry {
                user_id: "u".into(),
                crm_user_id: "c".into(),
                team_id: "t".into(),
                activity_type: "Sale".into(),
                value,
                occurred_at: Timestamp(millis),
            };
            let back: LedgerEntry = decode(&encode(&entry).expect("encodes")).expect("decodes");
            prop_assert_eq!(back, entry);
        }
    }
}
