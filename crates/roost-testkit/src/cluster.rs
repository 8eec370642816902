//! Two in-process nodes forming one cluster, optionally with a TCP [`Proxy`] in front of node
//! 2's cluster listener, so a test can cut node 2 off without stopping it: everything node 2
//! sends back on the connections through the proxy (acks of forwarded messages, Raft replies)
//! is discarded while the connections stay open, as in a partition that drops packets.

use crate::TestNode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// A TCP proxy in front of one node's cluster listener (the node advertises the proxy's
/// address).
pub struct Proxy {
    /// Where peers reach the node through it.
    pub addr: SocketAddr,
    /// While set, bytes from the node back to its callers are discarded.
    drop_replies: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let drop_replies = Arc::new(AtomicBool::new(false));
        let drop_flag = drop_replies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let drop_flag = drop_flag.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = outbound.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = ci.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            so.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = si.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            if !drop_flag.load(Relaxed) {
                                co.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    // Both halves end together, when either side closes.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, drop_replies })
    }

    /// Starts (`true`) or stops discarding what the node sends back.
    pub fn drop_replies(&self, on: bool) {
        self.drop_replies.store(on, Relaxed);
    }
}

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
fn two_free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
