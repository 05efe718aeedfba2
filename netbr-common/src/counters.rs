//! Why a packet was passed, dropped or translated: one enumeration for the
//! datapath's per-CPU counters and for `netbr stats`.

/// Index into the per-CPU counter array (the value is the slot: never
/// renumber, only append). Drops are named `Drop*`; every drop in the
/// datapath increments exactly one of them. A packet may count under more
/// than one reason (`CtExpired` and then `DnatNew`, say).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Neither IPv4 nor IPv6 (ARP, VLAN-tagged): passed untouched.
    PassNotIpv4 = 0,
    /// Protocol netbr does not translate (or an ICMP type it does not track).
    PassUntrackedProto,
    /// A later fragment of a datagram this hook did not translate.
    PassFragment,
    /// Matched no flow and no mapping: passed untouched.
    PassNoMatch,
    /// The datapath has no configuration yet.
    PassNotConfigured,
    DnatNew,
    SnatNew,
    /// A container reached a published port through a host address.
    HairpinNew,
    /// A directly routed inbound connection (allowed by
    /// `--allow-direct-routing`) was tracked, untranslated.
    DirectNew,
    /// A host socket's destination was rewritten to a published container
    /// port (connect or unconnected sendmsg).
    SockRewrite,
    /// A packet of a tracked flow was translated.
    Translated,
    /// A tracked entry had outlived its timeout when looked up.
    CtExpired,
    DropTruncated,
    DropBadHeader,
    /// Every SNAT source port tried was taken.
    DropSnatExhausted,
    /// The conntrack table refused an insert.
    DropCtInsert,
    /// A packet rewrite helper failed; the packet may be half-rewritten.
    DropRewrite,
    /// From the uplink straight to a container address, without a published
    /// port (Docker 28's direct-routing protection).
    DropDirectRouting,
    /// A hairpin target has no endpoint entry to redirect to.
    DropNoEndpoint,
    /// An ICMP error about a netbr-translated packet (by its inner header)
    /// that matches no flow: stale or spoofed.
    DropIcmpNoFlow,
    /// An ICMP error of a tracked flow was translated, outer and inner.
    IcmpErrorTranslated,
    /// A later fragment whose first fragment this hook never saw (lost,
    /// reordered, or forged): nothing says where it belongs.
    DropFragNoFirst,
    /// The assured table is full of live flows: a flow that just became
    /// established could not be admitted and its packet was dropped
    /// (netfilter's "table full, dropping packet"). Raise `--ct-max`.
    DropCtFull,
    /// A host socket tried to bind a published host port and got
    /// EADDRINUSE (cgroup bind4 hook): the port is the container's.
    BindRefused,
    /// The host's own new flow out of the uplink was tracked (`NAT_HOST`):
    /// an ICMP echo, or a TCP/UDP flow whose tuple a container's masqueraded
    /// flow held, given another source port.
    HostFlowNew,
    /// A new flow matched a firewall deny rule (`netbr firewall`).
    DropFirewallDeny,
    /// A new flow in the scope of firewall allow rules matched none of them.
    DropFirewallNotAllowed,
    /// A limited endpoint's packet would have waited past the drop horizon
    /// (`netbr_common::pacing`): its backlog is full.
    DropPaceHorizon,
    /// A report for `netbr monitor` found its ring buffer full: the monitor
    /// fell behind, and says how many it missed.
    MonitorLost,
    /// A container's new flow to a destination it reaches untranslated
    /// (`--no-masquerade`, routed mode) was tracked, so its replies pass
    /// the direct-routing protection.
    UntranslatedNew,
    /// A packet of an internal bridge (`--internal`) to or from beyond it.
    DropInternal,
    /// IPv6, which netbr routes untranslated (`netbr_common::net6`):
    /// passed untouched.
    PassIpv6,
}

pub const REASON_COUNT: u32 = 32;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassUntrackedProto,
        Reason::PassFragment,
        Reason::PassNoMatch,
        Reason::PassNotConfigured,
        Reason::DnatNew,
        Reason::SnatNew,
        Reason::HairpinNew,
        Reason::DirectNew,
        Reason::SockRewrite,
        Reason::Translated,
        Reason::CtExpired,
        Reason::DropTruncated,
        Reason::DropBadHeader,
        Reason::DropSnatExhausted,
        Reason::DropCtInsert,
        Reason::DropRewrite,
        Reason::DropDirectRouting,
        Reason::DropNoEndpoint,
        Reason::DropIcmpNoFlow,
        Reason::IcmpErrorTranslated,
        Reason::DropFragNoFirst,
        Reason::DropCtFull,
        Reason::BindRefused,
        Reason::HostFlowNew,
        Reason::DropFirewallDeny,
        Reason::DropFirewallNotAllowed,
        Reason::DropPaceHorizon,
        Reason::MonitorLost,
        Reason::UntranslatedNew,
        Reason::DropInternal,
        Reason::PassIpv6,
    ];

    /// Stable name for `netbr stats` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassUntrackedProto => "pass_untracked_proto",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNoMatch => "pass_no_match",
            Reason::PassNotConfigured => "pass_not_configured",
            Reason::DnatNew => "dnat_new",
            Reason::SnatNew => "snat_new",
            Reason::HairpinNew => "hairpin_new",
            Reason::DirectNew => "direct_new",
            Reason::SockRewrite => "sock_rewrite",
            Reason::Translated => "translated",
            Reason::CtExpired => "ct_expired",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropBadHeader => "drop_bad_header",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropCtInsert => "drop_ct_insert",
            Reason::DropRewrite => "drop_rewrite",
            Reason::DropDirectRouting => "drop_direct_routing",
            Reason::DropNoEndpoint => "drop_no_endpoint",
            Reason::DropIcmpNoFlow => "drop_icmp_no_flow",
            Reason::IcmpErrorTranslated => "icmp_error_translated",
            Reason::DropFragNoFirst => "drop_frag_no_first",
            Reason::DropCtFull => "drop_ct_full",
            Reason::BindRefused => "bind_refused",
            Reason::HostFlowNew => "host_flow_new",
            Reason::DropFirewallDeny => "drop_fw_deny",
            Reason::DropFirewallNotAllowed => "drop_fw_not_allowed",
            Reason::DropPaceHorizon => "drop_pace_horizon",
            Reason::MonitorLost => "monitor_lost",
            Reason::UntranslatedNew => "untranslated_new",
            Reason::DropInternal => "drop_internal",
            Reason::PassIpv6 => "pass_ipv6",
        }
    }

    /// Whether the packet opened a tracked flow.
    pub const fn opens_flow(self) -> bool {
        matches!(
            self,
            Reason::DnatNew
                | Reason::SnatNew
                | Reason::HairpinNew
                | Reason::DirectNew
                | Reason::HostFlowNew
                | Reason::UntranslatedNew
        )
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropTruncated
                | Reason::DropBadHeader
                | Reason::DropSnatExhausted
                | Reason::DropCtInsert
                | Reason::DropRewrite
                | Reason::DropDirectRouting
                | Reason::DropNoEndpoint
                | Reason::DropIcmpNoFlow
                | Reason::DropFragNoFirst
                | Reason::DropCtFull
                | Reason::DropFirewallDeny
                | Reason::DropFirewallNotAllowed
                | Reason::DropPaceHorizon
                | Reason::DropInternal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
    }
}
