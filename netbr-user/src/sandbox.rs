//! The sandbox the README describes, for the demo, the tests and benchmarks:
//!
//! ```text
//! ns lan   eth0 192.0.2.2/24        the outside world; no route to the bridge subnet
//! ns host  up0  192.0.2.1/24        uplink; bridge netbr0 172.30.0.1/16
//! ns cN    eth0 172.30.0.N/16       containers (made by `netbr endpoint add`)
//! ```
//!
//! For IPv6, [`Sandbox::ipv6_on_the_link`] adds 2001:db8:1::2/64 (lan) and
//! 2001:db8:1::1/64 (up0), and [`SUBNET6`] is the bridge's IPv6 subnet.
//!
//! Every name carries a unique suffix, and dropping the sandbox detaches
//! netbr and deletes every namespace it made, also when a test panics.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};

use crate::{netlink, netns};

pub const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SUBNET: &str = "172.30.0.0/16";
pub const LAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const UPLINK_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const SUBNET6: &str = "fd00:30::/64";
pub const UPLINK: &str = "up0";
pub const BRIDGE: &str = "netbr0";

pub struct Sandbox {
    pub suffix: String,
    pub lan: String,
    pub host: String,
    pub mode: Mode,
    netbr: PathBuf,
}

/// Which datapath `attach` sets up: the plain one unless asked. Tests pick
/// it from their environment (`tests/support`); the demo and the bench
/// choose their own, whatever variables happen to be set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// `attach --fast-path`.
    pub fast_path: bool,
    /// `attach --xdp`. Such a sandbox's lan sends complete checksums, as a
    /// physical wire delivers them: XDP cannot fix up the partial ones a
    /// veth peer would offload.
    pub xdp: bool,
}

/// A short suffix unique on this machine for this process's lifetime.
pub fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Sandbox {
    /// Builds `lan` and `host` joined by a veth pair. `netbr` is the binary
    /// the sandbox drives.
    pub fn create(netbr: impl Into<PathBuf>) -> Result<Self> {
        Self::create_with(netbr, Mode::default())
    }

    /// Like [`Self::create`], attaching in `mode`.
    pub fn create_with(netbr: impl Into<PathBuf>, mode: Mode) -> Result<Self> {
        let suffix = unique_suffix();
        let sb = Self {
            lan: format!("nbl-{suffix}"),
            host: format!("nbh-{suffix}"),
            suffix,
            mode,
            netbr: netbr.into(),
        };
        netns::create_named(&sb.lan)?;
        netns::create_named(&sb.host)?;
        // From here on, Drop cleans up whatever fails below.
        sb.wire().context("wiring the sandbox")?;
        Ok(sb)
    }

    fn wire(&self) -> Result<()> {
        let lan = self.lan_path();
        let xdp = self.mode.xdp;
        netns::run_in(&self.host_path(), move || {
            netlink::block_on(async {
                let nl = netlink::Netlink::connect()?;
                nl.create_veth(UPLINK, "nblan0").await?;
                let up = nl.require_link(UPLINK).await?;
                let peer = nl.require_link("nblan0").await?;
                nl.move_to_netns(peer.index, &netns::open(&lan)?).await?;
                nl.add_addr(up.index, UPLINK_IP, 24).await?;
                nl.set_up(up.index).await
            })
        })??;
        netns::run_in(&self.lan_path(), move || {
            netlink::block_on(async {
                let nl = netlink::Netlink::connect()?;
                let eth = nl.require_link("nblan0").await?;
                nl.rename(eth.index, "eth0").await?;
                nl.add_addr(eth.index, LAN_IP, 24).await?;
                if xdp {
                    crate::ethtool::set_tx_checksum("eth0", false)?;
                }
                nl.set_up(eth.index).await
            })
        })??;
        Ok(())
    }

    /// IPv6 on the link between lan and the host ([`LAN_IP6`],
    /// [`UPLINK_IP6`]), usable at once (no duplicate address detection).
    /// Before `attach`, which finds the uplink's IPv6 address to masquerade to.
    pub fn ipv6_on_the_link(&self) -> Result<()> {
        for (ns, dev, addr) in [
            (self.host_path(), UPLINK, UPLINK_IP6),
            (self.lan_path(), "eth0", LAN_IP6),
        ] {
            netns::run_in(&ns, move || {
                netlink::block_on(async {
                    let nl = netlink::Netlink::connect()?;
                    let link = nl.require_link(dev).await?;
                    nl.add_addr6(link.index, addr, 64).await
                })
            })??;
        }
        Ok(())
    }

    pub fn lan_path(&self) -> PathBuf {
        netns::resolve(&self.lan)
    }

    pub fn host_path(&self) -> PathBuf {
        netns::resolve(&self.host)
    }

    /// Where netbr pins the sandbox bridge's datapath (named after the host
    /// namespace's cookie, so it is computed from inside it).
    pub fn pin_dir(&self) -> Result<PathBuf> {
        netns::run_in(&self.host_path(), || crate::bpf::pins::pin_dir(BRIDGE))?
    }

    /// A container name unique to this sandbox.
    pub fn container(&self, n: u32) -> String {
        format!("c{n}-{}", self.suffix)
    }

    pub fn container_path(&self, n: u32) -> PathBuf {
        netns::resolve(&self.container(n))
    }

    /// Runs `netbr --netns HOST ARGS...` and returns its output; a hang is
    /// killed after [`COMMAND_TIMEOUT`].
    pub fn netbr(&self, args: &[&str]) -> Result<Output> {
        timeout_command(&self.netbr)
            .arg("--netns")
            .arg(&self.host)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.netbr.display()))
    }

    /// Like [`Self::netbr`], failing unless the command succeeds; returns stdout.
    pub fn netbr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.netbr(args)?;
        if !out.status.success() {
            bail!(
                "netbr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `netbr attach` for the sandbox, with `--no-fast-path` and `--xdp` as
    /// its mode says, so one test suite covers every datapath.
    pub fn attach(&self) -> Result<String> {
        self.attach_with(&[])
    }

    /// Like [`Self::attach`], with extra flags.
    pub fn attach_with(&self, extra: &[&str]) -> Result<String> {
        self.netbr_ok(&self.attach_args(extra))
    }

    /// The arguments of [`Self::attach_with`]: the mode's flags unless
    /// `extra` chooses the fast path itself.
    pub fn attach_args<'a>(&self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["attach", "--subnet", SUBNET, "--uplink", UPLINK];
        let chosen = extra.contains(&"--fast-path") || extra.contains(&"--no-fast-path");
        if !self.mode.fast_path && !chosen {
            args.push("--no-fast-path");
        }
        if self.mode.xdp && !extra.contains(&"--xdp") {
            args.push("--xdp");
        }
        args.extend_from_slice(extra);
        args
    }

    /// [`Self::attach_args`] without the sandbox's IPv4 subnet, for an
    /// IPv6-only bridge: `extra` names its IPv6 one.
    pub fn attach_args_ipv6_only<'a>(&self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = self.attach_args(extra);
        args.drain(1..3);
        args
    }

    /// Adds endpoint `n` (named namespace `cN-SUFFIX`) at 172.30.0.(n+1).
    pub fn add_container(&self, n: u32) -> Result<Ipv4Addr> {
        let ip = Ipv4Addr::new(172, 30, 0, (n + 1) as u8);
        self.netbr_ok(&[
            "endpoint",
            "add",
            &self.container(n),
            "--ip",
            &ip.to_string(),
        ])?;
        Ok(ip)
    }

    /// Publishes ports of container `n`: `specs` as given to `-p`.
    pub fn publish(&self, n: u32, specs: &[&str]) -> Result<String> {
        let name = self.container(n);
        let mut args = vec!["publish", name.as_str()];
        for spec in specs {
            args.extend(["-p", spec]);
        }
        self.netbr_ok(&args)
    }

    /// `netbr stats --json`.
    pub fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.netbr_ok(&["stats", "--json"])?)?)
    }

    /// Has lan route the bridge subnet via the host, as a LAN router (or
    /// another node) that knows where the containers are would.
    pub fn route_lan_to_subnet(&self) -> Result<()> {
        let o = in_netns(
            &self.lan_path(),
            "ip",
            &["route", "add", SUBNET, "via", &UPLINK_IP.to_string()],
        )?;
        if !o.status.success() {
            anyhow::bail!(
                "ip route add on lan: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// Runs a command in the host namespace through setns (nsenter keeps the
    /// mount namespace; `ip netns exec` would not).
    pub fn in_host(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        in_netns(&self.host_path(), cmd, args)
    }
}

/// What an external command the sandbox runs may take before it is killed,
/// so a hang fails one test or bench step instead of stalling the rest.
pub const COMMAND_TIMEOUT: &str = "120";

/// `timeout COMMAND_TIMEOUT program`.
pub fn timeout_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=5", COMMAND_TIMEOUT]).arg(program);
    c
}

/// Runs `cmd args` inside the namespace at `ns` with `nsenter --net`, under
/// [`COMMAND_TIMEOUT`].
pub fn in_netns(ns: &Path, cmd: &str, args: &[&str]) -> Result<Output> {
    timeout_command("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} in {}", ns.display()))
}

/// Runs `cmd` with `input` on its standard input; returns what it printed
/// and how it ended. The caller puts it under a timeout.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input)
        .context("writing standard input")?;
    child.wait_with_output().context("waiting for the command")
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Detach removes pins, endpoints and the namespaces netbr made for
        // them; it fails harmlessly when nothing was attached.
        let _ = self.netbr(&["detach"]);
        for ns in [&self.lan, &self.host] {
            if netns::exists(ns) {
                if let Err(e) = netns::delete_named(ns) {
                    eprintln!("sandbox cleanup: {e:#}");
                }
            }
        }
    }
}
