//! The watch switch of each attachment: its kernel programs send events only while the lease in
//! it lies in the future. We set it [`LEASE`] ahead and renew it every second, so that a watcher
//! killed by SIGKILL stops the events by itself; giving it back (lease 0) stops them at once.

use std::time::Duration;

use anyhow::{bail, Context as _};
use aya::maps::{Array, MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::WatchConfig;

use super::{clock, kernel_now};
use crate::{
    source::live::FlowJudge,
    sys::{maps::PinnedMaps, pins::Attachment},
};

/// How far ahead of now each renewal sets the lease: a watcher that stops renewing (killed,
/// stuck) stops the events this long after its last renewal.
const LEASE: Duration = Duration::from_secs(3);

/// What the kernel sends at most, written with each lease: per CPU, `per_sec` events a second
/// with bursts of `burst`.
#[derive(Clone, Copy)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// One watched attachment. Dropping it gives its lease back.
pub struct Watched {
    pub attachment: Attachment,
    pub maps: PinnedMaps,
    /// Judges its flows one at a time.
    pub judge: FlowJudge,
    switch: Array<MapData, WatchConfig>,
    /// Its events, on the runtime that waits for them.
    pub events: AsyncFd<RingBuf<MapData>>,
    /// The attachment's `events_dropped` when we started, and when we last reported it.
    pub dropped_at_start: u64,
    pub dropped_reported: u64,
    /// We hold its lease: ours to give back.
    leased: bool,
}

impl Watched {
    /// An attachment to watch, its lease not taken yet; `events_dropped` is its count now.
    pub fn new(
        attachment: Attachment,
        maps: PinnedMaps,
        judge: FlowJudge,
        switch: Array<MapData, WatchConfig>,
        events: AsyncFd<RingBuf<MapData>>,
        events_dropped: u64,
    ) -> Watched {
        Watched {
            attachment,
            maps,
            judge,
            switch,
            events,
            dropped_at_start: events_dropped,
            dropped_reported: events_dropped,
            leased: false,
        }
    }

    fn set_switch(&mut self, config: WatchConfig) -> anyhow::Result<()> {
        self.switch
            .set(0, config, 0)
            .with_context(|| format!("writing the watch switch of {}", self.attachment))
    }

    /// Lease 0: the kernel stops sending events at once.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if self.leased {
            self.set_switch(WatchConfig::default())?;
            self.leased = false;
        }
        Ok(())
    }
}

impl Drop for Watched {
    /// On an error's way out; `finish` releases and reports on the normal one.
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            log::warn!("{error:#}; its events stop when the lease runs out");
        }
    }
}

/// Takes every attachment's lease, unless another watcher holds one.
pub fn take(all: &mut [Watched], limit: RateLimit) -> anyhow::Result<()> {
    let now = kernel_now(&clock()?);
    for watched in all.iter() {
        let current = watched
            .switch
            .get(&0, 0)
            .with_context(|| format!("reading the watch switch of {}", watched.attachment))?;
        if current.lease_until_ns > now {
            bail!(
                "{} is already watched by another `flagtrace watch` (its lease runs {:.1} s \
                 more): one watcher per attachment, since its events have one reader",
                watched.attachment,
                (current.lease_until_ns - now) as f64 / 1e9
            );
        }
    }
    renew(all, limit)
}

/// Sets every attachment's lease [`LEASE`] ahead of now.
pub fn renew(all: &mut [Watched], limit: RateLimit) -> anyhow::Result<()> {
    let config = WatchConfig {
        lease_until_ns: kernel_now(&clock()?) + LEASE.as_nanos() as u64,
        rate_per_sec: limit.per_sec,
        burst: limit.burst,
    };
    for watched in all {
        watched.set_switch(config)?;
        watched.leased = true;
    }
    Ok(())
}
