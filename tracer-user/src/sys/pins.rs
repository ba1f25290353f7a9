//! Where the maps of each attachment are pinned: `<pin root>/<netns name or "host">/<iface>/`.
//! Pins live in the host's bpffs whatever namespace the interface is in, so every command finds
//! them without entering a namespace.

use std::{
    ffi::CString,
    fmt, fs, io,
    mem::MaybeUninit,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use tracer_common::FLOWS_MAP;

use crate::sys::netns::Netns;

/// Default pin root (overridden by `--pin-root` or FLAGTRACE_PIN_ROOT).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/flagtrace";
/// Where bpffs is mounted when it is not already.
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";
/// Directory name of the host's own network namespace under the pin root.
const HOST_NETNS_DIR: &str = "host";

/// One interface in one namespace: the unit flagtrace attaches to and pins maps for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub netns: Netns,
    pub iface: String,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.iface, self.netns)
    }
}

/// The directory under which all attachments pin their maps.
#[derive(Clone, Debug)]
pub struct PinRoot(PathBuf);

impl PinRoot {
    pub fn new(path: impl Into<PathBuf>) -> PinRoot {
        PinRoot(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The pin directory of one attachment.
    pub fn dir(&self, attachment: &Attachment) -> PathBuf {
        let netns_dir = attachment.netns.name().unwrap_or(HOST_NETNS_DIR);
        self.0.join(netns_dir).join(&attachment.iface)
    }

    /// Attachments that have a pinned flow table, optionally only those in `netns` and/or named
    /// `iface`, sorted. A missing pin root means none.
    pub fn discover(
        &self,
        netns: Option<&Netns>,
        iface: Option<&str>,
    ) -> anyhow::Result<Vec<Attachment>> {
        let mut found = Vec::new();
        for netns_dir in subdirectories(&self.0)? {
            let dir_netns = if netns_dir == HOST_NETNS_DIR {
                Netns::Host
            } else {
                Netns::Named(netns_dir.clone())
            };
            if netns.is_some_and(|wanted| *wanted != dir_netns) {
                continue;
            }
            for iface_dir in subdirectories(&self.0.join(&netns_dir))? {
                let attachment = Attachment {
                    netns: dir_netns.clone(),
                    iface: iface_dir,
                };
                let wanted = iface.is_none_or(|wanted| wanted == attachment.iface);
                if wanted && self.dir(&attachment).join(FLOWS_MAP).exists() {
                    found.push(attachment);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Creates the pin directory of `attachment`, mounting bpffs at /sys/fs/bpf first if it is
    /// not there, and checks that the directory is on bpffs (pinning fails obscurely otherwise).
    pub fn create_dir(&self, attachment: &Attachment) -> anyhow::Result<PathBuf> {
        mount_bpffs_if_missing()?;
        let dir = self.dir(attachment);
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating pin directory {}", dir.display()))?;
        if !is_bpffs(&dir)? {
            bail!(
                "pin directory {} is not on a bpf filesystem; choose a --pin-root under {BPFFS_MOUNT_POINT}",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// Removes the pins of `attachment` and the directories left empty up to and including the
    /// pin root. Returns the removed directory, or `None` when there was none.
    pub fn purge(&self, attachment: &Attachment) -> anyhow::Result<Option<PathBuf>> {
        let dir = self.dir(attachment);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("removing pins in {}", dir.display()))
            }
        }
        for parent in dir.ancestors().skip(1) {
            // Stops at the first directory that is not empty (or not ours to remove).
            if !parent.starts_with(&self.0) || fs::remove_dir(parent).is_err() {
                break;
            }
        }
        Ok(Some(dir))
    }

    /// The command line that removes the pins of `attachment` under this root.
    pub fn purge_command(&self, attachment: &Attachment) -> String {
        let mut command = String::from("flagtrace");
        if let Some(name) = attachment.netns.name() {
            command += &format!(" --netns {name}");
        }
        if self.0 != Path::new(DEFAULT_PIN_ROOT) {
            command += &format!(" --pin-root {}", self.0.display());
        }
        command + &format!(" detach {} --purge", attachment.iface)
    }
}

/// Names of the directories in `dir`; none when `dir` does not exist.
fn subdirectories(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let is_dir = entry
            .file_type()
            .with_context(|| format!("reading {}", entry.path().display()))?
            .is_dir();
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn mount_bpffs_if_missing() -> anyhow::Result<()> {
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    let target = c_path(mount_point)?;
    // SAFETY: all pointers are valid NUL-terminated strings; the data argument is a mount option
    // string, as mount(2) expects for bpffs.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs on {BPFFS_MOUNT_POINT}"));
    }
    log::info!("mounted bpffs on {BPFFS_MOUNT_POINT}");
    Ok(())
}

fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c_path = c_path(path)?;
    let mut stat = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c_path is NUL-terminated and stat is large enough for statfs to fill.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    // SAFETY: statfs succeeded, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_type == libc::BPF_FS_MAGIC)
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(netns: Option<&str>, iface: &str) -> Attachment {
        Attachment {
            netns: Netns::from_name(netns),
            iface: iface.into(),
        }
    }

    #[test]
    fn pin_dirs_are_per_namespace_and_interface() {
        let root = PinRoot::new("/sys/fs/bpf/flagtrace");
        assert_eq!(
            root.dir(&attachment(Some("lab1"), "veth0")),
            Path::new("/sys/fs/bpf/flagtrace/lab1/veth0")
        );
        assert_eq!(
            root.dir(&attachment(None, "eth0")),
            Path::new("/sys/fs/bpf/flagtrace/host/eth0")
        );
    }

    #[test]
    fn purge_command_names_namespace_and_non_default_root() {
        let default_root = PinRoot::new(DEFAULT_PIN_ROOT);
        assert_eq!(
            default_root.purge_command(&attachment(None, "eth0")),
            "flagtrace detach eth0 --purge"
        );
        let other_root = PinRoot::new("/sys/fs/bpf/t1");
        assert_eq!(
            other_root.purge_command(&attachment(Some("lab"), "veth0")),
            "flagtrace --netns lab --pin-root /sys/fs/bpf/t1 detach veth0 --purge"
        );
    }

    /// A scratch directory removed on drop, so a failing assertion leaves nothing behind.
    struct ScratchDir(PathBuf);

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn discover_filters_and_purge_removes_empty_parents() {
        // Plain directories stand in for bpffs here: discovery only looks for the FLOWS file.
        let scratch =
            ScratchDir(std::env::temp_dir().join(format!("flagtrace-pins-{}", std::process::id())));
        let root_path = scratch.0.join("root");
        let root = PinRoot::new(&root_path);
        let all = [
            attachment(None, "eth0"),
            attachment(Some("lab"), "veth0"),
            attachment(Some("lab"), "veth1"),
        ];
        for a in &all {
            fs::create_dir_all(root.dir(a)).unwrap();
            fs::write(root.dir(a).join(FLOWS_MAP), b"").unwrap();
        }
        // A directory without a flow table is not an attachment.
        fs::create_dir_all(root_path.join("lab").join("stale")).unwrap();

        assert_eq!(root.discover(None, None).unwrap(), all);
        let lab = Netns::Named("lab".into());
        assert_eq!(root.discover(Some(&lab), None).unwrap(), all[1..]);
        assert_eq!(root.discover(None, Some("veth1")).unwrap(), all[2..]);
        assert_eq!(root.discover(Some(&Netns::Host), None).unwrap(), all[..1]);

        assert_eq!(root.purge(&all[0]).unwrap(), Some(root.dir(&all[0])));
        assert!(!root_path.join(HOST_NETNS_DIR).exists());
        assert_eq!(root.purge(&all[0]).unwrap(), None);
        root.purge(&all[1]).unwrap();
        assert!(root_path.join("lab").exists(), "lab still holds veth1");

        fs::remove_dir_all(&root_path).unwrap();
        assert!(root.discover(None, None).unwrap().is_empty());
    }
}
