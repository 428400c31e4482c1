// Data messages through the call page's chat: text typed on one page appears on the other, both
// ways; the SDK's unreliable channel and directed messages arrive as addressed. A 20 KiB message is refused with `too_large` and a burst over the rate with
// `rate_limited`; the sender stays in the call and its next message still arrives.
import {
  runTest, pollUntil, joinCall, recordEvents, recordedEvents, randomName, assert,
} from './lib.mjs';

/** The chat lines a page shows: [{who, text, from}]. */
const chatLines = (page) => page.evaluate(() => Array.from(
  document.querySelectorAll('#chat-log li'),
  (li) => ({
    who: li.querySelector('.who')?.textContent ?? '',
    text: li.querySelector('.text')?.textContent ?? '',
    from: li.dataset.from,
  }),
));

const channelOpen = (page) => page.evaluate(() => window.moienRoom?.subscriber.sctp?.state === 'connected');

async function say(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-send');
}

runTest('datachannel', async ({ baseUrl, newPage, step }) => {
  const room = randomName('data');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice');
  await joinCall(bob, baseUrl, room, 'Bob');
  for (const [label, page] of [['alice', alice], ['bob', bob]]) {
    await pollUntil(`${label}'s data channel connects`, () => channelOpen(page), Boolean,
      { timeoutMs: 15_000 });
  }
  const aliceSid = await alice.evaluate(() => window.moienRoom.localParticipant.sid);
  const bobSid = await bob.evaluate(() => window.moienRoom.localParticipant.sid);
  step('both pages joined; data channels connected');

  const hello = `hello from Alice ${Math.random().toString(36).slice(2, 8)}`;
  await say(alice, hello);
  const onBob = await pollUntil("alice's message appears on bob's page", () => chatLines(bob),
    (lines) => lines.some((l) => l.text === hello), { timeoutMs: 10_000 });
  const line = onBob.find((l) => l.text === hello);
  assert(line.who === 'Alice' && line.from === aliceSid, `bob shows ${JSON.stringify(line)}`);
  const own = await chatLines(alice);
  assert(own.some((l) => l.text === hello && l.who === 'You'), 'alice does not show her own line');

  const reply = 'hi Alice, Bob here: ünïcødé ✓';
  await say(bob, reply);
  const onAlice = await pollUntil("bob's reply appears on alice's page", () => chatLines(alice),
    (lines) => lines.some((l) => l.text === reply), { timeoutMs: 10_000 });
  assert(onAlice.find((l) => l.text === reply).from === bobSid, 'reply is not attributed to bob');
  step('chat both ways: text appears on the other page');

  // Through the SDK: the unreliable channel, and messages for one participant only.
  await recordEvents(alice, ['error', 'disconnected']);
  await recordEvents(bob, ['data_received']);
  const sentOk = await alice.evaluate((bob) => [
    window.moienRoom.sendData('over the lossy channel', { topic: 'lossy', reliable: false }),
    window.moienRoom.sendData('for nobody here', { topic: 'direct', to: ['PA_nobody'] }),
    window.moienRoom.sendData('for bob only', { topic: 'direct', to: [bob] }),
  ], bobSid);
  assert(sentOk.every(Boolean), `sendData returned ${JSON.stringify(sentOk)}`);
  const got = await pollUntil('bob gets the lossy and the directed message',
    () => recordedEvents(bob, 'data_received'),
    (list) => list.some((e) => e.topic === 'lossy') && list.some((e) => e.data === 'for bob only'),
    { timeoutMs: 5000 });
  const lossy = got.find((e) => e.topic === 'lossy');
  assert(lossy.reliable === false && lossy.data === 'over the lossy channel'
    && lossy.participant.sid === aliceSid && lossy.identity.startsWith('alice'),
  `lossy message as received: ${JSON.stringify(lossy)}`);
  assert(got.find((e) => e.data === 'for bob only').reliable === true, 'directed message not reliable');
  // Same ordered channel: had the other directed message been relayed, it would be here already.
  assert(!got.some((e) => e.data === 'for nobody here'), 'a message for someone else reached bob');
  step('unreliable channel and directed messages delivered as addressed');

  // Over the 16 KiB limit: refused with an error, not a disconnection.
  const big = await alice.evaluate(() => window.moienRoom.sendData('x'.repeat(20 * 1024),
    { topic: 'chat' }));
  assert(big === true, 'the browser did not even send the 20 KiB message');
  const errors = await pollUntil('alice gets too_large', () => recordedEvents(alice, 'error'),
    (list) => list.some((e) => e.code === 'too_large'), { timeoutMs: 5000 });
  const status = await alice.textContent('#status');
  assert(/too long/i.test(status), `alice's status line says "${status}"`);
  step(`20 KiB message refused: ${JSON.stringify(errors.find((e) => e.code === 'too_large'))}; `
    + `status "${status}"`);

  // Over the rate: 60 at once against a burst of 40.
  const burst = await alice.evaluate(() => {
    let sent = 0;
    for (let i = 0; i < 60; i += 1) {
      if (window.moienRoom.sendData(`burst ${i}`, { topic: 'burst' })) sent += 1;
    }
    return sent;
  });
  assert(burst === 60, `only ${burst} of 60 burst messages left alice`);
  // Every message is either relayed or refused with its own error.
  const tally = await pollUntil('each burst message is delivered or refused', async () => ({
    delivered: (await recordedEvents(bob, 'data_received')).filter((e) => e.topic === 'burst').length,
    refused: (await recordedEvents(alice, 'error')).filter((e) => e.code === 'rate_limited').length,
  }), (t) => t.delivered + t.refused === 60, { timeoutMs: 5000 });
  assert(tally.refused > 0, 'no burst message was refused');
  assert(tally.delivered >= 20, `only ${tally.delivered} burst messages were relayed`);
  const relayed = await recordedEvents(bob, 'data_received');
  assert(!relayed.some((e) => e.data.length > 1000), 'the 20 KiB message was relayed');
  step(`burst of 60: ${tally.delivered} delivered, ${tally.refused} refused with rate_limited`);

  const still = await alice.evaluate(() => window.moienRoom.state);
  assert(still === 'connected', `alice is ${still} after the refusals`);
  assert((await recordedEvents(alice, 'disconnected')).length === 0, 'alice was disconnected');
  // The bucket refills at 20 a second: retry until a message gets through.
  const after = `still here ${Math.random().toString(36).slice(2, 8)}`;
  await pollUntil("alice's next message reaches bob", async () => {
    const lines = await chatLines(bob);
    if (!lines.some((l) => l.text === after)) await say(alice, after);
    return lines;
  }, (lines) => lines.some((l) => l.text === after), { timeoutMs: 10_000, intervalMs: 1000 });
  step('alice is still connected and her next chat message arrives');
});
