//! `crmflow reset`: start an application (or a replay's shadow) over from a point in its inputs.
//!
//! It refuses while the consumer group has live members, naming them. Otherwise it moves the
//! group's offsets on the input topics, deletes the internal topics (the changelog) and the
//! local state directory, and, with `--delete-outputs`, the output and dead-letter topics. The
//! next `crmflow run` then rebuilds state from the start of the inputs and publishes again from
//! the reset point (records before it update state and publish nothing, see
//! `crmflow_runtime::resume`). Outputs have deterministic ids, so what is published again equals
//! what was published before.

use std::fmt;
use std::path::PathBuf;

use crmflow_runtime::operations::{Member, OperationError, Operations};
use crmflow_runtime::Config;

use crate::point::Point;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct ResetRequest {
    /// Where the group's offsets go.
    pub to: Point,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Also delete the output and dead-letter topics.
    pub delete_outputs: bool,
    /// Reset the shadow of `crmflow replay --into SUFFIX` instead of the application (with
    /// `--delete-outputs` its settings copy goes too: nothing of the shadow is left).
    pub shadow: Option<String>,
}

/// Why a reset did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// Instances are still running in the group: moving its offsets would race them.
    #[error(
        "consumer group `{group}` has {} live member(s): {}; stop every crmflow instance of it, wait for the \
         group to be empty (up to session.timeout.ms after a crash), then reset",
        members.len(),
        describe_members(members)
    )]
    LiveMembers {
        /// The group.
        group: String,
        /// Its members.
        members: Vec<Member>,
    },
    /// The shadow's name cannot be used.
    #[error("--shadow: {0}")]
    Shadow(crmflow_runtime::config::ConfigError),
    /// No replay ever ran into that shadow: its topics, if any exist, are not crmflow's to delete.
    #[error(
        "`{suffix}` is not a replay shadow of this application: no replay into it ever ran (consumer group \
         `{group}` has no offsets and its changelog does not exist); nothing was changed"
    )]
    NotAShadow {
        /// The shadow's suffix.
        suffix: String,
        /// The consumer group a replay into it would have.
        group: String,
    },
    /// An input topic is missing.
    #[error("input topic `{0}` does not exist; check `topics` in the configuration")]
    MissingInput(String),
    /// Kafka refused a request.
    #[error(transparent)]
    Operation(#[from] OperationError),
    /// The state directory cannot be deleted.
    #[error("cannot delete the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// `client.id@host (member id)` of each member.
pub fn describe_members(members: &[Member]) -> String {
    members.iter().map(|m| format!("{}@{} ({})", m.client_id, m.host, m.member_id)).collect::<Vec<_>>().join(", ")
}

/// One input partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetMove {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset now (`None`: nothing committed).
    pub from: Option<i64>,
    /// Where it goes.
    pub to: i64,
}

/// What a reset does (or did).
#[derive(Debug, Clone)]
pub struct ResetPlan {
    /// The consumer group (the application id).
    pub group: String,
    /// The reset point.
    pub to: Point,
    /// The offset moves, per input partition.
    pub offsets: Vec<OffsetMove>,
    /// Internal topics that exist and are deleted.
    pub internal_topics: Vec<String>,
    /// The state directory, if it exists (it is deleted).
    pub state_dir: Option<PathBuf>,
    /// Output topics that exist and are deleted (`--delete-outputs`).
    pub output_topics: Vec<String>,
    /// Output topics that exist and stay.
    pub kept_outputs: Vec<String>,
    /// Whether this is only the plan.
    pub dry_run: bool,
    /// The replay shadow reset, if it is one.
    pub shadow: Option<String>,
}

/// Plans the reset of `config`'s application and, unless `--dry-run`, carries it out.
pub fn reset(config: &Config, request: &ResetRequest) -> Result<ResetPlan, ResetError> {
    let mut ops = Operations::connect(config)?;
    let mut plan = match &request.shadow {
        None => plan(&ops, config, request)?,
        Some(suffix) => {
            let copy = crate::replay::settings_copy_topic(config, suffix);
            let has_copy = ops.partitions(&copy).is_some();
            let shadow = config.replay_config(suffix, has_copy).map_err(ResetError::Shadow)?;
            let mut plan = plan(&ops, &shadow, request)?;
            // `<topic>.S` may be anyone's topic: it is a shadow's only where a replay into S ran.
            if plan.internal_topics.is_empty() && plan.offsets.iter().all(|m| m.from.is_none()) {
                return Err(ResetError::NotAShadow { suffix: suffix.clone(), group: shadow.application_id });
            }
            if has_copy && request.delete_outputs {
                plan.output_topics.push(copy);
            }
            plan
        }
    };
    plan.shadow = request.shadow.clone();
    if request.dry_run {
        return Ok(plan);
    }
    let targets = plan.offsets.iter().map(|m| ((m.topic.clone(), m.partition), m.to)).collect();
    // Committing first: it fails if an instance joined since the check, and nothing is lost yet.
    ops.commit_group_offsets(&plan.group, &targets)?;
    let topics: Vec<&str> = plan.internal_topics.iter().chain(&plan.output_topics).map(String::as_str).collect();
    ops.delete_topics(&topics)?;
    if let Some(dir) = &plan.state_dir {
        std::fs::remove_dir_all(dir).map_err(|source| ResetError::StateDir { path: dir.clone(), source })?;
    }
    Ok(plan)
}

fn plan(ops: &Operations, config: &Config, request: &ResetRequest) -> Result<ResetPlan, ResetError> {
    let group = config.application_id.clone();
    let members = ops.group_members(&group)?;
    if !members.is_empty() {
        return Err(ResetError::LiveMembers { group, members });
    }
    let inputs: Vec<&str> = config.topics.inputs().iter().map(|(_, t)| *t).collect();
    if let Some(missing) = inputs.iter().find(|t| ops.partitions(t).is_none()) {
        return Err(ResetError::MissingInput(missing.to_string()));
    }
    let targets = match request.to {
        Point::Earliest => ops.watermarks(&inputs)?.0,
        Point::Time(ms) => ops.offsets_for_time(&inputs, ms)?,
    };
    let committed = ops.committed_offsets(&group, targets.keys().cloned())?;
    let offsets = targets
        .iter()
        .map(|((topic, partition), to)| OffsetMove {
            topic: topic.clone(),
            partition: *partition,
            from: committed.get(&(topic.clone(), *partition)).copied().flatten(),
            to: *to,
        })
        .collect();
    let existing = |names: Vec<String>| names.into_iter().filter(|t| ops.partitions(t).is_some()).collect::<Vec<_>>();
    let outputs = existing(config.topics.outputs().iter().map(|t| t.to_string()).collect());
    let (output_topics, kept_outputs) =
        if request.delete_outputs { (outputs, Vec::new()) } else { (Vec::new(), outputs) };
    Ok(ResetPlan {
        group,
        to: request.to,
        offsets,
        internal_topics: existing(vec![config.changelog_topic()]),
        state_dir: config.state_dir.exists().then(|| config.state_dir.clone()),
        output_topics,
        kept_outputs,
        dry_run: request.dry_run,
        shadow: None,
    })
}

impl fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, done) = if self.dry_run { ("would", "dry run: nothing changed") } else { ("did", "reset done") };
        let what = match &self.shadow {
            Some(suffix) => format!("shadow `{suffix}`"),
            None => "the application".to_owned(),
        };
        writeln!(f, "reset of {what}, consumer group `{}`, to {} ({done})", self.group, self.to)?;
        writeln!(f, "  {verb} move the group's offsets:")?;
        for m in &self.offsets {
            let from = m.from.map_or_else(|| "none".to_owned(), |o| o.to_string());
            writeln!(f, "    {} [{}]: {from} -> {}", m.topic, m.partition, m.to)?;
        }
        let list = |names: &[String]| if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        writeln!(f, "  {verb} delete internal topics: {}", list(&self.internal_topics))?;
        match &self.state_dir {
            Some(dir) => writeln!(f, "  {verb} delete the state directory {}", dir.display())?,
            None => writeln!(f, "  state directory: none there")?,
        }
        if !self.output_topics.is_empty() {
            writeln!(f, "  {verb} delete output topics: {}", list(&self.output_topics))?;
        }
        if !self.kept_outputs.is_empty() {
            writeln!(
                f,
                "  output topics kept (--delete-outputs deletes them): {}; the next run publishes again from {} \
                 (same ids, same content)",
                list(&self.kept_outputs),
                self.to
            )?;
        }
        Ok(())
    }
}
