//! Which media worker a new room goes to.
//!
//! A room lives on one worker for its whole life. Below `pack_load` (a share of one core) the
//! first worker takes new rooms: at low load a worker's cost is mostly its wake-ups, and one
//! event loop carrying every packet costs 2-12 % less per forwarded packet than two loops each
//! waking for half of them (docs/PERFORMANCE.md, "Fifth pass"). Once the first
//! worker is busier than that, the next one below it takes the new rooms, and when none is, the
//! one with the fewest participants does. `pack_load = 0` spreads every room that way.
//!
//! Spreading counts participants, not the busy figure: that figure lags joins by up to a
//! second, so a burst of rooms would all go to whichever worker looked idlest when it began.

/// What placement knows of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerLoad {
    /// Participants placed on the worker (including joins it has not reported yet).
    pub participants: usize,
    /// Participants the worker counted when it last reported `busy`.
    pub measured_participants: usize,
    /// Share of one core the worker was busy, smoothed over about a second.
    pub busy: f64,
}

/// Participants a worker may take by packing beyond those its `busy` figure already covers.
/// Joins outrun the load figure (it lags by up to a second, and media starts after the
/// handshake), so a burst of joins must not all land on the first worker: past this many
/// unreported participants, the worker counts as busy until it reports again.
pub const PACK_UNREPORTED: usize = 32;

/// The worker a new room goes to.
pub fn choose(workers: &[WorkerLoad], pack_load: f64) -> usize {
    if pack_load > 0.0 {
        let packable = |w: &WorkerLoad| {
            w.busy < pack_load
                && w.participants.saturating_sub(w.measured_participants) < PACK_UNREPORTED
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(participants: usize, busy: f64) -> WorkerLoad {
        WorkerLoad {
            participants,
            measured_participants: participants,
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
    fn a_burst_of_joins_spills_before_the_load_figure_catches_up() {
        let mut first = load(0, 0.0);
        first.participants = PACK_UNREPORTED - 1;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 0);
        first.participants = PACK_UNREPORTED;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 1);
        // Once the worker reports, its figure covers those participants again.
        first.measured_participants = PACK_UNREPORTED;
        assert_eq!(choose(&[first, load(0, 0.0)], 0.5), 0);
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
