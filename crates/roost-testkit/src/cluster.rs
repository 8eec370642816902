//! Two in-process nodes forming one cluster, optionally with a TCP [`Proxy`] in front of node
//! 2's cluster listener, so a test can cut node 2 off without stopping it.

use crate::{Proxy, TestNode};
use std::net::SocketAddr;

/// Two in-process nodes forming one cluster (commit timeout 500 ms); `tweak` adjusts both.
/// With `proxy`, node 2 is reached through a [`Proxy`]. The cluster ports are picked free and
/// released before the nodes bind them, so another test may take one meanwhile: a failed start
/// is retried with fresh ports.
pub async fn two_nodes_with(
    proxy: bool,
    tweak: impl Fn(&mut roost_node::Config) + Copy,
) -> anyhow::Result<(TestNode, TestNode, Option<Proxy>)> {
    let mut last = None;
    for _ in 0..5 {
        let (p1, p2) = two_free_ports()?;
        let target = SocketAddr::from(([127, 0, 0, 1], p2));
        let px = if proxy {
            Some(Proxy::start(target).await?)
        } else {
            None
        };
        let addr2 = px.as_ref().map_or(target, |p| p.addr);
        let seeds = vec![format!("1@127.0.0.1:{p1}"), format!("2@{addr2}")];
        let member = |id: u64, port: u16| {
            let seeds = seeds.clone();
            move |c: &mut roost_node::Config| {
                c.cluster.node_id = id;
                c.cluster.listen = SocketAddr::from(([127, 0, 0, 1], port));
                if id == 2 {
                    c.cluster.advertise = Some(addr2.to_string());
                }
                c.cluster.seeds = seeds;
                c.cluster.commit_timeout_ms = 500;
                tweak(c);
            }
        };
        match tokio::join!(
            TestNode::start_with(member(1, p1)),
            TestNode::start_with(member(2, p2))
        ) {
            (Ok(a), Ok(b)) => return Ok((a, b, px)),
            (a, b) => {
                for n in [a, b] {
                    match n {
                        Ok(n) => n.stop().await,
                        Err(e) => last = Some(e),
                    }
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("two nodes did not start")))
}

/// Two free loopback ports (bound, read, released: a small window in which another test
/// could take one).
pub fn two_free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
