//! Raft's state as Prometheus gauges: a task samples openraft's metrics watch and sets the
//! `roost_raft_*` gauges ([`RaftStats`], declared in `crate::metrics`).
//!
//! ```text
//!   openraft core ──watch<RaftMetrics>──▶ run: on a change, at most every SAMPLE_EVERY ──▶ gauges
//!        ▲                                 │
//!        └──── external_request(committed) ┘   (RaftMetrics in 0.9 has no commit index)
//! ```
//!
//! Who calls it: `Cluster::start` spawns [`run`] once per node.
//!
//! What each gauge is, from openraft 0.9's `RaftMetrics`:
//! - term: `current_term`; last log index: `last_log_index`; applied index: `last_applied`;
//!   apply lag: last log index − applied index (entries appended and not applied yet: on a
//!   follower this includes entries not committed yet);
//! - commit index: 0.9's `RaftMetrics` does not carry it, so it is read from the core's
//!   `RaftState::committed` with `Raft::external_request` (a closure the core runs between its
//!   other work; one per sample). `with_raft_state` would do the same but logs at ERROR when
//!   the core has stopped, which a sample racing shutdown would hit;
//! - is leader: `current_leader` is this node (as `Cluster::is_leader`);
//! - members / voters: the nodes / voter ids of the membership config;
//! - leader changes: counted by [`LeaderSeen`].
//!
//! Concurrency: one task. It waits for the watch to change, so an idle cluster costs nothing;
//! after each sample it sleeps [`SAMPLE_EVERY`], so a busy one (the watch changes with every
//! append) costs at most a few samples a second, not one per entry. The watch coalesces what
//! changed meanwhile: a gauge shows the latest value. It ends when the watch closes: openraft
//! drops its sender when its core stops (`Raft::shutdown`, or a fatal storage error).

use crate::metrics::RaftStats;
use crate::types::{NodeId, NodeInfo, TypeConfig};
use openraft::metrics::RaftMetrics;
use openraft::Raft;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The least time between two samples. Prometheus scrapes every 10–60 s; a quarter of a second
/// keeps the gauges current for any scrape and the task's cost negligible.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Samples `raft`'s metrics into the `roost_raft_*` gauges until the Raft stops.
pub(crate) async fn run(raft: Raft<TypeConfig>) {
    let rx = raft.metrics();
    sample_until_closed(rx, move || committed(&raft)).await;
}

/// The index the core knows is committed; `None` when none is yet, or the core has stopped
/// (the closure is dropped unrun, and with it the sender).
fn committed(raft: &Raft<TypeConfig>) -> impl Future<Output = Option<u64>> + Send + 'static {
    let (tx, rx) = oneshot::channel();
    raft.external_request(move |st| {
        let _ = tx.send(st.committed.as_ref().map(|l| l.index));
    });
    async move { rx.await.ok().flatten() }
}

/// The loop of [`run`], on any metrics watch and source of the commit index (tests feed both).
async fn sample_until_closed<F, Fut>(
    mut rx: watch::Receiver<RaftMetrics<NodeId, NodeInfo>>,
    mut committed: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<u64>>,
{
    let stats = RaftStats::default();
    let mut leaders = LeaderSeen::default();
    loop {
        // Copied out: the watch's read lock is not held across an await.
        let s = Sample::of(&rx.borrow_and_update());
        let commit = committed().await;
        s.record(&stats, commit);
        if leaders.observe(s.term, s.leader) {
            stats.leader_changes.increment(1);
        }
        if rx.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// What one sample reads from `RaftMetrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    term: u64,
    last_log_index: u64,
    applied_index: u64,
    leader: Option<NodeId>,
    is_leader: bool,
    members: usize,
    voters: usize,
}

impl Sample {
    fn of(m: &RaftMetrics<NodeId, NodeInfo>) -> Sample {
        let membership = m.membership_config.membership();
        Sample {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader: m.current_leader,
            is_leader: m.current_leader == Some(m.id),
            members: membership.nodes().count(),
            voters: membership.voter_ids().count(),
        }
    }

    /// Sets the gauges; `commit` is `None` while nothing is known committed (shown as 0).
    fn record(&self, stats: &RaftStats, commit: Option<u64>) {
        stats.term.set(self.term as f64);
        stats.last_log_index.set(self.last_log_index as f64);
        stats.commit_index.set(commit.unwrap_or(0) as f64);
        stats.applied_index.set(self.applied_index as f64);
        stats
            .apply_lag
            .set(self.last_log_index.saturating_sub(self.applied_index) as f64);
        stats.is_leader.set(if self.is_leader { 1.0 } else { 0.0 });
        stats.members.set(self.members as f64);
        stats.voters.set(self.voters as f64);
    }
}

/// Counts leaders taking office as one node sees them: a sample whose leader is known and is
/// not the (term, leader) last counted. A term has at most one leader, so an election is
/// counted once however the watch coalesced its steps (leader → none → new leader); a node
/// re-elected in a later term counts again. Terms this node never saw a leader in (it was cut
/// off meanwhile) are not counted.
#[derive(Debug, Default)]
struct LeaderSeen {
    last: Option<(u64, NodeId)>,
}

impl LeaderSeen {
    /// True when `leader` in `term` is a leader not counted yet.
    fn observe(&mut self, term: u64, leader: Option<NodeId>) -> bool {
        let Some(l) = leader else { return false };
        if self.last == Some((term, l)) {
            return false;
        }
        self.last = Some((term, l));
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::{BoxFuture, Cluster, ClusterConfig, Delivered, LocalNode, Target};
    use crate::convert::SessionTransfer;
    use crate::state::Event;
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
    use roost_core::message::Message;
    use roost_core::ClientId;
    use std::sync::Arc;

    /// The value of the unlabelled series `name` in a Prometheus text rendering.
    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn recorder() -> PrometheusRecorder {
        PrometheusBuilder::new().build_recorder()
    }

    #[test]
    fn leaders_are_counted_once_per_term() {
        let (a, b) = (Some(NodeId::new(1)), Some(NodeId::new(2)));
        let mut seen = LeaderSeen::default();
        let steps = [
            (0, None, false),
            (1, a, true),  // the first leader seen counts
            (1, a, false), // the same, sampled again
            (2, None, false),
            (2, b, true), // a new leader
            (3, b, true), // re-elected in a new term
            (5, a, true), // terms skipped while cut off: one change seen
            (5, None, false),
            (5, a, false),
        ];
        for (i, (term, leader, counted)) in steps.into_iter().enumerate() {
            assert_eq!(seen.observe(term, leader), counted, "step {i}");
        }
    }

    /// The sampler sets the gauges from the watch, counts a new leader, and ends when the watch
    /// closes (the Raft stopped). Real time (this crate's tokio has no `test-util`): about a
    /// second.
    #[tokio::test]
    async fn sampler_follows_the_watch_and_ends_when_it_closes() {
        let rec = recorder();
        let handle = rec.handle();
        let _local = metrics::set_default_local_recorder(&rec);
        let id = NodeId::new(1);
        let mut m = RaftMetrics::new_initial(id);
        m.current_term = 3;
        m.last_log_index = Some(10);
        m.last_applied = Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(3, id),
            7,
        ));
        m.current_leader = Some(NodeId::new(2));
        let (tx, rx) = watch::channel(m.clone());
        let task = tokio::spawn(sample_until_closed(rx, || async { Some(9) }));
        let text = rendered(&handle, |t| value(t, "roost_raft_term") == Some(3.0)).await;
        assert_eq!(value(&text, "roost_raft_last_log_index"), Some(10.0));
        assert_eq!(value(&text, "roost_raft_commit_index"), Some(9.0));
        assert_eq!(value(&text, "roost_raft_applied_index"), Some(7.0));
        assert_eq!(value(&text, "roost_raft_apply_lag"), Some(3.0));
        assert_eq!(value(&text, "roost_raft_is_leader"), Some(0.0));
        assert_eq!(value(&text, "roost_raft_leader_changes_total"), Some(1.0));

        // This node wins the next term.
        m.current_term = 4;
        m.current_leader = Some(id);
        tx.send(m).unwrap();
        let text = rendered(&handle, |t| value(t, "roost_raft_term") == Some(4.0)).await;
        assert_eq!(value(&text, "roost_raft_is_leader"), Some(1.0));
        assert_eq!(value(&text, "roost_raft_leader_changes_total"), Some(2.0));

        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the sampler ends when the watch closes")
            .unwrap();
    }

    /// The rendering once `cond` holds for it (polled every 20 ms, at most 10 s).
    async fn rendered(
        handle: &metrics_exporter_prometheus::PrometheusHandle,
        cond: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = handle.render();
            if cond(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within 10 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    struct NoNode;

    impl LocalNode for NoNode {
        fn deliver(&self, _msg: Arc<Message>, _target: Target<'_>) -> Delivered {
            Delivered::default()
        }

        fn take_session(
            &self,
            _client_id: ClientId,
            _generation: u64,
            _requester: NodeId,
        ) -> BoxFuture<Option<SessionTransfer>> {
            Box::pin(async { None })
        }

        // Takes no sessions in: none is ever on its way here.
        fn sessions_pending(&self, _sessions: &[(ClientId, u64)]) -> Vec<usize> {
            Vec::new()
        }

        fn on_event(&self, _event: &Event) {}
    }

    /// A single-node cluster exports the Raft gauges: it leads, it is the one member, and what
    /// it committed is applied. The runtime is single-threaded so that every task (the sampler
    /// included) records into this test's local recorder.
    #[tokio::test]
    async fn single_node_exports_raft_gauges() {
        let rec = recorder();
        let handle = rec.handle();
        let _local = metrics::set_default_local_recorder(&rec);
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClusterConfig {
            node_id: NodeId::new(1),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: String::new(),
            mqtt_addr: "127.0.0.1:1883".to_owned(),
            seeds: Vec::new(),
            data_dir: dir.path().to_path_buf(),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            forward_timeout: Duration::from_secs(2),
            commit_timeout: Duration::from_secs(2),
            max_packet_size: 1_048_576,
            session_lease: Duration::from_millis(1200),
            tls: None,
        };
        let c = Cluster::start(cfg, Arc::new(NoNode)).await.unwrap();
        let text = rendered(&handle, |t| {
            let committed = value(t, "roost_raft_commit_index").unwrap_or(0.0);
            let applied = value(t, "roost_raft_applied_index").unwrap_or(0.0);
            value(t, "roost_raft_is_leader") == Some(1.0)
                && committed >= 1.0
                && applied >= committed
        })
        .await;
        assert_eq!(value(&text, "roost_raft_members"), Some(1.0), "{text}");
        assert_eq!(value(&text, "roost_raft_voters"), Some(1.0), "{text}");
        assert!(value(&text, "roost_raft_term").unwrap() >= 1.0, "{text}");
        let committed = value(&text, "roost_raft_commit_index").unwrap();
        assert!(value(&text, "roost_raft_last_log_index").unwrap() >= committed);
        assert!(value(&text, "roost_raft_apply_lag").is_some(), "{text}");
        assert!(value(&text, "roost_raft_leader_changes_total").unwrap() >= 1.0);
        c.shutdown().await;
    }
}
