// Active speaker: of two pages whose fake microphones beep, the one left unmuted is announced in
// active_speakers and its tile is outlined on the other page (its own self view on its page).
// Swapping who is muted swaps who is announced.
import { runTest, pollUntil, joinCall, randomName } from './lib.mjs';

/** What a page shows of the latest active_speakers. */
const speakerView = (page) => page.evaluate(() => {
  const room = window.moienRoom;
  return {
    speakers: room.activeSpeakers.map((s) => s.participant.sid),
    levels: room.activeSpeakers.map((s) => Number(s.level.toFixed(2))),
    outlined: Array.from(document.querySelectorAll('#grid .tile.speaking'), (t) => t.dataset.participant),
    selfOutlined: document.getElementById('self-view').classList.contains('speaking'),
  };
});

/** Waits until `speaker` alone is announced and shown on both pages. */
async function announced(label, speaker, other, { speakerSid, otherSid }) {
  const heard = await pollUntil(`${label} is the only one announced on the other page`,
    () => speakerView(other),
    (v) => v.speakers[0] === speakerSid && !v.speakers.includes(otherSid)
      && v.outlined.length === 1 && v.outlined[0] === speakerSid && !v.selfOutlined,
    { timeoutMs: 10_000 });
  await pollUntil(`${label} sees itself announced`, () => speakerView(speaker),
    (v) => v.speakers[0] === speakerSid && v.selfOutlined && v.outlined.length === 0,
    { timeoutMs: 5000 });
  return heard;
}

runTest('speaker', async ({ baseUrl, newPage, step }) => {
  const room = randomName('speaker');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice');
  await joinCall(bob, baseUrl, room, 'Bob');
  const sids = {
    alice: await alice.evaluate(() => window.moienRoom.localParticipant.sid),
    bob: await bob.evaluate(() => window.moienRoom.localParticipant.sid),
  };

  await bob.click('#mic');
  const t0 = Date.now();
  const first = await announced('alice', alice, bob, { speakerSid: sids.alice, otherSid: sids.bob });
  step(`bob muted: alice announced within ${((Date.now() - t0) / 1000).toFixed(1)} s `
    + `(levels ${first.levels.join(', ')}), her tile outlined on bob's page`);

  await alice.click('#mic');
  await bob.click('#mic');
  const t1 = Date.now();
  const second = await announced('bob', bob, alice, { speakerSid: sids.bob, otherSid: sids.alice });
  step(`roles swapped: bob announced within ${((Date.now() - t1) / 1000).toFixed(1)} s `
    + `(levels ${second.levels.join(', ')})`);
});
