//! The sled mirror of a region's name table (`docs/ids.md`): `cachem ids`,
//! and the quiet sync after every command that reads or writes names.
//!
//! Only this tool writes the mirror: it runs sled in its own process
//! (`cachem_ids` runs no helper), which is safe here because the tool is
//! single-threaded while it does and never forks without exec. The region's
//! table is authoritative; the mirror is for inspection after the region is
//! gone.

use crate::{CliResult, Fail};
use cachem::{Cache, IdRegistry, MirrorReport, OwnerId};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lockfile that serialises sled in a store: inside the store, so a
/// store outlives its region with nothing left beside it.
pub fn store_lock(store: &Path) -> PathBuf {
    store.join("cachem-ids.lock")
}

fn id_err(store: &Path, e: cachem::IdError) -> Fail {
    Fail(format!("id store {}: {e}", store.display()), 1)
}

/// The region's names (lossy UTF-8: the bytes are not trusted) and its
/// next id.
fn region_names(cache: &Cache) -> CliResult<(Vec<(String, OwnerId)>, u32)> {
    let g = cache.lock()?;
    let names = g.names().into_iter().map(|(n, id)| (String::from_utf8_lossy(&n).into_owned(), id)).collect();
    Ok((names, g.next_owner()))
}

/// Writes the region's name table into its id store (made with the
/// region's mode if missing). `Ok(None)` for a region without a store.
pub fn sync(cache: &Cache) -> CliResult<Option<(PathBuf, MirrorReport)>> {
    let Some(store) = cache.id_store() else { return Ok(None) };
    let (names, next) = region_names(cache)?;
    if !store.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(cachem::region::dir_mode(cache.file_mode()))
            .create(store)
            .map_err(|e| Fail(format!("cannot create the id store {}: {e}", store.display()), 1))?;
    }
    let reg = IdRegistry::new(store, store_lock(store), cache.region().generation());
    let r = reg.mirror(&names, u64::from(next)).map_err(|e| id_err(store, e))?;
    Ok(Some((store.to_path_buf(), r)))
}

/// [`sync`] after a command that read or wrote names: a failure is a
/// warning (the command itself succeeded; the region's table is
/// authoritative).
pub fn sync_quietly(cache: &Cache) {
    if let Err(Fail(msg, _)) = sync(cache) {
        eprintln!("cachem: warning: the id store was not updated: {msg}");
    }
}

/// `cachem ids NAME`: the names of the region and of its store side by
/// side; with `sync`, the store is written first. Without the region (gone),
/// the store's table alone.
pub fn run(
    out: &mut impl Write,
    cache: Option<&Cache>,
    store: &Path,
    sync_first: bool,
    json: bool,
) -> CliResult {
    if sync_first {
        let cache = cache.ok_or_else(|| Fail("--sync needs the region; it does not exist".into(), 1))?;
        if let Some((path, r)) = sync(cache)? {
            eprintln!(
                "synced {}: {} written, {} removed, {} unchanged",
                path.display(),
                r.written,
                r.removed,
                r.unchanged
            );
        }
    }
    let region = cache.map(region_names).transpose()?;
    let stored = cachem::read_store(store, store_lock(store)).map_err(|e| id_err(store, e))?;
    if region.is_none() && stored.is_none() {
        return Err(Fail(format!("no region and no id store at {}", store.display()), 1));
    }
    // (id, name) -> (in the region, in the store)
    let mut rows: std::collections::BTreeMap<(u32, String), (bool, bool)> = Default::default();
    for (n, id) in region.iter().flat_map(|(v, _)| v) {
        rows.entry((id.get(), n.clone())).or_default().0 = true;
    }
    for (n, id) in stored.iter().flat_map(|t| &t.names) {
        rows.entry((id.get(), n.clone())).or_default().1 = true;
    }
    if json {
        let names: Vec<serde_json::Value> = rows
            .iter()
            .map(|((id, n), (r, s))| serde_json::json!({"id": id, "name": n, "in_region": r, "in_store": s}))
            .collect();
        let doc = serde_json::json!({
            "region_generation": cache.map(|c| c.region().generation()),
            "store": store.display().to_string(),
            "store_generation": stored.as_ref().map(|t| t.generation),
            "names": names,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    match (cache, &stored) {
        (Some(c), Some(t)) if t.generation == c.region().generation() => writeln!(
            out,
            "# region generation {:016x}; store {} (same generation)",
            c.region().generation(),
            store.display()
        )?,
        (Some(c), Some(t)) => writeln!(
            out,
            "# region generation {:016x}; store {} holds generation {:016x} (an older region: `--sync` replaces it)",
            c.region().generation(),
            store.display(),
            t.generation
        )?,
        (Some(c), None) => writeln!(
            out,
            "# region generation {:016x}; no store at {} yet (`--sync` writes it)",
            c.region().generation(),
            store.display()
        )?,
        (None, Some(t)) => writeln!(
            out,
            "# no region; store {} (generation {:016x})",
            store.display(),
            t.generation
        )?,
        (None, None) => {}
    }
    writeln!(out, "{:>10}  {:<8} NAME", "ID", "WHERE")?;
    for ((id, n), (r, s)) in &rows {
        let place = match (r, s) {
            (true, true) => "both",
            (true, false) => "region",
            _ => "store",
        };
        writeln!(out, "{id:>10}  {place:<8} {n}")?;
    }
    Ok(())
}
