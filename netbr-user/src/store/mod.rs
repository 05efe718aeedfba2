//! The datapath store: the only code that opens a bridge's pins and changes
//! its maps, its kernel objects and its state file. Every command, the CNI
//! plugin and the Docker driver go through it.
//!
//! A writer takes the bridge's lock ([`Store::open`]), and each operation
//! validates the whole request before it changes anything, then applies it
//! step by step, undoing what it applied when a later step fails. Readers
//! ([`View`]) take no lock: the state file is replaced atomically and the
//! maps are read entry by entry.

mod attach;
mod endpoint;
pub mod firewall;
pub mod limits;
mod local_addrs;
pub mod lock;
mod ports;
pub mod state;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use netbr_common::maps::{MAP_CONFIG, STATE_ROOT};

pub use attach::{ipv6_only_keys, AttachReport, AttachRequest};
pub use endpoint::{veth_names, EndpointRequest, NetnsChoice};
pub use ports::{mapping_key, PortTaken};
pub use state::{EndpointState, Limit, Limits, Owner, Port, State};

use crate::bpf::{datapath::Datapath, layout, pins::pin_dir};

/// Where `bridge`'s lock and state file live.
pub fn state_dir(bridge: &str) -> Result<PathBuf> {
    Ok(Path::new(STATE_ROOT).join(crate::netns::scoped_name(bridge)?))
}

pub fn not_attached(bridge: &str) -> anyhow::Error {
    anyhow!(
        "bridge {bridge} is not attached: run netbr attach --bridge {bridge} --subnet CIDR --uplink IFACE"
    )
}

/// Opens an attached bridge's datapath after checking that its pins are of
/// this binary's layout.
fn open_datapath(bridge: &str, pins: &Path) -> Result<(Datapath, u32)> {
    if !pins.join(MAP_CONFIG).exists() {
        return Err(not_attached(bridge));
    }
    let ct_max = layout::check(pins, bridge)?;
    let dp = Datapath::from_pins(pins).map_err(|e| layout::refusal(bridge, &format!("{e:#}")))?;
    layout::check_version(bridge, dp.config()?.layout_version)?;
    Ok((dp, ct_max))
}

/// A bridge, locked against every other writer for as long as it lives.
pub struct Store {
    pub bridge: String,
    pub pins: PathBuf,
    pub dir: PathBuf,
    pub state: State,
    _lock: lock::BridgeLock,
}

impl Drop for Store {
    /// A writer that found no bridge and made none (refused as not
    /// attached, or an attach that failed) leaves no directory behind; the
    /// lock is still held here, as `detach` holds it when it removes it.
    fn drop(&mut self) {
        if !self.dir.join(state::STATE_FILE).exists() && !self.pins.exists() {
            let _ = self.remove_state_dir();
        }
    }
}

impl Store {
    /// Waits for the bridge's lock and reads its state.
    pub fn open(bridge: &str) -> Result<Self> {
        validate_ifname(bridge)?;
        let dir = state_dir(bridge)?;
        let lock = lock::BridgeLock::acquire(&dir)?;
        let state = State::load(&dir, bridge)?;
        Ok(Self {
            bridge: bridge.to_string(),
            pins: pin_dir(bridge)?,
            dir,
            state,
            _lock: lock,
        })
    }

    /// Removes the state directory (lock included: waiters notice the lock
    /// file is gone and take a fresh one) and `/run/netbr` once empty.
    fn remove_state_dir(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        if let Some(root) = self.dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
        Ok(())
    }

    pub fn is_attached(&self) -> bool {
        self.pins.join(MAP_CONFIG).exists()
    }

    /// The attached datapath, layout-checked.
    pub fn datapath(&self) -> Result<Datapath> {
        Ok(open_datapath(&self.bridge, &self.pins)?.0)
    }

    /// Writes the state file.
    fn commit(&self) -> Result<()> {
        self.state.save(&self.dir)
    }

    pub fn endpoint(&self, name: &str) -> Result<&EndpointState> {
        self.state.endpoint(name).ok_or_else(|| {
            anyhow!(
                "no endpoint named {name} on bridge {}: see netbr ls --bridge {}",
                self.bridge,
                self.bridge
            )
        })
    }

    /// Removes the flows `pred` selects. Returns how many went.
    pub fn remove_flows(
        &self,
        pred: impl Fn(&netbr_common::conntrack::FlowKey, &netbr_common::conntrack::FlowView) -> bool,
    ) -> Result<usize> {
        self.datapath()?.remove_flows(pred)
    }

    /// Removes the IPv6 flows `pred` selects. Returns how many went.
    pub fn remove_flows6(
        &self,
        pred: impl Fn(
            &netbr_common::conntrack::FlowKey6,
            &netbr_common::conntrack::FlowViewOf<[u32; 4]>,
        ) -> bool,
    ) -> Result<usize> {
        self.datapath()?.remove_flows6(pred)
    }
}

impl Store {
    /// Marks the bridge as serving Docker network `id` (or no longer), whose
    /// `-p` without a host IP publishes on `host_ip` (none: everywhere).
    pub fn set_docker_network(
        &mut self,
        id: Option<String>,
        host_ip: Option<std::net::Ipv4Addr>,
    ) -> Result<()> {
        if let Some(n) = self.state.network.as_mut() {
            n.docker_network = id;
            n.docker_host_ip = host_ip;
        }
        self.commit()
    }

    /// Records where a runtime put an endpoint's container side.
    pub fn set_endpoint_netns(&mut self, name: &str, netns: PathBuf) -> Result<()> {
        if let Some(e) = self.state.endpoint_mut(name) {
            e.netns = netns;
        }
        self.commit()
    }
}

/// The bridges with state in the calling thread's namespace, by name.
pub fn bridges() -> Result<Vec<String>> {
    let prefix = format!("{}-", crate::netns::current_cookie()?);
    let dir = match std::fs::read_dir(STATE_ROOT) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {STATE_ROOT}"))),
    };
    Ok(dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .map(str::to_string)
        })
        .collect())
}

/// What listings read: the state and the datapath, without the lock.
pub struct View {
    pub state: State,
    pub dp: Datapath,
    pub pins: PathBuf,
    pub ct_max: u32,
}

impl View {
    pub fn open(bridge: &str) -> Result<Self> {
        validate_ifname(bridge)?;
        let pins = pin_dir(bridge)?;
        let (dp, ct_max) = open_datapath(bridge, &pins)?;
        let state = State::load(&state_dir(bridge)?, bridge)?;
        Ok(Self {
            state,
            dp,
            pins,
            ct_max,
        })
    }
}

pub fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ' ', ':'])
        || name == "."
        || name == ".."
    {
        anyhow::bail!(
            "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        );
    }
    Ok(())
}
