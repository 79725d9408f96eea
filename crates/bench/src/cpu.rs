//! CPU time from `/proc`: what a throughput run costs each process, not only how long it takes.
//! On a machine shared by the broker and the system measured, a rate alone cannot say whether
//! a system is slow or starved; CPU per event can.

use std::fs;
use std::time::Duration;

/// Ticks per second of the times in `/proc` (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running kernel; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn ticks(count: u64) -> Duration {
    Duration::from_secs_f64(count as f64 / ticks_per_second())
}

/// CPU time (user and system, all threads) a process has used so far; `None` when it is gone or
/// `/proc` is not there.
pub fn process(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after it start
    // behind the last ')'. utime and stime are fields 14 and 15, so 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(ticks(user + system))
}

/// The machine's busy CPU time so far (not idle, not waiting for I/O), summed over its cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    /// The busy time.
    pub busy: Duration,
}

impl Machine {
    /// Reads `/proc/stat`; `None` when it is not there.
    pub fn now() -> Option<Machine> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
        let total: u64 = values.iter().take(8).sum();
        let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
        Some(Machine { busy: ticks(total.saturating_sub(idle)) })
    }

    /// The share of the machine busy between `earlier` and this reading, in cores.
    pub fn busy_cores_since(&self, earlier: &Machine, wall: Duration) -> f64 {
        self.busy.saturating_sub(earlier.busy).as_secs_f64() / wall.as_secs_f64().max(1e-9)
    }
}

/// CPU a throughput or restore run cost, over the whole run (start-up included).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunCpu {
    /// The system measured: crmflow's process, or this process for what runs in it (the
    /// pass-through, the plain consumer, the restore).
    pub system: Option<Duration>,
    /// The broker's JVM, when this benchmark started it.
    pub broker: Option<Duration>,
    /// The machine as a whole, in cores busy on average.
    pub machine_cores: Option<f64>,
}

/// Readings at the start of a run, to subtract at its end.
#[derive(Debug, Clone, Copy)]
pub struct RunStart {
    system: Option<Duration>,
    broker: Option<Duration>,
    machine: Option<Machine>,
    at: std::time::Instant,
}

impl RunStart {
    /// Reads the counters now; `system` is the measured process if it already runs (`None`
    /// for a process started after this reading, which starts from zero).
    pub fn now(system: Option<u32>, broker: Option<u32>) -> RunStart {
        RunStart {
            system: system.and_then(process),
            broker: broker.and_then(process),
            machine: Machine::now(),
            at: std::time::Instant::now(),
        }
    }

    /// What the run cost since this reading.
    pub fn until_now(&self, system: u32, broker: Option<u32>) -> RunCpu {
        let since = |start: Option<Duration>, now: Option<Duration>| {
            now.map(|now| now.saturating_sub(start.unwrap_or_default()))
        };
        RunCpu {
            system: since(self.system, process(system)),
            broker: broker.and_then(|pid| since(self.broker, process(pid))),
            machine_cores: match (self.machine, Machine::now()) {
                (Some(start), Some(now)) => Some(now.busy_cores_since(&start, self.at.elapsed())),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_the_machine_more() {
        // Spin until a tick of CPU time shows (10 ms at the usual USER_HZ), at most 10 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let own = loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let own = process(std::process::id()).expect("/proc/self/stat is readable on Linux");
            if own > Duration::ZERO || started.elapsed() > Duration::from_secs(10) {
                break own;
            }
        };
        assert!(own > Duration::ZERO, "a busy loop shows in utime: {own:?}");
        let machine = Machine::now().expect("/proc/stat is readable on Linux");
        assert!(machine.busy >= own, "{machine:?} vs {own:?}");
    }

    #[test]
    fn a_process_that_is_gone_has_no_figure() {
        assert_eq!(process(u32::MAX), None);
    }
}
