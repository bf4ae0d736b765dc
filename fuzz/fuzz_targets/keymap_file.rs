//! A keymap file as the operator's `--keymap` names it: any bytes into the parser, then the
//! translator over every keysym it mapped, pressed and released.
#![no_main]

use std::sync::Arc;

use console::keymap::{Keyboard, Keymap, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(keymap) = Keymap::parse(data) else {
        return;
    };
    let keysyms: Vec<u32> = keymap.entries().map(|(k, _)| k).collect();
    let mut kb = Keyboard::new(Layout {
        keymap: Arc::new(keymap),
        given: true,
    });
    for down in [true, false] {
        for &k in &keysyms {
            if let Some(n) = kb.translate(down, k, None) {
                kb.apply(n, down);
            }
        }
    }
});
