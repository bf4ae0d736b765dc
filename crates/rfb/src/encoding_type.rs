//! Encoding numbers (RFC 6143 §7.7 and the community rfbproto registry).

/// An encoding or pseudo-encoding number, as listed in SetEncodings and carried by each
/// rectangle of a FramebufferUpdate. Unknown numbers are kept as [`Encoding::Other`], never
/// dropped, so a client's list survives a decode/encode round trip unchanged.
///
/// `Encoding::from(n)` never yields `Other(n)` for a number that has a named variant, so
/// `i32 -> Encoding -> i32` is the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// 0: pixels as they are (§7.7.1).
    Raw,
    /// 1: copy from elsewhere in the framebuffer (§7.7.2).
    CopyRect,
    /// 5: 16x16 tiles of a background and subrectangles (§7.7.4).
    Hextile,
    /// 6: Raw pixels through one zlib stream per connection (rfbproto).
    Zlib,
    /// 7: Tight: fills, palettes and zlib streams, JPEG if the viewer allows (rfbproto).
    Tight,
    /// 16: zlib-compressed run-length tiles (§7.7.6).
    Zrle,
    /// -223: the framebuffer changed size (§7.8.2).
    DesktopSize,
    /// -224: ends a FramebufferUpdate sent with 0xFFFF rectangles (rfbproto).
    LastRect,
    /// -239: the cursor shape, pixels and bit mask (§7.8.1).
    Cursor,
    /// -257: QEMU pointer motion change (the rectangle's x says absolute or relative).
    QemuPointerMotionChange,
    /// -258: QEMU extended key events (client message 255/0) are understood.
    QemuExtendedKeyEvent,
    /// -261: QEMU keyboard LED state, one byte.
    QemuLedState,
    /// -307: the desktop's name changed (rfbproto): a u32 length and the name.
    DesktopName,
    /// -308: extended desktop size with a screen layout (rfbproto).
    ExtendedDesktopSize,
    /// -312: Fence messages are understood (rfbproto).
    Fence,
    /// -313: continuous updates are understood (rfbproto).
    ContinuousUpdates,
    /// 0x574d5668: VMware keyboard LED state, four bytes.
    VmwareLedState,
    /// -256..=-247: the viewer's compression level 0..=9 (Tight's and Zlib's zlib level).
    CompressLevel(u8),
    /// -32..=-23: the viewer's JPEG quality level 0..=9 (Tight may send JPEG).
    QualityLevel(u8),
    /// Any other number, kept as received.
    Other(i32),
}

/// The first numbers of the two level ranges; level n is `base + n`, n in 0..=9.
const COMPRESS_LEVEL_0: i32 = -256;
const QUALITY_LEVEL_0: i32 = -32;

/// The level of `n` in the ten-number range starting at `base`.
fn level_in(n: i32, base: i32) -> Option<u8> {
    // checked: a peer's number may be anything (i32::MIN - -256 overflows; found by fuzzing).
    u8::try_from(n.checked_sub(base)?).ok().filter(|l| *l <= 9)
}

/// Every named variant with its number: the single table both directions use.
const TABLE: [(Encoding, i32); 17] = [
    (Encoding::Raw, 0),
    (Encoding::CopyRect, 1),
    (Encoding::Hextile, 5),
    (Encoding::Zlib, 6),
    (Encoding::Tight, 7),
    (Encoding::Zrle, 16),
    (Encoding::DesktopSize, -223),
    (Encoding::LastRect, -224),
    (Encoding::Cursor, -239),
    (Encoding::QemuPointerMotionChange, -257),
    (Encoding::QemuExtendedKeyEvent, -258),
    (Encoding::QemuLedState, -261),
    (Encoding::DesktopName, -307),
    (Encoding::ExtendedDesktopSize, -308),
    (Encoding::Fence, -312),
    (Encoding::ContinuousUpdates, -313),
    (Encoding::VmwareLedState, 0x574d_5668),
];

impl From<i32> for Encoding {
    fn from(n: i32) -> Self {
        if let Some(l) = level_in(n, COMPRESS_LEVEL_0) {
            return Encoding::CompressLevel(l);
        }
        if let Some(l) = level_in(n, QUALITY_LEVEL_0) {
            return Encoding::QualityLevel(l);
        }
        TABLE
            .iter()
            .find(|(_, v)| *v == n)
            .map_or(Encoding::Other(n), |(e, _)| *e)
    }
}

impl From<Encoding> for i32 {
    fn from(e: Encoding) -> i32 {
        match e {
            Encoding::Other(n) => n,
            Encoding::CompressLevel(l) => COMPRESS_LEVEL_0 + i32::from(l.min(9)),
            Encoding::QualityLevel(l) => QUALITY_LEVEL_0 + i32::from(l.min(9)),
            named => TABLE
                .iter()
                .find(|(e, _)| *e == named)
                .map_or(0, |(_, v)| *v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_rfbproto() {
        assert_eq!(i32::from(Encoding::Zrle), 16);
        assert_eq!(i32::from(Encoding::Cursor), -239);
        assert_eq!(i32::from(Encoding::VmwareLedState), 0x574d5668);
        assert_eq!(Encoding::from(-258), Encoding::QemuExtendedKeyEvent);
        assert_eq!(Encoding::from(5), Encoding::Hextile);
        assert_eq!(Encoding::from(7), Encoding::Tight);
        assert_eq!(Encoding::from(2), Encoding::Other(2));
        assert_eq!(Encoding::from(-256), Encoding::CompressLevel(0));
        assert_eq!(Encoding::from(-247), Encoding::CompressLevel(9));
        assert_eq!(Encoding::from(-246), Encoding::Other(-246));
        assert_eq!(Encoding::from(-23), Encoding::QualityLevel(9));
        assert_eq!(Encoding::from(-33), Encoding::Other(-33));
        for n in [i32::MIN, i32::MAX] {
            assert_eq!(Encoding::from(n), Encoding::Other(n));
        }
        for n in (-256..=-247).chain(-32..=-23) {
            assert_eq!(i32::from(Encoding::from(n)), n);
        }
        for (e, n) in TABLE {
            assert_eq!(Encoding::from(n), e);
            assert_eq!(i32::from(e), n);
        }
    }
}
