//! A TCP proxy in front of one node's cluster listener (the node advertises the proxy's
//! address), so a test can make the node unreachable without stopping it: discard everything
//! the node sends back on the connections through it (acks of forwarded messages, Raft
//! replies) while they stay open, as in a partition that drops packets; close them; or refuse
//! new ones. Only std and tokio: roost-cluster's own tests use it too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::watch;

/// A TCP proxy to one address.
pub struct Proxy {
    /// Where peers reach the node through it.
    pub addr: SocketAddr,
    /// While set, bytes from the node back to its callers are discarded.
    drop_replies: Arc<AtomicBool>,
    /// Bumped to close every connection open at that moment.
    cut: watch::Sender<u64>,
    /// While set, new connections are closed as soon as they are accepted.
    refuse: Arc<AtomicBool>,
    /// While set, bytes to the node are held back (read, not written on); let go in order when
    /// it is cleared, as a link that blackholes packets and then heals with them in flight.
    hold: Arc<AtomicBool>,
    /// Milliseconds each chunk the node sends back waits in the proxy before it goes on (in
    /// order), as on a slow link: 0, none.
    delay: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let drop_replies = Arc::new(AtomicBool::new(false));
        let (cut, cut_rx) = watch::channel(0u64);
        let drop_flag = drop_replies.clone();
        let refuse = Arc::new(AtomicBool::new(false));
        let refuse_flag = refuse.clone();
        let hold = Arc::new(AtomicBool::new(false));
        let hold_flag = hold.clone();
        let delay = Arc::new(AtomicU64::new(0));
        let delay_ms = delay.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if refuse_flag.load(Relaxed) {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                let drop_flag = drop_flag.clone();
                let hold_flag = hold_flag.clone();
                let delay_ms = delay_ms.clone();
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
                            while hold_flag.load(Relaxed) {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            }
                            so.write_all(&buf[..n]).await?;
                        }
                    };
                    // What the node sends back goes through a queue, each chunk with the time
                    // it may go on (`delay_replies`); a node that closes its side still has
                    // what it sent before delivered.
                    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = si.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            if !drop_flag.load(Relaxed) {
                                let wait = std::time::Duration::from_millis(delay_ms.load(Relaxed));
                                let at = tokio::time::Instant::now() + wait;
                                if due_tx.send((at, buf[..n].to_vec())).is_err() {
                                    return Ok(());
                                }
                            }
                        }
                    };
                    let back = async {
                        while let Some((at, bytes)) = due_rx.recv().await {
                            tokio::time::sleep_until(at).await;
                            co.write_all(&bytes).await?;
                        }
                        Ok::<(), std::io::Error>(())
                    };
                    let downstream = async { tokio::join!(down, back) };
                    // Both halves end together: when either side closes, or on a cut.
                    tokio::select! {
                        _ = up => {}
                        _ = downstream => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            drop_replies,
            cut,
            refuse,
            hold,
            delay,
        })
    }

    /// Delays what the node sends back from now on by `by` (Duration::ZERO: no delay), in
    /// order, as a slow link would: its replies, its Raft answers and its forward
    /// acknowledgements arrive late.
    pub fn delay_replies(&self, by: std::time::Duration) {
        self.delay
            .store(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Relaxed);
    }

    /// `true`: holds back what peers send to the node (it stays in the proxy, in order);
    /// `false`: lets it go on.
    pub fn hold(&self, on: bool) {
        self.hold.store(on, Relaxed);
    }

    /// Starts (`true`) or stops discarding what the node sends back.
    pub fn drop_replies(&self, on: bool) {
        self.drop_replies.store(on, Relaxed);
    }

    /// Closes every connection open now (later ones pass normally).
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// `true`: closes every connection through the proxy and refuses new ones, so nothing
    /// reaches the node behind it (what it sends itself goes to its peers directly). `false`:
    /// connections pass again.
    pub fn isolate(&self, on: bool) {
        self.refuse.store(on, Relaxed);
        if on {
            self.cut();
        }
    }
}
