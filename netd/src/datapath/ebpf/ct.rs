//! The conntrack table from userspace: reading it in batches, the garbage
//! collector, which entries a control-plane change makes stale, and
//! carrying entries over from another table (a map-version upgrade or a
//! new `--conntrack-size`).
use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::Result;
use aya::maps::{HashMap, IterableMap, MapData};
use netd_common::{CtEntry, CtKey, ct_kind, ct_state};

use crate::datapath::{ConntrackGc, GcRun};

/// Conntrack timeouts (seconds), by protocol and state.
pub const TCP_NEW: u64 = 60;
pub const TCP_ESTABLISHED: u64 = 6 * 3600;
/// An RST closes both directions and a FIN its own: netfilter's CLOSE.
pub const TCP_CLOSING: u64 = 10;
pub const UDP: u64 = 60;
pub const ICMP: u64 = 30;

const BPF_NOEXIST: u64 = 1;

/// Entries read per BPF_MAP_LOOKUP_BATCH call.
const BATCH: u32 = 16384;

pub fn timeout(proto: u8, state: u8) -> u64 {
    match (proto, state) {
        (6, ct_state::NEW) => TCP_NEW,
        (6, ct_state::ESTABLISHED) => TCP_ESTABLISHED,
        (6, _) => TCP_CLOSING,
        (17, _) => UDP,
        _ => ICMP,
    }
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// The bpf(2) attribute of the BATCH commands (`union bpf_attr`'s
/// `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every entry of a hash map of `K -> V`, read with BPF_MAP_LOOKUP_BATCH
/// (a few syscalls for the whole table instead of two per entry; hash
/// maps have them since Linux 5.6).
pub fn dump<K, V>(map: &MapData) -> Result<Vec<(K, V)>>
where
    K: aya::Pod,
    V: aya::Pod,
{
    let mut out = Vec::new();
    dump_each::<K, V>(map, |k, v| out.push((*k, *v)))?;
    Ok(out)
}

/// Calls `f` on every entry of a hash map of `K -> V`, read in
/// BPF_MAP_LOOKUP_BATCH batches of `BATCH` (nothing else is allocated).
pub fn dump_each<K, V>(map: &MapData, mut f: impl FnMut(&K, &V)) -> Result<()>
where
    K: aya::Pod,
    V: aya::Pod,
{
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::with_capacity(BATCH as usize);
    let mut values: Vec<V> = Vec::with_capacity(BATCH as usize);
    // The position token (hash tables: a bucket index, u32); room for more.
    let mut token = [0u8; 64];
    let mut next = [0u8; 64];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel writes at most `count` keys and values into
        // buffers of that capacity, and the token into `next`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = std::io::Error::last_os_error();
        let n = attr.count as usize;
        if rc == 0 || err.raw_os_error() == Some(libc::ENOENT) {
            // SAFETY: the kernel initialised the first `n` elements.
            unsafe {
                keys.set_len(n);
                values.set_len(n);
            }
            for (k, v) in keys.iter().zip(values.iter()) {
                f(k, v);
            }
            // SAFETY: plain data, refilled by the next call.
            unsafe {
                keys.set_len(0);
                values.set_len(0);
            }
            if rc != 0 {
                return Ok(());
            }
            token = next;
            first = false;
            continue;
        }
        return Err(anyhow::anyhow!("BPF_MAP_LOOKUP_BATCH: {err}"));
    }
}

/// Writes `entries` into a hash map with BPF_MAP_UPDATE_BATCH (one
/// syscall per `BATCH` entries; for benchmarks and tests that fill a
/// table).
pub fn update_batch<K: aya::Pod, V: aya::Pod>(map: &MapData, entries: &[(K, V)]) -> Result<()> {
    let fd = map.fd().as_fd().as_raw_fd();
    for chunk in entries.chunks(BATCH as usize) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel reads `count` keys and values.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc != 0 {
            return Err(anyhow::anyhow!(
                "BPF_MAP_UPDATE_BATCH: {} ({} of {} written)",
                std::io::Error::last_os_error(),
                attr.count,
                chunk.len()
            ));
        }
    }
    Ok(())
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The conntrack garbage collector: a flow goes when both of its
/// directions are idle past their state's timeout. It reads the whole
/// table in BPF_MAP_LOOKUP_BATCH batches (a few syscalls for the whole
/// table instead of two per entry), then checks each candidate flow again
/// as the table has it right before deleting its two entries: a flow a
/// packet refreshed after the read (a SYN reopening a closed tuple) is
/// kept. Deleting is per entry on purpose: BPF_MAP_DELETE_BATCH or
/// LOOKUP_AND_DELETE_BATCH would delete what a packet refreshed between
/// the check and the batch (the reopened connection would lose its
/// translation).
pub struct CtGc {
    pub ct: HashMap<MapData, CtKey, CtEntry>,
}

impl ConntrackGc for CtGc {
    fn run(&mut self) -> Result<GcRun> {
        let cpu = thread_cpu_time();
        let wall = std::time::Instant::now();
        let now = monotonic_ns();
        // One pass over the snapshot: the entries idle past their timeout
        // are the candidates (a flow goes when both of its entries are;
        // the reverse entry is checked below, in the table).
        let mut run = GcRun::default();
        let mut candidates = Vec::new();
        dump_each::<CtKey, CtEntry>(self.ct.map(), |k, e| {
            run.entries += 1;
            if expired(now, k, e) {
                candidates.push(*k);
            }
        })?;
        let mut gone = std::collections::HashSet::new();
        for k in candidates {
            if gone.contains(&k) {
                continue;
            }
            // Again, as the table has it now.
            let now = monotonic_ns();
            let Ok(e) = self.ct.get(&k, 0) else { continue };
            let rk = k.reverse(&e);
            let back = self.ct.get(&rk, 0).ok();
            if !flow_expired(now, &k, &e, |_| back) {
                continue;
            }
            if self.ct.remove(&k).is_ok() {
                run.expired += 1;
            }
            if back.is_some() && self.ct.remove(&rk).is_ok() {
                run.expired += 1;
                gone.insert(rk);
            }
        }
        run.cpu_micros = thread_cpu_time().saturating_sub(cpu).as_micros() as u64;
        run.wall_micros = wall.elapsed().as_micros() as u64;
        Ok(run)
    }
}

fn expired(now: u64, k: &CtKey, e: &CtEntry) -> bool {
    now.saturating_sub(e.last_seen) > timeout(k.proto, e.state) * 1_000_000_000
}

/// Both directions of the flow of (k, e) are idle past their timeout (a
/// missing reverse entry counts as expired).
pub fn flow_expired(
    now: u64,
    k: &CtKey,
    e: &CtEntry,
    get: impl Fn(&CtKey) -> Option<CtEntry>,
) -> bool {
    if !expired(now, k, e) {
        return false;
    }
    let rk = k.reverse(e);
    get(&rk).is_none_or(|re| expired(now, &rk, &re))
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

/// What a conntrack entry must still refer to: a live container address
/// and, for published-port flows, a binding that still exists.
pub struct Live {
    pub ips: BTreeSet<u32>,
    /// The published ranges.
    pub ports: Vec<LiveRange>,
}

/// A published range: host ports [host_min, host_max] of `proto` to
/// `container_ip` (network order).
#[derive(Clone, Copy, Debug)]
pub struct LiveRange {
    pub proto: u8,
    pub container_ip: u32,
    pub host_min: u16,
    pub host_max: u16,
}

impl Live {
    fn published(&self, proto: u8, host_port: u16, container_ip: u32) -> bool {
        self.ports.iter().any(|r| {
            r.proto == proto
                && r.container_ip == container_ip
                && (r.host_min..=r.host_max).contains(&host_port)
        })
    }
}

/// Whether the control plane's state no longer has what the entry refers
/// to: its container, or the published port of a DNAT or hairpin flow
/// (both directions of each).
pub fn stale(k: &CtKey, e: &CtEntry, live: &Live) -> bool {
    if !live.ips.contains(&e.container_ip) {
        return true;
    }
    let host_port = match e.kind {
        ct_kind::DNAT | ct_kind::HAIRPIN => k.dport,
        ct_kind::REV_DNAT => e.port,
        ct_kind::REV_HAIRPIN => e.port2,
        _ => return false,
    };
    !live.published(k.proto, host_port, e.container_ip)
}

/// Copies every entry of `from` (another table of the same layout) into
/// `to` where its key is free (an LRU table too: aya's `HashMap` serves
/// both); returns how many were copied.
pub fn copy_entries<K: aya::Pod, V: aya::Pod>(
    from: &MapData,
    to: &mut HashMap<&mut MapData, K, V>,
) -> usize {
    let Ok(entries) = dump::<K, V>(from) else {
        return 0;
    };
    entries
        .iter()
        .filter(|(k, v)| to.insert(k, v, BPF_NOEXIST).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: u8, addr: u32, port: u16, container: u32) -> CtEntry {
        CtEntry {
            kind,
            addr,
            port,
            container_ip: container,
            ..CtEntry::default()
        }
    }

    #[test]
    fn hairpin_and_dnat_entries_go_with_their_published_port() {
        let (c, host) = (0x0a00_0002, 0x0a00_0001);
        let live = Live {
            ips: [c].into(),
            ports: vec![LiveRange {
                proto: 6,
                container_ip: c,
                host_min: 8080,
                host_max: 8080,
            }],
        };
        let k = |dport: u16| CtKey {
            saddr: 5,
            daddr: host,
            sport: 40000,
            dport,
            proto: 6,
            _pad: [0; 3],
        };
        assert!(!stale(&k(8080), &entry(ct_kind::DNAT, c, 80, c), &live));
        assert!(stale(&k(9090), &entry(ct_kind::DNAT, c, 80, c), &live));
        assert!(!stale(&k(8080), &entry(ct_kind::HAIRPIN, c, 80, c), &live));
        assert!(stale(&k(9090), &entry(ct_kind::HAIRPIN, c, 80, c), &live));
        let mut rev = entry(ct_kind::REV_HAIRPIN, 7, 40000, c);
        rev.port2 = 9090;
        assert!(stale(&k(1), &rev, &live), "reverse hairpin of 9090");
        rev.port2 = 8080;
        assert!(!stale(&k(1), &rev, &live));
        assert!(stale(
            &k(1),
            &entry(ct_kind::REV_DNAT, host, 9090, c),
            &live
        ));
        assert!(!stale(&k(1), &entry(ct_kind::SNAT, host, 61000, c), &live));
        assert!(stale(&k(1), &entry(ct_kind::SNAT, host, 61000, 99), &live));
    }

    #[test]
    fn a_flow_expires_when_both_directions_are_idle() {
        let k = CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: 6,
            _pad: [0; 3],
        };
        let mut e = entry(ct_kind::SNAT, 9, 5, 1);
        e.state = ct_state::CLOSING;
        let mut r = entry(ct_kind::REV_SNAT, 1, 3, 1);
        r.state = ct_state::ESTABLISHED;
        let now = 100 * 1_000_000_000;
        assert!(
            !flow_expired(now, &k, &e, |_| Some(r)),
            "the other side is open"
        );
        r.state = ct_state::CLOSING;
        assert!(flow_expired(now, &k, &e, |_| Some(r)), "RST: both closing");
        assert!(flow_expired(now, &k, &e, |_| None), "orphan");
        e.last_seen = now;
        assert!(!flow_expired(now, &k, &e, |_| None), "refreshed");
    }
}
