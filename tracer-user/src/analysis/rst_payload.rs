//! What a RST's payload says. RFC 9293 (3.5.3) lets a RST carry data "that encodes and explains
//! the cause of the RST"; two forms are met:
//! - the diagnostic payload of draft-ietf-tcpm-rst-diagnostic-payload: a magic number 0x33AA,
//!   a 16-bit reason code, the 32-bit Private Enterprise Number of whoever defined the code,
//!   then optionally a description in UTF-8;
//! - plain text, such as an F5 BIG-IP's reset cause when `tm.rstcause.pkt` is on ("No pool
//!   member available"), shown verbatim.
//!
//! Anything else is shown as the hex of its first bytes, as tcpdump would show it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::analysis::flow::KeptPayload;

/// The draft's magic number: the payload's first two bytes.
const DIAGNOSTIC_MAGIC: [u8; 2] = [0x33, 0xaa];
/// Magic, reason code and PEN.
const DIAGNOSTIC_HEADER: usize = 8;
/// The PEN of F5 Networks (IANA's registry), whose boxes are the seed story's.
const F5_PEN: u32 = 3375;

/// A RST payload, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RstPayload {
    /// The payload's full length in bytes.
    pub bytes: u16,
    /// The draft's reason code; `None` for another form.
    pub code: Option<u16>,
    /// The Private Enterprise Number that defines `code` (0: IETF).
    pub pen: Option<u32>,
    /// The draft's description, or the payload as text: printable ASCII, other bytes escaped,
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
    let decoded = match kept.strip_prefix(&DIAGNOSTIC_MAGIC) {
        Some(rest) if kept.len() >= DIAGNOSTIC_HEADER => RstPayload {
            bytes: payload.len,
            code: Some(u16::from_be_bytes([rest[0], rest[1]])),
            pen: Some(u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]])),
            text: text(&kept[DIAGNOSTIC_HEADER..], cut),
            hex,
        },
        _ => RstPayload {
            bytes: payload.len,
            code: None,
            pen: None,
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

/// The payload in words, for one-line output: `the RST says "No pool member available"`, or
/// `the RST carries diagnostic code 2 of PEN 3375 (F5 Networks)`.
pub fn describe(payload: &RstPayload) -> String {
    match (payload.code, payload.pen, &payload.text) {
        (Some(code), Some(pen), text) => {
            let definer = match pen {
                0 => " (IETF)",
                F5_PEN => " (F5 Networks)",
                _ => "",
            };
            let mut words = format!("the RST carries diagnostic code {code} of PEN {pen}{definer}");
            if let Some(text) = text {
                words += &format!(": \"{text}\"");
            }
            words
        }
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

    #[test]
    fn the_drafts_diagnostic_payload() {
        let mut bytes = vec![0x33, 0xaa, 0x00, 0x02];
        bytes.extend(F5_PEN.to_be_bytes());
        let payload = decoded(&bytes).unwrap();
        assert_eq!(
            (payload.code, payload.pen, payload.text.clone()),
            (Some(2), Some(3375), None)
        );
        assert_eq!(
            describe(&payload),
            "the RST carries diagnostic code 2 of PEN 3375 (F5 Networks)"
        );
        bytes.extend(b"pool down");
        let described = decoded(&bytes).unwrap();
        assert_eq!(described.text.as_deref(), Some("pool down"));
        assert!(describe(&described).ends_with(": \"pool down\""));
        // The magic alone, too short for the header, is binary.
        assert_eq!(decoded(&[0x33, 0xaa, 0x00]).unwrap().code, None);
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
