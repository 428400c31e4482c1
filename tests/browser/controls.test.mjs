// The call page's microphone and camera buttons: muting is local (the track is disabled) and is
// announced, so the other side shows it on the tile.
import { runTest, pollUntil, randomName, assert } from './lib.mjs';

/** Classes of the one remote tile on a call page, or null when there is none. */
const tileState = (page) => page.evaluate(() => {
  const tiles = document.querySelectorAll('#grid .tile.remote');
  if (tiles.length !== 1) return null;
  return {
    micMuted: tiles[0].classList.contains('mic-muted'),
    cameraOff: tiles[0].classList.contains('camera-off'),
    noVideo: tiles[0].classList.contains('no-video'),
  };
});

const localTracks = (page) => page.evaluate(() => {
  const own = [...window.moienRoom.localParticipant.tracks.values()];
  return Object.fromEntries(own.map((t) => [t.kind, { enabled: t.track.enabled, muted: t.muted }]));
});

runTest('controls', async ({ baseUrl, newPage, step }) => {
  const room = randomName('controls');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  const url = (name) => `${baseUrl}/?room=${room}&name=${name}&autojoin=1`;
  await Promise.all([alice.goto(url('Alice')), bob.goto(url('Bob'))]);
  await pollUntil("bob sees alice's camera", () => tileState(bob),
    (s) => s && !s.noVideo && !s.cameraOff && !s.micMuted, { timeoutMs: 20_000 });
  step("bob shows alice's tile with video");

  await alice.click('#mic');
  assert(await alice.getAttribute('#mic', 'aria-pressed') === 'true', 'mic button not pressed');
  await pollUntil("bob's tile shows alice muted", () => tileState(bob), (s) => s?.micMuted,
    { timeoutMs: 5000 });
  const muted = await localTracks(alice);
  assert(muted.audio && !muted.audio.enabled && muted.audio.muted,
    `alice's audio track after mute: ${JSON.stringify(muted.audio)}`);
  step('microphone muted: local track disabled, bob shows "muted"');

  await alice.click('#camera');
  await pollUntil("bob's tile shows alice's camera off", () => tileState(bob), (s) => s?.cameraOff,
    { timeoutMs: 5000 });
  step('camera off: bob shows the avatar');

  await alice.click('#mic');
  await alice.click('#camera');
  await pollUntil("bob's tile shows alice back", () => tileState(bob),
    (s) => s && !s.micMuted && !s.cameraOff, { timeoutMs: 5000 });
  const back = await localTracks(alice);
  assert(back.audio?.enabled && back.video?.enabled, `alice's tracks after unmute: ${JSON.stringify(back)}`);
  step('unmuted and camera on again');
});
