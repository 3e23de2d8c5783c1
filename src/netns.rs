//! Network namespaces for [`crate::cluster::LocalCluster`]: each region runs in its own
//! namespace (`ip netns`), so faults are injected from outside the process, by the kernel.
//!
//! Layout (one fabric per cluster, names unique per fabric; needs root and `ip`):
//!
//! ```text
//!  root namespace                               namespace wallet-<tag>-<region>
//!  bridge w<tag>br ── veth wp<tag><i> ══════════ peer0  10.B.0.(10+i)/24   libp2p
//!  (no address)                                          (the region network)
//!  10.B.(100+i).1/30 ── veth wc<tag><i> ════════ cli0   10.B.(100+i).2/30  HTTPS
//!                                                        (the client link)
//! ```
//!
//! The regions reach each other only through the bridge (no namespace has a default route,
//! and the root namespace does not forward), and the harness (in the root namespace) reaches
//! each region's HTTP API over its own client link. So taking a region's bridge port down
//! partitions it from its peers while its clients still reach it, which is what a region
//! partition is: the region keeps taking payments.
//!
//! Faults: [`NetnsFabric::isolate`] / [`NetnsFabric::rejoin`] take the region's bridge port
//! down and up (a full partition); [`NetnsFabric::block`] / [`NetnsFabric::unblock`] add and
//! remove a `blackhole` route in one namespace, so packets from one region to another are
//! dropped while the other direction is delivered (asymmetric; this machine has neither
//! iptables nor nft). [`NetnsFabric::heal`] undoes all of them. Dropping the fabric deletes
//! the namespaces (which deletes their veth pairs) and the bridge.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::init::{Host, RegionHost};

/// Most regions a fabric holds (the address plan has room for more; this bounds names).
pub const FABRIC_REGIONS_MAX: usize = 16;
/// Tries to find an unused `10.B.0.0/16`.
const SUBNET_TRIES: usize = 64;

/// What can go wrong setting up or driving a fabric.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// A command failed (or could not run).
    #[error("`{cmd}` failed: {reason}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its stderr, or why it did not run.
        reason: String,
    },
    /// Network namespaces cannot be used here (not root, no `ip`, or not permitted).
    #[error("network namespaces are not available here: {0}")]
    Unavailable(String),
    /// Bad arguments.
    #[error("netns: {0}")]
    Args(String),
}

/// Runs `ip args…`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            cmd: cmd.clone(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            cmd,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip args…` inside namespace `ns`.
/// A veth pair: `outer` stays in the root namespace (down, for the caller to attach), its peer
/// moves into `ns`, is renamed `inner`, gets `addr` (CIDR) and is brought up.
fn veth_into(ns: &str, outer: &str, inner: &str, addr: &str) -> Result<(), NetnsError> {
    let tmp = format!("{outer}n");
    ip(&["link", "add", outer, "type", "veth", "peer", "name", &tmp])?;
    ip(&["link", "set", &tmp, "netns", ns])?;
    ip_in(ns, &["link", "set", &tmp, "name", inner])?;
    ip_in(ns, &["addr", "add", addr, "dev", inner])?;
    ip_in(ns, &["link", "set", inner, "up"])?;
    Ok(())
}

fn ip_in(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut a = vec!["netns", "exec", ns, "ip"];
    a.extend_from_slice(args);
    ip(&a)
}

/// Checks that this process may create network namespaces: creates and deletes one.
pub fn probe() -> Result<(), NetnsError> {
    let name = format!("wallet-probe-{}", std::process::id());
    ip(&["netns", "add", &name]).map_err(|e| NetnsError::Unavailable(e.to_string()))?;
    let up = ip_in(&name, &["link", "set", "lo", "up"]);
    let del = ip(&["netns", "del", &name]);
    up.and(del)
        .map(|_| ())
        .map_err(|e| NetnsError::Unavailable(e.to_string()))
}

/// One region's namespace and links.
#[derive(Debug, Clone)]
pub struct NsRegion {
    /// Namespace name (`ip netns exec <ns> …`).
    pub ns: String,
    /// Its address on the region network (libp2p).
    pub peer_ip: Ipv4Addr,
    /// Its address on its client link (HTTP).
    pub client_ip: Ipv4Addr,
    /// The root-namespace end of its bridge port.
    pub bridge_port: String,
    /// The root-namespace end of its client link.
    pub client_port: String,
}

/// Namespaces, veth pairs and a bridge for one cluster; torn down on drop.
#[derive(Debug)]
pub struct NetnsFabric {
    /// The bridge of the region network.
    pub bridge: String,
    /// The regions, in the cluster's order.
    pub regions: Vec<NsRegion>,
    /// One-way blocks in force: (from, to).
    blocks: Vec<(usize, usize)>,
    /// `/etc/netns/<ns>` directories written by [`NetnsFabric::set_hosts`].
    etc_dirs: Vec<std::path::PathBuf>,
}

/// Where `ip netns exec` finds per-namespace files to mount over `/etc`.
const NETNS_ETC: &str = "/etc/netns";

impl NetnsFabric {
    /// Creates `n` namespaces joined by a bridge, each with a client link to the root
    /// namespace. Anything created is removed again if a step fails.
    pub fn create(n: usize) -> Result<NetnsFabric, NetnsError> {
        if n == 0 || n > FABRIC_REGIONS_MAX {
            return Err(NetnsError::Args(format!(
                "{n} regions (1 to {FABRIC_REGIONS_MAX})"
            )));
        }
        probe()?;
        let tag = format!(
            "{:04x}",
            (std::process::id() ^ rand::random::<u32>()) & 0xffff
        );
        let used = ip(&["-4", "-o", "addr"])?;
        let mut b = None;
        for _ in 0..SUBNET_TRIES {
            let cand = rand::random::<u8>() % 200 + 40;
            if !used.contains(&format!(" 10.{cand}.")) {
                b = Some(cand);
                break;
            }
        }
        let b = b.ok_or_else(|| NetnsError::Args("no free 10.B.0.0/16 subnet".into()))?;
        let mut f = NetnsFabric {
            bridge: format!("w{tag}br"),
            regions: Vec::new(),
            blocks: Vec::new(),
            etc_dirs: Vec::new(),
        };
        ip(&["link", "add", &f.bridge, "type", "bridge"])?;
        ip(&["link", "set", &f.bridge, "up"])?;
        for i in 0..n {
            let idx = u8::try_from(i).map_err(|e| NetnsError::Args(e.to_string()))?;
            let r = NsRegion {
                ns: format!("wallet-{tag}-{i}"),
                peer_ip: Ipv4Addr::new(10, b, 0, 10 + idx),
                client_ip: Ipv4Addr::new(10, b, 100 + idx, 2),
                bridge_port: format!("wp{tag}{i}"),
                client_port: format!("wc{tag}{i}"),
            };
            f.regions.push(r.clone());
            f.add_region(&r, Ipv4Addr::new(10, b, 100 + idx, 1))?;
        }
        Ok(f)
    }

    fn add_region(&self, r: &NsRegion, host_ip: Ipv4Addr) -> Result<(), NetnsError> {
        let ns = r.ns.as_str();
        ip(&["netns", "add", ns])?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        // Region network: a veth pair, one end on the bridge, the other in the namespace.
        veth_into(ns, &r.bridge_port, "peer0", &format!("{}/24", r.peer_ip))?;
        ip(&["link", "set", &r.bridge_port, "master", &self.bridge])?;
        ip(&["link", "set", &r.bridge_port, "up"])?;
        // Client link: a point-to-point /30 between the root namespace and the region.
        veth_into(ns, &r.client_port, "cli0", &format!("{}/30", r.client_ip))?;
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &r.client_port,
        ])?;
        ip(&["link", "set", &r.client_port, "up"])?;
        Ok(())
    }

    /// The addresses to pass to `init` ([`crate::init::InitOptions::hosts`]).
    pub fn hosts(&self) -> Vec<RegionHost> {
        self.regions
            .iter()
            .map(|r| RegionHost {
                http: Host::Ip(r.client_ip.into()),
                p2p: Host::Ip(r.peer_ip.into()),
            })
            .collect()
    }

    /// Gives every namespace a hosts file (`/etc/netns/<ns>/hosts`, which `ip netns exec`
    /// mounts on `/etc/hosts` for the processes it starts) naming `entries`: host names for
    /// the regions, as DNS would on real hosts. Removed on drop.
    pub fn set_hosts(&mut self, entries: &[(String, Ipv4Addr)]) -> Result<(), NetnsError> {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, addr) in entries {
            text.push_str(&format!("{addr} {name}\n"));
        }
        for r in &self.regions {
            let dir = std::path::Path::new(NETNS_ETC).join(&r.ns);
            let io = |e: std::io::Error| NetnsError::Command {
                cmd: format!("write {}/hosts", dir.display()),
                reason: e.to_string(),
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            self.etc_dirs.push(dir.clone());
            std::fs::write(dir.join("hosts"), &text).map_err(io)?;
        }
        Ok(())
    }

    /// Puts the root namespace on the region network, as an operator's machine on the
    /// hosts' network: the bridge gets `10.B.0.1/24`, so this process reaches every region at
    /// its region-network address (the multi-host walk-through, tests/deployment.rs).
    /// Returns that address. Removed with the bridge.
    pub fn join_region_network(&self) -> Result<Ipv4Addr, NetnsError> {
        let first = self
            .regions
            .first()
            .ok_or_else(|| NetnsError::Args("no region".into()))?;
        let [a, b, c, _] = first.peer_ip.octets();
        let me = Ipv4Addr::new(a, b, c, 1);
        ip(&["addr", "add", &format!("{me}/24"), "dev", &self.bridge])?;
        Ok(me)
    }

    /// Region `i`'s namespace and addresses.
    pub fn get_region(&self, i: usize) -> Result<&NsRegion, NetnsError> {
        self.get(i)
    }

    fn get(&self, i: usize) -> Result<&NsRegion, NetnsError> {
        self.regions
            .get(i)
            .ok_or_else(|| NetnsError::Args(format!("no region #{i}")))
    }

    /// Region `i`'s namespace name.
    pub fn ns(&self, i: usize) -> Result<&str, NetnsError> {
        Ok(self.get(i)?.ns.as_str())
    }

    /// Full partition of region `i` from its peers: its bridge port goes down (its clients
    /// still reach it).
    pub fn isolate(&self, i: usize) -> Result<(), NetnsError> {
        ip(&["link", "set", &self.get(i)?.bridge_port, "down"])?;
        Ok(())
    }

    /// Undoes [`NetnsFabric::isolate`].
    pub fn rejoin(&self, i: usize) -> Result<(), NetnsError> {
        ip(&["link", "set", &self.get(i)?.bridge_port, "up"])?;
        Ok(())
    }

    /// One-way block: packets from region `from` to region `to` are dropped (a blackhole
    /// route in `from`'s namespace); `to` still delivers to `from`.
    pub fn block(&mut self, from: usize, to: usize) -> Result<(), NetnsError> {
        if self.blocks.contains(&(from, to)) {
            return Ok(());
        }
        let dst = format!("{}/32", self.get(to)?.peer_ip);
        ip_in(self.ns(from)?, &["route", "add", "blackhole", &dst])?;
        self.blocks.push((from, to));
        Ok(())
    }

    /// Undoes [`NetnsFabric::block`].
    pub fn unblock(&mut self, from: usize, to: usize) -> Result<(), NetnsError> {
        if !self.blocks.contains(&(from, to)) {
            return Ok(());
        }
        let dst = format!("{}/32", self.get(to)?.peer_ip);
        ip_in(self.ns(from)?, &["route", "del", "blackhole", &dst])?;
        self.blocks.retain(|b| *b != (from, to));
        Ok(())
    }

    /// Bridge partition: regions `a` and `c` do not see each other (blackhole routes both
    /// ways), while every other region still sees both (e.g. B sees A and C).
    pub fn split_pair(&mut self, a: usize, c: usize) -> Result<(), NetnsError> {
        self.block(a, c)?;
        self.block(c, a)
    }

    /// Undoes [`NetnsFabric::split_pair`].
    pub fn unsplit_pair(&mut self, a: usize, c: usize) -> Result<(), NetnsError> {
        self.unblock(a, c)?;
        self.unblock(c, a)
    }

    /// True when a TCP connection from region `from`'s namespace to region `to`'s region
    /// network address and `port` completes within a second (`bash`'s `/dev/tcp`).
    pub fn tcp_reachable(&self, from: usize, to: usize, port: u16) -> Result<bool, NetnsError> {
        let script = format!("exec 3<>/dev/tcp/{}/{port}", self.get(to)?.peer_ip);
        let ns = self.ns(from)?;
        let st = Command::new("timeout")
            .args(["1", "ip", "netns", "exec", ns, "bash", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| NetnsError::Command {
                cmd: format!("ip netns exec {ns} bash -c {script:?}"),
                reason: e.to_string(),
            })?;
        Ok(st.success())
    }

    /// Every bridge port up and every block removed.
    pub fn heal(&mut self) -> Result<(), NetnsError> {
        for (from, to) in self.blocks.clone() {
            self.unblock(from, to)?;
        }
        for i in 0..self.regions.len() {
            self.rejoin(i)?;
        }
        Ok(())
    }
}

impl Drop for NetnsFabric {
    fn drop(&mut self) {
        for r in &self.regions {
            // Deleting the namespace deletes the veth ends inside it, and so their peers.
            let _ = ip(&["netns", "del", &r.ns]);
            let _ = ip(&["link", "del", &r.bridge_port]);
            let _ = ip(&["link", "del", &r.client_port]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        for d in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
