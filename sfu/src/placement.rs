//! Which media worker a new room goes to.
//!
//! A room lives on one worker for its whole life. Below `pack_load` (a share of one core) the
//! first worker takes new rooms: at low load a worker's cost is mostly its wake-ups, and one
//! event loop carrying every packet costs 2-12 % less per forwarded packet than two loops each
//! waking for half of them (docs/PERFORMANCE.md, "Fifth pass"). Once the first
//! worker is busier than that, the next one below it takes the new rooms, and when none is, the
//! one with the fewest participants does. `pack_load = 0` spreads every room that way.
//!
//! The busy figure lags joins: media starts after the handshake, and the figure is smoothed
//! over about a second. So placement counts each worker's joins of the last [`JOIN_SETTLE`]
//! and scales the figure by them, at the cost per participant the worker shows for the rest
//! (a meeting wave at the top of the hour must not land whole on the first worker while its
//! figure still shows the quiet before). Whatever the estimate, a worker takes by packing at
//! most as many unsettled joins as it has settled participants, or [`PACK_UNSETTLED`] if that
//! is more: a quiet lobby of a few muted participants says little about what a wave of joins
//! will cost. Rooms are placed at their first join and fill afterwards, so joins into existing
//! rooms count too.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What placement knows of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerLoad {
    /// Participants placed on the worker (including joins it has not reported yet).
    pub participants: usize,
    /// Participants placed on the worker within the last [`JOIN_SETTLE`]: load its `busy`
    /// figure does not show yet.
    pub unsettled: usize,
    /// Share of one core the worker was busy, smoothed over about a second.
    pub busy: f64,
}

/// Unsettled joins a worker may take by packing however few settled participants it has.
pub const PACK_UNSETTLED: usize = 32;

/// Joins [`RecentJoins`] keeps per worker: past this many within [`JOIN_SETTLE`] the count
/// saturates (a worker holds at most a few thousand participants).
const RECENT_CAP: usize = 4096;

/// Settled participants needed to estimate a participant's cost from the busy figure.
const ESTIMATE_FROM: usize = 8;

/// How long a join's load takes to show in the busy figure: the handshake before media, then
/// the figure's smoothing (about a second).
pub const JOIN_SETTLE: Duration = Duration::from_secs(2);

/// The worker a new room goes to.
pub fn choose(workers: &[WorkerLoad], pack_load: f64) -> usize {
    if pack_load > 0.0 {
        let packable = |w: &WorkerLoad| {
            let settled = w.participants.saturating_sub(w.unsettled);
            w.unsettled < PACK_UNSETTLED.max(settled) && expected_busy(w, settled) < pack_load
        };
        if let Some(i) = workers.iter().position(packable) {
            return i;
        }
    }
    workers
        .iter()
        .enumerate()
        .min_by_key(|(_, w)| w.participants)
        .map_or(0, |(i, _)| i)
}

/// What `busy` will be once the worker's unsettled joins show in it, at the cost per
/// participant its `settled` ones show (with too few of them, the figure as it is).
fn expected_busy(w: &WorkerLoad, settled: usize) -> f64 {
    if w.unsettled == 0 || settled < ESTIMATE_FROM {
        w.busy
    } else {
        w.busy * w.participants as f64 / settled as f64
    }
}

/// One worker's joins within the last [`JOIN_SETTLE`], counted up to [`RECENT_CAP`].
#[derive(Debug, Default)]
pub struct RecentJoins {
    at: VecDeque<Instant>,
}

impl RecentJoins {
    pub fn record(&mut self, now: Instant) {
        if self.at.len() >= RECENT_CAP {
            // The newest ones keep the count at the cap for longest.
            self.at.pop_front();
        }
        self.at.push_back(now);
    }

    /// Joins within the last [`JOIN_SETTLE`] before `now`, at most [`RECENT_CAP`].
    pub fn count(&mut self, now: Instant) -> usize {
        while self
            .at
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= JOIN_SETTLE)
        {
            self.at.pop_front();
        }
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(participants: usize, busy: f64) -> WorkerLoad {
        WorkerLoad {
            participants,
            unsettled: 0,
            busy,
        }
    }

    #[test]
    fn a_lightly_loaded_node_packs_rooms_on_the_first_worker() {
        assert_eq!(choose(&[load(0, 0.0), load(0, 0.0)], 0.5), 0);
        assert_eq!(choose(&[load(120, 0.3), load(0, 0.0)], 0.5), 0);
    }

    #[test]
    fn a_busy_first_worker_hands_new_rooms_to_the_next() {
        assert_eq!(choose(&[load(200, 0.55), load(0, 0.0)], 0.5), 1);
        assert_eq!(
            choose(&[load(200, 0.6), load(150, 0.45), load(0, 0.0)], 0.5),
            1
        );
    }

    #[test]
    fn when_every_worker_is_busy_the_one_with_fewest_participants_takes_the_room() {
        assert_eq!(
            choose(&[load(300, 0.9), load(250, 0.7), load(280, 0.6)], 0.5),
            1
        );
    }

    #[test]
    fn unsettled_joins_count_at_the_cost_the_settled_ones_show() {
        // 100 settled participants keep the worker 0.3 busy; 60 more just joined: 0.48.
        let mut first = load(160, 0.3);
        first.unsettled = 60;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 0);
        // 80 would take it to 0.54 once they settle: the next room goes elsewhere.
        first.participants = 180;
        first.unsettled = 80;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 1);
    }

    #[test]
    fn a_worker_takes_at_most_as_many_unsettled_joins_as_it_has_settled_participants() {
        // A quiet lobby: 8 muted participants cost next to nothing, so the estimate alone
        // would let any wave of joins in.
        let mut first = load(8 + 31, 0.001);
        first.unsettled = 31;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 0);
        first.participants = 8 + 32;
        first.unsettled = 32;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 1);
        // A worker with 100 settled participants may take up to 100 more within the window.
        let mut busy = load(199, 0.1);
        busy.unsettled = 99;
        assert_eq!(choose(&[busy, load(0, 0.0)], 0.5), 0);
        busy.participants = 200;
        busy.unsettled = 100;
        assert_eq!(choose(&[busy, load(0, 0.0)], 0.5), 1);
    }

    #[test]
    fn a_burst_into_an_idle_node_spills_before_any_figure_exists() {
        let mut first = load(PACK_UNSETTLED - 1, 0.0);
        first.unsettled = PACK_UNSETTLED - 1;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 0);
        first.participants = PACK_UNSETTLED;
        first.unsettled = PACK_UNSETTLED;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 1);
        // Both workers took a burst: the one with fewer participants takes the next room.
        let mut second = load(10, 0.0);
        second.unsettled = PACK_UNSETTLED;
        assert_eq!(choose(&[first, second], 0.5), 1);
        // Once the joins settle, the busy figure decides again.
        first.unsettled = 0;
        assert_eq!(choose(&[first, second], 0.5), 0);
    }

    #[test]
    fn joins_settle_after_the_settle_time_and_the_count_stays_bounded() {
        let t0 = Instant::now();
        let mut recent = RecentJoins::default();
        for i in 0..10 {
            recent.record(t0 + Duration::from_millis(i * 100));
        }
        assert_eq!(recent.count(t0 + Duration::from_millis(900)), 10);
        // The first five are older than JOIN_SETTLE 2.45 s after t0; the rest are not.
        assert_eq!(
            recent.count(t0 + JOIN_SETTLE + Duration::from_millis(450)),
            5
        );
        assert_eq!(recent.count(t0 + JOIN_SETTLE + Duration::from_secs(1)), 0);

        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..(RECENT_CAP + 100) {
            recent.record(t1);
        }
        assert_eq!(recent.count(t1), RECENT_CAP);
        assert_eq!(recent.at.len(), RECENT_CAP);
        assert_eq!(recent.count(t1 + JOIN_SETTLE), 0);
    }

    #[test]
    fn without_packing_rooms_spread_over_the_worker_with_fewest_participants() {
        assert_eq!(choose(&[load(8, 0.0), load(0, 0.0)], 0.0), 1);
        // A worker that only looks idle (its figure lags a burst of joins) is not preferred.
        assert_eq!(choose(&[load(8, 0.1), load(16, 0.0)], 0.0), 0);
        assert_eq!(choose(&[load(8, 0.1), load(8, 0.1)], 0.0), 0);
    }

    #[test]
    fn no_worker_figures_still_pick_a_worker() {
        assert_eq!(choose(&[], 0.5), 0);
    }
}
