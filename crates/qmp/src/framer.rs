//! Splits the inbound byte stream into lines, with a bound on line length.

use std::collections::VecDeque;

use crate::error::ProtocolError;

/// Default bound on one inbound line: 16 MiB (`query-qmp-schema` on QEMU 7.2 is ~200 KiB).
pub const DEFAULT_MAX_LINE: usize = 16 << 20;

/// Newline framing of QMP's JSON stream. Bytes go in with [`push`](Self::push) in chunks
/// of any size; complete lines (without `\n` or a trailing `\r`) come out of
/// [`next_line`](Self::next_line). A line longer than the limit is an error before it is
/// buffered, so a peer can never make it hold more than `max_line` bytes of an unfinished line.
#[derive(Debug)]
pub(crate) struct LineFramer {
    partial: Vec<u8>,
    lines: VecDeque<Vec<u8>>,
    max_line: usize,
    failed: bool,
}

impl LineFramer {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            lines: VecDeque::new(),
            max_line,
            failed: false,
        }
    }

    /// Appends received bytes. Fails (for good) if a line would exceed the limit.
    pub(crate) fn push(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        if self.failed {
            return Err(ProtocolError::LineTooLong { max: self.max_line });
        }
        while !data.is_empty() {
            let (segment, complete, rest) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (data.get(..i).unwrap_or_default(), true, data.get(i + 1..)),
                None => (data, false, None),
            };
            if self.partial.len().saturating_add(segment.len()) > self.max_line {
                self.failed = true;
                self.partial = Vec::new();
                return Err(ProtocolError::LineTooLong { max: self.max_line });
            }
            self.partial.extend_from_slice(segment);
            if complete {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.iter().all(u8::is_ascii_whitespace) {
                    self.lines.push_back(line);
                }
            }
            data = rest.unwrap_or_default();
        }
        Ok(())
    }

    /// The next complete line, if any.
    pub(crate) fn next_line(&mut self) -> Option<Vec<u8>> {
        self.lines.pop_front()
    }

    /// Bytes held for the line not yet terminated.
    #[cfg(test)]
    pub(crate) fn partial_len(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut LineFramer) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| f.next_line()).collect()
    }

    #[test]
    fn splits_lines_strips_cr_and_skips_blank_lines() {
        let mut f = LineFramer::new(100);
        f.push(b"{\"a\":1}\r\n\r\n  \n{\"b\"").unwrap();
        assert_eq!(lines(&mut f), vec![b"{\"a\":1}".to_vec()]);
        f.push(b":2}\n").unwrap();
        assert_eq!(lines(&mut f), vec![b"{\"b\":2}".to_vec()]);
        assert_eq!(f.partial_len(), 0);
    }

    #[test]
    fn line_at_limit_passes_and_one_more_byte_fails() {
        let mut f = LineFramer::new(4);
        f.push(b"abcd\n").unwrap();
        assert_eq!(lines(&mut f), vec![b"abcd".to_vec()]);
        f.push(b"abc").unwrap();
        assert!(matches!(
            f.push(b"de"),
            Err(ProtocolError::LineTooLong { max: 4 })
        ));
        assert_eq!(f.partial_len(), 0);
        // Poisoned for good.
        assert!(f.push(b"\n").is_err());
    }

    #[test]
    fn many_short_lines_in_one_chunk_longer_than_the_limit_pass() {
        let mut f = LineFramer::new(3);
        f.push(b"ab\ncd\nef\ngh\n").unwrap();
        assert_eq!(lines(&mut f).len(), 4);
    }
}
