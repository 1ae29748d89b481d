// What both browser drivers share: result lines and checks, and the page-load measurement (the same
// calls in playwright-core and puppeteer-core).

export function result(k, v) { console.log(`RESULT ${JSON.stringify({ [k]: v })}`); }
export function check(cond, msg) { if (!cond) throw new Error(`check failed: ${msg}`); }
export function step(name) { console.log(`STEP ${name}`); }

/** Loads `${base}/` five times, each in a fresh browser context (nothing cached); reports the sorted
 *  `loadEventEnd` times and when the sign-in form was drawn (after /web/config), and checks the median
 *  load is under 300 ms. */
export async function pageLoad(newContext, base) {
  const loads = [];
  for (let i = 0; i < 5; i++) {
    const ctx = await newContext();
    const p = await ctx.newPage();
    await p.goto(`${base}/`, { waitUntil: 'load' });
    await p.waitForSelector('#dev-signin');
    loads.push(await p.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0];
      return { load: n.loadEventEnd, interactive: performance.getEntriesByName('banter-ready')[0].startTime };
    }));
    await ctx.close();
  }
  const loadMs = loads.map((l) => Math.round(l.load)).sort((a, b) => a - b);
  const readyMs = loads.map((l) => Math.round(l.interactive)).sort((a, b) => a - b);
  result('page_load_ms', loadMs);
  result('sign_in_form_ready_ms', readyMs);
  check(loadMs[2] < 300, `median page load ${loadMs[2]} ms >= 300 ms`);
}
