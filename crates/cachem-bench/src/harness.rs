//! Workload generation and timing, shared by every system.
//!
//! A workload is a sequence of [`Op`]s on *slots*: small integers that each
//! system maps to its own handle (a `RecordId` for cachem, a key for the
//! others). Ops are generated untimed, in chunks, right before they run, so
//! the timed loop is only the system's own work plus one `match` per op.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The 64-byte record (value) every workload writes.
pub const REC: [u8; 64] = [0x5a; 64];

/// One operation on a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert(u32),
    Get(u32),
    Remove(u32),
}

/// xorshift64*: deterministic and cheap; not in any timed loop.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (multiply-shift, no division).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The live set of one process and the op sequences drawn from it.
pub struct Gen {
    live: Vec<u32>,
    free: VecDeque<u32>,
    next_slot: u32,
    rng: Rng,
    /// Index in `live` of the oldest record, for [`Gen::order`]'s FIFO
    /// (`live` is a ring in insertion order while only FIFO changes it).
    head: usize,
}

/// The order of a churn: which record a remove takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Insert a record, then remove it (a request handler's pattern).
    Lifo,
    /// Remove the oldest record, insert a new one (a queue).
    Fifo,
    /// Remove a random record, insert a new one.
    Random,
}

impl Order {
    pub const ALL: [Order; 3] = [Order::Lifo, Order::Fifo, Order::Random];

    pub fn key(self) -> &'static str {
        match self {
            Order::Lifo => "lifo",
            Order::Fifo => "fifo",
            Order::Random => "random",
        }
    }
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen { live: Vec::new(), free: VecDeque::new(), next_slot: 0, rng: Rng::new(seed), head: 0 }
    }

    /// Forget everything (after the store was cleared).
    pub fn reset(&mut self) {
        self.live.clear();
        self.free.clear();
        self.next_slot = 0;
        self.head = 0;
    }

    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Reuses the slot freed longest ago, else a new one.
    fn alloc(&mut self) -> u32 {
        self.free.pop_front().unwrap_or_else(|| {
            let s = self.next_slot;
            self.next_slot += 1;
            s
        })
    }

    fn take_random_live(&mut self) -> u32 {
        let k = self.rng.below(self.live.len());
        let s = self.live.swap_remove(k);
        self.free.push_back(s);
        s
    }

    /// Slots to insert (untimed) to bring the live set to `n`.
    pub fn fill_to(&mut self, n: usize) -> Vec<u32> {
        let mut v = Vec::with_capacity(n.saturating_sub(self.live.len()));
        while self.live.len() < n {
            let s = self.alloc();
            self.live.push(s);
            v.push(s);
        }
        v
    }

    pub fn inserts(&mut self, n: usize) -> Vec<Op> {
        self.fill_to(self.live.len() + n).into_iter().map(Op::Insert).collect()
    }

    pub fn gets(&mut self, n: usize) -> Vec<Op> {
        (0..n).map(|_| Op::Get(self.live[self.rng.below(self.live.len())])).collect()
    }

    /// Removes every live record, in random order.
    pub fn remove_all(&mut self) -> Vec<Op> {
        let mut v = Vec::with_capacity(self.live.len());
        while !self.live.is_empty() {
            v.push(Op::Remove(self.take_random_live()));
        }
        v
    }

    /// Puts `n` never-used slots on the free list (behind any freed ones),
    /// so that an insert takes a slot freed `n` inserts earlier: under
    /// [`Gen::order`] FIFO the keys then advance like a queue's (a new key
    /// past the newest, the oldest removed) instead of reusing the key just
    /// removed, which in a sorted store (LMDB) would hit the same leaf.
    pub fn spare(&mut self, n: usize) {
        for _ in 0..n {
            let s = self.next_slot;
            self.next_slot += 1;
            self.free.push_back(s);
        }
    }

    /// `pairs` (insert, remove) pairs in `order`, `2 * pairs` ops: LIFO
    /// inserts a record and removes it; FIFO removes the oldest live record
    /// and inserts a new one; random removes a random live record and
    /// inserts a new one. The live count stays where it is.
    pub fn order(&mut self, order: Order, pairs: usize) -> Vec<Op> {
        let mut v = Vec::with_capacity(2 * pairs);
        for _ in 0..pairs {
            match order {
                Order::Lifo => {
                    let s = self.alloc();
                    v.push(Op::Insert(s));
                    v.push(Op::Remove(s));
                    self.free.push_back(s);
                }
                Order::Fifo => {
                    if self.head >= self.live.len() {
                        self.head = 0;
                    }
                    let old = self.live[self.head];
                    v.push(Op::Remove(old));
                    self.free.push_back(old);
                    let s = self.alloc();
                    v.push(Op::Insert(s));
                    // The new record takes the oldest's place in the ring:
                    // the next oldest is at head + 1.
                    self.live[self.head] = s;
                    self.head += 1;
                }
                Order::Random => {
                    v.push(Op::Remove(self.take_random_live()));
                    let s = self.alloc();
                    self.live.push(s);
                    v.push(Op::Insert(s));
                }
            }
        }
        v
    }

    /// The churn mix: 50% get, 25% insert, 25% remove of random live
    /// records, keeping the live count within `target` ± `target`/16 (when a
    /// bound is hit, an insert becomes a remove or the reverse, so the mix
    /// stays 50/25/25 on average).
    pub fn churn(&mut self, target: usize, n: usize) -> Vec<Op> {
        let slack = (target / 16).max(4);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let mut kind = self.rng.below(4);
            if kind == 2 && self.live.len() >= target + slack {
                kind = 3;
            } else if (kind == 3 && self.live.len() <= target.saturating_sub(slack).max(1))
                || (kind < 2 && self.live.is_empty())
            {
                kind = 2;
            }
            v.push(match kind {
                0 | 1 => Op::Get(self.live[self.rng.below(self.live.len())]),
                2 => {
                    let s = self.alloc();
                    self.live.push(s);
                    Op::Insert(s)
                }
                _ => Op::Remove(self.take_random_live()),
            });
        }
        v
    }
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Runs per (system, workload); the median is reported.
    pub runs: usize,
    /// Timed time per run (ops run in chunks until this much was timed).
    pub run_time: Duration,
    /// Ops per generated chunk.
    pub chunk: usize,
    /// Seconds per two-process run.
    pub two_proc_secs: f64,
    /// Runs per two-process measurement.
    pub two_proc_runs: usize,
    /// A `--quick` run (smaller sizes, shorter latency runs).
    pub quick: bool,
}

/// One run: calls `step` (which returns ops done and the time it timed)
/// until `run_time` was timed, or 20x that passed on the wall clock (when
/// untimed setup dominates); always at least once. Returns ns per op.
pub fn run_once(run_time: Duration, mut step: impl FnMut() -> (u64, Duration)) -> f64 {
    let wall = Instant::now();
    let (mut ops, mut timed) = (0u64, Duration::ZERO);
    loop {
        let (o, d) = step();
        ops += o;
        timed += d;
        if timed >= run_time || wall.elapsed() >= run_time * 20 {
            break;
        }
    }
    timed.as_nanos() as f64 / ops.max(1) as f64
}

/// Times one call.
pub fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_keeps_the_mix_and_the_size() {
        let mut g = Gen::new(7);
        g.fill_to(1000);
        let ops = g.churn(1000, 100_000);
        let gets = ops.iter().filter(|o| matches!(o, Op::Get(_))).count();
        let ins = ops.iter().filter(|o| matches!(o, Op::Insert(_))).count();
        assert!((gets as f64 / 1e5 - 0.5).abs() < 0.01, "{gets}");
        assert!((ins as f64 / 1e5 - 0.25).abs() < 0.01, "{ins}");
        assert!((1000 - 62..=1000 + 62).contains(&g.live()));
        // Every op refers to a slot that is live at that point.
        let mut live = std::collections::HashSet::new();
        let mut g = Gen::new(9);
        for s in g.fill_to(100) {
            live.insert(s);
        }
        for op in g.churn(100, 10_000) {
            match op {
                Op::Insert(s) => assert!(live.insert(s)),
                Op::Get(s) => assert!(live.contains(&s)),
                Op::Remove(s) => assert!(live.remove(&s)),
            }
        }
    }

    /// Replays `ops` on a model and checks each refers to a live slot (or
    /// inserts a free one); returns the model's live slots in insertion
    /// order (oldest first).
    fn replay(start: &[u32], ops: &[Op]) -> Vec<u32> {
        let mut live: VecDeque<u32> = start.iter().copied().collect();
        for op in ops {
            match *op {
                Op::Insert(s) => {
                    assert!(!live.contains(&s), "insert of live slot {s}");
                    live.push_back(s);
                }
                Op::Remove(s) => {
                    let k = live.iter().position(|&x| x == s).expect("remove of a live slot");
                    live.remove(k);
                }
                Op::Get(s) => assert!(live.contains(&s)),
            }
        }
        live.into()
    }

    #[test]
    fn orders_remove_what_they_say() {
        for order in Order::ALL {
            let mut g = Gen::new(3);
            let start = g.fill_to(50);
            g.spare(50);
            let mut all = Vec::new();
            for _ in 0..7 {
                all.extend(g.order(order, 40));
            }
            assert_eq!(all.len(), 7 * 80);
            assert_eq!(g.live(), 50);
            let end = replay(&start, &all);
            assert_eq!(end.len(), 50);
            let mut model: VecDeque<u32> = start.iter().copied().collect();
            for pair in all.chunks(2) {
                match (order, pair[0], pair[1]) {
                    (Order::Lifo, Op::Insert(a), Op::Remove(b)) => assert_eq!(a, b),
                    (Order::Fifo, Op::Remove(a), Op::Insert(b)) => {
                        assert_eq!(model.pop_front(), Some(a), "FIFO removes the oldest");
                        // With 50 spares, the new key is never the one just removed.
                        assert_ne!(a, b);
                        model.push_back(b);
                    }
                    (Order::Random, Op::Remove(a), Op::Insert(b)) => {
                        let k = model.iter().position(|&x| x == a).expect("live");
                        model.remove(k);
                        model.push_back(b);
                    }
                    (o, x, y) => panic!("{o:?}: unexpected pair {x:?}, {y:?}"),
                }
            }
            if order != Order::Lifo {
                assert_eq!(end, Vec::from(model));
            }
        }
        // Random really is not FIFO: some remove is not of the oldest.
        let mut g = Gen::new(5);
        let start = g.fill_to(100);
        let ops = g.order(Order::Random, 100);
        assert!(ops.chunks(2).zip(&start).any(|(p, &s)| p[0] != Op::Remove(s)));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
