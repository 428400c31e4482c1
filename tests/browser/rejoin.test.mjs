// Someone left alone in a room must still receive whoever joins next: the subscriber connection
// renegotiates from "nothing to receive" back to media (e.g. a peer drops and rejoins).
import {
  runTest, pollUntil, inboundStats, progressSince, remoteTiles, randomName,
} from './lib.mjs';

runTest('rejoin', async ({ baseUrl, newPage, step }) => {
  const room = randomName('rejoin');
  const url = (name) => `${baseUrl}/?room=${room}&name=${name}&autojoin=1`;
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await Promise.all([alice.goto(url('Alice')), bob.goto(url('Bob'))]);
  await pollUntil('alice decodes bob', () => inboundStats(alice, 'subscriber'),
    (s) => s.ready && s.framesDecoded > 30, { timeoutMs: 20_000 });
  step('alice decodes bob');

  await bob.click('#leave');
  await pollUntil("bob's tile disappears", () => remoteTiles(alice), (t) => t.length === 0,
    { timeoutMs: 10_000 });
  await bob.close();
  step('bob left; alice is alone');

  // A fresh page with a fresh identity, as a rejoin after a dropped connection would be.
  const again = await newPage('bob-again');
  await again.goto(url('Bob'));
  await pollUntil('alice shows the newcomer', () => remoteTiles(alice), (t) => t.length === 1,
    { timeoutMs: 10_000 });
  const baseline = await inboundStats(alice, 'subscriber');
  const got = await pollUntil("alice decodes the newcomer's video and audio",
    async () => progressSince(baseline, await inboundStats(alice, 'subscriber')),
    (p) => p.framesDecoded > 30 && p.audioPackets > 50, { timeoutMs: 20_000 });
  step(`alice receives the newcomer: +${got.framesDecoded} frames decoded, `
    + `+${got.audioPackets} audio packets`);
});
