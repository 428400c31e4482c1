//! The load tester's own scheduling priority. Sharing a machine with the server under test,
//! the load tester yields the cores to it: a server running alone (as in production) does not
//! wait for a load generator's threads before it may forward a packet.

use std::io;

/// Raises the niceness of every thread of this process to at least `nice` (threads started
/// later inherit it from the thread that starts them; a thread already nicer keeps its own);
/// returns how many threads were changed. Linux keeps niceness per thread, so one
/// `setpriority` on the process id would only change the main thread. Processes started
/// before the call (the server under test) keep their own.
pub fn lower_own(nice: i32) -> io::Result<usize> {
    let mut changed = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        match of_thread(tid) {
            Ok(current) if current >= nice => continue,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            _ => {}
        }
        // SAFETY: setpriority has no memory preconditions; a thread that ended meanwhile
        // gives ESRCH, which is skipped.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if r == 0 {
            changed += 1;
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(changed)
}

/// The niceness of one thread, of this process or another (a thread id is system-wide).
pub fn of_thread(tid: u32) -> io::Result<i32> {
    // getpriority may return -1 legitimately, so errno is cleared and checked.
    // SAFETY: errno is thread-local; getpriority has no memory preconditions.
    unsafe { *libc::__errno_location() = 0 };
    let r = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    let e = io::Error::last_os_error();
    if r == -1 && e.raw_os_error() != Some(0) {
        return Err(e);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_and_its_later_children_are_lowered() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let earlier = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            rx.recv().unwrap();
        });
        let earlier_tid = tid_rx.recv().unwrap();
        let before = of_thread(earlier_tid).unwrap();
        let nice = (before + 3).min(19);
        let changed = lower_own(nice).unwrap();
        assert!(before == 19 || changed >= 2, "{changed} threads changed");
        // Never raises a priority: asking for less changes nothing.
        assert_eq!(lower_own(nice - 1).unwrap(), 0);
        assert_eq!(of_thread(earlier_tid).unwrap(), nice);
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        assert_eq!(of_thread(me).unwrap(), nice);
        // SAFETY: gettid has no preconditions.
        let later = std::thread::spawn(|| of_thread(unsafe { libc::gettid() } as u32).unwrap());
        assert_eq!(later.join().unwrap(), nice);
        tx.send(()).unwrap();
        earlier.join().unwrap();
    }
}
