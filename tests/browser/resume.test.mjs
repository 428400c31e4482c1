// A page whose network goes away for 5 s (DevTools offline emulation: its WebSocket dies) resumes
// as the same participant: media flows both ways again, and the other page never sees it leave.
import {
  runTest, pollUntil, inboundStats, progressSince, joinCall, randomName, recordEvents,
  recordedEvents, assert,
} from './lib.mjs';

runTest('resume', async ({ baseUrl, newPage, step }) => {
  const room = randomName('resume');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice');
  await joinCall(bob, baseUrl, room, 'Bob');
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    await pollUntil(`${name} decodes the other`, () => inboundStats(page, 'subscriber'),
      (s) => s.ready && s.framesDecoded > 30, { timeoutMs: 20_000 });
  }
  await recordEvents(bob, ['participant_left', 'participant_connection']);
  await recordEvents(alice, ['reconnecting', 'reconnected']);
  const sidBefore = await alice.evaluate(() => window.moienRoom.localParticipant.sid);
  step('both decode each other');

  // Five seconds without network.
  await alice.context().setOffline(true);
  await pollUntil('alice notices', () => alice.evaluate(() => window.moienRoom.state),
    (s) => s === 'reconnecting', { timeoutMs: 10_000 });
  await pollUntil('bob sees alice reconnecting', () => recordedEvents(bob, 'participant_connection'),
    (evs) => evs.some((e) => e.state === 'reconnecting'), { timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 5000)); // the outage itself, not a check
  await alice.context().setOffline(false);
  step('network back');

  await pollUntil('alice resumed', () => alice.evaluate(() => window.moienRoom.state),
    (s) => s === 'connected', { timeoutMs: 15_000 });
  const resumed = await recordedEvents(alice, 'reconnected');
  assert(resumed.length === 1, `one reconnected event, got ${resumed.length}`);
  const sidAfter = await alice.evaluate(() => window.moienRoom.localParticipant.sid);
  assert(sidAfter === sidBefore, 'the same participant');

  // Media flows again, both ways.
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    const baseline = await inboundStats(page, 'subscriber');
    const got = await pollUntil(`${name} decodes again`,
      async () => progressSince(baseline, await inboundStats(page, 'subscriber')),
      (p) => p.framesDecoded > 30 && p.audioPackets > 50, { timeoutMs: 15_000 });
    step(`${name} receives: +${got.framesDecoded} frames, +${got.audioPackets} audio packets`);
  }
  await pollUntil('bob sees alice connected', () => recordedEvents(bob, 'participant_connection'),
    (evs) => evs.some((e) => e.state === 'connected'), { timeoutMs: 10_000 });
  const left = await recordedEvents(bob, 'participant_left');
  assert(left.length === 0, `bob saw participant_left: ${JSON.stringify(left)}`);
  const tiles = await bob.evaluate(() => window.moienRoom.participants.size);
  assert(tiles === 1, `bob still has alice (${tiles})`);
});
