//! Zeroing that stays a few stores. LLVM merges a run of zero stores (the
//! three padding bytes of a tuple literal, the zeroed fields of a parsed
//! packet) into a memset, and its BPF backend makes that a call into a
//! memset that stores one byte per loop turn: about seven instructions a
//! byte, on every packet. Volatile stores are never merged.

use netbr_common::conntrack::FlowKeyOf;

/// A struct literal whose `_pad` is zeroed by [`zero_pad`]: every other
/// field is named, and a literal that is never run checks at compile time
/// that none is missing.
macro_rules! padded {
    ($ty:ident $(<$($g:ident),+>)? { $($field:ident: $val:expr),* $(,)? }) => {{
        #[allow(unreachable_code, clippy::diverging_sub_expression)]
        if false {
            let _all_fields_named = $ty $(::<$($g),+>)? { $($field: $val,)* _pad: unreachable!() };
        }
        let mut value = core::mem::MaybeUninit::<$ty $(<$($g),+>)?>::uninit();
        let p = value.as_mut_ptr();
        // SAFETY: every field is written (the literal above names them all)
        // before the value is read, through pointers no one else holds.
        unsafe {
            $(core::ptr::addr_of_mut!((*p).$field).write($val);)*
            $crate::zeroing::zero_pad(&mut *core::ptr::addr_of_mut!((*p)._pad));
            value.assume_init()
        }
    }};
}
pub(crate) use padded;

/// A tuple with its padding zeroed.
#[inline(always)]
pub fn tuple<A: Copy>(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> FlowKeyOf<A> {
    padded!(FlowKeyOf<A> {
        saddr: saddr,
        daddr: daddr,
        sport: sport,
        dport: dport,
        proto: proto,
    })
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

/// Sets every byte of `v` to zero, a word at a time where its alignment
/// allows: for a value all-zero bytes make valid, such as the 64 bytes of
/// `bpf_fib_lookup`'s parameters.
///
/// # Safety
/// All-zero bytes must be a valid `T`.
#[inline(always)]
pub unsafe fn zero_all<T>(v: &mut T) {
    let size = core::mem::size_of::<T>();
    let p = v as *mut T;
    // SAFETY: each store lies inside `v`, aligned as its type needs.
    unsafe {
        if core::mem::align_of::<T>() >= 4 && size.is_multiple_of(4) {
            for i in 0..size / 4 {
                core::ptr::write_volatile((p as *mut u32).add(i), 0);
            }
        } else {
            for i in 0..size {
                core::ptr::write_volatile((p as *mut u8).add(i), 0);
            }
        }
    }
}
