//! How far each partition is done when records finish out of order (a paced message may wait
//! seconds while later ones go): the committable position of a partition is its lowest record
//! still in flight, or one past the highest record seen when none is.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset started.
    next: i64,
    /// The position last handed out for committing.
    committed: i64,
}

#[derive(Debug, Default)]
pub struct InFlight {
    partitions: HashMap<(String, i32), Partition>,
}

impl InFlight {
    /// A record was taken up.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// A record's effects are durable.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            p.in_flight.remove(&offset);
        }
    }

    /// Records in flight over every partition.
    pub fn len(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions that moved since the last call: (topic, partition, next offset to read).
    pub fn advanced(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            let position = p.in_flight.first().copied().unwrap_or(p.next);
            if position > p.committed {
                p.committed = position;
                out.push((topic.clone(), *partition, position));
            }
        }
        out
    }

    /// Every known position, moved or not (the final commit before stopping).
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.next > 0)
            .map(|((topic, partition), p)| {
                let position = p.in_flight.first().copied().unwrap_or(p.next);
                (topic.clone(), *partition, position)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_commits_only_below_its_oldest_unfinished_record() {
        let mut f = InFlight::default();
        for o in 10..15 {
            f.start("t", 0, o);
        }
        f.finish("t", 0, 11);
        f.finish("t", 0, 12);
        assert_eq!(f.advanced(), vec![("t".to_owned(), 0, 10)]);
        f.finish("t", 0, 10);
        assert_eq!(f.advanced(), vec![("t".to_owned(), 0, 13)]);
        assert!(f.advanced().is_empty(), "nothing moved");
        f.finish("t", 0, 14);
        f.finish("t", 0, 13);
        assert_eq!(f.advanced(), vec![("t".to_owned(), 0, 15)]);
        assert!(f.is_empty());
    }

    #[test]
    fn partitions_advance_independently() {
        let mut f = InFlight::default();
        f.start("t", 0, 5);
        f.start("t", 1, 7);
        f.finish("t", 1, 7);
        let mut moved = f.advanced();
        moved.sort();
        assert_eq!(moved, vec![("t".to_owned(), 0, 5), ("t".to_owned(), 1, 8)]);
        assert_eq!(f.len(), 1);
        f.finish("t", 0, 5);
        assert_eq!(f.advanced(), vec![("t".to_owned(), 0, 6)]);
        let mut all = f.positions();
        all.sort();
        assert_eq!(all, vec![("t".to_owned(), 0, 6), ("t".to_owned(), 1, 8)]);
    }
}
