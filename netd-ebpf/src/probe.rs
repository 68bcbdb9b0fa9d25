//! Programs netd never attaches to carry traffic: measuring aids.
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes every frame (XDP_PASS). `netd bench` attaches it to the uplink
/// for a while to measure what XDP on that interface costs by itself: the
/// least an XDP variant of `from_world` would add before doing any of
/// `from_world`'s work (see the README, "XDP on the uplink").
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
