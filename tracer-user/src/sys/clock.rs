//! The kernel clock, and its timestamps as wall-clock time.
//!
//! The kernel programs stamp flows with CLOCK_MONOTONIC_COARSE at one tick's resolution, computed
//! as `jiffies × tick + offset` from `bpf_jiffies64`: the verifier inlines that helper into one
//! load, where `bpf_ktime_get_coarse_ns` is a call and the precise clocks cost tens of
//! nanoseconds. [`KernelClock`] measures the tick and the offset before the programs load.
//!
//! The clock has no epoch; a snapshot of CLOCK_MONOTONIC and CLOCK_REALTIME taken together
//! converts one into the other. A stamp is the time of the last tick (now and then of the one
//! before), so a converted time is at most a tick or two early.

use std::{io, sync::OnceLock, thread, time::Duration};

use anyhow::{bail, Context as _};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    EbpfLoader,
};
use tracer_common::{
    ClockSample, CLOCK_OFFSET_NS_GLOBAL, CLOCK_PROBE_PROGRAM, CLOCK_TICK_NS_GLOBAL,
};

use super::objects::CLOCK_PROBE_OBJECT;

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i128 = 86_400;

/// CLOCK_REALTIME and CLOCK_MONOTONIC read back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSnapshot {
    realtime_ns: i128,
    monotonic_ns: i128,
}

impl ClockSnapshot {
    pub fn now() -> io::Result<ClockSnapshot> {
        Ok(ClockSnapshot {
            monotonic_ns: read_clock(libc::CLOCK_MONOTONIC)?,
            realtime_ns: read_clock(libc::CLOCK_REALTIME)?,
        })
    }

    /// The snapshot for times already on the Unix clock, such as a capture file's
    /// (`flagtrace pcap`): it converts every time to itself.
    pub fn unix() -> ClockSnapshot {
        ClockSnapshot {
            realtime_ns: 0,
            monotonic_ns: 0,
        }
    }

    /// A snapshot with chosen readings, for tests.
    #[cfg(test)]
    pub fn new(realtime_ns: i128, monotonic_ns: i128) -> ClockSnapshot {
        ClockSnapshot {
            realtime_ns,
            monotonic_ns,
        }
    }

    /// Nanoseconds since the Unix epoch of a kernel (monotonic) timestamp: now, minus how long ago it
    /// was. A timestamp after the snapshot (a packet counted while the maps were read) lands
    /// slightly after "now", which is right.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        self.realtime_ns - (self.monotonic_ns - i128::from(monotonic_ns))
    }

    /// [`ClockSnapshot::unix_ns`] as flow records keep it: 0 for a time before the epoch, which
    /// no clock of this century gives.
    pub fn unix_ns_u64(&self, monotonic_ns: u64) -> u64 {
        self.unix_ns(monotonic_ns).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The kernel (monotonic) timestamp `ago` before the snapshot (0 if that is before boot).
    pub fn monotonic_before(&self, ago: Duration) -> u64 {
        let before = self.monotonic_ns - ago.as_nanos() as i128;
        before.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The Unix time `ago` before the snapshot (0 if that is before the epoch).
    pub fn unix_before(&self, ago: Duration) -> u64 {
        let before = self.realtime_ns - ago.as_nanos() as i128;
        before.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A kernel (monotonic) timestamp as RFC 3339 UTC.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        format_rfc3339_utc(self.unix_ns(monotonic_ns))
    }
}

/// How the kernel programs turn jiffies into CLOCK_MONOTONIC_COARSE nanoseconds:
/// `jiffies × tick_ns + offset_ns`, in wrapping arithmetic (jiffies start just below 2^32, so
/// the offset is "negative").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    pub tick_ns: u64,
    pub offset_ns: u64,
}

/// Probe runs the calibration takes, spread over a few ticks.
const CLOCK_SAMPLES: usize = 16;
/// How many ticks the samples span.
const CALIBRATION_TICKS: u32 = 3;

impl KernelClock {
    /// This machine's, measured once per process.
    pub fn calibrated() -> anyhow::Result<KernelClock> {
        static CLOCK: OnceLock<KernelClock> = OnceLock::new();
        if let Some(clock) = CLOCK.get() {
            return Ok(*clock);
        }
        let clock = KernelClock::measure().context("calibrating the kernel clock")?;
        Ok(*CLOCK.get_or_init(|| clock))
    }

    /// The tick is the coarse clock's resolution, which Linux reports as TICK_NSEC: jiffies
    /// advance once per TICK_NSEC of CLOCK_MONOTONIC. The offset comes from readings of both
    /// clocks by the probe program.
    fn measure() -> anyhow::Result<KernelClock> {
        let tick_ns = resolution_ns(libc::CLOCK_MONOTONIC_COARSE)
            .context("reading the resolution of CLOCK_MONOTONIC_COARSE")?;
        let mut ebpf = EbpfLoader::new()
            .load(CLOCK_PROBE_OBJECT)
            .context("loading the clock probe")?;
        let probe: &mut Xdp = ebpf
            .program_mut(CLOCK_PROBE_PROGRAM)
            .with_context(|| format!("no program {CLOCK_PROBE_PROGRAM} in the clock probe"))?
            .try_into()?;
        probe
            .load()
            .with_context(|| format!("loading {CLOCK_PROBE_PROGRAM}"))?;
        let pause = Duration::from_nanos(tick_ns) * CALIBRATION_TICKS / CLOCK_SAMPLES as u32;
        let mut samples = Vec::with_capacity(CLOCK_SAMPLES);
        for _ in 0..CLOCK_SAMPLES {
            samples.push(sample(probe)?);
            thread::sleep(pause);
        }
        KernelClock::from_samples(tick_ns, &samples)
    }

    /// The clock that fits readings taken over a few ticks. Jiffies and the coarse clock step at
    /// the same ticks, but not always in the same order, so a reading can find them a tick
    /// apart (about 1 % of them on the development machine): the median of the offsets ignores
    /// such readings.
    pub fn from_samples(tick_ns: u64, samples: &[ClockSample]) -> anyhow::Result<KernelClock> {
        let Some(first) = samples.first() else {
            bail!("no clock readings");
        };
        if tick_ns == 0 {
            bail!("a tick of 0 ns");
        }
        let offset = |sample: &ClockSample| {
            sample
                .coarse_ns
                .wrapping_sub(sample.jiffies.wrapping_mul(tick_ns))
        };
        // Offsets as distances from the first, so that sorting does not trip over wrapping.
        let mut distances: Vec<i64> = samples
            .iter()
            .map(|sample| offset(sample).wrapping_sub(offset(first)) as i64)
            .collect();
        distances.sort_unstable();
        let median = distances[distances.len() / 2];
        let agreeing = distances
            .iter()
            .filter(|distance| distance.abs_diff(median) < tick_ns)
            .count();
        if agreeing * 2 <= distances.len() {
            bail!(
                "jiffies and CLOCK_MONOTONIC_COARSE disagree (offsets from the first reading: \
                 {distances:?} ns, tick {tick_ns} ns)"
            );
        }
        Ok(KernelClock {
            tick_ns,
            offset_ns: offset(first).wrapping_add(median as u64),
        })
    }

    /// Sets the kernel programs' clock globals in `loader`.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global(CLOCK_TICK_NS_GLOBAL, &self.tick_ns, true)
            .override_global(CLOCK_OFFSET_NS_GLOBAL, &self.offset_ns, true);
    }

    /// The time the kernel programs stamp at `jiffies`.
    pub fn ns(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.tick_ns)
            .wrapping_add(self.offset_ns)
    }
}

/// One run of the clock probe.
fn sample(probe: &Xdp) -> anyhow::Result<ClockSample> {
    // BPF_PROG_TEST_RUN wants at least an Ethernet header's worth of packet.
    let packet = [0u8; 64];
    let mut out = [0u8; 64];
    probe
        .test_run(TestRunOptions {
            data_in: Some(&packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .with_context(|| format!("running {CLOCK_PROBE_PROGRAM}"))?;
    // SAFETY: `out` holds more than a ClockSample, which is plain data.
    Ok(unsafe { std::ptr::read_unaligned(out.as_ptr().cast()) })
}

/// The reading of `clock`, in nanoseconds.
fn read_clock(clock: libc::clockid_t) -> io::Result<i128> {
    timespec_ns(libc::clock_gettime, clock)
}

/// The resolution of `clock`, in nanoseconds.
fn resolution_ns(clock: libc::clockid_t) -> io::Result<u64> {
    Ok(timespec_ns(libc::clock_getres, clock)? as u64)
}

/// The timespec `call` (clock_gettime or clock_getres) gives for `clock`, in nanoseconds.
fn timespec_ns(
    call: unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int,
    clock: libc::clockid_t,
) -> io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    if unsafe { call(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i128::from(ts.tv_sec) * NANOS_PER_SECOND + i128::from(ts.tv_nsec))
}

/// RFC 3339 in UTC with microseconds, e.g. `2023-11-14T22:13:20.000001Z`. Days and times in
/// i64 (a time beyond its range is shown at its end): i128 division is a library call, and this
/// runs for every time of every flow printed.
pub fn format_rfc3339_utc(unix_ns: i128) -> String {
    let seconds = unix_ns.div_euclid(NANOS_PER_SECOND);
    let micros = unix_ns.rem_euclid(NANOS_PER_SECOND) / 1_000;
    let seconds = i64::try_from(seconds).unwrap_or(if seconds < 0 { i64::MIN } else { i64::MAX });
    let days = seconds.div_euclid(SECONDS_PER_DAY as i64);
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY as i64);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01. Howard Hinnant's
/// `civil_from_days`: shift to eras of 400 years starting on March 1st, where leap days fall at
/// the end of the year.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i128 = NANOS_PER_SECOND;

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1_700_000_000 * SECOND, "2023-11-14T22:13:20.000000Z"),
            (951_782_400 * SECOND, "2000-02-29T00:00:00.000000Z"),
            (
                951_868_799 * SECOND + 999_999_999,
                "2000-02-29T23:59:59.999999Z",
            ),
            (1_709_251_199 * SECOND, "2024-02-29T23:59:59.000000Z"),
            (4_107_542_400 * SECOND, "2100-03-01T00:00:00.000000Z"),
            (-SECOND / 2, "1969-12-31T23:59:59.500000Z"),
        ];
        for (unix_ns, expected) in cases {
            assert_eq!(format_rfc3339_utc(unix_ns), expected, "{unix_ns}");
        }
    }

    #[test]
    fn monotonic_converts_by_age() {
        let snapshot = ClockSnapshot::new(1_700_000_000 * SECOND, 5_000 * SECOND);
        // Seen 3.25 s before the snapshot.
        let seen: u64 = 4_996_750_000_000;
        assert_eq!(snapshot.unix_ns(seen), 1_699_999_996_750_000_000);
        assert_eq!(snapshot.rfc3339(seen), "2023-11-14T22:13:16.750000Z");
        // Seen just after the snapshot.
        assert_eq!(
            snapshot.unix_ns(5_000 * SECOND as u64 + 7),
            1_700_000_000 * SECOND + 7
        );
    }

    #[test]
    fn monotonic_before_stops_at_boot() {
        let snapshot = ClockSnapshot::new(1_700_000_000 * SECOND, 5_000 * SECOND);
        assert_eq!(
            snapshot.monotonic_before(Duration::from_secs(300)),
            4_700 * SECOND as u64
        );
        assert_eq!(snapshot.monotonic_before(Duration::from_secs(86_400)), 0);
    }

    /// A reading `tick_late_ns` after a tick boundary on the jiffies grid of `offset_ns`.
    fn reading(jiffies: u64, offset_ns: u64, tick_late_ns: u64) -> ClockSample {
        ClockSample {
            jiffies,
            coarse_ns: jiffies
                .wrapping_mul(TICK)
                .wrapping_add(offset_ns)
                .wrapping_add(tick_late_ns),
        }
    }

    const TICK: u64 = 4_000_000;

    #[test]
    fn clock_from_readings_takes_the_median_offset() {
        // Jiffies start just below 2^32: the offset is "negative" and wraps.
        let offset = 1_000_000_000u64.wrapping_sub(0xfffe_d000u64.wrapping_mul(TICK));
        let readings = [
            reading(0xfffe_d000 + 5, offset, 3_000),
            reading(0xfffe_d000 + 6, offset, 1_000),
            // Between the tick's update of jiffies and of the coarse clock: a tick off.
            reading(0xfffe_d000 + 8, offset.wrapping_sub(TICK), 2_000),
            reading(0xfffe_d000 + 7, offset, 2_000),
        ];
        let clock = KernelClock::from_samples(TICK, &readings).unwrap();
        assert_eq!(clock.tick_ns, TICK);
        assert_eq!(clock.offset_ns, offset.wrapping_add(2_000));
        // What the kernel programs compute, at a later tick.
        assert_eq!(
            clock.ns(0xfffe_d000 + 1_000),
            1_000_000_000 + 1_000 * TICK + 2_000
        );
    }

    #[test]
    fn clock_readings_that_disagree_are_refused() {
        let readings = [
            reading(10, 0, 0),
            reading(11, 5 * TICK, 0),
            reading(12, 9 * TICK, 0),
        ];
        let error = KernelClock::from_samples(TICK, &readings).unwrap_err();
        assert!(error.to_string().contains("disagree"), "{error}");
        assert!(KernelClock::from_samples(TICK, &[]).is_err());
    }

    #[test]
    fn snapshot_of_the_real_clocks_is_plausible() {
        let snapshot = ClockSnapshot::now().unwrap();
        let monotonic_now = read_clock(libc::CLOCK_MONOTONIC).unwrap();
        let unix_now = read_clock(libc::CLOCK_REALTIME).unwrap();
        let converted = snapshot.unix_ns(monotonic_now as u64);
        assert!(
            (converted - unix_now).abs() < SECOND,
            "{converted} vs {unix_now}"
        );
    }
}
