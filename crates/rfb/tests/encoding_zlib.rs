//! The ZRLE freeze/continue stream checked by the reference zlib (through Python's `zlib`
//! module, the library TigerVNC links), not only by flate2's own inflater.

use std::io::Write;
use std::process::{Command, Stdio};

use flate2::{Decompress, FlushDecompress};
use rfb::encoding::zrle::ZrleEncoder;
use rfb::translate::{Pixels, Translator};
use rfb::PixelFormat;

/// Inflates `stream` with the system zlib in one go; `None` when python3 is missing.
fn system_inflate(stream: &[u8]) -> Option<Vec<u8>> {
    let script = "import sys, zlib\n\
                  d = zlib.decompressobj()\n\
                  out = d.decompress(sys.stdin.buffer.read())\n\
                  assert not d.eof and not d.unused_data\n\
                  sys.stdout.buffer.write(out)\n";
    let mut child = match Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v != "true"),
                "python3 not runnable on CI ({e})"
            );
            eprintln!("skipped: python3 not runnable ({e})");
            return None;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let data = stream.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "system zlib refused the stream");
    Some(out.stdout)
}

#[test]
fn system_zlib_reads_a_stream_continued_after_freeze() {
    let tr = Translator::new(PixelFormat::RGBX32_LE).unwrap();
    let rect = |seed: u32| -> Vec<u32> {
        (0..150 * 90)
            .map(|i: u32| {
                if (i / 37 + seed) % 3 == 1 {
                    i.wrapping_mul(2_654_435_761) >> 8
                } else {
                    seed * 0x10101
                }
            })
            .collect()
    };
    for level in [0, 1, 6, 9] {
        let mut stream = Vec::new();
        let mut first = ZrleEncoder::new(level);
        for seed in [1, 2] {
            first
                .encode(
                    &tr,
                    Pixels::packed(&rect(seed), 150, 90).unwrap(),
                    &mut stream,
                )
                .unwrap();
        }
        let mut second = ZrleEncoder::resume_after_freeze(&first.freeze());
        for seed in [3, 4] {
            second
                .encode(
                    &tr,
                    Pixels::packed(&rect(seed), 150, 90).unwrap(),
                    &mut stream,
                )
                .unwrap();
        }
        let mut ours = Vec::with_capacity(1 << 20);
        Decompress::new(true)
            .decompress_vec(&stream, &mut ours, FlushDecompress::Sync)
            .unwrap();
        assert!(ours.len() > 1000);
        let Some(theirs) = system_inflate(&stream) else {
            return;
        };
        assert!(theirs == ours, "level {level}: zlib and flate2 disagree");
    }
}

/// Zlib at the level the viewer names, else at QEMU's own default (9), so that a viewer that
/// names none gets no more bytes from dmore than from QEMU's VNC (issue 18).
#[test]
fn zlib_compresses_at_the_viewers_level_else_at_qemus() {
    use rfb::framebuffer::UpdateEncoder;
    use rfb::Encoding;
    let level = |list: &[Encoding]| {
        let mut e = UpdateEncoder::new();
        e.set_encodings(list);
        e.freeze().zlib.level
    };
    assert_eq!(level(&[Encoding::Zlib, Encoding::Raw]), 9);
    assert_eq!(level(&[Encoding::Zlib, Encoding::CompressLevel(3)]), 3);
    // ZRLE and Tight keep theirs.
    let mut e = UpdateEncoder::new();
    e.set_encodings(&[Encoding::Zrle]);
    assert_eq!(e.freeze().zrle.level, 6);
}
