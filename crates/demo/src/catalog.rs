//! The fixed vocabulary of the demo: companies, CRMs, people, teams and workflows.
//!
//! Everything here is a pure function of an index, so the generator only spends
//! randomness on what happens, never on what things are called.

use crmflow_domain::{Condition, ConditionValue, Operation, Operator, Scalar, Workflow};

/// Company slugs a viewer recognises; later companies are `company-N`.
const COMPANY_SLUGS: [&str; 12] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "soylent",
    "cyberdyne",
    "tyrell",
    "vandelay",
];

/// The id of the company at `index`.
pub(crate) fn company_id(index: usize) -> String {
    COMPANY_SLUGS.get(index).map_or_else(|| format!("company-{}", index + 1), |slug| (*slug).to_owned())
}

/// Team ids; each company uses a few consecutive ones.
pub(crate) const TEAMS: [&str; 10] =
    ["new-york", "london", "berlin", "singapore", "sao-paulo", "sydney", "toronto", "paris", "tokyo", "austin"];

/// A CRM product, with the shapes of its identifiers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Crm {
    Salesforce,
    Hubspot,
    Pipedrive,
    Dynamics,
}

impl Crm {
    const ALL: [Crm; 4] = [Crm::Salesforce, Crm::Hubspot, Crm::Pipedrive, Crm::Dynamics];

    /// The CRM of a company's `local`-th integration; the company index rotates the
    /// list so that different companies start with different CRMs.
    pub(crate) fn for_integration(company: usize, local: usize) -> Crm {
        Crm::ALL[(company + local) % Crm::ALL.len()]
    }

    /// The name written in `IntegrationSettingsChanged.crm`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Crm::Salesforce => "salesforce",
            Crm::Hubspot => "hubspot",
            Crm::Pipedrive => "pipedrive",
            Crm::Dynamics => "dynamics",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Crm::Salesforce => "sf",
            Crm::Hubspot => "hs",
            Crm::Pipedrive => "pd",
            Crm::Dynamics => "dyn",
        }
    }

    /// The integration id: the CRM's short name, numbered when a company connects
    /// the same CRM more than once.
    pub(crate) fn integration_id(self, local: usize) -> String {
        match local / Crm::ALL.len() {
            0 => self.short().to_owned(),
            n => format!("{}-{}", self.short(), n + 1),
        }
    }

    /// The CRM's id of its `n`-th user, in the CRM's own style.
    pub(crate) fn user_id(self, n: usize) -> String {
        match self {
            Crm::Salesforce => format!("005000000{n:06}"),
            Crm::Hubspot => (51_000_100 + n).to_string(),
            Crm::Pipedrive => (12_000 + n).to_string(),
            Crm::Dynamics => format!("3f2504e0-4f89-11d3-9a0c-{n:012x}"),
        }
    }

    /// The CRM's id of its `n`-th record of a kind.
    pub(crate) fn object_id(self, kind: RecordKind, n: u64) -> String {
        match (self, kind) {
            (Crm::Salesforce, RecordKind::Opportunity) => format!("006000000{n:06}"),
            (Crm::Salesforce, RecordKind::Event) => format!("00U000000{n:06}"),
            (Crm::Dynamics, RecordKind::Opportunity) => format!("opp-{n:08x}"),
            (Crm::Dynamics, RecordKind::Event) => format!("appt-{n:08x}"),
            (_, RecordKind::Opportunity) => format!("deal-{n}"),
            (_, RecordKind::Event) => format!("meeting-{n}"),
        }
    }
}

/// The two CRM object types the demo workflows watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// A sales opportunity (deal).
    Opportunity,
    /// A calendar event (meeting or call).
    Event,
}

impl RecordKind {
    pub(crate) fn object_type(self) -> &'static str {
        match self {
            RecordKind::Opportunity => "Opportunity",
            RecordKind::Event => "Event",
        }
    }
}

const FIRST_NAMES: [&str; 20] = [
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Tim",
    "Hedy",
    "John",
    "Annie",
    "Claude",
    "Mary",
    "Donald",
    "Joan",
];

const LAST_NAMES: [&str; 20] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "McCarthy",
    "Easley",
    "Shannon",
    "Jackson",
    "Knuth",
    "Clarke",
];

/// Name and e-mail of the `person`-th sales rep of a company.
///
/// `(person % 20, (person / 20 + person) % 20)` is a different pair of names for
/// each of the first 400 people; past that a number keeps e-mails unique.
pub(crate) fn person(company_id: &str, person: usize) -> (String, String) {
    let first = FIRST_NAMES[person % FIRST_NAMES.len()];
    let last = LAST_NAMES[(person / FIRST_NAMES.len() + person) % LAST_NAMES.len()];
    let round = person / (FIRST_NAMES.len() * LAST_NAMES.len());
    let local: String = format!("{first}.{last}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect::<String>()
        .to_lowercase();
    let email = match round {
        0 => format!("{local}@{company_id}.test"),
        n => format!("{local}{}@{company_id}.test", n + 1),
    };
    (format!("{first} {last}"), email)
}

/// Customer accounts the deals and meetings are about.
pub(crate) const ACCOUNTS: [&str; 12] = [
    "Northwind",
    "Contoso",
    "Fabrikam",
    "Tailspin",
    "Wide World Importers",
    "Litware",
    "Adventure Works",
    "Proseware",
    "Lucerne",
    "Woodgrove",
    "Blue Yonder",
    "Coho Winery",
];

/// Opportunity stages in pipeline order; the last two are closed.
pub(crate) const STAGES: [&str; 6] =
    ["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed Won", "Closed Lost"];
/// Index of `Closed Won` in [`STAGES`].
pub(crate) const WON: usize = 4;
/// Index of `Closed Lost` in [`STAGES`].
pub(crate) const LOST: usize = 5;
/// Index of `Negotiation`, the last open stage.
pub(crate) const NEGOTIATION: usize = 3;

pub(crate) const REGIONS: [&str; 4] = ["NA", "EMEA", "APAC", "LATAM"];

fn text(s: &str) -> Scalar {
    Scalar::Text(s.to_owned())
}

fn condition(field: &str, op: Operator, value: ConditionValue) -> Condition {
    Condition { field: field.to_owned(), op, value: Some(value) }
}

fn eq(field: &str, value: &str) -> Condition {
    condition(field, Operator::Eq, ConditionValue::One(text(value)))
}

const ALL_OPERATIONS: [Operation; 3] = [Operation::Created, Operation::Updated, Operation::Deleted];

struct Template {
    workflow_id: &'static str,
    name: &'static str,
    active: bool,
    kind: RecordKind,
    conditions: fn() -> Vec<Condition>,
    activity_type: &'static str,
    value_field: Option<&'static str>,
    occurred_at_field: &'static str,
}

/// Every integration gets these two first: they are what the demo is about.
const BASE: [Template; 2] = [
    Template {
        workflow_id: "w-won",
        name: "Won opportunities",
        active: true,
        kind: RecordKind::Opportunity,
        conditions: || vec![eq("StageName", "Closed Won")],
        activity_type: "Sale",
        value_field: Some("Amount"),
        occurred_at_field: "CloseDate",
    },
    Template {
        workflow_id: "w-meetings",
        name: "Booked meetings",
        active: true,
        kind: RecordKind::Event,
        conditions: || vec![eq("Type", "Meeting")],
        activity_type: "Meeting",
        value_field: None,
        occurred_at_field: "StartDateTime",
    },
];

/// Further workflows, handed out in rotation so that a handful of integrations
/// between them show every operator and the inactive workflow.
const EXTRAS: [Template; 4] = [
    Template {
        workflow_id: "w-big-deals",
        name: "Big deals (50k+)",
        active: true,
        kind: RecordKind::Opportunity,
        conditions: || {
            vec![
                eq("StageName", "Closed Won"),
                condition("Amount", Operator::Gte, ConditionValue::One(Scalar::Int(50_000))),
            ]
        },
        activity_type: "BigDeal",
        value_field: Some("Amount"),
        occurred_at_field: "CloseDate",
    },
    Template {
        workflow_id: "w-proposals",
        name: "EMEA & APAC proposals",
        active: true,
        kind: RecordKind::Opportunity,
        conditions: || {
            vec![
                condition("Region", Operator::In, ConditionValue::List(vec![text("EMEA"), text("APAC")])),
                condition("StageName", Operator::In, ConditionValue::List(vec![text("Proposal"), text("Negotiation")])),
            ]
        },
        activity_type: "Proposal",
        value_field: Some("Amount"),
        occurred_at_field: "CloseDate",
    },
    Template {
        workflow_id: "w-renewals",
        name: "Renewals (paused)",
        active: false,
        kind: RecordKind::Opportunity,
        conditions: || vec![eq("Type", "Renewal"), eq("StageName", "Closed Won")],
        activity_type: "Renewal",
        value_field: Some("Amount"),
        occurred_at_field: "CloseDate",
    },
    Template {
        workflow_id: "w-discovery",
        name: "Discovery calls",
        active: true,
        kind: RecordKind::Event,
        conditions: || {
            vec![condition("Subject", Operator::StartsWith, ConditionValue::One(text("discovery"))), eq("Type", "Call")]
        },
        activity_type: "DiscoveryCall",
        value_field: None,
        occurred_at_field: "StartDateTime",
    },
];

/// The `count` workflows of the integration with global index `integration`.
///
/// Past the catalogue the templates repeat with a numbered id, so any count works
/// (a record then matches several copies, which only multiplies the outputs).
pub(crate) fn workflows(integration: usize, count: usize) -> Vec<Workflow> {
    (0..count)
        .map(|slot| {
            let (template, copy) = match slot.checked_sub(BASE.len()) {
                None => (&BASE[slot], 0),
                Some(extra) => (&EXTRAS[(integration + extra) % EXTRAS.len()], extra / EXTRAS.len()),
            };
            let (workflow_id, name) = match copy {
                0 => (template.workflow_id.to_owned(), template.name.to_owned()),
                n => (format!("{}-{}", template.workflow_id, n + 1), format!("{} #{}", template.name, n + 1)),
            };
            Workflow {
                workflow_id,
                name,
                active: template.active,
                object_type: template.kind.object_type().to_owned(),
                triggers: ALL_OPERATIONS.to_vec(),
                conditions: (template.conditions)(),
                activity_type: template.activity_type.to_owned(),
                user_field: "OwnerId".to_owned(),
                value_field: template.value_field.map(str::to_owned),
                occurred_at_field: Some(template.occurred_at_field.to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn company_ids_are_slugs_then_numbered() {
        assert_eq!(company_id(0), "acme");
        assert_eq!(company_id(2), "initech");
        assert_eq!(company_id(12), "company-13");
    }

    #[test]
    fn people_have_distinct_emails() {
        let emails: std::collections::BTreeSet<String> = (0..1000).map(|n| person("acme", n).1).collect();
        assert_eq!(emails.len(), 1000);
        assert_eq!(person("acme", 0), ("Ada Lovelace".into(), "ada.lovelace@acme.test".into()));
    }

    #[test]
    fn every_workflow_is_valid_and_ids_are_unique_per_integration() {
        for integration in 0..6 {
            let all = workflows(integration, 13);
            for w in &all {
                w.validate().unwrap();
            }
            let ids: std::collections::BTreeSet<&str> = all.iter().map(|w| w.workflow_id.as_str()).collect();
            assert_eq!(ids.len(), all.len());
        }
    }

    #[test]
    fn a_few_integrations_show_every_extra() {
        let names: std::collections::BTreeSet<String> =
            (0..4).flat_map(|i| workflows(i, 3)).map(|w| w.workflow_id).collect();
        assert_eq!(names.len(), BASE.len() + EXTRAS.len());
    }
}
