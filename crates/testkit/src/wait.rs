//! Waiting for a condition: poll, with a deadline, instead of sleeping for a guessed time.

use std::time::{Duration, Instant};

use crate::Error;

/// Calls `probe` every `interval` until it returns a value, and returns that value; fails with
/// [`Error::TimedOut`] once `timeout` has passed, or with the first error `probe` returns (a
/// process under watch that exited, say).
pub fn wait_for<T, E: From<Error>>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::TimedOut { what: what.to_owned(), timeout }.into());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_the_probe_gives() {
        let mut calls = 0;
        let got = wait_for("the third call", Duration::from_secs(10), Duration::ZERO, || {
            calls += 1;
            Ok::<_, Error>((calls == 3).then_some(calls))
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn times_out_naming_what_it_waited_for() {
        let got =
            wait_for("nothing", Duration::from_millis(20), Duration::from_millis(5), || Ok::<Option<()>, Error>(None));
        let message = got.unwrap_err().to_string();
        assert_eq!(message, "timed out after 20ms waiting for nothing");
    }

    #[test]
    fn stops_at_the_probes_error() {
        let got = wait_for("a probe that fails", Duration::from_secs(10), Duration::ZERO, || {
            Err::<Option<()>, _>(Error::NotStarted { log: "gone".into() })
        });
        assert!(matches!(got, Err(Error::NotStarted { .. })));
    }
}
