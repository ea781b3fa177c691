//! The systems under test behind one interface, and how a second process
//! attaches to the same store.

use crate::harness::{Op, REC};
use cachem::sys::{map::Mapping, mutex};
use cachem::{Cache, Compaction, Config, OwnerId, RecordId};
use std::hint::black_box;
use std::path::{Path, PathBuf};

/// Owners for the "iterate one owner" workload: `ITER_OWNERS` owners with
/// `ITER_PER_OWNER` records each, inserted round-robin (interleaved).
pub const ITER_OWNERS: u32 = 10;
pub const ITER_PER_OWNER: u32 = 1000;
/// The owner whose records are iterated.
pub const ITER_OWNER: u32 = 3;

/// The client crates the peers are measured through, as pinned in this
/// crate's Cargo.toml (a test checks the two agree).
pub const REDIS_CRATE: &str = "1.8.2";
pub const MEMCACHE_CRATE: &str = "0.21.0";

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
    /// Compactions the store ran so far (cachem's counter), untimed.
    fn compactions(&mut self) -> Option<u64> {
        None
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

    fn compactions(&mut self) -> Option<u64> {
        Some(self.cache.lock().expect("lock").layout().counters().compactions)
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

// ----- Redis (the `redis` crate, one synchronous connection) ----------------

/// `prefix` then `n` in decimal, in `buf` (reused: no allocation per op).
fn key<'a>(buf: &'a mut String, prefix: &str, n: u64) -> &'a str {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(buf, "{prefix}{n}");
    buf
}

/// One `redis::Connection` (TCP_NODELAY set through its `TcpSettings`);
/// `pipeline` > 1: that many commands sent as one `redis::Pipeline`.
pub struct RedisStore {
    con: redis::Connection,
    pipe: redis::Pipeline,
    pipeline: usize,
    base: u64,
    key: String,
}

impl RedisStore {
    pub fn connect(port: u16, pipeline: usize, base: u64) -> std::io::Result<RedisStore> {
        use redis::IntoConnectionInfo;
        let info = ("127.0.0.1", port)
            .into_connection_info()
            .map_err(other)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let con = redis::Client::open(info).map_err(other)?.get_connection().map_err(other)?;
        Ok(RedisStore { con, pipe: redis::pipe(), pipeline, base, key: String::new() })
    }

    /// One command, its reply read and checked before the next.
    fn one(&mut self, op: Op) {
        use redis::Commands;
        let (Op::Insert(s) | Op::Get(s) | Op::Remove(s)) = op;
        let k = key(&mut self.key, "k", self.base + s as u64);
        match op {
            Op::Insert(_) => self.con.set::<_, _, ()>(k, &REC[..]).expect("redis SET"),
            Op::Get(_) => {
                let v: Option<Vec<u8>> = self.con.get(k).expect("redis GET");
                let v = v.expect("GET of a live key");
                assert_eq!(v.len(), 64);
                black_box(v[0]);
            }
            Op::Remove(_) => assert_eq!(self.con.del::<_, u32>(k).expect("redis DEL"), 1),
        }
    }

    /// The ops as one pipeline; every reply checked.
    fn pipelined(&mut self, ops: &[Op]) {
        self.pipe.clear();
        for &op in ops {
            let (Op::Insert(s) | Op::Get(s) | Op::Remove(s)) = op;
            let k = key(&mut self.key, "k", self.base + s as u64);
            match op {
                Op::Insert(_) => self.pipe.set(k, &REC[..]),
                Op::Get(_) => self.pipe.get(k),
                Op::Remove(_) => self.pipe.del(k),
            };
        }
        let replies: Vec<redis::Value> = self.pipe.query(&mut self.con).expect("redis pipeline");
        assert_eq!(replies.len(), ops.len());
        for (op, r) in ops.iter().zip(&replies) {
            match (op, r) {
                (Op::Insert(_), redis::Value::Okay) | (Op::Remove(_), redis::Value::Int(1)) => {}
                (Op::Get(_), redis::Value::BulkString(v)) if v.len() == 64 => {
                    black_box(v[0]);
                }
                _ => panic!("redis replied {r:?} to {op:?}"),
            }
        }
    }
}

impl Store for RedisStore {
    fn fill(&mut self, slots: &[u32]) {
        for chunk in slots.chunks(256) {
            let ops: Vec<Op> = chunk.iter().map(|&s| Op::Insert(s)).collect();
            self.pipelined(&ops);
        }
    }

    fn clear(&mut self) {
        redis::cmd("FLUSHDB").exec(&mut self.con).expect("redis FLUSHDB");
    }

    fn exec(&mut self, ops: &[Op]) {
        if self.pipeline <= 1 {
            for &op in ops {
                self.one(op);
            }
        } else {
            for chunk in ops.chunks(self.pipeline) {
                self.pipelined(chunk);
            }
        }
    }

    fn setup_owners(&mut self) -> bool {
        let mut field = String::new();
        for i in 0..ITER_PER_OWNER {
            self.pipe.clear();
            for o in 0..ITER_OWNERS {
                let f = key(&mut field, "", i as u64);
                self.pipe.hset(key(&mut self.key, "owner:", o as u64), f, &REC[..]);
            }
            let added: Vec<u32> = self.pipe.query(&mut self.con).expect("redis HSET");
            assert_eq!(added, [1; ITER_OWNERS as usize]);
        }
        true
    }

    fn iterate_owner(&mut self) -> usize {
        use redis::Commands;
        let k = key(&mut self.key, "owner:", ITER_OWNER as u64);
        let all: Vec<(Vec<u8>, Vec<u8>)> = self.con.hgetall(k).expect("redis HGETALL");
        for (_, v) in &all {
            assert_eq!(v.len(), 64);
            black_box(v[0]);
        }
        all.len()
    }
}

// ----- memcached (the `memcache` crate, text protocol) ----------------------

/// One `memcache::Client` over a pool of one connection (text protocol,
/// TCP_NODELAY, the crate's default), one request at a time. The pool is
/// built with r2d2's `test_on_check_out` off: on (the default of
/// `Client::connect`), every op would first send a `version` request.
pub struct MemcachedStore {
    client: memcache::Client,
    port: u16,
    base: u64,
    key: String,
}

impl MemcachedStore {
    pub fn connect(port: u16, base: u64) -> std::io::Result<MemcachedStore> {
        let url =
            memcache::Url::parse(&format!("memcache://127.0.0.1:{port}?protocol=ascii&tcp_nodelay=true"))
                .map_err(other)?;
        let pool = r2d2::Pool::builder()
            .max_size(1)
            .test_on_check_out(false)
            .build(memcache::ConnectionManager::new(url))
            .map_err(other)?;
        let client = memcache::Client::with_pool(pool).map_err(other)?;
        Ok(MemcachedStore { client, port, base, key: String::new() })
    }
}

impl Store for MemcachedStore {
    fn fill(&mut self, slots: &[u32]) {
        // The crate has no multi-set and one set per record through it
        // takes ~20 µs (20 s for 1M records): the untimed fill writes the
        // text protocol itself on a second connection, `noreply` sets in
        // batches, each followed by a `version` round trip (so the server
        // has applied the batch before the next op of the crate's client).
        use std::io::{BufRead, BufReader, Write};
        let con = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to memcached");
        let mut rd = BufReader::new(con.try_clone().expect("clone socket"));
        let mut wr = std::io::BufWriter::new(con);
        let mut line = String::new();
        for chunk in slots.chunks(4096) {
            for &s in chunk {
                let k = key(&mut self.key, "k", self.base + s as u64);
                write!(wr, "set {k} 0 0 {} noreply\r\n", REC.len()).expect("write to memcached");
                wr.write_all(&REC).and_then(|_| wr.write_all(b"\r\n")).expect("write to memcached");
            }
            wr.write_all(b"version\r\n").and_then(|_| wr.flush()).expect("write to memcached");
            line.clear();
            rd.read_line(&mut line).expect("read from memcached");
            assert!(line.starts_with("VERSION "), "memcached replied {line:?} to a batch of sets");
        }
    }

    fn clear(&mut self) {
        self.client.flush().expect("memcached flush_all");
    }

    fn exec(&mut self, ops: &[Op]) {
        for &op in ops {
            let (Op::Insert(s) | Op::Get(s) | Op::Remove(s)) = op;
            let k = key(&mut self.key, "k", self.base + s as u64);
            match op {
                Op::Insert(_) => self.client.set(k, &REC[..], 0).expect("memcached set"),
                Op::Get(_) => {
                    let v: Option<Vec<u8>> = self.client.get(k).expect("memcached get");
                    let v = v.expect("get of a live key");
                    assert_eq!(v.len(), 64);
                    black_box(v[0]);
                }
                Op::Remove(_) => assert!(self.client.delete(k).expect("memcached delete")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_crate_versions_match_the_pins() {
        let toml = include_str!("../Cargo.toml");
        for (name, v) in [("redis", REDIS_CRATE), ("memcache", MEMCACHE_CRATE)] {
            let pin = format!("{name} = {{ version = \"={v}\"");
            assert!(toml.lines().any(|l| l.starts_with(&pin)), "Cargo.toml does not pin {name} to ={v}");
        }
    }
}
