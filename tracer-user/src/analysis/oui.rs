//! MAC address vendors, from the IEEE registries read at run time: the MA-L (24-bit), MA-M
//! (28-bit) and MA-S (36-bit) CSV files that Debian's ieee-data installs, or Wireshark's manuf,
//! or a file named with `--oui-db`. Neither is vendored: the IEEE files carry no redistribution
//! licence and manuf is GPL. The longest matching prefix wins.

use std::{
    borrow::Cow,
    cell::OnceCell,
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

use crate::analysis::mac::MacAddr;

/// Where Debian's ieee-data puts the registries.
pub const IEEE_DATA_DIR: &str = "/usr/share/ieee-data";
/// The registry files read from [`IEEE_DATA_DIR`]: MA-S, IAB (36 bits, MA-S's predecessor),
/// MA-M, MA-L. Order does not matter, the lookup takes the longest prefix.
const IEEE_DATA_FILES: [&str; 4] = ["oui36.csv", "iab.csv", "mam.csv", "oui.csv"];
/// Wireshark's manufacturer file, the fallback when ieee-data is missing.
pub const WIRESHARK_MANUF: &str = "/usr/share/wireshark/manuf";

/// One registry entry: the organization assigned the MACs that start with `prefix`, the first
/// `bits` bits of the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub bits: u8,
    pub prefix: u64,
    pub organization: String,
}

/// Assignments by prefix length, looked up longest first.
#[derive(Debug, Default)]
pub struct OuiRegistry {
    /// Sorted by prefix length, longest first.
    tables: Vec<(u8, HashMap<u64, String>)>,
}

impl OuiRegistry {
    pub fn new(assignments: impl IntoIterator<Item = Assignment>) -> OuiRegistry {
        let mut by_bits: HashMap<u8, HashMap<u64, String>> = HashMap::new();
        for assignment in assignments {
            by_bits
                .entry(assignment.bits)
                .or_default()
                .entry(assignment.prefix)
                .or_insert(assignment.organization);
        }
        let mut tables: Vec<_> = by_bits.into_iter().collect();
        tables.sort_by_key(|(bits, _)| std::cmp::Reverse(*bits));
        OuiRegistry { tables }
    }

    /// The organization holding the longest prefix of `mac`.
    pub fn lookup(&self, mac: MacAddr) -> Option<&str> {
        let address = mac.as_u64();
        self.tables.iter().find_map(|(bits, table)| {
            table
                .get(&(address >> (48 - u32::from(*bits))))
                .map(String::as_str)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The registry in `path` (either format), or when none is named the default one: every
    /// ieee-data file that exists, or else Wireshark's manuf. `None` when there is no default
    /// registry. A named file that cannot be read is an error.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Option<OuiRegistry>> {
        match path {
            Some(path) => Ok(Some(OuiRegistry::new(read_registry(path)?))),
            None => Ok(load_default(
                Path::new(IEEE_DATA_DIR),
                Path::new(WIRESHARK_MANUF),
            )),
        }
    }
}

/// The ieee-data files in `ieee_dir`, or else the manuf file; `None` when neither exists. A file
/// that exists but cannot be used is reported on stderr and skipped.
fn load_default(ieee_dir: &Path, manuf: &Path) -> Option<OuiRegistry> {
    let ieee_files = IEEE_DATA_FILES.map(|name| ieee_dir.join(name));
    let present: Vec<&Path> = ieee_files
        .iter()
        .map(PathBuf::as_path)
        .filter(|path| path.exists())
        .collect();
    let sources = if present.is_empty() {
        if !manuf.exists() {
            return None;
        }
        vec![manuf]
    } else {
        present
    };
    let mut assignments = Vec::new();
    for path in sources {
        match read_registry(path) {
            Ok(found) => assignments.extend(found),
            Err(error) => log::warn!("skipping vendor registry: {error:#}"),
        }
    }
    let registry = OuiRegistry::new(assignments);
    (!registry.is_empty()).then_some(registry)
}

/// The assignments in one registry file, either format.
fn read_registry(path: &Path) -> anyhow::Result<Vec<Assignment>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let assignments =
        parse_registry(&text).with_context(|| format!("parsing {}", path.display()))?;
    if assignments.is_empty() {
        bail!(
            "{} holds no MAC assignments (expected an IEEE CSV or a Wireshark manuf file)",
            path.display()
        );
    }
    Ok(assignments)
}

/// Parses an IEEE registry CSV (its header starts with `Registry,`) or a Wireshark manuf file.
pub fn parse_registry(text: &str) -> anyhow::Result<Vec<Assignment>> {
    let first_line = text.lines().map(str::trim).find(|line| !line.is_empty());
    if first_line.is_some_and(|line| line.starts_with("Registry,")) {
        parse_ieee_csv(text)
    } else {
        Ok(parse_manuf(text))
    }
}

/// `Registry,Assignment,Organization Name,Organization Address`, the assignment in hex digits
/// (6 for MA-L, 7 for MA-M, 9 for MA-S). Quoted fields may hold commas and line breaks.
fn parse_ieee_csv(text: &str) -> anyhow::Result<Vec<Assignment>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut assignments = Vec::new();
    for record in reader.records() {
        let record = record?;
        let (Some(hex), Some(organization)) = (record.get(1), record.get(2)) else {
            continue;
        };
        let hex = hex.trim();
        let Ok(prefix) = u64::from_str_radix(hex, 16) else {
            continue;
        };
        if (1..=12).contains(&hex.len()) {
            assignments.push(Assignment {
                bits: 4 * hex.len() as u8,
                prefix,
                organization: organization.trim().to_owned(),
            });
        }
    }
    Ok(assignments)
}

/// Wireshark's manuf: `00:00:0C<TAB>Cisco<TAB>Cisco Systems, Inc`, longer prefixes as
/// `00:1B:C5:00:00:00/36<TAB>...`. Older files put the long name in a comment after the short
/// one. The long name is used when there is one. Lines that do not parse are skipped.
fn parse_manuf(text: &str) -> Vec<Assignment> {
    let mut assignments = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (prefix, names) = match line.split_once('\t') {
            Some(split) => split,
            None => match line.split_once(char::is_whitespace) {
                Some(split) => split,
                None => continue,
            },
        };
        let (short, long) = match names.split_once('\t') {
            Some((short, long)) => (short, Some(long)),
            None => match names.split_once('#') {
                Some((short, comment)) => (short, Some(comment)),
                None => (names, None),
            },
        };
        let organization = long
            .map(str::trim)
            .filter(|long| !long.is_empty())
            .unwrap_or(short.trim());
        if let (Some((bits, prefix)), false) = (parse_prefix(prefix), organization.is_empty()) {
            assignments.push(Assignment {
                bits,
                prefix,
                organization: organization.to_owned(),
            });
        }
    }
    assignments
}

/// `00:1B:C5` (24 bits) or `00:1B:C5:00:00:00/36`; `-` and `.` also separate octets.
fn parse_prefix(text: &str) -> Option<(u8, u64)> {
    let (octets_text, bits) = match text.split_once('/') {
        Some((octets, bits)) => (octets, Some(bits.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let mut address = 0u64;
    let mut count = 0u8;
    for octet in octets_text.split([':', '-', '.']) {
        if octet.len() != 2 || count == 6 {
            return None;
        }
        address = address << 8 | u64::from(u8::from_str_radix(octet, 16).ok()?);
        count += 1;
    }
    let bits = bits.unwrap_or(8 * count);
    if bits == 0 || bits > 48 || bits > 8 * count {
        return None;
    }
    let address = address << (8 * (6 - u32::from(count)));
    Some((bits, address >> (48 - u32::from(bits))))
}

/// What is known about who made a network card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// The registry's organization name.
    Organization(String),
    /// The address was assigned locally (virtual interfaces, randomised MACs): no vendor.
    LocallyAdministered,
    /// A locally administered address whose universal twin (the local bit cleared) the
    /// registry lists: what an HA pair's MAC masquerade looks like (an F5 pair's 02:01:d7:...
    /// for F5's 00:01:d7), or a local address that happens to share the bits. Not the
    /// organization's own address, so it is not its vendor either.
    Masquerade(String),
    /// A universal address whose prefix the registry does not list.
    Unlisted,
    /// No registry could be read.
    NoRegistry,
}

impl Vendor {
    /// The organization, when there is one.
    pub fn organization(&self) -> Option<&str> {
        match self {
            Vendor::Organization(name) => Some(name),
            _ => None,
        }
    }

    /// For people: the organization, or why there is none.
    pub fn describe(&self) -> Cow<'_, str> {
        match self {
            Vendor::Organization(name) => Cow::Borrowed(name),
            Vendor::LocallyAdministered => Cow::Borrowed("locally administered"),
            Vendor::Masquerade(name) => Cow::Owned(format!(
                "locally administered, on {name}'s OUI: an HA pair's MAC masquerade?"
            )),
            Vendor::Unlisted => Cow::Borrowed("vendor not in the registry"),
            Vendor::NoRegistry => Cow::Borrowed("no vendor registry"),
        }
    }
}

/// Vendor lookups for one command: the registry is read at the first lookup that needs it, and
/// at most once.
pub struct Vendors {
    path: Option<PathBuf>,
    registry: OnceCell<Option<OuiRegistry>>,
}

impl Vendors {
    /// Lookups in the registry at `path` (`--oui-db`), or in the default one.
    pub fn new(path: Option<&Path>) -> Vendors {
        Vendors {
            path: path.map(Path::to_owned),
            registry: OnceCell::new(),
        }
    }

    /// Lookups in a registry already at hand.
    pub fn with_registry(registry: Option<OuiRegistry>) -> Vendors {
        Vendors {
            path: None,
            registry: OnceCell::from(registry),
        }
    }

    pub fn vendor(&self, mac: MacAddr) -> anyhow::Result<Vendor> {
        let registry = self.registry()?;
        if mac.is_locally_administered() {
            let mut twin = mac;
            twin.0[0] &= !0x02;
            let name = registry.and_then(|registry| registry.lookup(twin));
            return Ok(name.map_or(Vendor::LocallyAdministered, |name| {
                Vendor::Masquerade(name.to_owned())
            }));
        }
        let Some(registry) = registry else {
            return Ok(Vendor::NoRegistry);
        };
        Ok(registry.lookup(mac).map_or(Vendor::Unlisted, |name| {
            Vendor::Organization(name.to_owned())
        }))
    }

    fn registry(&self) -> anyhow::Result<Option<&OuiRegistry>> {
        if let Some(registry) = self.registry.get() {
            return Ok(registry.as_ref());
        }
        let registry = OuiRegistry::load(self.path.as_deref())
            .context("reading the MAC vendor registry named by --oui-db")?;
        if registry.is_none() {
            log::warn!(
                "no MAC vendor registry found (neither {IEEE_DATA_DIR}/*.csv from \
                 Debian's ieee-data nor {WIRESHARK_MANUF}); vendors are left out, name one with --oui-db"
            );
        }
        Ok(self.registry.get_or_init(|| registry).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Debian's oui.csv, mam.csv and oui36.csv, with quoted names holding commas,
    /// doubled quotes, and an address that spans lines.
    const IEEE_CSV: &str = "\
Registry,Assignment,Organization Name,Organization Address
MA-L,0001D7,\"F5 Networks, Inc.\",1322 N. Whitman Lane Liberty Lake WA US 99019 
MA-L,001EFC,\"JSC \"\"MASSA-K\"\"\",\"15, A, Pirogovskaya nab.
Saint-Petersburg RU 194044 \"
MA-L,70B3D5,IEEE Registration Authority,445 Hoes Lane Piscataway NJ US 08554 
MA-M,70B3D57,Some MA-M Holder,Somewhere
MA-S,70B3D5F2F,TELEPLATFORMS,\"Polbina st., 3/1 Moscow  RU 109388 \"
MA-M,741AE09,Private,
";

    const MANUF: &str = "\
# Wireshark manuf (excerpt)
00:00:0C\tCisco\tCisco Systems, Inc
00:01:D7\tF5Networ\tF5 Networks, Inc.
00:1B:C5:00:00:00/36\tConvergi\tConverging Systems Inc.
00:1B:C5\tIeeeRegi\tIEEE Registration Authority
00:55:DA:50:00:00/28\tNanjingP\tNanjing Plnet Intelligent Technology Co., Ltd
08-00-2B\tDEC
00:00:01\tXerox                  # XEROX CORPORATION
not a line
";

    fn mac(text: &str) -> MacAddr {
        text.parse().unwrap()
    }

    fn registry(text: &str) -> OuiRegistry {
        OuiRegistry::new(parse_registry(text).unwrap())
    }

    #[test]
    fn ieee_csv_with_quotes_and_line_breaks() {
        let assignments = parse_registry(IEEE_CSV).unwrap();
        assert_eq!(assignments.len(), 6);
        assert_eq!(
            assignments[0],
            Assignment {
                bits: 24,
                prefix: 0x0001d7,
                organization: "F5 Networks, Inc.".into()
            }
        );
        assert_eq!(assignments[1].organization, "JSC \"MASSA-K\"");
        assert_eq!(assignments[2].organization, "IEEE Registration Authority");
        assert_eq!(
            (assignments[3].bits, assignments[3].prefix),
            (28, 0x70b3d57)
        );
        assert_eq!(
            (assignments[4].bits, assignments[4].prefix),
            (36, 0x70b3d5f2f)
        );
    }

    #[test]
    fn f5_resolves_from_either_format() {
        for text in [IEEE_CSV, MANUF] {
            assert_eq!(
                registry(text).lookup(mac("00:01:d7:3c:5e:01")),
                Some("F5 Networks, Inc.")
            );
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let ieee = registry(IEEE_CSV);
        assert_eq!(ieee.lookup(mac("70:b3:d5:f2:f0:01")), Some("TELEPLATFORMS"));
        assert_eq!(
            ieee.lookup(mac("70:b3:d5:71:00:01")),
            Some("Some MA-M Holder")
        );
        assert_eq!(
            ieee.lookup(mac("70:b3:d5:00:00:01")),
            Some("IEEE Registration Authority")
        );
        assert_eq!(ieee.lookup(mac("00:00:5e:00:00:01")), None);

        let manuf = registry(MANUF);
        assert_eq!(
            manuf.lookup(mac("00:1b:c5:00:00:42")),
            Some("Converging Systems Inc.")
        );
        assert_eq!(
            manuf.lookup(mac("00:1b:c5:00:10:42")),
            Some("IEEE Registration Authority")
        );
        assert_eq!(
            manuf.lookup(mac("00:55:da:5f:ff:ff")),
            Some("Nanjing Plnet Intelligent Technology Co., Ltd")
        );
    }

    #[test]
    fn manuf_variants() {
        let manuf = registry(MANUF);
        assert_eq!(
            manuf.lookup(mac("00:00:0c:01:02:03")),
            Some("Cisco Systems, Inc")
        );
        // Dashes, and a short name only.
        assert_eq!(manuf.lookup(mac("08:00:2b:01:02:03")), Some("DEC"));
        // The old layout's long name in a comment.
        assert_eq!(
            manuf.lookup(mac("00:00:01:01:02:03")),
            Some("XEROX CORPORATION")
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("00:01:D7"), Some((24, 0x0001d7)));
        assert_eq!(
            parse_prefix("00:1B:C5:00:00:00/36"),
            Some((36, 0x001bc5000))
        );
        assert_eq!(parse_prefix("00:55:DA:50:00:00/28"), Some((28, 0x0055da5)));
        assert_eq!(parse_prefix("00:01:D7/20"), Some((20, 0x0001d)));
        for bad in [
            "00:01:D7/30",
            "00:01:D7:00:00:00:00",
            "0:1:D7",
            "zz:01:d7",
            "00:01:d7/0",
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad}");
        }
    }

    /// A scratch directory removed on drop.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(tag: &str) -> ScratchDir {
            let dir =
                std::env::temp_dir().join(format!("flagtrace-oui-{tag}-{}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            ScratchDir(dir)
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn default_registry_prefers_ieee_data_then_manuf() {
        let scratch = ScratchDir::new("default");
        let ieee_dir = scratch.0.join("ieee-data");
        let manuf = scratch.0.join("manuf");
        assert!(load_default(&ieee_dir, &manuf).is_none());

        fs::write(&manuf, "00:01:D7\tF5\tF5 from manuf\n").unwrap();
        let from_manuf = load_default(&ieee_dir, &manuf).unwrap();
        assert_eq!(
            from_manuf.lookup(mac("00:01:d7:00:00:01")),
            Some("F5 from manuf")
        );

        fs::create_dir_all(&ieee_dir).unwrap();
        fs::write(ieee_dir.join("oui.csv"), IEEE_CSV).unwrap();
        fs::write(
            ieee_dir.join("oui36.csv"),
            "Registry,Assignment,Organization Name,Organization Address\n\
             MA-S,0001D7123,Inner F5 Block,x\n",
        )
        .unwrap();
        let from_ieee = load_default(&ieee_dir, &manuf).unwrap();
        assert_eq!(
            from_ieee.lookup(mac("00:01:d7:00:00:01")),
            Some("F5 Networks, Inc.")
        );
        assert_eq!(
            from_ieee.lookup(mac("00:01:d7:12:30:01")),
            Some("Inner F5 Block")
        );
    }

    #[test]
    fn named_registry_in_either_format_or_an_error() {
        let scratch = ScratchDir::new("named");
        let path = scratch.0.join("my-oui");
        fs::write(&path, MANUF).unwrap();
        let registry = OuiRegistry::load(Some(&path)).unwrap().unwrap();
        assert_eq!(
            registry.lookup(mac("00:01:d7:00:00:01")),
            Some("F5 Networks, Inc.")
        );

        let missing = OuiRegistry::load(Some(&scratch.0.join("missing"))).unwrap_err();
        assert!(
            format!("{missing:#}").contains("No such file"),
            "{missing:#}"
        );
        fs::write(&path, "nothing useful\n").unwrap();
        let empty = OuiRegistry::load(Some(&path)).unwrap_err();
        assert!(format!("{empty:#}").contains("holds no MAC assignments"));
    }

    #[test]
    fn vendors_say_why_there_is_no_name() {
        let vendors = Vendors::with_registry(Some(registry(IEEE_CSV)));
        assert_eq!(
            vendors.vendor(mac("00:01:d7:3c:5e:01")).unwrap(),
            Vendor::Organization("F5 Networks, Inc.".into())
        );
        assert_eq!(
            vendors.vendor(mac("00:00:5e:00:00:01")).unwrap(),
            Vendor::Unlisted
        );
        // 0x02 set: local. On a registered OUI, as an F5 pair's MAC masquerade is: named as
        // such, never as the organization's own address.
        let masquerade = vendors.vendor(mac("02:01:d7:3c:5e:01")).unwrap();
        assert_eq!(masquerade, Vendor::Masquerade("F5 Networks, Inc.".into()));
        assert_eq!(masquerade.organization(), None);
        assert_eq!(
            masquerade.describe(),
            "locally administered, on F5 Networks, Inc.'s OUI: an HA pair's MAC masquerade?"
        );
        assert_eq!(
            vendors.vendor(mac("02:00:5e:00:00:01")).unwrap(),
            Vendor::LocallyAdministered
        );
        let without = Vendors::with_registry(None);
        assert_eq!(
            without.vendor(mac("00:01:d7:3c:5e:01")).unwrap(),
            Vendor::NoRegistry
        );
        assert_eq!(
            without.vendor(mac("ba:be:00:00:00:01")).unwrap(),
            Vendor::LocallyAdministered
        );
        assert_eq!(Vendor::LocallyAdministered.organization(), None);
        assert_eq!(
            Vendor::LocallyAdministered.describe(),
            "locally administered"
        );
    }

    /// Debian's ieee-data, which `cargo xtask setup` installs.
    #[test]
    fn real_ieee_data_names_f5() {
        let registry = OuiRegistry::load(None)
            .unwrap()
            .expect("no registry: install Debian's ieee-data (cargo xtask setup does)");
        for f5 in [
            "00:01:d7:3c:5e:01",
            "00:0a:49:00:00:01",
            "00:23:e9:00:00:01",
            "00:94:a1:00:00:01",
        ] {
            assert_eq!(registry.lookup(mac(f5)), Some("F5 Networks, Inc."), "{f5}");
        }
        // An MA-S block inside the IEEE's own MA-L: the 36-bit entry wins.
        let ma_s = registry.lookup(mac("70:b3:d5:f2:f0:01")).unwrap();
        assert_ne!(
            ma_s,
            registry.lookup(mac("70:b3:d5:00:00:01")).unwrap_or("")
        );
    }
}
