//! IPv6 conntrack: the same two entries per flow, states, race handling
//! and early eviction as the IPv4 table (ct.rs), in NETD_CT6: when it is
//! full, the oldest recently created flow that is still unconfirmed
//! (NETD_CT6_NEW) makes room (the `evict6` program, tail-called by the
//! program whose new flow did not fit, which then runs again); failing
//! that the new flow is refused (`ct-table-full`).
use aya_ebpf::bindings::{BPF_EXIST, BPF_NOEXIST};
use netd_common::{
    Counter, DropReason, ct_kind, ct_state,
    v6::{CtEntry6, CtKey6, Ip6},
};

use crate::{
    counters,
    ct::now,
    maps6::{NETD_CT6, NETD_CT6_NEW, NETD_EVICT6},
    parse::{IPPROTO_TCP, L4, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST},
};

/// The result of creating a flow (as ct::Created).
pub enum Created6 {
    New,
    RevTaken,
    Lost(CtEntry6),
}

const E2BIG: i32 = -7;
const ENOMEM: i32 = -12;

#[inline(always)]
pub fn key(saddr: Ip6, daddr: Ip6, proto: u8, l4: &L4) -> CtKey6 {
    CtKey6 {
        saddr,
        daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn is_reply_kind(kind: u8) -> bool {
    matches!(
        kind,
        ct_kind::REV_SNAT | ct_kind::REV_DNAT | ct_kind::REV_ROUTED | ct_kind::REV_ROUTED_IN
    )
}

/// The entry for `key`, refreshed (as ct::lookup).
#[inline(always)]
pub fn lookup(key: &CtKey6, l4: &L4) -> Option<CtEntry6> {
    let p = NETD_CT6.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; concurrent updates are benign.
    unsafe {
        (*p).last_seen = now();
        if key.proto == IPPROTO_TCP {
            if l4.is_syn() {
                (*p).state = ct_state::NEW;
            } else if l4.tcp_flags & TCP_FLAG_RST != 0 {
                (*p).state = ct_state::CLOSING;
                let e = *p;
                if let Some(r) = NETD_CT6.get_ptr_mut(&key.reverse(&e)) {
                    (*r).state = ct_state::CLOSING;
                }
            } else if l4.tcp_flags & TCP_FLAG_FIN != 0 {
                (*p).state = ct_state::CLOSING;
            } else if (*p).state == ct_state::NEW && l4.tcp_flags & TCP_FLAG_ACK != 0 {
                (*p).state = ct_state::ESTABLISHED;
            }
        } else if (*p).state == ct_state::NEW && is_reply_kind((*p).kind) {
            (*p).state = ct_state::ESTABLISHED;
        }
        Some(*p)
    }
}

#[inline(always)]
fn insert(key: &CtKey6, entry: &CtEntry6) -> Result<bool, DropReason> {
    match NETD_CT6.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(true),
        Err(e) if e == E2BIG || e == ENOMEM => Err(DropReason::CtTableFull),
        Err(_) => Ok(false),
    }
}

/// Creates a flow's two entries, the reverse one first (as ct::create).
#[inline(always)]
pub fn create(
    fwd_key: &CtKey6,
    fwd: &CtEntry6,
    rev_key: &CtKey6,
    rev: &CtEntry6,
    replace_rev: bool,
) -> Result<Created6, DropReason> {
    if replace_rev {
        remove(rev_key);
    }
    // A full table: the caller's program hands the packet to evict6,
    // which makes room and runs it again.
    if !insert(rev_key, rev)? {
        return Ok(Created6::RevTaken);
    }
    match insert(fwd_key, fwd) {
        Ok(true) => {
            let _ = NETD_CT6_NEW.push(fwd_key, u64::from(BPF_EXIST));
            counters::add(Counter::CtCreated, 2);
            Ok(Created6::New)
        }
        Ok(false) => {
            if !replace_rev {
                remove(rev_key);
            }
            match peek(fwd_key) {
                Some(w) => Ok(Created6::Lost(w)),
                None => Err(DropReason::Unsupported),
            }
        }
        Err(e) => {
            remove(rev_key);
            Err(e)
        }
    }
}

#[inline(always)]
pub fn free(key: &CtKey6) -> bool {
    // SAFETY: presence check only.
    unsafe { NETD_CT6.get(key) }.is_none()
}

#[inline(always)]
pub fn remove(key: &CtKey6) {
    let _ = NETD_CT6.remove(key);
}

#[inline(always)]
pub fn peek(key: &CtKey6) -> Option<CtEntry6> {
    // SAFETY: copied out of a valid map value.
    unsafe { NETD_CT6.get(key) }.copied()
}

/// Queued candidates looked at per eviction attempt.
const EVICT_TRIES: u32 = 8;

/// Evicts the oldest queued flow that is still unconfirmed (TCP: the
/// originator never ACKed; others: no reply seen), both of its entries
/// (a BPF function of its own: its keys stay off the callers' stacks).
#[inline(never)]
pub fn evict_one() -> bool {
    for _ in 0..EVICT_TRIES {
        match evict_head() {
            EVICTED => return true,
            EMPTY => return false,
            _ => {}
        }
    }
    false
}

const EVICTED: u32 = 1;
const EMPTY: u32 = 2;

/// Pops the oldest candidate and evicts its flow if it is still
/// unconfirmed (a BPF function of its own, so the loop's iterations do
/// not each take stack).
#[inline(never)]
fn evict_head() -> u32 {
    let Some(s) = NETD_EVICT6.get_ptr_mut(0) else {
        return EMPTY;
    };
    // SAFETY: this CPU's scratch value, used by this program run only.
    let s = unsafe { &mut *s };
    let Ok(Some(k)) = NETD_CT6_NEW.pop() else {
        return EMPTY;
    };
    s.k = k;
    let Some(e) = NETD_CT6.get_ptr(&s.k) else {
        return 0;
    };
    // SAFETY: a valid map value pointer, read only.
    let (rk, state) = unsafe { (s.k.reverse(&*e), (*e).state) };
    s.rk = rk;
    let unconfirmed = if s.k.proto == IPPROTO_TCP {
        state == ct_state::NEW
    } else {
        // SAFETY: as above.
        NETD_CT6
            .get_ptr(&s.rk)
            .is_none_or(|r| unsafe { (*r).state } == ct_state::NEW)
    };
    if !unconfirmed {
        return 0;
    }
    remove(&s.k);
    remove(&s.rk);
    counters::add(Counter::CtEvicted, 1);
    EVICTED
}
