// Browser test of the dashboard against a running demo: headless Debian
// Chromium driven by playwright-core. Started by tests/tests/web_e2e.rs,
// which passes the demo's address and accounts in the environment:
//   BASE_URL, HOUSEHOLD, HOUSEHOLD_PASSWORD, OPERATOR_LINK, ARTIFACTS,
//   ENROL_REQUEST (a new household's signed request file), ENROL_HOUSEHOLD
// Every step asserts; any console error or page error fails the run.
// Screenshots of every page, desktop and 375 px wide, go to ARTIFACTS.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`missing env ${k}`); return v; };
const BASE = env('BASE_URL');
const HOUSEHOLD = env('HOUSEHOLD');
const PASSWORD = env('HOUSEHOLD_PASSWORD');
const OPERATOR_LINK = env('OPERATOR_LINK');
const ARTIFACTS = env('ARTIFACTS');
const ENROL_REQUEST = env('ENROL_REQUEST');
const ENROL_HOUSEHOLD = env('ENROL_HOUSEHOLD');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
mkdirSync(ARTIFACTS, { recursive: true });

function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }
function step(msg) { console.log('· ' + msg); }

const profile = mkdtempSync(join(tmpdir(), 'voltshare-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
const problems = [];
const page = context.pages()[0] || await context.newPage();
// Set while a step provokes a refusal on purpose: the browser logs the
// 400 response itself as a console error.
let expectRefusal = false;
page.on('console', (m) => {
  if (m.type() !== 'error') return;
  if (expectRefusal && /status of 400/.test(m.text())) return;
  problems.push(`console: ${m.text()} @ ${page.url()}`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message} @ ${page.url()}`));
page.on('requestfailed', (r) => {
  // Closing the event stream on logout or navigation aborts it by design.
  if (!r.url().endsWith('/api/stream')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
});

const pagesSeen = [];
async function show(hash, ready, name, arg = null) {
  await page.goto(BASE + '/' + hash);
  await page.waitForFunction(ready, arg, { timeout: 20000 });
  pagesSeen.push(name);
  assert(problems.length === 0, `no console errors on ${name}: ${problems.join('\n')}`);
}
async function shots(name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize({ width: 375, height: 800 });
  await page.waitForTimeout(400); // charts redraw after resize
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(overflow <= 1, `${name}: no horizontal scrolling at 375 px (overflow ${overflow}px)`);
  await page.screenshot({ path: join(ARTIFACTS, `${name}-375.png`), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
}
const points = (id) => page.$eval('#' + id, (e) => Number(e.getAttribute('data-points') || 0));

try {
  // --- visitor: overview with live values, energy flow, countdown ---------
  await show('#/overview', () => {
    const t = (id) => document.getElementById(id).textContent;
    return t('conn-status') === 'live' && t('s-pv') !== '–' && document.querySelectorAll('#flow-svg circle').length === 3;
  }, 'overview');
  step('overview loads, stream is live, energy flow drawn');
  const countdown = await page.textContent('#s-countdown');
  assert(/\d+ s$/.test(countdown), `countdown shows seconds: ${countdown}`);
  await page.evaluate(() => { window.__noReload = true; });
  const before = await page.evaluate(() => ['s-pv', 's-import', 's-export'].map((id) => document.getElementById(id).textContent).join('|'));
  await page.waitForFunction((b) => ['s-pv', 's-import', 's-export'].map((id) => document.getElementById(id).textContent).join('|') !== b, before, { timeout: 15000 });
  assert(await page.evaluate(() => window.__noReload === true), 'the live value changed without a reload');
  step('a live value changed without reload');
  await shots('overview-public');

  // --- market: curves and history charts with data ------------------------
  await show('#/market', () => ['book-chart', 'price-chart', 'volume-chart']
    .every((id) => Number(document.getElementById(id).getAttribute('data-points') || 0) > 0), 'market');
  assert(await page.$$eval('#book-chart path.supply-line, #book-chart path.demand-line', (p) => p.length) >= 1, 'order book curves drawn');
  assert(await page.$$eval('#price-chart path.price-line', (p) => p.length) === 1, 'price line drawn');
  assert(await page.$$eval('#volume-chart rect.volume-bar', (r) => r.length) >= 1, 'volume bars drawn');
  step(`market charts: book ${await points('book-chart')} steps, price ${await points('price-chart')} points, volume ${await points('volume-chart')} bars`);
  await shots('market');

  // --- settlements and an interval's detail with verify ------------------
  await show('#/settlements', () => document.querySelectorAll('#settlements tbody tr:not(.empty)').length > 0, 'settlements');
  const statuses = await page.$$eval('#settlements .status', (s) => s.map((x) => x.textContent));
  assert(statuses.every((s) => ['pending', 'submitted', 'confirmed', 'final'].includes(s)), `statuses ${statuses}`);
  await shots('settlements');
  await page.click('#settlements tbody tr:first-child a');
  await page.waitForFunction(() => document.getElementById('iv-roots').children.length >= 4, null, { timeout: 10000 });
  await page.click('#verify-btn');
  await page.waitForFunction(() => /passed|failed/.test(document.getElementById('verify-summary').textContent), null, { timeout: 20000 });
  const verdict = await page.textContent('#verify-summary');
  assert(verdict.includes('every check passed'), `verify: ${verdict} ${await page.textContent('#verify-results')}`);
  pagesSeen.push('interval');
  step('interval detail with roots; verify passed');
  await shots('interval');

  // --- household login by password: own bill ------------------------------
  await show('#/login', () => !document.getElementById('page-login').hidden, 'login');
  await shots('login');
  await page.fill('#login-user', HOUSEHOLD);
  await page.fill('#login-pass', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => location.hash === '#/household' && !document.getElementById('page-household').hidden, null, { timeout: 10000 });
  await page.waitForFunction(() => document.querySelectorAll('#bills-days tbody tr:not(.empty)').length > 0
    && Number(document.getElementById('bill-chart').getAttribute('data-points')) > 0, null, { timeout: 20000 });
  assert((await page.textContent('#hh-name')) === HOUSEHOLD, 'my household page names me');
  assert((await page.textContent('#who')).includes(HOUSEHOLD), 'header shows the user');
  const month = await page.textContent('#hh-month');
  assert(/\d/.test(month), `a monthly bill amount: ${month}`);
  const apiBills = await page.evaluate(async (h) => (await fetch(`/api/households/${h}/bills`)).json(), HOUSEHOLD);
  assert(apiBills.household === HOUSEHOLD && apiBills.days.length > 0, 'the API bill is mine');
  pagesSeen.push('household');
  step(`household ${HOUSEHOLD} logged in and sees its bill: ${month} this month`);
  await shots('household');
  // Another household's bill is not reachable from this session.
  const other = HOUSEHOLD === 'h02' ? 'h03' : 'h02';
  const status = (await page.request.get(`${BASE}/api/households/${other}/bills`)).status();
  assert(status === 404, `another household's bill is 404, got ${status}`);

  await show('#/devices', () => document.querySelectorAll('#devices tbody tr:not(.empty)').length > 0, 'devices');
  assert(await page.$$eval('#devices thead th', (t) => t.some((x) => x.textContent === 'Rejected')), 'rejects per meter shown');
  const owners = await page.$$eval('#devices tbody tr td:nth-child(2)', (t) => t.map((x) => x.textContent));
  assert(owners.every((o) => o === HOUSEHOLD), `a household sees only its own meters: ${owners}`);
  await shots('devices-household');

  // --- logout ------------------------------------------------------------
  await page.click('#logout-btn');
  await page.waitForFunction(() => !document.getElementById('login-link').hidden, null, { timeout: 10000 });
  assert(await page.$eval('.tabs a[data-page=household]', (a) => a.hidden), 'household tab hidden after logout');
  const after = (await page.request.get(`${BASE}/api/households/${HOUSEHOLD}/bills`)).status();
  assert(after === 401, `after logout my bill needs a login again, got ${after}`);
  step('logout works');

  // --- operator by one-time link -------------------------------------------
  await page.goto(OPERATOR_LINK);
  await page.waitForFunction(() => (document.getElementById('who').textContent || '').includes('operator'), null, { timeout: 10000 });
  await show('#/devices', () => document.querySelectorAll('#devices tbody tr:not(.empty)').length > 1, 'devices');
  await shots('devices');
  await show('#/admin', () => !document.getElementById('page-admin').hidden && document.getElementById('set-public').checked
    && document.getElementById('p-retail_tariff').value !== '', 'admin');
  await shots('admin');

  // The operator files a new household's signed request and approves it:
  // the engine enrols it (approval is marked only when the engine took it).
  await page.fill('#enrol-file', ENROL_REQUEST);
  await page.click('#enrol-form button[type=submit]');
  const approve = `#enrolments button[data-action=approve][data-household="${ENROL_HOUSEHOLD}"]`;
  await page.waitForSelector(approve, { timeout: 10000 });
  await page.click(approve);
  await page.waitForFunction((h) => [...document.querySelectorAll('#enrolments tbody tr')].some((tr) =>
    tr.cells[0].textContent === h && tr.querySelector('.status').textContent === 'approved'), ENROL_HOUSEHOLD, { timeout: 10000 });
  assert(await page.$eval('#error-banner', (b) => b.hidden), 'no error after approving');
  step(`operator filed and approved ${ENROL_HOUSEHOLD}'s signed request`);

  // ... and raises the grid fee; the change is audited and scheduled.
  await page.fill('#p-grid_fee', '12000');
  await page.click('#params-form button[type=submit]');
  await page.waitForFunction(() => /applies from/.test(document.getElementById('params-msg').textContent), null, { timeout: 10000 });
  await page.waitForFunction(() => [...document.querySelectorAll('#param-changes tbody td')].some((td) => /grid fee 0 → 12000/.test(td.textContent)), null, { timeout: 10000 });
  // A wrong value is refused with the field named.
  expectRefusal = true;
  await page.fill('#p-feed_in_tariff', '999999');
  await page.click('#params-form button[type=submit]');
  await page.waitForFunction(() => /feed_in_tariff/.test(document.getElementById('params-msg').textContent), null, { timeout: 10000 });
  expectRefusal = false;
  await page.fill('#p-feed_in_tariff', '80000');
  await shots('admin-approved');
  step('operator changed the grid fee; a wrong tariff was refused naming the field');

  // The market page shows the new fee once its interval has begun.
  await show('#/market', () => [...document.querySelectorAll('#market-params div')].some((d) =>
    d.firstChild.textContent === 'Grid fee' && /[1-9]/.test(d.lastChild.textContent)), 'market');
  await shots('market-params');
  // The newcomer's meter is listed among the devices.
  await show('#/devices', (h) => [...document.querySelectorAll('#devices tbody td')].some((td) => td.textContent === h + '-grid'), 'devices', ENROL_HOUSEHOLD);
  step('the market shows the fee in force; the new meter is listed');
  // Back to no fee, so later tests see the demo's own parameters.
  await page.evaluate(async () => {
    const csrf = document.cookie.match(/vs_csrf=([0-9a-f]+)/)[1];
    const r = await fetch('/api/params', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify({ mechanism: 'uniform', price_rule: 'midpoint', feed_in_tariff: 80000, retail_tariff: 320000, grid_fee: 0, capacity_wh: null, gate_lead_ms: 0 }) });
    if (!r.ok) throw new Error('restoring parameters: ' + r.status);
  });
  await show('#/overview', () => document.querySelectorAll('#households tbody tr:not(.empty)').length > 1, 'overview');
  await shots('overview-operator');
  step('operator logged in by one-time link; devices, operator page, households');

  // The link is one-time.
  await page.goto(OPERATOR_LINK);
  await page.waitForFunction(() => location.hash === '#/login/expired' || location.hash === '#/overview', null, { timeout: 10000 });
  assert(problems.length === 0, problems.join('\n'));
  console.log(`ok: pages ${[...new Set(pagesSeen)].join(', ')}; screenshots in ${ARTIFACTS}`);
} catch (e) {
  await page.screenshot({ path: join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
  console.error('FAILED: ' + e.message);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
