//! Docker's `-p [HOSTIP:]HOSTPORT[-END]:CPORT[-END][/tcp|/udp]` syntax.

use core::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::{IPPROTO_TCP, IPPROTO_UDP};

/// One parsed `-p` argument. Ranges are inclusive; a single port is a range
/// of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None` publishes on every local address of both families, as Docker
    /// does without HOSTIP; `0.0.0.0` on every IPv4 one.
    pub host_ip: Option<Ipv4Addr>,
    /// `[::]`: every local IPv6 address, no IPv4 one (`host_ip` is `None`);
    /// `[ADDR6]` (`host_ip6`): that IPv6 address alone.
    pub ipv6_only: bool,
    pub host_ip6: Option<Ipv6Addr>,
    pub host_ports: (u16, u16),
    pub container_ports: (u16, u16),
    pub proto: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecError {
    MissingContainerPort,
    BadHostIp,
    BadPort,
    ZeroPort,
    ReversedRange,
    BadProtocol,
    /// Host and container ranges differ in length.
    RangeMismatch,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecError::MissingContainerPort => {
                "expected [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. 8080:80/tcp"
            }
            SpecError::BadHostIp => {
                "the host IP is not an IPv4 address nor a bracketed IPv6 one like [2001:db8::1]"
            }
            SpecError::BadPort => "a port is not a number between 1 and 65535",
            SpecError::ZeroPort => "port 0 cannot be published",
            SpecError::ReversedRange => "a port range ends before it starts",
            SpecError::BadProtocol => "the protocol must be tcp or udp",
            SpecError::RangeMismatch => "host and container port ranges must have the same length",
        })
    }
}

/// Docker's way of giving an IPv6 host IP: `[2001:db8::1]`, `[::]`.
fn bracketed_ipv6(ip: &str) -> Option<Ipv6Addr> {
    ip.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

impl FromStr for PortSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (ports, proto) = match s.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, IPPROTO_TCP),
            Some((ports, "udp")) => (ports, IPPROTO_UDP),
            Some(_) => return Err(SpecError::BadProtocol),
            None => (s, IPPROTO_TCP),
        };
        let (host, container) = ports
            .rsplit_once(':')
            .ok_or(SpecError::MissingContainerPort)?;
        let (host_ip, ipv6_only, host_ip6, host) = match host.rsplit_once(':') {
            Some((ip, host)) => match bracketed_ipv6(ip) {
                Some(Ipv6Addr::UNSPECIFIED) => (None, true, None, host),
                Some(ip6) => (None, true, Some(ip6), host),
                None if ip.starts_with('[') => return Err(SpecError::BadHostIp),
                None => (
                    Some(ip.parse().map_err(|_| SpecError::BadHostIp)?),
                    false,
                    None,
                    host,
                ),
            },
            None => (None, false, None, host),
        };
        let host_ports = parse_range(host)?;
        let container_ports = parse_range(container)?;
        // As Docker: ranges pair up when equally long; a host range with a
        // single container port means "any one free host port of the range".
        let container_single = container_ports.0 == container_ports.1;
        if host_ports.1 - host_ports.0 != container_ports.1 - container_ports.0 && !container_single
        {
            return Err(SpecError::RangeMismatch);
        }
        Ok(PortSpec {
            host_ip,
            ipv6_only,
            host_ip6,
            host_ports,
            container_ports,
            proto,
        })
    }
}

impl PortSpec {
    /// A host range for one container port: Docker publishes one free host
    /// port chosen from the range.
    pub const fn picks_host_port(&self) -> bool {
        self.host_ports.0 != self.host_ports.1 && self.container_ports.0 == self.container_ports.1
    }

    /// Each (host port, container port) pair the spec publishes; for a spec
    /// that [picks a host port](Self::picks_host_port), the candidates.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        let (c0, c1) = self.container_ports;
        (self.host_ports.0..=self.host_ports.1)
            .enumerate()
            .map(move |(i, h)| (h, if c0 == c1 { c0 } else { c0 + i as u16 }))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        } else if let Some(ip6) = self.host_ip6 {
            write!(f, "[{ip6}]:")?;
        } else if self.ipv6_only {
            f.write_str("[::]:")?;
        }
        write_range(f, self.host_ports)?;
        f.write_str(":")?;
        write_range(f, self.container_ports)?;
        write!(f, "/{}", crate::proto_name(self.proto))
    }
}

fn write_range(f: &mut fmt::Formatter<'_>, (a, b): (u16, u16)) -> fmt::Result {
    if a == b {
        write!(f, "{a}")
    } else {
        write!(f, "{a}-{b}")
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), SpecError> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (parse_port(a)?, parse_port(b)?),
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
    };
    if a > b {
        return Err(SpecError::ReversedRange);
    }
    Ok((a, b))
}

fn parse_port(s: &str) -> Result<u16, SpecError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::BadPort);
    }
    match s.parse::<u16>() {
        Ok(0) => Err(SpecError::ZeroPort),
        Ok(p) => Ok(p),
        Err(_) => Err(SpecError::BadPort),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{string::ToString, vec::Vec};

    fn p(s: &str) -> Result<PortSpec, SpecError> {
        s.parse()
    }

    #[test]
    fn plain_mapping_defaults_to_tcp_on_every_address() {
        let s = p("8080:80").unwrap();
        assert_eq!(s.host_ip, None);
        assert_eq!(s.host_ports, (8080, 8080));
        assert_eq!(s.container_ports, (80, 80));
        assert_eq!(s.proto, IPPROTO_TCP);
    }

    #[test]
    fn host_ip_and_protocol() {
        let s = p("192.0.2.1:5353:53/udp").unwrap();
        assert_eq!(s.host_ip, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(s.proto, IPPROTO_UDP);
        assert_eq!(s.to_string(), "192.0.2.1:5353:53/udp");
    }

    #[test]
    fn families_follow_dockers_grammar() {
        let both = p("8080:80").unwrap();
        assert_eq!((both.host_ip, both.ipv6_only), (None, false));
        let v6 = p("[::]:8081:80").unwrap();
        assert_eq!((v6.host_ip, v6.ipv6_only), (None, true));
        assert_eq!(v6.to_string(), "[::]:8081:80/tcp");
        let one6 = p("[2001:db8::1]:8083:80/udp").unwrap();
        assert_eq!(
            (one6.host_ip, one6.ipv6_only, one6.host_ip6),
            (None, true, Some("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(one6.to_string(), "[2001:db8::1]:8083:80/udp");
        assert_eq!(v6.host_ip6, None);
        let v4 = p("0.0.0.0:8082:80").unwrap();
        assert_eq!(
            (v4.host_ip, v4.ipv6_only),
            (Some(Ipv4Addr::UNSPECIFIED), false)
        );
    }

    #[test]
    fn equal_ranges_pair_up() {
        let s = p("8000-8002:9000-9002/udp").unwrap();
        let pairs: Vec<_> = s.pairs().collect();
        assert_eq!(pairs, [(8000, 9000), (8001, 9001), (8002, 9002)]);
    }

    #[test]
    fn host_range_to_one_port_offers_each_host_port_as_a_candidate() {
        let s = p("9000-9002:80").unwrap();
        assert!(s.picks_host_port());
        let pairs: Vec<_> = s.pairs().collect();
        assert_eq!(pairs, [(9000, 80), (9001, 80), (9002, 80)]);
        assert!(!p("9000-9002:80-82").unwrap().picks_host_port());
        assert!(!p("9000:80").unwrap().picks_host_port());
    }

    #[test]
    fn malformed_specs_are_rejected_with_a_reason() {
        assert_eq!(p("8080"), Err(SpecError::MissingContainerPort));
        assert_eq!(p("8080:80/sctp"), Err(SpecError::BadProtocol));
        assert_eq!(p("8080:70000"), Err(SpecError::BadPort));
        assert_eq!(p("8080:+80"), Err(SpecError::BadPort));
        assert_eq!(p("0:80"), Err(SpecError::ZeroPort));
        assert_eq!(p("::1:8080:80"), Err(SpecError::BadHostIp));
        assert_eq!(p("[300.1.1.1]:8080:80"), Err(SpecError::BadHostIp));
        assert_eq!(p("300.1.1.1:8080:80"), Err(SpecError::BadHostIp));
        assert_eq!(p("9000-8000:80"), Err(SpecError::ReversedRange));
        assert_eq!(p("8000-8001:80-82"), Err(SpecError::RangeMismatch));
        assert_eq!(p("8000:80-81"), Err(SpecError::RangeMismatch));
        assert_eq!(p(":80"), Err(SpecError::BadPort));
    }
}
