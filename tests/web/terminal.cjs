// Drives dmore's browser terminal (tests/web/terminal.html: xterm.js on a console's serial lane
// through `dmore gateway serve`) in headless Chromium, for bin/dmore/tests/browser_terminal.rs.
//
//   node terminal.cjs URL [PROFILE_DIR]
//
// Opens URL, waits until its WebSocket is open, then answers one JSON request per stdin line
// with one JSON line on stdout:
//   {"cmd":"start_typing","pace_ms":N}  types into the terminal, a key every N ms, until
//                                       stop_typing (letters, digits and '-': no space, no
//                                       '#', no Enter, so the guest's echo reads back
//                                       unambiguously)                     -> {"ok":true}
//   {"cmd":"stop_typing"}               -> {"sent": every byte the terminal sent, in order}
//   {"cmd":"buffer"}                    -> {"text": the terminal's buffer, scrollback
//                                           included: its lines joined by "\n", a wrapped line
//                                           joined to the one before, trailing blanks cut}
//   {"cmd":"status"}                    -> {"connected", "closes": [...]}
//   {"cmd":"updates"}                   -> {"now", "times": [...]} (browser.cjs)
//   {"cmd":"quit"}
// The first line it prints is {"ready":true,...} once connected, or {"error":...}.
'use strict';

const { drive, typist } = require('./browser.cjs');

let typing = null;

drive({
  usage: 'node terminal.cjs URL [PROFILE_DIR]',
  connected: () => document.documentElement.classList.contains('terminal_connected'),
  shown: () => ({
    classes: document.documentElement.className,
    closes: window.__dmore && window.__dmore.closes,
  }),
  ready: (page) => page.evaluate(() => window.__dmore.term.focus()),
  handlers: {
    start_typing: async (page, req) => {
      await page.evaluate(() => window.__dmore.term.focus());
      typing = typist(page,
        (n) => `echo${String(n).padStart(6, '0')}abcdefghijklmnopqrstuvwxyz-`,
        req.pace_ms || 20);
      return { ok: true };
    },
    stop_typing: async (page) => {
      if (typing) await typing.stop();
      typing = null;
      return { sent: await page.evaluate(() => window.__dmore.sent) };
    },
    buffer: (page) => page.evaluate(() => {
      const b = window.__dmore.term.buffer.active;
      let text = '';
      for (let i = 0; i < b.length; i++) {
        const line = b.getLine(i);
        if (i > 0 && !line.isWrapped) text += '\n';
        text += line.translateToString(true);
      }
      return { text };
    }),
    status: (page) => page.evaluate(() => ({
      connected: document.documentElement.classList.contains('terminal_connected'),
      closes: window.__dmore.closes,
    })),
  },
});
