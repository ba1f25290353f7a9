//! Kernel timestamps to wall-clock time. The kernel stamps flows with CLOCK_MONOTONIC_COARSE
//! (`bpf_ktime_get_coarse_ns`: a few nanoseconds where the precise clocks cost tens, at one
//! tick's resolution), which has no epoch; a snapshot of CLOCK_MONOTONIC and CLOCK_REALTIME
//! taken together converts one into the other. The coarse clock is the precise one as of the
//! last tick, so a converted time is at most a tick early.

use std::{io, time::Duration};

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

    /// The kernel (monotonic) timestamp `ago` before the snapshot (0 if that is before boot).
    pub fn monotonic_before(&self, ago: Duration) -> u64 {
        let before = self.monotonic_ns - ago.as_nanos() as i128;
        before.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A kernel (monotonic) timestamp as RFC 3339 UTC.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        format_rfc3339_utc(self.unix_ns(monotonic_ns))
    }
}

fn read_clock(clock: libc::clockid_t) -> io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i128::from(ts.tv_sec) * NANOS_PER_SECOND + i128::from(ts.tv_nsec))
}

/// RFC 3339 in UTC with microseconds, e.g. `2023-11-14T22:13:20.000001Z`.
pub fn format_rfc3339_utc(unix_ns: i128) -> String {
    let seconds = unix_ns.div_euclid(NANOS_PER_SECOND);
    let micros = unix_ns.rem_euclid(NANOS_PER_SECOND) / 1_000;
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
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
fn civil_from_days(days: i128) -> (i128, i128, i128) {
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
    let year = year_of_era + era * 400 + i128::from(month <= 2);
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
