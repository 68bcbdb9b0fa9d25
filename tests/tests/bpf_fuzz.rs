//! Robustness: 100,000 random and mutated frames through each program
//! (truncated headers, bad IHL, odd protocols, fragments, random bytes)
//! with populated maps. Every run must end in a valid verdict, and the
//! maps the programs must never write (endpoints, networks, ports,
//! config) must be byte-for-byte unchanged.
use std::net::Ipv4Addr;

use netd::bpf::{self, BpfLogLevel, Programs};
use netd_common::{Config, Endpoint, NET_ICC, NET_MASQUERADE, tc};
use netd_tests::{
    HOST_IP, OUTSIDE_IP, Testbed,
    bpfmaps::{self, be},
    packet::{ETH_HLEN, Frame, TCP_SYN},
    require_root,
};

const FRAMES_PER_PROGRAM: usize = 100_000;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let a = Frame::default();
    let out = Frame {
        dst: OUTSIDE_IP,
        ..Frame::default()
    };
    let world = Frame {
        src_mac: [2, 0x42, 198, 18, 0, 1],
        dst_mac: [2, 0x42, 198, 18, 0, 2],
        src: OUTSIDE_IP,
        dst: HOST_IP,
        ttl: 64,
    };
    vec![
        a.tcp(40000, 80, TCP_SYN, b"payload"),
        a.udp(5353, 53, b"query"),
        a.icmp_echo(9, false),
        out.tcp(40001, 443, TCP_SYN, b""),
        out.udp(61002, 53, b"q"),
        out.icmp_echo(11, false),
        world.tcp(5555, 8080, TCP_SYN, b""),
        world.udp(5555, 5353, b"x"),
        world.icmp_echo(3, true),
        world.tcp(80, 61001, 0x12, b"reply"),
    ]
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(10) == 0 {
        let len = ETH_HLEN + rng.below(120);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut f = seeds[rng.below(seeds.len())].clone();
    let ip = ETH_HLEN;
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            // Truncate anywhere past the Ethernet header.
            0 => f.truncate(ETH_HLEN + rng.below(f.len() - ETH_HLEN + 1)),
            // Bad or odd IHL (including < 5 and > the packet).
            1 if f.len() > ip => f[ip] = 0x40 | (rng.byte() & 0x0f),
            // Odd protocols.
            2 if f.len() > ip + 9 => f[ip + 9] = rng.byte(),
            // Fragments: MF and/or an offset.
            3 if f.len() > ip + 7 => {
                f[ip + 6] = rng.byte() & 0x3f;
                f[ip + 7] = rng.byte();
            }
            // Random byte flips.
            4 | 5 => {
                let i = rng.below(f.len());
                f[i] = rng.byte();
            }
            // Another EtherType.
            6 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
            // Random tail.
            _ => f.extend((0..rng.below(64)).map(|_| rng.byte())),
        }
    }
    if f.len() < ETH_HLEN {
        f.resize(ETH_HLEN, 0);
    }
    f
}

#[test]
fn random_and_mutated_frames_get_valid_verdicts_and_leave_control_maps_alone() {
    if !require_root("random_and_mutated_frames_get_valid_verdicts_and_leave_control_maps_alone") {
        return;
    }
    let tb = Testbed::new("f").unwrap();
    let mut p = Programs::load_with(BpfLogLevel::Off, None, 4096).unwrap();
    let uplink = tb.host.run(|| Ok(netd::link::ifindex("eth0"))).unwrap();
    bpfmaps::set_config(
        &mut p,
        Config {
            uplink_ifindex: uplink,
            uplink_ip: be(HOST_IP),
            nat_port_min: 61000,
            nat_port_max: 61100,
            _pad: 0,
            netns_cookie: 0,
        },
    );
    bpfmaps::add_network(&mut p, 1, NET_ICC | NET_MASQUERADE);
    let d = Frame::default();
    for (ifindex, ip, mac) in [(1, d.src, d.src_mac), (55, d.dst, d.dst_mac)] {
        bpfmaps::add_endpoint(
            &mut p,
            Endpoint {
                ifindex,
                net_id: 1,
                ip: be(ip),
                mac,
                gw_mac: [2, 0, 0, 0, 0, 1],
            },
        );
    }
    bpfmaps::add_ports(&mut p, 6, Ipv4Addr::UNSPECIFIED, 8080, 8081, d.src, 80);
    bpfmaps::add_ports(&mut p, 17, Ipv4Addr::UNSPECIFIED, 5353, 5353, d.dst, 53);
    let before = bpfmaps::control_maps_snapshot(&mut p);

    let seeds = seeds();
    let mut rng = Rng(0x6e65_7464_2d66_757a);
    let valid = [tc::ACT_UNSPEC, tc::ACT_OK, tc::ACT_SHOT, tc::ACT_REDIRECT];
    for prog in [bpf::FROM_CONTAINER, bpf::FROM_WORLD] {
        let mut verdicts = std::collections::BTreeMap::new();
        // The kernel itself refuses some frames before any program runs
        // (BPF_PROG_TEST_RUN validates e.g. a truncated IPv4 header):
        // those are counted apart, and generation goes on until
        // FRAMES_PER_PROGRAM frames have run through the program.
        let mut refused = 0u64;
        tb.host
            .run(|| {
                let mut ran = 0;
                while ran < FRAMES_PER_PROGRAM {
                    let f = mutate(&mut rng, &seeds);
                    let v = match p.test_run(prog, &f) {
                        Ok((v, _)) => v,
                        Err(e) if format!("{e:?}").contains("code: 22") => {
                            refused += 1;
                            assert!(refused < 10 * FRAMES_PER_PROGRAM as u64);
                            continue;
                        }
                        Err(e) => panic!("{prog}: frame {f:02x?}: {e:#}"),
                    };
                    assert!(
                        valid.contains(&v),
                        "{prog}: frame {ran} {f:02x?} got verdict {v}"
                    );
                    *verdicts.entry(v).or_insert(0u64) += 1;
                    ran += 1;
                }
                Ok(())
            })
            .unwrap();
        eprintln!("{prog}: {refused} frames refused by the kernel before the program ran");
        eprintln!("{prog}: verdicts {verdicts:?}");
        assert!(
            verdicts.len() >= 2,
            "the mutations exercise more than one path: {verdicts:?}"
        );
    }
    assert_eq!(
        bpfmaps::control_maps_snapshot(&mut p),
        before,
        "control-plane maps untouched"
    );
    let c = p.counters().unwrap();
    assert_eq!(c["from_container.packets"], FRAMES_PER_PROGRAM as u64);
    assert_eq!(c["from_world.packets"], FRAMES_PER_PROGRAM as u64);
}
