//! Typed handles on the datapath's maps, opened from the pins (every command
//! after `attach`) or taken from a freshly loaded object (attach, tests).

use std::path::Path;

use crate::addr::{from_be32, to_be32, Cidr};
use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray, RingBuf,
    },
    Ebpf,
};
use netbr_common::{
    conntrack::{
        merge, CtEntry, CtEntry6, CtEntryOf, FlowKey, FlowKey6, FlowKeyOf, FlowView, FlowViewOf,
        DIR_ORIG,
    },
    counters::Reason,
    firewall::{FwKey, FwRule, FwScopeKey, MAP_FIREWALL, MAP_FIREWALL_HITS, MAP_FIREWALL_SCOPES},
    maps::{
        Config, Endpoint, Event, MappingKey, MappingTarget, EVENT_SLOT_MONITOR,
        FAST_INTO_CONTAINER, FAST_OUT_UPLINK, FAST_XDP, MAP_CONFIG, MAP_CONNTRACK,
        MAP_CONNTRACK_NEW, MAP_COUNTERS, MAP_ENDPOINTS, MAP_EVENTS, MAP_EVENT_LAST, MAP_FAST_PATH,
        MAP_LOCAL_ADDRS, MAP_MAPPINGS, MAP_NO_MASQUERADE, MAP_SNAT_HISTOGRAM,
    },
    monitor::{MonitorEvent, MAP_MONITOR},
    net6::{
        MappingKey6, Net6, MAP_CONNTRACK6, MAP_CONNTRACK6_NEW, MAP_ENDPOINTS6,
        MAP_ENDPOINTS6_BY_ADDR, MAP_MAPPINGS6, MAP_NET6,
    },
    pacing::{Pace, PaceKey, MAP_PACING},
    ports::{PortSet, MAP_PORTS, PORTS_PUBLISHED},
};

/// `BPF_NOEXIST`: an update that fails instead of overwriting an entry.
pub const BPF_NOEXIST: u64 = 1;

/// A published port's datapath entry: `NB_MAPS` holds every one but those
/// published on one IPv6 address, which `NB_MAP6` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKey {
    V4(MappingKey),
    V6(MappingKey6),
}

impl MapKey {
    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }

    /// The host port, host byte order.
    pub fn port(&self) -> u16 {
        u16::from_be(match self {
            Self::V4(k) => k.port,
            Self::V6(k) => k.port,
        })
    }

    /// The one host address the port is published on; `None`: every
    /// address (of the families the target's flags leave it).
    pub fn host_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Self::V4(k) if k.addr == 0 => None,
            Self::V4(k) => Some(from_be32(k.addr).into()),
            Self::V6(k) => {
                Some(std::net::Ipv6Addr::from(netbr_common::net6::bytes(&k.addr)).into())
            }
        }
    }
}

pub struct Datapath {
    pub config: Array<MapData, Config>,
    /// The bridge's IPv6 subnet (`netbr_common::net6`).
    pub net6: Array<MapData, Net6>,
    pub mappings: HashMap<MapData, MappingKey, MappingTarget>,
    /// Ports published on one IPv6 address (`netbr_common::net6`).
    pub mappings6: HashMap<MapData, MappingKey6, MappingTarget>,
    /// Assured flows; `conntrack_new` holds the ones being set up.
    pub conntrack: HashMap<MapData, FlowKey, CtEntry>,
    pub conntrack_new: HashMap<MapData, FlowKey, CtEntry>,
    /// IPv6's tables, alike.
    pub conntrack6: HashMap<MapData, FlowKey6, CtEntry6>,
    pub conntrack6_new: HashMap<MapData, FlowKey6, CtEntry6>,
    pub local_addrs: HashMap<MapData, u32, u32>,
    /// Destination prefixes containers reach untranslated.
    pub no_masquerade: LpmTrie<MapData, u32, u32>,
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    /// Endpoints' IPv6 addresses by their IPv4 ones (`netbr_common::net6`).
    pub endpoints6: HashMap<MapData, u32, [u32; 4]>,
    /// Endpoints by IPv6 address, for the fast path (`set_endpoint6`).
    pub endpoints6_by_addr: HashMap<MapData, [u32; 4], Endpoint>,
    pub counters: PerCpuArray<MapData, u64>,
    pub snat_histogram: PerCpuArray<MapData, u64>,
    pub fast_path: PerCpuArray<MapData, u64>,
    /// The datapath's rate-limited log (see `drain_events`).
    pub events: RingBuf<MapData>,
    /// Reports for `netbr monitor` (see `drain_monitor`).
    pub monitor: RingBuf<MapData>,
    /// Rate-limit stamps, collector marks and the monitor's deadline
    /// (`netbr_common::maps::EVENT_SLOT_*`).
    pub event_last: Array<MapData, u64>,
    pub firewall: LpmTrie<MapData, FwKey, FwRule>,
    pub firewall_scopes: HashMap<MapData, FwScopeKey, u32>,
    pub firewall_hits: PerCpuArray<MapData, u64>,
    pub pacing: HashMap<MapData, PaceKey, Pace>,
    /// The uplink's port sets (`netbr_common::ports`).
    pub ports: Array<MapData, PortSet>,
}

fn open_pinned(dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name))
        .with_context(|| format!("opening pinned map {name} in {}", dir.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// One family's conntrack table.
type CtTable<A> = HashMap<MapData, FlowKeyOf<A>, CtEntryOf<A>>;

/// Every flow of one family's `tables`, keyed by its original tuple.
fn flows_of<A: Copy>(tables: [&CtTable<A>; 2]) -> Result<Vec<(FlowKeyOf<A>, FlowViewOf<A>)>>
where
    FlowKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    let mut out = Vec::new();
    for table in tables {
        for item in table.iter() {
            let (k, v) = item.context("reading conntrack")?;
            if v.dir == DIR_ORIG {
                let reply = table.get(&v.xlat.reversed(), 0).ok();
                out.push((k, merge(&v, reply.as_ref())));
            }
        }
    }
    Ok(out)
}

/// Removes the flows of one family's `tables` that `pred` selects.
fn remove_flows_of<A: Copy>(
    tables: [&mut CtTable<A>; 2],
    pred: impl Fn(&FlowKeyOf<A>, &FlowViewOf<A>) -> bool,
) -> Result<usize>
where
    FlowKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    let [assured, fresh] = tables;
    let doomed: Vec<_> = flows_of([&*assured, &*fresh])?
        .into_iter()
        .filter(|(k, v)| pred(k, v))
        .collect();
    for (k, v) in &doomed {
        for table in [&mut *assured, &mut *fresh] {
            let _ = table.remove(k);
            let _ = table.remove(&v.xlat.reversed());
        }
    }
    Ok(doomed.len())
}

/// Map `name` from `get`, as its typed handle.
fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    get: &mut impl FnMut(&str) -> Result<Map>,
    name: &str,
) -> Result<T> {
    T::try_from(get(name)?).with_context(|| format!("map {name} has an unexpected type"))
}

impl Datapath {
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Self::from_source(|name| open_pinned(dir, name))
    }

    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_source(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the BPF object has no map {name}"))
        })
    }

    /// Every map, by name, from `get`: the pins or a freshly loaded object.
    fn from_source(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            config: typed(&mut get, MAP_CONFIG)?,
            net6: typed(&mut get, MAP_NET6)?,
            mappings: typed(&mut get, MAP_MAPPINGS)?,
            mappings6: typed(&mut get, MAP_MAPPINGS6)?,
            conntrack: typed(&mut get, MAP_CONNTRACK)?,
            conntrack_new: typed(&mut get, MAP_CONNTRACK_NEW)?,
            conntrack6: typed(&mut get, MAP_CONNTRACK6)?,
            conntrack6_new: typed(&mut get, MAP_CONNTRACK6_NEW)?,
            local_addrs: typed(&mut get, MAP_LOCAL_ADDRS)?,
            no_masquerade: typed(&mut get, MAP_NO_MASQUERADE)?,
            endpoints: typed(&mut get, MAP_ENDPOINTS)?,
            endpoints6: typed(&mut get, MAP_ENDPOINTS6)?,
            endpoints6_by_addr: typed(&mut get, MAP_ENDPOINTS6_BY_ADDR)?,
            counters: typed(&mut get, MAP_COUNTERS)?,
            snat_histogram: typed(&mut get, MAP_SNAT_HISTOGRAM)?,
            fast_path: typed(&mut get, MAP_FAST_PATH)?,
            events: typed(&mut get, MAP_EVENTS)?,
            monitor: typed(&mut get, MAP_MONITOR)?,
            event_last: typed(&mut get, MAP_EVENT_LAST)?,
            firewall: typed(&mut get, MAP_FIREWALL)?,
            firewall_scopes: typed(&mut get, MAP_FIREWALL_SCOPES)?,
            firewall_hits: typed(&mut get, MAP_FIREWALL_HITS)?,
            pacing: typed(&mut get, MAP_PACING)?,
            ports: typed(&mut get, MAP_PORTS)?,
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config
            .get(&0, 0)
            .context("reading the datapath configuration")
    }

    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        self.config
            .set(0, cfg, 0)
            .context("writing the datapath configuration")
    }

    /// Counter totals over all CPUs, in [`Reason::ALL`] order.
    pub fn set_net6(&mut self, net: &Net6) -> Result<()> {
        self.net6
            .set(0, net, 0)
            .context("writing the datapath's IPv6 subnet")
    }

    pub fn counter_totals(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu = self
                    .counters
                    .get(&(*r as u32), 0)
                    .context("reading counters")?;
                Ok((*r, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// SNAT attempt histogram over all CPUs: index 0 kept the own port, k the
    /// k-th candidate, the last found none (`netbr_common::snat`).
    pub fn snat_attempts(&self) -> Result<Vec<u64>> {
        self.snat_histogram
            .iter()
            .map(|v| Ok(v.context("reading the SNAT histogram")?.iter().sum()))
            .collect()
    }

    /// Packets the fast path delivered: (into containers, out of the uplink).
    /// Packets the fast path carried: (TC into containers, TC out of the
    /// uplink, XDP into containers).
    pub fn fast_path_counts(&self) -> Result<(u64, u64, u64)> {
        let get = |i: u32| -> Result<u64> {
            Ok(self
                .fast_path
                .get(&i, 0)
                .context("reading fast-path counters")?
                .iter()
                .sum())
        };
        Ok((
            get(FAST_INTO_CONTAINER)?,
            get(FAST_OUT_UPLINK)?,
            get(FAST_XDP)?,
        ))
    }

    pub fn counter(&self, reason: Reason) -> Result<u64> {
        Ok(self
            .counters
            .get(&(reason as u32), 0)
            .context("reading counters")?
            .iter()
            .sum())
    }

    /// Rewrites the set of published host ports from the mappings, plus
    /// `adding` (mappings about to be inserted: their ports are marked
    /// first, so no packet for them skips the lookups). Called after every
    /// change of the mappings; the programs only read this set.
    /// Only `NB_MAPS`' ports are marked: IPv6's datapath asks no port set.
    pub fn set_published_ports(&mut self, adding: &[MapKey]) -> Result<()> {
        let mut set = Box::new(PortSet::EMPTY);
        let keys: Vec<MappingKey> = self
            .mappings
            .keys()
            .collect::<Result<_, _>>()
            .context("reading the mappings")?;
        let adding = adding.iter().filter_map(|k| match k {
            MapKey::V4(k) => Some(k),
            MapKey::V6(_) => None,
        });
        for k in keys.iter().chain(adding) {
            set.mark(k.proto, k.port);
        }
        // By reference: the set is 128 KiB, too big to pass by value.
        let set: &PortSet = &set;
        self.ports
            .set(PORTS_PUBLISHED, set, 0)
            .context("writing the published ports' set")
    }

    /// Every IPv4 flow of both tables, keyed by its original tuple, its two
    /// entries merged.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowView)>> {
        flows_of([&self.conntrack, &self.conntrack_new])
    }

    /// Every IPv6 flow, as [`Self::flows`].
    pub fn flows6(&self) -> Result<Vec<(FlowKey6, FlowViewOf<[u32; 4]>)>> {
        flows_of([&self.conntrack6, &self.conntrack6_new])
    }

    /// Removes every IPv4 flow for which `pred(orig key, flow)` holds, both
    /// entries, from whichever table holds it. Returns how many flows went.
    pub fn remove_flows(&mut self, pred: impl Fn(&FlowKey, &FlowView) -> bool) -> Result<usize> {
        remove_flows_of([&mut self.conntrack, &mut self.conntrack_new], pred)
    }

    /// Removes IPv6 flows, as [`Self::remove_flows`].
    pub fn remove_flows6(
        &mut self,
        pred: impl Fn(&FlowKey6, &FlowViewOf<[u32; 4]>) -> bool,
    ) -> Result<usize> {
        remove_flows_of([&mut self.conntrack6, &mut self.conntrack6_new], pred)
    }

    /// Takes every event the datapath has logged since the last reader took
    /// them: reading consumes, like a socket.
    pub fn drain_events(&mut self) -> Vec<Event> {
        drain(&mut self.events)
    }

    /// Takes the monitor's reports (`netbr_common::monitor`), consuming them.
    pub fn drain_monitor(&mut self) -> Vec<MonitorEvent> {
        drain(&mut self.monitor)
    }

    /// Sets how long the datapath keeps reporting to a monitor (monotonic
    /// ns; 0 stops it).
    pub fn set_monitor_deadline(&mut self, ns: u64) -> Result<()> {
        self.event_last
            .set(EVENT_SLOT_MONITOR, ns, 0)
            .context("setting the monitor's deadline")
    }

    pub fn endpoint_list(&self) -> Result<Vec<(u32, Endpoint)>> {
        self.endpoints
            .iter()
            .map(|r| r.context("reading endpoints"))
            .collect()
    }

    /// The destinations containers reach untranslated, as prefixes.
    pub fn no_masquerade_list(&self) -> Result<Vec<Cidr>> {
        let mut list: Vec<Cidr> = self
            .no_masquerade
            .keys()
            .map(|k| {
                let k = k.context("reading the no-masquerade list")?;
                Ok(Cidr::new(from_be32(k.data()), k.prefix_len() as u8))
            })
            .collect::<Result<_>>()?;
        list.sort_by_key(|c| (u32::from(c.network()), c.prefix));
        Ok(list)
    }

    /// Makes the no-masquerade list exactly `list`.
    pub fn set_no_masquerade(&mut self, list: &[Cidr]) -> Result<()> {
        let key = |c: &Cidr| Key::new(u32::from(c.prefix), to_be32(c.network()));
        let list: Vec<Cidr> = list
            .iter()
            .map(|c| Cidr::new(c.network(), c.prefix))
            .collect();
        for old in self.no_masquerade_list()? {
            if !list.contains(&old) {
                self.no_masquerade
                    .remove(&key(&old))
                    .context("updating the no-masquerade list")?;
            }
        }
        for c in &list {
            self.no_masquerade
                .insert(&key(c), 1, 0)
                .with_context(|| format!("adding {c} to the no-masquerade list"))?;
        }
        Ok(())
    }

    /// Records endpoint `ip`'s (network order) IPv6 address, both ways,
    /// with its veth and MAC (`entry`, flags cleared): all or nothing.
    pub fn set_endpoint6(
        &mut self,
        ip: u32,
        ip6: std::net::Ipv6Addr,
        entry: Endpoint,
    ) -> Result<()> {
        let words = netbr_common::net6::words(&ip6.octets());
        self.endpoints6
            .insert(ip, words, 0)
            .context("recording an endpoint's IPv6 address")?;
        let entry = Endpoint::new(entry.host_ifindex, entry.mac, 0);
        if let Err(e) = self.endpoints6_by_addr.insert(words, entry, 0) {
            let _ = self.endpoints6.remove(&ip);
            return Err(anyhow!("recording an endpoint's IPv6 address ({e})"));
        }
        Ok(())
    }

    /// Forgets endpoint `ip`'s IPv6 address, both ways.
    pub fn remove_endpoint6(&mut self, ip: u32) {
        if let Ok(words) = self.endpoints6.get(&ip, 0) {
            let _ = self.endpoints6_by_addr.remove(&words);
        }
        let _ = self.endpoints6.remove(&ip);
    }

    /// Every published port the datapath holds, of both maps.
    pub fn mapping_list(&self) -> Result<Vec<(MapKey, MappingTarget)>> {
        let v4 = self
            .mappings
            .iter()
            .map(|r| r.map(|(k, t)| (MapKey::V4(k), t)));
        let v6 = self
            .mappings6
            .iter()
            .map(|r| r.map(|(k, t)| (MapKey::V6(k), t)));
        v4.chain(v6)
            .map(|r| r.context("reading mappings"))
            .collect()
    }

    /// Writes a published port's entry; `flags` as the map update takes them.
    pub fn insert_mapping(
        &mut self,
        key: &MapKey,
        target: MappingTarget,
        flags: u64,
    ) -> Result<(), aya::maps::MapError> {
        match key {
            MapKey::V4(k) => self.mappings.insert(k, target, flags),
            MapKey::V6(k) => self.mappings6.insert(k, target, flags),
        }
    }

    /// Removes a published port's entry, if it is there.
    pub fn remove_mapping(&mut self, key: &MapKey) {
        let _ = match key {
            MapKey::V4(k) => self.mappings.remove(k),
            MapKey::V6(k) => self.mappings6.remove(k),
        };
    }

    /// Tells the IPv6 datapath how many ports are published on one IPv6
    /// address (`Net6::one_address_mappings`).
    pub fn set_one_address_mappings(&mut self, count: u32) -> Result<()> {
        let mut net = self
            .net6
            .get(&0, 0)
            .context("reading the datapath's IPv6 subnet")?;
        net.one_address_mappings = count;
        self.set_net6(&net)
    }
}

/// Takes every record of a ring buffer the datapath fills with whole `T`s.
fn drain<T: aya::Pod>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // SAFETY: the datapath writes whole `T`s (plain data); the read
            // copes with the ring's 8-byte alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const T) });
        }
    }
    out
}
