//! Log redaction of client identities (IP addresses, usernames).
//!
//! Owns one process-wide switch, off by default: logs show `[redacted]` instead of an address
//! or username unless the operator sets `log_identities` (Moien's "sovereign by default" rule:
//! TURN logs must not become call records).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static SHOW: AtomicBool = AtomicBool::new(false);

/// Turns identity logging on or off for the whole process.
pub fn set_log_identities(show: bool) {
    SHOW.store(show, Ordering::Relaxed);
}

/// Displays the wrapped value only when identity logging is on.
pub struct Redact<T>(pub T);

impl<T: fmt::Display> fmt::Display for Redact<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SHOW.load(Ordering::Relaxed) {
            self.0.fmt(f)
        } else {
            f.write_str("[redacted]")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_by_default() {
        // Only this test touches the switch, and it restores the default.
        let a: std::net::SocketAddr = "192.0.2.1:5".parse().unwrap();
        assert_eq!(Redact(a).to_string(), "[redacted]");
        set_log_identities(true);
        assert_eq!(Redact(a).to_string(), "192.0.2.1:5");
        set_log_identities(false);
        assert_eq!(Redact("alice").to_string(), "[redacted]");
    }
}
