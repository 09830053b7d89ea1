#!/usr/bin/env node
/**
 * Browser end-to-end test of the report dashboard against the REAL server binary.
 *
 *   SSE_SERVER_BIN=/path/to/server_sent_events npm run e2e     (after `npm run build`)
 *
 * Env:
 *   SSE_SERVER_BIN        required: the server binary (started here with --bind, --static-dir, --database)
 *   CHROMIUM_PATH         default /usr/bin/chromium (scripts/install-chromium.sh installs it)
 *   UPDATE_STATUS_SCRIPT  default <repo>/update_report_status.sh (args: USER REPORT STATUS; env SSE_BASE_URL)
 *
 * The test starts the server itself on a free port with a fresh database in a temp folder, and
 * always kills every server it started (by PID), also on failure, timeout or Ctrl-C.
 * Screenshots go to test-output/. Exit code 0 = all steps passed.
 */
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const FRONTEND_DIR = path.resolve(HERE, '..');
const REPO_ROOT = path.resolve(FRONTEND_DIR, '..');
const DIST_DIR = path.join(FRONTEND_DIR, 'dist');
const OUT_DIR = path.join(FRONTEND_DIR, 'test-output');
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const UPDATE_SCRIPT = process.env.UPDATE_STATUS_SCRIPT || path.join(REPO_ROOT, 'update_report_status.sh');

const LIVE_UPDATE_MS = 2_000; // a pushed change must show within this, without a reload
const HEALTH_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const RECONNECT_TIMEOUT_MS = 20_000; // browser retry hint or our 5 s backoff cap, plus slack
const OVERALL_TIMEOUT_MS = 300_000;
const TABS = 10; // tabs of one user in one browser context (the browser allows 6 HTTP/1.1 connections per origin)
const TAKEOVER_MS = 2_000; // a tab takes the shared stream over within this when its leader closes or hangs

// ---------------------------------------------------------------------------------------------
// small helpers

class E2EFailure extends Error {}

function fail(message) {
  throw new E2EFailure(message);
}

function log(message) {
  const t = ((Date.now() - T0) / 1000).toFixed(1).padStart(6);
  console.log(`[e2e ${t}s] ${message}`);
}

const T0 = Date.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` (sync or async, returns truthy when done) until it passes or `timeoutMs` runs out. */
async function waitUntil(what, timeoutMs, check, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      if (err instanceof E2EFailure) throw err;
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError ? ` (last error: ${lastError.message ?? lastError})` : '';
      fail(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(intervalMs);
  }
}

/** A free TCP port on 127.0.0.1, below the kernel's ephemeral range when possible, so that a
 *  browser retrying a stopped server cannot end up connected to itself on that port. */
async function freePort() {
  let low = 32768;
  try {
    low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: any free port will do
  }
  const tryPort = (port) =>
    new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(null));
      srv.listen(port, '127.0.0.1', () => {
        const { port: bound } = srv.address();
        srv.close(() => resolve(bound));
      });
    });
  if (low > 20_000) {
    for (let i = 0; i < 50; i++) {
      const candidate = 20_000 + Math.floor(Math.random() * (low - 20_000));
      const port = await tryPort(candidate);
      if (port) return port;
    }
  }
  const port = await tryPort(0);
  if (!port) fail('could not find a free port on 127.0.0.1');
  return port;
}

// ---------------------------------------------------------------------------------------------
// the server under test

const servers = new Set(); // every child we started and have not seen exit
const startedServers = []; // all of them, for log tails on failure

function startServer({ port, dbPath, label, extraArgs = [], extraEnv = {} }) {
  const logPath = path.join(OUT_DIR, `server-${label}.log`);
  const logFd = fs.openSync(logPath, 'w');
  const args = ['--bind', `127.0.0.1:${port}`, '--static-dir', DIST_DIR, '--database', dbPath, ...extraArgs];
  log(`starting server (${label}): ${SERVER_BIN} ${args.join(' ')}  [log: ${path.relative(process.cwd(), logPath)}]`);
  const env = { ...process.env, ...extraEnv, RUST_LOG: process.env.RUST_LOG || 'info' };
  const child = spawn(SERVER_BIN, args, { stdio: ['ignore', logFd, logFd], env });
  fs.closeSync(logFd);
  const server = { child, port, label, logPath, exited: null };
  server.exitPromise = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      server.exited = { code, signal };
      servers.delete(server);
      resolve(server.exited);
    });
    child.once('error', (err) => {
      server.exited = { code: null, signal: null, error: err };
      servers.delete(server);
      resolve(server.exited);
    });
  });
  servers.add(server);
  startedServers.push(server);
  return server;
}

function logTail(server, lines = 30) {
  try {
    return fs.readFileSync(server.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function waitHealthy(server) {
  const url = `http://127.0.0.1:${server.port}/healthz`;
  await waitUntil(`GET ${url} to answer 200`, HEALTH_TIMEOUT_MS, async () => {
    if (server.exited) {
      const how = server.exited.error ? server.exited.error.message : `code ${server.exited.code}, signal ${server.exited.signal}`;
      fail(`server (${server.label}) exited during start-up (${how}). Last log lines:\n${logTail(server)}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      return res.status === 200;
    } catch {
      return false;
    }
  }, 100);
  log(`server (${server.label}) healthy on port ${server.port} (pid ${server.child.pid})`);
}

/** SIGTERM by PID, wait (bounded) for it to exit, SIGKILL if it does not. */
async function stopServer(server, { expectClean = true } = {}) {
  if (server.exited) return server.exited;
  log(`stopping server (${server.label}) pid ${server.child.pid} with SIGTERM`);
  process.kill(server.child.pid, 'SIGTERM');
  const result = await Promise.race([server.exitPromise, sleep(STOP_TIMEOUT_MS).then(() => null)]);
  if (!result) {
    process.kill(server.child.pid, 'SIGKILL');
    await server.exitPromise;
    if (expectClean) fail(`server (${server.label}) did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM (killed)`);
  }
  return server.exited;
}

function killAllServers() {
  for (const server of servers) {
    if (!server.exited) {
      try {
        process.kill(server.child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

function runUpdateScript(baseUrl, user, reportId, status, token = null, caFile = null) {
  const env = { ...process.env, SSE_BASE_URL: baseUrl };
  if (token) env.SSE_TOKEN = token;
  if (caFile) env.CURL_CA_BUNDLE = caFile; // curl's own variable: trust the test's certificate
  return new Promise((resolve, reject) => {
    execFile(
      'bash',
      [UPDATE_SCRIPT, user, reportId, status],
      { env, timeout: 15_000 },
      (err, stdout, stderr) => {
        if (err) {
          reject(new E2EFailure(`update script failed for ${reportId} -> ${status}: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`));
        } else {
          resolve(stdout);
        }
      },
    );
  });
}

// ---------------------------------------------------------------------------------------------
// page helpers

const consoleProblems = [];
let ignoredRefused = 0;

function watchPage(page, name) {
  page.on('console', (msg) => {
    const type = msg.type();
    if (type !== 'error' && type !== 'warning') return;
    const text = msg.text();
    const where = msg.location()?.url ?? '';
    // Expected: the EventSource retrying while the server is down.
    if (text.includes('net::ERR_CONNECTION_REFUSED') && (where.includes('/v4/sse') || text.includes('/v4/sse'))) {
      ignoredRefused++;
      return;
    }
    consoleProblems.push(`[${name}] console.${type}: ${text}${where ? ` (${where})` : ''}`);
  });
  page.on('pageerror', (err) => consoleProblems.push(`[${name}] page error: ${err.message}`));
}

const rowLocator = (page, reportId) => page.getByTestId(`report-row-${reportId}`);

async function rowStatus(page, reportId) {
  return rowLocator(page, reportId).getAttribute('data-status', { timeout: 1_000 });
}

async function expectRowStatus(page, reportId, status, timeoutMs = LIVE_UPDATE_MS, what = '') {
  const started = Date.now();
  await waitUntil(`row ${reportId} to show "${status}"${what ? ` ${what}` : ''}`, timeoutMs, async () => {
    return (await rowLocator(page, reportId).count()) === 1 && (await rowStatus(page, reportId)) === status;
  });
  return Date.now() - started;
}

async function connectionState(page) {
  return page.getByTestId('connection-status').getAttribute('data-state', { timeout: 1_000 });
}

async function expectConnection(page, state, timeoutMs) {
  await waitUntil(`connection indicator to be "${state}"`, timeoutMs, async () => {
    const el = page.getByTestId('connection-status');
    return (await connectionState(page)) === state && (await el.textContent()) === state;
  });
}

async function reportIds(page) {
  return page.$$eval('[data-testid^="report-row-"]', (rows) => rows.map((r) => r.getAttribute('data-testid').slice('report-row-'.length)));
}

/** Clicks "Create New Report" and returns the id of the row that appears. */
async function createReportViaUi(page) {
  const before = new Set(await reportIds(page));
  await page.getByRole('button', { name: 'Create New Report', exact: true }).click();
  const id = await waitUntil('a new report row', 5_000, async () => (await reportIds(page)).find((x) => !before.has(x)));
  await expectRowStatus(page, id, 'pending', 5_000);
  return id;
}

async function buttonsInRow(page, reportId) {
  return rowLocator(page, reportId).getByRole('button').allTextContents();
}

/** A page-global marker: if the page reloads, it is gone. */
async function markPage(page) {
  await page.evaluate(() => {
    window.__e2eNoReload = true;
  });
}
async function assertNotReloaded(page) {
  if (!(await page.evaluate(() => window.__e2eNoReload === true))) fail('the page was reloaded');
}

/** The tabs that say they hold the stream. */
async function leaders(tabs) {
  const found = [];
  for (const tab of tabs) {
    if ((await tab.getByTestId('connection-status').getAttribute('data-stream-role', { timeout: 1_000 })) === 'leader') found.push(tab);
  }
  return found;
}

async function soleLeader(tabs) {
  return waitUntil('exactly one tab to hold the stream', TAKEOVER_MS, async () => {
    const found = await leaders(tabs);
    return found.length === 1 ? found[0] : null;
  });
}

/** Waits until the server holds `count` /v4 streams (its /metrics), and that stays so for a moment. */
async function expectStreams(baseUrl, count, what) {
  const open = async () => {
    const text = await (await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
    const line = text.split('\n').find((l) => l.startsWith('sse_connections_open{channel="v4"} '));
    return line ? Number(line.split(' ')[1]) : NaN;
  };
  await waitUntil(`the server to hold ${count} /v4 stream(s) ${what}`, 5_000, async () => (await open()) === count);
  await sleep(300);
  const now = await open();
  if (now !== count) fail(`the server holds ${now} /v4 streams ${what}, expected ${count}`);
}

// ---------------------------------------------------------------------------------------------
// the test

let SERVER_BIN;
let passed = 0;

async function step(name, fn) {
  log(`STEP ${name}`);
  await fn();
  passed++;
  log(`  ok: ${name}`);
}

async function main() {
  SERVER_BIN = process.env.SSE_SERVER_BIN;
  if (!SERVER_BIN) fail('SSE_SERVER_BIN is not set: point it at the server binary, e.g. SSE_SERVER_BIN=../target/release/server_sent_events');
  SERVER_BIN = path.resolve(SERVER_BIN);
  if (!fs.existsSync(SERVER_BIN)) fail(`SSE_SERVER_BIN=${SERVER_BIN} does not exist`);
  if (!fs.existsSync(path.join(DIST_DIR, 'index.html'))) fail(`${DIST_DIR}/index.html is missing: run \`npm run build\` first`);
  if (!fs.existsSync(CHROMIUM_PATH)) fail(`chromium not found at ${CHROMIUM_PATH}: run scripts/install-chromium.sh or set CHROMIUM_PATH`);
  if (!fs.existsSync(UPDATE_SCRIPT)) fail(`update script not found at ${UPDATE_SCRIPT} (set UPDATE_STATUS_SCRIPT)`);
  fs.mkdirSync(OUT_DIR, { recursive: true });

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sse-e2e-'));
  const dbPath = path.join(tmp, 'reports.sqlite3');
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;

  try {
    await runBrowserFlow({ port, dbPath, baseUrl });
    await runJwtFlow({ tmp });
    await runHttpsFlow({ tmp });
  } finally {
    for (const s of [...servers]) await stopServer(s, { expectClean: false }).catch(() => {});
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

async function runBrowserFlow({ port, dbPath, baseUrl }) {
  let server = startServer({ port, dbPath, label: 'main' });
  await waitHealthy(server);

  const browser = await chromium.launch({
    executablePath: CHROMIUM_PATH,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(10_000);
    const page = await context.newPage();
    watchPage(page, 'page1');
    let user;
    let reportA;
    let reportB;
    let sharedTabs;
    let sharedReport;

    await step('log in with a generated UUID', async () => {
      await page.goto(baseUrl, { waitUntil: 'load', timeout: 15_000 });
      const input = page.getByLabel('User ID (UUID)');
      await input.waitFor({ timeout: 10_000 });
      await page.screenshot({ path: path.join(OUT_DIR, 'login-1280x800.png') });
      await input.fill('not-a-uuid');
      await page.getByRole('button', { name: 'Log in', exact: true }).click();
      await waitUntil('the validation error', 2_000, async () => (await page.getByRole('alert').count()) > 0);
      await page.getByRole('button', { name: 'Generate', exact: true }).click();
      user = await input.inputValue();
      if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(user)) fail(`"Generate" gave ${JSON.stringify(user)}`);
      await page.getByRole('button', { name: 'Log in', exact: true }).click();
      await expectConnection(page, 'connected', 10_000);
      await page.getByText('No reports yet').waitFor({ timeout: 5_000 });
      log(`  user ${user}`);
    });

    await step('create two reports', async () => {
      reportA = await createReportViaUi(page);
      reportB = await createReportViaUi(page);
      const ids = await reportIds(page);
      if (ids.join() !== [reportA, reportB].join()) fail(`expected rows [A, B] oldest first, got ${ids.join(', ')}`);
      log(`  A=${reportA} B=${reportB}`);
    });

    await step('report A follows the update script live (pending→queued→processing→completed)', async () => {
      await markPage(page);
      for (const status of ['queued', 'processing', 'completed']) {
        await runUpdateScript(baseUrl, user, reportA, status);
        const ms = await expectRowStatus(page, reportA, status, LIVE_UPDATE_MS, 'after the update script');
        log(`  A is ${status} after ${ms} ms`);
      }
      await assertNotReloaded(page);
      const buttons = await buttonsInRow(page, reportA);
      if (buttons.length !== 0) fail(`completed report A still offers buttons: ${buttons.join(', ')}`);
    });

    await step('report B moves with the UI buttons (pending→queued→canceled); invalid actions are not offered', async () => {
      const row = rowLocator(page, reportB);
      let buttons = await buttonsInRow(page, reportB);
      if (buttons.join() !== 'queued,canceled') fail(`pending B offers [${buttons}] instead of [queued, canceled]`);
      await row.getByRole('button', { name: 'queued', exact: true }).click();
      await expectRowStatus(page, reportB, 'queued');
      buttons = await buttonsInRow(page, reportB);
      if (buttons.join() !== 'processing,canceled') fail(`queued B offers [${buttons}] instead of [processing, canceled]`);
      for (const invalid of ['completed', 'pending', 'failed', 'queued']) {
        if ((await row.getByRole('button', { name: invalid, exact: true }).count()) !== 0) fail(`queued B offers the invalid action "${invalid}"`);
      }
      await row.getByRole('button', { name: 'canceled', exact: true }).click();
      await expectRowStatus(page, reportB, 'canceled');
      buttons = await buttonsInRow(page, reportB);
      if (buttons.join() !== 'pending') fail(`canceled B offers [${buttons}] instead of [pending]`);
      if ((await page.getByRole('alert').count()) !== 0) fail(`an error is shown: ${await page.getByRole('alert').first().textContent()}`);
      await assertNotReloaded(page);
    });

    await step('screenshots at 1280×800 and 375×800', async () => {
      await page.screenshot({ path: path.join(OUT_DIR, 'dashboard-1280x800.png') });
      await page.setViewportSize({ width: 375, height: 800 });
      await sleep(200);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      if (overflow > 0) fail(`at 375 px the page itself scrolls sideways by ${overflow} px (only the table may)`);
      await page.screenshot({ path: path.join(OUT_DIR, 'dashboard-375x800.png') });
      await page.setViewportSize({ width: 1280, height: 800 });
    });

    await step('server stopped: indicator shows "reconnecting"', async () => {
      await stopServer(server);
      await expectConnection(page, 'reconnecting', 10_000);
      // Stay down until the browser has tried (and failed) to reconnect at least once, so the
      // page is exercised against refused connections, not only against a quick restart.
      const refusedBefore = ignoredRefused;
      try {
        await waitUntil('a refused reconnect attempt', 8_000, () => ignoredRefused > refusedBefore, 100);
        log(`  a reconnect attempt was refused; indicator: ${await connectionState(page)}`);
      } catch {
        log('  (no refused reconnect attempt seen within 8 s; continuing)');
      }
      const state = await connectionState(page);
      if (state === 'connected') fail('the page claims to be connected while its server is down');
    });

    await step('a change made while the page is disconnected shows after the server restarts', async () => {
      // Make the change while the page cannot be connected: the main port stays down and a second
      // instance on another port, on the same database, takes the update; then it is stopped.
      const sidePort = await freePort();
      const side = startServer({ port: sidePort, dbPath, label: 'side' });
      await waitHealthy(side);
      await runUpdateScript(`http://127.0.0.1:${sidePort}`, user, reportB, 'pending');
      await stopServer(side);
      const state = await connectionState(page);
      if (state === 'connected') fail('the page claims to be connected while its server is down');
      if ((await rowStatus(page, reportB)) !== 'canceled') fail('B changed while the page was disconnected?');

      server = startServer({ port, dbPath, label: 'main-restarted' });
      await waitHealthy(server);
      await expectConnection(page, 'connected', RECONNECT_TIMEOUT_MS);
      const ms = await expectRowStatus(page, reportB, 'pending', 5_000, 'after reconnecting');
      log(`  B is pending ${ms} ms after the indicator showed connected`);
      await assertNotReloaded(page);
    });

    await step('a second page of the same user sees a report created in the first within 2 s', async () => {
      const page2 = await context.newPage();
      watchPage(page2, 'page2');
      await page2.goto(baseUrl, { waitUntil: 'load', timeout: 15_000 });
      await expectConnection(page2, 'connected', 10_000);
      await expectRowStatus(page2, reportA, 'completed', 5_000);
      await expectRowStatus(page2, reportB, 'pending', 5_000);
      const reportC = await createReportViaUi(page);
      const ms = await expectRowStatus(page2, reportC, 'pending', LIVE_UPDATE_MS, 'in the second page');
      log(`  C=${reportC} appeared in page2 after ${ms} ms`);
      await rowLocator(page2, reportC).getByRole('button', { name: 'queued', exact: true }).click();
      await expectRowStatus(page, reportC, 'queued', LIVE_UPDATE_MS, 'in the first page (changed in the second)');
      const dupes = (await reportIds(page2)).filter((x) => x === reportC).length;
      if (dupes !== 1) fail(`report C shows ${dupes} times in page2`);
      await page2.close();
    });

    await step('10 tabs of one user hold one stream; every tab shows a change within 2 s; the leader closes, another takes over', async () => {
      const tabs = [page];
      for (let i = 2; i <= TABS; i++) {
        const tab = await context.newPage();
        watchPage(tab, `tab${i}`);
        await tab.goto(baseUrl, { waitUntil: 'load', timeout: 15_000 });
        tabs.push(tab);
      }
      for (const tab of tabs) await expectConnection(tab, 'connected', 10_000);
      await expectStreams(baseUrl, 1, 'for 10 tabs');
      const leader = await soleLeader(tabs);
      const report = await createReportViaUi(tabs[TABS - 1]);
      const t0 = Date.now();
      await runUpdateScript(baseUrl, user, report, 'queued');
      for (const tab of tabs) await expectRowStatus(tab, report, 'queued', LIVE_UPDATE_MS - (Date.now() - t0), 'in every tab');
      log(`  one stream for ${TABS} tabs; the change showed in all of them within ${Date.now() - t0} ms`);

      const closedAt = Date.now();
      await leader.close();
      tabs.splice(tabs.indexOf(leader), 1);
      await waitUntil('another tab to take the stream over', TAKEOVER_MS, async () => {
        const found = await leaders(tabs);
        return found.length === 1 && (await connectionState(found[0])) === 'connected';
      });
      log(`  the leader closed; another tab held the stream ${Date.now() - closedAt} ms later`);
      await expectStreams(baseUrl, 1, 'after the leader closed');
      const t1 = Date.now();
      await runUpdateScript(baseUrl, user, report, 'processing');
      for (const tab of tabs) await expectRowStatus(tab, report, 'processing', LIVE_UPDATE_MS - (Date.now() - t1), 'after the take-over');
      sharedTabs = tabs;
      sharedReport = report;
    });

    await step('the leader tab hangs, then one freezes: another takes over within 2 s each time; the stuck ones catch up', async () => {
      const tabs = sharedTabs;
      const hung = await soleLeader(tabs);
      const others = tabs.filter((t) => t !== hung);
      // Its main thread blocked for 4 s: no heartbeat, no event handled (a frozen or stuck tab).
      const hangMs = 4_000;
      const hangAt = Date.now();
      const hanging = hung.evaluate((ms) => {
        const end = Date.now() + ms;
        while (Date.now() < end) {
          // busy
        }
      }, hangMs);
      const next = await waitUntil('another tab to take the stream over', TAKEOVER_MS, async () => {
        const found = await leaders(others);
        return found.length === 1 && (await connectionState(found[0])) === 'connected' ? found[0] : null;
      });
      log(`  the leader hung; another tab held the stream ${Date.now() - hangAt} ms later`);
      const t0 = Date.now();
      await runUpdateScript(baseUrl, user, sharedReport, 'failed');
      for (const tab of others) await expectRowStatus(tab, sharedReport, 'failed', LIVE_UPDATE_MS - (Date.now() - t0), 'while the old leader hangs');
      await hanging;
      await expectRowStatus(hung, sharedReport, 'failed', LIVE_UPDATE_MS, 'in the tab that hung');
      const now = await soleLeader(tabs);
      if (now !== next) fail('the tab that hung took the stream back');
      await expectStreams(baseUrl, 1, 'after the hung tab recovered');

      // A leader told it is being frozen (Page Lifecycle `freeze`; dispatched here, as headless
      // Chromium never freezes a visible page) lets go at once; on `resume` it follows again.
      const frozenAt = Date.now();
      await next.evaluate(() => document.dispatchEvent(new Event('freeze')));
      const rest = tabs.filter((t) => t !== next);
      await waitUntil('another tab to take the stream over from the frozen one', TAKEOVER_MS, async () => {
        const found = await leaders(rest);
        return found.length === 1 && (await connectionState(found[0])) === 'connected';
      });
      log(`  the leader froze; another tab held the stream ${Date.now() - frozenAt} ms later`);
      const t1 = Date.now();
      await runUpdateScript(baseUrl, user, sharedReport, 'pending');
      for (const tab of rest) await expectRowStatus(tab, sharedReport, 'pending', LIVE_UPDATE_MS - (Date.now() - t1), 'after the freeze');
      await next.evaluate(() => document.dispatchEvent(new Event('resume')));
      await expectRowStatus(next, sharedReport, 'pending', LIVE_UPDATE_MS, 'in the resumed tab');
      if ((await leaders(tabs)).length !== 1) fail('not one leader after the frozen tab resumed');
      await expectStreams(baseUrl, 1, 'after the frozen tab resumed');
      for (const tab of tabs) if (tab !== page) await tab.close();
    });

    await step('no console errors or warnings', async () => {
      await sleep(300);
      if (consoleProblems.length > 0) fail(`console problems:\n  ${consoleProblems.join('\n  ')}`);
      log(`  (ignored ${ignoredRefused} expected ERR_CONNECTION_REFUSED of /v4/sse while the server was down)`);
    });

    await context.close();
  } finally {
    await browser.close().catch(() => {});
  }
}

/** A token for `sub` from the server's own `token` command. */
function mintToken(secret, sub, ttl) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, SSE_JWT_SECRET: secret };
    execFile(SERVER_BIN, ['token', '--sub', sub, '--ttl', ttl], { env, timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) reject(new E2EFailure(`token command failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

/** With access control on: token login, live updates through tickets, expiry back to the login. */
async function runJwtFlow({ tmp }) {
  const secret = `e2e-${crypto.randomUUID()}-secret`;
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  const server = startServer({
    port,
    dbPath: path.join(tmp, 'jwt.sqlite3'),
    label: 'jwt',
    extraArgs: ['--auth', 'jwt', '--jwt-leeway', '1s'],
    extraEnv: { SSE_JWT_SECRET: secret }, // in the environment, so no log shows it
  });
  await waitHealthy(server);
  const browser = await chromium.launch({
    executablePath: CHROMIUM_PATH,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(10_000);
    const page = await context.newPage();
    await step('jwt mode: token login, a live update through a ticket, expiry back to the login', async () => {
      const user = crypto.randomUUID();
      const ttlSeconds = 20;
      const token = await mintToken(secret, user, `${ttlSeconds}s`);
      const issued = Date.now();
      await page.goto(baseUrl, { waitUntil: 'load', timeout: 15_000 });
      const field = page.getByLabel('Access token (JWT)');
      await field.waitFor({ timeout: 10_000 });
      await field.fill(token);
      await page.getByRole('button', { name: 'Log in', exact: true }).click();
      await page.getByText(user).waitFor({ timeout: 10_000 });
      await expectConnection(page, 'connected', 10_000);
      const report = await createReportViaUi(page);
      const t0 = Date.now();
      await runUpdateScript(baseUrl, user, report, 'queued', token);
      await expectRowStatus(page, report, 'queued', LIVE_UPDATE_MS, 'pushed through the ticketed stream');
      log(`  the change arrived after ${Date.now() - t0} ms`);
      await page.screenshot({ path: path.join(OUT_DIR, 'jwt-dashboard-1280x800.png') });
      const left = issued + ttlSeconds * 1000 - Date.now();
      await waitUntil('the login page after the token expired', left + 10_000, async () => (await page.getByText('Your session expired').count()) > 0);
      await field.waitFor({ timeout: 2_000 });
      log(`  back at the login ${Math.round((Date.now() - issued) / 1000)} s after the token was issued (ttl ${ttlSeconds} s)`);
    });
    await context.close();
  } finally {
    await browser.close().catch(() => {});
    await stopServer(server);
  }
}

/** A self-signed certificate for localhost made with openssl: { cert, key } paths. */
function makeCertificate(dir) {
  const cert = path.join(dir, 'localhost.crt');
  const key = path.join(dir, 'localhost.key');
  return new Promise((resolve, reject) => {
    execFile(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', key, '-out', cert],
      { timeout: 15_000 },
      (err, _stdout, stderr) => (err ? reject(new E2EFailure(`openssl failed: ${err.message}\n${stderr}`)) : resolve({ cert, key })),
    );
  });
}

/** GET https://127.0.0.1:port/healthz trusting `ca`: its status, or null when it does not answer. */
function httpsStatus(port, ca) {
  return new Promise((resolve) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/healthz', ca, servername: 'localhost', timeout: 1_000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(null));
    req.on('timeout', () => req.destroy());
  });
}

/** Over HTTPS: the dashboard is served over HTTP/2 (ALPN) and its stream is live. */
async function runHttpsFlow({ tmp }) {
  const { cert, key } = await makeCertificate(tmp);
  const ca = fs.readFileSync(cert);
  const port = await freePort();
  const baseUrl = `https://localhost:${port}`;
  const server = startServer({ port, dbPath: path.join(tmp, 'https.sqlite3'), label: 'https', extraArgs: ['--tls-cert', cert, '--tls-key', key] });
  await waitUntil(`GET https://127.0.0.1:${port}/healthz to answer 200`, HEALTH_TIMEOUT_MS, async () => {
    if (server.exited) fail(`server (https) exited during start-up. Last log lines:\n${logTail(server)}`);
    return (await httpsStatus(port, ca)) === 200;
  }, 100);
  const browser = await chromium.launch({
    executablePath: CHROMIUM_PATH,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
    context.setDefaultTimeout(10_000);
    const page = await context.newPage();
    watchPage(page, 'https');
    await step('over HTTPS the dashboard and its stream use HTTP/2', async () => {
      await page.goto(baseUrl, { waitUntil: 'load', timeout: 15_000 });
      const input = page.getByLabel('User ID (UUID)');
      await page.getByRole('button', { name: 'Generate', exact: true }).click();
      const user = await input.inputValue();
      await page.getByRole('button', { name: 'Log in', exact: true }).click();
      await expectConnection(page, 'connected', 10_000);
      const report = await createReportViaUi(page);
      await runUpdateScript(`https://127.0.0.1:${port}`, user, report, 'queued', null, cert);
      await expectRowStatus(page, report, 'queued', LIVE_UPDATE_MS, 'pushed over HTTP/2');
      const protocols = await page.evaluate(() =>
        performance.getEntries().filter((e) => 'nextHopProtocol' in e).map((e) => [e.name.replace(location.origin, ''), e.nextHopProtocol]),
      );
      // A request the page aborted (a superseded list fetch) has no protocol: left out.
      const done = protocols.filter(([, p]) => p !== '');
      const notH2 = done.filter(([, p]) => p !== 'h2');
      if (notH2.length > 0) fail(`not all over h2: ${JSON.stringify(protocols)}`);
      const reports = done.find(([name]) => name.startsWith('/v4/reports'));
      if (!reports || !done.some(([name]) => name === '/')) fail(`no page or /v4/reports entry over h2 in ${JSON.stringify(protocols)}`);
      log(`  ${done.length} entries, all h2 (page, assets, ${reports[0]}); ${protocols.length - done.length} aborted`);
    });
    await context.close();
  } finally {
    await browser.close().catch(() => {});
    await stopServer(server);
  }
}

const TOTAL_STEPS = 13;
const watchdog = setTimeout(() => {
  console.error(`e2e: FAILED: overall timeout of ${OVERALL_TIMEOUT_MS} ms`);
  killAllServers();
  console.error(`e2e: ${passed} passed, 1 failed`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAllServers();
    process.exit(130);
  });
}
process.on('exit', killAllServers);

main().then(
  () => {
    clearTimeout(watchdog);
    console.log(`e2e: screenshots in ${path.relative(process.cwd(), OUT_DIR) || '.'}/`);
    console.log(`e2e: ${passed} passed, 0 failed`);
    if (passed !== TOTAL_STEPS) {
      console.error(`e2e: expected ${TOTAL_STEPS} steps, ran ${passed}`);
      process.exit(1);
    }
  },
  (err) => {
    clearTimeout(watchdog);
    killAllServers();
    console.error(`\ne2e: FAILED: ${err instanceof E2EFailure ? err.message : err?.stack ?? err}`);
    for (const s of startedServers) console.error(`--- server ${s.label} (port ${s.port}) log tail ---\n${logTail(s, 20)}`);
    console.error(`e2e: ${passed} passed, 1 failed`);
    process.exitCode = 1;
  },
);
