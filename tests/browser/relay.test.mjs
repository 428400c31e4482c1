// Two browsers that may only use relayed candidates (iceTransportPolicy 'relay'): media flows
// browser -> our TURN -> our SFU -> our TURN -> browser, and each page decodes the other's video.
import { runTest, pollUntil, inboundStats, randomName, assert } from './lib.mjs';

/** The selected candidate pair of a page's peer connection, with both candidates' types. */
async function selectedPair(page, which) {
  return page.evaluate(async (which) => {
    const pc = window.moienRoom?.[which];
    if (!pc) return null;
    const stats = await pc.getStats();
    let transport = null;
    stats.forEach((s) => { if (s.type === 'transport') transport = s; });
    const pair = transport && stats.get(transport.selectedCandidatePairId);
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return {
      state: pair.state,
      local: local?.candidateType,
      relayProtocol: local?.relayProtocol,
      remote: remote?.candidateType,
      bytesReceived: pair.bytesReceived,
    };
  }, which);
}

runTest('relay', async ({ baseUrl, newPage, step }) => {
  const room = randomName('relay');
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  const url = (name) => `${baseUrl}/?room=${room}&name=${name}&autojoin=1&relay=1`;
  await Promise.all([alice.goto(url('Alice')), bob.goto(url('Bob'))]);
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => window.moienRoom?.state === 'connected', null,
      { timeout: 15_000 });
  }
  const servers = await alice.evaluate(() => window.moienRoom.subscriber.getConfiguration().iceServers);
  assert(servers.length > 0 && servers[0].urls.some((u) => u.startsWith('turn:')),
    `the join hands out our TURN server: ${JSON.stringify(servers)}`);
  assert(servers.every((s) => s.urls.every((u) => u.includes('127.0.0.1'))),
    'no third-party ICE server');
  step('both joined with TURN credentials from the server');

  for (const [label, page] of [['alice', alice], ['bob', bob]]) {
    const s = await pollUntil(`${label} decodes video through TURN`,
      () => inboundStats(page, 'subscriber'),
      (s) => s.ready && s.framesDecoded > 30, { timeoutMs: 25_000 });
    step(`${label}: framesDecoded=${s.framesDecoded}`);
    for (const which of ['publisher', 'subscriber']) {
      const pair = await selectedPair(page, which);
      assert(pair?.local === 'relay',
        `${label} ${which} connection uses a relayed candidate: ${JSON.stringify(pair)}`);
    }
  }
  step('every connection runs over relayed candidates');
});
