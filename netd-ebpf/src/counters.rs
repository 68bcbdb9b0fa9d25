//! Per-CPU counters and drop accounting.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::TcContext};
use netd_common::{Counter, DropReason, tc};

// BTF-defined maps (".maps"), so `bpftool map dump` shows typed entries.
// Static names are the map names userspace looks up (netd_common::maps).
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

/// Counts a drop and returns the verdict that drops the packet.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: DropReason) -> i32 {
    bump(&NETD_DROPS, reason as u32, 1);
    aya_log_ebpf::debug!(ctx, "drop: reason {}", reason as u32);
    tc::ACT_SHOT
}
