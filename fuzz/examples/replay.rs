//! Runs the `image` target's logic on files, without libFuzzer (to debug a
//! crash with a plain backtrace): `cargo run --example replay -- FILE...`.
fn main() {
    for f in std::env::args().skip(1) {
        let data = std::fs::read(&f).unwrap();
        println!("{f} ({} bytes)", data.len());
        cachem_fuzz::image_driver::fuzz_image(&data);
    }
}
