// Two browsers in one room through the call page: each decodes the other's video and receives the
// other's audio, each shows one remote tile, and a leave removes the tile on the other side.
import {
  runTest, pollUntil, inboundStats, remoteTiles, randomName, assert,
} from './lib.mjs';

const MEDIA_DEADLINE_MS = 20_000;

runTest('call', async ({ baseUrl, newPage, step }) => {
  const room = randomName('call');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  const url = (name) => `${baseUrl}/?room=${room}&name=${name}&autojoin=1`;
  await Promise.all([alice.goto(url('Alice')), bob.goto(url('Bob'))]);

  for (const [label, page] of [['alice', alice], ['bob', bob]]) {
    await page.waitForFunction(() => window.moienRoom?.state === 'connected', null, { timeout: 15_000 })
      .catch(async (err) => {
        const status = await page.textContent('#status').catch(() => '');
        throw new Error(`${label} did not join (status: "${status}"): ${err.message}`);
      });
  }
  step('both joined');

  const joinedAt = Date.now();
  const media = {};
  for (const [label, page] of [['alice', alice], ['bob', bob]]) {
    const remaining = Math.max(1000, MEDIA_DEADLINE_MS - (Date.now() - joinedAt));
    media[label] = await pollUntil(`${label} decodes video and receives audio`,
      () => inboundStats(page, 'subscriber'),
      (s) => s.ready && s.framesDecoded > 30 && s.audioPackets > 50,
      { timeoutMs: remaining });
    step(`${label}: framesDecoded=${media[label].framesDecoded} `
      + `audio packetsReceived=${media[label].audioPackets} `
      + `(${((Date.now() - joinedAt) / 1000).toFixed(1)} s after join)`);
  }

  const aliceTiles = await pollUntil('alice shows one remote tile', () => remoteTiles(alice),
    (t) => t.length === 1, { timeoutMs: 5000 });
  const bobTiles = await pollUntil('bob shows one remote tile', () => remoteTiles(bob),
    (t) => t.length === 1, { timeoutMs: 5000 });
  assert(aliceTiles[0].name === 'Bob', `alice's tile is named "${aliceTiles[0].name}", want Bob`);
  assert(bobTiles[0].name === 'Alice', `bob's tile is named "${bobTiles[0].name}", want Alice`);
  step('one remote tile on each page, correctly named');

  await bob.click('#leave');
  await pollUntil('bob is disconnected', () => bob.evaluate(() => window.moienRoom.state),
    (s) => s === 'disconnected', { timeoutMs: 5000 });
  await pollUntil("bob's tile disappears from alice's page", () => remoteTiles(alice),
    (t) => t.length === 0, { timeoutMs: 10_000 });
  const left = await alice.evaluate(() => window.moienRoom.participants.size);
  assert(left === 0, `alice still lists ${left} participant(s)`);
  step("bob left; alice's grid is empty");
});
