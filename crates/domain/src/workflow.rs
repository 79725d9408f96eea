//! Workflows: which CRM changes count as an activity, and of whom.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scalar::Scalar;
use crate::time::Timestamp;

/// What happened to a CRM record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// The record was created.
    Created,
    /// The record was changed.
    Updated,
    /// The record was deleted.
    Deleted,
}

/// A comparison a condition applies to one record field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Equal.
    Eq,
    /// Not equal (holds for an absent field).
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Equal to one of a list.
    In,
    /// Equal to none of a list (holds for an absent field).
    NotIn,
    /// Contains the text, ignoring case.
    Contains,
    /// Starts with the text, ignoring case.
    StartsWith,
    /// The field is present and not null.
    Exists,
    /// The field is absent or null.
    NotExists,
}

/// The operand of a condition: one value, or a list for `in` / `not_in`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConditionValue {
    /// A list of values.
    List(Vec<Scalar>),
    /// A single value.
    One(Scalar),
}

/// One test on one field of a CRM record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The record field the condition reads.
    pub field: String,
    /// How the field is compared.
    pub op: Operator,
    /// What the field is compared with (absent for `exists` / `not_exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ConditionValue>,
}

/// An admin's rule that turns changes of one CRM object type into activities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// Identifier, unique within the integration.
    pub workflow_id: String,
    /// Name shown to admins.
    pub name: String,
    /// Only active workflows are evaluated.
    pub active: bool,
    /// The CRM object type it watches, e.g. `Opportunity`.
    pub object_type: String,
    /// The operations it reacts to.
    pub triggers: Vec<Operation>,
    /// All must hold for a created/updated record to match.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The activity type it reports, e.g. `Sale`.
    pub activity_type: String,
    /// The field that names the responsible CRM user, e.g. `OwnerId`.
    pub user_field: String,
    /// The field that gives the activity's value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_field: Option<String>,
    /// The field that gives the activity's date, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at_field: Option<String>,
}

/// Why a workflow definition cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow `{workflow_id}` is invalid: {problem}")]
pub struct InvalidWorkflow {
    /// The workflow's id as given.
    pub workflow_id: String,
    /// What to fix.
    pub problem: String,
}

impl Workflow {
    /// Checks what serde cannot: required texts, triggers and condition operands.
    pub fn validate(&self) -> Result<(), InvalidWorkflow> {
        let fail = |problem: String| Err(InvalidWorkflow { workflow_id: self.workflow_id.clone(), problem });
        for (name, value) in [
            ("workflow_id", &self.workflow_id),
            ("object_type", &self.object_type),
            ("activity_type", &self.activity_type),
            ("user_field", &self.user_field),
        ] {
            if value.trim().is_empty() {
                return fail(format!("`{name}` must not be empty"));
            }
        }
        if self.triggers.is_empty() {
            return fail("`triggers` must name at least one of created, updated, deleted".into());
        }
        for (i, c) in self.conditions.iter().enumerate() {
            if c.field.trim().is_empty() {
                return fail(format!("conditions[{i}].field must not be empty"));
            }
            let problem = match (c.op, &c.value) {
                (Operator::Exists | Operator::NotExists, None | Some(ConditionValue::One(Scalar::Null))) => None,
                (Operator::Exists | Operator::NotExists, Some(_)) => Some("takes no value".to_string()),
                (Operator::In | Operator::NotIn, Some(ConditionValue::List(items))) => {
                    items.contains(&Scalar::Null).then(|| "list must not contain null".to_string())
                }
                (Operator::In | Operator::NotIn, _) => Some("needs a list value".to_string()),
                (_, Some(ConditionValue::One(v))) if *v != Scalar::Null => None,
                (_, _) => Some("needs a single non-null value".to_string()),
            };
            if let Some(problem) = problem {
                return fail(format!("conditions[{i}] ({:?} on `{}`) {problem}", c.op, c.field));
            }
        }
        Ok(())
    }

    /// Whether every condition holds for these record fields.
    pub fn matches(&self, fields: &BTreeMap<String, Scalar>) -> bool {
        self.conditions.iter().all(|c| c.holds(fields.get(&c.field)))
    }
}

impl Condition {
    /// Whether the condition holds for a field value (`None` when absent).
    pub fn holds(&self, field: Option<&Scalar>) -> bool {
        let field = field.filter(|v| **v != Scalar::Null);
        let one = match &self.value {
            Some(ConditionValue::One(v)) => Some(v),
            _ => None,
        };
        let list: &[Scalar] = match &self.value {
            Some(ConditionValue::List(items)) => items,
            _ => &[],
        };
        let Some(field) = field else {
            return matches!(self.op, Operator::Ne | Operator::NotIn | Operator::NotExists);
        };
        let ordering = || one.and_then(|v| compare(field, v));
        match self.op {
            Operator::Exists => true,
            Operator::NotExists => false,
            Operator::Eq => ordering() == Some(Ordering::Equal),
            Operator::Ne => ordering() != Some(Ordering::Equal),
            Operator::Gt => ordering() == Some(Ordering::Greater),
            Operator::Gte => matches!(ordering(), Some(Ordering::Greater | Ordering::Equal)),
            Operator::Lt => ordering() == Some(Ordering::Less),
            Operator::Lte => matches!(ordering(), Some(Ordering::Less | Ordering::Equal)),
            Operator::In => list.iter().any(|v| compare(field, v) == Some(Ordering::Equal)),
            Operator::NotIn => !list.iter().any(|v| compare(field, v) == Some(Ordering::Equal)),
            Operator::Contains => text_test(field, one, |f, v| f.contains(v)),
            Operator::StartsWith => text_test(field, one, |f, v| f.starts_with(v)),
        }
    }
}

/// Compares as numbers, else as instants, else as case-insensitive text.
fn compare(field: &Scalar, value: &Scalar) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (field.as_number(), value.as_number()) {
        return a.partial_cmp(&b);
    }
    let (a, b) = (field.as_text()?, value.as_text()?);
    if let (Some(a), Some(b)) = (Timestamp::parse_date_or_datetime(&a), Timestamp::parse_date_or_datetime(&b)) {
        return Some(a.cmp(&b));
    }
    if a.is_ascii() && b.is_ascii() {
        // The same order as lowercased strings, without allocating them.
        return Some(a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase())));
    }
    Some(a.to_lowercase().cmp(&b.to_lowercase()))
}

fn text_test(field: &Scalar, value: Option<&Scalar>, test: fn(&str, &str) -> bool) -> bool {
    match (field.as_text(), value.and_then(Scalar::as_text)) {
        (Some(f), Some(v)) => test(&f.to_lowercase(), &v.to_lowercase()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(op: &str, value: serde_json::Value) -> Condition {
        serde_json::from_value(serde_json::json!({"field": "f", "op": op, "value": value})).unwrap()
    }

    fn holds(op: &str, value: serde_json::Value, field: serde_json::Value) -> bool {
        let field: Scalar = serde_json::from_value(field).unwrap();
        cond(op, value).holds(Some(&field))
    }

    #[test]
    fn numbers_compare_numerically_even_as_strings() {
        assert!(holds("gt", "9".into(), "10".into()));
        assert!(holds("eq", 1000.into(), "1000.0".into()));
        assert!(!holds("lt", 5.into(), 5.into()));
        assert!(holds("lte", 5.into(), 5.into()));
    }

    #[test]
    fn dates_compare_as_instants() {
        assert!(holds("gte", "2024-05-01".into(), "2024-05-01T00:00:00Z".into()));
        assert!(holds("lt", "2024-05-02".into(), "2024-05-01T23:59:59+00:00".into()));
    }

    #[test]
    fn text_beyond_ascii_compares_case_insensitively_too() {
        assert!(holds("eq", "ÉCOLE".into(), "école".into()));
        // As lowercased strings order: "zebra" < "ärger", "zurich" < "zürich".
        assert!(holds("lt", "ÄRGER".into(), "zebra".into()));
        assert!(holds("lt", "Zürich".into(), "zurich".into()));
    }

    #[test]
    fn text_compares_case_insensitively() {
        assert!(holds("eq", "closed won".into(), "Closed Won".into()));
        assert!(holds("contains", "WON".into(), "Closed Won".into()));
        assert!(holds("starts_with", "clo".into(), "Closed Won".into()));
        assert!(holds("in", serde_json::json!(["a", "closed won"]), "CLOSED WON".into()));
        assert!(holds("not_in", serde_json::json!(["a"]), "b".into()));
        assert!(holds("ne", "a".into(), "b".into()));
    }

    #[test]
    fn absent_field_only_satisfies_negative_operators() {
        for (op, value) in [
            ("eq", serde_json::json!("x")),
            ("gt", serde_json::json!(1)),
            ("in", serde_json::json!(["x"])),
            ("contains", serde_json::json!("x")),
            ("exists", serde_json::Value::Null),
        ] {
            assert!(!cond(op, value.clone()).holds(None), "{op}");
            assert!(!cond(op, value).holds(Some(&Scalar::Null)), "{op} on null");
        }
        for (op, value) in [
            ("ne", serde_json::json!("x")),
            ("not_in", serde_json::json!(["x"])),
            ("not_exists", serde_json::Value::Null),
        ] {
            assert!(cond(op, value).holds(None), "{op}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let mut w: Workflow = serde_json::from_value(serde_json::json!({
            "workflow_id": "w1", "name": "Sales", "active": true, "object_type": "Opportunity",
            "triggers": ["created"], "conditions": [{"field": "Stage", "op": "in", "value": "Won"}],
            "activity_type": "Sale", "user_field": "OwnerId"
        }))
        .unwrap();
        let err = w.validate().unwrap_err();
        assert!(err.to_string().contains("needs a list value"), "{err}");
        w.conditions.clear();
        w.triggers.clear();
        assert!(w.validate().unwrap_err().problem.contains("triggers"));
    }
}
