//! A `crmflow` child process's environment.

use std::ffi::OsStr;
use std::process::Command;

/// A command for a `crmflow` binary without this process's own `CRMFLOW_…` variables
/// (`CRMFLOW_BLESS`, say), which crmflow would read as configuration: the caller sets what it
/// means, e.g. [`Topics::env`](crate::Topics::env).
pub fn crmflow_command(binary: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("CRMFLOW_")) {
        command.env_remove(name);
    }
    command
}
