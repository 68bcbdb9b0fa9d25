//! The responder: one DNS message in, an answer, a forward or nothing
//! out. Pure (no I/O), so it can be tested and fuzzed in-process.
//! Messages are parsed and built with hickory-proto.
//!
//! - A for container names on the networks in scope (authoritative, TTL 0
//!   so changes are seen at once); AAAA and other types for those names:
//!   NOERROR with no records (the networks have no IPv6).
//! - PTR for container addresses; other addresses inside a network in
//!   scope are NXDOMAIN.
//! - `x.NETWORK` for a network in scope and unknown single labels:
//!   NXDOMAIN, not forwarded (as systemd-resolved does not send single
//!   labels to unicast DNS).
//! - everything else is forwarded to the container's `--dns` servers or
//!   the daemon's forwarders; on internal networks it is REFUSED.
//! - malformed messages: FORMERR when the header can be read, dropped
//!   otherwise; responses are never answered (no loops, no reflection).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, PTR},
    },
    serialize::binary::{BinDecodable, BinDecoder},
};

use super::records::{Lookup, Snapshot, lower};

/// TTL of local answers: 0, so a container that stops or moves is never
/// served from a cache.
pub const TTL: u32 = 0;
/// The EDNS payload size netd advertises (the DNS flag day value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Largest message over UDP without EDNS.
pub const UDP_PLAIN: u16 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query that needs an upstream resolver.
#[derive(Debug)]
pub struct Forward {
    /// The client's query (its id is replaced on the wire upstream).
    pub query: Message,
    pub upstreams: Vec<SocketAddr>,
    /// The answer when every upstream fails.
    pub servfail: Vec<u8>,
    /// Largest answer the client accepts (UDP).
    pub max_size: u16,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Vec<u8>),
    Forward(Box<Forward>),
    Drop,
}

/// Answers one message `buf` that `src` sent to the server on `gw`.
pub fn respond(
    snap: &Snapshot,
    gw: IpAddr,
    src: IpAddr,
    buf: &[u8],
    transport: Transport,
) -> Outcome {
    // The header alone first: a response is never answered, and a
    // message whose body does not parse gets FORMERR with its id.
    let Ok(header) = Header::read(&mut BinDecoder::new(buf)) else {
        return Outcome::Drop;
    };
    let meta = header.metadata;
    if meta.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    let req = match Message::from_vec(buf) {
        Ok(m) => m,
        Err(_) => {
            let mut m = Message::error_msg(meta.id, meta.op_code, ResponseCode::FormErr);
            m.metadata.recursion_desired = meta.recursion_desired;
            return reply(&m, UDP_PLAIN);
        }
    };
    let max_size = match transport {
        Transport::Tcp => u16::MAX,
        Transport::Udp => req
            .edns
            .as_ref()
            .map(|e| e.max_payload().clamp(UDP_PLAIN, 4096))
            .unwrap_or(UDP_PLAIN),
    };
    let mut resp = Message::response(meta.id, meta.op_code);
    resp.metadata.recursion_desired = meta.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = meta.checking_disabled;
    resp.add_queries(req.queries.iter().cloned());
    if let Some(e) = &req.edns {
        let mut out = Edns::new();
        out.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(out);
        if e.version() != 0 {
            // BADVERS (16) needs the extended rcode.
            resp.metadata.response_code = ResponseCode::BADVERS;
            return reply(&resp, max_size);
        }
    }
    let rcode = |mut m: Message, code: ResponseCode| {
        m.metadata.response_code = code;
        reply(&m, max_size)
    };
    if meta.op_code != OpCode::Query {
        return rcode(resp, ResponseCode::NotImp);
    }
    if req.queries.len() != 1 {
        return rcode(resp, ResponseCode::FormErr);
    }
    let q = &req.queries[0];
    // Only clients on the network whose gateway they asked.
    let Some(zone) = snap.zones.get(&gw) else {
        return rcode(resp, ResponseCode::Refused);
    };
    let on_network = match src {
        IpAddr::V4(a) => zone.subnet.is_some_and(|s| s.contains(a)),
        IpAddr::V6(a) => zone.subnet6.is_some_and(|s| s.contains(&a)),
    };
    if !on_network {
        return rcode(resp, ResponseCode::Refused);
    }
    if !matches!(q.query_class, DNSClass::IN | DNSClass::ANY) {
        return rcode(resp, ResponseCode::Refused);
    }
    let client = zone.clients.get(&src).map(|c| c.as_ref());
    let scope = snap.scope(gw, client);
    let Some(name) = name_key(&q.name) else {
        // A label netd could never have made (a dot or a control byte
        // inside it): not one of ours.
        return forward(snap, client, zone.internal, req, resp, max_size);
    };

    if q.query_type == RecordType::PTR
        && let Some(ip) = arpa_v4(&name)
            .map(IpAddr::V4)
            .or_else(|| arpa_v6(&name).map(IpAddr::V6))
    {
        match snap.reverse(&scope, ip) {
            Some(Some(target)) => {
                let Ok(target) = Name::from_labels(target.split('.').map(str::as_bytes)) else {
                    return rcode(resp, ResponseCode::ServFail);
                };
                let mut target = target;
                target.set_fqdn(true);
                resp.metadata.authoritative = true;
                resp.add_answer(Record::from_rdata(
                    q.name.clone(),
                    TTL,
                    RData::PTR(PTR(target)),
                ));
                return reply(&resp, max_size);
            }
            Some(None) => {
                resp.metadata.authoritative = true;
                return rcode(resp, ResponseCode::NXDomain);
            }
            None => return forward(snap, client, zone.internal, req, resp, max_size),
        }
    }

    match snap.lookup(&scope, client, &name) {
        Lookup::Found(ips) => {
            resp.metadata.authoritative = true;
            for ip in ips {
                let rdata = match ip {
                    IpAddr::V4(v4) if matches!(q.query_type, RecordType::A | RecordType::ANY) => {
                        RData::A(A(v4))
                    }
                    IpAddr::V6(v6)
                        if matches!(q.query_type, RecordType::AAAA | RecordType::ANY) =>
                    {
                        RData::AAAA(AAAA(v6))
                    }
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name.clone(), TTL, rdata));
            }
            // Other types of a known name: NOERROR, no records.
            reply(&resp, max_size)
        }
        Lookup::NoSuchName => {
            resp.metadata.authoritative = true;
            rcode(resp, ResponseCode::NXDomain)
        }
        Lookup::Elsewhere => forward(snap, client, zone.internal, req, resp, max_size),
    }
}

fn forward(
    snap: &Snapshot,
    client: Option<&super::records::Client>,
    internal: bool,
    req: Message,
    mut resp: Message,
    max_size: u16,
) -> Outcome {
    if internal {
        // An internal network has no way out: nothing is forwarded.
        resp.metadata.response_code = ResponseCode::Refused;
        return reply(&resp, max_size);
    }
    let upstreams = match client {
        Some(c) if !c.upstreams.is_empty() => c.upstreams.clone(),
        _ => snap.upstreams.clone(),
    };
    resp.metadata.response_code = ResponseCode::ServFail;
    let Outcome::Reply(servfail) = reply(&resp, max_size) else {
        return Outcome::Drop;
    };
    if upstreams.is_empty() {
        return Outcome::Reply(servfail);
    }
    Outcome::Forward(Box::new(Forward {
        query: req,
        upstreams,
        servfail,
        max_size,
    }))
}

/// Encodes `m`; when it does not fit `max` bytes, the truncated form
/// (header, question, OPT, TC set) so the client retries over TCP.
pub fn reply(m: &Message, max: u16) -> Outcome {
    match encode(m, max) {
        Some(b) => Outcome::Reply(b),
        None => Outcome::Drop,
    }
}

pub fn encode(m: &Message, max: u16) -> Option<Vec<u8>> {
    let b = m.to_vec().ok()?;
    if b.len() <= usize::from(max) {
        return Some(b);
    }
    let t = m.truncate().to_vec().ok()?;
    (t.len() <= usize::from(max)).then_some(t)
}

/// A query name as netd's tables key it: lower case, labels joined by
/// dots, no trailing dot. None when a label holds a dot or a byte that is
/// not printable ASCII (no container name can).
pub fn name_key(n: &Name) -> Option<String> {
    let mut s = String::new();
    for (i, l) in n.iter().enumerate() {
        if l.iter().any(|b| *b == b'.' || !b.is_ascii_graphic()) {
            return None;
        }
        if i > 0 {
            s.push('.');
        }
        s.push_str(&lower(std::str::from_utf8(l).ok()?));
    }
    Some(s)
}

/// `d.c.b.a.in-addr.arpa` -> a.b.c.d.
fn arpa_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut o = [0u8; 4];
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    for (i, p) in parts.iter().rev().enumerate() {
        if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        o[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(o))
}

/// `x.x....ip6.arpa` (32 nibbles, least significant first) -> the
/// address.
fn arpa_v6(name: &str) -> Option<std::net::Ipv6Addr> {
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for n in nibbles.iter().rev() {
        if n.len() != 1 {
            return None;
        }
        v = (v << 4) | u128::from(u8::from_str_radix(n, 16).ok()?);
    }
    Some(std::net::Ipv6Addr::from(v))
}

/// A query message (for tools and tests).
pub fn query(id: u16, name: &Name, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(e);
    }
    m
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use super::*;
    use crate::{
        dns::records::{Client, Zone},
        ipam::Cidr,
    };

    const GW: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const GW2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
    const WEB: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const WEB6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
    const DB: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
    const UP: &str = "198.18.0.1:53";

    fn snap() -> Snapshot {
        let client = Arc::new(Client {
            zones: vec![GW.into()],
            upstreams: vec![],
            links: HashMap::from([("kv".to_string(), vec![IpAddr::V4(DB)])]),
        });
        let mut z = Zone {
            network_id: "n1".into(),
            name: "mynet".into(),
            subnet: Some(Cidr::new(Ipv4Addr::new(10, 1, 0, 0), 24).unwrap()),
            ..Zone::default()
        };
        z.names
            .insert("web".into(), vec![IpAddr::V4(WEB), IpAddr::V6(WEB6)]);
        z.names.insert("db".into(), vec![IpAddr::V4(DB)]);
        z.names
            .insert("cache".into(), vec![IpAddr::V4(WEB), IpAddr::V4(DB)]);
        z.ptr.insert(IpAddr::V4(WEB), "web.mynet".into());
        z.ptr.insert(IpAddr::V6(WEB6), "web.mynet".into());
        z.subnet6 = Some("fd00:1::/64".parse().unwrap());
        z.clients.insert(WEB.into(), client.clone());
        z.clients.insert(DB.into(), Arc::new(Client::default()));
        let mut z2 = Zone {
            network_id: "n2".into(),
            name: "other".into(),
            subnet: Some(Cidr::new(Ipv4Addr::new(10, 2, 0, 0), 24).unwrap()),
            ..Zone::default()
        };
        z2.names.insert("lonely".into(), vec![IpAddr::V4(OTHER)]);
        z2.clients.insert(
            OTHER.into(),
            Arc::new(Client {
                zones: vec![GW2.into()],
                upstreams: vec!["192.0.2.53:53".parse().unwrap()],
                links: HashMap::new(),
            }),
        );
        Snapshot {
            zones: HashMap::from([(GW.into(), z), (GW2.into(), z2)]),
            upstreams: vec![UP.parse().unwrap()],
        }
    }

    fn ask(s: &Snapshot, gw: Ipv4Addr, src: Ipv4Addr, name: &str, t: RecordType) -> Outcome {
        let q = query(0x1234, &Name::from_ascii(name).unwrap(), t, true);
        respond(
            s,
            gw.into(),
            IpAddr::V4(src),
            &q.to_vec().unwrap(),
            Transport::Udp,
        )
    }

    fn answer(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            o => panic!("expected a reply, got {o:?}"),
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_aliases_and_network_suffix() {
        let s = snap();
        for n in ["db", "DB.", "db.mynet", "Db.MyNet."] {
            let m = answer(ask(&s, GW, WEB, n, RecordType::A));
            assert_eq!(m.response_code, ResponseCode::NoError, "{n}");
            assert!(m.authoritative);
            assert_eq!(m.id, 0x1234);
            assert_eq!(a_records(&m), vec![DB], "{n}");
            assert!(m.edns.is_some(), "EDNS answered with EDNS");
        }
        assert_eq!(
            a_records(&answer(ask(&s, GW, WEB, "cache", RecordType::A))),
            vec![WEB, DB]
        );
        // A link alias is seen by the linking container only.
        assert_eq!(
            a_records(&answer(ask(&s, GW, WEB, "kv", RecordType::A))),
            vec![DB]
        );
        let m = answer(ask(&s, GW, DB, "kv", RecordType::A));
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        // AAAA of a name with an IPv6 address; its PTR under ip6.arpa.
        let m = answer(ask(&s, GW, WEB, "web", RecordType::AAAA));
        let aaaa: Vec<_> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(aaaa, vec![WEB6]);
        assert!(a_records(&m).is_empty(), "AAAA answers have no A");
        let ptr6 = crate::ipam6::ptr_name(WEB6);
        let m = answer(ask(&s, GW, DB, ptr6.trim_end_matches('.'), RecordType::PTR));
        assert_eq!(m.answers.len(), 1, "{m:?}");
        let other6 = crate::ipam6::ptr_name("fd00:1::99".parse().unwrap());
        assert_eq!(
            answer(ask(
                &s,
                GW,
                DB,
                other6.trim_end_matches('.'),
                RecordType::PTR
            ))
            .response_code,
            ResponseCode::NXDomain
        );
        // AAAA of a known name: no records, no error.
        let m = answer(ask(&s, GW, WEB, "db", RecordType::AAAA));
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // Unknown names under the network, unknown single labels.
        for n in ["nope.mynet", "nope"] {
            assert_eq!(
                answer(ask(&s, GW, WEB, n, RecordType::A)).response_code,
                ResponseCode::NXDomain,
                "{n}"
            );
        }
    }

    #[test]
    fn scope_is_the_network_asked() {
        let s = snap();
        // lonely is on "other": web (only on mynet) cannot see it, nor
        // can lonely see mynet's names through its own gateway.
        assert_eq!(
            answer(ask(&s, GW, WEB, "lonely", RecordType::A)).response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            answer(ask(&s, GW2, OTHER, "web", RecordType::A)).response_code,
            ResponseCode::NXDomain
        );
        // A client from another subnet asking mynet's gateway: refused.
        assert_eq!(
            answer(ask(&s, GW, OTHER, "web", RecordType::A)).response_code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn reverse_lookups() {
        let s = snap();
        let m = answer(ask(&s, GW, DB, "2.0.1.10.in-addr.arpa", RecordType::PTR));
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.mynet."),
            r => panic!("{r:?}"),
        }
        let m = answer(ask(&s, GW, DB, "9.0.1.10.in-addr.arpa", RecordType::PTR));
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            ask(&s, GW, DB, "1.1.1.1.in-addr.arpa", RecordType::PTR),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn forwards_to_the_right_upstreams() {
        let s = snap();
        match ask(&s, GW, WEB, "example.com", RecordType::A) {
            Outcome::Forward(f) => {
                assert_eq!(f.upstreams, vec![UP.parse().unwrap()]);
                let sf = Message::from_vec(&f.servfail).unwrap();
                assert_eq!(sf.response_code, ResponseCode::ServFail);
                assert_eq!(sf.id, 0x1234);
            }
            o => panic!("{o:?}"),
        }
        match ask(&s, GW2, OTHER, "example.com", RecordType::A) {
            Outcome::Forward(f) => {
                assert_eq!(f.upstreams, vec!["192.0.2.53:53".parse().unwrap()])
            }
            o => panic!("{o:?}"),
        }
        let mut s = snap();
        s.zones.get_mut(&IpAddr::V4(GW)).unwrap().internal = true;
        assert_eq!(
            answer(ask(&s, GW, WEB, "example.com", RecordType::A)).response_code,
            ResponseCode::Refused
        );
        let mut s = snap();
        s.upstreams.clear();
        assert_eq!(
            answer(ask(&s, GW, WEB, "example.com", RecordType::A)).response_code,
            ResponseCode::ServFail
        );
    }

    #[test]
    fn malformed_and_odd_messages() {
        let s = snap();
        let src = IpAddr::V4(WEB);
        let r = |b: &[u8]| respond(&s, GW.into(), src, b, Transport::Udp);
        assert!(matches!(r(&[]), Outcome::Drop));
        assert!(matches!(r(&[1, 2, 3]), Outcome::Drop));
        // A header announcing a question that is not there.
        let m = answer(r(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
        assert_eq!(m.response_code, ResponseCode::FormErr);
        assert_eq!(m.id, 0xabcd);
        // A response is never answered.
        let mut q = query(7, &Name::from_ascii("web").unwrap(), RecordType::A, false);
        q.metadata.message_type = MessageType::Response;
        assert!(matches!(r(&q.to_vec().unwrap()), Outcome::Drop));
        // Two questions, no question, another opcode.
        let mut q = query(7, &Name::from_ascii("web").unwrap(), RecordType::A, false);
        q.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
        assert_eq!(
            answer(r(&q.to_vec().unwrap())).response_code,
            ResponseCode::FormErr
        );
        let q = Message::new(8, MessageType::Query, OpCode::Query);
        assert_eq!(
            answer(r(&q.to_vec().unwrap())).response_code,
            ResponseCode::FormErr
        );
        let mut q = query(9, &Name::from_ascii("web").unwrap(), RecordType::A, false);
        q.metadata.op_code = OpCode::Status;
        assert_eq!(
            answer(r(&q.to_vec().unwrap())).response_code,
            ResponseCode::NotImp
        );
        // A compression pointer to itself.
        let mut b = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(answer(r(&b)).response_code, ResponseCode::FormErr);
        b[13] = 200;
        assert_eq!(answer(r(&b)).response_code, ResponseCode::FormErr);
    }

    #[test]
    fn big_answers_are_truncated_over_udp() {
        let mut s = snap();
        let z = s.zones.get_mut(&IpAddr::V4(GW)).unwrap();
        z.names.insert(
            "many".into(),
            (2..200)
                .map(|i| IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)))
                .collect(),
        );
        let q = query(1, &Name::from_ascii("many").unwrap(), RecordType::A, false);
        let b = q.to_vec().unwrap();
        let m = answer(respond(&s, GW.into(), IpAddr::V4(WEB), &b, Transport::Udp));
        assert!(m.truncation && m.answers.is_empty());
        let m = answer(respond(&s, GW.into(), IpAddr::V4(WEB), &b, Transport::Tcp));
        assert!(!m.truncation);
        assert_eq!(m.answers.len(), 198);
    }

    /// In-process fuzz: random and mutated messages never panic, every
    /// answer parses and carries the query's id, and the responder still
    /// answers correctly afterwards.
    #[test]
    fn fuzz_in_process() {
        let s = snap();
        let mut rng = crate::dns::tools::Rng::new(0x5eed);
        let seeds = crate::dns::tools::seed_queries();
        for i in 0..200_000u32 {
            let b = crate::dns::tools::fuzz_case(&mut rng, &seeds, i);
            let src = IpAddr::V4(if i % 3 == 0 { OTHER } else { WEB });
            let t = if i % 5 == 0 {
                Transport::Tcp
            } else {
                Transport::Udp
            };
            match respond(&s, GW.into(), src, &b, t) {
                Outcome::Reply(r) => {
                    assert!(r.len() >= 12);
                    assert_eq!(r[..2], b[..2], "answer carries the query id");
                    if t == Transport::Udp {
                        assert!(r.len() <= 4096);
                    }
                }
                Outcome::Forward(f) => assert!(!f.servfail.is_empty()),
                Outcome::Drop => {}
            }
        }
        assert_eq!(
            a_records(&answer(ask(&s, GW, WEB, "db", RecordType::A))),
            vec![DB]
        );
    }
}
