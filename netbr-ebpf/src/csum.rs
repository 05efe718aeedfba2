//! Internet checksum arithmetic (RFC 1071, RFC 1624) on 16-bit words taken
//! in the byte order they have in the packet, which the ones' complement
//! sum does not care about.

/// A 32-bit field as the two 16-bit words the checksum adds.
#[inline(always)]
pub fn halves(v: u32) -> [u16; 2] {
    [v as u16, (v >> 16) as u16]
}

/// The difference replacing `old` by `new` makes to a checksum, unfolded:
/// what `bpf_l4_csum_replace` takes as a diff (size 0) and [`apply`] folds in.
#[inline(always)]
pub fn diff<const N: usize>(old: &[u16; N], new: &[u16; N]) -> u32 {
    let mut sum = 0u32;
    for i in 0..N {
        sum += u32::from(!old[i]) + u32::from(new[i]);
    }
    sum
}

/// The difference replacing the 32-bit words `old` by `new` makes, as
/// [`diff`] of their halves would give it, in fewer instructions: the
/// words are summed in 64 bits and folded (a ones' complement sum of
/// 32-bit words folds to the same 16-bit sum as one of their halves), to at
/// most 17 bits, so that a few such differences add up without overflow.
#[inline(always)]
pub fn diff_words<const N: usize>(old: &[u32; N], new: &[u32; N]) -> u32 {
    let mut sum = 0u64;
    for i in 0..N {
        sum += u64::from(!old[i]) + u64::from(new[i]);
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = sum as u32;
    (sum & 0xffff) + (sum >> 16)
}

/// The difference a changed 32-bit field makes; 0 if it is unchanged.
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u32 {
    if old == new {
        0
    } else {
        diff(&halves(old), &halves(new))
    }
}

/// The difference a changed 16-bit field makes; 0 if it is unchanged.
#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u32 {
    if old == new {
        0
    } else {
        diff(&[old], &[new])
    }
}

/// RFC 1624's HC' = ~(~HC + ~m + m'), with the `~m + m'` terms in `diff`.
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    let mut sum = u64::from(!check) + u64::from(diff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// A checksum with `old` words replaced by `new`.
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u16; N], new: &[u16; N]) -> u16 {
    apply(check, diff(old, new))
}
