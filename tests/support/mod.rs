//! Helpers shared by the test binaries.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod model;
pub mod packet;

pub mod config;

/// Sum of `/proc/net/snmp` counters (`(section, field)`, e.g. `("Tcp:",
/// "InSegs")`) of the network namespace at `ns`, read from a thread inside it.
pub fn snmp(ns: &std::path::Path, fields: &'static [(&'static str, &'static str)]) -> u64 {
    netbr::netns::run_in(ns, move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        fields
            .iter()
            .map(|(section, name)| {
                let mut lines = text.lines().filter(|l| l.starts_with(section));
                let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
                let i = names
                    .split_whitespace()
                    .position(|n| n == *name)
                    .expect("field");
                values
                    .split_whitespace()
                    .nth(i)
                    .expect("value")
                    .parse::<u64>()
                    .expect("number")
            })
            .sum()
    })
    .expect("read snmp")
}
