//! The cost of a remove does not grow with the table. A benchmark of random
//! removes once hid an O(table) remove for the most natural pattern (insert
//! a record, then remove it: the top entry), so this test counts the
//! engine's work (table entries and block headers touched, table entries
//! scanned, words moved: `work_count`), not time, per operation, for every
//! order at 1k and at 100k live records, compactions included, and fails
//! if the larger table costs more than twice as much per operation.

use super::*;
use std::collections::VecDeque;

const SMALL: usize = 1_000;
const LARGE: usize = 100_000;
const REC: [u8; 64] = [0x5a; 64];

#[derive(Clone, Copy, Debug)]
enum Order {
    /// Insert a record, then remove it (a request handler's pattern).
    Lifo,
    /// Remove the oldest record, insert a new one.
    Fifo,
    /// Remove a random record, insert a new one.
    Random,
    /// Remove every record, lowest slot first.
    Ascending,
    /// Remove every record, highest slot first.
    Descending,
    /// Remove every record of one owner of ten (`remove_of_owner`).
    Owner,
    /// Remove the records of one pid of ten, of one owner (`purge`).
    Pid,
}

/// A tiny deterministic generator (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The most work one operation may do, whatever the table's size: a
/// compaction step's budget (256 KiB moved = 32,768 words, 16,384 blocks
/// examined, an entry fixed up per moved block) and the operation itself.
/// A compaction done in one lock hold at 100k records is ~10x this.
const MAX_WORK_PER_OP: u64 = 160_000;

/// Work per operation allowed before a churn stops early (far above what
/// any order needs at any size; an O(table) operation passes it at once,
/// so a regression fails in seconds instead of running for hours).
const BUDGET_PER_OP: u64 = 1_000;

/// Work per operation (an insert or a remove) of `order` at `n` live
/// records: the mean, and the most one operation did.
fn work_per_op(order: Order, n: usize, policy: Compaction) -> (f64, u64) {
    let size = ((n * (72 + 32)) * 3 + (1 << 16)).next_multiple_of(8);
    let mut img = Img::with(size, policy);
    let mut l = img.l();
    // Ten owners (their own owner buckets), ten pids.
    let owner = |i: usize| OwnerId(1 + (i % 10) as u32);
    let pid = |i: usize| 100 + ((i / 10) % 10) as u32;
    let mut ids: Vec<RecordId> = (0..n).map(|i| l.insert(owner(i), tag(pid(i)), &REC).unwrap()).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let churn = 2 * n;
    let before = work_count::get();
    // The most work one operation did.
    let mut most = 0u64;
    let mut last = before;
    let mut op_done = || {
        let now = work_count::get();
        most = most.max(now - last);
        last = now;
    };
    // Stops a churn that has spent its budget: `i` operations done.
    let spent = |i: usize| work_count::get() - before > BUDGET_PER_OP * (i as u64 + 1);
    let ops = match order {
        Order::Lifo => {
            let mut done = 0;
            for i in 0..churn {
                if spent(2 * i) {
                    break;
                }
                done = 2 * (i + 1);
                let id = l.insert(owner(i), tag(pid(i)), &REC).unwrap();
                op_done();
                l.remove(id).unwrap();
                op_done();
            }
            done
        }
        Order::Fifo => {
            let mut q: VecDeque<RecordId> = ids.drain(..).collect();
            let mut done = 0;
            for i in 0..churn {
                if spent(2 * i) {
                    break;
                }
                done = 2 * (i + 1);
                l.remove(q.pop_front().unwrap()).unwrap();
                op_done();
                q.push_back(l.insert(owner(i), tag(pid(i)), &REC).unwrap());
                op_done();
            }
            done
        }
        Order::Random => {
            let mut done = 0;
            for i in 0..churn {
                if spent(2 * i) {
                    break;
                }
                done = 2 * (i + 1);
                let k = rng.below(n);
                l.remove(ids[k]).unwrap();
                op_done();
                ids[k] = l.insert(owner(i), tag(pid(i)), &REC).unwrap();
                op_done();
            }
            done
        }
        Order::Ascending | Order::Descending => {
            ids.sort_by_key(|id| id.slot());
            if matches!(order, Order::Descending) {
                ids.reverse();
            }
            let mut done = 0;
            for (i, id) in ids.iter().enumerate() {
                if spent(i) {
                    break;
                }
                l.remove(*id).unwrap();
                op_done();
                done = i + 1;
            }
            done
        }
        Order::Owner => l.remove_of_owner(owner(3), |_, _| true).unwrap().records,
        Order::Pid => l.purge(owner(3), pid(30)).unwrap(),
    };
    let work = work_count::get() - before;
    l.verify().unwrap();
    assert!(ops > 0, "{order:?} did nothing");
    // (A batch is one call removing many records: its total is not one
    // operation's pause.)
    (work as f64 / ops as f64, most)
}

#[test]
fn remove_costs_do_not_grow_with_the_table() {
    let deferred = [
        Order::Lifo,
        Order::Fifo,
        Order::Random,
        Order::Ascending,
        Order::Descending,
        Order::Owner,
        Order::Pid,
    ];
    // Eager compacts the block section behind every removed record (the
    // seed's "compacted at all times"): O(1) only when nothing lies behind.
    let eager = [Order::Lifo, Order::Descending];
    let cases = deferred
        .iter()
        .map(|o| (*o, Compaction::Deferred))
        .chain(eager.iter().map(|o| (*o, Compaction::Eager)));
    let mut failures = Vec::new();
    for (order, policy) in cases {
        let (small, _) = work_per_op(order, SMALL, policy);
        let (large, most) = work_per_op(order, LARGE, policy);
        println!(
            "{policy:?} {order:?}: {small:.1} at {SMALL}, {large:.1} at {LARGE} per operation; at most {most} in one"
        );
        if large > 2.0 * small + 16.0 {
            failures.push(format!("{policy:?} {order:?}: {small:.1} -> {large:.1}"));
        }
        // Bounded pauses: no single operation does more than a compaction
        // step's work, at any size.
        if most > MAX_WORK_PER_OP {
            failures.push(format!("{policy:?} {order:?}: one operation did {most} at {LARGE}"));
        }
    }
    assert!(
        failures.is_empty(),
        "work per operation grew with the table, or one operation paused long: {failures:?}"
    );
}
