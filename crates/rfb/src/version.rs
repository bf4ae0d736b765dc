//! The ProtocolVersion message (RFC 6143 §7.1.1).

use crate::error::HandshakeError;

/// An RFB protocol version this crate speaks. Ordered: 3.3 < 3.7 < 3.8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// RFB 3.3: the server decides the security type; no failure reasons.
    V3_3,
    /// RFB 3.7: the client picks from a list; no SecurityResult after None.
    V3_7,
    /// RFB 3.8: SecurityResult always, with a reason string on failure.
    V3_8,
}

/// Length of a ProtocolVersion message.
pub const VERSION_LEN: usize = 12;

impl Version {
    /// The 12 bytes announcing this version.
    pub fn to_bytes(self) -> [u8; VERSION_LEN] {
        *match self {
            Version::V3_3 => b"RFB 003.003\n",
            Version::V3_7 => b"RFB 003.007\n",
            Version::V3_8 => b"RFB 003.008\n",
        }
    }

    /// Parses a ProtocolVersion and maps it to the version to speak. As RFC 6143 §7.1.1 and
    /// rfbproto advise, unknown 3.x minors mean 3.3, except that 3.8 and above (Apple's
    /// 3.889, for one) mean 3.8; majors above 3 mean 3.8 too.
    pub fn parse(b: &[u8; VERSION_LEN]) -> Result<Version, HandshakeError> {
        let bad = || HandshakeError::BadVersion(*b);
        if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
            return Err(bad());
        }
        let num = |s: &[u8]| -> Option<u16> {
            s.iter().try_fold(0u16, |acc, d| {
                d.is_ascii_digit().then(|| acc * 10 + u16::from(d - b'0'))
            })
        };
        let major = num(&b[4..7]).ok_or_else(bad)?;
        let minor = num(&b[8..11]).ok_or_else(bad)?;
        match (major, minor) {
            (0..=2, _) => Err(HandshakeError::UnsupportedVersion { major, minor }),
            (3, 7) => Ok(Version::V3_7),
            (3, 8..) | (4.., _) => Ok(Version::V3_8),
            (3, _) => Ok(Version::V3_3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_variant_versions() {
        assert_eq!(Version::parse(b"RFB 003.008\n"), Ok(Version::V3_8));
        assert_eq!(Version::parse(b"RFB 003.007\n"), Ok(Version::V3_7));
        assert_eq!(Version::parse(b"RFB 003.003\n"), Ok(Version::V3_3));
        assert_eq!(Version::parse(b"RFB 003.889\n"), Ok(Version::V3_8));
        assert_eq!(Version::parse(b"RFB 003.005\n"), Ok(Version::V3_3));
        assert_eq!(Version::parse(b"RFB 004.001\n"), Ok(Version::V3_8));
        assert!(matches!(
            Version::parse(b"RFB 002.000\n"),
            Err(HandshakeError::UnsupportedVersion { major: 2, minor: 0 })
        ));
        assert!(matches!(
            Version::parse(b"HTTP/1.1 200"),
            Err(HandshakeError::BadVersion(_))
        ));
        assert!(matches!(
            Version::parse(b"RFB 00x.008\n"),
            Err(HandshakeError::BadVersion(_))
        ));
        for v in [Version::V3_3, Version::V3_7, Version::V3_8] {
            assert_eq!(Version::parse(&v.to_bytes()), Ok(v));
        }
    }
}
