//! The screen cache and a viewer's damage, end to end through the RFB codec: QEMU's
//! rectangles go into a [`Screen`], a viewer that reads rarely (or never) keeps bounded
//! damage, and when it takes its update, the rectangles applied to its own framebuffer
//! (rfb's UpdateDecoder, as a real viewer would) give exactly the cache.

use console::journal::ViewerId;
use console::screen::{Area, Change, Screen, MAX_COPIES};
use console::session::{Negotiated, PlanItem, Session};
use proptest::prelude::*;
use rfb::framebuffer::{Framebuffer, UpdateDecoder};
use rfb::{ClientMessage, Encoding, PixelFormat, RectPayload, Rectangle, ServerMessage, Version};

const SIZES: [(u16, u16); 4] = [(200, 130), (130, 70), (257, 129), (64, 64)];

#[derive(Debug, Clone)]
enum Op {
    /// Fill a rectangle (fractions of the screen) with a colour.
    Paint(u8, u8, u8, u8, u32),
    /// CopyRect from QEMU (fractions of the screen).
    Copy(u8, u8, u8, u8, u8, u8),
    /// DesktopSize to one of SIZES.
    Resize(usize),
    /// The viewer takes an update now.
    Read,
}

fn op(reads: bool) -> impl Strategy<Value = Op> {
    let read_weight = if reads { 2 } else { 0 };
    prop_oneof![
        10 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u32>())
            .prop_map(|(a, b, c, d, p)| Op::Paint(a, b, c, d, p & 0x00ff_ffff)),
        6 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d, e, f)| Op::Copy(a, b, c, d, e, f)),
        1 => (0..SIZES.len()).prop_map(Op::Resize),
        read_weight => Just(Op::Read),
    ]
}

/// `frac / 256` of `len`.
fn scale(frac: u8, len: u16) -> u16 {
    u16::try_from(u32::from(frac) * u32::from(len) / 256).unwrap_or(0)
}

/// A Raw rectangle of one colour in QEMU's format (RGBX32_LE).
fn paint(x: u16, y: u16, w: u16, h: u16, colour: u32) -> Rectangle {
    let n = usize::from(w) * usize::from(h);
    let data = colour.to_le_bytes().repeat(n);
    Rectangle {
        x,
        y,
        width: w,
        height: h,
        payload: RectPayload::Raw(data),
    }
}

/// The fake viewer: its framebuffer and decoder.
struct Viewer {
    fb: Framebuffer,
    decoder: UpdateDecoder,
}

impl Viewer {
    fn apply(&mut self, msg: &ServerMessage) {
        // Through the wire bytes, as a real viewer reads them.
        let bytes = msg.to_bytes();
        let (decoded, n) =
            ServerMessage::decode(&bytes, &PixelFormat::RGBX32_LE, &Default::default())
                .expect("decodes")
                .expect("complete");
        assert_eq!(n, bytes.len());
        let ServerMessage::FramebufferUpdate(rects) = decoded else {
            panic!("not an update: {decoded:?}");
        };
        for r in &rects {
            self.decoder.apply(&mut self.fb, r).expect("viewer applies");
        }
    }
}

fn setup(encodings: Vec<Encoding>) -> (Screen, Session, Viewer) {
    let (w, h) = SIZES[0];
    let screen = Screen::new(w, h).expect("size");
    let mut session = Session::new(
        ViewerId(1),
        Negotiated {
            version: Version::V3_8,
            shared: true,
            view_only: false,
            width: w,
            height: h,
        },
    );
    session
        .handle_message(ClientMessage::SetEncodings(encodings))
        .expect("encodings");
    let viewer = Viewer {
        fb: Framebuffer::new(w, h),
        decoder: UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format"),
    };
    (screen, session, viewer)
}

fn read(screen: &Screen, session: &mut Session, viewer: &mut Viewer) -> Option<Vec<PlanItem>> {
    let request = ClientMessage::FramebufferUpdateRequest {
        incremental: true,
        x: 0,
        y: 0,
        width: viewer.fb.width(),
        height: viewer.fb.height(),
    };
    session.handle_message(request).expect("request");
    let plan = session.poll_update(screen)?;
    let msg = session.encode_update(screen, &plan).expect("encodes");
    viewer.apply(&msg);
    Some(plan.items)
}

fn run(encodings: Vec<Encoding>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut screen, mut session, mut viewer) = setup(encodings);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    for op in ops {
        let (w, h) = (screen.width(), screen.height());
        let rect = match op {
            Op::Read => {
                read(&screen, &mut session, &mut viewer);
                continue;
            }
            Op::Paint(a, b, c, d, colour) => {
                let (x, y) = (scale(a, w), scale(b, h));
                let (rw, rh) = (scale(c, w - x).max(1), scale(d, h - y).max(1));
                paint(x, y, rw, rh, colour)
            }
            Op::Copy(a, b, c, d, e, f) => {
                let (rw, rh) = (scale(e, w).max(1), scale(f, h).max(1));
                Rectangle {
                    x: scale(c, w - rw),
                    y: scale(d, h - rh),
                    width: rw,
                    height: rh,
                    payload: RectPayload::CopyRect {
                        src_x: scale(a, w - rw),
                        src_y: scale(b, h - rh),
                    },
                }
            }
            Op::Resize(i) => Rectangle {
                x: 0,
                y: 0,
                width: SIZES[i].0,
                height: SIZES[i].1,
                payload: RectPayload::DesktopSize,
            },
        };
        let resized = matches!(rect.payload, RectPayload::DesktopSize);
        if let Some(change) = screen.apply(&mut qemu, &rect).expect("applies") {
            session.handle_screen_change(&change);
        }
        if resized {
            // QEMU repaints after a resize; model it with a full-screen paint.
            let full = paint(0, 0, screen.width(), screen.height(), 0x00_12_34_56);
            let change = screen.apply(&mut qemu, &full).expect("applies");
            session.handle_screen_change(&change.expect("pixels"));
        }
        // Bounded: one bit per 16 pixels of a line (one word per line at these widths) and
        // the capped copy queue.
        let bound = usize::from(screen.height()) * 8
            + MAX_COPIES * std::mem::size_of::<console::screen::CopyOp>();
        prop_assert!(session.damage().heap_bytes() <= bound);
    }
    read(&screen, &mut session, &mut viewer);
    prop_assert_eq!(
        (viewer.fb.width(), viewer.fb.height()),
        (screen.width(), screen.height())
    );
    prop_assert!(
        viewer.fb == *screen.framebuffer(),
        "viewer differs from the cache"
    );
    prop_assert!(session.damage().is_clean());
    Ok(())
}

fn encodings() -> impl Strategy<Value = Vec<Encoding>> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(zrle, copy, ext)| {
        let mut list = vec![];
        if copy {
            list.push(Encoding::CopyRect);
        }
        list.push(if zrle { Encoding::Zrle } else { Encoding::Raw });
        list.push(if ext {
            Encoding::ExtendedDesktopSize
        } else {
            Encoding::DesktopSize
        });
        list
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A viewer that never reads until the end.
    #[test]
    fn never_reading_viewer_gets_exactly_the_cache(
        enc in encodings(),
        ops in prop::collection::vec(op(false), 0..60),
    ) {
        run(enc, ops)?;
    }

    /// A viewer that reads now and then (CopyRects then depend on what it already has).
    #[test]
    fn sometimes_reading_viewer_gets_exactly_the_cache(
        enc in encodings(),
        ops in prop::collection::vec(op(true), 0..60),
    ) {
        run(enc, ops)?;
    }
}

#[test]
fn a_million_updates_to_a_stalled_viewer_cost_a_word_per_line() {
    let (mut screen, mut session, _viewer) = setup(vec![Encoding::CopyRect, Encoding::Raw]);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    let big = Rectangle {
        x: 0,
        y: 0,
        width: 1024,
        height: 768,
        payload: RectPayload::DesktopSize,
    };
    let change = screen.apply(&mut qemu, &big).expect("resize");
    session.handle_screen_change(&change.expect("resized"));
    let before = session.damage().heap_bytes();
    for i in 0..1_000_000u32 {
        let x = u16::try_from(i % 1000).unwrap_or(0);
        let y = u16::try_from(i % 700).unwrap_or(0);
        session.handle_screen_change(&Change::Pixels(Area::new(x, y, 24, 16)));
        if i % 7 == 0 {
            session.handle_screen_change(&Change::Copy {
                src_x: 0,
                src_y: 0,
                dst: Area::new(x, y, 8, 8),
            });
        }
    }
    assert_eq!(session.damage().heap_bytes(), before);
    assert_eq!(
        before,
        768 * 8,
        "64 runs of 16 pixels per line = 1 word, no copies"
    );
}

#[test]
fn copyrect_is_forwarded_only_for_a_clean_source() {
    let (mut screen, mut session, mut viewer) = setup(vec![Encoding::CopyRect, Encoding::Raw]);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    read(&screen, &mut session, &mut viewer).expect("first update");
    let copy = Rectangle {
        x: 100,
        y: 64,
        width: 50,
        height: 40,
        payload: RectPayload::CopyRect { src_x: 0, src_y: 0 },
    };
    let c = screen
        .apply(&mut qemu, &copy)
        .expect("copy")
        .expect("change");
    session.handle_screen_change(&c);
    let items = read(&screen, &mut session, &mut viewer).expect("update");
    assert_eq!(
        items,
        vec![PlanItem::CopyRect {
            src_x: 0,
            src_y: 0,
            dst: Area::new(100, 64, 50, 40)
        }]
    );
    // Now dirty the source first: the copy must turn into pixels.
    let p = screen
        .apply(&mut qemu, &paint(10, 10, 5, 5, 0xff))
        .expect("paint");
    session.handle_screen_change(&p.expect("pixels"));
    let c = screen
        .apply(&mut qemu, &copy)
        .expect("copy")
        .expect("change");
    session.handle_screen_change(&c);
    let items = read(&screen, &mut session, &mut viewer).expect("update");
    assert!(
        items.iter().all(|i| matches!(i, PlanItem::Pixels(_))),
        "{items:?}"
    );
    assert!(viewer.fb == *screen.framebuffer());
}

#[test]
fn viewer_without_desktop_size_keeps_its_size_and_gets_clipped_pixels() {
    let (mut screen, mut session, mut viewer) = setup(vec![Encoding::Raw]);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    let grow = Rectangle {
        x: 0,
        y: 0,
        width: 257,
        height: 129,
        payload: RectPayload::DesktopSize,
    };
    let c = screen
        .apply(&mut qemu, &grow)
        .expect("resize")
        .expect("change");
    assert_eq!(
        c,
        Change::Resized {
            width: 257,
            height: 129
        }
    );
    session.handle_screen_change(&c);
    let items = read(&screen, &mut session, &mut viewer).expect("update");
    assert!(!items.iter().any(|i| matches!(
        i,
        PlanItem::DesktopSize { .. } | PlanItem::ExtendedDesktopSize { .. }
    )));
    assert_eq!((viewer.fb.width(), viewer.fb.height()), (200, 130));
}

#[test]
fn same_size_desktop_size_does_not_blank_the_cache() {
    let (mut screen, _session, _viewer) = setup(vec![Encoding::Raw]);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    screen
        .apply(&mut qemu, &paint(0, 0, 10, 10, 0xabcdef))
        .expect("paint");
    let same = Rectangle {
        x: 0,
        y: 0,
        width: 200,
        height: 130,
        payload: RectPayload::ExtendedDesktopSize(vec![]),
    };
    assert_eq!(screen.apply(&mut qemu, &same).expect("applies"), None);
    assert_eq!(screen.framebuffer().pixels()[0], 0xabcdef);
}

#[test]
fn oversized_screens_are_refused() {
    assert!(Screen::new(8193, 10).is_err());
    let mut screen = Screen::new(10, 10).expect("small");
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    let huge = Rectangle {
        x: 0,
        y: 0,
        width: 8192,
        height: 8192,
        payload: RectPayload::DesktopSize,
    };
    assert!(screen.apply(&mut qemu, &huge).is_err());
    assert_eq!(screen.width(), 10);
}

/// QEMU's VNC server marks damage in runs of 16 pixels of one line (`VNC_DIRTY_PIXELS_PER_BIT`)
/// and sends a viewer just those; the pixels of `area` a viewer is owed at that granularity.
fn qemu_columns(area: Area, screen: (u16, u16)) -> impl Iterator<Item = (u16, u16)> {
    let x0 = area.x / 16 * 16;
    let x1 = (u32::from(area.x) + u32::from(area.width))
        .div_ceil(16)
        .saturating_mul(16)
        .min(u32::from(screen.0));
    let y1 = (u32::from(area.y) + u32::from(area.height)).min(u32::from(screen.1));
    let x1 = u16::try_from(x1).unwrap_or(u16::MAX);
    let y1 = u16::try_from(y1).unwrap_or(u16::MAX);
    (area.y..y1).flat_map(move |y| (x0..x1).map(move |x| (x, y)))
}

/// The pixels a viewer of a compressing encoding is sent for these owed pixels: every
/// 64x64 block holding one, whole (cut to the screen).
fn blocks_of(owed: &[bool], w: u16, h: u16) -> Vec<bool> {
    let (w, h) = (usize::from(w), usize::from(h));
    let cols = w.div_ceil(64);
    let mut dirty = vec![false; cols * h.div_ceil(64)];
    for (i, _) in owed.iter().enumerate().filter(|(_, o)| **o) {
        dirty[i / w / 64 * cols + i % w / 64] = true;
    }
    (0..owed.len())
        .map(|i| dirty[i / w / 64 * cols + i % w / 64])
        .collect()
}

/// Paints (in fractions of the screen) then reads, several times: every update carries
/// each pixel once: to a Raw viewer exactly the painted pixels widened to QEMU's 16-pixel
/// columns (no more than QEMU's own VNC sends for the same changes), to a ZRLE viewer the
/// 64x64 blocks that hold them.
fn sends_only_what_changed(
    raw: bool,
    rounds: Vec<Vec<(u8, u8, u8, u8)>>,
) -> Result<(), TestCaseError> {
    let encoding = if raw { Encoding::Raw } else { Encoding::Zrle };
    let (mut screen, mut session, mut viewer) = setup(vec![encoding]);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    read(&screen, &mut session, &mut viewer).expect("the first, full update");
    let (w, h) = (screen.width(), screen.height());
    for (round, paints) in rounds.into_iter().enumerate() {
        let mut owed = vec![false; usize::from(w) * usize::from(h)];
        for (i, &(a, b, c, d)) in paints.iter().enumerate() {
            let (x, y) = (scale(a, w), scale(b, h));
            let (rw, rh) = (scale(c, w - x).max(1), scale(d, h - y).max(1));
            let colour = u32::try_from(round * 64 + i).unwrap_or(0) + 1;
            let change = screen
                .apply(&mut qemu, &paint(x, y, rw, rh, colour))
                .expect("applies")
                .expect("pixels");
            session.handle_screen_change(&change);
            for (px, py) in qemu_columns(Area::new(x, y, rw, rh), (w, h)) {
                owed[usize::from(py) * usize::from(w) + usize::from(px)] = true;
            }
        }
        let mut sent = vec![false; owed.len()];
        for item in read(&screen, &mut session, &mut viewer).unwrap_or_default() {
            let PlanItem::Pixels(a) = item else {
                prop_assert!(false, "only pixels were owed: {:?}", item);
                continue;
            };
            for (px, py) in qemu_columns(a, (w, h)) {
                let i = usize::from(py) * usize::from(w) + usize::from(px);
                prop_assert!(!sent[i], "({}, {}) sent twice in one update", px, py);
                sent[i] = true;
            }
        }
        let want = if raw { owed } else { blocks_of(&owed, w, h) };
        prop_assert!(
            sent == want,
            "the update is not the changed columns or blocks"
        );
        prop_assert!(viewer.fb == *screen.framebuffer());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Bytes no more than QEMU's own VNC (issue 18): whatever QEMU paints between two reads.
    #[test]
    fn an_update_is_the_changed_16_pixel_columns_and_no_more(
        raw in any::<bool>(),
        rounds in prop::collection::vec(
            prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 0..6),
            1..6,
        ),
    ) {
        sends_only_what_changed(raw, rounds)?;
    }
}

#[test]
fn a_typed_text_cell_costs_its_16_pixel_column() {
    let (mut screen, mut session, mut viewer) = setup(vec![Encoding::Raw]);
    let mut qemu = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    read(&screen, &mut session, &mut viewer).expect("the first, full update");
    // A 9x16 VGA text cell (column 20, row 2), the text cursor's two lines in the next one.
    for rect in [
        paint(180, 32, 9, 16, 0xaaaaaa),
        paint(189, 46, 9, 2, 0xaaaaaa),
    ] {
        let change = screen.apply(&mut qemu, &rect).expect("applies");
        session.handle_screen_change(&change.expect("pixels"));
    }
    let items = read(&screen, &mut session, &mut viewer).expect("update");
    assert_eq!(
        items,
        vec![
            PlanItem::Pixels(Area::new(176, 32, 16, 14)),
            // 176..208 cut to the 200-pixel screen.
            PlanItem::Pixels(Area::new(176, 46, 24, 2)),
        ]
    );
}
