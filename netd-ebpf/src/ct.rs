//! Conntrack: lookups, state updates and the creation of a flow's two
//! entries (one per direction).
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use netd_common::{CtEntry, CtKey, DropReason, ct_state};

use crate::{
    maps::NETD_CT,
    parse::{IPPROTO_TCP, L4, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST},
};

const E2BIG: i32 = -7;
const ENOMEM: i32 = -12;

#[inline(always)]
pub fn key(saddr: u32, daddr: u32, proto: u8, l4: &L4) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto,
        _pad: [0; 3],
    }
}

/// The entry for `key`, refreshed (last_seen, TCP state).
#[inline(always)]
pub fn lookup(key: &CtKey, l4: &L4) -> Option<CtEntry> {
    let p = NETD_CT.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; concurrent updates of these
    // fields are benign (last writer wins).
    unsafe {
        (*p).last_seen = bpf_ktime_get_ns();
        if key.proto == IPPROTO_TCP {
            if l4.is_syn() {
                // The tuple reopens (after a FIN/RST, as TIME_WAIT allows).
                (*p).state = ct_state::NEW;
            } else if l4.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
                (*p).state = ct_state::CLOSING;
            } else if (*p).state == ct_state::NEW && l4.tcp_flags & TCP_FLAG_ACK != 0 {
                (*p).state = ct_state::ESTABLISHED;
            }
        }
        Some(*p)
    }
}

pub enum Insert {
    Ok,
    /// The key exists (a port collision for SNAT probing).
    Exists,
}

/// Inserts a new entry; a full table is `CtTableFull`.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry) -> Result<Insert, DropReason> {
    match NETD_CT.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(Insert::Ok),
        Err(e) if e == E2BIG || e == ENOMEM => Err(DropReason::CtTableFull),
        Err(_) => Ok(Insert::Exists),
    }
}

#[inline(always)]
pub fn remove(key: &CtKey) {
    let _ = NETD_CT.remove(key);
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The entry for `key`, untouched.
#[inline(always)]
pub fn peek(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: copied out of a valid map value.
    unsafe { NETD_CT.get(key) }.copied()
}
