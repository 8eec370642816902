//! openraft's log storage and state machine, persisted in one redb file per node
//! (`DATA_DIR/raft.redb`, docs/rfcs/0002 "Storage: redb, one file per node").
//!
//! ```text
//!   openraft core ──append/truncate/purge/vote/committed──▶ LogStore ─┐
//!                                                                      ├─▶ Arc<Database> (raft.redb)
//!   openraft sm worker ──apply / snapshots──▶ StateMachineStore ──────┘    tables: log, meta, snapshot
//!                                  │
//!                                  ├─▶ Arc<RwLock<ClusterState>>  (read by the node: routes,
//!                                  │                               retained, session owners)
//!                                  └─▶ StateHooks::on_event       (in log order, per entry)
//! ```
//!
//! Tables:
//! - `log`: log index → postcard-encoded `Entry<TypeConfig>`.
//! - `meta`: `"vote"`, `"committed"`, `"last_purged"` → postcard-encoded values.
//! - `snapshot`: `"meta"` → postcard `SnapshotMeta`, `"data"` → the snapshot bytes (a postcard
//!   `{last_applied, last_membership, state}`).
//!
//! Files: this one opens the store and holds the tables, the types and the redb helpers;
//! `store/log_store.rs` implements openraft's log traits on [`LogStore`], and
//! `store/state_machine.rs` its state-machine and snapshot traits on [`StateMachineStore`].
//!
//! Every mutation is one redb write transaction committed with `Durability::Immediate` (fsync)
//! before the call returns (or before `append` reports the entries flushed). Disk work runs on
//! tokio's blocking pool (`spawn_blocking`), never on the async worker threads.
//!
//! The state machine itself lives in memory: it is not written on `apply`. At start, [`open`]
//! loads the latest snapshot; openraft then re-applies the committed log after it (which is why
//! `save_committed`/`read_committed` are persisted). Anything read from disk that does not decode
//! is an error (openraft `StorageError`, or [`StoreError`] at open), never a panic.
//!
//! Concurrency: openraft calls the log store and the state machine from one task each, but it
//! builds snapshots in a spawned task while entries keep being applied. `apply` updates the
//! `ClusterState` and the applied log id under the state's write lock, entry by entry, and the
//! snapshot builder reads both under the read lock, so a snapshot's data always matches its
//! `last_applied`. Lock order: state, then applied. No lock is held across an `.await`.

// openraft's `StorageError` (224 bytes) is the error type its storage traits require, and the
// helpers here produce it directly rather than converting at each trait method. It only occurs
// on a broken disk, where openraft stops the node: its size costs nothing that matters.
#![allow(clippy::result_large_err)]

mod log_store;
mod state_machine;

use crate::state::{ClusterState, Event};
use crate::types::{NodeId, NodeInfo, TypeConfig};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, SnapshotMeta, StorageIOError,
    StoredMembership, Vote,
};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// openraft's storage error for our node id type.
type RaftStorageError = openraft::StorageError<NodeId>;

/// The file name inside the data directory.
const FILE_NAME: &str = "raft.redb";

/// log index → postcard `Entry<TypeConfig>`.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// Raft metadata: [`KEY_VOTE`], [`KEY_COMMITTED`], [`KEY_LAST_PURGED`] → postcard values.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// The latest snapshot: [`KEY_SNAPSHOT_META`] and [`KEY_SNAPSHOT_DATA`].
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";

/// Why the store could not be opened. Every variant names the file.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// redb could not open, create or read the file (unreadable, corrupt, locked by another
    /// process, or written by an incompatible redb version).
    #[error("cannot open raft store {path}: {source}")]
    Open {
        /// The redb file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::Error,
    },
    /// A stored value (`what`) did not decode: the file is corrupt or from an incompatible
    /// version of Roost.
    #[error("raft store {path} holds a corrupt {what}: {source}")]
    Corrupt {
        /// The redb file.
        path: PathBuf,
        /// Which value: "vote", "committed", "last_purged", "snapshot meta", "snapshot data".
        what: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The blocking task that opens the file panicked or was cancelled.
    #[error("opening raft store {path} did not finish: {source}")]
    Task {
        /// The redb file.
        path: PathBuf,
        /// tokio's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// redb page cache for `raft.redb`.
const CACHE_BYTES: usize = 16 << 20;

/// Receives the [`Event`]s that applying committed entries produces.
pub trait StateHooks: Send + Sync + 'static {
    /// Called synchronously in `apply`, in log order, for every event `ClusterState::apply`
    /// returns; also for each session whose owner changed when a snapshot is installed, and
    /// again for the committed entries openraft re-applies after the snapshot when the node
    /// starts (`Raft::new`), before any client is connected. Called
    /// after the state lock is released, so it may read the state, but it must not block: it
    /// holds up applying the log (send to a channel with `try_send`, or similar).
    fn on_event(&self, event: &Event);
}

/// The open redb file, shared by the log store and the state machine.
struct Db {
    db: Database,
    /// For error messages.
    path: PathBuf,
}

/// Opens (creating if needed) `DATA_DIR/raft.redb` and returns the log store and the state
/// machine, the latter loaded from the stored snapshot (if any). openraft re-applies the
/// committed log after it when the `Raft` starts.
pub async fn open(
    data_dir: &Path,
    local: NodeId,
    hooks: Arc<dyn StateHooks>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = data_dir.join(FILE_NAME);
    let dir = data_dir.to_path_buf();
    let task_path = path.clone();
    let loaded = tokio::task::spawn_blocking(move || open_blocking(&dir, task_path)).await;
    let (db, snapshot) = match loaded {
        Ok(r) => r?,
        Err(source) => return Err(StoreError::Task { path, source }),
    };
    let db = Arc::new(db);

    let (state, applied) = match snapshot {
        Some(file) => (
            ClusterState::from_snapshot_for(file.state, local),
            Applied {
                last_applied: file.last_applied,
                last_membership: file.last_membership,
            },
        ),
        None => (ClusterState::for_node(local), Applied::default()),
    };
    tracing::info!(
        path = %db.path.display(),
        last_applied = ?applied.last_applied,
        "opened raft store"
    );
    let log = LogStore { db: db.clone() };
    let sm = StateMachineStore {
        inner: Arc::new(SmInner {
            db,
            state: Arc::new(RwLock::new(state)),
            applied: Mutex::new(applied),
            hooks,
            local,
            snapshot_seq: AtomicU64::new(0),
        }),
    };
    Ok((log, sm))
}

/// Opens the file, creates the tables, checks that the metadata decodes and loads the snapshot.
fn open_blocking(dir: &Path, path: PathBuf) -> Result<(Db, Option<SnapshotFile>), StoreError> {
    if let Err(source) = std::fs::create_dir_all(dir) {
        return Err(StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        });
    }
    let open_err = |path: &Path, e: redb::Error| StoreError::Open {
        path: path.to_path_buf(),
        source: e,
    };
    // redb's default page cache is 1 GiB; the Raft log is written sequentially and read back
    // mostly at its tail, so a small cache keeps the node's memory bounded at no real cost.
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(&path)
        .map_err(|e| open_err(&path, e.into()))?;

    // Create the tables so that read transactions can always open them.
    let txn = db.begin_write().map_err(|e| open_err(&path, e.into()))?;
    {
        txn.open_table(LOG).map_err(|e| open_err(&path, e.into()))?;
        txn.open_table(META)
            .map_err(|e| open_err(&path, e.into()))?;
        txn.open_table(SNAPSHOT)
            .map_err(|e| open_err(&path, e.into()))?;
    }
    txn.commit().map_err(|e| open_err(&path, e.into()))?;

    let txn = db.begin_read().map_err(|e| open_err(&path, e.into()))?;
    let meta = txn
        .open_table(META)
        .map_err(|e| open_err(&path, e.into()))?;
    let check = |key: &'static str| -> Result<(), StoreError> {
        let Some(v) = meta.get(key).map_err(|e| open_err(&path, e.into()))? else {
            return Ok(());
        };
        let decoded = match key {
            KEY_VOTE => postcard::from_bytes::<Vote<NodeId>>(v.value()).map(drop),
            _ => postcard::from_bytes::<Option<LogId<NodeId>>>(v.value()).map(drop),
        };
        decoded.map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            what: key,
            source,
        })
    };
    check(KEY_VOTE)?;
    check(KEY_COMMITTED)?;
    check(KEY_LAST_PURGED)?;

    let snap = txn
        .open_table(SNAPSHOT)
        .map_err(|e| open_err(&path, e.into()))?;
    let meta_bytes = snap
        .get(KEY_SNAPSHOT_META)
        .map_err(|e| open_err(&path, e.into()))?;
    if let Some(m) = meta_bytes {
        if let Err(source) = postcard::from_bytes::<SnapshotMeta<NodeId, NodeInfo>>(m.value()) {
            return Err(StoreError::Corrupt {
                path,
                what: "snapshot meta",
                source,
            });
        }
    }
    let data = snap
        .get(KEY_SNAPSHOT_DATA)
        .map_err(|e| open_err(&path, e.into()))?;
    let snapshot = match data {
        None => None,
        Some(d) => match SnapshotFile::decode(d.value()) {
            Ok(f) => Some(f),
            Err(source) => {
                return Err(StoreError::Corrupt {
                    path,
                    what: "snapshot data",
                    source,
                })
            }
        },
    };
    drop(meta);
    drop(snap);
    drop(txn);
    Ok((Db { db, path }, snapshot))
}

/// The snapshot bytes: the state plus what `applied_state()` must report after installing it.
#[derive(Deserialize)]
struct SnapshotFile {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeInfo>,
    state: crate::state::Snapshot,
}

/// [`SnapshotFile`] as written before policies were replicated (issue 9).
#[derive(Deserialize)]
struct SnapshotFileV1 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeInfo>,
    state: crate::state::SnapshotV1,
}

impl SnapshotFile {
    /// Decodes a snapshot, also one written by an older version (without policies).
    fn decode(bytes: &[u8]) -> Result<SnapshotFile, postcard::Error> {
        postcard::from_bytes::<SnapshotFile>(bytes).or_else(|e| {
            postcard::from_bytes::<SnapshotFileV1>(bytes)
                .map(|v| SnapshotFile {
                    last_applied: v.last_applied,
                    last_membership: v.last_membership,
                    state: v.state.into(),
                })
                .map_err(|_| e)
        })
    }
}

/// [`SnapshotFile`] by reference, to serialise without cloning the state (same encoding).
#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    last_applied: &'a Option<LogId<NodeId>>,
    last_membership: &'a StoredMembership<NodeId, NodeInfo>,
    state: &'a crate::state::Snapshot,
}

/// Runs disk work on the blocking pool. A panicked or cancelled task becomes a storage error
/// about `subject`.
async fn blocking<T, F>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    f: F,
) -> Result<T, RaftStorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageIOError::new(subject, verb, AnyError::new(&e)).into()),
    }
}

/// Builds a storage error from any error (redb's or postcard's).
fn io_err<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: E,
) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// A `map_err` closure for errors about the log.
fn err_logs<E: std::error::Error + 'static>(verb: ErrorVerb) -> impl Fn(E) -> RaftStorageError {
    move |e| io_err(ErrorSubject::Logs, verb, e)
}
/// A `map_err` closure for errors about a snapshot (`meta`, when known, names it).
fn err_snapshot<E: std::error::Error + 'static>(
    meta: Option<&SnapshotMeta<NodeId, NodeInfo>>,
    verb: ErrorVerb,
) -> impl Fn(E) -> RaftStorageError {
    let subject = ErrorSubject::Snapshot(meta.map(|m| m.signature()));
    move |e| io_err(subject.clone(), verb, e)
}

impl Db {
    /// Reads and decodes one `meta` value.
    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, RaftStorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let table = txn
            .open_table(META)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let Some(v) = table
            .get(key)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let decoded =
            postcard::from_bytes(v.value()).map_err(|e| io_err(subject, ErrorVerb::Read, e))?;
        Ok(Some(decoded))
    }

    /// Encodes and durably writes (or with `None`, removes) one `meta` value.
    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), RaftStorageError> {
        let err = |e: redb::Error| io_err(subject.clone(), ErrorVerb::Write, e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(META).map_err(|e| err(e.into()))?;
            match value {
                Some(v) => {
                    let bytes = postcard::to_allocvec(v)
                        .map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
                    table
                        .insert(key, bytes.as_slice())
                        .map_err(|e| err(e.into()))?;
                }
                None => {
                    table.remove(key).map_err(|e| err(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Log entries with index in `[lo, hi)` (`hi` unbounded with `None`).
    fn read_logs(
        &self,
        lo: u64,
        hi: Option<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let txn = self.db.begin_read().map_err(err_logs(ErrorVerb::Read))?;
        let table = txn.open_table(LOG).map_err(err_logs(ErrorVerb::Read))?;
        let end = match hi {
            Some(h) => Bound::Excluded(h),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<u64>((Bound::Included(lo), end))
            .map_err(err_logs(ErrorVerb::Read))?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(err_logs(ErrorVerb::Read))?;
            let index = k.value();
            let entry: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(|e| {
                RaftStorageError::from(StorageIOError::read_log_at_index(index, AnyError::new(&e)))
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    /// The newest log entry's id, if the log is not empty.
    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        let txn = self.db.begin_read().map_err(err_logs(ErrorVerb::Read))?;
        let table = txn.open_table(LOG).map_err(err_logs(ErrorVerb::Read))?;
        let Some((k, v)) = table.last().map_err(err_logs(ErrorVerb::Read))? else {
            return Ok(None);
        };
        let index = k.value();
        let entry: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(|e| {
            RaftStorageError::from(StorageIOError::read_log_at_index(index, AnyError::new(&e)))
        })?;
        Ok(Some(entry.log_id))
    }
}

/// The Raft log, vote and committed id (openraft `RaftLogStorage`). Cheap to clone: clones
/// share the file; one is handed out as the log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

/// What the state machine has applied: reported by `applied_state()` and stored in snapshots.
#[derive(Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeInfo>,
}

struct SmInner {
    db: Arc<Db>,
    /// The live state the node reads.
    state: Arc<RwLock<ClusterState>>,
    /// Updated under `state`'s write lock (lock order: state, then applied), so that a reader
    /// holding `state` sees an `Applied` that matches it.
    applied: Mutex<Applied>,
    hooks: Arc<dyn StateHooks>,
    /// This node: the state it keeps leaves its own direct routes out of the route index
    /// ([`ClusterState::for_node`]).
    local: NodeId,
    /// Makes snapshot ids unique within this process.
    snapshot_seq: AtomicU64,
}

/// The replicated state machine (openraft `RaftStateMachine`). Cheap to clone: clones share the
/// state; one is handed out as the snapshot builder.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<SmInner>,
}

impl StateMachineStore {
    /// The live, shared state the node reads (routes, retained messages, session owners). Hold
    /// its lock briefly and never across an `.await`: `apply` waits for it.
    pub fn state(&self) -> Arc<RwLock<ClusterState>> {
        self.inner.state.clone()
    }
}
