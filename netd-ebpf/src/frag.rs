//! IPv4 fragments. Only the first fragment of a datagram carries its L4
//! header; the later ones are translated (or dropped) with the flow of
//! their datagram, found through the ports the first fragment left here
//! (keyed by addresses, protocol and IP id, as Cilium does). A later
//! fragment whose first one was not seen cannot be tied to a flow: it is
//! never handed out untranslated (see the callers).
use netd_common::{FragKey, FragPorts};

use crate::{maps::NETD_FRAG, parse::Ipv4, parse::L4};

#[inline(always)]
fn key(dir: u8, ip: &Ipv4) -> FragKey {
    FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.proto,
        dir,
    }
}

/// Remembers the ports of a first fragment.
#[inline(always)]
pub fn remember(dir: u8, ip: &Ipv4, l4: &L4) {
    let ports = FragPorts {
        sport: l4.sport,
        dport: l4.dport,
    };
    let _ = NETD_FRAG.insert(&key(dir, ip), &ports, 0);
}

/// The datagram of a later fragment, as an L4 without a header.
#[inline(always)]
pub fn lookup(dir: u8, ip: &Ipv4) -> Option<L4> {
    // SAFETY: copied out of a valid map value.
    let p = unsafe { NETD_FRAG.get(&key(dir, ip)) }.copied()?;
    Some(L4::fragment(p.sport, p.dport))
}
