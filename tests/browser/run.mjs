// Runs every *.test.mjs here one after the other (never two browsers at once: encoders starve on
// small machines), each in its own process with a hard timeout. Exits non-zero on any failure.
// Usage: node run.mjs [name-filter ...]
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
// The test's own timeout fires first; this one catches a test that cannot even clean up.
const HARD_TIMEOUT_MS = Number(process.env.MOIEN_TEST_TIMEOUT_MS || 120_000) + 15_000;
const KILL_GRACE_MS = 5000;

const filters = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith('.test.mjs'))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();

function runOne(file) {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, [path.join(here, file)], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      // SIGTERM lets the test kill its server and browser; SIGKILL if it does not manage.
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS).unref();
    }, HARD_TIMEOUT_MS);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({
        file, ok: code === 0 && !timedOut, code, signal, timedOut,
        seconds: (Date.now() - started) / 1000,
      });
    });
  });
}

if (files.length === 0) {
  console.error(`no test matches ${filters.join(' ')}`);
  process.exit(2);
}

const results = [];
for (const file of files) {
  console.log(`▶ ${file}`);
  const r = await runOne(file);
  results.push(r);
  const why = r.timedOut ? ' (hard timeout)' : r.ok ? '' : ` (exit ${r.code ?? r.signal})`;
  console.log(`${r.ok ? 'PASS' : 'FAIL'} ${file} ${r.seconds.toFixed(1)} s${why}`);
}

const failed = results.filter((r) => !r.ok);
console.log(`\n${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
