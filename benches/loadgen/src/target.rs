//! Which broker address the load generator may target: loopback only.
//!
//! This is a workplace rule, not a technical limit: the load generator opens thousands of
//! connections and publishes as fast as the broker accepts, which is an attack when pointed at
//! someone else's machine. `--host` must name or resolve to 127.0.0.0/8 or ::1 (an
//! IPv4-mapped `::ffff:127.x.y.z` counts as 127.x.y.z); anything else is refused before a
//! socket is opened. The same holds for every address of `--nodes`, `--pub-nodes`,
//! `--sub-nodes` and `--publish-host`.
//!
//! It also decides which node each connection of a publishing scenario goes to
//! ([`Placement`], from [`NodeArgs`]):
//!
//! ```text
//!  (nothing)              publishers and subscribers: --host
//!  --nodes A              publishers and subscribers: A
//!  --nodes A,B,C          publishers: A;  subscribers round-robin over B, C
//!  --pub-nodes A,B        publisher p: entry p mod 2         (default --host)
//!  --sub-nodes C,D        subscriber k: entry k mod 2        (default --host)
//! ```
//!
//! so with more than one node every message crosses from the publishers' node to another one
//! and the report measures the cluster's forwarding, not one node's.

use std::fmt;
use std::net::SocketAddr;

/// A command line the load generator refuses (exit code 64).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Resolves `host` (`127.0.0.1:1883`, `[::1]:1883`, `localhost:1883`) and returns the first
/// address, or refuses it unless every address it resolves to is loopback.
pub(crate) async fn resolve_loopback(host: &str) -> Result<SocketAddr, UsageError> {
    resolve_loopback_for("--host", host).await
}

/// [`resolve_loopback`] for the option `flag` (named in the error).
async fn resolve_loopback_for(flag: &str, host: &str) -> Result<SocketAddr, UsageError> {
    let addrs: Vec<SocketAddr> = match host.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => tokio::net::lookup_host(host)
            .await
            .map_err(|e| {
                UsageError(format!(
                    "{flag} {host:?}: cannot resolve ({e}); expected HOST:PORT such as 127.0.0.1:1883"
                ))
            })?
            .collect(),
    };
    check_loopback(flag, host, &addrs)
}

fn check_loopback(flag: &str, host: &str, addrs: &[SocketAddr]) -> Result<SocketAddr, UsageError> {
    let Some(first) = addrs.first() else {
        return Err(UsageError(format!(
            "{flag} {host:?} resolves to no address"
        )));
    };
    for addr in addrs {
        if !addr.ip().to_canonical().is_loopback() {
            return Err(UsageError(format!(
                "refusing {flag} {host} ({}): roost-loadgen only targets brokers on this machine \
                 (loopback 127.0.0.0/8 or ::1); load-testing other hosts is not allowed",
                addr.ip()
            )));
        }
    }
    Ok(*first)
}

/// Which nodes the publishing and subscribing connections of `throughput` and `round-trip` go
/// to (see the module docs).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct NodeArgs {
    /// Cluster nodes, HOST:PORT,...: publishers connect to the first; subscribers round-robin
    /// to the others (with a single node, to it as well). Replaces --host; every address must
    /// be loopback.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        conflicts_with_all = ["host", "pub_nodes", "sub_nodes"]
    )]
    pub(crate) nodes: Vec<String>,
    /// Nodes publishers connect to, round-robin (publisher p: entry p mod n). Default --host.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub(crate) pub_nodes: Vec<String>,
    /// Nodes subscribers connect to, round-robin (subscriber k: entry k mod n). Default
    /// --host.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub(crate) sub_nodes: Vec<String>,
}

/// Resolved, loopback-checked node addresses for publishers and subscribers, as given and as
/// resolved; never empty.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    publishers: Vec<(String, SocketAddr)>,
    subscribers: Vec<(String, SocketAddr)>,
}

impl Placement {
    /// Everything on one address (tests, and runs without node options).
    #[cfg(test)]
    pub(crate) fn single(addr: SocketAddr) -> Placement {
        let one = vec![(addr.to_string(), addr)];
        Placement {
            publishers: one.clone(),
            subscribers: one,
        }
    }

    /// Resolves `nodes` (falling back to `host`), refusing any address that is not loopback.
    pub(crate) async fn resolve(host: &str, nodes: &NodeArgs) -> Result<Placement, UsageError> {
        // Each list with the option it came from, for the error message.
        let given = |flag: &'static str, list: &[String]| {
            if list.is_empty() {
                ("--host", vec![host.to_owned()])
            } else {
                (flag, list.to_vec())
            }
        };
        let (pubs, subs) = match nodes.nodes.as_slice() {
            [] => (
                given("--pub-nodes", &nodes.pub_nodes),
                given("--sub-nodes", &nodes.sub_nodes),
            ),
            [one] => (
                ("--nodes", vec![one.clone()]),
                ("--nodes", vec![one.clone()]),
            ),
            [first, rest @ ..] => (("--nodes", vec![first.clone()]), ("--nodes", rest.to_vec())),
        };
        let resolve_all = |(flag, list): (&'static str, Vec<String>)| async move {
            let mut out = Vec::with_capacity(list.len());
            for h in list {
                let h = h.trim().to_owned();
                let addr = resolve_loopback_for(flag, &h).await?;
                out.push((h, addr));
            }
            Ok::<_, UsageError>(out)
        };
        let publishers = resolve_all(pubs).await?;
        let subscribers = resolve_all(subs).await?;
        Ok(Placement {
            publishers,
            subscribers,
        })
    }

    /// Publisher `p`'s node.
    pub(crate) fn publisher(&self, p: usize) -> SocketAddr {
        self.publishers[p % self.publishers.len()].1
    }

    /// Subscriber `k`'s node.
    pub(crate) fn subscriber(&self, k: usize) -> SocketAddr {
        self.subscribers[k % self.subscribers.len()].1
    }

    /// The publishers' nodes as given on the command line.
    pub(crate) fn publisher_names(&self) -> Vec<String> {
        self.publishers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The subscribers' nodes as given on the command line.
    pub(crate) fn subscriber_names(&self) -> Vec<String> {
        self.subscribers.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(host: &str) -> Result<SocketAddr, String> {
        resolve_loopback(host).await.map_err(|e| e.0)
    }

    #[tokio::test]
    async fn loopback_addresses_are_accepted() {
        for host in [
            "127.0.0.1:1883",
            "127.1.2.3:21883",
            "[::1]:1883",
            "[::ffff:127.0.0.1]:1883",
        ] {
            assert!(check(host).await.is_ok(), "{host}");
        }
    }

    #[tokio::test]
    async fn other_addresses_are_refused_with_a_clear_error() {
        for host in [
            "10.0.0.1:1883",
            "0.0.0.0:1883",
            "192.168.1.20:1883",
            "[::]:1883",
            "[2001:db8::1]:1883",
            "[::ffff:10.0.0.1]:1883",
        ] {
            let err = check(host).await.expect_err(host);
            assert!(
                err.contains("only targets brokers on this machine"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_name_resolving_to_any_non_loopback_address_is_refused() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:1883".parse().expect("literal"),
            "10.1.1.1:1883".parse().expect("literal"),
        ];
        assert!(check_loopback("--host", "mixed:1883", &addrs).is_err());
        assert!(check_loopback("--host", "none:1883", &[]).is_err());
        assert!(check_loopback("--host", "lo:1883", &addrs[..1]).is_ok());
    }

    fn nodes(nodes: &[&str], pub_nodes: &[&str], sub_nodes: &[&str]) -> NodeArgs {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        NodeArgs {
            nodes: v(nodes),
            pub_nodes: v(pub_nodes),
            sub_nodes: v(sub_nodes),
        }
    }

    #[tokio::test]
    async fn placement_puts_publishers_on_the_first_node_and_subscribers_on_the_others(
    ) -> Result<(), UsageError> {
        let host = "127.0.0.1:1883";
        let p = Placement::resolve(host, &NodeArgs::default()).await?;
        assert_eq!(
            (p.publisher(3), p.subscriber(7)),
            (p.publisher(0), p.publisher(0))
        );
        assert_eq!(p.publisher_names(), vec![host.to_owned()]);

        let p = Placement::resolve(host, &nodes(&["127.0.0.1:1", "127.0.0.1:2"], &[], &[])).await?;
        assert_eq!(p.publisher(5).port(), 1);
        assert_eq!((p.subscriber(0).port(), p.subscriber(1).port()), (2, 2));

        let three = nodes(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], &[], &[]);
        let p = Placement::resolve(host, &three).await?;
        let ports: Vec<u16> = (0..4).map(|k| p.subscriber(k).port()).collect();
        assert_eq!(ports, vec![2, 3, 2, 3]);
        assert_eq!(p.subscriber_names(), vec!["127.0.0.1:2", "127.0.0.1:3"]);

        let p = Placement::resolve(host, &nodes(&["127.0.0.1:9"], &[], &[])).await?;
        assert_eq!((p.publisher(0).port(), p.subscriber(0).port()), (9, 9));

        let split = nodes(&[], &["127.0.0.1:1", "127.0.0.1:2"], &[]);
        let p = Placement::resolve(host, &split).await?;
        assert_eq!((p.publisher(0).port(), p.publisher(1).port()), (1, 2));
        assert_eq!(p.subscriber(1).port(), 1883);
        Ok(())
    }

    #[tokio::test]
    async fn every_node_address_must_be_loopback() {
        for args in [
            nodes(&["127.0.0.1:1", "10.0.0.2:1883"], &[], &[]),
            nodes(&[], &["192.168.0.1:1883"], &[]),
            nodes(&[], &[], &["127.0.0.1:1", "[2001:db8::1]:1883"]),
        ] {
            let e = Placement::resolve("127.0.0.1:1883", &args)
                .await
                .expect_err("refused");
            assert!(e.0.contains("only targets brokers on this machine"), "{e}");
            assert!(e.0.contains("-nodes"), "{e}");
        }
        let e = Placement::resolve("10.0.0.1:1883", &NodeArgs::default())
            .await
            .expect_err("refused");
        assert!(e.0.contains("refusing --host"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_port_is_a_usage_error() {
        let err = check("127.0.0.1").await.expect_err("no port");
        assert!(err.contains("HOST:PORT"), "{err}");
    }
}
