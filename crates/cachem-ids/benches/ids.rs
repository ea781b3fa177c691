//! Cost of an owner id in the sled store: cold (one lock + sled cycle, in
//! this process), memoised, and the bare sled open/insert/flush/drop cycle
//! the cold path is measured against.
//!
//! `cargo bench -p cachem-ids --bench ids -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;

use cachem_ids::IdRegistry;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");

    let reg = IdRegistry::open(dir.path().join("store"), dir.path().join("lock"), 1).expect("open registry");

    // Criterion calls each routine more than once (warm-up, measurement),
    // so the name counter lives outside it: every name is new.
    let mut i = 0u64;
    c.bench_function("id_cold", |b| {
        b.iter(|| {
            i += 1;
            // A name never asked before: not memoised, one full cycle.
            black_box(reg.id(&format!("name-{i}")).expect("id"))
        })
    });

    c.bench_function("ids_cold_10_names", |b| {
        b.iter(|| {
            let names: Vec<String> = (0..10)
                .map(|k| {
                    i += 1;
                    format!("batch-{i}-{k}")
                })
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            black_box(reg.ids(&refs).expect("ids"))
        })
    });

    reg.id("mod_status").expect("id");
    c.bench_function("id_memoised", |b| b.iter(|| black_box(reg.id(black_box("mod_status")).expect("id"))));

    // The cycle without the registry's lockfile, format and generation
    // checks.
    let mut n = 0u64;
    c.bench_function("bare_sled_cycle", |b| {
        let path = dir.path().join("bare");
        b.iter(|| {
            n += 1;
            let i = n;
            let db = sled::open(&path).expect("sled open");
            db.insert(format!("name-{i}"), &i.to_be_bytes()).expect("insert");
            db.flush().expect("flush");
            drop(db);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
