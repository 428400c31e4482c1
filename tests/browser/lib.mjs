// Shared harness of the browser tests: a Moien server and one Chromium per test file, both always
// torn down, plus polling helpers that wait on conditions rather than on time.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');
export const MOIEN_BIN = process.env.MOIEN_BIN || path.join(REPO, 'target', 'debug', 'moien');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const TEST_TIMEOUT_MS = Number(process.env.MOIEN_TEST_TIMEOUT_MS || 120_000);

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
];

const LISTEN_LINE = /^\s*http\s+(http:\/\/\S+)/m;
const LOG_TAIL_LINES = 80;

export function log(...args) {
  process.stderr.write(`${args.join(' ')}\n`);
}

export function randomName(prefix) {
  return `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Starts `moien serve --dev` on free ports and resolves with its base URL once it listens. */
function startServer() {
  const child = spawn(MOIEN_BIN, ['serve', '--dev', '--http', '127.0.0.1:0', '--media-port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // TURN on free ports too: another server may hold the default 3478.
    env: {
      RUST_LOG: 'info',
      ...process.env,
      MOIEN_TURN_LISTEN_UDP: '127.0.0.1:0',
      MOIEN_TURN_LISTEN_TCP: '127.0.0.1:0',
    },
  });
  const lines = [];
  let stdout = '';
  const keep = (prefix) => (chunk) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      lines.push(`${prefix} ${line}`);
      if (lines.length > LOG_TAIL_LINES) lines.shift();
    }
  };
  child.stderr.on('data', keep('[server]'));
  child.stdout.on('data', keep('[server]'));
  const ready = new Promise((resolve, reject) => {
    const onData = (chunk) => {
      stdout += chunk.toString();
      const m = LISTEN_LINE.exec(stdout);
      if (m) {
        child.stdout.off('data', onData);
        resolve(m[1].replace(/\/+$/, ''));
      }
    };
    child.stdout.on('data', onData);
    child.once('error', (err) => reject(new Error(`cannot start ${MOIEN_BIN}: ${err.message}`)));
    child.once('exit', (code, signal) => {
      reject(new Error(`server exited before listening (code ${code}, signal ${signal})`));
    });
  });
  return { child, ready, logTail: () => lines.join('\n') };
}

/**
 * Runs one test: starts the server and Chromium, hands them to `body`, and always cleans up, also
 * on failure, timeout or a signal. Exits the process with 0 on success and 1 on failure.
 * @param {string} name
 * @param {(ctx: {baseUrl: string, browser: import('playwright-core').Browser,
 *   newPage: (label: string, options?: {expectHttpErrors?: boolean}) =>
 *     Promise<import('playwright-core').Page>,
 *   step: (text: string) => void}) => Promise<void>} body
 */
export async function runTest(name, body) {
  const started = Date.now();
  let server = null;
  let browser = null;
  const cleanup = async () => {
    if (server && server.child.exitCode === null && server.child.signalCode === null) {
      server.child.kill('SIGKILL');
    }
    if (browser) await browser.close().catch(() => {});
  };
  // The runner stops a test that overruns with SIGTERM; the server must not outlive it.
  const onSignal = (sig) => {
    log(`[${name}] ${sig}: cleaning up`);
    server?.child.kill('SIGKILL');
    process.exit(1);
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  process.once('exit', () => server?.child.kill('SIGKILL'));

  let timer;
  const overrun = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${TEST_TIMEOUT_MS / 1000} s`)),
      TEST_TIMEOUT_MS);
  });

  const step = (text) => log(`[${name}] ${((Date.now() - started) / 1000).toFixed(1)}s ${text}`);
  try {
    await Promise.race([overrun, (async () => {
      server = startServer();
      const baseUrl = await server.ready;
      step(`server at ${baseUrl}`);
      browser = await chromium.launch({
        executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
      });
      const newPage = async (label, { expectHttpErrors = false } = {}) => {
        // One context per page: separate storage, like separate people.
        const context = await browser.newContext();
        const page = await context.newPage();
        page.on('console', (msg) => {
          // Chromium logs every 4xx; a page that provokes them on purpose need not echo them.
          if (expectHttpErrors && msg.text().startsWith('Failed to load resource')) return;
          log(`[${label}] console.${msg.type()}: ${msg.text()}`);
        });
        page.on('pageerror', (err) => log(`[${label}] pageerror: ${err.message}`));
        return page;
      };
      await body({ baseUrl, browser, newPage, step });
    })()]);
    clearTimeout(timer);
    await cleanup();
    log(`[${name}] PASS in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    process.exit(0);
  } catch (err) {
    clearTimeout(timer);
    log(`[${name}] FAIL: ${err.stack || err.message}`);
    if (server) log(`[${name}] last server output:\n${server.logTail()}`);
    await cleanup();
    process.exit(1);
  }
}

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/**
 * Polls `probe()` every `intervalMs` until `done(value)` holds; throws with the last value seen
 * when `timeoutMs` passes. A condition with a deadline, never a fixed sleep.
 */
export async function pollUntil(label, probe, done, { timeoutMs = 20_000, intervalMs = 250 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (done(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`${label}: not reached within ${timeoutMs / 1000} s; last: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * In-page inbound-rtp figures of one peer connection: `which` is `subscriber` (the call page's
 * `moienRoom.subscriber`) or `whep` (`window.whepPc`). Video: the best framesDecoded and
 * packetsReceived of any one stream; audio: the best packetsReceived.
 */
export async function inboundStats(page, which) {
  return page.evaluate(async (w) => {
    const pc = w === 'whep' ? window.whepPc : window.moienRoom?.subscriber;
    if (!pc || pc.connectionState === 'closed') return { ready: false };
    const report = await pc.getStats();
    const out = {
      ready: true, state: pc.connectionState, framesDecoded: 0, videoPackets: 0, audioPackets: 0,
      streams: {},
    };
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      out.streams[s.id] = {
        kind: s.kind, mid: s.mid, framesDecoded: s.framesDecoded ?? 0,
        packetsReceived: s.packetsReceived ?? 0,
      };
      if (s.kind === 'video') {
        out.framesDecoded = Math.max(out.framesDecoded, s.framesDecoded ?? 0);
        out.videoPackets = Math.max(out.videoPackets, s.packetsReceived ?? 0);
      } else if (s.kind === 'audio') {
        out.audioPackets = Math.max(out.audioPackets, s.packetsReceived ?? 0);
      }
    });
    return out;
  }, which);
}

/**
 * What arrived since `baseline` (an earlier inboundStats): the best per-stream growth of video
 * framesDecoded and of audio packetsReceived. Streams that stopped contribute nothing.
 */
export function progressSince(baseline, now) {
  const out = { framesDecoded: 0, audioPackets: 0 };
  for (const [id, st] of Object.entries(now.streams ?? {})) {
    const was = baseline.streams?.[id] ?? { framesDecoded: 0, packetsReceived: 0 };
    if (st.kind === 'video') {
      out.framesDecoded = Math.max(out.framesDecoded, st.framesDecoded - was.framesDecoded);
    } else if (st.kind === 'audio') {
      out.audioPackets = Math.max(out.audioPackets, st.packetsReceived - was.packetsReceived);
    }
  }
  return out;
}

/** Remote tiles shown on a call page: [{sid, identity, name}]. */
export async function remoteTiles(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('#grid .tile.remote'), (el) => ({
    sid: el.dataset.participant,
    identity: el.dataset.identity,
    name: el.querySelector('.name')?.textContent ?? '',
  })));
}
