//! [`LogStore`]'s openraft traits: reading log ranges (`RaftLogReader`) and appending,
//! truncating, purging, the vote and the committed id (`RaftLogStorage`); each change is one
//! redb write transaction on the `log` or `meta` table, committed with an fsync.
//!
//! Who calls it: openraft's core task, through the `LogStore` that [`super::open`] returns, and
//! the replication tasks through its clone, the log reader.
//!
//! Concurrency: every method moves its disk work to tokio's blocking pool (`blocking`) and holds
//! no lock; redb serialises the write transactions. `append` reports the entries flushed only
//! after its transaction committed.

use super::{
    blocking, err_logs, LogStore, RaftStorageError, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG,
    META,
};
use crate::types::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageIOError, Vote,
};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let lo = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => match x.checked_add(1) {
                Some(x) => x,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => x.checked_add(1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if hi.is_some_and(|h| h <= lo) {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            db.read_logs(lo, hi)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            let last_purged_log_id: Option<LogId<NodeId>> =
                db.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?.flatten();
            // An empty log (everything purged) ends at the last purged id.
            let last_log_id = db.last_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(ErrorSubject::Vote, ErrorVerb::Write, move || {
            db.write_meta(KEY_VOTE, Some(&vote), ErrorSubject::Vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Vote, ErrorVerb::Read, move || {
            db.read_meta(KEY_VOTE, ErrorSubject::Vote)
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Store, ErrorVerb::Write, move || {
            db.write_meta(KEY_COMMITTED, Some(&committed), ErrorSubject::Store)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Store, ErrorVerb::Read, move || {
            let c: Option<Option<LogId<NodeId>>> =
                db.read_meta(KEY_COMMITTED, ErrorSubject::Store)?;
            Ok(c.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            let txn = db.db.begin_write().map_err(err_logs(ErrorVerb::Write))?;
            {
                let mut table = txn.open_table(LOG).map_err(err_logs(ErrorVerb::Write))?;
                for entry in &entries {
                    let bytes = postcard::to_allocvec(entry).map_err(|e| {
                        RaftStorageError::from(StorageIOError::write_log_entry(
                            entry.log_id,
                            AnyError::new(&e),
                        ))
                    })?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .map_err(err_logs(ErrorVerb::Write))?;
                }
            }
            // Durability::Immediate (the default): fsync before returning.
            txn.commit().map_err(err_logs(ErrorVerb::Write))
        })
        .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        tracing::debug!(%log_id, "truncating raft log");
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let txn = db.db.begin_write().map_err(err_logs(ErrorVerb::Delete))?;
            {
                let mut table = txn.open_table(LOG).map_err(err_logs(ErrorVerb::Delete))?;
                table
                    .retain_in::<u64, _>(log_id.index.., |_, _| false)
                    .map_err(err_logs(ErrorVerb::Delete))?;
            }
            txn.commit().map_err(err_logs(ErrorVerb::Delete))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        tracing::debug!(%log_id, "purging raft log");
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let bytes = postcard::to_allocvec(&Some(log_id)).map_err(err_logs(ErrorVerb::Write))?;
            let txn = db.db.begin_write().map_err(err_logs(ErrorVerb::Delete))?;
            {
                let mut meta = txn.open_table(META).map_err(err_logs(ErrorVerb::Write))?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(err_logs(ErrorVerb::Write))?;
                let mut table = txn.open_table(LOG).map_err(err_logs(ErrorVerb::Delete))?;
                table
                    .retain_in::<u64, _>(..=log_id.index, |_, _| false)
                    .map_err(err_logs(ErrorVerb::Delete))?;
            }
            txn.commit().map_err(err_logs(ErrorVerb::Delete))
        })
        .await
    }
}
