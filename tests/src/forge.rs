//! Forged TCP resets for the lab tool `ft-lab`: an AF_PACKET socket on one interface, the TCP
//! segments it sniffs, and the RSTs a middlebox answers them with. Frames are parsed and built
//! with etherparse, checksums included, so the receiving stack accepts them.

use std::{
    ffi::CString,
    io, mem,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use etherparse::{LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// What a forger needs to know about one sniffed TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// The acknowledgement number, when the ACK flag is set.
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload_len: u32,
}

impl Segment {
    /// `None` for anything but TCP over IPv4 or IPv6 in an Ethernet II frame.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            return None;
        };
        let (src, dst): (IpAddr, IpAddr) = match packet.net.as_ref()? {
            NetSlice::Ipv4(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Ipv6(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Arp(_) => return None,
        };
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            return None;
        };
        Some(Self {
            src_mac: ethernet.source(),
            dst_mac: ethernet.destination(),
            src: SocketAddr::new(src, tcp.source_port()),
            dst: SocketAddr::new(dst, tcp.destination_port()),
            seq: tcp.sequence_number(),
            ack: tcp.ack().then(|| tcp.acknowledgment_number()),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload_len: tcp.payload().len() as u32,
        })
    }

    /// A connection's opening SYN (no ACK).
    pub fn is_syn(&self) -> bool {
        self.syn && self.ack.is_none()
    }

    /// The sequence number that follows this segment: the next one its receiver expects.
    pub fn seq_end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload_len)
            .wrapping_add(u32::from(self.syn) + u32::from(self.fin))
    }
}

/// What a device that holds a SYN answers it with, as the real one in the seed story did: a
/// RST+ACK as if from the server the SYN was for (seq 0, ack = the SYN's seq + 1), from the
/// device's own MAC to the client's.
pub fn refusal(syn: &Segment, our_mac: [u8; 6], ttl: u8) -> Vec<u8> {
    reset_frame(
        (our_mac, syn.src_mac),
        (syn.dst, syn.src),
        0,
        syn.seq_end(),
        ttl,
    )
}

/// What an on-path injector sends the receiver of `data` to kill its connection: a RST+ACK as if
/// from the data's sender, carrying exactly the sequence number the receiver expects next, so
/// its stack accepts it (RFC 5961 would answer any other in-window number with a challenge
/// ACK). From the injector's own MAC to the receiver's.
pub fn injected_reset(data: &Segment, our_mac: [u8; 6], ttl: u8) -> Vec<u8> {
    reset_frame(
        (our_mac, data.dst_mac),
        (data.src, data.dst),
        data.seq_end(),
        data.ack.unwrap_or(0),
        ttl,
    )
}

/// What an on-path injector sends the sender of `request` to kill its connection while it waits
/// for the answer: a RST+ACK as if from the request's receiver, carrying exactly the sequence
/// number the sender expects next (the one its request acknowledged), and acknowledging the
/// request's data. Not a FIN that came with it: the injector keys on the payload. From `our_mac`
/// to the sender's.
pub fn reset_answering(request: &Segment, our_mac: [u8; 6], ttl: u8) -> Vec<u8> {
    reset_frame(
        (our_mac, request.src_mac),
        (request.dst, request.src),
        request.ack.unwrap_or(0),
        request.seq.wrapping_add(request.payload_len),
        ttl,
    )
}

/// A RST+ACK frame with window 0, as Linux sends them; IPv4 with DF and IP ID 0.
fn reset_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, dst): (SocketAddr, SocketAddr),
    seq: u32,
    ack: u32,
    ttl: u8,
) -> Vec<u8> {
    let ethernet = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ethernet.ipv4(src.octets(), dst.octets(), ttl),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet.ipv6(src.octets(), dst.octets(), ttl),
        _ => unreachable!("the two addresses of one segment are of one family"),
    };
    let builder = ip.tcp(src.port(), dst.port(), seq, 0).rst().ack(ack);
    let mut frame = Vec::with_capacity(builder.size(0));
    builder
        .write(&mut frame, &[])
        .expect("writing a frame into a Vec cannot fail");
    frame
}

/// A raw socket on one interface of the current network namespace: every frame that arrives
/// (in promiscuous mode, so also frames for other hosts on the segment), and frames sent as is.
pub struct PacketSocket {
    fd: OwnedFd,
    iface: String,
    mac: [u8; 6],
}

/// The largest frame a veth hands over (a GRO or GSO aggregate), with room to spare.
const MAX_FRAME: usize = 65_536 + 1_024;

impl PacketSocket {
    pub fn open(iface: &str) -> Result<Self> {
        let name = CString::new(iface).with_context(|| format!("interface name {iface:?}"))?;
        // SAFETY: a NUL-terminated name that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {iface} in this network namespace");
        }
        // Protocol 0 receives nothing until the bind below, so no frame of another interface
        // slips in between.
        // SAFETY: plain socket(2); the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .context("opening an AF_PACKET socket (needs CAP_NET_RAW)");
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut socket = Self {
            fd,
            iface: iface.to_owned(),
            mac: [0; 6],
        };
        socket.bind(ifindex)?;
        socket.enter_promiscuous_mode(ifindex)?;
        socket.mac = socket.read_mac(&name)?;
        Ok(socket)
    }

    fn bind(&self, ifindex: u32) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: a valid sockaddr_ll and its size.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        self.check(rc, "binding the packet socket")
    }

    /// An injector must see the frames addressed to the other hosts on its segment.
    fn enter_promiscuous_mode(&self, ifindex: u32) -> Result<()> {
        let request = libc::packet_mreq {
            mr_ifindex: ifindex as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // SAFETY: a valid packet_mreq and its size; the membership ends with the socket.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&request as *const libc::packet_mreq).cast(),
                mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        self.check(rc, "entering promiscuous mode")
    }

    fn read_mac(&self, name: &CString) -> Result<[u8; 6]> {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { mem::zeroed() };
        for (to, from) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
            *to = *from as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills the ifreq it is given.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) };
        self.check(rc, "reading the interface's MAC address")?;
        // SAFETY: SIOCGIFHWADDR set the hwaddr member of the union.
        let hwaddr = unsafe { request.ifr_ifru.ifru_hwaddr };
        Ok(std::array::from_fn(|i| hwaddr.sa_data[i] as u8))
    }

    fn check(&self, rc: libc::c_int, what: &str) -> Result<()> {
        if rc < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{what} on {}", self.iface));
        }
        Ok(())
    }

    /// This interface's MAC address: the source of everything a forger here sends.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The next frame that arrived on the interface, or `None` after `timeout`. Frames this
    /// host sent are skipped: a forger must not answer itself.
    pub fn receive(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut frame = vec![0u8; MAX_FRAME];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, millis) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error).with_context(|| format!("polling on {}", self.iface));
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: the buffer and the address are valid for the sizes given.
            let len = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if len < 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("receiving on {}", self.iface));
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                frame.truncate(len as usize);
                return Ok(Some(frame));
            }
        }
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: the buffer is valid for its length; the socket is bound to the interface.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending a frame on {}", self.iface));
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff`, the way `ip link` and flagtrace print MACs.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// The MAC that [`mac_string`] prints, in either case; `None` for anything else.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let octets: Vec<u8> = text
        .split(':')
        .map(|octet| match octet.len() {
            2 => u8::from_str_radix(octet, 16).ok(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    octets.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::TcpSlice;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const ROUTER_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];
    const INJECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

    fn syn_v4() -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4([10, 0, 1, 1], [10, 0, 2, 1], 64)
            .tcp(40000, 443, 1_000_000, 64240)
            .syn();
        let mut frame = Vec::new();
        builder.write(&mut frame, &[]).unwrap();
        frame
    }

    fn data_v6(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(ROUTER_MAC, CLIENT_MAC)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(8000, 40000, u32::MAX - 2, 512)
            .ack(77);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    /// The frame's TCP header, after checking the IP and TCP checksums it carries.
    fn checked_tcp(frame: &[u8]) -> (SlicedPacket<'_>, TcpSlice<'_>) {
        let packet = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = packet.transport.clone() else {
            panic!("not TCP")
        };
        let expected = match packet.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let header = ip.header();
                assert_eq!(
                    header.to_header().calc_header_checksum(),
                    header.header_checksum()
                );
                tcp.calc_checksum_ipv4(header.source(), header.destination())
                    .unwrap()
            }
            NetSlice::Ipv6(ip) => tcp
                .calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                .unwrap(),
            NetSlice::Arp(_) => panic!("not IP"),
        };
        assert_eq!(tcp.checksum(), expected, "TCP checksum");
        (packet, tcp)
    }

    #[test]
    fn parses_a_syn() {
        let syn = Segment::parse(&syn_v4()).unwrap();
        assert_eq!(syn.src, "10.0.1.1:40000".parse().unwrap());
        assert_eq!(syn.dst, "10.0.2.1:443".parse().unwrap());
        assert_eq!((syn.src_mac, syn.dst_mac), (CLIENT_MAC, ROUTER_MAC));
        assert!(syn.is_syn() && !syn.rst && !syn.fin);
        assert_eq!((syn.seq, syn.ack, syn.payload_len), (1_000_000, None, 0));
        assert_eq!(syn.seq_end(), 1_000_001);
    }

    #[test]
    fn a_refusal_answers_the_syn_from_the_server_and_our_mac() {
        let syn = Segment::parse(&syn_v4()).unwrap();
        let frame = refusal(&syn, ROUTER_MAC, 64);
        let (packet, tcp) = checked_tcp(&frame);
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            panic!("not Ethernet II")
        };
        assert_eq!(ethernet.source(), ROUTER_MAC);
        assert_eq!(ethernet.destination(), CLIENT_MAC);
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source(), [10, 0, 2, 1]);
        assert_eq!(ip.header().destination(), [10, 0, 1, 1]);
        assert_eq!(ip.header().ttl(), 64);
        assert!(ip.header().dont_fragment());
        assert_eq!((tcp.source_port(), tcp.destination_port()), (443, 40000));
        assert!(tcp.rst() && tcp.ack() && !tcp.syn() && !tcp.fin());
        assert_eq!(tcp.sequence_number(), 0);
        assert_eq!(tcp.acknowledgment_number(), 1_000_001);
        assert!(tcp.payload().is_empty());
        assert_eq!(Segment::parse(&frame).unwrap().seq_end(), 0);
    }

    #[test]
    fn an_injected_reset_carries_the_next_expected_sequence() {
        let data = Segment::parse(&data_v6(b"hello")).unwrap();
        assert_eq!(data.payload_len, 5);
        let frame = injected_reset(&data, INJECTOR_MAC, 64);
        let (packet, tcp) = checked_tcp(&frame);
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            panic!("not Ethernet II")
        };
        assert_eq!(ethernet.source(), INJECTOR_MAC);
        assert_eq!(ethernet.destination(), CLIENT_MAC);
        let Some(NetSlice::Ipv6(ip)) = &packet.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().source(), [0xfd; 16]);
        assert_eq!(ip.header().destination(), [0xfe; 16]);
        assert_eq!(ip.header().hop_limit(), 64);
        assert_eq!((tcp.source_port(), tcp.destination_port()), (8000, 40000));
        assert!(tcp.rst() && tcp.ack());
        // The sequence space wraps: u32::MAX - 2 + 5 bytes.
        assert_eq!(tcp.sequence_number(), 2);
        assert_eq!(tcp.acknowledgment_number(), 77);
    }

    #[test]
    fn a_reset_answering_a_request_carries_what_its_sender_expects() {
        // The client's 7-byte request, with its FIN, to the server that is to be impersonated.
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4([10, 0, 1, 1], [10, 0, 2, 1], 64)
            .tcp(40000, 443, u32::MAX - 2, 64240)
            .ack(5000)
            .fin();
        let mut request = Vec::new();
        builder.write(&mut request, b"request").unwrap();
        let request = Segment::parse(&request).unwrap();
        let frame = reset_answering(&request, ROUTER_MAC, 128);
        let (packet, tcp) = checked_tcp(&frame);
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            panic!("not Ethernet II")
        };
        assert_eq!(ethernet.source(), ROUTER_MAC);
        assert_eq!(ethernet.destination(), CLIENT_MAC);
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source(), [10, 0, 2, 1]);
        assert_eq!(ip.header().destination(), [10, 0, 1, 1]);
        assert_eq!(ip.header().ttl(), 128);
        assert_eq!((tcp.source_port(), tcp.destination_port()), (443, 40000));
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.sequence_number(), 5000);
        // The data's end, wrapped; the FIN after it is not acknowledged.
        assert_eq!(tcp.acknowledgment_number(), 4);
    }

    #[test]
    fn non_tcp_frames_are_not_segments() {
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4([10, 0, 1, 1], [10, 0, 2, 1], 64)
            .udp(53, 53);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"dns").unwrap();
        assert_eq!(Segment::parse(&frame), None);
        assert_eq!(Segment::parse(&[0u8; 10]), None);
    }

    #[test]
    fn macs_print_like_ip_link_and_read_back() {
        assert_eq!(mac_string(ROUTER_MAC), "00:01:d7:3c:5e:01");
        assert_eq!(parse_mac("00:01:D7:3c:5e:01"), Some(ROUTER_MAC));
        for wrong in [
            "00:01:d7:3c:5e",
            "00:01:d7:3c:5e:01:02",
            "0:01:d7:3c:5e:01",
            "zz",
        ] {
            assert_eq!(parse_mac(wrong), None, "{wrong}");
        }
    }
}
