//! The `flagtrace` command line.

use std::{path::PathBuf, time::Duration};

use crate::pins::DEFAULT_PIN_ROOT;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Count SYN, SYN/ACK, FIN and RST per TCP flow in the kernel, to answer "who reset this
/// connection?".
#[derive(Debug, Parser)]
#[command(name = "flagtrace", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Act on an interface in the network namespace /run/netns/NAME, like `ip -n NAME`
    /// (flows/stats: show only that namespace). Pins stay in the host's bpffs.
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_name)]
    pub netns: Option<String>,

    /// Directory under which maps are pinned, per namespace and interface.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "FLAGTRACE_PIN_ROOT",
        hide_env_values = true,
        default_value = DEFAULT_PIN_ROOT
    )]
    pub pin_root: PathBuf,

    /// MAC vendor registry: an IEEE CSV (oui.csv, mam.csv, oui36.csv) or a Wireshark manuf
    /// file [default: /usr/share/ieee-data/*.csv, else /usr/share/wireshark/manuf].
    #[arg(long, global = true, value_name = "PATH")]
    pub oui_db: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error
  3  missing privileges (CAP_BPF and CAP_NET_ADMIN, or root)
  4  no such interface
  5  no such network namespace
  6  nothing attached (no pins, or nothing to detach)
  7  pin from an incompatible version (run `flagtrace detach IFACE --purge`)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to IFACE and count until SIGINT or SIGTERM
    ///
    /// Loads the programs, attaches XDP on ingress and TC on egress, prints one line when ready,
    /// and detaches both on SIGINT or SIGTERM. The maps stay pinned, so counts survive a restart.
    Attach(AttachArgs),
    /// Print one row per flow from the pinned flow tables
    Flows(FlowsArgs),
    /// Print the flows that ended in a RST, and who sent it: the endpoint or a middlebox
    ///
    /// One line per flow, grouped by gateway and server, with the evidence that decided.
    Resets(ResetsArgs),
    /// Print the global counters of each attachment
    Stats(StatsArgs),
    /// Remove hooks that a killed `attach` left on IFACE; with --purge also its pins
    Detach(DetachArgs),
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Interface to attach to.
    #[arg(value_parser = parse_name)]
    pub iface: String,

    /// Flow-table capacity [default: 262144]. When full, the least recently used flow makes
    /// room. A table already pinned keeps its capacity.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: Option<u32>,

    /// Reset evidence table capacity [default: 65536]: flows with a RST whose evidence is
    /// kept. A table already pinned keeps its capacity.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_resets: Option<u32>,

    /// XDP attach mode: auto tries native (driver) mode and falls back to skb (generic) mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Only flows seen on this interface.
    #[arg(long, value_parser = parse_name)]
    pub iface: Option<String>,

    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Print at most N flows (after sorting).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Order: most recently seen first, or most RSTs / SYNs first.
    #[arg(long, value_enum, default_value_t = SortKey::Last)]
    pub sort: SortKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    Last,
    Rst,
    Syn,
}

#[derive(Debug, Args)]
pub struct ResetsArgs {
    /// One JSON object per line, the same objects as `flows --json`.
    #[arg(long)]
    pub json: bool,

    /// Only flows whose first RST came within DURATION of now: a number and a unit, s, m, h
    /// or d (30s, 5m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to remove flagtrace's hooks from.
    #[arg(value_parser = parse_name)]
    pub iface: String,

    /// Also remove the pinned maps (and with them the counts).
    #[arg(long)]
    pub purge: bool,
}

/// Interface and namespace names become directory names under the pin root: accept only what
/// can be one path component.
fn parse_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("{name:?} is not a valid name"));
    }
    Ok(name.to_owned())
}

/// `30s`, `5m`, `2h`, `1d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 30s, 5m, 2h or 1d");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

/// A duration the way `--since` takes it, in its largest whole unit: `300s` prints as `5m`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (number, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit_seconds, _)| seconds > 0 && seconds.is_multiple_of(*unit_seconds))
        .map_or((seconds, "s"), |(unit_seconds, unit)| {
            (seconds / unit_seconds, unit)
        });
    format!("{number}{unit}")
}

#[cfg(test)]
mod tests {
    use clap::{error::ErrorKind, CommandFactory as _};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("flagtrace").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_defaults() {
        let cli = parse(&["attach", "veth0"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.iface, "veth0");
        assert_eq!(args.max_flows, None);
        assert_eq!(args.xdp_mode, XdpModeArg::Auto);
        assert_eq!(cli.netns, None);
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        for args in [
            &[
                "--netns",
                "lab",
                "--pin-root",
                "/sys/fs/bpf/t",
                "flows",
                "--json",
            ][..],
            &[
                "flows",
                "--json",
                "--netns",
                "lab",
                "--pin-root",
                "/sys/fs/bpf/t",
            ][..],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.netns.as_deref(), Some("lab"));
            assert_eq!(cli.pin_root, PathBuf::from("/sys/fs/bpf/t"));
        }
    }

    #[test]
    fn flows_options() {
        let cli = parse(&["flows", "--iface", "veth1", "--limit", "5", "--sort", "rst"]).unwrap();
        let Command::Flows(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.iface.as_deref(), Some("veth1"));
        assert_eq!(args.limit, Some(5));
        assert_eq!(args.sort, SortKey::Rst);
        assert!(!args.json);
    }

    #[test]
    fn help_states_the_default_capacity() {
        let help = Cli::command()
            .find_subcommand_mut("attach")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains(&format!("[default: {}]", tracer_common::DEFAULT_MAX_FLOWS)));
        assert!(help.contains(&format!("[default: {}]", tracer_common::DEFAULT_MAX_RESETS)));
    }

    #[test]
    fn usage_errors() {
        let rejected: [&[&str]; 6] = [
            &["attach"],
            &["attach", "veth0", "--max-flows", "0"],
            &["attach", "veth0", "--xdp-mode", "hw"],
            &["attach", "../etc"],
            &["--netns", "a/b", "stats"],
            &["flows", "--sort", "first"],
        ];
        for args in rejected {
            let error = parse(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert_ne!(error.kind(), ErrorKind::DisplayHelp);
        }
    }

    #[test]
    fn resets_and_global_oui_db() {
        let cli = parse(&[
            "resets",
            "--json",
            "--since",
            "5m",
            "--oui-db",
            "/tmp/manuf",
        ])
        .unwrap();
        assert_eq!(cli.oui_db, Some(PathBuf::from("/tmp/manuf")));
        let Command::Resets(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert!(args.json);
        assert_eq!(args.since, Some(Duration::from_secs(300)));
        let cli = parse(&["resets"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Resets(ResetsArgs {
                json: false,
                since: None
            })
        ));
    }

    #[test]
    fn durations() {
        for (text, seconds) in [
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86_400),
            ("0s", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for text in ["30s", "5m", "2h", "1d", "0s", "90s", "25h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "5min",
            "-5m",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attach_max_resets() {
        let cli = parse(&["attach", "veth0", "--max-resets", "100"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.max_resets, Some(100));
        assert!(parse(&["attach", "veth0", "--max-resets", "0"]).is_err());
    }

    #[test]
    fn detach_purge() {
        let cli = parse(&["detach", "veth0", "--purge"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Detach(DetachArgs { purge: true, .. })
        ));
    }
}
