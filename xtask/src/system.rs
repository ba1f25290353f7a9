//! Facts about the machine that xtask's tasks depend on: who we are, what is mounted, where
//! programs are. The parsers are pure so they can be tested on fixed text.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

pub const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

pub fn is_root() -> Result<bool> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = effective_uid(&status).context("no Uid line in /proc/self/status")?;
    Ok(euid == 0)
}

/// The effective uid from /proc/PID/status: `Uid:` is followed by real, effective, saved, fs.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn bpffs_mounted() -> Result<bool> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    Ok(has_mount(&mountinfo, BPFFS_MOUNT_POINT, "bpf"))
}

/// Whether a filesystem of type `fstype` is mounted at `mount_point`, per proc(5) mountinfo:
/// the mount point is field 5, and the filesystem type is the first field after the `-`
/// separator (optional fields before it vary in number).
fn has_mount(mountinfo: &str, mount_point: &str, fstype: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        if fields.nth(4) != Some(mount_point) {
            return false;
        }
        fields.skip_while(|f| *f != "-").nth(1) == Some(fstype)
    })
}

/// Where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    Some(cargo_home.join("bin"))
}

/// `path` (a PATH value) with `dir` in front, or `None` when `dir` is already in it.
pub fn path_with_dir_first(path: Option<&OsString>, dir: &Path) -> Option<OsString> {
    let dirs: Vec<PathBuf> = path
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .collect();
    if dirs.iter().any(|d| d == dir) {
        return None;
    }
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(dirs)).ok()
}

/// The first executable called `name` in the directories of `path` (a PATH value).
pub fn find_on_path(name: &str, path: Option<&OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    path.map(std::env::split_paths)
        .into_iter()
        .flatten()
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status =
            "Name:\tsudo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    const MOUNTINFO: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 22 0:30 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 master:3 - bpf bpf rw,mode=700
36 28 0:31 / /tmp/bpf rw,relatime - bpf none rw
37 28 0:32 / /mnt rw,relatime - tmpfs /sys/fs/bpf rw
";

    #[test]
    fn finds_bpffs_with_any_number_of_optional_fields() {
        assert!(has_mount(MOUNTINFO, "/sys/fs/bpf", "bpf"));
        assert!(has_mount(MOUNTINFO, "/tmp/bpf", "bpf"));
    }

    #[test]
    fn bpffs_elsewhere_or_another_fs_there_does_not_count() {
        let sysfs_only = MOUNTINFO.lines().next().unwrap();
        assert!(!has_mount(sysfs_only, "/sys/fs/bpf", "bpf"));
        // The mount source naming /sys/fs/bpf is not the mount point.
        assert!(!has_mount(MOUNTINFO, "/mnt", "bpf"));
        let tmpfs_on_bpf = "40 22 0:40 / /sys/fs/bpf rw - tmpfs tmpfs rw\n";
        assert!(!has_mount(tmpfs_on_bpf, "/sys/fs/bpf", "bpf"));
        assert!(!has_mount("", "/sys/fs/bpf", "bpf"));
    }

    #[test]
    fn cargo_bin_goes_first_once() {
        let dir = Path::new("/root/.cargo/bin");
        let path = OsString::from("/usr/bin:/bin");
        assert_eq!(
            path_with_dir_first(Some(&path), dir),
            Some(OsString::from("/root/.cargo/bin:/usr/bin:/bin"))
        );
        let already = OsString::from("/usr/bin:/root/.cargo/bin");
        assert_eq!(path_with_dir_first(Some(&already), dir), None);
        assert_eq!(
            path_with_dir_first(None, dir),
            Some(OsString::from("/root/.cargo/bin"))
        );
    }

    #[test]
    fn finds_executables_in_path_order() {
        let path = OsString::from("/nonexistent-dir:/bin:/usr/bin");
        let sh = find_on_path("sh", Some(&path)).expect("sh on /bin or /usr/bin");
        assert!(sh.ends_with("sh"));
        assert_eq!(
            find_on_path("flagtrace-xtask-no-such-program", Some(&path)),
            None
        );
        // /etc/passwd exists but is not executable.
        assert_eq!(find_on_path("passwd", Some(&OsString::from("/etc"))), None);
    }
}
