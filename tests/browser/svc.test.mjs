// SVC through the call page: Alice publishes VP9 with three temporal layers (L1T3); Bob decodes
// it, asks for the base temporal layer only (maxTemporal 0) and his frame rate falls to about a
// quarter while decoding goes on; maxTemporal 2 restores the full rate. svc_av1.test.mjs runs
// it with AV1, whose layers the SFU reads from the Dependency Descriptor header extension.
import {
  runTest, pollUntil, joinCall, remoteTrackSid, shownVideoStats, outboundVideo, randomName, assert,
} from './lib.mjs';

const TILE_VIDEO = '#grid .tile.remote video';
/** VP9 by default; MOIEN_SVC_CODEC=av1 runs the same test with AV1 (Dependency Descriptor). */
const CODEC = (process.env.MOIEN_SVC_CODEC || 'vp9').toLowerCase();
const MIME = `video/${CODEC === 'av1' ? 'AV1' : CODEC.toUpperCase()}`;
/** L1T3 at 30 fps: T0 alone is every fourth frame, 7.5 fps. */
const FULL_FPS = 20;
const BASE_FPS = 12;

runTest(CODEC === 'vp9' ? 'svc' : `svc-${CODEC}`, async ({ baseUrl, newPage, step }) => {
  const room = randomName('svc');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice', { codec: CODEC, svc: 'L1T3' });
  await joinCall(bob, baseUrl, room, 'Bob');

  const sent = await pollUntil(`alice encodes ${MIME} L1T3`, () => outboundVideo(alice),
    (o) => o.some((x) => x.codec && x.scalabilityMode && x.framesEncoded > 0), { timeoutMs: 10_000 });
  const out = sent.find((x) => x.codec);
  assert(sent.length === 1, `one encoding, not simulcast: ${JSON.stringify(sent)}`);
  assert(out.codec === MIME, `alice sends ${out.codec}`);
  assert(out.scalabilityMode === 'L1T3', `alice's scalabilityMode is ${out.scalabilityMode}`);
  const trackSid = await pollUntil("bob learns alice's camera track",
    () => remoteTrackSid(bob, 'video', 'camera'), Boolean, { timeoutMs: 10_000 });
  step(`alice sends ${out.codec} ${out.scalabilityMode}; track ${trackSid}`);

  const bobSees = () => shownVideoStats(bob, TILE_VIDEO);
  const full = await pollUntil(`bob decodes ${MIME} at >= ${FULL_FPS} fps`, bobSees,
    (s) => s.shown && s.framesDecoded > 30 && s.framesPerSecond >= FULL_FPS, { timeoutMs: 20_000 })
    .catch(async (err) => {
      step(`alice sends: ${JSON.stringify(await outboundVideo(alice))}`);
      throw err;
    });
  assert(full.codec === MIME, `bob decodes ${full.codec}`);
  step(`bob decodes ${full.frameWidth}x${full.frameHeight} ${full.codec} at `
    + `${full.framesPerSecond} fps, framesDecoded=${full.framesDecoded}`);

  await bob.evaluate((sid) => window.moienRoom.setSubscription(sid, { maxTemporal: 0 }), trackSid);
  const base = await pollUntil(`bob's frame rate falls to <= ${BASE_FPS} fps after maxTemporal 0`,
    bobSees, (s) => s.framesPerSecond > 0 && s.framesPerSecond <= BASE_FPS, { timeoutMs: 10_000 })
    .catch(async (err) => {
      step(`alice sends: ${JSON.stringify(await outboundVideo(alice))}`);
      throw err;
    });
  const baseLater = await pollUntil('bob keeps decoding the base layer', bobSees,
    (s) => s.framesDecoded >= base.framesDecoded + 15, { timeoutMs: 10_000 });
  assert(baseLater.framesPerSecond <= BASE_FPS,
    `bob's frame rate went back up to ${baseLater.framesPerSecond} fps on T0 only`);
  step(`maxTemporal 0: bob decodes at ${baseLater.framesPerSecond} fps, `
    + `framesDecoded ${base.framesDecoded} -> ${baseLater.framesDecoded}`);

  await bob.evaluate((sid) => window.moienRoom.setSubscription(sid, { maxTemporal: 2 }), trackSid);
  const back = await pollUntil(`bob is back at >= ${FULL_FPS} fps after maxTemporal 2`, bobSees,
    (s) => s.framesPerSecond >= FULL_FPS && s.framesDecoded > baseLater.framesDecoded,
    { timeoutMs: 10_000 });
  step(`maxTemporal 2: bob decodes at ${back.framesPerSecond} fps, framesDecoded=${back.framesDecoded}`);
}, {
  // 30 fps instead of the fake camera's 20, so that a quarter of it is unmistakable.
  chromiumArgs: ['--use-fake-device-for-media-stream=fps=30'],
});
