//! [`StateMachineStore`]'s openraft traits: `apply` (committed entries into the in-memory
//! `ClusterState`, their events to [`StateHooks`](super::StateHooks)), building, installing and
//! reading snapshots (`RaftSnapshotBuilder`, `RaftStateMachine`), and writing the `snapshot`
//! table they are kept in.
//!
//! Who calls it: openraft's state-machine worker (apply, install, get) and the snapshot task it
//! spawns (build), through the `StateMachineStore` that [`super::open`] returns.
//!
//! Concurrency: lock order state, then applied (see the parent module). `apply` takes both per
//! entry and calls the hooks after releasing them; snapshots are built and installed on the
//! blocking pool: a build clones the state under its read lock (O(1), the maps are persistent)
//! and serialises the copy after releasing it; an install decodes and indexes outside the
//! lock and swaps the state in under the write lock after the snapshot is durable.

use super::{
    blocking, err_snapshot, io_err, Db, RaftStorageError, SnapshotFile, SnapshotFileRef,
    StateMachineStore, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT,
};
use crate::state::{ClusterState, Event, Snapshot as StateData};
use crate::types::{CommandResponse, NodeId, NodeInfo, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, SnapshotMeta,
    StoredMembership,
};
use redb::ReadableDatabase;
use roost_core::ClientId;
use std::io::Cursor;
use std::sync::atomic::Ordering;

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let inner = self.inner.clone();
        // Timed here: openraft 0.9 reports a new snapshot's log id in its metrics, not how long
        // building it took (`roost_raft_snapshot_duration_seconds`, successful builds only).
        let started = std::time::Instant::now();
        let built = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            // A consistent copy under the locks (O(1): the maps are persistent, see
            // `crate::state`), serialised after releasing them, so neither `apply` nor the
            // readers queued behind it on the fair lock wait for the serialisation.
            let (state, last_applied, last_membership) = {
                let state = inner.state.read();
                let applied = inner.applied.lock();
                (
                    state.snapshot().clone(),
                    applied.last_applied,
                    applied.last_membership.clone(),
                )
            };
            let file = SnapshotFileRef {
                last_applied: &last_applied,
                last_membership: &last_membership,
                state: &state,
            };
            let data =
                postcard::to_allocvec(&file).map_err(err_snapshot(None, ErrorVerb::Write))?;
            drop(state);
            let seq = inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
                snapshot_id,
            };
            write_snapshot(&inner.db, &meta, &data)?;
            tracing::info!(
                snapshot_id = %meta.snapshot_id,
                bytes = data.len(),
                "built raft snapshot"
            );
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await?;
        crate::metrics::snapshot_built(started.elapsed());
        Ok(built)
    }
}

/// Durably replaces the stored snapshot.
fn write_snapshot(
    db: &Db,
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    data: &[u8],
) -> Result<(), RaftStorageError> {
    let err = err_snapshot::<redb::Error>(Some(meta), ErrorVerb::Write);
    let meta_bytes =
        postcard::to_allocvec(meta).map_err(err_snapshot(Some(meta), ErrorVerb::Write))?;
    let txn = db.db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
        table
            .insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())
            .map_err(|e| err(e.into()))?;
        table
            .insert(KEY_SNAPSHOT_DATA, data)
            .map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), RaftStorageError> {
        let applied = self.inner.applied.lock();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let event = {
                let mut state = self.inner.state.write();
                let mut membership = None;
                let (response, event) = match entry.payload {
                    EntryPayload::Blank => (CommandResponse::default(), None),
                    EntryPayload::Normal(cmd) => state.apply_owned(cmd),
                    EntryPayload::Membership(m) => {
                        membership = Some(m);
                        (CommandResponse::default(), None)
                    }
                };
                let mut applied = self.inner.applied.lock();
                applied.last_applied = Some(entry.log_id);
                if let Some(m) = membership {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                }
                responses.push(response);
                event
            };
            if let Some(event) = event {
                self.inner.hooks.on_event(&event);
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let inner = self.inner.clone();
        let meta = meta.clone();
        let events = blocking(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            move || {
                let file = SnapshotFile::decode(&data)
                    .map_err(err_snapshot(Some(&meta), ErrorVerb::Read))?;
                // Durable first: if this fails, the in-memory state is left as it was.
                write_snapshot(&inner.db, &meta, &data)?;
                let new_state = ClusterState::from_snapshot_for(file.state, inner.local);
                // Only this worker changes the state, so the copy taken here is still current
                // when it is replaced: the comparison runs outside the write lock.
                let old = inner.state.read().snapshot().clone();
                let events = ownership_changes(&old, new_state.snapshot());
                let mut state = inner.state.write();
                *state = new_state;
                let mut applied = inner.applied.lock();
                applied.last_applied = meta.last_log_id;
                applied.last_membership = meta.last_membership.clone();
                tracing::info!(snapshot_id = %meta.snapshot_id, "installed raft snapshot");
                Ok(events)
            },
        )
        .await?;
        for event in &events {
            self.inner.hooks.on_event(event);
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let db = self.inner.db.clone();
        blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            let err = err_snapshot::<redb::Error>(None, ErrorVerb::Read);
            let txn = db.db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
            let Some(m) = table.get(KEY_SNAPSHOT_META).map_err(|e| err(e.into()))? else {
                return Ok(None);
            };
            let meta: SnapshotMeta<NodeId, NodeInfo> =
                postcard::from_bytes(m.value()).map_err(err_snapshot(None, ErrorVerb::Read))?;
            let Some(d) = table.get(KEY_SNAPSHOT_DATA).map_err(|e| err(e.into()))? else {
                return Err(io_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Read,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "snapshot meta is stored but its data is missing",
                    ),
                ));
            };
            let data = d.value().to_vec();
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
        })
        .await
    }
}

/// The events a node would have seen had it applied the entries a snapshot replaces: one
/// `SessionClaimed` per client whose owner differs in `new`.
fn ownership_changes(old: &StateData, new: &StateData) -> Vec<Event> {
    let mut events = Vec::new();
    for (client_id, owner) in &new.sessions {
        if old.sessions.get(client_id) != Some(owner) {
            events.push(Event::SessionClaimed {
                client_id: ClientId::from(client_id.as_str()),
                owner: *owner,
                previous: old.sessions.get(client_id).copied(),
            });
        }
    }
    if old.policies != new.policies {
        events.push(Event::PoliciesChanged {
            policies: new.policies.clone(),
        });
    }
    events
}
