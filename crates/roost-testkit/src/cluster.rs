//! In-process nodes forming one cluster, optionally with a TCP [`Proxy`] in front of the last
//! node's cluster listener, so a test can cut that node off without stopping it.

use crate::{Proxy, TestNode};
use std::net::SocketAddr;

/// Two in-process nodes forming one cluster (commit timeout 500 ms); `tweak` adjusts both.
/// With `proxy`, node 2 is reached through a [`Proxy`]. See [`nodes_with`].
pub async fn two_nodes_with(
    proxy: bool,
    tweak: impl Fn(&mut roost_node::Config) + Copy + Send + 'static,
) -> anyhow::Result<(TestNode, TestNode, Option<Proxy>)> {
    let (nodes, px) = nodes_with(2, proxy, tweak).await?;
    let mut nodes = nodes.into_iter();
    match (nodes.next(), nodes.next()) {
        (Some(a), Some(b)) => Ok((a, b, px)),
        _ => anyhow::bail!("two nodes did not start"),
    }
}

/// `n` in-process nodes (ids 1..=n, each seeded with all) forming one cluster (commit timeout
/// 500 ms); `tweak` adjusts each. With `proxy`, the last node is reached through a [`Proxy`]:
/// its peers' connections to it pass through the proxy, what it sends itself goes directly.
/// The cluster ports are picked free and released before the nodes bind them, so another test
/// may take one meanwhile: a failed start is retried with fresh ports.
pub async fn nodes_with(
    n: usize,
    proxy: bool,
    tweak: impl Fn(&mut roost_node::Config) + Copy + Send + 'static,
) -> anyhow::Result<(Vec<TestNode>, Option<Proxy>)> {
    let mut last = None;
    for _ in 0..5 {
        let ports = (0..n)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let target = SocketAddr::from(([127, 0, 0, 1], ports[n - 1]));
        let px = if proxy {
            Some(Proxy::start(target).await?)
        } else {
            None
        };
        let advertised = px.as_ref().map_or(target, |p| p.addr);
        let seeds: Vec<String> = (0..n)
            .map(|i| match i + 1 == n {
                true => format!("{n}@{advertised}"),
                false => format!("{}@127.0.0.1:{}", i + 1, ports[i]),
            })
            .collect();
        // All at once: the first node cannot elect itself before a majority runs.
        let mut starting = tokio::task::JoinSet::new();
        for (i, port) in ports.iter().copied().enumerate() {
            let seeds = seeds.clone();
            let id = i as u64 + 1;
            starting.spawn(async move {
                let node = TestNode::start_with(move |c: &mut roost_node::Config| {
                    c.cluster.node_id = id;
                    c.cluster.listen = SocketAddr::from(([127, 0, 0, 1], port));
                    if id == n as u64 {
                        c.cluster.advertise = Some(advertised.to_string());
                    }
                    c.cluster.seeds = seeds;
                    c.cluster.commit_timeout_ms = 500;
                    tweak(c);
                })
                .await;
                (i, node)
            });
        }
        let mut started: Vec<Option<TestNode>> = (0..n).map(|_| None).collect();
        let mut failed = false;
        while let Some(r) = starting.join_next().await {
            match r {
                Ok((i, Ok(node))) => started[i] = Some(node),
                Ok((_, Err(e))) => {
                    failed = true;
                    last = Some(e);
                }
                Err(e) => {
                    failed = true;
                    last = Some(anyhow::anyhow!("a node's start panicked: {e}"));
                }
            }
        }
        if !failed {
            return Ok((started.into_iter().flatten().collect(), px));
        }
        for node in started.into_iter().flatten() {
            node.stop().await;
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{n} nodes did not start")))
}

/// A loopback port nobody listens on, for a listener a test starts later (seeds must name
/// it before the node binds). Taken from 20000-32767, below Linux's ephemeral range, so an
/// outgoing connection never holds it, and from a counter shared by every test of the
/// process (started at a per-process offset), so two tests running at once never get the
/// same one: a port handed out twice made two tests' clusters talk Raft to each other.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::AcqRel) % SPAN;
        let port = u16::try_from(LOW + n)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in 20000-32767")
}
