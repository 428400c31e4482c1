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
 * The default switches, with the test's `extra` and then `MOIEN_CHROMIUM_ARGS` (space-separated)
 * added; an added switch replaces a default of the same name.
 */
function chromiumArgs(testArgs) {
  const fromEnv = (process.env.MOIEN_CHROMIUM_ARGS ?? '').split(/\s+/).filter(Boolean);
  const extra = [...testArgs, ...fromEnv];
  const name = (arg) => arg.split('=')[0];
  const replaced = new Set(extra.map(name));
  return [...CHROMIUM_ARGS.filter((a) => !replaced.has(name(a))), ...extra];
}

/**
 * Runs one test: starts the server and Chromium, hands them to `body`, and always cleans up, also
 * on failure, timeout or a signal. Exits the process with 0 on success and 1 on failure.
 * `options.chromiumArgs` adds switches for this test only (e.g. a faster fake camera).
 * @param {string} name
 * @param {(ctx: {baseUrl: string, browser: import('playwright-core').Browser,
 *   newPage: (label: string, options?: {expectHttpErrors?: boolean}) =>
 *     Promise<import('playwright-core').Page>,
 *   step: (text: string) => void}) => Promise<void>} body
 */
export async function runTest(name, body, options = {}) {
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
        executablePath: CHROMIUM, headless: true, args: chromiumArgs(options.chromiumArgs ?? []),
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

/**
 * Opens the call page in `page` and waits until it joined. `query` adds parameters (codec, svc,
 * simulcast, share, relay, ...).
 */
export async function joinCall(page, baseUrl, room, name, query = {}) {
  const q = new URLSearchParams({ room, name, autojoin: '1', ...query });
  await page.goto(`${baseUrl}/?${q}`);
  await page.waitForFunction(() => window.moienRoom?.state === 'connected', null, { timeout: 15_000 })
    .catch(async (err) => {
      const status = await page.textContent('#status').catch(() => '');
      throw new Error(`${name} did not join (status: "${status}"): ${err.message}`);
    });
}

/**
 * The sid of a track another participant publishes, as this page's SDK knows it: the first of
 * `kind` and `source` (null until announced).
 */
export async function remoteTrackSid(page, kind, source) {
  return page.evaluate(([k, src]) => {
    for (const p of window.moienRoom?.participants.values() ?? []) {
      for (const t of p.tracks.values()) if (t.kind === k && t.source === src) return t.sid;
    }
    return null;
  }, [kind, source]);
}

/**
 * Receive figures of the video a call page shows in one <video> element (CSS selector): the
 * inbound-rtp of the subscriber receiver whose track the element plays. `shown` is false when
 * the element plays nothing received.
 */
export async function shownVideoStats(page, selector) {
  return page.evaluate(async (sel) => {
    const el = document.querySelector(sel);
    const track = el?.srcObject?.getVideoTracks?.()[0];
    const pc = window.moienRoom?.subscriber;
    const transceiver = track && pc?.getTransceivers().find((t) => t.receiver.track === track);
    if (!transceiver) return { shown: false };
    const report = await transceiver.receiver.getStats();
    const out = {
      shown: true, mid: transceiver.mid, videoWidth: el.videoWidth, framesDecoded: 0,
      frameWidth: 0, frameHeight: 0, framesPerSecond: 0, packetsReceived: 0, codec: '',
      framesReceived: 0, keyFramesDecoded: 0, pliCount: 0,
    };
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
      out.framesDecoded = s.framesDecoded ?? 0;
      out.frameWidth = s.frameWidth ?? 0;
      out.frameHeight = s.frameHeight ?? 0;
      out.framesPerSecond = s.framesPerSecond ?? 0;
      out.packetsReceived = s.packetsReceived ?? 0;
      out.framesReceived = s.framesReceived ?? 0;
      out.keyFramesDecoded = s.keyFramesDecoded ?? 0;
      out.pliCount = s.pliCount ?? 0;
      out.codec = report.get(s.codecId)?.mimeType ?? '';
    });
    return out;
  }, selector);
}

/**
 * What a call page sends on its publisher connection: one entry per video outbound-rtp (one per
 * simulcast layer), with the sender's encoding flags.
 */
export async function outboundVideo(page) {
  return page.evaluate(async () => {
    const room = window.moienRoom;
    if (!room) return [];
    const report = await room.publisher.getStats();
    const out = [];
    report.forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      out.push({
        mid: s.mid, rid: s.rid ?? '', active: s.active, frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0,
        framesPerSecond: s.framesPerSecond ?? 0, framesEncoded: s.framesEncoded ?? 0,
        scalabilityMode: s.scalabilityMode ?? '', codec: report.get(s.codecId)?.mimeType ?? '',
        qualityLimitationReason: s.qualityLimitationReason ?? '',
      });
    });
    return out.sort((a, b) => a.mid.localeCompare(b.mid) || a.rid.localeCompare(b.rid));
  });
}

/** The encodings of a page's published video of `source`: [{rid, active}] in sender order. */
export async function localEncodings(page, source = 'camera') {
  return page.evaluate((src) => {
    const local = [...window.moienRoom.localParticipant.tracks.values()]
      .find((t) => t.kind === 'video' && t.source === src);
    return local ? local.sender.getParameters().encodings.map((e) => ({
      rid: e.rid ?? '', active: e.active, scaleResolutionDownBy: e.scaleResolutionDownBy,
      maxBitrate: e.maxBitrate, scalabilityMode: e.scalabilityMode,
    })) : null;
  }, source);
}

/**
 * Starts recording a page's SDK events of the given types into `window.testEvents[type]`, so a
 * test can wait on them later with `recordedEvents`.
 */
export async function recordEvents(page, types) {
  await page.evaluate((list) => {
    window.testEvents ??= {};
    for (const type of list) {
      if (window.testEvents[type]) continue;
      window.testEvents[type] = [];
      window.moienRoom.addEventListener(type, (e) => {
        const d = e.detail;
        window.testEvents[type].push(JSON.parse(JSON.stringify(d, (k, v) => {
          if (v instanceof Map || v instanceof MediaStreamTrack || v instanceof MediaStream) return undefined;
          if (typeof RTCRtpSender !== 'undefined' && v instanceof RTCRtpSender) return undefined;
          return v;
        })));
      });
    }
  }, types);
}

export async function recordedEvents(page, type) {
  return page.evaluate((t) => window.testEvents?.[t] ?? [], type);
}
