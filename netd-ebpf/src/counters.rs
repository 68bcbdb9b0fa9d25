//! Per-CPU counters, per-endpoint stats and drop accounting.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::TcContext};
use netd_common::{Counter, DropReason, EndpointKey, EndpointStats, tc};

use crate::maps::NETD_EP_STATS;

#[btf_map]
static NETD_COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
static NETD_DROPS: PerCpuArray<u64, { DropReason::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
fn bump<const N: usize>(map: &PerCpuArray<u64, N>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += n };
    }
}

#[inline(always)]
pub fn add(counter: Counter, n: u64) {
    bump(&NETD_COUNTERS, counter as u32, n);
}

#[inline(always)]
fn endpoint(ifindex: u32, len: u32, rx: bool) {
    let key = EndpointKey { ifindex };
    if let Some(s) = NETD_EP_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            if rx {
                (*s).rx_packets += 1;
                (*s).rx_bytes += u64::from(len);
            } else {
                (*s).tx_packets += 1;
                (*s).tx_bytes += u64::from(len);
            }
        }
    } else {
        let mut s = EndpointStats::default();
        if rx {
            s.rx_packets = 1;
            s.rx_bytes = u64::from(len);
        } else {
            s.tx_packets = 1;
            s.tx_bytes = u64::from(len);
        }
        let _ = NETD_EP_STATS.insert(key, s, 0);
    }
}

/// Traffic the container sent.
#[inline(always)]
pub fn endpoint_rx(ifindex: u32, len: u32) {
    endpoint(ifindex, len, true);
}

/// Traffic netd delivered into the container (redirects bypass the
/// veth's own counters).
#[inline(always)]
pub fn endpoint_tx(ifindex: u32, len: u32) {
    endpoint(ifindex, len, false);
}

/// Counts a drop and returns the verdict that drops the packet.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: DropReason) -> i32 {
    bump(&NETD_DROPS, reason as u32, 1);
    aya_log_ebpf::debug!(ctx, "drop: reason {}", reason as u32);
    tc::ACT_SHOT
}
