//! Loading the kernel programs' object ([`EBPF_OBJECT`]): the one place that sets up aya's
//! loader, for `flagtrace attach`, the integration tests and the benchmark alike, so that what
//! they load is the same object with the same globals: the kernel clock calibrated for this
//! machine, the reset table's set mask matching its capacity, the watch switch.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    maps::ProgramArray,
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use tracer_common::{
    activity_capacity, reset_set_mask, WatchConfig, ACTIVITY_MAP, ACTIVITY_SLOTS_GLOBAL,
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS, FLOWS_MAP, HELLOS_MAP, HELLO_READERS, PINNED_MAPS,
    RESETS_MAP, RESET_SET_MASK_GLOBAL, WATCH_GLOBAL,
};

use super::{clock::KernelClock, objects::EBPF_OBJECT};
use crate::error::has_errno;

/// How to load the kernel programs: where their maps are pinned and how large the tables are.
/// The defaults are the object's own.
#[derive(Clone, Copy, Debug)]
pub struct TracerLoader<'p> {
    /// Every map of [`PINNED_MAPS`] is pinned here under its pin name; a pin already there is
    /// reused, with its contents.
    pub pin_dir: &'p Path,
    /// Capacity of the flow table.
    pub max_flows: u32,
    /// Capacity of the reset evidence table: a power of two
    /// ([`tracer_common::reset_capacity`]), as the programs mask instead of dividing.
    pub max_resets: u32,
    /// The watch switch as the programs start with it: a load writes it into the switch's map
    /// even when that map is a reused pin, so a restarted `attach` passes the one it found.
    pub watch: WatchConfig,
}

impl<'p> TracerLoader<'p> {
    pub fn new(pin_dir: &'p Path) -> TracerLoader<'p> {
        TracerLoader {
            pin_dir,
            max_flows: DEFAULT_MAX_FLOWS,
            max_resets: DEFAULT_MAX_RESETS,
            watch: WatchConfig::default(),
        }
    }

    /// Loads the object: its maps are created (or their pins reused), and the ClientHello
    /// readers the accounting tail-calls are loaded into the kernel and put in their program
    /// array; the accounting programs are not yet loaded.
    pub fn load(&self) -> anyhow::Result<Ebpf> {
        let mut ebpf = self.load_object()?;
        load_hello_readers(&mut ebpf).context("loading the ClientHello readers")?;
        Ok(ebpf)
    }

    fn load_object(&self) -> anyhow::Result<Ebpf> {
        let clock = KernelClock::calibrated()?;
        let mut loader = EbpfLoader::new();
        for (map, pin) in PINNED_MAPS {
            loader.map_pin_path(map, self.pin_dir.join(pin));
        }
        clock.configure(&mut loader);
        let reset_set_mask = reset_set_mask(self.max_resets);
        let activity_slots = activity_capacity(self.max_flows);
        loader
            .map_max_entries(FLOWS_MAP, self.max_flows)
            .map_max_entries(RESETS_MAP, self.max_resets)
            .map_max_entries(HELLOS_MAP, self.max_resets)
            .map_max_entries(ACTIVITY_MAP, activity_slots)
            .override_global(RESET_SET_MASK_GLOBAL, &reset_set_mask, true)
            .override_global(ACTIVITY_SLOTS_GLOBAL, &activity_slots, true)
            .override_global(WATCH_GLOBAL, &self.watch, true)
            .load(EBPF_OBJECT)
            .map_err(|error| {
                let error = anyhow::Error::new(error);
                if has_errno(&error, libc::ENOMEM) {
                    return error.context(format!(
                        "the kernel could not allocate the tables: --max-flows {} and \
                         --max-resets {} lock about {} MiB",
                        self.max_flows,
                        self.max_resets,
                        self.locked_bytes() >> 20
                    ));
                }
                error
            })
            .with_context(|| {
                format!(
                    "loading the kernel programs with their maps pinned in {}",
                    self.pin_dir.display()
                )
            })
    }

    /// About how much memory the tables lock: per flow its entry, bucket and activity slot,
    /// per reset-table entry the entry and a server name's LRU entry (BENCHMARKS.md).
    fn locked_bytes(&self) -> u64 {
        u64::from(self.max_flows) * 249 + u64::from(self.max_resets) * (352 + 168)
    }
}

/// Loads the ClientHello readers and puts each in its program array. The arrays keep them
/// while the object's maps are open: the kernel empties a program array once no process holds
/// it, so `ebpf` must live as long as the programs that tail-call into them.
fn load_hello_readers(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let [(ingress, ingress_array), (egress, egress_array)] = HELLO_READERS;
    let xdp: &mut Xdp = program_mut(ebpf, ingress)?;
    xdp.load().with_context(|| format!("loading {ingress}"))?;
    let ingress_fd = xdp.fd()?.try_clone()?;
    let tc: &mut SchedClassifier = program_mut(ebpf, egress)?;
    tc.load().with_context(|| format!("loading {egress}"))?;
    let egress_fd = tc.fd()?.try_clone()?;
    for (array, fd) in [(ingress_array, ingress_fd), (egress_array, egress_fd)] {
        let map = ebpf
            .map_mut(array)
            .with_context(|| format!("no map {array} in the object"))?;
        ProgramArray::try_from(map)?
            .set(0, &fd, 0)
            .with_context(|| format!("putting its reader in {array}"))?;
    }
    Ok(())
}

/// The program `name` of `ebpf`, as its type `P`.
pub fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the object"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}
