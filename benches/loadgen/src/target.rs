//! Which broker address the load generator may target: loopback only.
//!
//! This is a workplace rule, not a technical limit: the load generator opens thousands of
//! connections and publishes as fast as the broker accepts, which is an attack when pointed at
//! someone else's machine. `--host` must name or resolve to 127.0.0.0/8 or ::1 (an
//! IPv4-mapped `::ffff:127.x.y.z` counts as 127.x.y.z); anything else is refused before a
//! socket is opened.

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
    let addrs: Vec<SocketAddr> = match host.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => tokio::net::lookup_host(host)
            .await
            .map_err(|e| {
                UsageError(format!(
                    "--host {host:?}: cannot resolve ({e}); expected HOST:PORT such as 127.0.0.1:1883"
                ))
            })?
            .collect(),
    };
    check_loopback(host, &addrs)
}

fn check_loopback(host: &str, addrs: &[SocketAddr]) -> Result<SocketAddr, UsageError> {
    let Some(first) = addrs.first() else {
        return Err(UsageError(format!(
            "--host {host:?} resolves to no address"
        )));
    };
    for addr in addrs {
        if !addr.ip().to_canonical().is_loopback() {
            return Err(UsageError(format!(
                "refusing --host {host} ({}): roost-loadgen only targets brokers on this machine \
                 (loopback 127.0.0.0/8 or ::1); load-testing other hosts is not allowed",
                addr.ip()
            )));
        }
    }
    Ok(*first)
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
        assert!(check_loopback("mixed:1883", &addrs).is_err());
        assert!(check_loopback("none:1883", &[]).is_err());
        assert!(check_loopback("lo:1883", &addrs[..1]).is_ok());
    }

    #[tokio::test]
    async fn a_missing_port_is_a_usage_error() {
        let err = check("127.0.0.1").await.expect_err("no port");
        assert!(err.contains("HOST:PORT"), "{err}");
    }
}
