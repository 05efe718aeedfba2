//! The BPF layer: the embedded object, pin paths, loading and attaching the
//! programs, and typed access to the maps.

pub mod attach;
pub mod datapath;
pub mod layout;
pub mod pacing;
pub mod pins;
pub mod upgrade;

/// The compiled programs, built by `build.rs` through aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netbr-bpf"));
