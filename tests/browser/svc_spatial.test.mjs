// Spatial SVC through the call page: Alice publishes VP9 with three spatial and three temporal
// layers in one stream (L3T3_KEY: 1/4, 1/2 and full resolution); Bob decodes the top layer, asks
// for the lowest (maxLayer 0) and gets that layer's picture while decoding goes on; maxLayer 2
// brings him back to the top. svc_spatial_av1.test.mjs runs it with AV1 (Dependency Descriptor).
import {
  runTest, pollUntil, joinCall, remoteTrackSid, shownVideoStats, outboundVideo, randomName, assert,
} from './lib.mjs';

const TILE_VIDEO = '#grid .tile.remote video';
const CODEC = (process.env.MOIEN_SVC_CODEC || 'vp9').toLowerCase();
const MIME = `video/${CODEC === 'av1' ? 'AV1' : CODEC.toUpperCase()}`;

runTest(CODEC === 'vp9' ? 'svc_spatial' : `svc_spatial-${CODEC}`, async ({ baseUrl, newPage, step }) => {
  const room = randomName('svc-spatial');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  await joinCall(alice, baseUrl, room, 'Alice', { codec: CODEC, svc: 'L3T3_KEY' });
  await joinCall(bob, baseUrl, room, 'Bob');

  const sent = await pollUntil(`alice encodes ${MIME} L3T3_KEY`, () => outboundVideo(alice),
    (o) => o.some((x) => x.scalabilityMode && x.framesEncoded > 0), { timeoutMs: 10_000 });
  assert(sent.length === 1 && sent[0].codec === MIME && sent[0].scalabilityMode === 'L3T3_KEY',
    `alice sends ${JSON.stringify(sent)}`);
  const trackSid = await pollUntil("bob learns alice's camera track",
    () => remoteTrackSid(bob, 'video', 'camera'), Boolean, { timeoutMs: 10_000 });
  step(`alice sends ${MIME} L3T3_KEY; track ${trackSid}`);

  // The top spatial layer is what Alice encodes: less than 1280 wide while her bandwidth
  // estimate or CPU is short.
  const seen = async () => {
    const out = (await outboundVideo(alice))[0];
    return {
      ...(await shownVideoStats(bob, TILE_VIDEO)),
      aliceWidth: out?.frameWidth ?? 0,
      aliceHeight: out?.frameHeight ?? 0,
    };
  };
  // libwebrtc encodes only the spatial layers whose lowest is at least 240x135
  // (svc_config.cc): 1280x720 gets three (320, 640, 1280), but when CPU or bandwidth
  // adaptation scales Alice's input to 640x360 it gets two, and the lowest is 320 wide.
  const lowestWidth = (w, h) => {
    let n = 3;
    while (n > 1 && ((w >> (n - 1)) < 240 || (h >> (n - 1)) < 135)) n -= 1;
    return w >> (n - 1);
  };
  const top = await pollUntil("bob decodes alice's top spatial layer", seen,
    (s) => s.shown && s.framesDecoded > 30 && s.aliceWidth >= 640 && s.frameWidth >= s.aliceWidth,
    { timeoutMs: 20_000 });
  step(`bob decodes ${top.frameWidth}x${top.frameHeight} ${top.codec}, `
    + `framesDecoded=${top.framesDecoded}`);

  await bob.evaluate((sid) => window.moienRoom.setSubscription(sid, { maxLayer: 0 }), trackSid);
  const small = await pollUntil('bob receives the lowest spatial layer after maxLayer 0', seen,
    (s) => s.frameWidth > 0 && s.frameWidth <= lowestWidth(s.aliceWidth, s.aliceHeight)
      && s.frameWidth < top.frameWidth && s.framesDecoded > top.framesDecoded + 20,
    { timeoutMs: 10_000 });
  step(`maxLayer 0: bob decodes ${small.frameWidth}x${small.frameHeight} of alice's `
    + `${small.aliceWidth}, framesDecoded=${small.framesDecoded}`);

  await bob.evaluate((sid) => window.moienRoom.setSubscription(sid, { maxLayer: 2 }), trackSid);
  const large = await pollUntil('bob is back on the top spatial layer after maxLayer 2', seen,
    (s) => s.frameWidth >= s.aliceWidth && s.framesDecoded > small.framesDecoded + 10,
    { timeoutMs: 20_000 });
  step(`maxLayer 2: bob decodes ${large.frameWidth}x${large.frameHeight}, `
    + `framesDecoded=${large.framesDecoded}`);
});
