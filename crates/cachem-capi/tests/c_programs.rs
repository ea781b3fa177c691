//! Drives the C tests: compiles each program in `tests/c/` with
//! `cc -Wall -Werror -fsanitize=address,undefined` against the staticlib
//! cargo built for this test run, runs it with a fresh `CACHEM_DIR`, and
//! checks that the header compiles as C++11.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");
/// Libraries a Rust staticlib needs (`--print native-static-libs`).
const NATIVE: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// `target/<profile>/`: where cargo puts libcachem.{a,so}.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Builds libcachem.{a,so} (once per test run) and returns the staticlib.
///
/// `cargo test` does not build a library target that has no rlib for an
/// integration test, so the test asks cargo for it: the build lock is free
/// while tests run, and everything but this crate is already fresh. Without
/// this, the C programs could run against a stale library.
fn staticlib() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let dir = profile_dir();
    let built = BUILT.get_or_init(|| {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet", "-p", "cachem-capi"]).current_dir(CRATE);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(p) => {
                cargo.args(["--profile", p]);
            }
            None => return Err("no profile directory".into()),
        }
        let (ok, out) = run_bounded(cargo, Duration::from_secs(900));
        if ok {
            Ok(())
        } else {
            Err(out)
        }
    });
    if let Err(e) = built {
        panic!("building libcachem failed:\n{e}");
    }
    let lib = dir.join("libcachem.a");
    assert!(lib.exists(), "{} missing after cargo build", lib.display());
    lib
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    let out_path = std::env::temp_dir().join(format!("capi-out-{}-{:?}", std::process::id(), Instant::now()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(s) => (s.success(), format!("{s}\n{text}")),
        None => (false, format!("killed after {limit:?}\n{text}")),
    }
}

/// Compiles `tests/c/<name>.c` with the sanitizers and runs it.
fn compile_and_run(name: &str) {
    let dir = scratch(name);
    let exe = dir.join(name);
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-fno-omit-frame-pointer"])
        .arg("-fsanitize=address,undefined")
        .arg("-fno-sanitize-recover=all")
        .arg(format!("-I{CRATE}/include"))
        .arg(format!("-I{CRATE}/tests/c"))
        .arg(format!("{CRATE}/tests/c/{name}.c"))
        .arg(staticlib())
        .args(NATIVE)
        .arg("-o")
        .arg(&exe);
    let (ok, out) = run_bounded(cc, Duration::from_secs(120));
    assert!(ok, "compiling {name}.c failed:\n{out}");
    let mut run = Command::new(&exe);
    run.env("CACHEM_DIR", dir.join("run"))
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let (ok, out) = run_bounded(run, Duration::from_secs(180));
    assert!(ok, "{name} failed:\n{out}");
    eprintln!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_c_test_program_calls_every_function_and_every_misuse_is_an_error_code() {
    compile_and_run("test_capi");
}

#[test]
fn ids_resolve_in_threads_under_asan_across_fork_and_pid_namespaces() {
    // Issue 22, findings 1, 2, 3, 5 and 6 (the program says which is which).
    compile_and_run("ids_threads");
}

#[test]
fn the_seed_usage_loops_run_in_c_as_a_mod_cachem_user_writes_them() {
    compile_and_run("seed_usage");
}

#[test]
fn the_complete_example_of_docs_c_api_md_compiles_and_runs() {
    let doc = std::fs::read_to_string(format!("{CRATE}/../../docs/c-api.md")).unwrap();
    let start = doc.find("```c\n/* example.c").expect("the example block in docs/c-api.md") + 5;
    let len = doc[start..].find("```").unwrap();
    let dir = scratch("example");
    let src = dir.join("example.c");
    std::fs::write(&src, &doc[start..start + len]).unwrap();
    let exe = dir.join("example");
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined"])
        .arg(format!("-I{CRATE}/include"))
        .arg(&src)
        .arg(staticlib())
        .args(NATIVE)
        .arg("-o")
        .arg(&exe);
    let (ok, out) = run_bounded(cc, Duration::from_secs(120));
    assert!(ok, "the example does not compile:\n{out}");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let mut run = Command::new(&exe);
    run.env("CACHEM_DIR", dir.join("run"));
    let (ok, out) = run_bounded(run, Duration::from_secs(120));
    assert!(ok && out.contains("3 workers, 300 requests"), "the example failed:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_header_compiles_as_cplusplus_11() {
    let dir = scratch("cxx");
    let src = dir.join("check.cc");
    std::fs::write(
        &src,
        r#"#include "cachem.h"
#include <cstdio>
int main() {
    cachem_options_t o = CACHEM_OPTIONS_INIT;
    o.reap = CACHEM_REAP_ALL;
    cachem_error_t err = CACHEM_OK;
    cachem_t *c = cachem_open(nullptr, 1 << 20, &o, &err);
    cachem_index_t i = CACHEM_INVALID_INDEX;
    cachem_id_t id = CACHEM_INVALID_ID;
    if (c) {
        cachem_add(c, "x", 1, id, &i);
        cachem_close(c);
    }
    std::printf("%s\n", cachem_strerror(err));
    return 0;
}
"#,
    )
    .unwrap();
    let mut cxx = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()));
    cxx.args(["-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(format!("-I{CRATE}/include"))
        .arg(&src)
        .arg("-x")
        .arg("none")
        .arg(staticlib())
        .args(NATIVE)
        .arg("-o")
        .arg(dir.join("check"));
    let (ok, out) = run_bounded(cxx, Duration::from_secs(120));
    assert!(ok, "the header does not compile as C++11:\n{out}");
    let (ok, out) = run_bounded(Command::new(dir.join("check")), Duration::from_secs(60));
    assert!(ok && out.contains("success"), "the C++ program failed:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nm -D --defined-only` of a shared object: its exported symbol names.
fn exports(so: &Path) -> Vec<String> {
    let out = Command::new("nm").args(["-D", "--defined-only", "--format=posix"]).arg(so).output().unwrap();
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn the_shared_library_exports_only_cachem_functions() {
    staticlib();
    let so = profile_dir().join("libcachem.so");
    assert!(so.exists(), "{} missing", so.display());
    let syms = exports(&so);
    assert!(syms.iter().any(|s| s == "cachem_open"), "{syms:?}");
    let foreign: Vec<_> = syms.iter().filter(|s| !s.starts_with("cachem_")).collect();
    assert!(foreign.is_empty(), "libcachem.so exports more than cachem_*: {foreign:?}");
    let out = Command::new("readelf").args(["-d"]).arg(&so).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("libcachem.so.0"), "no soname");
}

#[test]
fn a_module_linked_with_the_static_library_and_the_version_script_exports_only_its_own_symbols() {
    let dir = scratch("module");
    let src = dir.join("mod_demo.c");
    std::fs::write(
        &src,
        "#include \"cachem.h\"\nint cachem_module = 1;\nint helper_not_exported(void) { return 2; }\n\
         const char *module_use(void) { return cachem_strerror(0); }\n\
         int module_lock(cachem_t *c) { return (int)cachem_lock(c); }\n",
    )
    .unwrap();
    let so = dir.join("mod_demo.so");
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-shared", "-fPIC", "-Wall", "-Werror"])
        .arg(format!("-I{CRATE}/include"))
        .arg(&src)
        .arg(staticlib())
        .arg(format!("-Wl,--version-script={CRATE}/cachem.map"))
        .args(NATIVE)
        .arg("-o")
        .arg(&so);
    let (ok, out) = run_bounded(cc, Duration::from_secs(120));
    assert!(ok, "linking the module failed:\n{out}");
    let syms = exports(&so);
    assert!(syms.iter().any(|s| s == "cachem_module") && syms.iter().any(|s| s == "cachem_lock"), "{syms:?}");
    let foreign: Vec<_> = syms.iter().filter(|s| !s.starts_with("cachem_")).collect();
    assert!(foreign.is_empty(), "the module exports more than cachem_*: {foreign:?}");
    // Without the script the Rust symbols leak out: the script matters.
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-shared", "-fPIC"]).arg(format!("-I{CRATE}/include")).arg(&src).arg(staticlib()).args(NATIVE);
    cc.arg("-o").arg(dir.join("leaky.so"));
    let (ok, out) = run_bounded(cc, Duration::from_secs(120));
    assert!(ok, "{out}");
    let leaky = exports(&dir.join("leaky.so"));
    assert!(leaky.len() > syms.len() + 100, "expected many Rust symbols without the script: {}", leaky.len());
    let _ = std::fs::remove_dir_all(&dir);
}
