// Screen share through the call page: Alice joins with her camera and shares her screen (Chromium's
// fake display capture); Bob decodes the share and shows it on the large stage, with Alice's
// camera beside it in a small tile. Stopping the share empties Bob's stage.
import {
  runTest, pollUntil, joinCall, remoteTrackSid, shownVideoStats, localEncodings, randomName,
  assert,
} from './lib.mjs';

const stageState = (page) => page.evaluate(() => {
  const stage = document.getElementById('stage');
  const video = document.getElementById('stage-video');
  const tile = document.querySelector('#grid .tile.remote');
  const box = (el) => {
    const r = el?.getBoundingClientRect();
    return r ? { width: Math.round(r.width), height: Math.round(r.height) } : null;
  };
  return {
    hidden: stage.hidden, participant: stage.dataset.participant, track: stage.dataset.track,
    label: document.getElementById('stage-label').textContent, videoWidth: video.videoWidth,
    stage: box(stage), tile: box(tile),
  };
});

runTest('screenshare', async ({ baseUrl, newPage, step }) => {
  const room = randomName('screen');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice', { share: '1' });
  await joinCall(bob, baseUrl, room, 'Bob');

  const aliceScreen = await pollUntil('alice publishes her screen', () => localEncodings(alice, 'screen'),
    (e) => e !== null, { timeoutMs: 10_000 });
  assert(aliceScreen.length === 1, `a screen share is one encoding: ${JSON.stringify(aliceScreen)}`);
  const aliceCamera = await localEncodings(alice, 'camera');
  assert(aliceCamera?.length === 3, `alice's camera is still published: ${JSON.stringify(aliceCamera)}`);
  assert(await alice.getAttribute('#share', 'aria-pressed') === 'true', 'share button not pressed');
  const screenSid = await pollUntil("bob learns alice's screen track",
    () => remoteTrackSid(bob, 'video', 'screen'), Boolean, { timeoutMs: 10_000 });
  const aliceSid = await alice.evaluate(() => window.moienRoom.localParticipant.sid);
  step(`alice shares her screen (${screenSid}) beside her camera`);

  const screen = await pollUntil("bob decodes alice's screen on the stage",
    () => shownVideoStats(bob, '#stage-video'),
    (s) => s.shown && s.framesDecoded > 30 && s.videoWidth > 0, { timeoutMs: 20_000 });
  const stage = await stageState(bob);
  assert(!stage.hidden, 'the stage is hidden');
  assert(stage.track === screenSid, `the stage shows ${stage.track}, want ${screenSid}`);
  assert(stage.participant === aliceSid, `the stage is for ${stage.participant}, want ${aliceSid}`);
  step(`bob's stage: "${stage.label}", ${screen.frameWidth}x${screen.frameHeight} ${screen.codec}, `
    + `framesDecoded=${screen.framesDecoded} (mid ${screen.mid})`);

  const camera = await pollUntil("bob decodes alice's camera in a tile",
    () => shownVideoStats(bob, '#grid .tile.remote video'),
    (s) => s.shown && s.framesDecoded > 30, { timeoutMs: 20_000 });
  assert(camera.mid !== screen.mid, 'camera and screen arrive on the same m-line');
  const layout = await stageState(bob);
  assert(layout.stage.width > 2 * layout.tile.width,
    `the stage (${JSON.stringify(layout.stage)}) is not large beside the tile (${JSON.stringify(layout.tile)})`);
  step(`bob's camera tile ${layout.tile.width}x${layout.tile.height} beside the stage `
    + `${layout.stage.width}x${layout.stage.height}; camera framesDecoded=${camera.framesDecoded}`);
  // A tile that small asks for the lowest simulcast layer; the stage keeps the full picture.
  const small = await pollUntil("bob receives alice's camera at the lowest layer",
    () => shownVideoStats(bob, '#grid .tile.remote video'),
    (s) => s.frameWidth > 0 && s.frameWidth <= 360 && s.framesDecoded > camera.framesDecoded,
    { timeoutMs: 10_000 });
  const full = await shownVideoStats(bob, '#stage-video');
  assert(full.frameWidth >= 1280, `the stage shows the screen at ${full.frameWidth} wide`);
  step(`small tile: camera at ${small.frameWidth}x${small.frameHeight}; stage at `
    + `${full.frameWidth}x${full.frameHeight}`);
  if (process.env.MOIEN_SCREENSHOT) await bob.screenshot({ path: process.env.MOIEN_SCREENSHOT });

  await alice.click('#share');
  await pollUntil("bob's stage empties when alice stops sharing", () => stageState(bob),
    (s) => s.hidden, { timeoutMs: 10_000 });
  await pollUntil("alice's screen track is gone", () => remoteTrackSid(bob, 'video', 'screen'),
    (sid) => sid === null, { timeoutMs: 10_000 });
  step('alice stopped sharing: the stage is gone on bob\'s page');
});
