//! The systems under test behind one interface, and how a second process
//! attaches to the same store.

use crate::harness::{Op, REC};
use cachem::sys::{map::Mapping, mutex};
use cachem::{Cache, Compaction, Config, OwnerId, RecordId};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

/// Owners for the "iterate one owner" workload: `ITER_OWNERS` owners with
/// `ITER_PER_OWNER` records each, inserted round-robin (interleaved).
pub const ITER_OWNERS: u32 = 10;
pub const ITER_PER_OWNER: u32 = 1000;
/// The owner whose records are iterated.
pub const ITER_OWNER: u32 = 3;

pub trait Store {
    /// Inserts these slots, untimed (batched where the system allows).
    fn fill(&mut self, slots: &[u32]);
    /// Removes everything, untimed.
    fn clear(&mut self);
    /// Runs the ops (the timed part).
    fn exec(&mut self, ops: &[Op]);
    /// Sets up the iterate workload; false if the system cannot enumerate.
    fn setup_owners(&mut self) -> bool {
        false
    }
    /// Visits every record of owner `ITER_OWNER`; returns how many.
    fn iterate_owner(&mut self) -> usize {
        0
    }
}

/// How a second process opens the same store (passed in an env var).
#[derive(Clone, Debug)]
pub enum Spec {
    Mutex { path: PathBuf },
    Cachem { dir: PathBuf, name: String, size: u64, eager: bool },
    Lmdb { path: PathBuf, per_txn: usize },
    Redis { port: u16, pipeline: usize },
    Memcached { port: u16 },
}

impl Spec {
    pub fn encode(&self) -> String {
        match self {
            Spec::Mutex { path } => format!("mutex\t{}", path.display()),
            Spec::Cachem { dir, name, size, eager } => {
                format!("cachem\t{}\t{name}\t{size}\t{eager}", dir.display())
            }
            Spec::Lmdb { path, per_txn } => format!("lmdb\t{}\t{per_txn}", path.display()),
            Spec::Redis { port, pipeline } => format!("redis\t{port}\t{pipeline}"),
            Spec::Memcached { port } => format!("memcached\t{port}"),
        }
    }

    pub fn decode(s: &str) -> Option<Spec> {
        let f: Vec<&str> = s.split('\t').collect();
        Some(match f.as_slice() {
            ["mutex", p] => Spec::Mutex { path: p.into() },
            ["cachem", d, n, s, e] => Spec::Cachem {
                dir: d.into(),
                name: n.to_string(),
                size: s.parse().ok()?,
                eager: e.parse().ok()?,
            },
            ["lmdb", p, n] => Spec::Lmdb { path: p.into(), per_txn: n.parse().ok()? },
            ["redis", p, n] => Spec::Redis { port: p.parse().ok()?, pipeline: n.parse().ok()? },
            ["memcached", p] => Spec::Memcached { port: p.parse().ok()? },
            _ => return None,
        })
    }

    /// Opens (creates or attaches) the store. `proc_index` keeps the keys
    /// of two processes apart.
    pub fn open(&self, proc_index: u64) -> std::io::Result<Box<dyn Store>> {
        let base = proc_index << 40;
        Ok(match self {
            Spec::Mutex { path } => Box::new(MutexStore::open(path)?),
            Spec::Cachem { dir, name, size, eager } => {
                let policy = if *eager { Compaction::Eager } else { Compaction::Deferred };
                Box::new(CachemStore::open(dir, name, *size, policy)?)
            }
            Spec::Lmdb { path, per_txn } => Box::new(LmdbStore::open(path, *per_txn, base)?),
            Spec::Redis { port, pipeline } => Box::new(RedisStore::connect(*port, *pipeline, base)?),
            Spec::Memcached { port } => Box::new(MemcachedStore::connect(*port, base)?),
        })
    }
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

// ----- the floor: a bare robust process-shared mutex ----------------------

/// One lock + unlock per op, whatever the op: the floor for any locked
/// operation on shared memory.
pub struct MutexStore {
    map: Mapping,
}

impl MutexStore {
    /// Maps `path` (creating and initialising the mutex if the file is new).
    pub fn open(path: &Path) -> std::io::Result<MutexStore> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let fresh = f.metadata()?.len() == 0;
        if fresh {
            f.set_len(4096)?;
        }
        let map = Mapping::file(&f, 4096, path).map_err(other)?;
        if fresh {
            // SAFETY: the mapping is 4096 page-aligned bytes of a file this
            // call just created; no process uses it as a mutex yet (the
            // second process opens it only after this returned).
            unsafe { mutex::init(map.as_ptr().cast()) }?;
        }
        Ok(MutexStore { map })
    }

    fn m(&self) -> *mut libc::pthread_mutex_t {
        self.map.as_ptr().cast()
    }
}

impl Store for MutexStore {
    fn fill(&mut self, _: &[u32]) {}
    fn clear(&mut self) {}
    fn exec(&mut self, ops: &[Op]) {
        let m = self.m();
        for op in ops {
            black_box(op);
            // SAFETY: `m` is a mutex initialised by `open` in a mapping that
            // lives as long as `self`; this thread unlocks what it locked.
            unsafe {
                mutex::lock(black_box(m)).expect("lock");
                mutex::unlock(m).expect("unlock");
            }
        }
    }
}

// ----- cachem ---------------------------------------------------------------

const OWNER: OwnerId = OwnerId(1);

/// cachem through its facade: one `lock()` per op, a region in /dev/shm.
pub struct CachemStore {
    cache: Cache,
    ids: Vec<RecordId>,
    owners: Vec<OwnerId>,
}

impl CachemStore {
    pub fn open(dir: &Path, name: &str, size: u64, policy: Compaction) -> std::io::Result<CachemStore> {
        let cache =
            Cache::open(&Config::named(name).dir(dir).size(size).compaction(policy)).map_err(other)?;
        Ok(CachemStore { cache, ids: Vec::new(), owners: Vec::new() })
    }

    fn set(&mut self, slot: u32, id: RecordId) {
        let s = slot as usize;
        if s >= self.ids.len() {
            self.ids.resize(s + 1 + s / 2, RecordId::new(0, 0));
        }
        self.ids[s] = id;
    }
}

impl Store for CachemStore {
    fn fill(&mut self, slots: &[u32]) {
        for chunk in slots.chunks(4096) {
            let mut g = self.cache.lock().expect("lock");
            let ids: Vec<RecordId> = chunk.iter().map(|_| g.insert(OWNER, &REC).expect("insert")).collect();
            drop(g);
            for (&s, id) in chunk.iter().zip(ids) {
                self.set(s, id);
            }
        }
    }

    fn clear(&mut self) {
        self.cache.lock().expect("lock").retain(|_, _| false).expect("retain");
    }

    fn exec(&mut self, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::Insert(s) => {
                    let id = self.cache.lock().expect("lock").insert(OWNER, &REC).expect("insert");
                    self.set(s, id);
                }
                Op::Get(s) => {
                    let g = self.cache.lock().expect("lock");
                    black_box(g.get(self.ids[s as usize]).expect("live record")[0]);
                }
                Op::Remove(s) => {
                    self.cache.lock().expect("lock").remove(self.ids[s as usize]).expect("remove");
                }
            }
        }
    }

    fn setup_owners(&mut self) -> bool {
        let names: Vec<String> = (0..ITER_OWNERS).map(|o| format!("bench-owner-{o}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.owners = self.cache.ids(&names).expect("owner ids");
        let mut g = self.cache.lock().expect("lock");
        for _ in 0..ITER_PER_OWNER {
            for &o in &self.owners {
                g.insert(o, &REC).expect("insert");
            }
        }
        true
    }

    fn iterate_owner(&mut self) -> usize {
        let g = self.cache.lock().expect("lock");
        let mut n = 0;
        for (_, b) in g.iter_owner(self.owners[ITER_OWNER as usize]) {
            black_box(b[0]);
            n += 1;
        }
        n
    }
}

// ----- LMDB (heed) ----------------------------------------------------------

type Db = heed::Database<heed::types::Bytes, heed::types::Bytes>;

/// LMDB with NO_SYNC | WRITE_MAP; `per_txn` ops per transaction.
pub struct LmdbStore {
    env: heed::Env,
    kv: Db,
    owners: Db,
    per_txn: usize,
    base: u64,
}

impl LmdbStore {
    pub fn open(path: &Path, per_txn: usize, base: u64) -> std::io::Result<LmdbStore> {
        std::fs::create_dir_all(path)?;
        let mut opts = heed::EnvOpenOptions::new();
        opts.map_size(4 << 30).max_dbs(4);
        // SAFETY: NO_SYNC only gives up durability across a crash of the
        // machine (a benchmark store in /dev/shm has none to give up);
        // WRITE_MAP is sound because no code here writes to the map except
        // through LMDB.
        unsafe { opts.flags(heed::EnvFlags::NO_SYNC | heed::EnvFlags::WRITE_MAP) };
        // SAFETY: the env lives in a directory this benchmark created for
        // itself; nothing but LMDB (in this process and the second bench
        // process) touches its files, and no transaction outlives a call.
        let env = unsafe { opts.open(path) }.map_err(other)?;
        let mut w = env.write_txn().map_err(other)?;
        let kv = env.create_database(&mut w, Some("kv")).map_err(other)?;
        let owners = env.create_database(&mut w, Some("owners")).map_err(other)?;
        w.commit().map_err(other)?;
        Ok(LmdbStore { env, kv, owners, per_txn, base })
    }

    fn key(&self, slot: u32) -> [u8; 8] {
        (self.base + slot as u64).to_be_bytes()
    }

    fn apply(&self, w: &mut heed::RwTxn, op: Op) {
        match op {
            Op::Insert(s) => self.kv.put(w, &self.key(s), &REC).expect("put"),
            Op::Get(s) => {
                black_box(self.kv.get(w, &self.key(s)).expect("get").expect("live key")[0]);
            }
            Op::Remove(s) => assert!(self.kv.delete(w, &self.key(s)).expect("delete")),
        }
    }
}

impl Store for LmdbStore {
    fn fill(&mut self, slots: &[u32]) {
        for chunk in slots.chunks(100_000) {
            let mut w = self.env.write_txn().expect("txn");
            for &s in chunk {
                self.kv.put(&mut w, &self.key(s), &REC).expect("put");
            }
            w.commit().expect("commit");
        }
    }

    fn clear(&mut self) {
        let mut w = self.env.write_txn().expect("txn");
        self.kv.clear(&mut w).expect("clear");
        self.owners.clear(&mut w).expect("clear");
        w.commit().expect("commit");
    }

    fn exec(&mut self, ops: &[Op]) {
        for chunk in ops.chunks(self.per_txn) {
            if chunk.iter().all(|o| matches!(o, Op::Get(_))) {
                let r = self.env.read_txn().expect("txn");
                for op in chunk {
                    if let Op::Get(s) = *op {
                        black_box(self.kv.get(&r, &self.key(s)).expect("get").expect("live key")[0]);
                    }
                }
                drop(r);
            } else {
                let mut w = self.env.write_txn().expect("txn");
                for &op in chunk {
                    self.apply(&mut w, op);
                }
                w.commit().expect("commit");
            }
        }
    }

    fn setup_owners(&mut self) -> bool {
        let mut w = self.env.write_txn().expect("txn");
        for i in 0..ITER_PER_OWNER {
            for o in 0..ITER_OWNERS {
                let mut k = [0u8; 8];
                k[..4].copy_from_slice(&o.to_be_bytes());
                k[4..].copy_from_slice(&i.to_be_bytes());
                self.owners.put(&mut w, &k, &REC).expect("put");
            }
        }
        w.commit().expect("commit");
        true
    }

    fn iterate_owner(&mut self) -> usize {
        let r = self.env.read_txn().expect("txn");
        let mut n = 0;
        for kv in self.owners.prefix_iter(&r, &ITER_OWNER.to_be_bytes()).expect("iter") {
            black_box(kv.expect("entry").1[0]);
            n += 1;
        }
        n
    }
}

// ----- Redis (RESP over loopback TCP) ---------------------------------------

fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut b = [0u8; 20];
    let mut i = b.len();
    loop {
        i -= 1;
        b[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&b[i..]);
}

fn connect(port: u16) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let r = BufReader::with_capacity(1 << 16, s.try_clone()?);
    Ok((s, r))
}

/// One client; `pipeline` requests written before their replies are read.
pub struct RedisStore {
    w: TcpStream,
    r: BufReader<TcpStream>,
    pipeline: usize,
    base: u64,
    out: Vec<u8>,
    line: Vec<u8>,
    bulk: Vec<u8>,
}

impl RedisStore {
    pub fn connect(port: u16, pipeline: usize, base: u64) -> std::io::Result<RedisStore> {
        let (w, r) = connect(port)?;
        Ok(RedisStore { w, r, pipeline, base, out: Vec::new(), line: Vec::new(), bulk: Vec::new() })
    }

    fn arg(&mut self, a: &[u8]) {
        self.out.push(b'$');
        push_num(&mut self.out, a.len() as u64);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(a);
        self.out.extend_from_slice(b"\r\n");
    }

    fn key_arg(&mut self, prefix: &[u8], n: u64) {
        let mut k = Vec::with_capacity(24);
        k.extend_from_slice(prefix);
        push_num(&mut k, n);
        self.arg(&k);
    }

    fn cmd(&mut self, name: &[u8], nargs: u64) {
        self.out.push(b'*');
        push_num(&mut self.out, nargs + 1);
        self.out.extend_from_slice(b"\r\n");
        self.arg(name);
    }

    fn encode(&mut self, op: Op) {
        match op {
            Op::Insert(s) => {
                self.cmd(b"SET", 2);
                self.key_arg(b"k", self.base + s as u64);
                self.arg(&REC);
            }
            Op::Get(s) => {
                self.cmd(b"GET", 1);
                self.key_arg(b"k", self.base + s as u64);
            }
            Op::Remove(s) => {
                self.cmd(b"DEL", 1);
                self.key_arg(b"k", self.base + s as u64);
            }
        }
    }

    fn flush(&mut self) {
        self.w.write_all(&self.out).expect("redis write");
        self.out.clear();
    }

    /// Reads one reply; returns (type byte, integer or length); a bulk
    /// string's bytes are left in `self.bulk`.
    fn reply(&mut self) -> (u8, i64) {
        self.line.clear();
        self.r.read_until(b'\n', &mut self.line).expect("redis read");
        let l = &self.line;
        assert!(l.len() >= 3, "redis closed the connection");
        let t = l[0];
        let body = &l[1..l.len() - 2];
        match t {
            b'+' => (t, 0),
            b'-' => panic!("redis error: {}", String::from_utf8_lossy(body)),
            b':' | b'$' | b'*' => {
                let n: i64 =
                    std::str::from_utf8(body).ok().and_then(|s| s.parse().ok()).expect("redis number");
                if t == b'$' && n >= 0 {
                    self.bulk.resize(n as usize + 2, 0);
                    std::io::Read::read_exact(&mut self.r, &mut self.bulk).expect("redis read");
                }
                (t, n)
            }
            _ => panic!("unexpected redis reply {:?}", String::from_utf8_lossy(l)),
        }
    }

    fn check(&mut self, op: Op) {
        let (t, n) = self.reply();
        match op {
            Op::Insert(_) => assert_eq!(t, b'+'),
            Op::Get(_) => {
                assert!(t == b'$' && n == 64, "GET of a live key");
                black_box(self.bulk[0]);
            }
            Op::Remove(_) => assert_eq!((t, n), (b':', 1)),
        }
    }
}

impl Store for RedisStore {
    fn fill(&mut self, slots: &[u32]) {
        for chunk in slots.chunks(256) {
            for &s in chunk {
                self.encode(Op::Insert(s));
            }
            self.flush();
            for &s in chunk {
                self.check(Op::Insert(s));
            }
        }
    }

    fn clear(&mut self) {
        self.cmd(b"FLUSHDB", 0);
        self.flush();
        assert_eq!(self.reply().0, b'+');
    }

    fn exec(&mut self, ops: &[Op]) {
        for chunk in ops.chunks(self.pipeline) {
            for &op in chunk {
                self.encode(op);
            }
            self.flush();
            for &op in chunk {
                self.check(op);
            }
        }
    }

    fn setup_owners(&mut self) -> bool {
        for i in 0..ITER_PER_OWNER {
            for o in 0..ITER_OWNERS {
                self.cmd(b"HSET", 3);
                self.key_arg(b"owner:", o as u64);
                self.key_arg(b"", i as u64);
                self.arg(&REC);
            }
            self.flush();
            for _ in 0..ITER_OWNERS {
                assert_eq!(self.reply(), (b':', 1));
            }
        }
        true
    }

    fn iterate_owner(&mut self) -> usize {
        self.cmd(b"HGETALL", 1);
        self.key_arg(b"owner:", ITER_OWNER as u64);
        self.flush();
        let (t, n) = self.reply();
        assert_eq!(t, b'*');
        for i in 0..n {
            let (t, len) = self.reply();
            assert_eq!(t, b'$');
            if i % 2 == 1 {
                assert_eq!(len, 64);
                black_box(self.bulk[0]);
            }
        }
        (n / 2) as usize
    }
}

// ----- memcached (text protocol over loopback TCP) --------------------------

/// One client, one request at a time.
pub struct MemcachedStore {
    w: TcpStream,
    r: BufReader<TcpStream>,
    base: u64,
    out: Vec<u8>,
    line: Vec<u8>,
    val: Vec<u8>,
}

impl MemcachedStore {
    pub fn connect(port: u16, base: u64) -> std::io::Result<MemcachedStore> {
        let (w, r) = connect(port)?;
        Ok(MemcachedStore { w, r, base, out: Vec::new(), line: Vec::new(), val: vec![0; 66] })
    }

    fn encode(&mut self, op: Op) {
        let (verb, s): (&[u8], u32) = match op {
            Op::Insert(s) => (b"set k", s),
            Op::Get(s) => (b"get k", s),
            Op::Remove(s) => (b"delete k", s),
        };
        self.out.extend_from_slice(verb);
        push_num(&mut self.out, self.base + s as u64);
        if let Op::Insert(_) = op {
            self.out.extend_from_slice(b" 0 0 64\r\n");
            self.out.extend_from_slice(&REC);
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn read_line(&mut self) {
        self.line.clear();
        self.r.read_until(b'\n', &mut self.line).expect("memcached read");
        assert!(!self.line.is_empty(), "memcached closed the connection");
    }

    fn check(&mut self, op: Op) {
        self.read_line();
        match op {
            Op::Insert(_) => assert_eq!(self.line, b"STORED\r\n"),
            Op::Remove(_) => assert_eq!(self.line, b"DELETED\r\n"),
            Op::Get(_) => {
                assert!(self.line.starts_with(b"VALUE "), "GET of a live key");
                std::io::Read::read_exact(&mut self.r, &mut self.val).expect("memcached read");
                black_box(self.val[0]);
                self.read_line();
                assert_eq!(self.line, b"END\r\n");
            }
        }
    }
}

impl Store for MemcachedStore {
    fn fill(&mut self, slots: &[u32]) {
        for chunk in slots.chunks(256) {
            for &s in chunk {
                self.encode(Op::Insert(s));
            }
            self.w.write_all(&self.out).expect("memcached write");
            self.out.clear();
            for &s in chunk {
                self.check(Op::Insert(s));
            }
        }
    }

    fn clear(&mut self) {
        self.w.write_all(b"flush_all\r\n").expect("memcached write");
        self.read_line();
        assert_eq!(self.line, b"OK\r\n");
    }

    fn exec(&mut self, ops: &[Op]) {
        for &op in ops {
            self.encode(op);
            self.w.write_all(&self.out).expect("memcached write");
            self.out.clear();
            self.check(op);
        }
    }
}
