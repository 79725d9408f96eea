//! The other instances of the application, for the HTTP server to forward a query about a
//! company this instance does not hold. Each instance's consumer carries its HTTP address in its
//! `client.id` (`crmflow-<instance_id>@<host>:<port>`); the consumer group's description lists
//! every live member's, so no registry of its own is needed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::error::RunError;

/// How long a member list is reused before the group is described again.
const FRESH_FOR: Duration = Duration::from_secs(5);
/// How long describing the group may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The consumer's `client.id` for an instance serving HTTP at `address` (`host:port`).
pub fn client_id(instance_id: &str, address: &str) -> String {
    format!("crmflow-{instance_id}@{address}")
}

/// The base URL (`http://host:port`) of the member with this `client.id`, as seen from
/// `client_host` (the broker's view of its address, used when it listens on every interface).
/// `None` for a member that serves no HTTP or names no address.
pub fn member_url(client_id: &str, client_host: &str) -> Option<String> {
    let (name, address) = client_id.rsplit_once('@')?;
    if !name.starts_with("crmflow-") {
        return None;
    }
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host {
        "" | "0.0.0.0" | "::" => client_host.trim_start_matches('/'),
        host => host,
    };
    if host.is_empty() {
        return None;
    }
    Some(if host.contains(':') { format!("http://[{host}]:{port}") } else { format!("http://{host}:{port}") })
}

/// Finds the HTTP addresses of the group's other live members.
pub struct Peers {
    client: BaseConsumer,
    group: String,
    own_client_id: String,
    cached: Mutex<Option<(Instant, Vec<String>)>>,
}

impl Peers {
    /// Peers of the instance `config` describes, when it serves HTTP (`None` otherwise).
    pub fn new(config: &Config) -> Result<Option<Peers>, RunError> {
        let Some(own_client_id) = config.http_client_id() else { return Ok(None) };
        let client: BaseConsumer = config
            .client_config()
            .create()
            .map_err(|e| RunError::kafka("creating the client that finds the other instances", e))?;
        Ok(Some(Peers { client, group: config.application_id.clone(), own_client_id, cached: Mutex::new(None) }))
    }

    /// The base URLs of the other live members serving HTTP, described at most every few seconds.
    pub fn others(&self) -> Result<Vec<String>, RunError> {
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, urls)) = cached.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return Ok(urls.clone());
            }
        }
        let groups = self
            .client
            .fetch_group_list(Some(&self.group), DESCRIBE_TIMEOUT)
            .map_err(|e| RunError::kafka(format!("describing the consumer group `{}`", self.group), e))?;
        let urls: Vec<String> = groups
            .groups()
            .iter()
            .flat_map(|group| group.members())
            .filter(|member| member.client_id() != self.own_client_id)
            .filter_map(|member| member_url(member.client_id(), member.client_host()))
            .collect();
        *cached = Some((Instant::now(), urls.clone()));
        Ok(urls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_their_http_address_in_their_client_id() {
        let id = client_id("a", "10.0.0.5:8080");
        assert_eq!(id, "crmflow-a@10.0.0.5:8080");
        assert_eq!(member_url(&id, "/10.0.0.9").as_deref(), Some("http://10.0.0.5:8080"));
        // Listening on every interface: the address the broker saw the member at.
        assert_eq!(member_url("crmflow-a@0.0.0.0:8080", "/10.0.0.9").as_deref(), Some("http://10.0.0.9:8080"));
        assert_eq!(member_url("crmflow-a@[::]:8080", "/fd00::9").as_deref(), Some("http://[fd00::9]:8080"));
        assert_eq!(member_url("crmflow-my@host@h:1", "/x").as_deref(), Some("http://h:1"), "ids may hold `@`");
        assert_eq!(member_url("rdkafka", "/10.0.0.9"), None, "serves no HTTP");
        assert_eq!(member_url("other@h:80", "/10.0.0.9"), None, "not a crmflow instance");
        assert_eq!(member_url("crmflow-a@h:port", "/10.0.0.9"), None);
    }
}
