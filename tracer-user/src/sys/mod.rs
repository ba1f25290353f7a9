//! Kernel-facing: the embedded objects and their loader, the clock they stamp with, pins and maps
//! (with the bpf(2) calls aya lacks), namespaces, privileges and signals. Nothing here knows about
//! verdicts or output.

pub mod bpf;
pub mod clock;
pub mod loader;
pub mod maps;
pub mod netns;
pub mod objects;
pub mod pins;
pub mod privileges;
pub mod signals;
