//! netd: container networking with an eBPF datapath.
pub mod bpf;
pub mod demo;
pub mod link;
pub mod logging;
pub mod netns;
pub mod testbed;
pub mod tool;
