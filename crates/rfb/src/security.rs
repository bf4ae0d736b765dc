//! Security types (RFC 6143 §7.2) and VNC Authentication (§7.2.2).

use des::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use des::Des;

/// A security type number (RFC 6143 §7.1.2, §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityType {
    /// 1: no authentication.
    None,
    /// 2: VNC Authentication, a DES challenge-response.
    VncAuth,
    /// Any other number, kept as received (0 is "invalid" and never offered).
    Other(u8),
}

impl From<u8> for SecurityType {
    fn from(n: u8) -> Self {
        match n {
            1 => SecurityType::None,
            2 => SecurityType::VncAuth,
            n => SecurityType::Other(n),
        }
    }
}

impl From<SecurityType> for u8 {
    fn from(t: SecurityType) -> u8 {
        match t {
            SecurityType::None => 1,
            SecurityType::VncAuth => 2,
            SecurityType::Other(n) => n,
        }
    }
}

/// Length of the VNC Authentication challenge and response.
pub const CHALLENGE_LEN: usize = 16;

/// The client's answer to a VNC Authentication challenge (RFC 6143 §7.2.2): the challenge
/// encrypted with DES-ECB, keyed by the password's first 8 bytes (zero-padded) with every
/// key byte's bits reversed — the historical quirk every VNC implementation shares.
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let des = Des::new(GenericArray::from_slice(&key));
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        des.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

/// Compares two responses in constant time (`subtle`, which keeps the optimiser from adding
/// an early exit), so timing does not reveal a prefix match.
pub(crate) fn responses_match(a: &[u8; CHALLENGE_LEN], b: &[u8; CHALLENGE_LEN]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}
