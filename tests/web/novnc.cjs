// Drives one noVNC page in headless Chromium (Debian's /usr/bin/chromium, never a downloaded
// browser) for dmore's browser end-to-end tests (bin/dmore/tests/novnc.rs).
//
//   node novnc.cjs URL [PROFILE_DIR]
//
// Chromium's profile goes to PROFILE_DIR (a fresh one, left for the caller to remove), else
// to a fresh temporary directory removed at exit.
// Opens URL (a noVNC page that connects on load), waits until it is connected, then answers
// one JSON request per stdin line with one JSON line on stdout:
//   {"cmd":"start_typing","pace_ms":N}  types lines of text into the page, a key every N ms,
//                                       until stop_typing             -> {"ok":true}
//   {"cmd":"stop_typing"}               -> {"typed":"every character typed, in order"}
//   {"cmd":"canvas","file":F}           writes the canvas's RGBA bytes (getImageData) to F
//                                       -> {"width","height"}
//   {"cmd":"status"}                    -> {"connected", "closes": [...], "disconnected_shown",
//                                           "encodings": [the client's SetEncodings list]}
//   {"cmd":"updates"}                   -> {"now": Date.now(), "times": [Date.now() at each
//                                           message from the server (framebuffer updates)]}
//                                           (browser.cjs)
//   {"cmd":"quit"}
// The first line it prints is {"ready":true,...} once connected, or {"error":...}.
//
// Chromium, the page's life and the requests' loop: browser.cjs.
'use strict';

const fs = require('fs');
const { drive, typist } = require('./browser.cjs');

// Runs in the page before its own scripts: watches the WebSocket (closes, the client's first
// bytes, to read its SetEncodings) and noVNC's status text.
function instrument() {
  const d = (window.__dmore = { closes: [], sent: [], sentBytes: 0, disconnectedShown: false,
    updates: [] });
  // A native WebSocket, not a subclass: noVNC 1.3.0 checks the methods on its prototype.
  const Native = window.WebSocket;
  const send = Native.prototype.send;
  Native.prototype.send = function (data) {
    if (d.sentBytes < 4096) {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data)
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      d.sent.push(...bytes);
      d.sentBytes += bytes.length;
    }
    return send.call(this, data);
  };
  const Wrapped = function (...args) {
    const ws = new Native(...args);
    ws.addEventListener('close', (e) => d.closes.push({ code: e.code, reason: e.reason }));
    ws.addEventListener('message', () => d.updates.push(Date.now()));
    return ws;
  };
  Wrapped.prototype = Native.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Wrapped[k] = Native[k];
  window.WebSocket = Wrapped;
  const watch = () => {
    new MutationObserver(() => {
      const text = document.body ? document.body.innerText || '' : '';
      if (/disconnected/i.test(text)) d.disconnectedShown = true;
    }).observe(document.documentElement, { subtree: true, childList: true, characterData: true });
  };
  if (document.documentElement) watch();
  else document.addEventListener('DOMContentLoaded', watch);
}

// The client's SetEncodings list from its first bytes: RFB 3.8 version (12 bytes), the
// security type None (1), ClientInit (1), then SetPixelFormat (20) and SetEncodings.
function encodingsOf(sent) {
  let i = 14;
  while (i < sent.length) {
    const type = sent[i];
    if (type === 0) i += 20;
    else if (type === 2) {
      const n = (sent[i + 2] << 8) | sent[i + 3];
      const list = [];
      for (let k = 0; k < n; k++) {
        const o = i + 4 + 4 * k;
        list.push((sent[o] << 24) | (sent[o + 1] << 16) | (sent[o + 2] << 8) | sent[o + 3]);
      }
      return list;
    } else return null;
  }
  return null;
}

// The page's framebuffer canvas: the largest one.
function readCanvas() {
  const canvases = [...document.querySelectorAll('canvas')];
  const c = canvases.sort((a, b) => b.width * b.height - a.width * a.height)[0];
  if (!c || c.width === 0) return null;
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return { width: c.width, height: c.height, rgba: btoa(s) };
}

const biggestCanvas = () => {
  const c = [...document.querySelectorAll('canvas')].sort((a, b) => b.width * b.height - a.width * a.height)[0];
  c.focus();
};

let typing = null;

drive({
  usage: 'node novnc.cjs URL [PROFILE_DIR]',
  init: instrument,
  // Connected: noVNC's app marks <html> (our page does the same), and a framebuffer arrived.
  connected: () => document.documentElement.classList.contains('noVNC_connected') &&
    [...document.querySelectorAll('canvas')].some((c) => c.width > 0),
  shown: () => ({
    classes: document.documentElement.className,
    text: (document.body && document.body.innerText || '').slice(0, 300),
    canvases: [...document.querySelectorAll('canvas')].map((c) => `${c.width}x${c.height}`),
    closes: window.__dmore.closes,
    sent_bytes: window.__dmore.sentBytes,
  }),
  ready: (page) => page.evaluate(biggestCanvas),
  handlers: {
    start_typing: async (page, req) => {
      await page.evaluate(biggestCanvas);
      typing = typist(page,
        (n) => `line ${n} the quick brown fox jumps over the lazy dog 0123456789\n`,
        req.pace_ms || 20);
      return { ok: true };
    },
    stop_typing: async () => {
      const typed = typing ? await typing.stop() : '';
      typing = null;
      return { typed };
    },
    canvas: async (page, req) => {
      const c = await page.evaluate(readCanvas);
      if (!c) return { error: 'no canvas' };
      fs.writeFileSync(req.file, Buffer.from(c.rgba, 'base64'));
      return { width: c.width, height: c.height };
    },
    status: async (page) => {
      const s = await page.evaluate(() => ({
        connected: document.documentElement.classList.contains('noVNC_connected'),
        closes: window.__dmore.closes,
        disconnected_shown: window.__dmore.disconnectedShown,
        sent: window.__dmore.sent,
      }));
      return { connected: s.connected, closes: s.closes, disconnected_shown: s.disconnected_shown,
        encodings: encodingsOf(s.sent) };
    },
  },
});
