//! The one line a serial viewer gets first: where the console's output and input stand.
//!
//! ```text
//!  console → viewer:  "dmore-serial 1 output=<offset> input=<accepted>\r\n"  then raw output
//!  viewer → console:  raw input, from the first byte
//! ```
//!
//! `output` is the offset of the first output byte that follows (the oldest the scrollback
//! still has); `input` is how many typed bytes the console has accepted, all time. A viewer
//! that lost its connection (the console moved) reconnects, skips the output it already has
//! and sends again what it typed beyond `input` (meaningful with one typist): no byte lost or
//! doubled either way. A person on a raw socket sees the line once and types as usual.

/// The longest header line read.
pub const HEADER_MAX: usize = 96;

const PREFIX: &str = "dmore-serial 1 ";

/// Where output and input stand when a viewer connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the first output byte after the header.
    pub output: u64,
    /// Typed bytes accepted so far.
    pub input: u64,
}

/// A header line that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No line end within [`HEADER_MAX`] bytes.
    #[error("no serial header line within {HEADER_MAX} bytes")]
    TooLong,
    /// The line does not read as a header.
    #[error("not a dmore serial header: {0:?}")]
    Malformed(String),
}

impl Header {
    /// The line, with its `\r\n`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{PREFIX}output={} input={}\r\n", self.output, self.input).into_bytes()
    }

    /// Reads a header from the start of `buf`: the header and the bytes it took, or `None` if
    /// the line is not complete yet.
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
        let Some(nl) = buf.iter().take(HEADER_MAX).position(|&b| b == b'\n') else {
            return if buf.len() >= HEADER_MAX {
                Err(HeaderError::TooLong)
            } else {
                Ok(None)
            };
        };
        let line = &buf[..nl];
        let malformed = || HeaderError::Malformed(String::from_utf8_lossy(line).into_owned());
        let text = std::str::from_utf8(line).map_err(|_| malformed())?;
        let rest = text
            .strip_suffix('\r')
            .and_then(|t| t.strip_prefix(PREFIX))
            .ok_or_else(malformed)?;
        let mut output = None;
        let mut input = None;
        for field in rest.split(' ') {
            match field.split_once('=') {
                Some(("output", v)) => output = v.parse().ok(),
                Some(("input", v)) => input = v.parse().ok(),
                _ => return Err(malformed()),
            }
        }
        match (output, input) {
            (Some(output), Some(input)) => Ok(Some((Header { output, input }, nl + 1))),
            _ => Err(malformed()),
        }
    }
}
