//! The neighbour table and default routes of an attachment's namespace, read into the
//! analysis's [`Neighbours`]: which IP address a gateway MAC answers for, and whether that
//! address is the default route's gateway.
//!
//! Read with iproute2's JSON output (`ip -n NS -j neigh show dev IF`, `ip -j route show default`)
//! rather than a netlink crate: three short commands per attachment and query, no async
//! runtime, and `ip -n` reaches a namespace without this process entering it.

use std::net::IpAddr;

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    analysis::neighbours::Neighbours,
    sys::netns::{run_ip, Netns},
};

#[derive(Deserialize)]
struct IpNeighbour {
    dst: IpAddr,
    /// Missing for entries still resolving or failed.
    lladdr: Option<String>,
}

#[derive(Deserialize)]
struct IpRoute {
    gateway: Option<IpAddr>,
    dev: Option<String>,
    /// Multipath routes list their gateways here instead.
    #[serde(default)]
    nexthops: Vec<IpNexthop>,
}

#[derive(Deserialize)]
struct IpNexthop {
    gateway: Option<IpAddr>,
    dev: Option<String>,
}

/// Reads the neighbours of `iface` in `netns`, and the default routes through it.
pub fn read(netns: &Netns, iface: &str) -> anyhow::Result<Neighbours> {
    let ip = |args: &[&str]| {
        let mut full = netns.ip_args();
        full.extend_from_slice(args);
        run_ip(&full).with_context(|| format!("reading the neighbour table of {iface} in {netns}"))
    };
    let neighbours = ip(&["-j", "neigh", "show", "dev", iface])?;
    let routes_v4 = ip(&["-j", "-4", "route", "show", "default"])?;
    let routes_v6 = ip(&["-j", "-6", "route", "show", "default"])?;
    parse(&neighbours, &[&routes_v4, &routes_v6], iface)
        .with_context(|| format!("parsing `ip -j neigh`/`ip -j route` for {iface} in {netns}"))
}

/// From `ip -j neigh show dev IFACE` and `ip -j route show default` outputs.
fn parse(neighbours: &[u8], routes: &[&[u8]], iface: &str) -> anyhow::Result<Neighbours> {
    let neighbours: Vec<IpNeighbour> = parse_json_list(neighbours)?;
    let entries = neighbours
        .into_iter()
        .filter_map(|n| Some((n.dst, n.lladdr?.parse().ok()?)))
        .collect();
    let mut default_gateways = Vec::new();
    for output in routes {
        for route in parse_json_list::<IpRoute>(output)? {
            let hops = route.nexthops.into_iter().map(|hop| (hop.gateway, hop.dev));
            for (gateway, dev) in std::iter::once((route.gateway, route.dev)).chain(hops) {
                if let Some(gateway) = gateway.filter(|_| dev.as_deref() == Some(iface)) {
                    default_gateways.push(gateway);
                }
            }
        }
    }
    Ok(Neighbours {
        entries,
        default_gateways,
    })
}

/// iproute2 prints nothing at all, rather than `[]`, for an empty list in some versions.
fn parse_json_list<T: for<'de> Deserialize<'de>>(output: &[u8]) -> anyhow::Result<Vec<T>> {
    if output.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(output)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::neighbours::NeighbourIp;

    const F5: &str = "00:01:d7:3c:5e:01";

    fn parsed() -> Neighbours {
        // iproute2 6.1, trimmed.
        let neighbours = br#"[
            {"dst":"10.0.1.254","lladdr":"00:01:d7:3c:5e:01","state":["REACHABLE"]},
            {"dst":"10.0.1.7","lladdr":"00:01:d7:3c:5e:01","state":["STALE"]},
            {"dst":"fe80::1","lladdr":"00:01:d7:3c:5e:01","router":null,"state":["STALE"]},
            {"dst":"fd00:1::fe","lladdr":"00:01:d7:3c:5e:01","router":null,"state":["STALE"]},
            {"dst":"10.0.1.9","state":["FAILED"]},
            {"dst":"10.0.1.3","lladdr":"02:00:00:00:00:03","state":["PERMANENT"]}]"#;
        let v4 = br#"[{"dst":"default","gateway":"10.0.1.254","dev":"veth0","flags":[]},
            {"dst":"default","gateway":"192.168.9.1","dev":"other0","metric":5,"flags":[]}]"#;
        let v6 = br#"[{"dst":"default","flags":[],"nexthops":[
            {"gateway":"fd00:1::fe","dev":"veth0","weight":1,"flags":[]},
            {"gateway":"fd00:1::fd","dev":"veth0","weight":1,"flags":[]}]}]"#;
        parse(neighbours, &[v4, v6], "veth0").unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_gateways_are_those_through_the_interface() {
        assert_eq!(
            parsed().default_gateways,
            [ip("10.0.1.254"), ip("fd00:1::fe"), ip("fd00:1::fd")]
        );
    }

    #[test]
    fn gateway_ip_prefers_the_flows_family_then_the_default_gateway() {
        let neighbours = parsed();
        let mac = F5.parse().unwrap();
        assert_eq!(
            neighbours.ip_of(mac, ip("10.0.2.1")),
            Some(NeighbourIp {
                ip: ip("10.0.1.254"),
                is_default: true
            })
        );
        assert_eq!(
            neighbours.ip_of(mac, ip("fd00:2::1")),
            Some(NeighbourIp {
                ip: ip("fd00:1::fe"),
                is_default: true
            })
        );
        assert_eq!(
            neighbours.ip_of("02:00:00:00:00:03".parse().unwrap(), ip("10.0.2.1")),
            Some(NeighbourIp {
                ip: ip("10.0.1.3"),
                is_default: false
            })
        );
        assert_eq!(
            neighbours.ip_of("02:00:00:00:00:04".parse().unwrap(), ip("10.0.2.1")),
            None
        );
    }

    #[test]
    fn empty_output_is_an_empty_table() {
        let neighbours = parse(b"", &[b"[]", b"\n"], "veth0").unwrap();
        assert_eq!(neighbours, Neighbours::default());
        assert!(parse(b"not json", &[], "veth0").is_err());
    }

    /// A real `ip` in a namespace of our own (root: `cargo xtask test` runs it).
    #[test]
    #[ignore = "needs root to create a network namespace"]
    fn reads_a_real_namespace() {
        let lab = TestNetns::create();
        let netns = Netns::Named(lab.0.clone());
        let neighbours = read(&netns, "ftv3n0").unwrap();
        assert_eq!(
            neighbours.ip_of(F5.parse().unwrap(), ip("10.77.2.1")),
            Some(NeighbourIp {
                ip: ip("10.77.1.254"),
                is_default: true
            })
        );
        let missing = read(&netns, "nosuchif0").unwrap_err();
        assert!(format!("{missing:#}").contains("nosuchif0"), "{missing:#}");
    }

    /// A namespace with a veth pair, a default route and a permanent neighbour entry,
    /// removed on drop.
    struct TestNetns(String);

    impl TestNetns {
        /// Needs root, as every flagtrace test that touches the kernel does.
        fn create() -> TestNetns {
            let name = format!("ftv3-{}-neigh", std::process::id());
            run_ip(&["netns", "add", &name]).expect("creating a test namespace (run as root)");
            let lab = TestNetns(name);
            let n = lab.0.as_str();
            let steps: [&[&str]; 6] = [
                &[
                    "-n", n, "link", "add", "ftv3n0", "type", "veth", "peer", "name", "ftv3n1",
                ],
                &["-n", n, "link", "set", "ftv3n0", "up"],
                &["-n", n, "link", "set", "ftv3n1", "up"],
                &["-n", n, "addr", "add", "10.77.1.2/24", "dev", "ftv3n0"],
                &[
                    "-n",
                    n,
                    "route",
                    "add",
                    "default",
                    "via",
                    "10.77.1.254",
                    "dev",
                    "ftv3n0",
                ],
                &[
                    "-n",
                    n,
                    "neigh",
                    "add",
                    "10.77.1.254",
                    "lladdr",
                    F5,
                    "dev",
                    "ftv3n0",
                ],
            ];
            for step in steps {
                run_ip(step).unwrap();
            }
            lab
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = run_ip(&["netns", "del", &self.0]);
        }
    }
}
