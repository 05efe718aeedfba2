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
use netbr_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::parse::ETH_LEN;

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
        // SAFETY: `at` checked the bounds.
        Some(p) => Ok(unsafe { load_unaligned(p) }),
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
            unsafe { store_unaligned(p, v) };
            Ok(())
        }
        None => ctx.store(off, v, 0).map_err(|_| ()),
    }
}

/// Whether a `T` is copied to and from the packet in pieces: LLVM's BPF
/// backend turns an unaligned copy of any size but 1, 2, 4 or 8 bytes (an
/// IPv6 address, a MAC address, an IPv4 header) into a call to a memmove
/// that moves one byte per loop turn, about 130 instructions for 16
/// bytes; unaligned 32-bit pieces are a few inline instructions each.
const fn in_pieces<T>() -> bool {
    !matches!(core::mem::size_of::<T>(), 1 | 2 | 4 | 8)
}

/// Copies `len` bytes (at most 40: an IPv6 header, the longest copy
/// netbr makes) from `src` to `dst`, either of which may be unaligned, in
/// 32-bit pieces and a 16- and 8-bit tail. Each piece stands on its own
/// test of the constant `len`, not in a loop, which LLVM would turn back
/// into a memcpy call.
#[inline(always)]
unsafe fn copy_pieces(src: *const u8, dst: *mut u8, len: usize) {
    macro_rules! piece {
        ($t:ty, $at:expr) => {
            // SAFETY: the caller's `len` bytes cover the piece.
            unsafe {
                (dst.add($at) as *mut $t)
                    .write_unaligned((src.add($at) as *const $t).read_unaligned())
            }
        };
    }
    macro_rules! words {
        ($($at:literal)*) => {
            $(if len >= $at + 4 {
                piece!(u32, $at);
            })*
        };
    }
    words!(0 4 8 12 16 20 24 28 32 36);
    let at = len & !3;
    if len - at >= 2 {
        piece!(u16, at);
    }
    if len & 1 != 0 {
        piece!(u8, len - 1);
    }
}

/// Reads a `T` from packet bytes at `p`, which may be unaligned.
///
/// # Safety
/// `p` must point at `size_of::<T>()` readable bytes.
#[inline(always)]
pub unsafe fn load_unaligned<T: Copy>(p: *const u8) -> T {
    if !in_pieces::<T>() {
        // SAFETY: the caller's bytes hold a `T`.
        return unsafe { (p as *const T).read_unaligned() };
    }
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: as above; every byte of `v` is written before it is read.
    unsafe {
        copy_pieces(p, v.as_mut_ptr() as *mut u8, core::mem::size_of::<T>());
        v.assume_init()
    }
}

/// Writes `v` to packet bytes at `p`, which may be unaligned.
///
/// # Safety
/// `p` must point at `size_of::<T>()` writable bytes.
#[inline(always)]
pub unsafe fn store_unaligned<T: Copy>(p: *mut u8, v: &T) {
    if !in_pieces::<T>() {
        // SAFETY: the caller's bytes have room for a `T`.
        return unsafe { (p as *mut T).write_unaligned(*v) };
    }
    // SAFETY: as above.
    unsafe { copy_pieces(v as *const T as *const u8, p, core::mem::size_of::<T>()) }
}

/// Folds `diff` (`csum::diff*`) into the header checksum at `off`: for
/// checksums the program keeps itself (IPv4 headers), never an L4 one,
/// whose state only the kernel knows.
#[inline(always)]
pub fn csum_add(ctx: &TcContext, off: usize, diff: u32) -> Result<(), ()> {
    let check: u16 = read(ctx, off)?;
    write(ctx, off, &crate::csum::apply(check, diff))
}

/// The length a route's MTU must hold for the packet at hand: its own
/// (`len`, the IP length its header gives) or, for a GSO packet, each
/// segment's. A TCP stream's writes cross a veth whole, up to 64 KiB with
/// one IP header; the device they leave by cuts them into segments of
/// their IP and transport headers (the transport header at `l4_off`, the
/// source port's offset for TCP and UDP) and `gso_size` bytes of payload.
/// The stack's forward path asks the same
/// (`ip_exceeds_mtu`, `ip6_pkt_too_big`: `skb_gso_validate_network_len`);
/// asked with the whole length, the route lookup refused every such
/// packet and a stream through masquerade took the stack.
#[inline(always)]
pub fn segment_len(ctx: &TcContext, len: u32, l4_off: usize, proto: u8) -> u32 {
    // SAFETY: reading a context field.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return len;
    }
    let l4_header = match proto {
        IPPROTO_TCP => match read::<u8>(ctx, l4_off + 12) {
            Ok(data_offset) => u32::from(data_offset >> 4) * 4,
            Err(()) => return len,
        },
        IPPROTO_UDP => 8,
        _ => return len,
    };
    (l4_off - ETH_LEN) as u32 + l4_header + gso_size
}

/// Whether the packet was sent by a socket of this host, as opposed to
/// one a container sent. A container's packet came in through a device
/// (`skb_iif`, which a redirect keeps), and may still carry its socket:
/// the veth hands it over with the sender's socket, which the bridge's
/// path drops before the bridge device's hook but which is still there on
/// the endpoint's veth (`nb_ep_in`; seen on 6.18, where taking the socket
/// alone for the host's turned fast-path SYNs into host flows). A packet the host's
/// stack forwarded has an ingress device too, but never the host's own
/// source address, which is what the callers ask about.
#[inline(always)]
pub fn sent_by_this_host(ctx: &TcContext) -> bool {
    // SAFETY: reading context fields; the pointer is only compared.
    unsafe { (*ctx.skb.skb).ingress_ifindex == 0 && !(*ctx.skb.skb).__bindgen_anon_2.sk.is_null() }
}
