//! What a verdict is made of: who reset (the decision), and the typed signals it rests on, each
//! with its numbers. Data only: `super` decides, `crate::output::evidence` puts them into words.

use std::fmt;

use serde::{Serialize, Serializer};
use tracer_common::Hook;

use crate::analysis::mac::MacAddr;

/// Who sent a RST, as far as the evidence tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetBy {
    Endpoint,
    Middlebox,
    Unknown,
}

impl ResetBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetBy::Endpoint => "endpoint",
            ResetBy::Middlebox => "middlebox",
            ResetBy::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ResetBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ResetBy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the middlebox that sent a RST had to do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MiddleboxRole {
    /// It had terminated the connection: it answered the handshake, and reset.
    Proxy,
    /// The endpoints had the connection (or no handshake was answered), and a box on the path
    /// sent the RST in an endpoint's name: a firewall's reject, an idle timeout, an injector.
    OnPath,
}

impl MiddleboxRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MiddleboxRole::Proxy => "proxy",
            MiddleboxRole::OnPath => "on_path",
        }
    }
}

/// A side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// The verdict on a flow that carried a RST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reset_by: ResetBy,
    /// For a middlebox's RST, what the box had to do with the connection.
    pub middlebox_role: Option<MiddleboxRole>,
    /// The side the deciding RST claims to come from.
    pub rst_from: Role,
    /// What the verdict rests on, the deciding signals first: the first one sums it up.
    pub signals: Vec<Signal>,
}

/// How much a signal weighs, in the order signals are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// Enough alone to call the RST forged.
    Strong,
    /// The RST set against its baseline, when they agree; or the absence of a baseline.
    Comparison,
    /// Reported, never enough alone.
    Supporting,
}

/// One fact about a side's RSTs, with its numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signal {
    /// The side whose RSTs it is about.
    pub from: Role,
    pub weight: Weight,
    #[serde(flatten)]
    pub kind: SignalKind,
}

/// What a RST was compared with: the sender's packets on this connection, or on others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum BaselineOf {
    ThisConnection,
    OtherConnections { count: usize },
}

/// The kinds of [`Signal`]. TTLs are TTLs for IPv4, hop limits for IPv6; hops are counted down
/// from the next common initial TTL ([`hops`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum SignalKind {
    /// The RST's TTL against the sender's usual one (strong at another hop distance).
    TtlComparison {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        rst_ttl: u8,
        rst_hops: u8,
        usual_ttl: u8,
        usual_hops: u8,
        baseline: BaselineOf,
        relation: TtlRelation,
    },
    /// The RST differs from this connection's SYN/ACK, and agrees with the host's packets after
    /// a handshake on other connections: a SYN proxy answered the handshake, the host reset.
    SynProxyHandshake {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        handshake_ttl: u8,
        handshake_hops: u8,
        rst_ttl: u8,
        rst_hops: u8,
        connections: usize,
    },
    /// The RST agrees with this connection's SYN/ACK, and the host's packets after a handshake
    /// on other connections come from another distance: a proxy answered this connection (its
    /// handshake and its RST) in the host's name.
    ProxyAnswered {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        proxy_ttl: u8,
        proxy_hops: u8,
        host_ttl: u8,
        host_hops: u8,
        connections: usize,
    },
    /// The RST differs from this connection's SYN/ACK, and no packet of the host after a
    /// handshake was seen to tell a SYN proxy's handshake from a forged RST.
    HandshakeOnlyDiffers {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        rst_ttl: u8,
        rst_hops: u8,
        handshake_ttl: u8,
        handshake_hops: u8,
    },
    /// The RST came from (or went to) another L2 neighbour than the sender's packets.
    MacDifference {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        rst_mac: MacAddr,
        usual_mac: MacAddr,
        baseline: BaselineOf,
    },
    /// The RST's IPv4 ID is 0 (`distance` null) or far from the sender's.
    IpIdOutOfLine {
        rst_ip_id: u16,
        usual_ip_id: u16,
        distance: Option<u16>,
        baseline: BaselineOf,
    },
    /// No normal packet of the sender was seen on the RST's hook, on any connection.
    NoBaseline {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
    },
    /// After its RST the sender sent data at or beyond the RST's sequence (a race).
    DataAfterRst {
        rst_seq: u32,
        packets_after: u32,
        bytes_beyond: u32,
    },
    /// After its RST the sender acknowledged data its RST did not (a race).
    AckAfterRst {
        rst_ack: u32,
        packets_after: u32,
        ack_beyond: u32,
    },
    /// After its RST the sender sent packets, none with data beyond its sequence.
    PacketsAfterRst { rst_seq: u32, packets_after: u32 },
    /// Back-to-back RSTs (within `window_ns`) whose sequence numbers jump.
    SequenceJump { jump: u32, window_ns: u64 },
    /// Several RSTs carried one sequence number.
    RepeatedSequence { rsts: u32, seq: u32 },
    /// A refusal long after the SYN, while the server answered others promptly.
    SlowRefusal {
        delay_ns: u64,
        prompt_answers: usize,
    },
    /// The kernel kept no evidence of the flow's RSTs.
    EvidenceLost,
}

fn hook_name<S: Serializer>(hook: &Hook, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(hook.name())
}

impl Signal {
    pub(super) fn new(from: Role, weight: Weight, kind: SignalKind) -> Signal {
        Signal { from, weight, kind }
    }
}

/// How a RST's TTL stands to another packet's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlRelation {
    /// Within [`TTL_TOLERANCE`]: one sender, or a route change.
    Agrees,
    /// Another hop distance: another box.
    OtherDistance,
    /// The same distance from another initial TTL: another host there (a load balancer's
    /// backend) or a transparent box; never a middlebox on that alone.
    OtherInitialTtl,
}
