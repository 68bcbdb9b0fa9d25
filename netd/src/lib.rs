//! netd: container networking with an eBPF datapath.
pub mod api;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod dns;
pub mod ipam;
pub mod link;
pub mod logging;
pub mod model;
pub mod netns;
pub mod portspec;
pub mod state;
pub mod testbed;
pub mod tool;
