//! Kernel-facing: the embedded objects and their loader, the clock they stamp with, pins and maps,
//! namespaces, privileges and signals. Nothing here knows about verdicts or output.

pub mod clock;
pub mod loader;
pub mod maps;
pub mod netns;
pub mod objects;
pub mod pins;
pub mod privileges;
pub mod signals;
