//! Per-CPU counters, per-endpoint stats and drop accounting. Both kinds
//! of counters are per-CPU arrays (lookups the verifier inlines: a few
//! instructions, no hashing): the global ones are one value holding every
//! counter, the per-endpoint ones are indexed by the endpoint's slot.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::TcContext};
use netd_common::{Counter, Counters, DropReason, Endpoint, tc};

use crate::maps::NETD_EP_STATS;

#[btf_map]
static NETD_COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

#[btf_map]
static NETD_DROPS: PerCpuArray<u64, { DropReason::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn add(counter: Counter, n: u64) {
    if let Some(c) = NETD_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's value; no concurrent writer on this CPU.
        unsafe { (*c).v[counter as usize] += n };
    }
}

/// Counts one packet of `len` bytes in two counters (a program's packets
/// and bytes) with one lookup.
#[inline(always)]
pub fn add_packet(packets: Counter, bytes: Counter, len: u32) {
    if let Some(c) = NETD_COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in `add`.
        unsafe {
            (*c).v[packets as usize] += 1;
            (*c).v[bytes as usize] += u64::from(len);
        }
    }
}

/// A container's IPv4 packet a fast path handled (`fast.rs`): its
/// packet, bytes, IPv4 and (`tcp`) TCP counts and `what` it was
/// (forwarded, masqueraded, a published port's reply), in one lookup.
#[inline(always)]
pub fn from_container_ipv4(len: u64, tcp: bool, what: Counter) {
    if let Some(c) = NETD_COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in `add`.
        unsafe {
            (*c).v[Counter::FromContainerPackets as usize] += 1;
            (*c).v[Counter::FromContainerBytes as usize] += len;
            (*c).v[Counter::FromContainerIpv4 as usize] += 1;
            if tcp {
                (*c).v[Counter::FromContainerTcp as usize] += 1;
            }
            (*c).v[what as usize] += 1;
        }
    }
}

/// A packet from outside a fast path handled: its packet and bytes
/// counts and `what` it was (a published port's, a masqueraded flow's
/// reply), in one lookup.
#[inline(always)]
pub fn from_world(len: u64, what: Counter) {
    if let Some(c) = NETD_COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in `add`.
        unsafe {
            (*c).v[Counter::FromWorldPackets as usize] += 1;
            (*c).v[Counter::FromWorldBytes as usize] += len;
            (*c).v[what as usize] += 1;
        }
    }
}

/// A container -> container forward; `ipv4`/`tcp`: also count the packet
/// as IPv4 / TCP (the fast path's share of `from_container.ipv4` and
/// `.tcp`).
#[inline(always)]
pub fn forwarded(ipv4: bool, tcp: bool) {
    if let Some(c) = NETD_COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in `add`.
        unsafe {
            (*c).v[Counter::Forwarded as usize] += 1;
            if ipv4 {
                (*c).v[Counter::FromContainerIpv4 as usize] += 1;
            }
            if tcp {
                (*c).v[Counter::FromContainerTcp as usize] += 1;
            }
        }
    }
}

/// Traffic the container sent.
#[inline(always)]
pub fn endpoint_rx(ep: &Endpoint, len: u32) {
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(ep.slot) {
        // SAFETY: this CPU's value of the endpoint's slot.
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += u64::from(len);
        }
    }
}

/// Traffic netd delivered into the container (redirects bypass the
/// veth's own counters).
#[inline(always)]
pub fn endpoint_tx(ep: &Endpoint, len: u32) {
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(ep.slot) {
        // SAFETY: as above.
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += u64::from(len);
        }
    }
}

/// Counts a drop and returns the verdict that drops the packet.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: DropReason) -> i32 {
    if let Some(slot) = NETD_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot.
        unsafe { *slot += 1 };
    }
    aya_log_ebpf::debug!(ctx, "drop: reason {}", reason as u32);
    tc::ACT_SHOT
}
