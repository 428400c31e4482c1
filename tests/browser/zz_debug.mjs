// scratch (not a test): prints SDP of a vp9 publisher
import { runTest, joinCall, randomName, pollUntil, outboundVideo } from './lib.mjs';
runTest('debug', async ({ baseUrl, newPage, step }) => {
  const room = randomName('dbg');
  const alice = await newPage('alice');
  await joinCall(alice, baseUrl, room, 'Alice', JSON.parse(process.env.Q || '{}'));
  await pollUntil('pub', () => alice.evaluate(() => window.moienRoom.publisher.remoteDescription?.sdp ?? null), Boolean);
  const sdps = await alice.evaluate(() => ({ o: window.moienRoom.publisher.localDescription.sdp, a: window.moienRoom.publisher.remoteDescription.sdp }));
  const pick = (sdp) => sdp.split('\r\n').filter((l) => /^(m=video|a=rtpmap|a=simulcast|a=rid|a=extmap|a=fmtp)/.test(l)).join('\n');
  console.log('OFFER\n' + pick(sdps.o) + '\nANSWER\n' + pick(sdps.a));
  await new Promise((r) => setTimeout(r, 2000));
  console.log(JSON.stringify(await outboundVideo(alice)));
});
