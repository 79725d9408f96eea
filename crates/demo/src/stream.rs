//! The generator: a small simulation of sales teams working in their CRMs.
//!
//! The simulation keeps, per integration, a pool of live CRM records and moves them
//! through realistic lifecycles (deals advance and close, amounts get corrected,
//! meetings get rescheduled or cancelled); per user, whether and where they are
//! placed on a team. Each call to `next` emits one event describing one step.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crmflow_domain::{
    ids, CrmRecordChanged, CrmUserProfile, InputEvent, IntegrationSettingsChanged, Operation, Scalar, Timestamp,
    UserAssignedToTeam, UserRemovedFromTeam, Workflow, WorkflowSaved,
};

use crate::catalog::{self, Crm, RecordKind, ACCOUNTS, LOST, NEGOTIATION, REGIONS, STAGES, TEAMS, WON};
use crate::{DemoConfig, DemoEvent};

// How often each kind of step happens, per flow event. Tuned so a minute of the
// default stream at 10 events/s shows every outcome several times.
/// A connector resends an earlier change with the same `event_id`.
const P_RESEND: f64 = 0.02;
/// A placed user moves to another team.
const P_TEAM_MOVE: f64 = 0.01;
/// A placed user is taken off their team (and placed again later).
const P_TEAM_REMOVAL: f64 = 0.005;
/// Below capacity, a CRM step creates a record rather than changing one.
const P_CREATE: f64 = 0.35;
/// A change to an existing record is a delete.
const P_DELETE: f64 = 0.05;
/// A new record has no owner yet (so `missing_user_field`).
const P_MISSING_OWNER: f64 = 0.06;
/// A new record belongs to a user not seen before, while some remain.
const P_NEW_USER: f64 = 0.6;
/// A user is never placed on a team: an admin forgot, the way admins do.
const P_NEVER_PLACED: f64 = 0.08;
/// A change carries the owner's profile (connectors resolve it only sometimes).
const P_PROFILE: f64 = 0.6;
/// An amount arrives as a decimal string, as some connectors send it.
const P_AMOUNT_AS_TEXT: f64 = 0.1;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// A deterministic (seeded) stream of timestamped input events, in timestamp order.
///
/// It first sets up every integration (an `IntegrationSettingsChanged` and its
/// `WorkflowSaved` events), then runs forever: bound it with [`Iterator::take`].
/// It ends only when the configuration has no integration at all.
///
/// ```
/// use crmflow_demo::{DemoConfig, DemoStream};
///
/// let events: Vec<_> = DemoStream::new(DemoConfig::default()).take(100).collect();
/// assert_eq!(events[0].event.type_name(), "IntegrationSettingsChanged");
/// ```
#[derive(Debug, Clone)]
pub struct DemoStream {
    rng: SmallRng,
    start_ms: i64,
    interval_ms: f64,
    /// Events emitted so far: the index of the next one.
    emitted: u64,
    /// The setup events still to emit.
    prelude: VecDeque<Setup>,
    companies: Vec<Company>,
    integrations: Vec<IntegrationSim>,
    /// Team placements to make, by (due event index, sequence number).
    pending: BTreeMap<(u64, u64), UserRef>,
    pending_seq: u64,
    /// Mean number of events between a user's first appearance and their placement.
    placement_delay: u64,
}

/// A setup event, built when emitted so it carries that moment's timestamp.
#[derive(Debug, Clone)]
enum Setup {
    Settings(usize),
    Workflow(usize, Box<Workflow>),
}

#[derive(Debug, Clone)]
struct Company {
    id: String,
    /// The company's teams: a slice of [`TEAMS`].
    teams: Vec<&'static str>,
    /// Counter behind the `{company}-{n}` event ids.
    next_event: u64,
}

impl Company {
    fn event_id(&mut self) -> String {
        self.next_event += 1;
        format!("{}-{}", self.id, self.next_event)
    }
}

#[derive(Debug, Clone, Copy)]
struct UserRef {
    integration: usize,
    user: usize,
}

#[derive(Debug, Clone)]
struct CrmUser {
    crm_user_id: String,
    /// The crmflow account id the core will give this CRM user.
    user_id: String,
    name: String,
    email: String,
    never_placed: bool,
    /// Index into the company's teams.
    team: Option<usize>,
}

#[derive(Debug, Clone)]
struct IntegrationSim {
    company: usize,
    integration_id: String,
    crm: Crm,
    auto_sync: bool,
    users: Vec<CrmUser>,
    /// Users `0..introduced` have appeared on a record.
    introduced: usize,
    /// Live records; a record leaves when deleted or when its story is over.
    records: Vec<Record>,
    capacity: usize,
    next_object: u64,
    /// The last change emitted, for connector resends.
    last_change: Option<CrmRecordChanged>,
}

#[derive(Debug, Clone)]
struct Record {
    kind: RecordKind,
    object_id: String,
    owner: Option<usize>,
    /// Index into [`STAGES`] (opportunities only).
    stage: usize,
    updates: u32,
    fields: BTreeMap<String, Scalar>,
}

impl DemoStream {
    /// Builds the stream; nothing is generated until it is iterated.
    pub fn new(config: DemoConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut companies = Vec::with_capacity(config.companies);
        let mut integrations = Vec::new();
        for c in 0..config.companies {
            let id = catalog::company_id(c);
            // Three to five consecutive cities, starting somewhere different per company.
            let first = rng.random_range(0..TEAMS.len());
            let count = rng.random_range(3..=5);
            let teams = (0..count).map(|t| TEAMS[(first + t) % TEAMS.len()]).collect();
            for local in 0..config.integrations_per_company {
                let crm = Crm::for_integration(c, local);
                let global = integrations.len();
                let integration_id = crm.integration_id(local);
                let users = (0..config.users_per_integration)
                    .map(|n| {
                        let crm_user_id = crm.user_id(n);
                        // People are numbered per company so e-mails never collide
                        // between two integrations of the same company.
                        let (name, email) = catalog::person(&id, local * config.users_per_integration + n);
                        CrmUser {
                            user_id: ids::user_id(&id, &integration_id, &crm_user_id),
                            crm_user_id,
                            name,
                            email,
                            never_placed: rng.random_bool(P_NEVER_PLACED),
                            team: None,
                        }
                    })
                    .collect();
                integrations.push(IntegrationSim {
                    company: c,
                    integration_id,
                    crm,
                    auto_sync: auto_sync(global),
                    users,
                    introduced: 0,
                    records: Vec::new(),
                    capacity: (config.users_per_integration * config.records_per_user).max(1),
                    next_object: 0,
                    last_change: None,
                });
            }
            companies.push(Company { id, teams, next_event: 0 });
        }
        let mut prelude = VecDeque::new();
        for g in 0..integrations.len() {
            prelude.push_back(Setup::Settings(g));
            for w in catalog::workflows(g, config.workflows_per_integration) {
                prelude.push_back(Setup::Workflow(g, Box::new(w)));
            }
        }
        let interval_ms = if config.events_per_second > 0.0 {
            1000.0 / config.events_per_second
        } else {
            // A non-positive (or NaN) rate cannot space anything: every event gets `start_ms`.
            0.0
        };
        let total_users = (integrations.len() * config.users_per_integration) as u64;
        DemoStream {
            rng,
            start_ms: config.start_ms,
            interval_ms: if interval_ms.is_finite() { interval_ms } else { 0.0 },
            emitted: 0,
            prelude,
            companies,
            integrations,
            pending: BTreeMap::new(),
            pending_seq: 0,
            // Comparable to the time a user's next record change takes to come round
            // (about one event per user in the whole stream), so many users get an
            // activity ignored as `user_not_on_team` before being placed, and accepted
            // after; shorter would hide the first, longer the second.
            placement_delay: (total_users * 2 / 3).max(20),
        }
    }

    /// The timestamp of the event with this index: evenly spaced, never decreasing.
    fn timestamp_at(&self, index: u64) -> i64 {
        // Computed from the index rather than accumulated, so rounding never drifts.
        self.start_ms + (index as f64 * self.interval_ms).floor() as i64
    }

    fn setup_event(&self, setup: Setup, now: Timestamp) -> InputEvent {
        match setup {
            Setup::Settings(g) => {
                let integ = &self.integrations[g];
                InputEvent::IntegrationSettingsChanged(IntegrationSettingsChanged {
                    company_id: self.companies[integ.company].id.clone(),
                    integration_id: integ.integration_id.clone(),
                    crm: integ.crm.name().to_owned(),
                    auto_sync_users: integ.auto_sync,
                    changed_at: now,
                })
            }
            Setup::Workflow(g, workflow) => {
                let integ = &self.integrations[g];
                InputEvent::WorkflowSaved(WorkflowSaved {
                    company_id: self.companies[integ.company].id.clone(),
                    integration_id: integ.integration_id.clone(),
                    changed_at: now,
                    workflow: *workflow,
                })
            }
        }
    }

    /// One step of the simulation after setup; `None` when there is nothing to simulate.
    fn flow_event(&mut self, now: Timestamp) -> Option<InputEvent> {
        if self.integrations.is_empty() {
            return None;
        }
        if let Some(event) = self.due_placement(now) {
            return Some(event);
        }
        // Rare steps may find nothing to act on (no placed user yet, nothing to
        // resend); they then fall through to an ordinary CRM change.
        let roll: f64 = self.rng.random();
        let rare = if roll < P_RESEND {
            self.resend()
        } else if roll < P_RESEND + P_TEAM_MOVE {
            self.team_move(now)
        } else if roll < P_RESEND + P_TEAM_MOVE + P_TEAM_REMOVAL {
            self.team_removal(now)
        } else {
            None
        };
        Some(match rare {
            Some(event) => event,
            None => self.crm_change(now),
        })
    }

    fn schedule_placement(&mut self, who: UserRef) {
        let delay = self.rng.random_range(self.placement_delay / 2..=self.placement_delay * 3 / 2);
        self.pending_seq += 1;
        self.pending.insert((self.emitted + delay, self.pending_seq), who);
    }

    fn due_placement(&mut self, now: Timestamp) -> Option<InputEvent> {
        let (&key, &who) = self.pending.iter().next()?;
        if key.0 > self.emitted {
            return None;
        }
        self.pending.remove(&key);
        let integ = &mut self.integrations[who.integration];
        let company = &self.companies[integ.company];
        let user = &mut integ.users[who.user];
        if user.team.is_some() || company.teams.is_empty() {
            return None;
        }
        let team = self.rng.random_range(0..company.teams.len());
        user.team = Some(team);
        Some(InputEvent::UserAssignedToTeam(UserAssignedToTeam {
            company_id: company.id.clone(),
            user_id: user.user_id.clone(),
            team_id: company.teams[team].to_owned(),
            changed_at: now,
        }))
    }

    fn resend(&mut self) -> Option<InputEvent> {
        let g = self.rng.random_range(0..self.integrations.len());
        // A resend repeats the change byte for byte: same event id, same content.
        let change = self.integrations[g].last_change.clone()?;
        Some(InputEvent::CrmRecordChanged(change))
    }

    /// A random user who is on a team right now, if the draw finds one.
    fn placed_user(&mut self) -> Option<UserRef> {
        let integration = self.rng.random_range(0..self.integrations.len());
        let integ = &self.integrations[integration];
        if integ.introduced == 0 {
            return None;
        }
        let user = self.rng.random_range(0..integ.introduced);
        integ.users[user].team.map(|_| UserRef { integration, user })
    }

    fn team_move(&mut self, now: Timestamp) -> Option<InputEvent> {
        let who = self.placed_user()?;
        let integ = &mut self.integrations[who.integration];
        let company = &self.companies[integ.company];
        let user = &mut integ.users[who.user];
        let current = user.team?;
        if company.teams.len() < 2 {
            return None;
        }
        // Any other team: the offset is never zero, so the team really changes.
        let team = (current + self.rng.random_range(1..company.teams.len())) % company.teams.len();
        user.team = Some(team);
        Some(InputEvent::UserAssignedToTeam(UserAssignedToTeam {
            company_id: company.id.clone(),
            user_id: user.user_id.clone(),
            team_id: company.teams[team].to_owned(),
            changed_at: now,
        }))
    }

    fn team_removal(&mut self, now: Timestamp) -> Option<InputEvent> {
        let who = self.placed_user()?;
        let integ = &mut self.integrations[who.integration];
        let company = &self.companies[integ.company];
        let user = &mut integ.users[who.user];
        let team = user.team.take()?;
        let event = InputEvent::UserRemovedFromTeam(UserRemovedFromTeam {
            company_id: company.id.clone(),
            user_id: user.user_id.clone(),
            team_id: company.teams[team].to_owned(),
            changed_at: now,
        });
        // They land on a team again later, so their activities count again.
        self.schedule_placement(who);
        Some(event)
    }

    /// An owner for a record: often a user not seen before, while some remain.
    fn pick_owner(&mut self, integration: usize) -> Option<usize> {
        let integ = &self.integrations[integration];
        if integ.users.is_empty() {
            return None;
        }
        let introduce =
            integ.introduced < integ.users.len() && (integ.introduced == 0 || self.rng.random_bool(P_NEW_USER));
        if !introduce {
            return Some(self.rng.random_range(0..integ.introduced));
        }
        let user = integ.introduced;
        self.integrations[integration].introduced += 1;
        let integ = &self.integrations[integration];
        // Only users of auto-sync integrations ever get an account, so only they are
        // worth placing; the rest stay `user_not_synced` whatever their team.
        if integ.auto_sync && !integ.users[user].never_placed {
            self.schedule_placement(UserRef { integration, user });
        }
        Some(user)
    }

    fn crm_change(&mut self, now: Timestamp) -> InputEvent {
        let g = self.rng.random_range(0..self.integrations.len());
        let (live, capacity) = (self.integrations[g].records.len(), self.integrations[g].capacity);
        let create = live == 0 || (live < capacity && self.rng.random_bool(P_CREATE));
        let (record, operation, keep) = if create {
            (self.new_record(g, now), Operation::Created, true)
        } else {
            let index = self.rng.random_range(0..live);
            if self.rng.random_bool(P_DELETE) {
                (self.integrations[g].records.swap_remove(index), Operation::Deleted, false)
            } else {
                let mut record = self.integrations[g].records.swap_remove(index);
                let keep = self.update_record(g, &mut record, now);
                (record, Operation::Updated, keep)
            }
        };
        let change = self.change_event(g, &record, operation, now);
        let integ = &mut self.integrations[g];
        if keep {
            integ.records.push(record);
        }
        integ.last_change = Some(change.clone());
        InputEvent::CrmRecordChanged(change)
    }

    fn change_event(&mut self, g: usize, record: &Record, operation: Operation, now: Timestamp) -> CrmRecordChanged {
        let with_profile = self.rng.random_bool(P_PROFILE);
        let integ = &self.integrations[g];
        let company = &mut self.companies[integ.company];
        let users = record.owner.filter(|_| with_profile).map(|owner| {
            let user = &integ.users[owner];
            let profile = CrmUserProfile { name: Some(user.name.clone()), email: Some(user.email.clone()) };
            BTreeMap::from([(user.crm_user_id.clone(), profile)])
        });
        CrmRecordChanged {
            event_id: company.event_id(),
            company_id: company.id.clone(),
            integration_id: integ.integration_id.clone(),
            object_type: record.kind.object_type().to_owned(),
            object_id: record.object_id.clone(),
            operation,
            occurred_at: now,
            fields: record.fields.clone(),
            users,
        }
    }

    fn new_record(&mut self, g: usize, now: Timestamp) -> Record {
        let missing_owner = self.rng.random_bool(P_MISSING_OWNER);
        let owner = if missing_owner { None } else { self.pick_owner(g) };
        let kind = if self.rng.random_bool(0.55) { RecordKind::Opportunity } else { RecordKind::Event };
        let integ = &mut self.integrations[g];
        integ.next_object += 1;
        let object_id = integ.crm.object_id(kind, integ.next_object);
        let account = ACCOUNTS[self.rng.random_range(0..ACCOUNTS.len())];
        let mut record = Record { kind, object_id, owner: None, stage: 0, updates: 0, fields: BTreeMap::new() };
        self.set_owner(g, &mut record, owner);
        match kind {
            RecordKind::Opportunity => {
                // Ownerless deals arrive already won (an import), so the missing owner
                // matters to a workflow and shows up as `missing_user_field`.
                let stage = if owner.is_none() { WON } else { pick_weighted(&mut self.rng, &[30, 25, 20, 10, 10, 5]) };
                let seats = self.rng.random_range(5..=400);
                record.set("Name", format!("{account} - {seats} seats"));
                record.set("Region", REGIONS[self.rng.random_range(0..REGIONS.len())]);
                let kind = ["New Business", "Renewal", "Upsell"][pick_weighted(&mut self.rng, &[6, 3, 1])];
                record.set("Type", kind);
                let amount = self.rng.random_range(4..=240) * 500;
                self.set_amount(&mut record, amount);
                let days = if stage == WON { 0 } else { self.rng.random_range(14..=90) };
                record.set("CloseDate", date(now, days));
                record.set_stage(stage);
            }
            RecordKind::Event => {
                let (subject, call) = match self.rng.random_range(0..3) {
                    0 => (format!("Discovery call: {account}"), self.rng.random_bool(0.8)),
                    1 => (format!("Product demo: {account}"), false),
                    _ => (format!("Follow-up: {account}"), self.rng.random_bool(0.3)),
                };
                // Ownerless events are meetings, so the missing owner matters to a
                // workflow and shows up as `missing_user_field`.
                let call = call && owner.is_some();
                record.set("Subject", subject);
                record.set("Type", if call { "Call" } else { "Meeting" });
                let start = on_the_hour(now.0 + self.rng.random_range(1..=14) * DAY_MS);
                record.set("StartDateTime", Timestamp(start).to_string());
                record
                    .fields
                    .insert("DurationMinutes".to_owned(), Scalar::Int([30, 45, 60][self.rng.random_range(0..3)]));
            }
        }
        record
    }

    fn set_owner(&mut self, g: usize, record: &mut Record, owner: Option<usize>) {
        record.owner = owner;
        match owner {
            Some(user) => {
                let id = self.integrations[g].users[user].crm_user_id.clone();
                record.set("OwnerId", id);
            }
            // Connectors say "no owner" both ways: an absent field and an empty one.
            None if self.rng.random_bool(0.5) => record.set("OwnerId", ""),
            None => {
                record.fields.remove("OwnerId");
            }
        }
    }

    fn set_amount(&mut self, record: &mut Record, amount: i64) {
        let value = if self.rng.random_bool(P_AMOUNT_AS_TEXT) {
            Scalar::Text(format!("{amount}.00"))
        } else {
            Scalar::Int(amount)
        };
        record.fields.insert("Amount".to_owned(), value);
    }

    fn amount(record: &Record) -> i64 {
        record.fields.get("Amount").and_then(Scalar::as_number).map_or(10_000, |a| a as i64)
    }

    /// Changes a record the way people do; returns whether it stays live afterwards.
    fn update_record(&mut self, g: usize, record: &mut Record, now: Timestamp) -> bool {
        record.updates += 1;
        if record.owner.is_none() && self.rng.random_bool(0.7) {
            // Someone fills in the owner: the ignored activity now counts.
            let owner = self.pick_owner(g);
            self.set_owner(g, record, owner);
            return true;
        }
        match record.kind {
            RecordKind::Opportunity => self.update_opportunity(g, record, now),
            RecordKind::Event => self.update_event(g, record, now),
        }
    }

    fn update_opportunity(&mut self, g: usize, record: &mut Record, now: Timestamp) -> bool {
        let roll: f64 = self.rng.random();
        match record.stage {
            open if open <= NEGOTIATION => {
                if roll < 0.65 {
                    let next = if open < NEGOTIATION {
                        open + 1
                    } else if self.rng.random_bool(0.7) {
                        WON
                    } else {
                        LOST
                    };
                    if next == WON {
                        record.set("CloseDate", date(now, 0));
                    }
                    record.set_stage(next);
                } else if roll < 0.85 {
                    self.rescale_amount(record);
                } else if roll < 0.95 {
                    let days = self.rng.random_range(7..=30);
                    record.set("CloseDate", date(now, days));
                } else {
                    self.reassign(g, record);
                }
                true
            }
            WON => {
                if roll < 0.40 {
                    // A corrected amount: `revised`.
                    self.rescale_amount(record);
                } else if roll < 0.55 {
                    // The close date was off by a few days: `revised`.
                    let days = self.rng.random_range(1..=5);
                    record.set("CloseDate", date(now, -days));
                } else if roll < 0.70 {
                    // Reopened: the sale no longer counts, `retracted`.
                    record.set_stage(NEGOTIATION);
                } else if roll < 0.85 {
                    // Credit moves to a colleague: retracted for one, recorded for the other.
                    self.reassign(g, record);
                } else {
                    // An edit no workflow reads: no output at all.
                    record.set("Description", format!("Updated by the account team (rev {})", record.updates));
                }
                // A won deal's story ends after a few edits, making room for new ones.
                !(record.updates >= 3 && self.rng.random_bool(0.35))
            }
            _ => {
                if roll < 0.3 {
                    record.set_stage(2);
                    return true;
                }
                record.set("Description", "Lost to a competitor");
                !self.rng.random_bool(0.5)
            }
        }
    }

    fn update_event(&mut self, g: usize, record: &mut Record, now: Timestamp) -> bool {
        let roll: f64 = self.rng.random();
        if roll < 0.5 {
            // Rescheduled: a meeting's date changes, so it is `revised`.
            let start =
                on_the_hour(now.0 + self.rng.random_range(1..=10) * DAY_MS + self.rng.random_range(0..8) * HOUR_MS);
            record.set("StartDateTime", Timestamp(start).to_string());
        } else if roll < 0.65 {
            let was_meeting = matches!(record.fields.get("Type"), Some(Scalar::Text(t)) if t == "Meeting");
            record.set("Type", if was_meeting { "Call" } else { "Meeting" });
        } else if roll < 0.8 {
            self.reassign(g, record);
        } else {
            record.set("Description", format!("Agenda updated (rev {})", record.updates));
        }
        !(record.updates >= 2 && self.rng.random_bool(0.5))
    }

    fn rescale_amount(&mut self, record: &mut Record) {
        let percent = self.rng.random_range(70..=140);
        let amount = (Self::amount(record) * percent / 100 / 500).max(1) * 500;
        self.set_amount(record, amount);
    }

    fn reassign(&mut self, g: usize, record: &mut Record) {
        let owner = self.pick_owner(g);
        self.set_owner(g, record, owner);
    }
}

impl Iterator for DemoStream {
    type Item = DemoEvent;

    fn next(&mut self) -> Option<DemoEvent> {
        let timestamp_ms = self.timestamp_at(self.emitted);
        let now = Timestamp(timestamp_ms);
        let event = match self.prelude.pop_front() {
            Some(setup) => self.setup_event(setup, now),
            None => self.flow_event(now)?,
        };
        self.emitted += 1;
        Some(DemoEvent { timestamp_ms, event })
    }
}

impl Record {
    fn set(&mut self, field: &str, value: impl Into<String>) {
        self.fields.insert(field.to_owned(), Scalar::Text(value.into()));
    }

    fn set_stage(&mut self, stage: usize) {
        self.stage = stage;
        self.set("StageName", STAGES[stage]);
    }
}

/// Whether the integration with this global index syncs users automatically: all
/// but every sixth, starting with the second, so any demo with two integrations
/// shows `user_not_synced` and a lone integration still provisions users.
fn auto_sync(global: usize) -> bool {
    global % 6 != 1
}

/// An index drawn with the given relative weights.
fn pick_weighted(rng: &mut SmallRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (i, w) in weights.iter().enumerate() {
        if roll < *w {
            return i;
        }
        roll -= w;
    }
    weights.len().saturating_sub(1)
}

/// The ISO date `days` after `now`, as CRMs write close dates.
fn date(now: Timestamp, days: i64) -> String {
    let text = Timestamp(now.0 + days * DAY_MS).to_string();
    // RFC 3339 starts with the date; out-of-range instants render otherwise, whole.
    text.get(..10).map_or(text.clone(), str::to_owned)
}

fn on_the_hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}
