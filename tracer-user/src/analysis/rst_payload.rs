//! What a RST's payload says. RFC 9293 (3.5.3) lets a RST carry data "that encodes and explains
//! the cause of the RST"; two forms are met:
//! - the diagnostic payload of draft-ietf-tcpm-rst-diagnostic-payload (-02, sections 4 and
//!   9.1): exactly 8 bytes, a magic number 0x33AA, a 16-bit reason code (0 reserved) and the
//!   32-bit Private Enterprise Number of whoever defined the code (0: the IETF registry);
//! - plain text, such as an F5 BIG-IP's reset cause when `tm.rstcause.pkt` is on
//!   (`BIG-IP: [0x235ef8f:2618] No local listener`), shown verbatim.
//!
//! Anything else is shown as the hex of its first bytes, as tcpdump would show it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::analysis::flow::KeptPayload;

/// The draft's magic number: the payload's first two bytes.
const DIAGNOSTIC_MAGIC: [u8; 2] = [0x33, 0xaa];
/// The diagnostic payload's length: the draft allows no other.
const DIAGNOSTIC_LEN: usize = 8;

/// The initial "TCP Failure Causes" registry (draft -02, 9.1), by code; 0 is reserved. Later
/// codes have no name here.
const FAILURE_CAUSES: [&str; 18] = [
    "Reserved",
    "Illegal option length",
    "Desynchronized state",
    "New data is received after CLOSE is called",
    "ABORT process",
    "Unexpected ACK received by non-synchronized state connection",
    "Unexpected SYN in the window",
    "Unexpected security compartment",
    "Malformed message",
    "Not authorized",
    "Resource exceeded",
    "Network failure",
    "Reset received from the peer",
    "Destination unreachable",
    "Connection timeout",
    "Too much outstanding data",
    "Unacceptable performance",
    "Middlebox interference",
];

/// Private Enterprise Numbers (IANA) of vendors whose boxes reset connections.
const ENTERPRISES: [(u32, &str); 7] = [
    (9, "Cisco"),
    (2620, "Check Point"),
    (2636, "Juniper Networks"),
    (3375, "F5 Networks"),
    (5951, "Citrix"),
    (12356, "Fortinet"),
    (25461, "Palo Alto Networks"),
];

/// A RST payload, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RstPayload {
    /// The payload's full length in bytes.
    pub bytes: u16,
    /// The draft's reason code; `None` for another form.
    pub code: Option<u16>,
    /// The Private Enterprise Number that defines `code` (0: IETF).
    pub pen: Option<u32>,
    /// The IETF registry's name of `code`, when `pen` is 0 and the code is registered.
    pub reason: Option<&'static str>,
    /// Who `pen` is, when it is a vendor flagtrace knows.
    pub enterprise: Option<&'static str>,
    /// The payload as text: printable ASCII, other bytes escaped,
    /// up to the first NUL; `...` after it when only its first bytes were kept.
    pub text: Option<String>,
    /// The first bytes kept, in hex.
    pub hex: String,
}

/// Decodes a kept payload; `None` for an empty one.
pub fn decode(payload: &KeptPayload) -> Option<RstPayload> {
    let kept = payload.bytes();
    if kept.is_empty() {
        return None;
    }
    let cut = usize::from(payload.len) > kept.len();
    let hex = kept.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    });
    let diagnostic = match kept.strip_prefix(&DIAGNOSTIC_MAGIC) {
        Some(rest) if usize::from(payload.len) == DIAGNOSTIC_LEN => {
            let code = u16::from_be_bytes([rest[0], rest[1]]);
            let pen = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
            // Code 0 is reserved: such a payload is malformed, and the draft says to ignore it.
            (code != 0).then_some((code, pen))
        }
        _ => None,
    };
    let decoded = match diagnostic {
        Some((code, pen)) => RstPayload {
            bytes: payload.len,
            code: Some(code),
            pen: Some(pen),
            reason: (pen == 0)
                .then(|| FAILURE_CAUSES.get(usize::from(code)).copied())
                .flatten(),
            enterprise: ENTERPRISES
                .iter()
                .find(|(number, _)| *number == pen)
                .map(|(_, name)| *name),
            text: None,
            hex,
        },
        None => RstPayload {
            bytes: payload.len,
            code: None,
            pen: None,
            reason: None,
            enterprise: None,
            text: looks_like_text(kept).then(|| text(kept, cut)).flatten(),
            hex,
        },
    };
    Some(decoded)
}

/// Mostly printable ASCII up to its first NUL: a cause meant to be read.
fn looks_like_text(bytes: &[u8]) -> bool {
    let until_nul = bytes.split(|&byte| byte == 0).next().unwrap_or_default();
    let printable = until_nul
        .iter()
        .filter(|byte| byte.is_ascii_graphic() || **byte == b' ')
        .count();
    !until_nul.is_empty() && printable * 10 >= until_nul.len() * 9
}

/// `bytes` up to the first NUL as text, trimmed, anything not printable escaped; `None` when
/// nothing is left.
fn text(bytes: &[u8], cut: bool) -> Option<String> {
    let until_nul = bytes.split(|&byte| byte == 0).next().unwrap_or_default();
    let mut text: String = until_nul
        .trim_ascii()
        .iter()
        .flat_map(|&byte| std::ascii::escape_default(byte).map(char::from))
        .collect();
    if text.is_empty() {
        return None;
    }
    if cut && until_nul.len() == bytes.len() {
        text += "...";
    }
    Some(text)
}

/// The payload in words, for one-line output: `the RST says "No pool member available"`,
/// `the RST carries diagnostic code 2 of PEN 3375 (F5 Networks)`, or `the RST carries
/// diagnostic code 17 (Middlebox interference)`.
pub fn describe(payload: &RstPayload) -> String {
    match (payload.code, payload.pen, &payload.text) {
        (Some(code), Some(0), _) => format!(
            "the RST carries diagnostic code {code} ({})",
            payload
                .reason
                .unwrap_or("not in the registry flagtrace knows")
        ),
        (Some(code), Some(pen), _) => format!(
            "the RST carries diagnostic code {code} of PEN {pen}{}",
            payload
                .enterprise
                .map_or(String::new(), |name| format!(" ({name})"))
        ),
        (_, _, Some(text)) => format!("the RST says \"{text}\""),
        _ => format!(
            "the RST carries {} bytes of data ({}{})",
            payload.bytes,
            payload.hex,
            if usize::from(payload.bytes) * 2 > payload.hex.len() {
                "..."
            } else {
                ""
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8]) -> Option<RstPayload> {
        decode(&KeptPayload::new(bytes))
    }

    #[test]
    fn an_f5_cause_is_shown_verbatim() {
        let payload = decoded(b"No pool member available").unwrap();
        assert_eq!(payload.text.as_deref(), Some("No pool member available"));
        assert_eq!((payload.code, payload.pen, payload.bytes), (None, None, 24));
        assert_eq!(
            describe(&payload),
            "the RST says \"No pool member available\""
        );
        // Trailing NULs and blanks are no part of the text.
        let padded = decoded(b"Policy action \0\0\0").unwrap();
        assert_eq!(padded.text.as_deref(), Some("Policy action"));
    }

    #[test]
    fn a_long_cause_is_marked_as_cut() {
        let long = [b'x'; 100];
        let payload = decoded(&long).unwrap();
        assert_eq!(payload.bytes, 100);
        assert_eq!(payload.text.unwrap(), format!("{}...", "x".repeat(48)));
    }

    fn diagnostic(code: u16, pen: u32) -> Vec<u8> {
        let mut bytes = vec![0x33, 0xaa];
        bytes.extend(code.to_be_bytes());
        bytes.extend(pen.to_be_bytes());
        bytes
    }

    #[test]
    fn the_drafts_diagnostic_payload() {
        let vendor = decoded(&diagnostic(2, 3375)).unwrap();
        assert_eq!(
            (vendor.code, vendor.pen, vendor.text.clone()),
            (Some(2), Some(3375), None)
        );
        assert_eq!(
            describe(&vendor),
            "the RST carries diagnostic code 2 of PEN 3375 (F5 Networks)"
        );
        let ietf = decoded(&diagnostic(17, 0)).unwrap();
        assert_eq!(ietf.reason, Some("Middlebox interference"));
        assert_eq!(
            describe(&ietf),
            "the RST carries diagnostic code 17 (Middlebox interference)"
        );
        assert_eq!(
            describe(&decoded(&diagnostic(300, 0)).unwrap()),
            "the RST carries diagnostic code 300 (not in the registry flagtrace knows)"
        );
        assert_eq!(
            describe(&decoded(&diagnostic(5, 99999)).unwrap()),
            "the RST carries diagnostic code 5 of PEN 99999"
        );
        // Malformed, so ignored as the draft says: another length, or the reserved code 0.
        let mut longer = diagnostic(2, 3375);
        longer.extend(b"pool down");
        assert_eq!(decoded(&longer).unwrap().code, None);
        assert_eq!(decoded(&diagnostic(0, 0)).unwrap().code, None);
        assert_eq!(decoded(&[0x33, 0xaa, 0x00]).unwrap().code, None);
    }

    #[test]
    fn a_big_ip_cause_reads_as_it_came() {
        let payload = decoded(b"BIG-IP: [0x235ef8f:2618] No local listener").unwrap();
        assert_eq!(
            describe(&payload),
            "the RST says \"BIG-IP: [0x235ef8f:2618] No local listener\""
        );
    }

    #[test]
    fn binary_data_is_hex() {
        let payload = decoded(&[0x01, 0x02, 0xff, 0x00]).unwrap();
        assert_eq!((payload.text, payload.hex.as_str()), (None, "0102ff00"));
        assert_eq!(
            describe(&decoded(&[0x01, 0x02, 0xff, 0x00]).unwrap()),
            "the RST carries 4 bytes of data (0102ff00)"
        );
        let long = decoded(&[0x01; 60]).unwrap();
        assert!(describe(&long).ends_with("0101...)"), "{}", describe(&long));
    }

    #[test]
    fn odd_bytes_in_a_text_are_escaped() {
        let payload = decoded(b"reset by \"fw\"\x1b[31m now ok ok ok").unwrap();
        assert_eq!(
            payload.text.as_deref(),
            Some("reset by \\\"fw\\\"\\x1b[31m now ok ok ok")
        );
    }

    #[test]
    fn no_payload_is_none() {
        assert_eq!(decoded(b""), None);
    }
}
