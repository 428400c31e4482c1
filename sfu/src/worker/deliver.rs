//! Delivering a worker's signaling messages from a companion thread. The worker only reserves
//! each message's place in its participant's queue ([`super::core::Signal`]); handing it over
//! wakes that participant's signaling task, which costs the waking thread a futex call and at
//! times its core. On the worker that time is a stall for every packet behind it: a room's
//! active-speaker change alone is a message to each member. The companion takes those costs,
//! one hand-off per worker wake-up instead of one per message.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tracing::warn;

use super::core::Signal;

/// The companion thread of one worker, and the way to it.
pub(crate) struct Delivery {
    tx: Option<mpsc::Sender<Vec<Signal>>>,
    thread: Option<JoinHandle<()>>,
}

impl Delivery {
    pub fn start(index: usize) -> io::Result<Delivery> {
        // Unbounded in batches, bounded in messages: every message holds a place reserved in
        // a bounded participant queue.
        let (tx, rx) = mpsc::channel::<Vec<Signal>>();
        let thread = std::thread::Builder::new()
            .name(format!("moien-media-{index}-signal"))
            .spawn(move || {
                batch_scheduling();
                for batch in rx {
                    for (permit, msg) in batch {
                        permit.send(msg);
                    }
                }
            })?;
        Ok(Delivery {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands `batch` to the companion, in order after the batches before it.
    pub fn deliver(&self, batch: Vec<Signal>) {
        if batch.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else {
            return;
        };
        if let Err(mpsc::SendError(batch)) = tx.send(batch) {
            // The companion is gone (it cannot panic on these sends): deliver here.
            for (permit, msg) in batch {
                permit.send(msg);
            }
        }
    }
}

impl Drop for Delivery {
    /// Everything handed over is delivered before the worker's thread ends.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("signal delivery thread panicked");
        }
    }
}

/// `SCHED_BATCH` for the calling thread: the scheduler does not let it preempt a running media
/// worker when it wakes (it waits for the tick), and signaling can wait that long. Best
/// effort: any thread may choose it, but a sandbox may refuse.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is this thread; a valid sched_param for SCHED_BATCH.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        warn!(
            "signal delivery: SCHED_BATCH refused ({}); running at normal priority",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moien_protocol::ServerMessage;

    fn msg(n: u64) -> ServerMessage {
        ServerMessage::Pong { timestamp: n }
    }

    #[test]
    fn delivers_in_order_and_everything_before_it_stops() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let d = Delivery::start(0).unwrap();
        for batch in [vec![1, 2, 3], vec![], vec![4, 5]] {
            let signals = batch
                .into_iter()
                .map(|n| (tx.clone().try_reserve_owned().unwrap(), msg(n)))
                .collect();
            d.deliver(signals);
        }
        // The queue's room was taken when the signals were made, not when they are delivered.
        assert_eq!(tx.capacity(), 3);
        drop(d);
        drop(tx);
        let mut got = Vec::new();
        while let Some(m) = rx.blocking_recv() {
            got.push(m);
        }
        assert_eq!(got, (1..=5).map(msg).collect::<Vec<_>>());
    }
}
