//! netd: container networking with an eBPF datapath.
pub mod bpf;
pub mod demo;
pub mod link;
pub mod logging;
pub mod netns;
pub mod testbed;
pub mod tool;
pub mod api;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod ipam;
pub mod model;
pub mod portspec;
pub mod state;
pub mod cli;
