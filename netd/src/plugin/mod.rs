//! The protocols through which container engines hand their networking to
//! netd: [`docker`] (libnetwork's remote network driver). Each module
//! holds the wire types, their validation into netd's own specs and the
//! dispatch of calls; the daemon's side is in `daemon::docker`.
pub mod docker;
