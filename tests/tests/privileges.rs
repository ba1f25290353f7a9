//! A capable user that is not root (uid 65534 with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and, for
//! `--netns`, CAP_SYS_ADMIN, through `setpriv`) runs flagtrace like root on a pin root of its
//! own; a missing capability is named before anything is loaded; root's pins (mode 0600) are
//! refused with exit 3 and a message that says whose they are.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use flagtrace_tests::{
    lab::{echo_between, flagtrace_bin, run, Daemon, Family, Loader, VethLab, READY_PREFIX},
    tracer::PinDir,
};
use serde_json::Value;

const NOBODY: u32 = 65534;
/// What `attach --netns` needs.
const ATTACH_CAPS: &str = "+bpf,+net_admin,+perfmon,+sys_admin";

/// `flagtrace ARGS` as uid and gid 65534 with `caps` (inheritable and ambient, so that they
/// survive the exec).
fn as_nobody(caps: &str, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
        ])
        .args(["--clear-groups", "--inh-caps", caps, "--ambient-caps", caps])
        .arg(flagtrace_bin())
        .args(args);
    command
}

fn root_arg(pins: &Path) -> &str {
    pins.to_str().expect("UTF-8 pin root")
}

#[test]
fn a_capable_user_runs_everything_on_a_pin_root_of_its_own() {
    let pins = PinDir::create().expect("pin root");
    std::os::unix::fs::chown(pins.path(), Some(NOBODY), Some(NOBODY)).expect("chown pin root");
    let lab = VethLab::create();
    let netns = lab.client.netns.name();
    let root = root_arg(pins.path());

    // Without CAP_PERFMON the verifier would refuse the programs: named before anything else
    // (with --netns, CAP_SYS_ADMIN stands in for it, so this asks for no namespace; the
    // interface does not exist, so nothing could be attached even if the check let it pass).
    let output = run(&mut as_nobody(
        "+bpf,+net_admin",
        &["--pin-root", root, "attach", "ft-no-such0"],
    ));
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CAP_PERFMON"), "{stderr}");

    let loader = Daemon::start(
        &mut as_nobody(
            ATTACH_CAPS,
            &[
                "--netns",
                netns,
                "--pin-root",
                root,
                "attach",
                lab.client.iface,
            ],
        ),
        READY_PREFIX,
    );
    let (client, _) = echo_between(&lab.client, &lab.server, Family::V4, 8080, b"hello");
    // The pins are the user's own, 0600: documented in the README.
    let flows_pin = pins.path().join(netns).join(lab.client.iface).join("FLOWS");
    let metadata = std::fs::metadata(&flows_pin).expect("the FLOWS pin");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&metadata),
            metadata.permissions().mode() & 0o777
        ),
        (NOBODY, 0o600)
    );
    for command in ["flows", "resets", "stats"] {
        let output = run(&mut as_nobody(
            "+bpf",
            &["--pin-root", root, command, "--json"],
        ));
        assert!(output.status.success(), "{command}: {output:?}");
        if command == "flows" {
            let flows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|line| serde_json::from_str(line).expect("a JSON line"))
                .collect();
            assert!(
                flows
                    .iter()
                    .any(|flow| flow["client"] == client.to_string()),
                "{flows:#?}"
            );
        }
    }
    drop(loader);
    let output = run(&mut as_nobody(
        ATTACH_CAPS,
        &[
            "--netns",
            netns,
            "--pin-root",
            root,
            "detach",
            lab.client.iface,
            "--purge",
        ],
    ));
    assert!(output.status.success(), "detach --purge: {output:?}");
}

#[test]
fn roots_pins_are_refused_with_whose_they_are() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let output = run(&mut as_nobody(
        "+bpf",
        &["--pin-root", root_arg(pins.path()), "stats"],
    ));
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("belongs to uid 0 with mode 0600"),
        "{stderr}"
    );
}
