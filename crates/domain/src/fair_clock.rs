//! Weighted shares of admission *over time* (docs/fairness.md, "Weights at small limits").
//!
//! [`crate::fairness::Shares`] splits the sends decided at once. When the chain serves few at
//! once (a small machine, a slow store), a concurrency share rounds to one place per tenant
//! and every weight looks the same. This clock shares the admissions themselves, in the
//! manner of start-time fair queueing: each tenant's admitted sends, each costing
//! `1 / weight`, advance its *virtual finish*; the *virtual time* is the least finish among
//! the tenants that are backlogged (were refused lately: they want more than they get). A
//! tenant whose finish runs more than `slack` ahead of the virtual time is refused until the
//! others catch up, so among backlogged tenants the admissions follow the weights however
//! small the limit.
//!
//! A tenant that is not backlogged is lifted to the virtual time whenever it calls: it cannot
//! bank credit while quiet, and it is never refused for running ahead of tenants that are
//! not asking (work is conserved: a flood alone is limited only by capacity, and a clinic
//! sending a few reminders beside it is always under the virtual time).

use std::collections::HashMap;
use std::hash::Hash;

/// Virtual units one send of weight 1 costs (divisible by every weight up to 10 and by most
/// up to 100, so weights' costs stay exact enough).
pub const UNIT: u64 = 2_520_000;

#[derive(Debug, Clone, Copy)]
struct Lane {
    finish: u64,
    /// Backlogged until this instant (µs, the caller's clock).
    backlogged_until: i64,
}

/// Virtual finish per tenant, and which tenants are backlogged.
#[derive(Debug, Clone)]
pub struct FairClock<K> {
    lanes: HashMap<K, Lane>,
    /// How far (in virtual units) a tenant may run ahead of the virtual time.
    slack: u64,
    /// How long a refusal keeps a tenant backlogged (µs).
    backlog_micros: i64,
    /// The virtual time never goes back (a tenant leaving the backlog must not let the others
    /// fall behind what they were admitted at).
    floor: u64,
}

/// A tenant ran ahead of the backlogged others by this many sends of its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    pub sends: u64,
}

impl<K: Hash + Eq + Clone> FairClock<K> {
    /// `slack_sends`: sends of weight 1 a tenant may be ahead; `backlog_micros`: how long a
    /// refusal counts.
    pub fn new(slack_sends: u64, backlog_micros: i64) -> Self {
        Self {
            lanes: HashMap::new(),
            slack: slack_sends.max(1) * UNIT,
            backlog_micros: backlog_micros.max(1),
            floor: 0,
        }
    }

    fn cost(weight: u32) -> u64 {
        UNIT / u64::from(weight.max(1))
    }

    /// The virtual time at `now`: the least finish among backlogged tenants (never less than
    /// it was), or `None` while nobody is backlogged.
    pub fn virtual_time(&mut self, now: i64) -> Option<u64> {
        let least = self
            .lanes
            .values()
            .filter(|l| l.backlogged_until > now)
            .map(|l| l.finish)
            .min()?;
        self.floor = self.floor.max(least);
        Some(self.floor)
    }

    /// May `tenant` be admitted a send at `now`? `Err` says how far ahead it is.
    pub fn check(&mut self, tenant: &K, now: i64) -> Result<(), Ahead> {
        let Some(v) = self.virtual_time(now) else {
            return Ok(());
        };
        let lane = self.lanes.entry(tenant.clone()).or_insert(Lane {
            finish: v,
            backlogged_until: i64::MIN,
        });
        if lane.backlogged_until <= now {
            // Not backlogged: it gets what it asks, so it starts from the virtual time whatever
            // it did before (no credit banked while quiet, no debt from running alone).
            lane.finish = v;
        }
        let ahead = lane.finish.saturating_sub(v);
        if ahead > self.slack {
            return Err(Ahead {
                sends: (ahead - self.slack).div_ceil(UNIT).max(1),
            });
        }
        Ok(())
    }

    /// `tenant` was admitted a send of `weight`. It starts from the virtual time as [`check`]
    /// last found it (an admission follows a check, and the virtual time never goes back), so
    /// the lanes are not scanned again on the way in.
    ///
    /// [`check`]: FairClock::check
    pub fn admitted(&mut self, tenant: &K, weight: u32) {
        let v = self.floor;
        let lane = self.lanes.entry(tenant.clone()).or_insert(Lane {
            finish: v,
            backlogged_until: i64::MIN,
        });
        lane.finish = lane.finish.max(v) + Self::cost(weight);
    }

    /// `tenant` was refused (or gave up waiting) at `now`: it is backlogged for a while.
    pub fn refused(&mut self, tenant: &K, now: i64) {
        let v = self.virtual_time(now).unwrap_or(self.floor);
        let until = now.saturating_add(self.backlog_micros);
        let lane = self.lanes.entry(tenant.clone()).or_insert(Lane {
            finish: v,
            backlogged_until: until,
        });
        if lane.backlogged_until <= now {
            // Joining the backlog: from the virtual time, not from an old finish.
            lane.finish = v;
        }
        lane.backlogged_until = until;
    }

    /// Forgets tenants neither backlogged nor ahead of the virtual time (they would start from
    /// it anyway), so the map holds only tenants that matter now.
    pub fn prune(&mut self, now: i64) {
        let v = self.virtual_time(now).unwrap_or(self.floor);
        self.lanes
            .retain(|_, l| l.backlogged_until > now || l.finish > v);
        if self.lanes.is_empty() {
            // Nothing to compare with: the scale may start again.
            self.floor = 0;
        }
    }

    /// Tenants remembered (backlogged or ahead).
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: i64 = 1_000;

    /// `weights.len()` tenants all wanting more than the chain serves: each step one place
    /// frees, every tenant asks for it (in a rotating order, as callers would), the first
    /// allowed takes it and the others are refused.
    fn saturate(weights: &[u32], steps: usize) -> Vec<u64> {
        let mut clock = FairClock::new(2, 200 * MS);
        let mut got = vec![0u64; weights.len()];
        let mut now = 0i64;
        for step in 0..steps {
            now += MS / 4;
            let mut placed = false;
            for k in 0..weights.len() {
                let t = (step + k) % weights.len();
                if !placed && clock.check(&t, now).is_ok() {
                    clock.admitted(&t, weights[t]);
                    got[t] += 1;
                    placed = true;
                } else {
                    clock.refused(&t, now);
                }
            }
            if step % 1_000 == 0 {
                clock.prune(now);
            }
        }
        got
    }

    #[test]
    fn backlogged_tenants_are_admitted_in_proportion_to_their_weights() {
        let weights: Vec<u32> = (1..=10).collect();
        let got = saturate(&weights, 55_000);
        let total: u64 = got.iter().sum();
        for (t, w) in weights.iter().enumerate() {
            let want = total as f64 * f64::from(*w) / 55.0;
            let off = (got[t] as f64 - want).abs() / want;
            assert!(
                off < 0.02,
                "tenant of weight {w}: {} of {total}, want {want:.0}",
                got[t]
            );
        }
    }

    #[test]
    fn nobody_is_refused_while_nobody_is_backlogged() {
        let mut clock = FairClock::new(1, 100 * MS);
        for i in 0..1_000 {
            assert_eq!(clock.check(&"flood", i * MS), Ok(()));
            clock.admitted(&"flood", 1);
        }
    }

    #[test]
    fn a_quiet_tenant_beside_a_flood_is_never_refused_and_banks_nothing() {
        let mut clock = FairClock::new(2, 200 * MS);
        let mut now = 0;
        for i in 0..10_000 {
            now = i * MS / 10;
            // The flood wants more than it gets: it is refused now and then and backlogged.
            if clock.check(&"flood", now).is_ok() {
                clock.admitted(&"flood", 1);
            }
            if i % 3 == 0 {
                clock.refused(&"flood", now);
            }
            // The clinic asks every 50 ms and is admitted each time.
            if i % 500 == 0 {
                assert_eq!(clock.check(&"clinic", now), Ok(()), "at {now} µs");
                clock.admitted(&"clinic", 1);
            }
        }
        // A quiet hour later the clinic starts from the virtual time, not far behind it: it
        // cannot take a burst of everything it did not send.
        let later = now + 3_600_000 * MS;
        clock.refused(&"flood", later);
        clock.refused(&"clinic", later);
        let mut clinic_in_a_row = 0;
        while clock.check(&"clinic", later).is_ok() {
            clock.admitted(&"clinic", 1);
            clinic_in_a_row += 1;
        }
        assert!(clinic_in_a_row <= 3, "{clinic_in_a_row} sends in a row");
    }

    #[test]
    fn a_refused_tenant_is_told_how_many_sends_it_is_ahead() {
        let mut clock = FairClock::new(1, 100 * MS);
        clock.refused(&"a", 0);
        clock.refused(&"b", 0);
        for _ in 0..5 {
            let _ = clock.check(&"a", 0);
            clock.admitted(&"a", 1);
        }
        assert_eq!(clock.check(&"a", 0), Err(Ahead { sends: 4 }));
        assert_eq!(clock.check(&"b", 0), Ok(()));
    }

    #[test]
    fn the_backlog_ends_when_refusals_stop() {
        let mut clock = FairClock::new(1, 100 * MS);
        clock.refused(&"a", 0);
        clock.refused(&"b", 0);
        for _ in 0..10 {
            clock.admitted(&"a", 1);
        }
        assert!(clock.check(&"a", 50 * MS).is_err());
        // b stopped wanting more: after the backlog time a is limited only by capacity.
        clock.refused(&"a", 150 * MS);
        assert_eq!(clock.check(&"a", 201 * MS), Ok(()));
        clock.prune(301 * MS);
        assert!(clock.is_empty());
    }

    proptest! {
        /// Whatever the calls, no backlogged tenant is ever more than the slack (plus one
        /// send) ahead of the least backlogged one when it is admitted.
        #[test]
        fn admissions_stay_within_the_slack(
            ops in proptest::collection::vec((0usize..4, 1u32..6, 0u8..3, 0i64..5), 1..800),
        ) {
            let slack = 2;
            let mut clock = FairClock::new(slack, 50 * MS);
            let mut now = 0i64;
            for (t, w, what, dt) in ops {
                now += dt * MS;
                match what {
                    0 => { clock.refused(&t, now); }
                    1 => {
                        if clock.check(&t, now).is_ok() {
                            let v = clock.virtual_time(now);
                            if let (Some(v), Some(l)) = (v, clock.lanes.get(&t)) {
                                prop_assert!(l.finish <= v + slack * UNIT);
                            }
                            clock.admitted(&t, w);
                        }
                    }
                    _ => clock.prune(now),
                }
            }
        }
    }
}
