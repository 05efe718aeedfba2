//! Reading and writing an skb's headers with direct packet access: a bounds
//! check against `data_end` and a load or store, instead of a helper call
//! per field. Headers outside the linear area (a frame whose headers sit in
//! page fragments, rare for what reaches these hooks) fall back to
//! `bpf_skb_load_bytes`/`bpf_skb_store_bytes`, which handle any layout.
//!
//! A helper that may move the packet's data (the checksum helpers,
//! `bpf_skb_store_bytes`) invalidates every packet pointer; each access
//! here checks bounds afresh, so callers hold no pointer across a call.

use aya_ebpf::programs::TcContext;

/// Past every header offset netbr reads (an ICMP error's quoted L4 header
/// behind two IPv4 headers with options ends before byte 160). It bounds
/// offsets that come from a map value, which the verifier otherwise
/// refuses to add to a packet pointer.
const MAX_OFF: usize = 0x1ff;

/// `len` bytes at `off`, if the linear area holds them.
#[inline(always)]
fn at(ctx: &TcContext, off: usize, len: usize) -> Option<*mut u8> {
    span(ctx.data(), ctx.data_end(), off, len)
}

/// `len` bytes at `off` of the packet data from `start` to `end`, if it
/// holds them: the bounds check the verifier needs before a direct access,
/// for an skb's linear area and an XDP frame alike.
#[inline(always)]
pub fn span(start: usize, end: usize, off: usize, len: usize) -> Option<*mut u8> {
    if off > MAX_OFF {
        return None;
    }
    // At least two bytes: LLVM turns a one-byte `p + 1 > end` into
    // `p >= end`, and the verifier grants no bytes at `p` from `p < end`
    // when `p`'s offset is all variable. A single last byte then takes the
    // helper, which is correct, only slower.
    let len = if len < 2 { 2 } else { len };
    if start + off + len > end {
        return None;
    }
    Some((start + off) as *mut u8)
}

/// Reads a `T` at `off`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    match at(ctx, off, core::mem::size_of::<T>()) {
        // SAFETY: `at` checked the bounds; packet bytes may be unaligned.
        Some(p) => Ok(unsafe { (p as *const T).read_unaligned() }),
        None => ctx.load::<T>(off).map_err(|_| ()),
    }
}

/// Writes `v` at `off`, leaving every checksum as it is.
#[inline(always)]
pub fn write<T: Copy>(ctx: &TcContext, off: usize, v: &T) -> Result<(), ()> {
    match at(ctx, off, core::mem::size_of::<T>()) {
        // SAFETY: as in `read`. The verifier makes a cloned skb's head
        // private before a program that writes directly runs.
        Some(p) => {
            unsafe { (p as *mut T).write_unaligned(*v) };
            Ok(())
        }
        None => ctx.store(off, v, 0).map_err(|_| ()),
    }
}

/// Folds `diff` (`csum::diff*`) into the header checksum at `off`: for
/// checksums the program keeps itself (IPv4 headers), never an L4 one,
/// whose state only the kernel knows.
#[inline(always)]
pub fn csum_add(ctx: &TcContext, off: usize, diff: u32) -> Result<(), ()> {
    let check: u16 = read(ctx, off)?;
    write(ctx, off, &crate::csum::apply(check, diff))
}
