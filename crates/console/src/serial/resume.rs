//! A serial viewer's side of resuming: what to skip of the output and what to type again
//! after it reconnected to a console that moved (see [`Header`]).

use super::Header;

/// One typist's view of its serial session across reconnections.
///
/// Call order: [`connected`](Self::connected) with each header, then
/// [`output`](Self::output) for the bytes that follow it and [`typed`](Self::typed) for each
/// byte sent.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The console's input count at the first connection: this typist's bytes follow it.
    base: Option<u64>,
    typed: Vec<u8>,
    /// Offset of the next output byte this viewer has not seen.
    next: Option<u64>,
    skip: u64,
    lost: u64,
}

/// What a (re)connection asks of the viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Typed bytes the console never got: send them again, first.
    pub resend: Vec<u8>,
    /// Output bytes the console no longer had (beyond its scrollback), lost for this viewer.
    pub lost: u64,
}

/// The console says it has more of this typist's input than was typed: another typist, or
/// another console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the console has {has} bytes of input, this viewer typed {typed}: not its session")]
pub struct ResumeError {
    /// What the console has beyond the first connection's count.
    pub has: u64,
    /// What this viewer typed.
    pub typed: u64,
}

impl Resume {
    /// A viewer that has seen and typed nothing.
    pub fn new() -> Resume {
        Resume::default()
    }

    /// A connection's header arrived.
    pub fn connected(&mut self, h: Header) -> Result<Resumed, ResumeError> {
        let base = *self.base.get_or_insert(h.input);
        let has = h.input.saturating_sub(base);
        let typed = self.typed.len() as u64;
        if has > typed || h.input < base {
            return Err(ResumeError { has, typed });
        }
        let resend = self.typed[usize::try_from(has).unwrap_or(usize::MAX)..].to_vec();
        let next = *self.next.get_or_insert(h.output);
        let lost = h.output.saturating_sub(next);
        self.skip = next.saturating_sub(h.output);
        self.next = Some(next.max(h.output));
        self.lost += lost;
        Ok(Resumed { resend, lost })
    }

    /// Output bytes after the header: the part this viewer has not seen.
    pub fn output<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let skip = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.skip -= skip as u64;
        let new = &bytes[skip..];
        self.next = Some(self.next.unwrap_or(0) + new.len() as u64);
        new
    }

    /// Bytes this viewer sent.
    pub fn typed(&mut self, bytes: &[u8]) {
        self.typed.extend_from_slice(bytes);
    }

    /// Output bytes lost to this viewer over all reconnections.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}
