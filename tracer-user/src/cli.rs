//! The `flagtrace` command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    analysis::mac::MacAddr,
    output::{OutputFormat, RecordFormat},
    sys::pins::DEFAULT_PIN_ROOT,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Count SYN, SYN/ACK, FIN and RST per TCP flow in the kernel, to answer "who reset this
/// connection?".
/// The largest `--max-flows`: 16 GiB of locked memory, far below the kernel's own limit on a
/// hash table's buckets, and beyond any appliance's connection count.
pub const MAX_FLOWS_LIMIT: i64 = 1 << 26;
/// The largest `--max-resets`, a power of two.
pub const MAX_RESETS_LIMIT: i64 = 1 << 24;

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
  3  missing privileges (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON; CAP_SYS_ADMIN for --netns; or root)
  4  no such interface
  5  no such network namespace
  6  nothing attached (no pins, nothing to detach, or pins an attach has not finished)
  7  pin from an incompatible version (run `flagtrace detach IFACE --purge`)
  8  capture truncated or corrupt (pcap: the flows before the damage are printed)
  9  not a capture (pcap: no such file, unreadable, not pcap/pcapng, only unsupported link types)
 10  detach: the hooks belong to a running attach (detach --force overrides)
 11  attach: its hooks were removed while it ran
 12  attach: its metrics endpoint failed";

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
    /// Print every RST as it happens, then its verdict, until SIGINT or SIGTERM
    ///
    /// Reads the attachments' event ring buffers (all under the pin root, or --iface's): each
    /// RST as it arrives, then about a second later the verdict and evidence that `resets`
    /// prints for its flow. The kernel sends events only while a watcher renews its lease (every
    /// second, for a few seconds ahead), so a killed watcher stops them by itself. One watcher
    /// per attachment: a ring buffer has one reader, and a second watcher is refused.
    Watch(WatchArgs),
    /// Remove hooks that a killed `attach` left on IFACE; with --purge also its pins
    Detach(DetachArgs),
    /// Analyse a capture file: the resets (or --flows, --stats) as if flagtrace had been attached
    ///
    /// Reads a pcap or pcapng file (Ethernet, Linux cooked SLL and SLL2, raw IP) as a stream and
    /// runs every packet through the kernel programs' own accounting, then prints what `resets`,
    /// `flows` or `stats` would print for an attachment that saw those packets, with the same
    /// JSON keys and CSV columns. Times are the capture's.
    ///
    /// Direction decides which MAC is the neighbour and which hook counts a packet. pcapng
    /// packets with epb_flags and Linux cooked captures (tcpdump -i any) say it; otherwise the
    /// capturing host's MAC is the unicast MAC found in the most frames (--local-mac sets it),
    /// the frames it sent are egress, and all others ingress. The gateway's IP address comes
    /// from the ARP and neighbour discovery packets in the capture, when there are any.
    ///
    /// A truncated or corrupt file: the flows before the damage are printed, then the error,
    /// naming the byte offset, and the exit code is 8.
    Pcap(PcapArgs),
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Interface to attach to.
    #[arg(value_parser = parse_name)]
    pub iface: String,

    /// Flow-table capacity [default: 262144], at most 67108864 (about 249 bytes of locked
    /// memory each, with its activity slot). When full, the least recently used flow makes
    /// room. A table already pinned keeps its capacity.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_FLOWS_LIMIT))]
    pub max_flows: Option<u32>,

    /// Reset evidence table capacity [default: 65536], at most 16777216 (about 520 bytes
    /// each with its server name): flows with a RST whose evidence is kept. A table already
    /// pinned keeps its capacity.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_RESETS_LIMIT))]
    pub max_resets: Option<u32>,

    /// XDP attach mode: auto tries native (driver) mode and falls back to skb (generic) mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, read from the maps at each scrape
    /// [default: off]. The endpoint has no authentication: bind it to loopback, e.g.
    /// 127.0.0.1:9464, unless a firewall guards the port. With --netns it listens in the
    /// namespace flagtrace was started from, not in NAME. Port 0 picks a free port, which
    /// attach prints.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
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

    #[command(flatten)]
    pub output: OutputArgs,

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
    // The same JSON objects and CSV rows as `flows`.
    #[command(flatten)]
    pub output: OutputArgs,

    /// Only flows whose first RST came within DURATION of now: a number and a unit, s, m, h
    /// or d (30s, 5m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct PcapArgs {
    /// The capture file (pcap or pcapng); `-` for standard input. A pipe or FIFO is read once.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print every flow, as `flows` does, instead of the resets.
    #[arg(long, conflicts_with = "stats")]
    pub flows: bool,

    /// Print the counters of each interface, as `stats` does, instead of the resets.
    #[arg(long)]
    pub stats: bool,

    /// MAC address of the host the capture was taken on, for packets whose direction the file
    /// does not record [default: the unicast MAC found in the most frames].
    #[arg(long, value_name = "MAC")]
    pub local_mac: Option<MacAddr>,

    /// Interface name to show [default: the pcapng if_name, else the file's name].
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only the attachment on this interface.
    #[arg(long, value_parser = parse_name)]
    pub iface: Option<String>,

    /// One JSON object per line (JSON lines): "rst", "verdict", "dropped" and "end" events.
    #[arg(long)]
    pub json: bool,

    /// Also write each RST and the SYN and SYN/ACK packets of its flow (headers: the first 128
    /// bytes) to OUT, a pcap file for Wireshark or tcpdump.
    #[arg(long, value_name = "OUT")]
    pub pcap: Option<PathBuf>,

    /// Events (SYN, SYN/ACK, RST) each CPU may send per second on average; the kernel counts
    /// the rest as dropped.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,

    /// Events each CPU may send at once after a quiet spell.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
}

/// `--json` or `--csv` instead of the table for people; shared by the commands that print items.
#[derive(Clone, Copy, Debug, Args)]
pub struct OutputArgs {
    /// One JSON object per line (JSON lines) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// CSV instead of a table: a header row, then one row per item, with the fields of --json
    /// (nested keys joined with `_`).
    #[arg(long)]
    pub csv: bool,
}

impl OutputArgs {
    pub fn format(self) -> OutputFormat {
        if self.json {
            OutputFormat::Records(RecordFormat::Json)
        } else if self.csv {
            OutputFormat::Records(RecordFormat::Csv)
        } else {
            OutputFormat::Table
        }
    }
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to remove flagtrace's hooks from.
    #[arg(value_parser = parse_name)]
    pub iface: String,

    /// Also remove the pinned maps (and with them the counts).
    #[arg(long)]
    pub purge: bool,

    /// Remove hooks even when a running `attach` holds them (it then exits with code 11).
    #[arg(long)]
    pub force: bool,
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
        assert_eq!(args.metrics, None);
        assert_eq!(cli.netns, None);
    }

    #[test]
    fn attach_metrics_takes_an_address_and_port() {
        for addr in ["127.0.0.1:9464", "[::1]:9464", "0.0.0.0:0"] {
            let cli = parse(&["attach", "veth0", "--metrics", addr]).unwrap();
            let Command::Attach(args) = cli.command else {
                panic!("{cli:?}")
            };
            assert_eq!(args.metrics, Some(addr.parse().unwrap()));
        }
        for bad in ["9464", "127.0.0.1", "localhost:9464"] {
            let error = parse(&["attach", "veth0", "--metrics", bad]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad}");
        }
        let help = Cli::command()
            .find_subcommand_mut("attach")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("127.0.0.1:9464"), "{help}");
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
        assert_eq!(args.output.format(), OutputFormat::Table);
    }

    #[test]
    fn json_or_csv() {
        for command in ["flows", "resets", "stats"] {
            let format = |args: &[&str]| {
                let cli = parse(&[&[command], args].concat()).unwrap();
                match cli.command {
                    Command::Flows(FlowsArgs { output, .. })
                    | Command::Resets(ResetsArgs { output, .. })
                    | Command::Stats(StatsArgs { output }) => output.format(),
                    other => panic!("{other:?}"),
                }
            };
            assert_eq!(format(&[]), OutputFormat::Table, "{command}");
            assert_eq!(
                format(&["--json"]),
                OutputFormat::Records(RecordFormat::Json),
                "{command}"
            );
            assert_eq!(
                format(&["--csv"]),
                OutputFormat::Records(RecordFormat::Csv),
                "{command}"
            );
            let error = parse(&[command, "--json", "--csv"]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{command}");
            assert_eq!(error.exit_code(), 2, "{command}");
        }
    }

    #[test]
    fn watch_options() {
        let cli = parse(&["watch"]).unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.iface, None);
        assert!(!args.json);
        assert_eq!(args.pcap, None);
        assert_eq!((args.rate, args.burst), (100, 100));
        let cli = parse(&[
            "watch",
            "--iface",
            "eth0",
            "--json",
            "--pcap",
            "/tmp/resets.pcap",
            "--rate",
            "5",
            "--burst",
            "10",
        ])
        .unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.iface.as_deref(), Some("eth0"));
        assert!(args.json);
        assert_eq!(args.pcap, Some(PathBuf::from("/tmp/resets.pcap")));
        assert_eq!((args.rate, args.burst), (5, 10));
        for bad in [
            &["watch", "--rate", "0"][..],
            &["watch", "--burst", "0"],
            &["watch", "--csv"],
            &["watch", "--iface", "../x"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
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
        assert_eq!(
            args.output.format(),
            OutputFormat::Records(RecordFormat::Json)
        );
        assert_eq!(args.since, Some(Duration::from_secs(300)));
        let cli = parse(&["resets"]).unwrap();
        let Command::Resets(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.output.format(), OutputFormat::Table);
        assert_eq!(args.since, None);
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
    fn table_capacities_beyond_their_limits_are_usage_errors() {
        for (option, limit) in [
            ("--max-flows", MAX_FLOWS_LIMIT),
            ("--max-resets", MAX_RESETS_LIMIT),
        ] {
            assert!(parse(&["attach", "veth0", option, &limit.to_string()]).is_ok());
            let error = parse(&["attach", "veth0", option, &(limit + 1).to_string()]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{option}"
            );
            assert!(parse(&["attach", "veth0", option, "4294967295"]).is_err());
        }
    }

    #[test]
    fn pcap_options() {
        let cli = parse(&[
            "pcap",
            "trace.pcap",
            "--flows",
            "--csv",
            "--local-mac",
            "02:00:00:00:00:01",
        ])
        .unwrap();
        let Command::Pcap(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.file, PathBuf::from("trace.pcap"));
        assert!(args.flows && !args.stats);
        assert_eq!(
            args.local_mac.map(|mac| mac.to_string()).as_deref(),
            Some("02:00:00:00:00:01")
        );
        assert_eq!(
            args.output.format(),
            OutputFormat::Records(RecordFormat::Csv)
        );
        for bad in [
            &["pcap"][..],
            &["pcap", "t.pcap", "--local-mac", "02:00"],
            &["pcap", "t.pcap", "--flows", "--stats"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
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
