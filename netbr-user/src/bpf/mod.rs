//! The BPF layer: the embedded object, pin paths, loading and attaching the
//! programs, and typed access to the maps.

use anyhow::{Context as _, Result};
use aya::Ebpf;

pub mod attach;
pub mod datapath;
pub mod layout;
pub mod pacing;
pub mod pins;
pub mod upgrade;
pub mod veth;

/// The compiled programs, built by `build.rs` through aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netbr-bpf"));

/// The program `name` of the object, as its concrete type.
pub(crate) fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("the BPF object has no program {name}"))?;
    Ok(p.try_into()?)
}
