//! netbr's loader: Docker-style bridge networking whose NAT runs in eBPF.
//! The `netbr` binary is a thin shell over [`cli`]; tests and the demo use
//! the same modules.

pub mod addr;
pub mod bench;
pub mod bpf;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod docker;
pub mod ethtool;
pub mod host_firewall;
pub mod netlink;
pub mod netns;
pub mod probe;
pub mod sandbox;
pub mod store;
pub mod sysctl;
pub mod traffic;
