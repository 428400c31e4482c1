// WHIP in, WHEP and the call page out: a WHIP publisher is played through WHEP and seen by a call
// page participant; its DELETE removes it from the call. Also the HTTP errors of both doors.
import {
  runTest, pollUntil, inboundStats, remoteTiles, randomName, assert,
} from './lib.mjs';

const PUBLISHER = 'whip-pub';

runTest('whip_whep', async ({ baseUrl, newPage, step }) => {
  const room = randomName('whip');

  const pub = await newPage('whip');
  await pub.goto(`${baseUrl}/whip.html?room=${room}&identity=${PUBLISHER}`);
  await pollUntil('WHIP publisher connects', () => pub.evaluate(() => window.whipState),
    (s) => s?.connected || s?.error, { timeoutMs: 15_000 })
    .then((s) => assert(s.connected, `WHIP publish failed: ${s.error}`));
  const whipLocation = await pub.evaluate(() => window.whipState.location);
  assert(/^\/whip\/[^/]+\/[^/]+$/.test(new URL(whipLocation, baseUrl).pathname),
    `unexpected WHIP Location ${whipLocation}`);
  step(`WHIP publisher connected, Location ${whipLocation}`);

  const viewer = await newPage('whep');
  await viewer.goto(`${baseUrl}/whep.html?room=${room}&identity=${PUBLISHER}`);
  const whep = await pollUntil('WHEP player decodes the WHIP video and receives its audio',
    () => inboundStats(viewer, 'whep'), (s) => s.ready && s.framesDecoded > 30 && s.audioPackets > 50, { timeoutMs: 20_000 });
  step(`WHEP: framesDecoded=${whep.framesDecoded} audio packetsReceived=${whep.audioPackets}`);

  const carol = await newPage('carol');
  await carol.goto(`${baseUrl}/?room=${room}&name=Carol&autojoin=1`);
  const tiles = await pollUntil('the WHIP publisher gets a tile on the call page',
    () => remoteTiles(carol), (t) => t.length === 1, { timeoutMs: 15_000 });
  assert(tiles[0].identity === PUBLISHER, `tile is for "${tiles[0].identity}", want ${PUBLISHER}`);
  const seen = await pollUntil('call page decodes the WHIP video', () => inboundStats(carol, 'subscriber'),
    (s) => s.ready && s.framesDecoded > 30, { timeoutMs: 20_000 });
  step(`call page: tile "${tiles[0].name}", framesDecoded=${seen.framesDecoded}`);

  // A page of the server's origin (no media of its own) that provokes the HTTP errors.
  const probe = await newPage('probe', { expectHttpErrors: true });
  await probe.goto(`${baseUrl}/healthz`);
  await checkHttpErrors(probe, room, step);

  // Bad requests must not disturb the sessions already running.
  const before = whep.framesDecoded;
  await pollUntil('WHEP keeps decoding after the bad requests', () => inboundStats(viewer, 'whep'),
    (s) => s.framesDecoded > before + 30, { timeoutMs: 10_000 });

  await pub.click('#stop');
  const stopped = await pollUntil('WHIP DELETE answered', () => pub.evaluate(() => window.whipState),
    (s) => s.deleteStatus !== null || s.error, { timeoutMs: 5000 });
  assert(stopped.deleteStatus === 200, `WHIP DELETE answered ${stopped.deleteStatus} (${stopped.error})`);
  await pollUntil('the WHIP tile disappears from the call page', () => remoteTiles(carol),
    (t) => t.length === 0, { timeoutMs: 10_000 });
  const again = await probe.evaluate(async ({ loc, r, identity }) => {
    const q = new URLSearchParams({ room: r, identity });
    const { token } = await (await fetch(`/dev/token?${q}`)).json();
    const res = await fetch(loc, { method: 'DELETE', headers: { Authorization: `Bearer ${token}` } });
    return res.status;
  }, { loc: whipLocation, r: room, identity: PUBLISHER });
  assert(again === 404, `a second DELETE of the gone WHIP resource answered ${again}, want 404`);
  step('WHIP stopped (DELETE 200); tile gone from the call page');
});

/** The error answers of the WHIP and WHEP endpoints, fetched from inside a page of the server. */
async function checkHttpErrors(page, room, step) {
  const results = await page.evaluate(async ({ room, publisher }) => {
    const token = async (r, identity) => {
      const q = new URLSearchParams({ room: r, identity });
      return (await (await fetch(`/dev/token?${q}`)).json()).token;
    };
    const offer = async (direction) => {
      const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      pc.addTransceiver('audio', { direction });
      pc.addTransceiver('video', { direction });
      const { sdp } = await pc.createOffer();
      pc.close();
      return sdp;
    };
    const post = async (url, { bearer, type = 'application/sdp', body }) => {
      const headers = { 'Content-Type': type };
      if (bearer) headers.Authorization = `Bearer ${bearer}`;
      const res = await fetch(url, { method: 'POST', headers, body });
      return res.status;
    };
    const good = await token(room, 'error-probe');
    const [head, claims, signature] = good.split('.');
    const forged = `${head}.${claims}.${signature.slice(0, -4)}${signature.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
    const otherRoom = await token(`${room}-other`, 'error-probe');
    const sendOffer = await offer('sendonly');
    const recvOffer = await offer('recvonly');
    const whip = `/whip/${encodeURIComponent(room)}`;
    const whep = (id) => `/whep/${encodeURIComponent(room)}/${encodeURIComponent(id)}`;
    return {
      'WHIP without token': [await post(whip, { body: sendOffer }), 401],
      'WHIP with forged token': [await post(whip, { bearer: forged, body: sendOffer }), 401],
      'WHIP with a token for another room': [await post(whip, { bearer: otherRoom, body: sendOffer }), 403],
      'WHIP with malformed SDP': [await post(whip, { bearer: good, body: 'v=0\r\nthis is not sdp\r\n' }), 400],
      'WHIP with empty SDP': [await post(whip, { bearer: good, body: '' }), 400],
      'WHIP with wrong content type': [await post(whip, { bearer: good, type: 'text/plain', body: sendOffer }), 415],
      'WHEP without token': [await post(whep(publisher), { body: recvOffer }), 401],
      'WHEP with malformed SDP': [await post(whep(publisher), { bearer: good, body: 'garbage' }), 400],
      'WHEP for an unknown identity': [await post(whep('nobody-here'), { bearer: good, body: recvOffer }), 404],
    };
  }, { room, publisher: PUBLISHER });
  const wrong = Object.entries(results).filter(([, [got, want]]) => got !== want);
  for (const [what, [got, want]] of Object.entries(results)) {
    step(`${got === want ? 'ok  ' : 'BAD '} ${what}: ${got} (want ${want})`);
  }
  assert(wrong.length === 0, `wrong HTTP status for: ${wrong.map(([w, [g]]) => `${w} → ${g}`).join('; ')}`);
}
