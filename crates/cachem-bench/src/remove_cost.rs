//! Remove cost against region size: cachem's `Eager` remove (always
//! compacting) next to a raw `memmove` of the same tail bytes; cachem's
//! `Deferred` remove (amortised over the compactions it causes) and LMDB's
//! delete at the same sizes; and the plot of all four.

use crate::harness::{median, Op, Rng, REC};
use crate::stores::{LmdbStore, Store};
use cachem::{Cache, Compaction, Config, OwnerId, RecordId};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes one 64-byte record takes in the block section (8-byte header).
pub const BLOCK: usize = 72;
/// Bytes one record takes in the block-pointer table.
pub const TABLE_ENTRY: usize = 32;

#[derive(Clone, Debug)]
pub struct Point {
    /// Bytes of live data (the block section).
    pub live_bytes: u64,
    pub records: usize,
    /// Removes timed, over all runs.
    pub removes: usize,
    /// Mean tail bytes moved per remove.
    pub mean_tail: f64,
    /// Median over runs of the mean µs per remove.
    pub cachem_us: f64,
    pub memmove_us: f64,
    /// Median over runs of (cachem time / memmove time) for the same tails.
    pub ratio: f64,
    /// `Deferred`: median over runs of the mean µs per remove.
    pub deferred_us: f64,
    /// Removes timed under `Deferred`, over all runs.
    pub deferred_removes: usize,
    /// Compactions those removes caused.
    pub deferred_compactions: u64,
    /// LMDB (1 delete per write transaction): median of the mean µs.
    pub lmdb_us: f64,
}

/// Address just past a record's data (its block's end: 64 is a multiple
/// of 8, so a block has no padding).
fn data_end(g: &cachem::Guard<'_>, id: RecordId) -> usize {
    g.get(id).expect("live").as_ptr() as usize + REC.len()
}

/// Median cost of an empty `Instant` pair, subtracted from every timing.
fn timer_overhead() -> Duration {
    let mut v: Vec<f64> = (0..2001)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    Duration::from_nanos(v[v.len() / 2] as u64)
}

pub fn measure(dir: &Path, live_bytes: u64, runs: usize, run_time: Duration, min_removes: usize) -> Point {
    let records = live_bytes as usize / BLOCK;
    let size = ((records * (BLOCK + TABLE_ENTRY) + (4 << 20)) as u64).next_multiple_of(1 << 20);
    let name = format!("remove-{live_bytes}");
    let cache = Cache::open(&Config::named(&name).dir(dir).size(size).compaction(Compaction::Eager))
        .expect("open region");
    let owner = OwnerId(1);
    let mut ids: Vec<RecordId> = Vec::with_capacity(records);
    for _ in 0..records.div_ceil(4096) {
        let mut g = cache.lock().expect("lock");
        let n = (records - ids.len()).min(4096);
        ids.extend((0..n).map(|_| g.insert(owner, &REC).expect("insert")));
    }
    // The block section ends where the last inserted record's data ends;
    // every re-insert below lands there again (same size), so it stays put.
    let end = data_end(&cache.lock().expect("lock"), *ids.last().expect("records"));
    let mut buf = vec![0x5au8; records * BLOCK];
    let overhead = timer_overhead();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ live_bytes);
    let (mut cachem_us, mut memmove_us, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut removes, mut tail_sum) = (0usize, 0f64);
    for _ in 0..runs {
        let mut tails = Vec::new();
        let mut t_cachem = Duration::ZERO;
        while t_cachem < run_time || tails.len() < min_removes {
            let k = rng.below(records);
            let tail = end - data_end(&cache.lock().expect("lock"), ids[k]);
            let t = Instant::now();
            cache.lock().expect("lock").remove(black_box(ids[k])).expect("remove");
            t_cachem += t.elapsed().saturating_sub(overhead);
            let mut g = cache.lock().expect("lock");
            ids[k] = g.insert(owner, &REC).expect("insert");
            assert_eq!(data_end(&g, ids[k]), end, "re-insert did not land at the end");
            tails.push(tail);
        }
        let len = buf.len();
        let mut t_mm = Duration::ZERO;
        for &tail in &tails {
            let pos = len - tail - BLOCK;
            let t = Instant::now();
            buf.copy_within(pos + BLOCK..len, pos);
            black_box(buf.as_mut_ptr());
            t_mm += t.elapsed().saturating_sub(overhead);
        }
        let n = tails.len() as f64;
        removes += tails.len();
        tail_sum += tails.iter().sum::<usize>() as f64;
        cachem_us.push(t_cachem.as_secs_f64() * 1e6 / n);
        memmove_us.push(t_mm.as_secs_f64() * 1e6 / n);
        ratios.push(t_cachem.as_secs_f64() / t_mm.as_secs_f64());
    }
    drop(buf);
    let _ = cache.destroy();
    let (deferred_us, deferred_removes, deferred_compactions) =
        measure_deferred(dir, live_bytes, runs, run_time, min_removes, overhead);
    let lmdb_us = measure_lmdb(dir, live_bytes, runs, run_time, min_removes, overhead);
    Point {
        live_bytes,
        records,
        removes,
        mean_tail: tail_sum / removes.max(1) as f64,
        cachem_us: median(&cachem_us),
        memmove_us: median(&memmove_us),
        ratio: median(&ratios),
        deferred_us,
        deferred_removes,
        deferred_compactions,
        lmdb_us,
    }
}

/// The same loop under `Deferred` (lock + remove at a random position +
/// unlock timed; the re-insert untimed), with room for a third more records
/// than live, and at least as many removes per run as records, so each run
/// spans several compactions (one every ~records/3 removes). Returns (median
/// µs per remove, removes timed, compactions).
fn measure_deferred(
    dir: &Path,
    live_bytes: u64,
    runs: usize,
    run_time: Duration,
    min_removes: usize,
    overhead: Duration,
) -> (f64, usize, u64) {
    let records = live_bytes as usize / BLOCK;
    let size = ((records * (BLOCK + TABLE_ENTRY) * 4 / 3 + (4 << 20)) as u64).next_multiple_of(1 << 20);
    let name = format!("remove-deferred-{live_bytes}");
    let cache = Cache::open(&Config::named(&name).dir(dir).size(size).compaction(Compaction::Deferred))
        .expect("open region");
    let owner = OwnerId(1);
    let mut ids: Vec<RecordId> = Vec::with_capacity(records);
    for _ in 0..records.div_ceil(4096) {
        let mut g = cache.lock().expect("lock");
        let n = (records - ids.len()).min(4096);
        ids.extend((0..n).map(|_| g.insert(owner, &REC).expect("insert")));
    }
    let mut rng = Rng::new(0x5eed_defe ^ live_bytes);
    let c0 = cache.lock().expect("lock").status().expect("status").counters.compactions;
    let (mut us, mut removes) = (Vec::new(), 0usize);
    for _ in 0..runs {
        let (mut t_sum, mut n) = (Duration::ZERO, 0usize);
        while t_sum < run_time || n < min_removes.max(records) {
            let k = rng.below(records);
            let t = Instant::now();
            cache.lock().expect("lock").remove(black_box(ids[k])).expect("remove");
            t_sum += t.elapsed().saturating_sub(overhead);
            ids[k] = cache.lock().expect("lock").insert(owner, &REC).expect("insert");
            n += 1;
        }
        removes += n;
        us.push(t_sum.as_secs_f64() * 1e6 / n as f64);
    }
    let c1 = cache.lock().expect("lock").status().expect("status").counters.compactions;
    let _ = cache.destroy();
    (median(&us), removes, c1 - c0)
}

/// LMDB at the same number of records: one delete per write transaction
/// timed, the re-insert untimed.
fn measure_lmdb(
    dir: &Path,
    live_bytes: u64,
    runs: usize,
    run_time: Duration,
    min_removes: usize,
    overhead: Duration,
) -> f64 {
    let records = live_bytes as usize / BLOCK;
    let path = dir.join(format!("remove-lmdb-{live_bytes}"));
    let mut store = LmdbStore::open(&path, 1, 0).expect("open LMDB");
    let slots: Vec<u32> = (0..records as u32).collect();
    store.fill(&slots);
    let mut rng = Rng::new(0x1d_b0 ^ live_bytes);
    let mut us = Vec::new();
    for _ in 0..runs {
        let (mut t_sum, mut n) = (Duration::ZERO, 0usize);
        while t_sum < run_time || n < min_removes {
            let k = rng.below(records) as u32;
            let t = Instant::now();
            store.exec(&[Op::Remove(black_box(k))]);
            t_sum += t.elapsed().saturating_sub(overhead);
            store.exec(&[Op::Insert(k)]);
            n += 1;
        }
        us.push(t_sum.as_secs_f64() * 1e6 / n as f64);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&path);
    median(&us)
}

pub fn human_bytes(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{} GiB", trim(b / (1u64 << 30) as f64))
    } else if b >= (1 << 20) as f64 {
        format!("{} MiB", trim(b / (1 << 20) as f64))
    } else if b >= 1024.0 {
        format!("{} KiB", trim(b / 1024.0))
    } else {
        format!("{b:.0} B")
    }
}

fn trim(x: f64) -> String {
    if (x - x.round()).abs() < 0.05 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Both curves on log-log axes, as SVG.
pub fn plot(points: &[Point], path: &Path, subtitle: &str) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (820, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(56);
    title.draw(&Text::new(
        "remove cost against live data: cachem eager and deferred, LMDB, raw memmove",
        (20, 10),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))?;
    title.draw(&Text::new(
        subtitle.to_string(),
        (20, 34),
        ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
    ))?;
    let xmin = points.iter().map(|p| p.live_bytes as f64).fold(f64::INFINITY, f64::min) / 2.0;
    let xmax = points.iter().map(|p| p.live_bytes as f64).fold(0.0, f64::max) * 2.0;
    let ys = points.iter().flat_map(|p| [p.cachem_us, p.memmove_us, p.deferred_us, p.lmdb_us]);
    let ymin = ys.clone().fold(f64::INFINITY, f64::min) / 3.0;
    let ymax = ys.fold(0.0, f64::max) * 3.0;
    // Key points: powers of 4 bytes on x, decades on y.
    let xkeys: Vec<f64> =
        (10..=32).step_by(2).map(|e| (1u64 << e) as f64).filter(|&x| x >= xmin && x <= xmax).collect();
    let ykeys: Vec<f64> = (-3..=6).map(|e| 10f64.powi(e)).filter(|&y| y >= ymin && y <= ymax).collect();
    let mut chart =
        ChartBuilder::on(&body).margin(16).x_label_area_size(44).y_label_area_size(70).build_cartesian_2d(
            (xmin..xmax).log_scale().with_key_points(xkeys),
            (ymin..ymax).log_scale().with_key_points(ykeys),
        )?;
    chart
        .configure_mesh()
        .x_desc("live data in the region (log)")
        .y_desc("µs per remove (log)")
        .x_label_formatter(&|x| human_bytes(*x))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .label_style(("sans-serif", 13))
        .draw()?;
    let green = RGBColor(0, 140, 60);
    let series = [
        (
            "cachem eager: lock + remove at a random position + unlock",
            RED,
            points.iter().map(|p| p.cachem_us).collect::<Vec<_>>(),
        ),
        (
            "raw memmove (copy_within) of the eager remove's tail bytes",
            BLUE,
            points.iter().map(|p| p.memmove_us).collect(),
        ),
        (
            "cachem deferred: the same, amortised over its compactions",
            green,
            points.iter().map(|p| p.deferred_us).collect(),
        ),
        ("LMDB: one delete per write transaction", MAGENTA, points.iter().map(|p| p.lmdb_us).collect()),
    ];
    for (label, color, ys) in series {
        let pts: Vec<(f64, f64)> = points.iter().zip(&ys).map(|(p, &y)| (p.live_bytes as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))?;
    }
    let target: Vec<(f64, f64)> = points.iter().map(|p| (p.live_bytes as f64, p.memmove_us * 1.3)).collect();
    let grey = BLACK.mix(0.45);
    chart
        .draw_series(DashedLineSeries::new(target, 6, 4, grey.stroke_width(1)))?
        .label("1.3 x memmove (the old eager target)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
    for p in points {
        chart.draw_series(std::iter::once(Text::new(
            format!("{:.1}x", p.ratio),
            (p.live_bytes as f64 * 0.8, p.cachem_us * 1.8),
            ("sans-serif", 12).into_font().color(&BLACK.mix(0.8)),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}
