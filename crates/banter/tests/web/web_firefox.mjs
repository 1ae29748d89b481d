// The web client's main exchange in Firefox (Debian's firefox-esr), driven over WebDriver BiDi by
// puppeteer-core. Run by crates/banter/tests/web_client.rs, which starts `banter serve`.
//
// Env: BANTER_URL (the API listener, http://127.0.0.1:PORT), FIREFOX (default /usr/bin/firefox-esr).
// Prints "RESULT <json>" lines; exits non-zero on any failure.

import puppeteer from 'puppeteer-core';
import { result, check, step, pageLoad } from './common.mjs';

const BASE = process.env.BANTER_URL;
const APP = 7;
if (!BASE) throw new Error('BANTER_URL is not set');


const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
  headless: true,
  protocol: 'webDriverBiDi',
  // puppeteer gives Firefox a fresh temporary profile with its automation preferences; these keep
  // it from reaching the network on its own.
  extraPrefsFirefox: {
    'network.captive-portal-service.enabled': false,
    'network.connectivity-service.enabled': false,
    'browser.safebrowsing.malware.enabled': false,
    'browser.safebrowsing.phishing.enabled': false,
    'extensions.getAddons.cache.enabled': false,
    'app.normandy.enabled': false,
    'datareporting.policy.dataSubmissionEnabled': false,
  },
});

// The WebSocket endpoint (Firefox reports the upgrade as an http:// request to it).
const wsUrl = (await (await fetch(`${BASE}/web/config`)).json()).ws_url;
const wsHttp = wsUrl.replace(/^ws/, 'http');
const pageErrors = [];
const external = [];
const dialogs = [];
function watch(page) {
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('request', (r) => {
    const url = r.url();
    if (url === wsHttp || url.startsWith('blob:') || url.startsWith('data:')) return;
    if (new URL(url).origin !== new URL(BASE).origin) external.push(url);
  });
}
const online = (page, timeout = 15000) => page.waitForSelector('.app[data-conn=online]', { timeout });
async function seen(page, text, timeout) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg .text')].some((e) => e.textContent === t),
    { timeout, polling: 20 }, text);
}
async function newUser(uid) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  watch(page);
  await page.goto(`${BASE}/`);
  await page.waitForSelector('#dev-signin');
  const fill = async (sel, v) => { await page.$eval(sel, (e) => { e.value = ''; }); await page.type(sel, v); };
  await fill('#dev-signin input[name=appid]', String(APP));
  await fill('#dev-signin input[name=uid]', String(uid));
  await fill('#dev-signin input[name=name]', `Firefox ${uid}`);
  await page.click('#dev-signin button[type=submit]');
  await online(page);
  return { ctx, page };
}
async function send(page, text) {
  await page.$eval('#composer', (e) => { e.value = ''; });
  await page.type('#composer', text);
  await page.keyboard.press('Enter');
}

try {
  step('engine');
  const ua = await browser.version();
  result('browser', ua);

  step('page load');
  await pageLoad(() => browser.createBrowserContext(), BASE);

  step('sign in');
  const A = await newUser(2001), B = await newUser(2002);
  await A.page.evaluate(() => window.banter.openConv('peer:2002'));
  await B.page.evaluate(() => window.banter.openConv('peer:2001'));

  step('text both ways');
  let t0 = Date.now();
  await send(A.page, 'hello from Firefox A');
  await seen(B.page, 'hello from Firefox A', 1000);
  result('peer_delivery_ms', Date.now() - t0);
  await A.page.waitForSelector('.msg.mine[data-state=stored]', { timeout: 5000 });
  t0 = Date.now();
  await send(B.page, 'hi from Firefox B 😀');
  await seen(A.page, 'hi from Firefox B 😀', 1000);
  result('peer_reply_ms', Date.now() - t0);

  step('hostile content');
  const hostile = '<img src=x onerror=alert(1)>';
  await send(A.page, hostile);
  await seen(B.page, hostile, 2000);
  const injected = await B.page.$$eval('#messages img, #messages script', (els) => els.length);
  check(injected === 0, `hostile markup became elements (${injected})`);

  step('presence');
  await A.page.waitForSelector('#conv-list [data-conv="peer:2002"] .presence.on', { timeout: 15000 });
  result('presence', 'the other user shows online');

  check(dialogs.length === 0, `a dialog opened: ${dialogs.join(', ')}`);
  check(external.length === 0, `external requests: ${external.join(', ')}`);
  check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  result('ok', true);
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
