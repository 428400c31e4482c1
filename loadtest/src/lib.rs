//! `moien-loadtest`: simulated participants that behave like real ones, named scenarios, a ramp
//! that searches capacity, and reports (table, JSON, HTML) comparing Moien with Janus and with a
//! bare UDP forwarder on the same machine. The binary is a thin CLI over [`runner::run`].

pub mod bare;
pub mod forwarding_delay;
pub mod janus;
pub mod moien;
pub mod priority;
pub mod procstat;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod voices;

/// Children this tool starts (servers, Janus, the bare forwarder) die with it, even when it is
/// killed without a chance to clean up.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
