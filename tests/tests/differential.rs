//! The differential test (flagtrace_tests::differential) on the kernel programs, through
//! BPF_PROG_TEST_RUN: every run must also pass the frame unchanged, and the timestamps lie in
//! the kernel-clock window around it.

use flagtrace_tests::{differential, tracer::LoadedTracer};

/// Far above a batch's flows, so the LRU never evicts (even with per-CPU free lists).
const MAX_FLOWS: u32 = 65_536;

#[test]
fn kernel_agrees_with_etherparse_on_random_and_mutated_frames() {
    differential::agrees_with_etherparse(|| LoadedTracer::load(MAX_FLOWS));
}
