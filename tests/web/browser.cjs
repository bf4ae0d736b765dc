// What dmore's page drivers share (novnc.cjs, terminal.cjs): Debian's headless Chromium
// (/usr/bin/chromium, never a downloaded browser) through Playwright, one page opened until it
// says it is connected, then one JSON request per stdin line answered with one JSON line.
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

function say(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Presses the keys of lineOf(0), lineOf(1), ... into the page, one every `pace` ms, until
// stop(), which answers every character typed, in order.
function typist(page, lineOf, pace) {
  const state = { stop: false, typed: '' };
  const done = (async () => {
    for (let n = 0; !state.stop; n++) {
      for (const ch of lineOf(n)) {
        if (state.stop) return;
        await page.keyboard.press(ch === '\n' ? 'Enter' : ch === ' ' ? 'Space' : ch);
        state.typed += ch;
        await sleep(pace);
      }
    }
  })();
  return {
    stop: async () => {
      state.stop = true;
      await done;
      return state.typed;
    },
  };
}

// Requests every driver answers: {"cmd":"updates"} -> {"now": Date.now(), "times": [Date.now()
// at each message from the server]} (the page keeps them in window.__dmore.updates).
const common = {
  updates: (page) => page.evaluate(() => ({ now: Date.now(), times: window.__dmore.updates })),
};

// Runs a driver: `node DRIVER URL [PROFILE_DIR]`. Chromium's profile goes to PROFILE_DIR (a
// fresh one, left for the caller to remove), else to a temporary directory removed at exit.
// Opens URL (`init`, if given, runs in the page before its own scripts), waits until
// `connected` holds in the page (60 s; else the error says what `shown` reads from the page
// and what the page went through), awaits `ready(page)`, prints {"ready":true,...}, then
// answers each request {"cmd":C,...} with `await handlers[C](page, req)` until
// {"cmd":"quit"}. A failure prints {"error":...} and exits 1.
async function drive({ usage, init, connected, shown, ready, handlers }) {
  const url = process.argv[2];
  if (!url) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
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
  try {
    const page = context.pages()[0] || (await context.newPage());
    if (init) await page.addInitScript(init);
    // What the page went through, told when it does not connect.
    const events = [];
    const opened = Date.now();
    const note = (what) => events.push(`${((Date.now() - opened) / 1000).toFixed(1)}s ${what}`);
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
    try {
      await page.waitForFunction(connected, null, { timeout: 60000 });
    } catch (e) {
      const what = await page.evaluate(shown).catch((err) => `unreadable: ${err}`);
      throw new Error(`the page did not connect in 60 s: it shows ${JSON.stringify(what)}; ` +
        `what happened: ${JSON.stringify(events)}`);
    }
    await ready(page);
    say({ ready: true, userAgent: await page.evaluate(() => navigator.userAgent) });
    const all = { ...common, ...handlers };
    const rl = readline.createInterface({ input: process.stdin });
    for await (const line of rl) {
      if (!line.trim()) continue;
      const req = JSON.parse(line);
      if (req.cmd === 'quit') break;
      const handler = all[req.cmd];
      say(handler ? await handler(page, req) : { error: `unknown command ${req.cmd}` });
    }
  } catch (e) {
    say({ error: String(e && e.stack || e) });
    process.exitCode = 1;
  } finally {
    await context.close().catch(() => {});
    if (!given) fs.rmSync(profile, { recursive: true, force: true });
  }
  // stdin's reader would keep the process alive after quit.
  process.exit();
}

module.exports = { drive, typist, say };
