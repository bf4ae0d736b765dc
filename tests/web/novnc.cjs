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
//   {"cmd":"quit"}
// The first line it prints is {"ready":true,...} once connected, or {"error":...}.
//
// Playwright comes from the directory .ci/setup installs it into ($DMORE_WEB, default
// /opt/dmore-web): `npm ci` there, from tests/web/package-lock.json.
'use strict';

const path = require('path');
const fs = require('fs');
const os = require('os');
const readline = require('readline');

const web = process.env.DMORE_WEB || '/opt/dmore-web';
const { chromium } = require(path.join(web, 'node_modules', 'playwright-core'));

const url = process.argv[2];
if (!url) {
  console.error('usage: node novnc.cjs URL [PROFILE_DIR]');
  process.exit(2);
}

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

function say(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function main() {
  const given = process.argv[3];
  const profile = given || fs.mkdtempSync(path.join(os.tmpdir(), 'dmore-chromium-'));
  if (given) fs.mkdirSync(given, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    // Larger than any guest screen: noVNC's app clips its canvas to the window.
    viewport: { width: 1920, height: 1200 },
    // The tests' gateways serve TLS with a certificate made for the test.
    ignoreHTTPSErrors: true,
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--ignore-certificate-errors'],
  });
  const cleanup = async () => {
    await context.close().catch(() => {});
    if (!given) fs.rmSync(profile, { recursive: true, force: true });
  };
  try {
    const page = context.pages()[0] || (await context.newPage());
    await page.addInitScript(instrument);
    // What the page went through, told when it does not connect.
    const events = [];
    const note = (what) => events.push(`${((Date.now() - opened) / 1000).toFixed(1)}s ${what}`);
    const opened = Date.now();
    page.on('pageerror', (e) => note(`page error: ${e.message}`));
    page.on('console', (m) => note(`console ${m.type()}: ${m.text()}`));
    page.on('requestfailed', (r) => note(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
    page.on('response', (r) => { if (r.status() >= 400) note(`${r.status()} ${r.url()}`); });
    page.on('websocket', (ws) => {
      note(`websocket ${ws.url()}`);
      ws.on('socketerror', (e) => note(`websocket error: ${e}`));
      ws.on('close', () => note('websocket closed'));
    });
    await page.goto(url);
    // Connected: noVNC's app marks <html> (our page does the same), and a framebuffer arrived.
    try {
      await page.waitForFunction(
        () => document.documentElement.classList.contains('noVNC_connected') &&
          [...document.querySelectorAll('canvas')].some((c) => c.width > 0),
        null, { timeout: 60000 });
    } catch (e) {
      const shown = await page.evaluate(() => ({
        classes: document.documentElement.className,
        text: (document.body && document.body.innerText || '').slice(0, 300),
        canvases: [...document.querySelectorAll('canvas')].map((c) => `${c.width}x${c.height}`),
        closes: window.__dmore.closes,
        sent_bytes: window.__dmore.sentBytes,
      })).catch((err) => `unreadable: ${err}`);
      throw new Error(`noVNC did not connect in 60 s: the page shows ${JSON.stringify(shown)}; ` +
        `what happened: ${JSON.stringify(events)}`);
    }
    const focus = () => page.evaluate(() => {
      const c = [...document.querySelectorAll('canvas')].sort((a, b) => b.width * b.height - a.width * a.height)[0];
      c.focus();
    });
    await focus();
    say({ ready: true, userAgent: await page.evaluate(() => navigator.userAgent) });

    let typing = null;
    let typed = '';
    const typeLoop = async (pace) => {
      let line = 0;
      while (typing && !typing.stop) {
        const text = `line ${line++} the quick brown fox jumps over the lazy dog 0123456789\n`;
        for (const ch of text) {
          if (typing.stop) return;
          const key = ch === '\n' ? 'Enter' : ch === ' ' ? 'Space' : ch;
          await page.keyboard.press(key);
          typed += ch;
          await new Promise((r) => setTimeout(r, pace));
        }
      }
    };
    const rl = readline.createInterface({ input: process.stdin });
    for await (const line of rl) {
      if (!line.trim()) continue;
      const req = JSON.parse(line);
      if (req.cmd === 'start_typing') {
        await focus();
        typed = '';
        typing = { stop: false };
        typing.done = typeLoop(req.pace_ms || 20);
        say({ ok: true });
      } else if (req.cmd === 'stop_typing') {
        if (typing) {
          typing.stop = true;
          await typing.done;
          typing = null;
        }
        say({ typed });
      } else if (req.cmd === 'canvas') {
        const c = await page.evaluate(readCanvas);
        if (!c) say({ error: 'no canvas' });
        else {
          fs.writeFileSync(req.file, Buffer.from(c.rgba, 'base64'));
          say({ width: c.width, height: c.height });
        }
      } else if (req.cmd === 'status') {
        const s = await page.evaluate(() => ({
          connected: document.documentElement.classList.contains('noVNC_connected'),
          closes: window.__dmore.closes,
          disconnected_shown: window.__dmore.disconnectedShown,
          sent: window.__dmore.sent,
        }));
        say({ connected: s.connected, closes: s.closes, disconnected_shown: s.disconnected_shown,
          encodings: encodingsOf(s.sent) });
      } else if (req.cmd === 'updates') {
        say(await page.evaluate(() => ({ now: Date.now(), times: window.__dmore.updates })));
      } else if (req.cmd === 'quit') {
        break;
      } else {
        say({ error: `unknown command ${req.cmd}` });
      }
    }
  } catch (e) {
    say({ error: String(e && e.stack || e) });
    process.exitCode = 1;
  } finally {
    await cleanup();
  }
}

// stdin's reader would keep the process alive after quit.
main().then(() => process.exit());
