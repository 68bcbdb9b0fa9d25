//! Conntrack: lookups, state updates, the creation of a flow's two entries
//! (one per direction, race-safe), and the eviction of unconfirmed flows
//! when the table is full.
use aya_ebpf::{
    bindings::BPF_EXIST,
    bindings::BPF_NOEXIST,
    btf_maps::PerCpuArray,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use netd_common::{
    Counter, CtEntry, CtKey, DropReason, FIB_STAMP_SHIFT, ct_kind, ct_state, fib_stamp,
};

use crate::{
    counters,
    maps::{NETD_CT, NETD_CT_NEW},
    parse::{IPPROTO_TCP, L4, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST},
};

const E2BIG: i32 = -7;
const ENOMEM: i32 = -12;
/// Queued candidates looked at per eviction attempt.
const EVICT_TRIES: u32 = 8;

#[inline(always)]
pub fn key(saddr: u32, daddr: u32, proto: u8, l4: &L4) -> CtKey {
    CtKey::new(saddr, daddr, l4.sport, l4.dport, proto)
}

/// Entries holding the reply direction of a flow.
#[inline(always)]
pub fn is_reply_kind(kind: u8) -> bool {
    matches!(
        kind,
        ct_kind::REV_SNAT
            | ct_kind::REV_DNAT
            | ct_kind::REV_HAIRPIN
            | ct_kind::REV_ROUTED
            | ct_kind::REV_ROUTED_IN
    )
}

/// The entry for `key`, refreshed (last_seen, state). TCP follows the
/// flags (a SYN reopens the tuple as NEW, the originator's ACK makes it
/// ESTABLISHED, a FIN closes this direction, an RST the whole flow); other
/// protocols become ESTABLISHED when their reply direction is seen.
#[inline(always)]
pub fn lookup(key: &CtKey, l4: &L4) -> Option<Hit> {
    let p = NETD_CT.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; concurrent updates of these
    // fields are benign (last writer wins).
    unsafe {
        // Written only when the (tick-resolution) clock moved: the entry's
        // cache line stays clean for most packets.
        let now = now();
        let prev_seen = (*p).last_seen;
        if prev_seen != now {
            (*p).last_seen = now;
        }
        if key.proto == IPPROTO_TCP {
            if l4.is_syn() {
                // The tuple reopens (after a FIN/RST, as TIME_WAIT allows).
                (*p).state = ct_state::NEW;
            } else if l4.tcp_flags & TCP_FLAG_RST != 0 {
                (*p).state = ct_state::CLOSING;
                // An RST ends both directions: the flow goes after the
                // closing timeout, not after the other side's idle one.
                let e = *p;
                if let Some(r) = NETD_CT.get_ptr_mut(&key.reverse(&e)) {
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
        Some(Hit {
            e: *p,
            prev_seen,
            now,
        })
    }
}

/// A conntrack hit: the entry (refreshed), when the flow's previous
/// packet in this direction was seen, and now (coarse clock).
pub struct Hit {
    pub e: CtEntry,
    pub prev_seen: u64,
    pub now: u64,
}

/// The next hop and MTU a flow leaving by the uplink cached (`CtEntry`'s
/// `addr2`/`port2`), if still valid: looked up in the current stamp unit
/// (about 1.07 s: a route change reaches established flows within that),
/// by a flow whose previous packet came within one unit (so a stamp that
/// wrapped, after about 19.5 hours, never passes for a fresh one: a flow
/// with packets that close together refreshed its stamp on the way).
#[inline(always)]
pub fn fib_cached(hit: &Hit) -> Option<(u32, u32)> {
    let e = &hit.e;
    if e.fib_stamp != 0
        && e.port2 != 0
        && e.fib_stamp == fib_stamp(hit.now)
        && hit.now.wrapping_sub(hit.prev_seen) < 1 << FIB_STAMP_SHIFT
    {
        Some((e.addr2, u32::from(e.port2)))
    } else {
        None
    }
}

/// Caches a flow's FIB result (next hop `nh`, egress MTU `mtu`; 0 and 0:
/// nothing, the flow looks up again) in its entry at `key`.
#[inline(always)]
pub fn fib_store(key: &CtKey, now: u64, nh: u32, mtu: u32) {
    if let Some(p) = NETD_CT.get_ptr_mut(key) {
        // SAFETY: a valid map value pointer; a concurrent writer stores
        // the same lookup's result (or clears it).
        unsafe {
            if ct_kind::leaves_by_uplink((*p).kind) {
                (*p).addr2 = nh;
                (*p).port2 = mtu as u16;
                (*p).fib_stamp = if mtu == 0 { 0 } else { fib_stamp(now) };
            }
        }
    }
}

/// The result of creating a flow.
pub enum Created {
    /// Both entries are ours.
    New,
    /// The reverse key got taken since the caller probed it.
    RevTaken,
    /// Another CPU created the same flow first: its forward entry (our
    /// reverse entry was rolled back; translate as the winner does).
    Lost(CtEntry),
}

/// Inserts a new entry: `Ok(false)` if the key exists, `CtTableFull` if
/// the table is.
#[inline(always)]
fn insert(key: &CtKey, entry: &CtEntry) -> Result<bool, DropReason> {
    match NETD_CT.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(true),
        Err(e) if e == E2BIG || e == ENOMEM => Err(DropReason::CtTableFull),
        Err(_) => Ok(false),
    }
}

/// Creates a flow: the reverse entry first (it is what collides when a
/// translated port is taken), then the forward one. A full table evicts
/// one unconfirmed flow (two entries: room for this one) and tries again.
/// If the forward key exists another CPU won the race for the same flow:
/// the reverse entry this call made is removed and the winner's entry
/// returned. `replace_rev`: an existing reverse entry is a stale one of
/// an earlier flow on the same tuple (DNAT, whose translation is fixed)
/// and is replaced.
///
/// Called once per new flow (callers probe for a free port with lookups
/// first), which keeps the eviction loop out of their probe loops for
/// the verifier.
#[inline(always)]
pub fn create(
    fwd_key: &CtKey,
    fwd: &CtEntry,
    rev_key: &CtKey,
    rev: &CtEntry,
    replace_rev: bool,
) -> Result<Created, DropReason> {
    if replace_rev {
        remove(rev_key);
    }
    let inserted = match insert(rev_key, rev) {
        Err(DropReason::CtTableFull) if evict_one() => insert(rev_key, rev)?,
        r => r?,
    };
    if !inserted {
        return Ok(Created::RevTaken);
    }
    match insert(fwd_key, fwd) {
        Ok(true) => {
            // A candidate for eviction while it is unconfirmed (the
            // oldest candidate makes room when the queue is full).
            let _ = NETD_CT_NEW.push(fwd_key, u64::from(BPF_EXIST));
            counters::add(Counter::CtCreated, 2);
            Ok(Created::New)
        }
        Ok(false) => {
            // Lost the race. DNAT's reverse entry is the winner's too
            // (same tuple, same translation): keep it.
            if !replace_rev {
                remove(rev_key);
            }
            match peek(fwd_key) {
                Some(w) => Ok(Created::Lost(w)),
                None => Err(DropReason::Unsupported),
            }
        }
        Err(e) => {
            remove(rev_key);
            Err(e)
        }
    }
}

/// Removes the closed flow whose reply entry is at `rev_key` (a
/// masqueraded TCP flow, both directions CLOSING) so that its translated
/// port serves a new flow; false (nothing removed) if the flow is not
/// closed both ways.
#[inline(always)]
pub fn take_over_closed(rev_key: &CtKey) -> bool {
    let Some(r) = peek(rev_key) else {
        return true;
    };
    if r.kind != ct_kind::REV_SNAT || r.state != ct_state::CLOSING {
        return false;
    }
    let old = rev_key.reverse(&r);
    if peek(&old).is_some_and(|f| f.state != ct_state::CLOSING) {
        return false;
    }
    remove(&old);
    remove(rev_key);
    counters::add(Counter::CtReused, 1);
    true
}

/// Whether `key` is free (a probe; `create` settles races).
#[inline(always)]
pub fn free(key: &CtKey) -> bool {
    // SAFETY: presence check only.
    unsafe { NETD_CT.get(key) }.is_none()
}

/// Evicts the oldest queued flow that is still unconfirmed (TCP: the
/// originator never ACKed; others: no reply seen), both of its entries.
/// Queued flows that got confirmed are dropped from the queue on the way.
#[inline(always)]
fn evict_one() -> bool {
    for _ in 0..EVICT_TRIES {
        let Ok(Some(k)) = NETD_CT_NEW.pop() else {
            return false;
        };
        let Some(e) = peek(&k) else { continue };
        let rk = k.reverse(&e);
        let unconfirmed = if k.proto == IPPROTO_TCP {
            e.state == ct_state::NEW
        } else {
            peek(&rk).is_none_or(|r| r.state == ct_state::NEW)
        };
        if unconfirmed {
            remove(&k);
            remove(&rk);
            counters::add(Counter::CtEvicted, 1);
            return true;
        }
    }
    false
}

#[inline(always)]
pub fn remove(key: &CtKey) {
    let _ = NETD_CT.remove(key);
}

/// CLOCK_MONOTONIC at tick resolution (bpf_ktime_get_coarse_ns: no
/// clock-source read; conntrack timeouts are seconds, and the GC compares
/// with CLOCK_MONOTONIC, never behind this clock).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper calls without preconditions; this CPU's value, no
    // concurrent writer on this CPU.
    unsafe {
        let jiffies = bpf_jiffies64();
        let Some(c) = NETD_CLOCK.get_ptr_mut(0) else {
            return bpf_ktime_get_coarse_ns();
        };
        if (*c).jiffies == jiffies && (*c).ns != 0 {
            return (*c).ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        (*c).jiffies = jiffies;
        (*c).ns = ns;
        ns
    }
}

/// This CPU's coarse clock as of a tick (`now`).
#[repr(C)]
pub struct Clock {
    jiffies: u64,
    ns: u64,
}

/// The coarse clock (CLOCK_MONOTONIC, ns) changes once per tick, when
/// jiffies does; `bpf_jiffies64` is inlined by the verifier (one load),
/// `bpf_ktime_get_coarse_ns` is a call into the kernel that cost ~40 ns
/// per packet on the machine of the README's results (every kernel
/// function return pays for the CPU's return-stack mitigation there).
/// `now` calls it once per tick per CPU and keeps the result here. A
/// packet between the tick's jiffies update and the timekeeper's (both
/// at the tick) keeps the previous tick's time for that tick: one tick
/// early, which the conntrack's timeouts (seconds) and the FIB cache's
/// stamp (~1.07 s) do not notice.
#[btf_map]
static NETD_CLOCK: PerCpuArray<Clock, 1> = PerCpuArray::new();

/// The entry for `key`, untouched.
#[inline(always)]
pub fn peek(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: copied out of a valid map value.
    unsafe { NETD_CT.get(key) }.copied()
}
