//! Link arguments of libcachem.so: export only the `cachem_*` functions
//! (the version script `cachem.map`, the same one documented for linking
//! libcachem.a into a shared object) and name the library libcachem.so.0.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/cachem.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcachem.so.0");
    println!("cargo:rerun-if-changed=cachem.map");
    println!("cargo:rerun-if-changed=build.rs");
}
