#![no_std]
//! Empty on purpose: the kernel programs are the `tracer-ebpf` binary (src/main.rs). This library
//! target exists so tracer-user can name the crate as a build dependency and be rebuilt when it
//! changes.
