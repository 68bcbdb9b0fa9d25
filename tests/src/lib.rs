//! The end-to-end test harness. The namespace topology lives in
//! `netd::testbed` (netd's demo and benchmarks reuse it); this crate adds
//! packet crafting for BPF_PROG_TEST_RUN tests.
pub use netd::testbed::*;

pub mod bpfmaps;
pub mod daemon;
pub mod packet;
pub mod packet6;
