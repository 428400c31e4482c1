//! CPU seconds, waits for a CPU and resident memory of a process, read from `/proc/<pid>/stat`,
//! `/proc/<pid>/task/*/schedstat` and `/proc/<pid>/status` (Linux): how much the server under
//! test cost, whatever it is, and how long it was kept from running.

use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU seconds since the process started (all threads).
    pub cpu_seconds: f64,
    /// Seconds its threads spent runnable but waiting for a CPU, summed over the threads alive
    /// at the reading (the scheduler's `run_delay`); `None` without schedstats in the kernel.
    pub cpu_wait_seconds: Option<f64>,
    pub rss_bytes: u64,
    /// The anonymous part of `rss_bytes` (heap, stacks): what participants make a server
    /// allocate. The rest is file-backed, mostly the server's own code paged in the first time
    /// a path runs, which no participant adds to.
    pub anon_bytes: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat`.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime (in ticks) from the text of `/proc/<pid>/stat`. The command name may contain
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// One `kB` field (such as `VmRSS:` or `RssAnon:`) in bytes from the text of
/// `/proc/<pid>/status`.
pub fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `run_delay` (nanoseconds runnable but not running) from the text of a thread's
/// `/proc/<pid>/task/<tid>/schedstat`: on-CPU time, run delay, time slices.
pub fn parse_schedstat_wait(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// The run delay of every thread of `pid`, summed, in nanoseconds. A thread that ended between
/// the listing and its read is skipped: its waits leave the sum, which a window's difference
/// then undercounts, never overcounts.
fn threads_wait_ns(pid: u32) -> Option<u64> {
    let mut sum = 0;
    let mut any = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        sum += parse_schedstat_wait(&text)?;
        any = true;
    }
    any.then_some(sum)
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        at,
        cpu_seconds: parse_stat_ticks(&stat)? as f64 / ticks_per_second(),
        cpu_wait_seconds: threads_wait_ns(pid).map(|ns| ns as f64 / 1e9),
        rss_bytes: parse_status_field(&status, "VmRSS")?,
        anon_bytes: parse_status_field(&status, "RssAnon")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let stat = "4242 (moien (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 \
                    5 0 999 123456 789 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tmoien\nVmPeak:\t  10 kB\nVmRSS:\t   2048 kB\n\
                      RssAnon:\t    512 kB\nRssAnonX:\t 1 kB\nThreads:\t4\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(2 * 1024 * 1024));
        assert_eq!(parse_status_field(status, "RssAnon"), Some(512 * 1024));
        assert_eq!(parse_status_field("Name: x\n", "VmRSS"), None);
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(
            parse_schedstat_wait("422585000 127412000 3618\n"),
            Some(127_412_000)
        );
        assert_eq!(parse_schedstat_wait("422585000"), None);
        assert_eq!(parse_schedstat_wait("x y z"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.rss_bytes > 0);
        assert!(s.anon_bytes > 0 && s.anon_bytes <= s.rss_bytes);
        assert!(s.cpu_seconds >= 0.0);
        // Where the kernel keeps scheduler statistics (CONFIG_SCHED_INFO, as Debian's), the
        // waits are read.
        if std::path::Path::new("/proc/self/schedstat").exists() {
            assert!(s.cpu_wait_seconds.is_some_and(|w| w >= 0.0), "{s:?}");
        }
    }
}
