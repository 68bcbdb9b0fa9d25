//! netd's eBPF programs. One thin entry point per attach point; the logic
//! lives in per-concern modules.
#![no_std]
#![no_main]

mod counters;
mod parse;

use aya_ebpf::{macros::classifier, programs::TcContext};
use netd_common::{Counter, DropReason, tc};

use crate::parse::{ETH_HLEN, ETH_P_IP, IPPROTO_TCP};

/// TC ingress on every host-side container veth: everything a container
/// sends enters the host here.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    match try_from_container(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => counters::drop(&ctx, reason),
    }
}

fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    counters::add(Counter::FromContainerPackets, 1);
    counters::add(Counter::FromContainerBytes, u64::from(ctx.len()));

    let eth = parse::eth(ctx)?;
    if eth.proto != ETH_P_IP {
        return Ok(tc::ACT_UNSPEC);
    }
    let ip = parse::ipv4(ctx, ETH_HLEN)?;
    counters::add(Counter::FromContainerIpv4, 1);
    if ip.proto == IPPROTO_TCP && !ip.is_fragment() {
        let tcp = parse::tcp(ctx, ETH_HLEN + ip.hdr_len)?;
        counters::add(Counter::FromContainerTcp, 1);
        if tcp.is_syn() {
            aya_log_ebpf::debug!(
                ctx,
                "from_container: SYN {:i}:{} -> {:i}:{}",
                u32::from_be(ip.saddr),
                tcp.sport,
                u32::from_be(ip.daddr),
                tcp.dport
            );
        }
    }
    Ok(tc::ACT_UNSPEC)
}

/// TC ingress on the host's uplink: everything the world sends the host.
#[classifier]
pub fn from_world(ctx: TcContext) -> i32 {
    counters::add(Counter::FromWorldPackets, 1);
    counters::add(Counter::FromWorldBytes, u64::from(ctx.len()));
    tc::ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
