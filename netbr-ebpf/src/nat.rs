//! Deciding translations for packets of no known flow: DNAT for published
//! ports, masquerade for container traffic leaving through the uplink.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1},
    helpers::{
        bpf_get_prandom_u32, bpf_loop, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use netbr_common::{
    conntrack::{
        initial_state, CtEntry, FlowKey, FlowKeyOf, NAT_DNAT, NAT_HAIRPIN, NAT_HOST, NAT_NONE,
        NAT_SNAT, TCP_ACK, TCP_SYN,
    },
    counters::Reason,
    maps::{Config, MappingKey, MappingTarget, MAPPING_IPV4_ONLY, MAPPING_IPV6_ONLY},
    net6::{MappingKey6, Net6},
    snat::{may_keep_port, snat_candidate, SNAT_ATTEMPTS, SNAT_HISTOGRAM_EXHAUSTED},
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack, firewall,
    maps::{
        CONFIG, LOCAL_ADDRS, MAPPINGS, MAPPINGS6, NO_MASQUERADE, SCRATCH, SEARCH, SNAT_HISTOGRAM,
    },
    parse::Packet,
    port_search::PortSearch,
    uplink_ports,
    zeroing::zero,
};

/// The target of mapping `(proto, addr, port)` (network byte order; `addr`
/// 0 for a wildcard one), if there is one that is not only the other
/// family's (`other_family`: the `MAPPING_*_ONLY` bit of the family the
/// caller does not serve; 0 for an exact address).
#[inline(always)]
pub fn mapped(proto: u8, addr: u32, port: u16, other_family: u16) -> Option<(u32, u16)> {
    let key = MappingKey {
        proto,
        _pad: 0,
        port,
        addr,
    };
    // SAFETY: read-only copy out of the map value.
    unsafe { MAPPINGS.get(&key) }
        .filter(|t| t.flags & other_family == 0)
        .map(|t| (t.addr, t.port))
}

/// The mapping of `proto` to `[addr]:port` over IPv6 (network byte
/// order): a port published on that address alone, else, where `any_too`
/// (the uplink's address, `::1`), one published on every address and not
/// for IPv4 alone. Its target is the container's IPv4 address, as every
/// mapping names it (`NB_EP6` gives the IPv6 one).
#[inline(always)]
pub fn mapped6(
    net: &Net6,
    proto: u8,
    addr: &[u32; 4],
    port: u16,
    any_too: bool,
) -> Option<MappingTarget> {
    if net.one_address_mappings != 0 {
        // Word by word: a constant address (`::1`) copied whole would be
        // read from a constant-pool section, a map of its own to load.
        let key = MappingKey6 {
            proto,
            _pad: 0,
            port,
            addr: [addr[0], addr[1], addr[2], addr[3]],
        };
        // SAFETY: read-only copy out of the map value.
        if let Some(t) = unsafe { MAPPINGS6.get(&key) } {
            return Some(*t);
        }
    }
    if !any_too {
        return None;
    }
    let key = MappingKey {
        proto,
        _pad: 0,
        port,
        addr: 0,
    };
    // SAFETY: read-only copy out of the map value.
    unsafe { MAPPINGS.get(&key) }
        .filter(|t| t.flags & MAPPING_IPV4_ONLY == 0)
        .copied()
}

/// The published mapping for a packet addressed to the host: an exact
/// `HOSTIP:PORT` mapping first, then a wildcard one when the destination is
/// one of the host's addresses.
#[inline(always)]
pub fn published_target(proto: u8, addr: u32, port: u16) -> Option<(u32, u16)> {
    if let Some(t) = mapped(proto, addr, port, 0) {
        return Some(t);
    }
    // Every 127.0.0.0/8 address is the host's, listed or not. (Uplink
    // ingress never gets here with one: see `dnat_new_flow`.)
    // SAFETY: read-only lookup.
    if !is_loopback(addr) && unsafe { LOCAL_ADDRS.get(&addr) }.is_none() {
        return None;
    }
    mapped(proto, 0, port, MAPPING_IPV6_ONLY)
}

/// The packet's tuple with its destination replaced by the published
/// target, if the packet is addressed to a published port.
#[inline(always)]
fn to_published_target(pkt: &Packet) -> Option<FlowKey> {
    let (addr, port) = published_target(pkt.key.proto, pkt.key.daddr, pkt.key.dport)?;
    let mut xlat = pkt.key;
    xlat.daddr = addr;
    xlat.dport = port;
    Some(xlat)
}

/// The tuple a packet from the uplink is translated to if it is for a
/// published port.
#[inline(always)]
pub fn published_flow(pkt: &Packet) -> Option<FlowKey> {
    // A loopback destination never arrives legitimately from outside, and
    // ports published on 127.0.0.1 are for host-local clients only: Docker's
    // moby#45610 / CVE-2025-54388 class. The kernel drops these as martians
    // once netbr leaves them alone.
    if pkt.key.proto == IPPROTO_ICMP || is_loopback(pkt.key.daddr) {
        return None;
    }
    to_published_target(pkt)
}

/// Creates the DNAT flow of a packet for a published port (`published_flow`
/// gave `xlat`); returns the tuple its packets are translated to.
// A BPF function of its own: its frame (and the port search's callback
// under it) would not fit in 512 bytes on top of the hook's.
#[inline(never)]
pub fn dnat_new_flow(
    pkt: &Packet,
    xlat: &FlowKey,
    cfg: &Config,
    now: u64,
) -> Result<FlowKey, Reason> {
    let xlat = *xlat;
    let reply = new_reply(pkt, NAT_DNAT, now)?;
    if !conntrack::claim_reply(&xlat.reversed(), reply, cfg, now) {
        // Another CPU may have just created this very flow, or moved it to
        // the assured table between our lookup and our claim: use it.
        let flow = conntrack::lookup_quiet(&pkt.key, cfg, now).ok_or(Reason::DropCtInsert)?;
        // SAFETY: map value pointer from `lookup`.
        return Ok(unsafe { (*flow.entry).xlat });
    }
    conntrack::insert_orig(&pkt.key, &xlat, reply, pkt.len)?;
    Ok(xlat)
}

/// The reply entry of the new flow `pkt` opens (see
/// `conntrack::reply_entry`), unless a full table refuses new flows.
#[inline(always)]
fn new_reply(pkt: &Packet, nat: u8, now: u64) -> Result<&'static mut CtEntry, Reason> {
    conntrack::admit::<u32>(now)?;
    conntrack::reply_entry(
        &pkt.key,
        nat,
        initial_state(pkt.key.proto, pkt.tcp_flags),
        now,
    )
}

#[inline(always)]
pub fn is_loopback(addr_be: u32) -> bool {
    addr_be.to_ne_bytes()[0] == 127
}

/// Tracks a directly routed inbound connection without translating it, so
/// its replies are recognised as such and not masqueraded. A tuple already
/// taken by another flow is simply left untracked.
#[inline(always)]
pub fn track_direct(pkt: &Packet, cfg: &Config, now: u64) -> Result<(), Reason> {
    let reply = new_reply(pkt, NAT_NONE, now)?;
    if conntrack::claim_reply(&pkt.key.reversed(), reply, cfg, now) {
        conntrack::insert_orig(&pkt.key, &pkt.key, reply, pkt.len)?;
    }
    Ok(())
}

/// What to do with an ICMP error from the uplink that matches no flow. One
/// about a packet netbr would have translated (from the SNAT port range, or
/// to or from the bridge subnet) is stale or spoofed: drop it. Others concern
/// the host's own traffic; the host stack judges those.
#[inline(always)]
pub fn unmatched_icmp_error(pkt: &Packet, cfg: &Config) -> Reason {
    // The quoted packet is the key reversed: it was sent from key.daddr.
    let (from, from_port) = (pkt.key.daddr, u16::from_be(pkt.key.dport));
    let ours = (from == cfg.uplink_addr
        && from_port >= cfg.snat_port_min
        && from_port <= cfg.snat_port_max)
        || cfg.in_subnet(pkt.key.saddr)
        || cfg.in_subnet(pkt.key.daddr);
    if ours {
        Reason::DropIcmpNoFlow
    } else {
        Reason::PassNoMatch
    }
}

/// Whether a container's flow to `daddr` leaves with the container's own
/// address (`MAP_NO_MASQUERADE`), as ip-masq-agent's `nonMasqueradeCIDRs`
/// and Docker's `enable_ip_masquerade=false` have it.
#[inline(always)]
pub fn unmasqueraded(daddr: u32) -> bool {
    NO_MASQUERADE
        .get(&aya_ebpf::maps::lpm_trie::Key::new(32, daddr))
        .is_some()
}

/// Docker's routed gateway mode: whether a new flow from the uplink may
/// reach the container it addresses. Only its published ports (mappings at
/// the container's own address) and echo requests may, as Docker 28 opens
/// them.
#[inline(always)]
pub fn routed_open(pkt: &Packet) -> bool {
    if pkt.key.proto == IPPROTO_ICMP {
        return pkt.key.sport != 0;
    }
    mapped(pkt.key.proto, pkt.key.daddr, pkt.key.dport, 0).is_some()
}

/// Whether masquerade applies: from the bridge subnet to outside it. ICMP
/// only for echo requests (an echo reply leaving a container answers a flow
/// someone else started).
#[inline(always)]
pub fn wants_snat(pkt: &Packet, cfg: &Config) -> bool {
    cfg.in_subnet(pkt.key.saddr)
        && !cfg.in_subnet(pkt.key.daddr)
        && (pkt.key.proto != IPPROTO_ICMP || pkt.key.sport != 0)
}

/// Whether a host socket would receive what the peer sends back to
/// `xlat`'s source: a connected socket of that very tuple, or one bound to
/// the port (a listener, a wildcard UDP socket). Such a port must not be
/// handed to a container, or the host's traffic would be taken for the
/// container's. `bpf_skc_lookup_tcp` sees TIME_WAIT and request sockets too.
#[inline(always)]
fn host_socket_holds(skb: *mut __sk_buff, s: &mut PortSearch) -> bool {
    let xlat = &s.xlat;
    s.tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
        saddr: xlat.daddr,
        daddr: xlat.saddr,
        sport: xlat.dport,
        dport: xlat.sport,
    };
    // SAFETY: `skb` is the program's context.
    unsafe { host_socket_takes(skb, s.xlat.proto, &mut s.tuple) }
}

/// Whether a host socket takes `proto` packets of `tuple`, the reply
/// direction's (the peer's address and port as source): TCP's listeners,
/// connected, request and TIME_WAIT sockets (`bpf_skc_lookup_tcp`), UDP's
/// bound ones. `T` is the IPv4 or IPv6 half of `bpf_sock_tuple`, whose
/// size tells the helpers the family. In the skb's own namespace: the
/// host's.
///
/// # Safety
/// `skb` must be the program's context.
#[inline(always)]
pub unsafe fn host_socket_takes<T>(skb: *mut __sk_buff, proto: u8, tuple: &mut T) -> bool {
    let size = core::mem::size_of::<T>() as u32;
    // A negative netns id means the skb's own namespace.
    let netns = u64::MAX;
    let tuple: *mut bpf_sock_tuple = (tuple as *mut T).cast();
    // SAFETY: the helpers read `size` bytes of the tuple; a socket found is
    // released below.
    let sk = unsafe {
        match proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb.cast(), tuple, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb.cast(), tuple, size, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket reference from the lookup above.
    unsafe { bpf_sk_release(sk.cast()) };
    true
}

/// Claims `xlat.sport` unless it is published or carries a live flow to the
/// same peer.
#[inline(always)]
fn claim_port(xlat: &FlowKey, reply: &CtEntry, cfg: &Config, now: u64) -> bool {
    if xlat.proto != IPPROTO_ICMP
        && published_target(xlat.proto, cfg.uplink_addr, xlat.sport).is_some()
    {
        return false;
    }
    conntrack::claim_reply(&xlat.reversed(), reply, cfg, now)
}

/// One probe of the port search. Attempt 0 tries the packet's own port when
/// it may be kept; the rest walk the SNAT range. Run through `bpf_loop` so
/// the verifier checks this body once instead of once per attempt (an
/// unrolled search blew through the 1M-instruction budget), and so its stack
/// is a frame of its own.
///
/// Everything the body needs comes from maps and its own clock read, not
/// from the caller's stack nor from the loop index: Linux 6.18 refuses the
/// program ("verifier bug: backtracking call unexpected regs") when a
/// precision chain runs from inside a callback back into its caller, and
/// LLVM turns an `attempt == 0` test on the index into exactly such a chain.
///
/// `skb` points at the caller's copy of the context pointer, which the
/// socket lookups need (a pointer, so no precision chain crosses over).
extern "C" fn probe_port(_index: u64, skb: *mut c_void) -> i64 {
    let (Some(s), Some(reply), Some(cfg)) =
        (SEARCH.get_ptr_mut(0), SCRATCH.get_ptr(0), CONFIG.get(0))
    else {
        return 1;
    };
    // SAFETY: per-CPU map values, used by this packet only.
    let (s, reply) = unsafe { (&mut *s, &*reply) };
    let attempt = s.next;
    s.next += 1;
    let port = if attempt == 0 {
        if s.keep_own == 0 && !may_keep_port(s.own_port, cfg.host_port_min, cfg.host_port_max) {
            return 0;
        }
        s.own_port
    } else {
        snat_candidate(s.seed, attempt - 1, cfg.snat_port_min, cfg.snat_port_max)
    };
    s.xlat.sport = port.to_be();
    // SAFETY: `skb` is the pointer `new_source_flow` passed, to its copy of
    // the context pointer.
    if s.check_sockets != 0 && host_socket_holds(unsafe { *(skb as *const *mut __sk_buff) }, s) {
        return 0;
    }
    let now = crate::conntrack::now();
    if claim_port(&s.xlat, reply, cfg, now) {
        s.found = 1;
        s.attempt = attempt;
        return 1;
    }
    0
}

/// Creates a masquerade flow: source becomes the uplink address.
// A BPF function of its own: its frame (and the port search's callback
// under it) would not fit in 512 bytes on top of the hook's.
#[inline(never)]
pub fn snat_new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &Config,
    now: u64,
) -> Result<FlowKey, Reason> {
    firewall::admit_out(cfg, pkt)?;
    crate::profile::mark(netbr_common::profile::SEG_ADMIT);
    let mut xlat = pkt.key;
    xlat.saddr = cfg.uplink_addr;
    new_source_flow(ctx, pkt, xlat, NAT_SNAT, now)
}

/// Whether the host's own new flow of either family, `key` with
/// `tcp_flags`, must be tracked (see `NAT_HOST`), so that container flows
/// and the host's never share a tuple: every ICMP echo, and a TCP SYN or
/// UDP datagram from a port outside the host's ephemeral range (the only
/// ports container flows are given) whose tuple a live flow already holds.
// A BPF function of its own: its lookup's frame must not sit under the port
// search's (`host_new_flow`), or their stacks exceed 512 bytes together.
#[inline(never)]
pub fn host_flow_wanted<A: conntrack::Family>(
    key: &FlowKeyOf<A>,
    tcp_flags: u8,
    cfg: &Config,
    now: u64,
) -> bool {
    match key.proto {
        // An echo request carries its identifier as `sport`; replies have 0.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => key.sport != 0,
        IPPROTO_TCP | IPPROTO_UDP => {
            let port = u16::from_be(key.sport);
            (key.proto == IPPROTO_UDP || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
                && !(cfg.host_port_min..=cfg.host_port_max).contains(&port)
                && conntrack::lookup_quiet(&key.reversed(), cfg, now).is_some()
        }
        _ => false,
    }
}

/// Tracks a new flow the host itself opens out of the uplink (see
/// `host_flow_wanted`). A flow already holding its tuple keeps it; the
/// host's is moved to a free port of the SNAT range, as netfilter moves the
/// later of two clashing flows; otherwise it keeps its own port.
// A BPF function of its own, like `snat_new_flow`.
#[inline(never)]
pub fn host_new_flow(ctx: &TcContext, pkt: &Packet, now: u64) -> Result<FlowKey, Reason> {
    new_source_flow(ctx, pkt, pkt.key, NAT_HOST, now)
}

/// Creates a hairpin flow for a container packet addressed to a published
/// port on a host address: destination becomes the target container, source
/// the gateway, so the reply comes back through the bridge device. `Ok(None)`
/// when the destination is not a published port of the host.
// A BPF function of its own: its frame (and the port search's callback
// under it) would not fit in 512 bytes on top of the hook's.
#[inline(never)]
pub fn hairpin_new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &Config,
    now: u64,
) -> Result<Option<FlowKey>, Reason> {
    if pkt.key.proto == IPPROTO_ICMP || !cfg.in_subnet(pkt.key.saddr) {
        return Ok(None);
    }
    // SAFETY: read-only lookup.
    if unsafe { LOCAL_ADDRS.get(&pkt.key.daddr) }.is_none() {
        return Ok(None);
    }
    let Some(mut xlat) = to_published_target(pkt) else {
        return Ok(None);
    };
    xlat.saddr = cfg.gateway_addr;
    new_source_flow(ctx, pkt, xlat, NAT_HAIRPIN, now).map(Some)
}

/// Creates a flow translated to `xlat` whose source port is still to be
/// chosen: kept when free and outside the host's ephemeral range (any range
/// for the host's own flows), otherwise drawn from the SNAT range, never a
/// published host port nor one a host socket holds towards the peer.
#[inline(always)]
fn new_source_flow(
    ctx: &TcContext,
    pkt: &Packet,
    xlat: FlowKey,
    nat: u8,
    now: u64,
) -> Result<FlowKey, Reason> {
    let reply = new_reply(pkt, nat, now)?;
    let search = SEARCH.get_ptr_mut(0).ok_or(Reason::DropCtInsert)?;
    // SAFETY: per-CPU map value, used by this packet only.
    let search = unsafe { &mut *search };
    // Field by field: a literal's zero fields become a memset call
    // (`zeroing`). `tuple` is written by each socket check before it is read.
    search.xlat = xlat;
    // SAFETY: the helper has no preconditions.
    search.seed = unsafe { bpf_get_prandom_u32() };
    search.own_port = u16::from_be(pkt.key.sport);
    search.keep_own = u16::from(nat == NAT_HOST);
    search.check_sockets = u16::from(nat != NAT_HOST);
    zero(&mut search.found);
    zero(&mut search.next);
    zero(&mut search.attempt);
    let mut skb = ctx.skb.skb;
    // SAFETY: the callback follows bpf_loop's contract; its context is the
    // context pointer's copy on our stack, alive across the call.
    unsafe {
        bpf_loop(
            SNAT_ATTEMPTS + 1,
            probe_port as *mut c_void,
            (&mut skb as *mut *mut __sk_buff).cast(),
            0,
        )
    };
    let bucket = if search.found == 0 {
        SNAT_HISTOGRAM_EXHAUSTED
    } else {
        search.attempt
    };
    if let Some(slot) = SNAT_HISTOGRAM.get_ptr_mut(bucket) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
    if search.found == 0 {
        crate::events::log(Reason::DropSnatExhausted, 0, now);
        return Err(Reason::DropSnatExhausted);
    }
    // The ports the flow's packets arrive on at the uplink, marked before
    // the flow is complete: replies at the translated port, and the host's
    // own packets at their socket's.
    if nat != NAT_HAIRPIN {
        uplink_ports::mark_flow(search.xlat.proto, search.xlat.sport);
    }
    if nat == NAT_HOST {
        uplink_ports::mark_flow(pkt.key.proto, pkt.key.sport);
    }
    // SAFETY: the scratch entry, not aliased while the search is over.
    conntrack::insert_orig(&pkt.key, &search.xlat, reply, pkt.len)?;
    Ok(search.xlat)
}
