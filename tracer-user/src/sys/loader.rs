//! Loading the kernel programs' object ([`EBPF_OBJECT`]): the one place that sets up aya's
//! loader, for `flagtrace attach`, the integration tests and the benchmark alike, so that what
//! they load is the same object with the same globals: the kernel clock calibrated for this
//! machine, the reset table's set mask matching its capacity, the watch switch.

use std::path::Path;

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use tracer_common::{
    activity_capacity, reset_set_mask, WatchConfig, ACTIVITY_MAP, ACTIVITY_SLOTS_GLOBAL,
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS, FLOWS_MAP, PINNED_MAPS, RESETS_MAP,
    RESET_SET_MASK_GLOBAL, WATCH_GLOBAL,
};

use super::{clock::KernelClock, objects::EBPF_OBJECT};

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

    /// Loads the object: its maps are created (or their pins reused), its programs are not yet
    /// loaded into the kernel.
    pub fn load(&self) -> anyhow::Result<Ebpf> {
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
            .map_max_entries(ACTIVITY_MAP, activity_slots)
            .override_global(RESET_SET_MASK_GLOBAL, &reset_set_mask, true)
            .override_global(ACTIVITY_SLOTS_GLOBAL, &activity_slots, true)
            .override_global(WATCH_GLOBAL, &self.watch, true)
            .load(EBPF_OBJECT)
            .with_context(|| {
                format!(
                    "loading the kernel programs with their maps pinned in {}",
                    self.pin_dir.display()
                )
            })
    }
}
