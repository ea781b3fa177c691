//! The limit of a random access, measured next to cachem's reads and
//! writes on a region of N live records: two dependent random loads over a
//! buffer of the region's footprint (a table entry, then the block it
//! points to) plus a 64-byte copy. Everything is measured interleaved, one
//! of each per run, so the ratios compare costs taken under the same load.

use crate::harness::{median, timed, Op, Rng, REC};
use crate::remove_cost::{BLOCK, TABLE_ENTRY};
use crate::stores::{MutexStore, Store};
use cachem::{Cache, Compaction, Config, OwnerId, RecordId};
use std::collections::HashSet;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// Median ns per op of each, over the same runs.
#[derive(Clone, Debug)]
pub struct Access {
    pub live: usize,
    /// Bytes of the stand-in buffer (table + blocks).
    pub footprint: usize,
    /// Bare robust mutex lock + unlock.
    pub pair: f64,
    /// Two dependent random loads + a 64-byte copy, one access at a time
    /// (each access's table index depends on the previous access's bytes:
    /// a pointer chase, so no two accesses overlap).
    pub limit: f64,
    /// The same accesses independent of each other (the CPU may overlap
    /// the misses of several accesses).
    pub limit_overlapped: f64,
    /// lock + insert 64 B + unlock (at N live; removed again untimed).
    pub insert: f64,
    /// lock + get of a random record + 64-byte copy out + unlock.
    pub locked_get: f64,
    /// `Cache::get_into` of a random record (optimistic, no lock).
    pub optimistic_get: f64,
    /// lock + remove of a random record + unlock (re-inserted untimed),
    /// compactions included.
    pub remove: f64,
    /// Removes timed, and the compactions they caused.
    pub removes: usize,
    pub compactions: u64,
}

impl Access {
    /// (short name, table label, ns per op) of each measure.
    pub fn rows(&self) -> [(&'static str, &'static str, f64); 7] {
        [
            ("pair", "bare robust mutex lock + unlock", self.pair),
            (
                "limit",
                "the limit: two dependent random loads + a 64-byte copy, one access at a time",
                self.limit,
            ),
            (
                "unchained",
                "the same accesses independent of each other (misses may overlap)",
                self.limit_overlapped,
            ),
            ("insert", "cachem lock + insert 64 B + unlock", self.insert),
            ("locked get", "cachem lock + get + copy 64 B out + unlock (locked get)", self.locked_get),
            ("optimistic get", "cachem `get_into` (optimistic get)", self.optimistic_get),
            ("remove", "cachem lock + remove of a random record + unlock", self.remove),
        ]
    }

    /// One progress line.
    pub fn summary(&self) -> String {
        let parts: Vec<String> =
            self.rows().iter().map(|&(k, _, v)| format!("{k} {}", crate::report::fmt_ns(v))).collect();
        format!("{} ({} removes, {} compactions)", parts.join(", "), self.removes, self.compactions)
    }
}

/// The stand-in for the region: `n` table entries of `TABLE_ENTRY` bytes,
/// each holding the offset of one of `n` blocks of `BLOCK` bytes (a random
/// permutation, as after churn).
struct Footprint {
    table: Vec<[u64; TABLE_ENTRY / 8]>,
    blocks: Vec<u8>,
}

impl Footprint {
    fn new(n: usize, rng: &mut Rng) -> Footprint {
        let mut perm: Vec<u64> = (0..n as u64).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let table = perm.iter().map(|&b| [b * BLOCK as u64, 0, 0, 0]).collect();
        Footprint { table, blocks: vec![0x5a; n * BLOCK] }
    }

    /// Reads entry `i`, then the 64 data bytes of the block it names (after
    /// its 8-byte header) into `out`.
    #[inline(always)]
    fn access(&self, i: usize, out: &mut [u8; 64]) {
        let off = self.table[i][0] as usize + 8;
        out.copy_from_slice(&self.blocks[off..off + 64]);
    }
}

/// Fills `picks` with distinct random indices below `live` (a chunk of
/// removes must not name one record twice).
fn draw_distinct(rng: &mut Rng, live: usize, picks: &mut [usize], seen: &mut HashSet<usize>) {
    assert!(picks.len() <= live);
    seen.clear();
    for p in picks.iter_mut() {
        *p = loop {
            let i = rng.below(live);
            if seen.insert(i) {
                break i;
            }
        };
    }
}

/// Ns per op: calls `f` (which draws its inputs untimed and returns the
/// time of `ops` timed ops) until `run_time` was timed.
fn per_op(run_time: Duration, ops: usize, mut f: impl FnMut() -> Duration) -> f64 {
    let (mut t, mut n) = (Duration::ZERO, 0u64);
    while t < run_time {
        t += f();
        n += ops as u64;
    }
    t.as_nanos() as f64 / n as f64
}

pub fn measure(dir: &Path, live: usize, runs: usize, run_time: Duration) -> Access {
    const CHUNK: usize = 256;
    let owner = OwnerId(1);
    let size = ((live * (BLOCK + TABLE_ENTRY) * 2 + (8 << 20)) as u64).next_multiple_of(1 << 20);
    let name = format!("access-{live}");
    let cache = Cache::open(&Config::named(&name).dir(dir).size(size).compaction(Compaction::Deferred))
        .expect("open region");
    let mut ids: Vec<RecordId> = Vec::with_capacity(live);
    while ids.len() < live {
        let mut g = cache.lock().expect("lock");
        let n = (live - ids.len()).min(4096);
        ids.extend((0..n).map(|_| g.insert(owner, &REC).expect("insert")));
    }
    let mutex_path = dir.join(format!("access-mutex-{live}"));
    let mut mutex = MutexStore::open(&mutex_path).expect("mutex");
    let mut rng = Rng::new(0xacce55 ^ live as u64);
    let fp = Footprint::new(live, &mut rng);
    let counters = |c: &Cache| c.lock().expect("lock").layout().counters();
    let mut compactions = 0;
    let mut seen = HashSet::new();
    let mut out = [0u8; 64];
    // Indices and the ids they name, drawn untimed before each chunk, so
    // the timed loop reads them in order (no extra random load).
    let mut picks = vec![0usize; CHUNK];
    let mut picked = vec![RecordId::new(0, 0); CHUNK];
    let mut limit_overlapped = Vec::new();
    let (mut pair, mut limit, mut insert, mut locked, mut optimistic, mut remove) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut removes = 0usize;
    let pair_ops = [Op::Get(0); CHUNK];
    // Run 0 is an untimed pass over everything (page faults, caches).
    for run in 0..=runs {
        let keep = run > 0;
        let rt = if keep { run_time } else { run_time / 4 };
        let x = per_op(rt, CHUNK, || timed(|| mutex.exec(&pair_ops)));
        keep.then(|| pair.push(x));
        for (chase, v) in [(true, &mut limit), (false, &mut limit_overlapped)] {
            let x = per_op(rt, CHUNK, || {
                for p in picks.iter_mut() {
                    *p = rng.below(live);
                }
                // Zero, but the compiler cannot know: `i ^ (byte & mask)`
                // makes the next table index depend on the bytes copied.
                let mask = black_box(0usize);
                timed(|| {
                    let mut dep = 0usize;
                    for &i in &picks {
                        fp.access(i ^ (dep & mask), &mut out);
                        dep = if chase { out[0] as usize } else { 0 };
                        black_box(&out);
                    }
                })
            });
            keep.then(|| v.push(x));
        }
        // lock + insert, the records removed again untimed.
        let mut new = Vec::with_capacity(CHUNK);
        let x = per_op(rt, CHUNK, || {
            let t = timed(|| {
                for _ in 0..CHUNK {
                    new.push(cache.lock().expect("lock").insert(owner, black_box(&REC)).expect("insert"));
                }
            });
            let mut g = cache.lock().expect("lock");
            for id in new.drain(..) {
                g.remove(id).expect("remove");
            }
            t
        });
        keep.then(|| insert.push(x));
        let draw_ids = |rng: &mut Rng, picked: &mut [RecordId]| {
            for p in picked.iter_mut() {
                *p = ids[rng.below(live)];
            }
        };
        let x = per_op(rt, CHUNK, || {
            draw_ids(&mut rng, &mut picked);
            timed(|| {
                for &id in &picked {
                    let g = cache.lock().expect("lock");
                    out.copy_from_slice(g.get(black_box(id)).expect("live record"));
                    drop(g);
                    black_box(&out);
                }
            })
        });
        keep.then(|| locked.push(x));
        let x = per_op(rt, CHUNK, || {
            draw_ids(&mut rng, &mut picked);
            timed(|| {
                for &id in &picked {
                    assert_eq!(cache.get_into(black_box(id), &mut out).expect("live record"), 64);
                    black_box(&out);
                }
            })
        });
        keep.then(|| optimistic.push(x));
        // Random removes (each re-inserted untimed, so live stays N), at
        // least N per run so that a run includes about one compaction (one
        // when dead bytes pass the live ones: ~N removes).
        let before = counters(&cache).compactions;
        let (mut t, mut n) = (Duration::ZERO, 0usize);
        while t < rt || (keep && n < live) {
            draw_distinct(&mut rng, live, &mut picks, &mut seen);
            for (p, &i) in picked.iter_mut().zip(&picks) {
                *p = ids[i];
            }
            t += timed(|| {
                for &id in &picked {
                    cache.lock().expect("lock").remove(black_box(id)).expect("remove");
                }
            });
            n += CHUNK;
            let mut g = cache.lock().expect("lock");
            for &i in &picks {
                ids[i] = g.insert(owner, &REC).expect("insert");
            }
        }
        if keep {
            remove.push(t.as_nanos() as f64 / n as f64);
            removes += n;
            compactions += counters(&cache).compactions - before;
        }
    }
    let _ = cache.destroy();
    drop(mutex);
    let _ = std::fs::remove_file(&mutex_path);
    Access {
        live,
        footprint: fp.table.len() * TABLE_ENTRY + fp.blocks.len(),
        pair: median(&pair),
        limit: median(&limit),
        limit_overlapped: median(&limit_overlapped),
        insert: median(&insert),
        locked_get: median(&locked),
        optimistic_get: median(&optimistic),
        remove: median(&remove),
        removes,
        compactions,
    }
}
