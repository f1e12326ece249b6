//! Delta generations: recent deltas combined into windows of growing size, so a peer that fell a
//! little behind gets a small delta instead of the full state.
//!
//! Generation `i` holds at most `max_delta_sizes[i]` values-plus-dots. Every delta the shard
//! broadcasts and every remote delta it merges is pushed into every generation it is contiguous
//! with; a generation that would overflow restarts from the next smaller window. A transfer request
//! is answered with the smallest generation that brings the requester up to our context on every
//! replica it knows; if none does, with the full state.

use std::collections::BTreeMap;

use super::state::{Delta, Rx};

/// The cached generations of one shard, smallest first.
pub(crate) struct Generations {
    caps: Vec<usize>,
    gens: Vec<Delta>,
}

/// The answer to a transfer request.
pub(crate) enum Answer<'a> {
    /// The requester lacks nothing we have.
    UpToDate,
    /// This cached delta is enough.
    Generation(&'a Delta),
    /// Only the full state will do.
    Full,
}

/// Which delta the next generation falls back to when it overflows.
enum Prev {
    Incoming,
    Generation(usize),
    Owned(Delta),
}

impl Generations {
    pub(crate) fn new(caps: Vec<usize>) -> Generations {
        Generations {
            caps,
            gens: Vec::new(),
        }
    }

    /// Pushes a delta; `seed` makes the starting (empty) window when there is none yet.
    pub(crate) fn push(&mut self, delta: &Delta, seed: impl Fn() -> Delta) {
        if self.caps.is_empty() {
            return;
        }
        if self.gens.is_empty() {
            self.gens = self.caps.iter().map(|_| seed()).collect();
        }
        let mut prev = Prev::Incoming;
        for i in 0..self.gens.len() {
            let cap = self.caps.get(i).copied().unwrap_or(0);
            let Some(generation) = self.gens.get_mut(i) else {
                break;
            };
            if !generation.contiguous(delta) {
                prev = Prev::Generation(i);
                continue;
            }
            generation.absorb(delta);
            if generation.size() <= cap {
                prev = Prev::Generation(i);
                continue;
            }
            let restart = match &prev {
                Prev::Incoming => delta.clone(),
                Prev::Generation(j) => self.gens.get(*j).cloned().unwrap_or_default(),
                Prev::Owned(d) => d.clone(),
            };
            if let Some(generation) = self.gens.get_mut(i) {
                prev = Prev::Owned(std::mem::replace(generation, restart));
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.gens.clear();
    }

    pub(crate) fn forget_replica(&mut self, r: Rx) {
        for g in &mut self.gens {
            g.forget_replica(r);
        }
    }

    /// What to answer a requester at `requester` (its clock on the replicas both sides know):
    /// nothing if it is not behind `ours`, else the smallest generation that brings it up to
    /// `ours` everywhere it is behind, else the full state.
    pub(crate) fn choose(
        &self,
        requester: &BTreeMap<Rx, u64>,
        ours: &BTreeMap<Rx, u64>,
    ) -> Answer<'_> {
        let behind: Vec<(Rx, u64, u64)> = requester
            .iter()
            .filter_map(|(r, theirs)| {
                ours.get(r)
                    .filter(|mine| **mine > *theirs)
                    .map(|mine| (*r, *theirs, *mine))
            })
            .collect();
        if behind.is_empty() {
            return Answer::UpToDate;
        }
        let fits = |g: &&Delta| {
            behind.iter().all(|(r, theirs, mine)| {
                g.range
                    .get(r)
                    .is_some_and(|(s, e)| s <= theirs && e >= mine)
            })
        };
        match self.gens.iter().find(fits) {
            Some(g) => Answer::Generation(g),
            None => Answer::Full,
        }
    }

    #[cfg(test)]
    pub(crate) fn sizes(&self) -> Vec<usize> {
        self.gens.iter().map(Delta::size).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::tracker::meta::Meta;
    use crate::tracker::replica::ReplicaId;
    use crate::tracker::state::{State, ME};

    fn keys(d: &Delta) -> Vec<String> {
        let mut k: Vec<String> = d.values.values().map(|e| e.key.to_string()).collect();
        k.sort();
        k
    }

    fn joined(s: &mut State, conn: u64, key: &str) -> Delta {
        s.join(conn, "t", key, Meta::empty()).unwrap();
        s.take_delta_raw()
    }

    #[test]
    fn generations_slide_windows_of_growing_size() {
        let mut s = State::new(ReplicaId::new("a", 1));
        let mut g = Generations::new(vec![2, 5, 6]);
        for (i, k) in ["user1", "user2", "user3"].iter().enumerate() {
            let d = joined(&mut s, i as u64, k);
            g.push(&d, || Delta::fresh(s.context_of(ME).unwrap_or(0)));
        }
        let got: Vec<Vec<String>> = g.gens.iter().map(keys).collect();
        assert_eq!(
            got,
            [
                vec!["user3"],
                vec!["user2", "user3"],
                vec!["user1", "user2", "user3"]
            ]
        );
        assert_eq!(g.sizes(), [2, 4, 6]);
    }

    #[test]
    fn deltas_with_a_gap_between_their_ranges_are_not_contiguous() {
        let mut s = State::new(ReplicaId::new("a", 1));
        let d1 = joined(&mut s, 1, "u1");
        let _lost = joined(&mut s, 2, "u2");
        let d3 = joined(&mut s, 3, "u3");
        assert!(!d1.contiguous(&d3));
        assert!(!d3.contiguous(&d1));
        let mut g = Generations::new(vec![10]);
        g.push(&d1, || Delta::fresh(0));
        g.push(&d3, || Delta::fresh(0));
        assert_eq!(g.gens.iter().map(keys).collect::<Vec<_>>(), [vec!["u1"]]);
    }

    #[test]
    fn a_removal_inside_a_generation_cancels_the_add_but_keeps_the_dot() {
        let mut s = State::new(ReplicaId::new("a", 1));
        let mut g = Generations::new(vec![100]);
        let d = joined(&mut s, 1, "u1");
        g.push(&d, || Delta::fresh(0));
        s.leave(1, "t", "u1");
        let d = s.take_delta_raw();
        g.push(&d, || Delta::fresh(0));
        let gen = &g.gens[0];
        assert!(gen.values.is_empty());
        assert_eq!(gen.clouds.get(&ME).map(|c| c.len()), Some(2));
        assert_eq!(gen.range.get(&ME), Some(&(0, 2)));
    }

    #[test]
    fn forgetting_a_replica_prunes_every_generation() {
        let mut d = Delta::fresh(0);
        d.range.insert(3, (0, 1));
        d.clouds.entry(3).or_default().insert(1);
        let mut g = Generations::new(vec![10, 20]);
        g.push(&d, || Delta::fresh(0));
        g.forget_replica(3);
        assert!(g
            .gens
            .iter()
            .all(|x| !x.range.contains_key(&3) && !x.clouds.contains_key(&3)));
    }

    #[test]
    fn choose_answers_full_without_generations_and_nothing_when_not_behind() {
        let g = Generations::new(vec![10]);
        let ours: BTreeMap<Rx, u64> = [(0, 3)].into();
        assert!(matches!(g.choose(&[(0, 1)].into(), &ours), Answer::Full));
        assert!(matches!(
            g.choose(&[(0, 3)].into(), &ours),
            Answer::UpToDate
        ));
    }

    #[test]
    fn choose_picks_the_smallest_generation_that_covers_the_gap() {
        let mut s = State::new(ReplicaId::new("a", 1));
        let mut g = Generations::new(vec![2, 100]);
        for i in 0..4u64 {
            let d = joined(&mut s, i, &format!("u{i}"));
            g.push(&d, || Delta::fresh(0));
        }
        let ours: BTreeMap<Rx, u64> = [(0, 4)].into();
        let Answer::Generation(small) = g.choose(&[(0, 3)].into(), &ours) else {
            panic!()
        };
        assert_eq!(keys(small), ["u3"]);
        let Answer::Generation(big) = g.choose(&[(0, 1)].into(), &ours) else {
            panic!()
        };
        assert_eq!(keys(big), ["u0", "u1", "u2", "u3"]);
        // A requester behind on a replica no generation covers gets the full state.
        let ours: BTreeMap<Rx, u64> = [(0, 4), (5, 2)].into();
        assert!(matches!(
            g.choose(&[(0, 4), (5, 0)].into(), &ours),
            Answer::Full
        ));
    }
}
