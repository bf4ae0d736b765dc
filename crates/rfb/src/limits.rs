//! Size limits applied to peer input before anything is allocated for it.

/// Upper bounds on what a peer may announce. Exceeding one is a typed error, raised as soon as
/// the offending length has been read and before any buffer is reserved for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest ClientCutText / ServerCutText, in bytes.
    pub max_cut_text: usize,
    /// Largest width or height of a framebuffer, rectangle, cursor or screen.
    pub max_dimension: u16,
    /// Largest payload of one rectangle in a FramebufferUpdate, in bytes.
    pub max_rect_payload: usize,
    /// Largest whole message (a FramebufferUpdate with all its rectangles), in bytes.
    pub max_message: usize,
    /// Longest desktop name or failure reason in a handshake, in bytes.
    pub max_name: usize,
}

impl Limits {
    /// Defaults: 1 MiB cut text, 16384 pixels, 64 MiB per rectangle (a 4096x4096 32 bpp
    /// rectangle), 256 MiB per message, 4 KiB names.
    pub const DEFAULT: Limits = Limits {
        max_cut_text: 1 << 20,
        max_dimension: 16384,
        max_rect_payload: 64 << 20,
        max_message: 256 << 20,
        max_name: 4096,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
