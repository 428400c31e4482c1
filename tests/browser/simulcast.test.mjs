// Simulcast through the call page: Alice's camera goes out in three layers (q, h, f); Bob receives
// the top one, asks for the lowest (maxLayer 0) and gets the 320-wide layer while Alice is told
// to stop encoding the two layers nobody needs (dynacast); maxLayer 2 resumes the top layer at
// Alice's and brings Bob back to it. Hiding the tile pauses the subscription; showing it resumes.
import {
  runTest, pollUntil, joinCall, remoteTrackSid, shownVideoStats, outboundVideo, localEncodings,
  recordEvents, recordedEvents, randomName, assert,
} from './lib.mjs';

/** Bandwidth estimation needs time to climb to the top layer. */
const CLIMB_MS = 20_000;
const TILE_VIDEO = '#grid .tile.remote video';

runTest('simulcast', async ({ baseUrl, newPage, step }) => {
  const room = randomName('simulcast');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice');
  await joinCall(bob, baseUrl, room, 'Bob');

  const encodings = await pollUntil('alice publishes her camera',
    () => localEncodings(alice), (e) => e !== null, { timeoutMs: 10_000 });
  assert(encodings.map((e) => e.rid).join() === 'q,h,f',
    `alice's camera encodings: ${JSON.stringify(encodings)}`);
  assert(encodings.map((e) => e.scaleResolutionDownBy).join() === '4,2,1',
    `scaleResolutionDownBy: ${JSON.stringify(encodings)}`);
  const trackSid = await pollUntil("bob learns alice's camera track",
    () => remoteTrackSid(bob, 'video', 'camera'), Boolean, { timeoutMs: 10_000 });
  step(`alice sends q,h,f; her camera is ${trackSid}`);

  const bobSees = () => shownVideoStats(bob, TILE_VIDEO);
  const top = await pollUntil('bob decodes the top layer (1280 wide)', bobSees,
    (s) => s.shown && s.framesDecoded > 30 && s.frameWidth >= 1280, { timeoutMs: CLIMB_MS })
    .catch(async (err) => {
      step(`alice sends: ${JSON.stringify(await outboundVideo(alice))}`);
      throw err;
    });
  step(`bob decodes ${top.frameWidth}x${top.frameHeight} (${top.codec}), `
    + `framesDecoded=${top.framesDecoded}`);

  await bob.evaluate((sid) => window.moienRoom.setSubscription(sid, { maxLayer: 0 }), trackSid);
  const low = await pollUntil('bob receives the lowest layer after maxLayer 0', bobSees,
    (s) => s.frameWidth > 0 && s.frameWidth <= 360 && s.framesDecoded > top.framesDecoded + 10,
    { timeoutMs: 10_000 });
  step(`maxLayer 0: bob decodes ${low.frameWidth}x${low.frameHeight}, `
    + `framesDecoded=${low.framesDecoded}`);

  // Dynacast: nobody needs h and f any more, so the server tells Alice to stop encoding them.
  const off = await pollUntil('alice stops encoding h and f', () => localEncodings(alice),
    (e) => e.map((x) => `${x.rid}:${x.active}`).join() === 'q:true,h:false,f:false',
    { timeoutMs: 10_000 });
  step(`dynacast: alice's encodings ${off.map((x) => `${x.rid}=${x.active ? 'on' : 'off'}`).join(' ')}`);
  const stillLow = await pollUntil('bob keeps decoding the lowest layer', bobSees,
    (s) => s.framesDecoded > low.framesDecoded + 10, { timeoutMs: 5000 });
  assert(stillLow.frameWidth <= 360, `bob decodes ${stillLow.frameWidth} wide on q`);

  await bob.evaluate((sid) => window.moienRoom.setSubscription(sid, { maxLayer: 2 }), trackSid);
  // Only f is wanted now; whether h comes back too is the server's choice (nobody needs it).
  const on = await pollUntil('alice encodes f again', () => localEncodings(alice),
    (e) => e.find((x) => x.rid === 'f')?.active && e.find((x) => x.rid === 'q')?.active,
    { timeoutMs: 10_000 });
  step(`dynacast: alice's encodings ${on.map((x) => `${x.rid}=${x.active ? 'on' : 'off'}`).join(' ')}`);
  const back = await pollUntil('bob is back on the top layer after maxLayer 2', bobSees,
    (s) => s.frameWidth >= 1280 && s.framesDecoded > stillLow.framesDecoded + 10,
    { timeoutMs: CLIMB_MS })
    .catch(async (err) => {
      step(`alice sends: ${JSON.stringify(await outboundVideo(alice))}`);
      throw err;
    });
  step(`maxLayer 2: bob decodes ${back.frameWidth}x${back.frameHeight}, `
    + `framesDecoded=${back.framesDecoded}`);

  // A tile nobody can see is paused by the page (IntersectionObserver), and resumed when shown.
  await recordEvents(bob, ['subscription_state']);
  await bob.evaluate(() => { document.querySelector('#grid .tile.remote').hidden = true; });
  const paused = await pollUntil('the server confirms the pause of the hidden tile',
    () => recordedEvents(bob, 'subscription_state'),
    (list) => list.some((e) => e.info.sid === trackSid && e.paused && e.reason === 'client'),
    { timeoutMs: 5000 });
  // Paused means a whole second without a single new frame (20 would come at 20 fps).
  let previous = -1;
  const stalled = await pollUntil('nothing more is decoded while hidden', async () => {
    const s = await bobSees();
    const still = s.framesDecoded === previous;
    previous = s.framesDecoded;
    return { ...s, still };
  }, (s) => s.still, { timeoutMs: 5000, intervalMs: 1000 });
  step(`hidden tile: ${JSON.stringify(paused.at(-1))}, framesDecoded stays at `
    + `${stalled.framesDecoded}`);
  await bob.evaluate(() => { document.querySelector('#grid .tile.remote').hidden = false; });
  // The page asks to resume and the server confirms it: should the frames below not come, this
  // tells which side stalled.
  const pauses = paused.length;
  await pollUntil('the server confirms the resume of the shown tile',
    () => recordedEvents(bob, 'subscription_state'),
    (list) => list.slice(pauses).some((e) => e.info.sid === trackSid && !e.paused),
    { timeoutMs: 10_000 });
  const shown = await pollUntil('the tile decodes again once visible', bobSees,
    (s) => s.framesDecoded > stalled.framesDecoded + 10, { timeoutMs: 10_000 });
  const state = await bob.getAttribute('#grid .tile.remote', 'data-video-state');
  step(`visible again: framesDecoded=${shown.framesDecoded} at ${shown.frameWidth} wide, `
    + `tile state ${state}`);
});
