//! Programs netd never attaches to carry traffic: measuring aids.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netd_common::tc;

/// Passes every frame (XDP_PASS). `netd bench` attaches it to the uplink
/// for a while to measure what XDP on that interface costs by itself: the
/// least an XDP variant of `from_world` would add before doing any of
/// `from_world`'s work (see the README, "XDP on the uplink").
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Does nothing (TC_ACT_UNSPEC). The floor of a TC program's cost under
/// BPF_PROG_TEST_RUN (`hot_path_cost` in tests/tests/bpf_walks.rs): what
/// the harness itself adds to every figure it reports.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    tc::ACT_UNSPEC
}
