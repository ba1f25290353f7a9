//! The differential test (flagtrace_tests::differential) on the kernel programs' accounting run
//! on the host, as `flagtrace pcap` runs it: no root, no kernel. Its clock is the test's, so
//! every timestamp is checked exactly, and RSTs land on both sides of the back-to-back limit.

use flagtrace_tests::{differential, host::HostTracer};

#[test]
fn host_tables_agree_with_etherparse_on_random_and_mutated_frames() {
    differential::agrees_with_etherparse(|| Ok(HostTracer::default()));
}
