//! Ethernet MAC addresses as flagtrace prints them: lower case, colon separated.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address, unless it is all zero: the kernel leaves a MAC it never saw as zeros.
    pub fn known(octets: [u8; 6]) -> Option<MacAddr> {
        (octets != [0; 6]).then_some(MacAddr(octets))
    }

    /// Whether the address was assigned locally (bit 0x02 of the first octet), as virtual
    /// interfaces' are; such an address has no vendor.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address as a 48-bit number, first octet highest.
    pub fn as_u64(&self) -> u64 {
        self.0
            .iter()
            .fold(0, |acc, octet| acc << 8 | u64::from(*octet))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// As flagtrace prints it, so that JSON says what the text says.
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    /// Six hexadecimal octets separated by colons, as iproute2 prints them.
    fn from_str(text: &str) -> Result<MacAddr, String> {
        let invalid = || format!("{text:?} is not a MAC address");
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.is_empty() || part.len() > 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(octets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_lower_case_and_parses_back() {
        let mac = MacAddr([0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01]);
        assert_eq!(mac.to_string(), "00:01:d7:3c:5e:01");
        assert_eq!("00:01:D7:3C:5E:01".parse::<MacAddr>(), Ok(mac));
        assert_eq!(mac.as_u64(), 0x0001_d73c_5e01);
        for bad in [
            "",
            "00:01:d7:3c:5e",
            "00:01:d7:3c:5e:01:02",
            "00:01:d7:3c:5e:1g",
            "000:1:d7:3c:5e:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_is_unknown_and_bit_1_is_local() {
        assert_eq!(MacAddr::known([0; 6]), None);
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_locally_administered());
        assert!(MacAddr([0xfe, 0, 0, 0, 0, 1]).is_locally_administered());
        assert!(!MacAddr([0x00, 0x01, 0xd7, 0, 0, 1]).is_locally_administered());
    }
}
