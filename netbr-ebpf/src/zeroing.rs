//! Zeroing that stays a few stores. LLVM merges a run of zero stores (the
//! three padding bytes of a tuple literal, the zeroed fields of a parsed
//! packet) into a memset, and its BPF backend makes that a call into a
//! memset that stores one byte per loop turn: about seven instructions a
//! byte, on every packet. Volatile stores are never merged.

use netbr_common::conntrack::FlowKeyOf;

/// A tuple with its padding zeroed.
#[inline(always)]
pub fn tuple<A: Copy>(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> FlowKeyOf<A> {
    let mut key = core::mem::MaybeUninit::<FlowKeyOf<A>>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: every field of `key` is written before it is read, through
    // pointers into it that no one else holds.
    unsafe {
        core::ptr::addr_of_mut!((*k).saddr).write(saddr);
        core::ptr::addr_of_mut!((*k).daddr).write(daddr);
        core::ptr::addr_of_mut!((*k).sport).write(sport);
        core::ptr::addr_of_mut!((*k).dport).write(dport);
        core::ptr::addr_of_mut!((*k).proto).write(proto);
        zero_pad(&mut *core::ptr::addr_of_mut!((*k)._pad));
        key.assume_init()
    }
}

/// Zeroes a tuple's padding in place.
#[inline(always)]
pub fn clear_pad<A>(key: &mut FlowKeyOf<A>) {
    zero_pad(&mut key._pad);
}

/// Zeroes padding bytes, one store each.
#[inline(always)]
pub fn zero_pad<const N: usize>(pad: &mut [u8; N]) {
    for byte in pad.iter_mut() {
        zero(byte);
    }
}

/// Sets a field to its zero.
#[inline(always)]
pub fn zero<T: Default>(field: &mut T) {
    // SAFETY: a pointer made from a unique reference.
    unsafe { core::ptr::write_volatile(field, T::default()) };
}
