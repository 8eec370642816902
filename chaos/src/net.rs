//! The network: one namespace per node, each with a veth link to a bridge on the host, where
//! the clients are (`10.<a>.<b>.0/24`: node `i` at `.i`, the host at `.254`). A partition is
//! made of blackhole routes inside the nodes' namespaces, so it cuts node-to-node traffic in
//! both directions (packets vanish; nothing is reset) and leaves the clients' links alone.
//! Needs root and iproute2.

use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::process::Command;

/// The namespaces, links and bridge of one run; removed by [`Net::close`] (and on drop).
pub struct Net {
    tag: String,
    prefix: String,
    nodes: usize,
    /// Blackholed (from, to) node pairs now in place.
    cut: BTreeSet<(usize, usize)>,
    closed: bool,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// Builds the network for `nodes` nodes (ids 1..=nodes). `tag` names everything (short:
    /// interface names are at most 15 bytes) and picks the subnet.
    pub fn new(tag: &str, nodes: usize) -> anyhow::Result<Net> {
        let h = tag
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let prefix = format!("10.{}.{}", 160 + h % 40, (h / 40) % 256);
        let net = Net {
            tag: tag.to_owned(),
            prefix,
            nodes,
            cut: BTreeSet::new(),
            closed: false,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=nodes {
            let ns = net.ns(i);
            let (outer, inner) = (format!("{}h{i}", net.tag), format!("{}n{i}", net.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &br])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.node_ip(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> String {
        format!("{}.{i}", self.prefix)
    }

    /// The host's address on the bridge (where the clients are).
    pub fn host_ip(&self) -> String {
        format!("{}.254", self.prefix)
    }

    /// Cuts every node in `side` off from every node not in it (both directions).
    pub fn partition(&mut self, side: &[usize]) -> anyhow::Result<()> {
        for a in 1..=self.nodes {
            for b in 1..=self.nodes {
                if a != b && side.contains(&a) != side.contains(&b) && self.cut.insert((a, b)) {
                    let to = format!("{}/32", self.node_ip(b));
                    ip(&["-n", &self.ns(a), "route", "add", "blackhole", &to])?;
                }
            }
        }
        Ok(())
    }

    /// The (from, to) node pairs cut now.
    pub fn cut(&self) -> Vec<(usize, usize)> {
        self.cut.iter().copied().collect()
    }

    /// Ends every partition.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for (a, b) in std::mem::take(&mut self.cut) {
            let to = format!("{}/32", self.node_ip(b));
            ip(&["-n", &self.ns(a), "route", "del", "blackhole", &to])?;
        }
        Ok(())
    }

    /// Removes the namespaces, links and bridge.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        for i in 1..=self.nodes {
            let _ = ip(&["link", "del", &format!("{}h{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.close();
    }
}
