//! Host processes -> published ports, with no proxy process: cgroup
//! socket programs rewrite connect()/sendmsg() to a published host
//! address/port (127.0.0.1, ::1, the uplink's or any host address) straight
//! to the container's address and port, and getpeername()/recvmsg() back,
//! so the client sees the address it asked for. Only sockets of the host
//! namespace are touched (netns cookie); containers' own traffic to host
//! addresses is the TC hairpin path.
use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use netd_common::{
    Counter, SockKey, SockOrig,
    v6::{Ip6, SockKey6},
};

use crate::{config, counters, maps::NETD_SOCK, maps6::NETD_SOCK6, published};

const ALLOW: i32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// ::1 as four network-order words.
const LOOPBACK6: [u32; 4] = [0, 0, 0, 1u32.to_be()];
/// 127.0.0.1, network order.
const LOOPBACK4: u32 = 0x7f00_0001u32.to_be();

/// Reads user_ip6 word by word (the verifier only accepts 4-byte context
/// accesses there).
#[inline(always)]
unsafe fn read_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr) -> [u32; 4] {
    // SAFETY: aligned 4-byte reads of the context.
    unsafe {
        let p = core::ptr::addr_of!((*sa).user_ip6) as *const u32;
        [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ]
    }
}

#[inline(always)]
unsafe fn write_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr, w: [u32; 4]) {
    // SAFETY: aligned 4-byte writes of the context.
    unsafe {
        let p = core::ptr::addr_of_mut!((*sa).user_ip6) as *mut u32;
        core::ptr::write_volatile(p, w[0]);
        core::ptr::write_volatile(p.add(1), w[1]);
        core::ptr::write_volatile(p.add(2), w[2]);
        core::ptr::write_volatile(p.add(3), w[3]);
    }
}

#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = config() else { return false };
    // SAFETY: helper call on the program's context.
    cfg.netns_cookie != 0
        && unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) } == cfg.netns_cookie
}

#[inline(always)]
fn proto(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: reading the context.
    match unsafe { (*ctx.sock_addr).protocol } {
        IPPROTO_TCP => Some(6),
        IPPROTO_UDP => Some(17),
        _ => None,
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper call on the program's context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) }
}

/// Rewrites an IPv4 destination if it is a published port.
#[inline(always)]
fn redirect4(ctx: &SockAddrContext) {
    if !in_host_netns(ctx) {
        return;
    }
    let Some(proto) = proto(ctx) else { return };
    let sa = ctx.sock_addr;
    // SAFETY: reading/writing the context's user address fields, which
    // these attach types may write.
    unsafe {
        let ip = (*sa).user_ip4;
        let port = u16::from_be((*sa).user_port as u16);
        let Some(t) = published(proto, ip, port) else {
            return;
        };
        let cport = t.container_port_min + (port - t.host_port_min);
        let key = SockKey {
            cookie: cookie(ctx),
            ip: t.container_ip,
            port: cport,
            _pad: 0,
        };
        let orig = SockOrig {
            ip6: [0; 4],
            ip4: ip,
            port,
            family: 4,
        };
        let _ = NETD_SOCK.insert(key, orig, 0);
        (*sa).user_ip4 = t.container_ip;
        (*sa).user_port = u32::from(cport.to_be());
    }
    counters::add(Counter::HostSockets, 1);
}

/// Rewrites an IPv6 destination ::1 (or a v4-mapped host address) to the
/// container's v4-mapped address (dual-stack sockets reach IPv4 that way).
#[inline(always)]
fn redirect6(ctx: &SockAddrContext) {
    if !in_host_netns(ctx) {
        return;
    }
    let Some(proto) = proto(ctx) else { return };
    let sa = ctx.sock_addr;
    // SAFETY: as in redirect4.
    unsafe {
        let ip6 = read_ip6(sa);
        let port = u16::from_be((*sa).user_port as u16);
        let v4 = if ip6 == LOOPBACK6 {
            LOOPBACK4
        } else if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffffu32.to_be() {
            ip6[3]
        } else {
            0
        };
        let Some(t) = (if v4 != 0 {
            published(proto, v4, port)
        } else {
            None
        }) else {
            // An IPv6 binding ([::], an IPv6 host address; ::1 is one of
            // the host's): straight to the container's IPv6 address.
            redirect6_to6(ctx, proto, ip6, port);
            return;
        };
        let cport = t.container_port_min + (port - t.host_port_min);
        let key = SockKey {
            cookie: cookie(ctx),
            ip: t.container_ip,
            port: cport,
            _pad: 0,
        };
        let orig = SockOrig {
            ip6,
            ip4: 0,
            port,
            family: 6,
        };
        let _ = NETD_SOCK.insert(key, orig, 0);
        write_ip6(sa, [0, 0, 0xffffu32.to_be(), t.container_ip]);
        (*sa).user_port = u32::from(cport.to_be());
    }
    counters::add(Counter::HostSockets, 1);
}

/// Rewrites an IPv6 destination that is a port published over IPv6 to
/// the container's IPv6 address.
#[inline(always)]
fn redirect6_to6(ctx: &SockAddrContext, proto: u8, ip6: [u32; 4], port: u16) {
    let Some(t) = crate::v6::published(proto, &Ip6 { a: ip6 }, port) else {
        return;
    };
    let cport = t.container_port_min + (port - t.host_port_min);
    let key = SockKey6 {
        cookie: cookie(ctx),
        ip: t.container_ip,
        port: cport,
        _pad: [0; 6],
    };
    let orig = SockOrig {
        ip6,
        ip4: 0,
        port,
        family: 6,
    };
    let _ = NETD_SOCK6.insert(key, orig, 0);
    let sa = ctx.sock_addr;
    // SAFETY: as in redirect4.
    unsafe {
        write_ip6(sa, t.container_ip.a);
        (*sa).user_port = u32::from(cport.to_be());
    }
    counters::add(Counter::HostSockets, 1);
}

/// Shows the peer (getpeername) or a datagram's source (recvmsg) as the
/// address the socket asked for.
#[inline(always)]
fn restore(ctx: &SockAddrContext, v6: bool) {
    let sa = ctx.sock_addr;
    // SAFETY: as in redirect4.
    unsafe {
        let ip = if v6 {
            let w = read_ip6(sa);
            if !(w[0] == 0 && w[1] == 0 && w[2] == 0xffffu32.to_be()) {
                // A container's IPv6 address.
                let port = u16::from_be((*sa).user_port as u16);
                let key = SockKey6 {
                    cookie: cookie(ctx),
                    ip: Ip6 { a: w },
                    port,
                    _pad: [0; 6],
                };
                if let Some(orig) = NETD_SOCK6.get(&key).copied() {
                    write_ip6(sa, orig.ip6);
                    (*sa).user_port = u32::from(orig.port.to_be());
                }
                return;
            }
            w[3]
        } else {
            (*sa).user_ip4
        };
        let port = u16::from_be((*sa).user_port as u16);
        let key = SockKey {
            cookie: cookie(ctx),
            ip,
            port,
            _pad: 0,
        };
        let Some(orig) = NETD_SOCK.get(&key).copied() else {
            return;
        };
        if v6 && orig.family == 6 {
            write_ip6(sa, orig.ip6);
        } else if !v6 && orig.family == 4 {
            (*sa).user_ip4 = orig.ip4;
        } else {
            return;
        }
        (*sa).user_port = u32::from(orig.port.to_be());
    }
}

#[cgroup_sock_addr(connect4)]
pub fn netd_connect4(ctx: SockAddrContext) -> i32 {
    redirect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn netd_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn netd_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn netd_getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn netd_connect6(ctx: SockAddrContext) -> i32 {
    redirect6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn netd_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn netd_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, true);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn netd_getpeername6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, true);
    ALLOW
}
