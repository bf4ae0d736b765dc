//! Per-console access tokens with an expiry, as Nova's console tokens (sans-I/O).
//!
//! A token is 32 random bytes, written as 64 lowercase hex digits; it is shown once, to the
//! one who asked for it (`dmore gateway token`), and the gateway keeps only its SHA-256,
//! with the console it opens and when it expires, one grant per line of its token file:
//!
//! ```text
//!  <sha256 of the token's text, hex> <console name> <expiry, seconds since the Unix epoch>
//! ```
//!
//! A wrong, expired or other console's token is refused the same way, after the same work
//! (one hash and one lookup); the refusal says nothing of which it was.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Bytes of randomness in a token.
pub const TOKEN_BYTES: usize = 32;

/// The grants a gateway holds, by token hash.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    grants: HashMap<[u8; 32], Grant>,
}

/// What a token opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The console's name (as the gateway's `--console NAME=ADDR` calls it).
    pub console: String,
    /// Seconds since the Unix epoch after which the token is refused.
    pub expires: u64,
}

/// A token refused: wrong, expired, or for another console (deliberately not said which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access denied")]
pub struct Refused;

/// A line of the token file that is not a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the token file is not `<sha256 hex> <console> <expiry>`")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
}

/// A fresh token from `random` bytes, and the grant line to append to the token file.
pub fn issue(random: [u8; TOKEN_BYTES], console: &str, expires: u64) -> (String, String) {
    let token = hex(&random);
    let line = format!("{} {console} {expires}\n", hex(&hash(&token)));
    (token, line)
}

/// Whether `name` can name a console in the token file and a URL (no spaces, no newlines).
pub fn valid_console_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl Tokens {
    /// Parses a token file (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Tokens, BadLine> {
        let mut grants = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = BadLine { line: i + 1 };
            let mut words = line.split_whitespace();
            let (Some(h), Some(console), Some(expires), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(bad);
            };
            let h = unhex(h).ok_or(bad.clone())?;
            let expires = expires.parse().map_err(|_| bad.clone())?;
            if !valid_console_name(console) {
                return Err(bad);
            }
            grants.insert(
                h,
                Grant {
                    console: console.to_owned(),
                    expires,
                },
            );
        }
        Ok(Tokens { grants })
    }

    /// The grant `token` holds at `now` (seconds since the epoch), if it is one of ours, not
    /// expired, and (when the viewer named one) for `console`.
    pub fn check(&self, token: &str, console: Option<&str>, now: u64) -> Result<&Grant, Refused> {
        let grant = self.grants.get(&hash(token)).ok_or(Refused)?;
        let console_ok = console.is_none_or(|c| c == grant.console);
        if now < grant.expires && console_ok {
            Ok(grant)
        } else {
            Err(Refused)
        }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_console_until_it_expires() {
        let (token, line) = issue([7; 32], "vm1", 1000);
        let (other, other_line) = issue([8; 32], "vm2", 1000);
        assert_eq!(token.len(), 64);
        assert!(
            !line.contains(&token),
            "the file keeps the hash, not the token"
        );
        let tokens = Tokens::parse(&format!("# grants\n{line}\n{other_line}")).unwrap();
        let grant = tokens.check(&token, None, 999).unwrap();
        assert_eq!(grant.console, "vm1");
        assert_eq!(tokens.check(&token, Some("vm1"), 0).unwrap().console, "vm1");
        assert_eq!(tokens.check(&other, None, 0).unwrap().console, "vm2");
        // Expired, wrong, other console's: one refusal.
        assert_eq!(tokens.check(&token, None, 1000), Err(Refused));
        assert_eq!(tokens.check(&hex(&[9; 32]), None, 0), Err(Refused));
        assert_eq!(tokens.check("", None, 0), Err(Refused));
        assert_eq!(tokens.check(&other, Some("vm1"), 0), Err(Refused));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            Tokens::parse("\nabc vm1 10\n").unwrap_err(),
            BadLine { line: 2 }
        );
        let (_, line) = issue([1; 32], "vm1", 5);
        assert!(Tokens::parse(&line.replace("vm1", "vm 1")).is_err());
        assert!(Tokens::parse(&line.replace(" 5", " soon")).is_err());
        assert!(!valid_console_name("a b"));
        assert!(valid_console_name("vm-1.example:0"));
    }
}
