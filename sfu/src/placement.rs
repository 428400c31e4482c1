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
//! figure still shows the quiet before). With too few settled participants to estimate from,
//! a worker takes at most [`PACK_UNSETTLED`] unsettled joins by packing. Rooms are placed at
//! their first join and fill afterwards, so joins into existing rooms count too.

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

/// Joins a worker may take by packing while it has too few settled participants to estimate
/// what one costs.
pub const PACK_UNSETTLED: usize = 32;

/// Settled participants needed to estimate a participant's cost from the busy figure.
const ESTIMATE_FROM: usize = 8;

/// How long a join's load takes to show in the busy figure: the handshake before media, then
/// the figure's smoothing (about a second).
pub const JOIN_SETTLE: Duration = Duration::from_secs(2);

/// The worker a new room goes to.
pub fn choose(workers: &[WorkerLoad], pack_load: f64) -> usize {
    if pack_load > 0.0 {
        let packable = |w: &WorkerLoad| expected_busy(w) < pack_load;
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

/// What `busy` will be once the worker's unsettled joins show in it.
fn expected_busy(w: &WorkerLoad) -> f64 {
    if w.unsettled == 0 {
        return w.busy;
    }
    let settled = w.participants.saturating_sub(w.unsettled);
    if settled >= ESTIMATE_FROM {
        w.busy * w.participants as f64 / settled as f64
    } else if w.unsettled < PACK_UNSETTLED {
        w.busy
    } else {
        f64::INFINITY
    }
}

/// One worker's joins within the last [`JOIN_SETTLE`], counted up to [`PACK_UNSETTLED`] (all
/// that placement asks is whether that many were reached, so memory stays bounded).
#[derive(Debug, Default)]
pub struct RecentJoins {
    at: VecDeque<Instant>,
}

impl RecentJoins {
    pub fn record(&mut self, now: Instant) {
        if self.at.len() >= PACK_UNSETTLED {
            // The newest ones keep the count at the cap for longest.
            self.at.pop_front();
        }
        self.at.push_back(now);
    }

    /// Joins within the last [`JOIN_SETTLE`] before `now`, at most [`PACK_UNSETTLED`].
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
        // 40 settled participants keep the worker a fifth busy; 40 more just joined.
        let mut first = load(80, 0.2);
        first.unsettled = 40;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 0);
        // 120 more would take it to 0.8 once they settle: the next room goes elsewhere.
        first.participants = 160;
        first.unsettled = 120;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 1);
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
        for _ in 0..(3 * PACK_UNSETTLED) {
            recent.record(t1);
        }
        assert_eq!(recent.count(t1), PACK_UNSETTLED);
        assert_eq!(recent.at.len(), PACK_UNSETTLED);
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
