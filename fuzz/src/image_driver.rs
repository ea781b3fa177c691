//! The `image` target's logic: build region images from a fuzz input and
//! drive the layout engine over them. tests/fuzz_regressions.rs compiles this
//! same file as a module to replay tests/fuzz_corpus/.
//!
//! Input: `len >= 4096`: the input is the image (as given, and truncated to a
//! multiple of 8). `len < 4096`: byte 0 picks a size (bits 0-4) and the
//! compaction policy (bit 7: `Deferred`, else `Eager`), byte 1 a population
//! of records (and maybe a crash in the middle of a remove: a compaction
//! journal, or under `Deferred` a block marked dead whose entry was not yet
//! cleared), the rest is a list
//! of patches `[off: u16 LE][n: u8][n bytes]` overlaid on that valid image
//! (bit 15 of `off` counts from the end, where the table and the lock
//! trailer live; a built image's trailer holds an initialised mutex). An
//! image whose immutable header is refused is driven again with it
//! repaired.
//!
//! Each image is also attached as a region file (stamped with this boot and
//! pid namespace, so its mutex bytes are taken as found) and locked with a
//! short timeout: whatever the mutex bytes (kind zeroed, a lock word naming
//! a dead thread, the owner-died or waiters bit set with no waiter), the
//! lock gives an error or a recovered region, never a wait without bound.
use cachem_core as cm;

/// The image that a short input describes (for the seed generator).
pub fn built_image(data: &[u8]) -> Vec<u8> {
    build(data).bytes().to_vec()
}

use cm::bytemuck;
use cm::format::*;
use cm::layout::{check_size, format, FormatOptions, Layout, ProcTag};
use cm::{Compaction, Error, OwnerId, RecordId, RecordMeta};
use std::collections::BTreeMap;

type Snap = BTreeMap<RecordId, (RecordMeta, Vec<u8>)>;

/// An 8-aligned image of `len` bytes.
struct Img(Vec<u64>, usize);

impl Img {
    fn from(b: &[u8]) -> Img {
        let mut img = Img(vec![0; b.len().div_ceil(8)], b.len());
        img.bytes().copy_from_slice(b);
        img
    }
    fn bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.0)[..self.1]
    }
}

pub fn fuzz_image(data: &[u8]) {
    let mut imgs = vec![Img::from(data)];
    if data.len() >= 4096 {
        if data.len() % 8 != 0 {
            imgs.push(Img::from(&data[..data.len() & !7]));
        }
    } else {
        imgs.push(build(data));
    }
    for mut img in imgs {
        drive_region(&mut img);
        if !run(img.bytes(), data) && check_size(img.1 as u64).is_ok() {
            // Repair the immutable fields so the mutable state gets exercised.
            let n = img.1 as u64;
            let b = img.bytes();
            let h: &mut Header = bytemuck::from_bytes_mut(&mut b[..HEADER_SIZE]);
            (h.magic, h.endian, h.format_version) = (MAGIC, ENDIAN_TAG, FORMAT_VERSION);
            (h.header_size, h.bptr_size) = (HEADER_SIZE as u32, BPTR_SIZE as u32);
            (h.region_size, h.o_st, h.options) = (n, HEADER_SIZE as u64, h.options & 3);
            h.compaction =
                if h.compaction == COMPACTION_EAGER { COMPACTION_EAGER } else { COMPACTION_DEFERRED };
            h.trailer_size = TRAILER_SIZE as u32;
            assert!(run(b, data), "a repaired header is refused");
        }
    }
}

/// A valid image with records (maybe mid-remove), then the input's patches.
fn build(data: &[u8]) -> Img {
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let (size, seed) = (4096 + (b(0) as usize & 31) * 512, b(1));
    let mut img = Img(vec![0; size / 8], size);
    let generation = 0x5eed_0000_0000_0001 ^ ((b(0) as u64) << 40);
    let deferred = b(0) & 0x80 != 0;
    let compaction = if deferred { Compaction::Deferred } else { Compaction::Eager };
    format(img.bytes(), &FormatOptions { generation, compaction, ..Default::default() }).unwrap();
    let m = img.bytes()[mutex_offset(size as u64) as usize..].as_mut_ptr().cast();
    // SAFETY: the trailer's mutex bytes lie inside the image, 8-aligned (a
    // Vec<u64>), and no thread uses them as a mutex; the image is copied
    // into a region file before it is ever locked.
    unsafe { cm::sys::mutex::init(m) }.unwrap();
    bytemuck::from_bytes_mut::<Header>(&mut img.bytes()[..HEADER_SIZE]).mutex_size =
        cm::sys::mutex::SIZE as u32;
    let mut l = Layout::open(img.bytes()).unwrap();
    let ids: Vec<RecordId> = (0..seed as usize & 15)
        .map(|i| {
            let tag = ProcTag { pid: 100 + i as u32 % 2, start_time: 7 };
            let d = vec![i as u8 ^ 0xa5; (i * 13 + seed as usize * 7) % 97];
            l.insert(OwnerId(i as u32 % 3), tag, &d).unwrap()
        })
        .collect();
    ids.iter().skip(1).step_by(3).for_each(|&id| l.remove(id).unwrap());
    let mut model: Snap = l.iter().map(|(m, d)| (m.id, (m, d.to_vec()))).collect();
    if seed & 0x10 != 0 {
        let victim = if deferred && seed & 0x40 == 0 {
            crash_deferred_remove(img.bytes(), seed)
        } else {
            crash_remove(img.bytes(), seed)
        };
        if let Some(victim) = victim {
            model.remove(&victim);
        }
    }
    if data.len() <= 2 {
        // No patches: this is a state a killed process can leave behind.
        let mut c = Img::from(img.bytes());
        let mut l = Layout::open(c.bytes()).unwrap();
        l.recover().expect("recover fails on a crash state");
        let got: Snap = l.iter().map(|(m, d)| (m.id, (m, d.to_vec()))).collect();
        assert!(got == model, "recover lost or changed records");
    }
    let mut p = data.get(2..).unwrap_or(&[]);
    while p.len() >= 3 {
        let (off, n) = (u16::from_le_bytes([p[0], p[1]]) as usize, p[2] as usize);
        let chunk = &p[3..p.len().min(3 + n)];
        let at = (off & 0x7fff) % size;
        let at = if off & 0x8000 != 0 { size - 1 - at } else { at };
        let end = size.min(at + chunk.len());
        img.bytes()[at..end].copy_from_slice(&chunk[..end - at]);
        p = &p[3 + chunk.len()..];
    }
    img
}

/// Leaves the image as a process killed inside `remove` would: journal
/// written, entry cleared, and (seed bit 6) part of the tail moved down.
fn crash_remove(b: &mut [u8], seed: u8) -> Option<RecordId> {
    let h: Header = *bytemuck::from_bytes(&b[..HEADER_SIZE]);
    let slot = (seed as u32 >> 5) % h.n_bptr.max(1);
    let off = bptr_offset(b.len() as u64, slot) as usize;
    let e: Bptr = *bytemuck::from_bytes(&b[off..off + BPTR_SIZE]);
    if h.n_bptr == 0 || e.o_beg == 0 {
        return None;
    }
    let o = e.o_beg as u64;
    let bh: BlockHeader = *bytemuck::from_bytes(&b[o as usize..o as usize + 8]);
    let (src, len) = (o + block_size(bh.len as u64), h.o_fr - o - block_size(bh.len as u64));
    let done = (((seed as u64 >> 2) & 3) * (src - o)).min(len);
    if h.compaction == COMPACTION_DEFERRED {
        // A Deferred region only journals a compaction over blocks its
        // removes marked dead: an unmarked, unreferenced block there is a
        // state no process leaves (recovery rightly calls it Corrupt).
        b[o as usize..o as usize + 4].copy_from_slice(&DEAD_SLOT.to_ne_bytes());
    }
    let mut j = Journal {
        op: JOURNAL_COMPACT,
        _pad: 0,
        start: o,
        src: o,
        dst: o,
        end: h.o_fr,
        live_from: src,
        mv_src: NO_MOVE,
        mv_dst: 0,
        mv_len: 0,
        mv_done: 0,
    };
    if seed & 0x40 != 0 && len > 0 {
        b.copy_within(src as usize..(src + done) as usize, o as usize);
        (j.src, j.mv_src, j.mv_dst, j.mv_len, j.mv_done) = (src, src, o, len, done);
    }
    let gen = h.last_gen.wrapping_add(1).max(1);
    let hm: &mut Header = bytemuck::from_bytes_mut(&mut b[..HEADER_SIZE]);
    (hm.journal, hm.flags, hm.last_gen) = (j, h.flags | FLAG_RECOVERY_REQUIRED, gen);
    let em: &mut Bptr = bytemuck::from_bytes_mut(&mut b[off..off + BPTR_SIZE]);
    (em.o_beg, em.gen) = (0, gen);
    Some(RecordId::new(slot, e.gen))
}

/// Leaves the image as a process killed inside a deferred remove would:
/// the block marked dead, its entry not yet cleared.
fn crash_deferred_remove(b: &mut [u8], seed: u8) -> Option<RecordId> {
    let h: Header = *bytemuck::from_bytes(&b[..HEADER_SIZE]);
    let slot = (seed as u32 >> 5) % h.n_bptr.max(1);
    let off = bptr_offset(b.len() as u64, slot) as usize;
    let e: Bptr = *bytemuck::from_bytes(&b[off..off + BPTR_SIZE]);
    if h.n_bptr == 0 || e.o_beg == 0 {
        return None;
    }
    let o = e.o_beg as usize;
    b[o..o + 4].copy_from_slice(&DEAD_SLOT.to_ne_bytes());
    Some(RecordId::new(slot, e.gen))
}

/// The region stage (see the module docs). Works on a copy in a scratch
/// directory; the lock waits at most 10 ms for a holder that exists.
fn drive_region(img: &mut Img) {
    use std::os::unix::fs::DirBuilderExt;
    if check_size(img.1 as u64).is_err() || img.1 < HEADER_SIZE + TRAILER_SIZE {
        return;
    }
    let mut copy = Img::from(img.bytes());
    let h: &mut Header = bytemuck::from_bytes_mut(&mut copy.bytes()[..HEADER_SIZE]);
    (h.boot_id, h.pid_ns) = (cm::sys::process::boot_id(), cm::sys::process::pid_namespace(None));
    let dir = std::env::temp_dir().join(format!("cachem-fuzz-{}", std::process::id()));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let path = dir.join(format!("img-{:?}", std::thread::current().id()));
    std::fs::write(&path, copy.bytes()).unwrap();
    let opts = cm::RegionOptions {
        create: false,
        trust_dir: true,
        lock_timeout: Some(std::time::Duration::from_millis(10)),
        ..Default::default()
    };
    // A timeout only for a holder that exists: a lock word naming a
    // missing thread (or none) is recovered from. (Attach locks too.)
    let bounded = |e: &Error| {
        if let Error::LockTimeout { holder_pid, holder_tid, .. } = e {
            assert!(holder_pid.is_some(), "the lock timed out on a missing holder, tid {holder_tid}");
        }
    };
    match cm::Region::open_path(path.clone(), &opts) {
        Ok(r) => {
            for _ in 0..2 {
                match r.lock() {
                    Ok(g) => {
                        let _ = (g.verify(), g.status());
                        drop(g);
                        // Our guard released it: free now (no other
                        // thread of this process uses the file).
                        let h = r.lock_holder();
                        assert!(h.is_none(), "the lock stays held after a guard: {h:?}");
                    }
                    Err(e) => bounded(&e),
                }
            }
        }
        Err(e) => bounded(&e),
    }
    let _ = std::fs::remove_file(cm::region::default_lock_path(&path));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// Drives one image; false if `Layout::open` refuses it.
fn run(buf: &mut [u8], data: &[u8]) -> bool {
    if Layout::open(&mut *buf).is_err() {
        return false;
    }
    // Ids to probe: the first table entries (valid or not) and input bytes.
    let mut ids: Vec<RecordId> = (0..4u32)
        .map(|s| (s, bptr_offset(buf.len() as u64, s) as usize))
        .map(|(s, o)| RecordId::new(s, u32::from_ne_bytes(buf[o + 4..o + 8].try_into().unwrap())))
        .collect();
    ids.extend(
        data.rchunks_exact(8).take(2).map(|c| RecordId::from_u64(u64::from_le_bytes(c.try_into().unwrap()))),
    );
    let before = reads(&Layout::open(&mut *buf).unwrap(), &ids);
    if before.is_none() {
        // Mutations on the image as found: Ok or Err, never a panic.
        let mut c = Img::from(buf);
        let mut l = Layout::open(c.bytes()).unwrap();
        mutate(&mut l, &ids, data, None);
        reads(&l, &ids);
        let r = l.recover();
        assert!(r.is_err() || l.verify().is_ok(), "recover Ok but verify fails");
        assert!(Layout::open(c.bytes()).is_ok(), "a mutation broke the immutable header");
    }
    // A journal that does not fit the table is refused before recovery
    // writes a byte: the evidence stays as found.
    let fits = Layout::open(&mut *buf).unwrap().check_journal();
    let found = buf.to_vec();
    let mut l = Layout::open(&mut *buf).unwrap();
    let r = l.recover();
    if let Err(e) = fits {
        assert!(
            matches!(r, Err(Error::Corrupt { .. })),
            "check_journal refuses ({e}) but recover gives {r:?}"
        );
        assert!(*buf == found[..], "recovery refused a false journal ({e}) but changed the image");
        return true;
    }
    assert!(r.is_ok() || before.is_none(), "recover fails on a verified image: {r:?}");
    if r.is_err() {
        return true;
    }
    let after = reads(&l, &ids).unwrap_or_else(|| panic!("recover Ok but verify fails: {:?}", l.verify()));
    assert!(before.is_none() || before.as_ref() == Some(&after), "recover changed a verified image");
    let img = buf.to_vec();
    let r = Layout::open(&mut *buf).unwrap().recover();
    assert!(r.is_ok_and(|r| r == Default::default()) && *buf == img[..], "second recover not a no-op");
    mutate(&mut Layout::open(&mut *buf).unwrap(), &ids, data, Some(after));
    true
}

/// Every read; the records found if the image verifies (then also checks
/// that the reads agree with each other).
fn reads(l: &Layout, ids: &[RecordId]) -> Option<Snap> {
    let v = l.verify();
    for &id in ids {
        let (t, m) = (l.try_get(id), l.meta(id));
        assert_eq!(l.get(id), t.as_ref().ok().copied());
        if let (Ok(d), Ok(m)) = (&t, &m) {
            assert!(m.len as usize == d.len() && m.id == id);
        }
        let _ = l.get_pod::<u64>(id);
    }
    let all: Snap = l.iter().map(|(m, d)| (m.id, (m, d.to_vec()))).collect();
    let owners = all.values().take(3).map(|(m, _)| (m.owner, m.pid));
    for (owner, pid) in owners.chain([(OwnerId(0), 0)]) {
        let it: Vec<RecordId> = l.iter_owner(owner).map(|(id, _)| id).collect();
        let (mut nx, mut cur) = (Vec::new(), None);
        // The owner index is followed, never trusted: on any image the loop
        // ends, within the table's size, without visiting a record twice.
        while let Some(id) = l.next_of_owner(owner, cur) {
            assert!(!nx.contains(&id), "next_of_owner visited {id} twice");
            assert!(nx.len() < 1 << 20, "next_of_owner does not end");
            nx.push(id);
            cur = Some(id);
        }
        let _ = l.next_of_owner_pid(owner, pid, None);
        assert!(v.is_err() || it == nx, "iter_owner and next_of_owner disagree");
    }
    let (st, fb) = (l.status(), l.free_bytes());
    let _ = (l.records(), l.recovery_required(), l.max_record_len());
    let v = v.ok()?;
    let st = st.expect("status fails on a verified image");
    assert!(all.len() == v.records as usize && st.records == v.records, "record counts disagree");
    assert!(fb.ok() == Some(v.free_bytes) && st.free_bytes == v.free_bytes);
    for (id, (m, d)) in &all {
        assert!(l.get(*id) == Some(&d[..]) && l.meta(*id).ok() == Some(*m));
    }
    Some(all)
}

/// A few mutations. With `model` (the image verifies) each must keep it
/// verifying and do exactly what it says; without, only not panic.
fn mutate(l: &mut Layout, ids: &[RecordId], data: &[u8], mut model: Option<Snap>) {
    let k = data.iter().fold(0usize, |a, &x| a.wrapping_mul(31).wrapping_add(x as usize));
    let mut live: Vec<RecordId> = l.iter().map(|(m, _)| m.id).take(3).collect();
    live.extend_from_slice(ids);
    let check = |l: &Layout, model: &Option<Snap>| {
        if let Some(m) = model {
            assert!(reads(l, ids).as_ref() == Some(m), "a mutation of a verified image went wrong");
        }
    };
    if let Some(d) = l.get_mut(live[0]) {
        d.iter_mut().take(3).for_each(|x| *x ^= 0x5a);
        if let Some(e) = model.as_mut().and_then(|m| m.get_mut(&live[0])) {
            e.1 = d.to_vec();
        }
    }
    for (i, len) in [k % 200, l.max_record_len() as usize + 1, k % 3000].into_iter().enumerate() {
        let d: Vec<u8> = (0..len).map(|j| data.get(j % data.len().max(1)).copied().unwrap_or(1)).collect();
        let (owner, tag) = (OwnerId((k + i) as u32 % 3), ProcTag { pid: 100 + i as u32, start_time: 1 });
        let v = l.verify();
        let r = l.insert(owner, tag, &d);
        if len as u64 > l.max_record_len() {
            assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
        }
        if let (Some(m), Ok(v)) = (model.as_mut(), v) {
            let need = block_size(len as u64) + if v.free_slots == 0 { BPTR_SIZE as u64 } else { 0 };
            // Dead blocks are reclaimed by a compaction before Full.
            let fits = len as u64 <= l.max_record_len() && need <= v.free_bytes + v.dead_bytes;
            assert_eq!(r.is_ok(), fits, "insert of {len} with {v:?}: {r:?}");
            if let Ok(id) = r {
                let meta = RecordMeta { id, owner, pid: tag.pid, start_time: 1, len: len as u32 };
                assert!(m.insert(id, (meta, d)).is_none(), "insert reused a live id");
            }
        }
        check(l, &model);
    }
    for &id in live.iter().take(4) {
        let r = l.remove(id);
        if let Some(m) = model.as_mut() {
            let was = m.remove(&id).is_some();
            assert!(if was { r.is_ok() } else { matches!(r, Err(Error::Stale(_))) }, "remove: {r:?}");
            assert!(l.get(id).is_none(), "removed record still readable");
        }
        check(l, &model);
    }
    let r = l.retain(|m, d| (m.id.slot() as usize + d.len() + k) % 3 != 0);
    if let Some(m) = model.as_mut() {
        let n = m.len();
        m.retain(|id, (_, d)| (id.slot() as usize + d.len() + k) % 3 != 0);
        assert_eq!(r.map(|r| r.records).ok(), Some(n - m.len()), "retain");
    }
    check(l, &model);
    let r = l.purge(OwnerId(k as u32 % 3), 100);
    if let Some(m) = model.as_mut() {
        let n = m.len();
        m.retain(|_, (meta, _)| !(meta.owner == OwnerId(k as u32 % 3) && meta.pid == 100));
        assert_eq!(r.ok(), Some(n - m.len()), "purge");
    }
    check(l, &model);
    let r = l.compact_now();
    if model.is_some() {
        assert!(r.is_ok() && l.dead_bytes() == 0, "compact: {r:?}");
    }
    check(l, &model);
}
