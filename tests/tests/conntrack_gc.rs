//! The eBPF datapath's conntrack GC on a real table: idle flows go (both
//! entries), live ones stay, a flow with one live direction stays, and
//! the pass is recorded (entries walked, expired, CPU and wall time),
//! with few candidates and with more than a read batch of them.
use aya::maps::HashMap;
use netd::{
    bpf::{BpfLogLevel, Programs},
    datapath::{
        ConntrackGc,
        ebpf::ct::{CtGc, monotonic_ns},
    },
};
use netd_common::{CtEntry, CtKey, ct_kind, ct_state, maps};
use netd_tests::require_root;

fn flow(i: u32, last_seen: u64, rev_last_seen: u64) -> [(CtKey, CtEntry); 2] {
    let k = CtKey {
        saddr: 0x0a00_0000 + i,
        daddr: 0xc612_0001,
        sport: (i % 60000) as u16 + 1024,
        dport: 80,
        proto: 6,
        _pad: [0; 3],
    };
    let e = CtEntry {
        last_seen,
        addr: 0xc612_0002,
        port: (i % 60000) as u16 + 1024,
        kind: ct_kind::SNAT,
        state: ct_state::CLOSING,
        container_ip: k.saddr,
        ..CtEntry::default()
    };
    let rk = k.reverse(&e);
    let r = CtEntry {
        last_seen: rev_last_seen,
        addr: k.saddr,
        port: k.sport,
        kind: ct_kind::REV_SNAT,
        state: ct_state::CLOSING,
        container_ip: k.saddr,
        ..CtEntry::default()
    };
    [(k, e), (rk, r)]
}

fn gc_case(idle: u32, live: u32, half: u32) {
    let mut p = Programs::load_with(BpfLogLevel::Off, None, 65536).unwrap();
    let now = monotonic_ns();
    // Closing flows time out after 10 s: last seen 60 s ago is idle.
    let old = now.saturating_sub(60_000_000_000);
    // The collector owns its handle of the table, as the daemon's does.
    let table = p.ebpf_mut().take_map(maps::CT).unwrap();
    let mut gc = CtGc {
        ct: HashMap::try_from(table).unwrap(),
    };
    let mut i = 0;
    for (n, (a, b)) in [(idle, (old, old)), (live, (now, now)), (half, (old, now))] {
        for _ in 0..n {
            for (k, e) in flow(i, a, b) {
                gc.ct.insert(k, e, 0).unwrap();
            }
            i += 1;
        }
    }
    let r = gc.run().unwrap();
    assert_eq!(r.entries, 2 * u64::from(idle + live + half));
    assert_eq!(r.expired, 2 * u64::from(idle), "{r:?}");
    assert!(r.wall_micros > 0);
    let left: Vec<(CtKey, CtEntry)> = gc.ct.iter().map(|r| r.unwrap()).collect();
    assert_eq!(left.len() as u32, 2 * (live + half));
    assert!(
        left.iter()
            .all(|(_, e)| e.last_seen == now || e.last_seen == old)
    );
    // Nothing left to do.
    let r = gc.run().unwrap();
    assert_eq!(r.expired, 0);
}

#[test]
fn conntrack_gc_removes_idle_flows_in_batches() {
    if !require_root("conntrack_gc_removes_idle_flows_in_batches") {
        return;
    }
    gc_case(10, 20, 5);
    // Many (more than a batch of 4096 entries).
    gc_case(5000, 300, 100);
}
