//! Name resolution for containers, Docker's way.
//!
//! - On user-defined networks an embedded DNS server, owned by the daemon,
//!   listens on the network's gateway address (UDP and TCP port 53) and
//!   answers the names of the containers attached to it (name, hostname,
//!   short id, `--network-alias`, `NAME.NETWORK`, PTR); the rest goes to
//!   upstream resolvers. Containers' resolv.conf points at it.
//! - On the default bridge there is no embedded DNS: resolv.conf lists the
//!   upstream resolvers and `--link` adds /etc/hosts entries.
//!
//! [`records`] holds the names (a snapshot rebuilt after every change),
//! [`responder`] answers a message (pure, fuzzed in-process), [`server`]
//! owns the sockets and forwards, [`files`] renders resolv.conf and
//! /etc/hosts, [`tools`] has the query client, test upstream, benchmark
//! and fuzzer behind `netd tool dns-*`.
pub mod files;
pub mod records;
pub mod responder;
pub mod server;
pub mod tools;
