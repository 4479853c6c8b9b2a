//! The Raft log of every shard of this node, and each shard's vote, committed index
//! and last snapshot, in one database per node.
//!
//! Owns: [`LogDb`] (the node's database: the `memory` engine, or the durable one in
//! `storage.dir`, with the writer thread that makes writes durable per
//! `storage.fsync`) and [`ShardLogStore`] (one shard's view of it, which implements
//! openraft's `RaftLogStorage` and `RaftLogReader`). It knows nothing of rooms: it
//! stores entries and snapshots as bytes (postcard) and hands them back.
//!
//! ## Layout
//! Two tables, every key prefixed with the shard number: `raft_logs` maps
//! `(shard, index)` to an entry; `raft_meta` maps `(shard, kind)` to the vote, the
//! committed log id, the last purged log id and the last snapshot (its metadata and
//! bytes). A whole-cluster restart recovers each shard from its snapshot, then
//! openraft re-applies the committed entries after it.
//!
//! ## Engine: redb 4.6
//! One file, ACID transactions whose commits are totally ordered, range deletes for
//! truncate and purge (`retain_in`), and reads that never wait for the writer. One
//! writer thread takes the writes of every shard from one channel and commits all
//! that are waiting in ONE transaction, so every shard's appends share one fsync
//! (group commit across shards, under every policy). fjall 3.1 was the other
//! candidate (an LSM with one journal per database, so also group commit); its purge
//! is one tombstone per entry plus compaction, and its durability needs a flusher of
//! our own as well, so the simpler engine won (fjall was not measured here).
//! Measured on this machine by `durable_append_figures` (one shard appending
//! 289-byte entries with `fsync = "always"`; a debug build, 2 cores under a load
//! average of ~17 from other builds; repeat with `cargo nextest run --lib
//! durable_append_figures --run-ignored only --no-capture`):
//!
//! | entries per append | appends/s | entries/s |
//! |---|---|---|
//! | 1 | 64 | 64 |
//! | 10 | 48 | 482 |
//! | 100 | 21 | 2,088 |
//!
//! Sixteen shards appending one entry each at the same time made 599 entries/s in
//! all (their appends share commits), against 61 for one shard alone in that run.
//!
//! One fsynced commit costs ~15 ms here whatever it carries, so throughput comes
//! from batching: the proposer's batches, and this writer's one commit for every
//! shard's waiting appends.
//!
//! ## `storage.fsync`: what a power loss can lose
//! redb keeps a commit made without fsync (`Durability::None`) only once a later
//! commit is made with fsync, so "acknowledged" below means `log_io_completed`,
//! which is what lets openraft count this node's copy towards a majority.
//! - `always`: each group is fsynced before any append in it is acknowledged. A power
//!   loss or a crash loses nothing acknowledged.
//! - `interval` (`"<N>ms"`): groups are committed without fsync and made readable at
//!   once; every N ms one fsync covers them and only then are their appends
//!   acknowledged, so a write waits up to N ms more, and nothing acknowledged is
//!   lost to a crash or a power loss (what is lost was never counted).
//! - `never`: appends are acknowledged when written, before any fsync; the writer
//!   fsyncs once a second (redb keeps a commit without fsync only until a crash)
//!   and on close (a clean stop loses nothing). A crash of the process or a power
//!   loss loses up to the last second of entries this node acknowledged: if a majority loses them at once, committed messages
//!   are gone and Raft's guarantees do not hold. For benchmarks only.
//!
//! The vote is fsynced before `save_vote` returns under every policy (a node that
//! forgot its vote could vote twice in a term). Truncations, purges, the committed
//! index and snapshots ride along with the next fsync: commits are ordered, so a
//! crash can only drop a suffix of them, never an earlier one without a later one.
//!
//! ## Errors
//! Every engine error, and bytes that do not decode, are returned as an openraft
//! `StorageError`, which stops that shard's Raft (not the process); nothing here
//! panics on what is on disk.

use super::log_tail::LogTail;
use super::types::{NodeId, ShardId, ShardNode, ShardTc};
use crate::config::FsyncPolicy;
use crate::telemetry::metrics::StorageTimings;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, SnapshotMeta,
    StorageError, StorageIOError, Vote,
};
use redb::{ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// `(shard, log index)` to an encoded entry.
const LOGS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("raft_logs");
/// `(shard, kind)` to an encoded value; the kinds are the `META_*` constants.
const META: TableDefinition<(u32, u8), &[u8]> = TableDefinition::new("raft_meta");
const META_VOTE: u8 = 1;
const META_COMMITTED: u8 = 2;
const META_LAST_PURGED: u8 = 3;
const META_SNAPSHOT: u8 = 4;

/// The database's file inside `storage.dir`.
pub const DB_FILE: &str = "raft.redb";

/// The most the log database keeps of its pages in memory (its read cache and write
/// buffer together). redb's default is 1 GiB, and it fills as the file grows: the
/// room logs' file, under a flood of large messages, took a node past 512 MiB of
/// resident memory (abuse attack 12). The log's reads come from each shard's tail in
/// memory (log_tail.rs), so the cache serves mostly the B-tree's inner pages.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Under `fsync = "never"`, how often the writer still fsyncs (redb would keep
/// nothing otherwise).
const NEVER_SYNC_EVERY: Duration = Duration::from_secs(1);

/// Most write requests the writer puts into one transaction.
const MAX_GROUP: usize = 1024;

/// A shard's last snapshot as stored: its metadata and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, ShardNode>,
    pub data: Vec<u8>,
}

/// What went wrong in the engine, as text (the engine's errors are of many types).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(String);

impl EngineError {
    fn new(context: &str, e: impl std::fmt::Display) -> Self {
        Self(format!("{context}: {e}"))
    }
}

/// Why the database in `storage.dir` could not be opened; names the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the Raft log database {path}: {reason}")]
pub struct OpenError {
    pub path: PathBuf,
    pub reason: String,
}

/// The node's log database, shared by every shard (clone it freely). Dropping the
/// last clone closes it: the writer makes what it holds durable, then stops.
#[derive(Clone)]
pub struct LogDb {
    inner: Arc<Engine>,
}

enum Engine {
    Memory(Mutex<HashMap<ShardId, MemoryShard>>),
    Durable(Durable),
}

#[derive(Default)]
struct MemoryShard {
    meta: BTreeMap<u8, Vec<u8>>,
    logs: BTreeMap<u64, Vec<u8>>,
}

struct Durable {
    db: Arc<redb::Database>,
    /// Each shard's newest entries, so that reads of them skip the blocking pool
    /// (log_tail.rs says why).
    tails: Mutex<HashMap<ShardId, LogTail>>,
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
}

impl Durable {
    /// Hands `ops` to the writer thread; the answer comes once they are committed.
    fn send(
        &self,
        shard: ShardId,
        ops: Vec<Op>,
        sync: Sync,
        flushed: Option<LogFlushed<ShardTc>>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, EngineError> {
        let (written, answer) = oneshot::channel();
        let request = WriteRequest {
            shard,
            ops,
            sync,
            written,
            flushed,
            queued_at: Instant::now(),
        };
        let sender = self
            .requests
            .as_ref()
            .ok_or_else(|| EngineError("the log database is closed".to_owned()))?;
        sender
            .send(request)
            .map_err(|_| EngineError("the log writer has stopped".to_owned()))?;
        Ok(answer)
    }

    /// The entries of `start..end` from the shard's tail, if it holds them all.
    fn tail_entries(
        &self,
        shard: ShardId,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Option<Vec<(u64, Vec<u8>)>> {
        let tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        tails.get(&shard)?.get(start, end)
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        // Closing the channel is the writer's signal to fsync and stop.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the Raft log writer thread panicked");
            }
        }
    }
}

/// One change to one shard's part of the database.
enum Op {
    PutLog(u64, Vec<u8>),
    PutMeta(u8, Vec<u8>),
    /// Truncate: every entry from this index on.
    RemoveLogsFrom(u64),
    /// Purge: every entry up to and including this index.
    RemoveLogsThrough(u64),
}

impl Op {
    /// This op as the shard's log tail must learn it (`None`: metadata).
    fn for_tail(&self) -> Option<Op> {
        match self {
            Op::PutLog(index, bytes) => Some(Op::PutLog(*index, bytes.clone())),
            Op::RemoveLogsFrom(index) => Some(Op::RemoveLogsFrom(*index)),
            Op::RemoveLogsThrough(index) => Some(Op::RemoveLogsThrough(*index)),
            Op::PutMeta(..) => None,
        }
    }
}

/// When a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Before the write returns, whatever the policy (the vote).
    Now,
    /// As `storage.fsync` says (appends, with their flush callback).
    Policy,
    /// With whatever fsync comes next.
    Lazy,
    /// Not worth a transaction of its own: written with the next one the writer makes
    /// for any other reason, or after [`DEFER_AT_MOST`] if none comes. Nobody waits
    /// for it (the committed index).
    Deferred,
}

/// How long a [`Sync::Deferred`] write waits for a transaction to ride along with.
const DEFER_AT_MOST: Duration = Duration::from_millis(100);

struct WriteRequest {
    shard: ShardId,
    ops: Vec<Op>,
    sync: Sync,
    /// Answered once the ops are readable (and, for `Sync::Now`, durable).
    written: oneshot::Sender<Result<(), String>>,
    /// Told once the ops are durable as the policy says.
    flushed: Option<LogFlushed<ShardTc>>,
    /// When it was handed to the writer.
    queued_at: Instant,
}

impl LogDb {
    /// A database that lives in memory only (`storage.engine = "memory"`): for
    /// tests and benchmarks; a restart loses everything.
    pub fn memory() -> Self {
        Self {
            inner: Arc::new(Engine::Memory(Mutex::new(HashMap::new()))),
        }
    }

    /// Opens (or creates) the durable database in `dir`, creating `dir` if needed.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<Self, OpenError> {
        Self::open_timed(dir, fsync, StorageTimings::default())
    }

    /// [`LogDb::open`], the writer observing each commit in `timings` (the node's
    /// metrics). The database caches at most [`CACHE_BYTES`] of its pages.
    pub fn open_timed(
        dir: &Path,
        fsync: FsyncPolicy,
        timings: StorageTimings,
    ) -> Result<Self, OpenError> {
        let path = dir.join(DB_FILE);
        let fail = |reason: String| OpenError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail(e.to_string()))?;
        // Both tables exist from the start, so that readers never meet a missing one.
        let create = || -> Result<(), EngineError> {
            let txn = db.begin_write().map_err(|e| EngineError::new("begin", e))?;
            txn.open_table(LOGS)
                .map_err(|e| EngineError::new("logs table", e))?;
            txn.open_table(META)
                .map_err(|e| EngineError::new("meta table", e))?;
            txn.commit().map_err(|e| EngineError::new("commit", e))
        };
        create().map_err(|e| fail(e.0))?;
        let db = Arc::new(db);
        let (requests, queue) = mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("raft-log-writer".to_owned())
            .spawn(move || write_loop(&writer_db, &queue, fsync, &timings))
            .map_err(|e| fail(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Engine::Durable(Durable {
                db,
                tails: Mutex::new(HashMap::new()),
                requests: Some(requests),
                writer: Some(writer),
            })),
        })
    }

    /// The store of one shard.
    pub fn shard(&self, shard: ShardId) -> ShardLogStore {
        ShardLogStore {
            shard,
            db: self.clone(),
        }
    }

    async fn write(
        &self,
        shard: ShardId,
        ops: Vec<Op>,
        sync: Sync,
        flushed: Option<LogFlushed<ShardTc>>,
    ) -> Result<(), EngineError> {
        match &*self.inner {
            Engine::Memory(shards) => {
                {
                    let mut shards = shards.lock().unwrap_or_else(PoisonError::into_inner);
                    let stored = shards.entry(shard).or_default();
                    for op in ops {
                        match op {
                            Op::PutLog(index, bytes) => {
                                stored.logs.insert(index, bytes);
                            }
                            Op::PutMeta(kind, bytes) => {
                                stored.meta.insert(kind, bytes);
                            }
                            Op::RemoveLogsFrom(index) => {
                                stored.logs.split_off(&index);
                            }
                            Op::RemoveLogsThrough(index) => {
                                stored.logs = stored.logs.split_off(&index.saturating_add(1));
                            }
                        }
                    }
                }
                if let Some(flushed) = flushed {
                    flushed.log_io_completed(Ok(()));
                }
                Ok(())
            }
            Engine::Durable(durable) => {
                // What the tail learns once the write is committed (log ops only).
                let tail_ops: Vec<Op> = ops.iter().filter_map(Op::for_tail).collect();
                let answer = durable.send(shard, ops, sync, flushed)?;
                match answer.await {
                    Ok(Ok(())) => {
                        if !tail_ops.is_empty() {
                            let mut tails =
                                durable.tails.lock().unwrap_or_else(PoisonError::into_inner);
                            let tail = tails.entry(shard).or_default();
                            for op in tail_ops {
                                match op {
                                    Op::PutLog(index, bytes) => tail.put(index, bytes),
                                    Op::RemoveLogsFrom(index) => tail.remove_from(index),
                                    Op::RemoveLogsThrough(index) => tail.remove_through(index),
                                    Op::PutMeta(..) => {}
                                }
                            }
                        }
                        Ok(())
                    }
                    Ok(Err(e)) => {
                        // What the database holds is no longer known: forget the tail.
                        let mut tails =
                            durable.tails.lock().unwrap_or_else(PoisonError::into_inner);
                        tails.remove(&shard);
                        Err(EngineError(e))
                    }
                    Err(_) => Err(EngineError("the log writer has stopped".to_owned())),
                }
            }
        }
    }

    /// Queues metadata `ops` (durable with the next fsync) and does not wait for them:
    /// for what openraft only reads back at start (the committed index), where
    /// waiting would put one more trip to the writer thread into every commit. The
    /// writer's queue is FIFO, so a later write still sees this one; a failure is
    /// logged by the writer.
    fn write_meta_detached(&self, shard: ShardId, ops: Vec<Op>) -> Result<(), EngineError> {
        match &*self.inner {
            Engine::Memory(shards) => {
                // Synchronous anyway: nothing to wait for.
                let mut shards = shards.lock().unwrap_or_else(PoisonError::into_inner);
                let stored = shards.entry(shard).or_default();
                for op in ops {
                    if let Op::PutMeta(kind, bytes) = op {
                        stored.meta.insert(kind, bytes);
                    }
                }
                Ok(())
            }
            Engine::Durable(durable) => durable.send(shard, ops, Sync::Deferred, None).map(drop),
        }
    }

    /// Runs a read on the durable engine's database off the async threads.
    async fn read_durable<T: Send + 'static>(
        db: &Arc<redb::Database>,
        read: impl FnOnce(&redb::Database) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let db = db.clone();
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(|e| EngineError::new("read task", e))?
    }

    async fn read_meta(&self, shard: ShardId, kind: u8) -> Result<Option<Vec<u8>>, EngineError> {
        match &*self.inner {
            Engine::Memory(shards) => {
                let shards = shards.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(shards.get(&shard).and_then(|s| s.meta.get(&kind).cloned()))
            }
            Engine::Durable(durable) => {
                Self::read_durable(&durable.db, move |db| {
                    let txn = db
                        .begin_read()
                        .map_err(|e| EngineError::new("begin read", e))?;
                    let table = txn
                        .open_table(META)
                        .map_err(|e| EngineError::new("meta table", e))?;
                    let value = table
                        .get((shard, kind))
                        .map_err(|e| EngineError::new("read meta", e))?;
                    Ok(value.map(|v| v.value().to_vec()))
                })
                .await
            }
        }
    }

    async fn read_logs(
        &self,
        shard: ShardId,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, EngineError> {
        match &*self.inner {
            Engine::Memory(shards) => {
                let shards = shards.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(shards.get(&shard).map_or_else(Vec::new, |s| {
                    if is_empty_range(start, end) {
                        return Vec::new();
                    }
                    s.logs
                        .range((start, end))
                        .map(|(i, bytes)| (*i, bytes.clone()))
                        .collect()
                }))
            }
            Engine::Durable(durable) => {
                if let Some(held) = durable.tail_entries(shard, start, end) {
                    return Ok(held);
                }
                Self::read_durable(&durable.db, move |db| {
                    if is_empty_range(start, end) {
                        return Ok(Vec::new());
                    }
                    let txn = db
                        .begin_read()
                        .map_err(|e| EngineError::new("begin read", e))?;
                    let table = txn
                        .open_table(LOGS)
                        .map_err(|e| EngineError::new("logs table", e))?;
                    let bound = |b: Bound<u64>| match b {
                        Bound::Included(i) => Bound::Included((shard, i)),
                        Bound::Excluded(i) => Bound::Excluded((shard, i)),
                        Bound::Unbounded => Bound::Unbounded,
                    };
                    // Unbounded ends stay inside the shard's own keys.
                    let lower = match bound(start) {
                        Bound::Unbounded => Bound::Included((shard, 0)),
                        b => b,
                    };
                    let upper = match bound(end) {
                        Bound::Unbounded => Bound::Included((shard, u64::MAX)),
                        b => b,
                    };
                    let range = table
                        .range::<(u32, u64)>((lower, upper))
                        .map_err(|e| EngineError::new("read logs", e))?;
                    let mut logs = Vec::new();
                    for item in range {
                        let (key, value) = item.map_err(|e| EngineError::new("read logs", e))?;
                        logs.push((key.value().1, value.value().to_vec()));
                    }
                    Ok(logs)
                })
                .await
            }
        }
    }

    async fn last_log(&self, shard: ShardId) -> Result<Option<Vec<u8>>, EngineError> {
        match &*self.inner {
            Engine::Memory(shards) => {
                let shards = shards.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(shards
                    .get(&shard)
                    .and_then(|s| s.logs.last_key_value().map(|(_, bytes)| bytes.clone())))
            }
            Engine::Durable(durable) => {
                Self::read_durable(&durable.db, move |db| {
                    let txn = db
                        .begin_read()
                        .map_err(|e| EngineError::new("begin read", e))?;
                    let table = txn
                        .open_table(LOGS)
                        .map_err(|e| EngineError::new("logs table", e))?;
                    let mut range = table
                        .range((shard, 0)..=(shard, u64::MAX))
                        .map_err(|e| EngineError::new("read logs", e))?;
                    match range.next_back() {
                        Some(item) => {
                            let (_, value) = item.map_err(|e| EngineError::new("read logs", e))?;
                            Ok(Some(value.value().to_vec()))
                        }
                        None => Ok(None),
                    }
                })
                .await
            }
        }
    }
}

fn is_empty_range(start: Bound<u64>, end: Bound<u64>) -> bool {
    // BTreeMap::range panics on a start after the end; openraft may ask for `i..i`.
    match (start, end) {
        (Bound::Included(s), Bound::Excluded(e)) => s >= e,
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Excluded(s), Bound::Excluded(e)) => s.saturating_add(1) >= e,
        (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        _ => false,
    }
}

/// The writer thread: takes every waiting request, commits them in one transaction
/// and answers them; fsyncs as the policy says (see the module doc).
fn write_loop(
    db: &redb::Database,
    queue: &mpsc::Receiver<WriteRequest>,
    policy: FsyncPolicy,
    timings: &StorageTimings,
) {
    let sync_every = match policy {
        FsyncPolicy::Always => None,
        FsyncPolicy::Interval(every) => Some(every),
        FsyncPolicy::Never => Some(NEVER_SYNC_EVERY),
    };
    // Appends written without fsync whose acknowledgement waits for one.
    let mut unsynced: Vec<LogFlushed<ShardTc>> = Vec::new();
    // When the oldest commit not yet followed by an fsync was made.
    let mut dirty_since: Option<Instant> = None;
    // Deferred writes waiting for a transaction, and since when the oldest waits.
    let mut deferred: Vec<WriteRequest> = Vec::new();
    let mut deferred_since: Option<Instant> = None;
    loop {
        let sync_due_at = dirty_since
            .zip(sync_every)
            .map(|(since, every)| since + every);
        let defer_due_at = deferred_since.map(|since| since + DEFER_AT_MOST);
        let due_at = match (sync_due_at, defer_due_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let first = match due_at {
            Some(due_at) => {
                match queue.recv_timeout(due_at.saturating_duration_since(Instant::now())) {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match queue.recv() {
                Ok(request) => Some(request),
                Err(_) => break,
            },
        };
        let mut group: Vec<WriteRequest> = first.into_iter().collect();
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        if group.iter().all(|r| r.sync == Sync::Deferred)
            && deferred_since.is_none_or(|since| now < since + DEFER_AT_MOST)
            && sync_due_at.is_none_or(|due_at| now < due_at)
        {
            // Only deferred writes, and nothing else due: wait for company.
            if !group.is_empty() {
                deferred_since.get_or_insert(now);
                deferred.append(&mut group);
            }
            continue;
        }
        if !deferred.is_empty() {
            // Older than what just came: they go first, in the order they were sent.
            deferred.append(&mut group);
            group = std::mem::take(&mut deferred);
        }
        deferred_since = None;
        let due = sync_due_at.is_some_and(|due_at| now >= due_at);
        let fsync = due
            || group.iter().any(|r| {
                r.sync == Sync::Now || (r.sync == Sync::Policy && policy == FsyncPolicy::Always)
            });
        let started = Instant::now();
        // Deferred writes wait for company on purpose; what waited for the writer is
        // the rest.
        if let Some(oldest) = group
            .iter()
            .filter(|r| r.sync != Sync::Deferred)
            .map(|r| r.queued_at)
            .min()
        {
            timings
                .queued
                .observe(started.saturating_duration_since(oldest));
        }
        let result = commit(db, &group, fsync);
        timings.commit.observe(started.elapsed());
        let failed = result.as_ref().err().map(|e| e.0.clone());
        if let Some(e) = &failed {
            // Some writes (the committed index) have nobody waiting for their answer.
            tracing::error!(error = %e, writes = group.len(), "a Raft log commit failed");
        }
        for request in group {
            let _ = request.written.send(match &failed {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            });
            if let Some(flushed) = request.flushed {
                match (&failed, policy) {
                    (Some(e), _) => flushed.log_io_completed(Err(std::io::Error::other(e.clone()))),
                    (None, FsyncPolicy::Never) => flushed.log_io_completed(Ok(())),
                    (None, _) if fsync => flushed.log_io_completed(Ok(())),
                    (None, _) => unsynced.push(flushed),
                }
            }
        }
        match failed {
            None if fsync => {
                dirty_since = None;
                for flushed in unsynced.drain(..) {
                    flushed.log_io_completed(Ok(()));
                }
            }
            None => {
                dirty_since.get_or_insert_with(Instant::now);
            }
            Some(e) => {
                // Earlier unsynced commits may never reach the disk now: fail them too.
                for flushed in unsynced.drain(..) {
                    flushed.log_io_completed(Err(std::io::Error::other(e.clone())));
                }
            }
        }
    }
    // Closing: make everything written durable before the database is closed.
    if dirty_since.is_some() || !unsynced.is_empty() || !deferred.is_empty() {
        let result = commit(db, &deferred, true);
        if let Err(e) = &result {
            tracing::error!(error = %e, "the Raft log's last fsync failed");
        }
        for flushed in unsynced {
            flushed.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.0.clone())),
            );
        }
    }
}

fn commit(db: &redb::Database, group: &[WriteRequest], fsync: bool) -> Result<(), EngineError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| EngineError::new("begin write", e))?;
    let durability = if fsync {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| EngineError::new("durability", e))?;
    {
        let mut logs = txn
            .open_table(LOGS)
            .map_err(|e| EngineError::new("logs table", e))?;
        let mut meta = txn
            .open_table(META)
            .map_err(|e| EngineError::new("meta table", e))?;
        for request in group {
            let shard = request.shard;
            for op in &request.ops {
                match op {
                    Op::PutLog(index, bytes) => {
                        logs.insert((shard, *index), bytes.as_slice())
                            .map_err(|e| EngineError::new("write log", e))?;
                    }
                    Op::PutMeta(kind, bytes) => {
                        meta.insert((shard, *kind), bytes.as_slice())
                            .map_err(|e| EngineError::new("write meta", e))?;
                    }
                    Op::RemoveLogsFrom(index) => {
                        logs.retain_in((shard, *index)..=(shard, u64::MAX), |_, _| false)
                            .map_err(|e| EngineError::new("truncate", e))?;
                    }
                    Op::RemoveLogsThrough(index) => {
                        logs.retain_in((shard, 0)..=(shard, *index), |_, _| false)
                            .map_err(|e| EngineError::new("purge", e))?;
                    }
                }
            }
        }
    }
    txn.commit().map_err(|e| EngineError::new("commit", e))
}

/// One shard's part of the node's [`LogDb`]: its Raft log, vote, committed index
/// and last snapshot. Cheap to clone; the clone is also its log reader.
#[derive(Clone)]
pub struct ShardLogStore {
    shard: ShardId,
    db: LogDb,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    postcard::to_allocvec(value).map_err(|e| EngineError::new("encode", e))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::new(&format!("corrupt {what}"), e))
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &EngineError,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, e).into()
}

impl ShardLogStore {
    /// Which shard this is.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    async fn meta<T: DeserializeOwned>(
        &self,
        kind: u8,
        what: &str,
    ) -> Result<Option<T>, EngineError> {
        match self.db.read_meta(self.shard, kind).await? {
            Some(bytes) => decode(what, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The shard's last snapshot, if one was built or installed.
    pub async fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
        self.meta(META_SNAPSHOT, "snapshot")
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))
    }

    /// Keeps `snapshot` as the shard's last (it reaches the disk with the next fsync,
    /// before any purge that relies on it).
    pub async fn save_snapshot(
        &self,
        snapshot: StoredSnapshot,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = snapshot.meta.signature();
        let fail = |e: EngineError| -> StorageError<NodeId> {
            io_error(
                ErrorSubject::Snapshot(Some(signature.clone())),
                ErrorVerb::Write,
                &e,
            )
        };
        let bytes = encode(&snapshot).map_err(fail)?;
        self.db
            .write(
                self.shard,
                vec![Op::PutMeta(META_SNAPSHOT, bytes)],
                Sync::Lazy,
                None,
            )
            .await
            .map_err(fail)
    }
}

impl RaftLogReader<ShardTc> for ShardLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<ShardTc>>, StorageError<NodeId>> {
        let fail = |e: EngineError| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e);
        let stored = self
            .db
            .read_logs(
                self.shard,
                range.start_bound().cloned(),
                range.end_bound().cloned(),
            )
            .await
            .map_err(fail)?;
        let mut entries = Vec::with_capacity(stored.len());
        for (index, bytes) in stored {
            let entry: Entry<ShardTc> = decode("log entry", &bytes)
                .map_err(|e| io_error(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<ShardTc> for ShardLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<ShardTc>, StorageError<NodeId>> {
        let fail = |e: EngineError| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e);
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .meta(META_LAST_PURGED, "last purged log id")
            .await
            .map_err(fail)?;
        let last = match self.db.last_log(self.shard).await.map_err(fail)? {
            Some(bytes) => {
                let entry: Entry<ShardTc> = decode("log entry", &bytes).map_err(fail)?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let fail = |e: EngineError| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e);
        let bytes = encode(vote).map_err(fail)?;
        self.db
            .write(
                self.shard,
                vec![Op::PutMeta(META_VOTE, bytes)],
                Sync::Now,
                None,
            )
            .await
            .map_err(fail)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(META_VOTE, "vote")
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let fail = |e: EngineError| io_error(ErrorSubject::Store, ErrorVerb::Write, &e);
        let bytes = encode(&committed).map_err(fail)?;
        // Read back only at start, to re-apply what was committed: not worth a wait.
        self.db
            .write_meta_detached(self.shard, vec![Op::PutMeta(META_COMMITTED, bytes)])
            .map_err(fail)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<Option<LogId<NodeId>>> = self
            .meta(META_COMMITTED, "committed log id")
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<ShardTc>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<ShardTc>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for entry in entries {
            let bytes = encode(&entry)
                .map_err(|e| io_error(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            ops.push(Op::PutLog(entry.log_id.index, bytes));
        }
        self.db
            .write(self.shard, ops, Sync::Policy, Some(callback))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.db
            .write(
                self.shard,
                vec![Op::RemoveLogsFrom(log_id.index)],
                Sync::Lazy,
                None,
            )
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let fail = |e: EngineError| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e);
        let bytes = encode(&log_id).map_err(fail)?;
        // The purge point first, in the same transaction: get_log_state never sees
        // the entries gone without knowing where the log now starts.
        let ops = vec![
            Op::PutMeta(META_LAST_PURGED, bytes),
            Op::RemoveLogsThrough(log_id.index),
        ];
        self.db
            .write(self.shard, ops, Sync::Lazy, None)
            .await
            .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::{Retention, ShardStateMachine};
    use super::super::types::{ShardBatch, ShardCommand};
    use super::*;
    use crate::protocol::UserInfo;
    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

    fn no_sink() -> Arc<dyn super::super::ApplySink> {
        Arc::new(|_shard: ShardId, _committed: Vec<super::super::Committed>| {})
    }

    struct MemoryBuilder;

    impl StoreBuilder<ShardTc, ShardLogStore, ShardStateMachine, ()> for MemoryBuilder {
        async fn build(
            &self,
        ) -> Result<((), ShardLogStore, ShardStateMachine), StorageError<NodeId>> {
            let db = LogDb::memory();
            let sm =
                ShardStateMachine::open(3, Retention::messages(10), no_sink(), db.shard(3)).await?;
            Ok(((), db.shard(3), sm))
        }
    }

    struct DurableBuilder(FsyncPolicy);

    impl StoreBuilder<ShardTc, ShardLogStore, ShardStateMachine, tempfile::TempDir> for DurableBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, ShardLogStore, ShardStateMachine), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let db = LogDb::open(dir.path(), self.0).map_err(|e| StorageIOError::write(&e))?;
            // Another shard writes to the same database, so that prefixes are tested too.
            let mut neighbour = db.shard(2);
            neighbour.save_vote(&Vote::new(9, 9)).await?;
            let sm =
                ShardStateMachine::open(3, Retention::messages(10), no_sink(), db.shard(3)).await?;
            Ok((dir, db.shard(3), sm))
        }
    }

    #[test]
    fn the_memory_engine_passes_the_openraft_suite() {
        Suite::test_all(MemoryBuilder).expect("suite");
    }

    #[test]
    fn the_durable_engine_passes_the_openraft_suite() {
        Suite::test_all(DurableBuilder(FsyncPolicy::Always)).expect("suite");
    }

    #[test]
    fn the_durable_engine_with_an_fsync_interval_passes_the_openraft_suite() {
        Suite::test_all(DurableBuilder(FsyncPolicy::Interval(
            Duration::from_millis(2),
        )))
        .expect("suite");
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn entry(index: u64) -> Entry<ShardTc> {
        let command = ShardCommand::Publish {
            room: "lobby".to_owned(),
            from: UserInfo {
                id: "u1".to_owned(),
                name: "Ada".to_owned(),
            },
            content: format!("message {index} {}", "x".repeat(250)),
            id: format!("id-{index}"),
            ts: 1_000 + index,
            idempotency_key: None,
        };
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(ShardBatch(vec![command])),
        }
    }

    #[tokio::test]
    async fn the_committed_index_is_written_without_a_transaction_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut store = db.shard(3);
        // Alone, it is written once DEFER_AT_MOST has passed.
        store
            .save_committed(Some(log_id(1)))
            .await
            .expect("committed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.read_committed().await.expect("read") != Some(log_id(1)) {
            assert!(Instant::now() < deadline, "the deferred write never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // With company, it rides along with the next write, in order.
        store
            .save_committed(Some(log_id(2)))
            .await
            .expect("committed");
        store
            .save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("vote");
        assert_eq!(store.read_committed().await.expect("read"), Some(log_id(2)));
    }
    #[tokio::test]
    async fn each_commit_and_its_wait_are_timed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let timings = StorageTimings::default();
        let db = LogDb::open_timed(dir.path(), FsyncPolicy::Always, timings.clone()).expect("open");
        let mut store = db.shard(3);
        assert_eq!(timings.commit.count(), 0, "opening commits nothing timed");
        store
            .save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("vote");
        // The writer times a commit before it answers the writes it carried.
        assert_eq!(timings.commit.count(), 1);
        assert_eq!(timings.queued.count(), 1);
        store
            .blocking_append([entry(1), entry(2)])
            .await
            .expect("append");
        assert!(
            timings.commit.count() >= 2,
            "the append's commit is timed too"
        );
    }

    #[tokio::test]
    async fn a_reopened_store_has_its_vote_log_committed_index_and_snapshot() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Interval(Duration::from_millis(50)),
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let db = LogDb::open(dir.path(), policy).expect("open");
                let mut store = db.shard(5);
                store
                    .save_vote(&Vote::new_committed(2, 1))
                    .await
                    .expect("vote");
                store
                    .blocking_append((1..=6).map(entry))
                    .await
                    .expect("append");
                store.truncate(log_id(6)).await.expect("truncate");
                store
                    .save_committed(Some(log_id(4)))
                    .await
                    .expect("committed");
                let mut sm =
                    ShardStateMachine::open(5, Retention::messages(10), no_sink(), db.shard(5))
                        .await
                        .expect("sm");
                sm.apply((1..=3).map(entry)).await.expect("apply");
                sm.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .expect("snapshot");
                store.purge(log_id(2)).await.expect("purge");
            }
            let db = LogDb::open(dir.path(), policy).expect("reopen");
            let mut store = db.shard(5);
            assert_eq!(
                store.read_vote().await.expect("vote"),
                Some(Vote::new_committed(2, 1))
            );
            assert_eq!(
                store.get_log_state().await.expect("state"),
                LogState {
                    last_purged_log_id: Some(log_id(2)),
                    last_log_id: Some(log_id(5)),
                },
                "{policy:?}"
            );
            let entries = store.try_get_log_entries(0..100).await.expect("entries");
            assert_eq!(
                entries,
                (3..=5).map(entry).collect::<Vec<_>>(),
                "{policy:?}"
            );
            assert_eq!(
                store.read_committed().await.expect("committed"),
                Some(log_id(4))
            );
            let mut sm =
                ShardStateMachine::open(5, Retention::messages(10), no_sink(), db.shard(5))
                    .await
                    .expect("sm");
            let (applied, _) = sm.applied_state().await.expect("applied");
            assert_eq!(applied, Some(log_id(3)), "{policy:?}");
            assert_eq!(sm.reader().seq("lobby"), 3);
            assert!(sm.get_current_snapshot().await.expect("snapshot").is_some());
            // Other shards of the same database are untouched.
            assert_eq!(db.shard(6).read_vote().await.expect("vote"), None);
            assert!(db
                .shard(6)
                .try_get_log_entries(..)
                .await
                .expect("entries")
                .is_empty());
        }
    }

    #[tokio::test]
    async fn with_an_fsync_interval_an_append_is_acknowledged_only_after_the_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(
            dir.path(),
            FsyncPolicy::Interval(Duration::from_millis(300)),
        )
        .expect("open");
        let mut store = db.shard(1);
        let started = Instant::now();
        store.blocking_append([entry(1)]).await.expect("append");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "acknowledged after {:?}, before the interval's fsync",
            started.elapsed()
        );
        // The vote is fsynced at once, and readable when save_vote returns.
        store.save_vote(&Vote::new(1, 1)).await.expect("vote");
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(1, 1))
        );
    }

    #[tokio::test]
    async fn shards_sharing_the_database_keep_to_their_own_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut tasks = Vec::new();
        for shard in 0..8 {
            let mut store = db.shard(shard);
            tasks.push(tokio::spawn(async move {
                for index in 1..=10 {
                    store.blocking_append([entry(index)]).await?;
                }
                Ok::<_, StorageError<NodeId>>(())
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("append");
        }
        db.shard(3).purge(log_id(9)).await.expect("purge");
        db.shard(4).truncate(log_id(2)).await.expect("truncate");
        for shard in 0..8 {
            let entries = db
                .shard(shard)
                .try_get_log_entries(..)
                .await
                .expect("entries");
            let want: Vec<u64> = match shard {
                3 => vec![10],
                4 => vec![1],
                _ => (1..=10).collect(),
            };
            let got: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(got, want, "shard {shard}");
        }
    }

    /// Writes raw bytes under a key of the database, as a disk fault would.
    fn corrupt(dir: &Path, write: impl FnOnce(&redb::WriteTransaction)) {
        let db = redb::Database::create(dir.join(DB_FILE)).expect("open raw");
        let txn = db.begin_write().expect("begin");
        write(&txn);
        txn.commit().expect("commit");
    }

    #[tokio::test]
    async fn corrupt_bytes_in_the_store_are_storage_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = LogDb::open(dir.path(), FsyncPolicy::Always).expect("open");
            let mut store = db.shard(1);
            store.save_vote(&Vote::new(1, 1)).await.expect("vote");
            store
                .blocking_append((1..=3).map(entry))
                .await
                .expect("append");
        }
        corrupt(dir.path(), |txn| {
            let mut logs = txn.open_table(LOGS).expect("logs");
            logs.insert((1, 2), [0xff_u8; 7].as_slice())
                .expect("insert");
            logs.insert((1, 3), [].as_slice()).expect("insert");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert((1, META_VOTE), [0xff_u8; 3].as_slice())
                .expect("insert");
            meta.insert((1, META_SNAPSHOT), [1_u8, 2, 3].as_slice())
                .expect("insert");
            meta.insert((1, META_COMMITTED), [7_u8].as_slice())
                .expect("insert");
        });
        let db = LogDb::open(dir.path(), FsyncPolicy::Always).expect("reopen");
        let mut store = db.shard(1);
        assert!(store.read_vote().await.is_err());
        assert!(store.read_committed().await.is_err());
        assert!(
            store.get_log_state().await.is_err(),
            "the last entry is corrupt"
        );
        assert!(store.try_get_log_entries(1..=3).await.is_err());
        assert_eq!(
            store
                .try_get_log_entries(1..2)
                .await
                .expect("entry 1")
                .len(),
            1
        );
        assert!(store.read_snapshot().await.is_err());
        assert!(
            ShardStateMachine::open(1, Retention::messages(10), no_sink(), db.shard(1))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_snapshot_whose_state_does_not_decode_is_a_storage_error() {
        let db = LogDb::memory();
        let store = db.shard(1);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(3)),
            last_membership: Default::default(),
            snapshot_id: "x".to_owned(),
        };
        store
            .save_snapshot(StoredSnapshot {
                meta: meta.clone(),
                data: vec![1, 0xff, 0xff],
            })
            .await
            .expect("save");
        assert!(
            ShardStateMachine::open(1, Retention::messages(10), no_sink(), db.shard(1))
                .await
                .is_err()
        );
        // A well-formed state that is not the one the metadata names.
        let mut sm = ShardStateMachine::open(2, Retention::messages(10), no_sink(), db.shard(2))
            .await
            .expect("sm");
        let state = super::super::state_machine::ShardState::default();
        let data = state.encode().expect("encode");
        let installed = sm
            .install_snapshot(&meta, Box::new(std::io::Cursor::new(data)))
            .await;
        assert!(installed.is_err());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_naming_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(DB_FILE), b"not a database at all").expect("write");
        let e = LogDb::open(dir.path(), FsyncPolicy::Always)
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains(&dir.path().join(DB_FILE).display().to_string()),
            "{e}"
        );
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").expect("write");
        let e = LogDb::open(&file, FsyncPolicy::Always)
            .err()
            .expect("refused");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }

    /// Append + fsync throughput of the durable engine on this machine.
    #[tokio::test]
    #[ignore]
    async fn durable_append_figures() {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let db = LogDb::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut store = db.shard(0);
        let mut next = 1;
        for batch in [1_u64, 10, 100] {
            let appends = match batch {
                1 => 200,
                10 => 100,
                _ => 30,
            };
            let started = Instant::now();
            for _ in 0..appends {
                store
                    .blocking_append((next..next + batch).map(entry))
                    .await
                    .expect("append");
                next += batch;
            }
            let secs = started.elapsed().as_secs_f64();
            let bytes = encode(&entry(1)).expect("encode").len();
            println!(
                "batch {batch:>3} x {bytes} B: {:.0} appends/s, {:.0} entries/s",
                appends as f64 / secs,
                (appends * batch) as f64 / secs
            );
        }
        // Group commit: 16 shards appending one entry at a time, all at once.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for shard in 1..=16 {
            let mut store = db.shard(shard);
            tasks.push(tokio::spawn(async move {
                for index in 1..=20 {
                    store.blocking_append([entry(index)]).await.expect("append");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        println!("16 shards x batch 1: {:.0} entries/s in all", 320.0 / secs);
    }
}
