//! The last bytes of the guest's output, by absolute offset.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// A bounded tail of the output: bytes `[start, end)` of everything the guest wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scrollback {
    start: u64,
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl Scrollback {
    /// Empty, keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Scrollback {
        Scrollback {
            start: 0,
            bytes: VecDeque::new(),
            capacity,
        }
    }

    /// Appends output, forgetting the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        let over = self.bytes.len().saturating_sub(self.capacity);
        self.bytes.drain(..over);
        self.start = self.start.saturating_add(over as u64);
    }

    /// Offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset after the newest byte: everything the guest wrote, all time.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.bytes.len() as u64)
    }

    /// The bytes kept from `offset` on (from [`start`](Self::start) if it is older), with the
    /// offset they begin at.
    pub fn since(&self, offset: u64) -> (u64, Vec<u8>) {
        let from = offset.clamp(self.start, self.end());
        let skip = usize::try_from(from - self.start).unwrap_or(usize::MAX);
        (from, self.bytes.iter().skip(skip).copied().collect())
    }

    /// Changes the capacity (a restored console's own `--serial-scrollback`).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.push(&[]);
    }
}
