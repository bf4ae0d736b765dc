//! What a viewer's encoder and a client's decoder hold before they code anything: no zlib
//! state. A console makes one encoder per viewer with a stream for each encoding the viewer
//! might be sent (ZRLE, Zlib, Tight's four), and decoders for QEMU's link; a viewer uses
//! one encoding, so the rest must cost nothing (issue 13: the console's RSS).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rfb::framebuffer::{Framebuffer, UpdateDecoder, UpdateEncoder};
use rfb::{Encoding, PixelFormat};

/// Counts the bytes allocated (and not freed) through it.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes `make` leaves allocated in what it returns.
fn held<T>(make: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let made = make();
    (made, LIVE.load(Ordering::Relaxed).saturating_sub(before))
}

// One test in this binary: the counter sees no other thread's allocations.
#[test]
fn codecs_hold_zlib_state_only_for_the_encoding_in_use() {
    let (mut encoder, fresh) = held(UpdateEncoder::new);
    assert!(fresh < 16 << 10, "a fresh encoder holds {fresh} bytes");
    let (decoder, fresh) = held(|| UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format"));
    assert!(fresh < 16 << 10, "a fresh decoder holds {fresh} bytes");
    drop(decoder);

    // A ZRLE viewer's first update makes ZRLE's compressor, and only it.
    encoder.set_encodings(&[Encoding::Zrle]);
    let fb = Framebuffer::new(64, 64);
    let before = LIVE.load(Ordering::Relaxed);
    let rect = encoder.encode(&fb, 0, 0, 64, 64).expect("encodes");
    drop(rect);
    let one = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    assert!(one > 64 << 10, "ZRLE's compressor exists: {one} bytes");
    assert!(
        one < 2 * (400 << 10),
        "one compressor, not six: {one} bytes"
    );
}
