//! Replays every file of tests/fuzz_corpus/ through the logic of the `image`
//! fuzz target (fuzz/fuzz_targets/image.rs), so inputs that once crashed it
//! stay fixed. Add a file there to add a case; `cd fuzz && cargo run
//! --example gen_seeds` rewrites the seed files.
//!
//! The driver is the fuzz target's own file, compiled here as a module.
#[allow(dead_code)]
#[path = "../fuzz/src/image_driver.rs"]
mod image_driver;

use image_driver::fuzz_image;

#[test]
fn replay_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if std::panic::catch_unwind(|| fuzz_image(&data)).is_err() {
            failed.push(f.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(failed.is_empty(), "{} of {} inputs panic: {failed:?}", failed.len(), files.len());
}
