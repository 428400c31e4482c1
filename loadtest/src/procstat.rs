//! CPU seconds and resident memory of a process, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux): how much the server under test cost, whatever it is.

use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU seconds since the process started (all threads).
    pub cpu_seconds: f64,
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

pub fn sample(pid: u32) -> Option<ProcSample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        at,
        cpu_seconds: parse_stat_ticks(&stat)? as f64 / ticks_per_second(),
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
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.rss_bytes > 0);
        assert!(s.anon_bytes > 0 && s.anon_bytes <= s.rss_bytes);
        assert!(s.cpu_seconds >= 0.0);
    }
}
