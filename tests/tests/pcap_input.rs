//! `flagtrace pcap` on inputs other than a plain file, and on hostile ones: standard input, a
//! path to a pipe (as `<(zcat x.pcap.gz)` gives), and a FIFO give what the file gives, read in
//! one pass, the direction guessed from the stream's first bytes (a classic pcap does not record
//! it); a pcapng of thousands of one-packet interfaces stays within a memory cap; a pcapng whose
//! every packet is of a link type flagtrace does not read is an error, not an empty answer.
//! Needs no privileges: the frames are built with etherparse and written here.

use std::{
    ffi::CString,
    io::{Read, Write as _},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    process::{Child, Command, Output, Stdio},
    thread,
    time::Duration,
};

use etherparse::PacketBuilder;
use flagtrace_tests::{
    lab::{flagtrace_bin, wait_until},
    TempFile,
};
use serde_json::Value;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The gateway: an F5 Networks OUI.
const GATEWAY_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];
const CLIENT: [u8; 4] = [10, 0, 1, 2];
const SERVER: [u8; 4] = [10, 0, 2, 1];
/// Exit code of a file that is no capture, or none flagtrace can read (README).
const EXIT_NOT_A_CAPTURE: i32 = 9;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP segment between the client (port `client_port`) and the server's port 443, as the
/// client's interface sees it.
fn segment(from_client: bool, client_port: u16, flags: &str) -> Vec<u8> {
    let builder = if from_client {
        PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4(CLIENT, SERVER, 64)
            .tcp(client_port, 443, 1000, 64240)
    } else {
        PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
            .ipv4(SERVER, CLIENT, 57)
            .tcp(443, client_port, 5000, 64240)
    };
    let builder = match flags {
        "syn" => builder.syn(),
        "syn_ack" => builder.syn().ack(1001),
        "rst" => builder.rst().ack(1001),
        "fin" => builder.fin().ack(5001),
        _ => builder.ack(5001),
    };
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).expect("building a frame");
    frame
}

/// A classic pcap (microseconds; no direction) of three connections: two answered and closed,
/// one refused by the server.
fn classic_pcap() -> Vec<u8> {
    let mut frames = Vec::new();
    for port in [40001, 40002] {
        frames.extend([
            segment(true, port, "syn"),
            segment(false, port, "syn_ack"),
            segment(true, port, "ack"),
            segment(true, port, "fin"),
            segment(false, port, "fin"),
        ]);
    }
    frames.extend([segment(true, 40003, "syn"), segment(false, 40003, "rst")]);
    let mut file = Vec::new();
    // Magic, version 2.4 (two 16-bit fields in one word), time zone, accuracy, snap length,
    // Ethernet; little-endian.
    for word in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, 1] {
        file.extend_from_slice(&word.to_le_bytes());
    }
    for (n, frame) in frames.iter().enumerate() {
        let len = frame.len() as u32;
        for word in [1_700_000_000, 10 * n as u32, len, len] {
            file.extend_from_slice(&word.to_le_bytes());
        }
        file.extend_from_slice(frame);
    }
    file
}

/// A pcapng block of `kind` with `body`, padded to 32 bits.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let padded = body.len().div_ceil(4) * 4;
    let len = (12 + padded) as u32;
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&kind.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes.resize(8 + padded, 0);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// A pcapng of `interfaces` interfaces of `link_type`, each carrying one SYN of its own.
fn pcapng_of_interfaces(interfaces: u32, link_type: u16) -> Vec<u8> {
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4d_u32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    let mut file = block(0x0a0d_0d0a, &shb);
    for _ in 0..interfaces {
        let mut idb = Vec::new();
        idb.extend_from_slice(&link_type.to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&65535u32.to_le_bytes());
        file.extend(block(1, &idb));
    }
    for id in 0..interfaces {
        let frame = segment(true, 10_000 + (id % 50_000) as u16, "syn");
        let mut epb = Vec::new();
        for word in [id, 0, id, frame.len() as u32, frame.len() as u32] {
            epb.extend_from_slice(&word.to_le_bytes());
        }
        epb.extend_from_slice(&frame);
        file.extend(block(6, &epb));
    }
    file
}

fn write_temp(bytes: &[u8], extension: &str) -> TempFile {
    let file = TempFile::new("flagtrace-pcap-input", extension);
    std::fs::write(file.path(), bytes).expect("writing a capture");
    file
}

/// Waits for a started `flagtrace` within [`TIMEOUT`], killing it after; its output, read
/// meanwhile so that a full pipe cannot stall it.
fn finish(mut child: Child, what: &str) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut bytes)
                    .expect("reading flagtrace's output");
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let Some(status) = wait_until(&mut child, TIMEOUT) else {
        let _ = child.kill();
        panic!("{what} still running after {TIMEOUT:?}");
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// `flagtrace pcap ARGS` with `stdin` for its standard input.
fn pcap(args: &[&str], stdin: Stdio) -> Child {
    Command::new(flagtrace_bin())
        .arg("pcap")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting flagtrace")
}

/// `flagtrace pcap PATH --json` with `bytes` written into its standard input.
fn pcap_fed(path: &str, bytes: &[u8]) -> Output {
    let mut child = pcap(&[path, "--json"], Stdio::piped());
    let mut stdin = child.stdin.take().expect("stdin");
    let bytes = bytes.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&bytes));
    let output = finish(child, &format!("flagtrace pcap {path}"));
    writer
        .join()
        .expect("writer")
        .expect("writing to flagtrace");
    output
}

/// The flows printed, without the interface name (the file's name, or `stdin`).
fn flows(output: &Output, what: &str) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what}: {}\n{stderr}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut flow: Value = serde_json::from_str(line).expect("a JSON line");
            flow.as_object_mut().expect("an object").remove("iface");
            flow
        })
        .collect()
}

#[test]
fn standard_input_a_pipe_and_a_fifo_read_as_the_file_does() {
    let bytes = classic_pcap();
    let file = write_temp(&bytes, "pcap");
    let from_file = flows(
        &finish(pcap(&[file.as_str(), "--json"], Stdio::null()), "file"),
        "the file",
    );
    assert_eq!(from_file.len(), 1, "the refused connection: {from_file:#?}");
    assert_eq!(from_file[0]["state"], "refused", "{from_file:#?}");
    assert_eq!(from_file[0]["reset_by"], "endpoint", "{from_file:#?}");

    let from_stdin = pcap_fed("-", &bytes);
    assert_eq!(flows(&from_stdin, "stdin"), from_file);
    assert!(
        String::from_utf8_lossy(&from_stdin.stderr).contains("in its first 32 MiB"),
        "the direction guessed from the stream's start: {}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    // A path that names a pipe, as a shell's process substitution does.
    assert_eq!(flows(&pcap_fed("/dev/stdin", &bytes), "a pipe"), from_file);

    let fifo = TempFile::new("flagtrace-pcap-input", "fifo");
    let name = CString::new(fifo.path().as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
    let reader = pcap(&[fifo.as_str(), "--json"], Stdio::null());
    let fifo_path = fifo.path().to_owned();
    let writer = thread::spawn(move || std::fs::write(fifo_path, bytes));
    assert_eq!(flows(&finish(reader, "a FIFO"), "a FIFO"), from_file);
    writer.join().expect("writer").expect("writing the FIFO");
}

/// Runs `flagtrace pcap ARGS` with its address space capped at `bytes`; its output and the most
/// memory it held (bytes).
fn pcap_capped(args: &[&str], bytes: u64) -> (Output, u64) {
    let mut command = Command::new(flagtrace_bin());
    command.arg("pcap").args(args);
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting flagtrace");
    let output = finish(child, "flagtrace pcap");
    (output, max_rss_of_children())
}

/// The largest resident set of the children waited for so far, in bytes.
fn max_rss_of_children() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn thousands_of_one_packet_interfaces_stay_within_a_memory_cap() {
    const INTERFACES: u32 = 4000;
    const CAP: u64 = 1 << 30;
    let bytes = pcapng_of_interfaces(INTERFACES, 1);
    let file = write_temp(&bytes, "pcapng");
    let (output, max_rss) = pcap_capped(&[file.as_str(), "--stats", "--json"], CAP);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    let interfaces = String::from_utf8_lossy(&output.stdout).lines().count();
    assert_eq!(interfaces, INTERFACES as usize);
    eprintln!(
        "{} KB of pcapng, {INTERFACES} interfaces: at most {} MB resident",
        bytes.len() / 1000,
        max_rss / 1_000_000
    );
}

#[test]
fn only_unreadable_link_types_is_an_error_naming_them() {
    // LINKTYPE_USER0: nothing flagtrace reads.
    let file = write_temp(&pcapng_of_interfaces(3, 147), "pcapng");
    let output = finish(pcap(&[file.as_str()], Stdio::null()), "pcap");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_NOT_A_CAPTURE), "{stderr}");
    assert!(
        stderr.contains("skipped 3 packets")
            && stderr.contains("link type flagtrace does not read (147)"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
