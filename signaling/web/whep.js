// A plain WHEP player (RFC 9725 conventions): plays one participant of a Moien room.
// Query: ?room=R&identity=I[&token=T]; `identity` is the participant to watch. Without a token it
// asks the dev-only /dev/token endpoint for one in a viewer identity of its own.
// For tests: window.whepPc is the RTCPeerConnection, window.whepState = {connected, location, error}.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const roomName = params.get('room') ?? '';
const target = params.get('identity') ?? '';
const GATHER_CAP_MS = 3000;
const RETRY_MS = 2000;

const state = {
  connected: false, location: null, error: null, connectionState: 'new', stopped: false,
  deleteStatus: null,
};
window.whepState = state;

let pc = null;
let token = params.get('token') ?? '';
let resourceUrl = null;
const stream = new MediaStream();

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function fail(message) {
  state.error = message;
  setStatus(message, true);
}

async function devToken() {
  // The viewer needs an identity of its own: reusing the publisher's would end its session.
  const viewer = `whep-viewer-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
  const q = new URLSearchParams({ room: roomName, identity: viewer });
  const res = await fetch(`/dev/token?${q}`);
  if (!res.ok) throw new Error(`no token given and /dev/token answered ${res.status}`);
  return (await res.json()).token;
}

function gatheringComplete(peer) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      peer.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => { if (peer.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, GATHER_CAP_MS);
    peer.addEventListener('icegatheringstatechange', check);
    check();
  });
}

/** One offer/answer attempt; resolves false when the participant is not (yet) in the room. */
async function attempt() {
  pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  window.whepPc = pc;
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addEventListener('track', (e) => {
    stream.addTrack(e.track);
    $('player').srcObject = stream;
  });
  pc.addEventListener('connectionstatechange', () => {
    state.connectionState = pc.connectionState;
    state.connected = pc.connectionState === 'connected';
    if (state.connected) setStatus('Playing.');
    else if (pc.connectionState === 'failed') fail('Media connection failed.');
  });

  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  const url = `/whep/${encodeURIComponent(roomName)}/${encodeURIComponent(target)}`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/sdp' },
    body: pc.localDescription.sdp,
  });
  if (res.status === 404) {
    pc.close();
    return false;
  }
  if (res.status !== 201) {
    const why = (await res.text()).trim();
    throw new Error(`WHEP POST answered ${res.status}${why ? `: ${why}` : ''}`);
  }
  state.location = res.headers.get('Location');
  if (state.location) {
    resourceUrl = new URL(state.location, res.url).href;
    $('resource').textContent = state.location;
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  return true;
}

async function play() {
  if (!roomName || !target) throw new Error('missing ?room= or ?identity=');
  token ||= await devToken();
  setStatus('Connecting…');
  // A player opened before the stream starts waits for the publisher instead of giving up.
  while (!state.stopped && !(await attempt())) {
    setStatus(`Waiting for ${target} to join ${roomName}…`);
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
  $('stop').disabled = state.stopped;
}

async function stop() {
  if (state.stopped) return;
  state.stopped = true;
  $('stop').disabled = true;
  if (resourceUrl) {
    try {
      const res = await fetch(resourceUrl, {
        method: 'DELETE', headers: { Authorization: `Bearer ${token}` },
      });
      state.deleteStatus = res.status;
    } catch (err) {
      state.error = `DELETE failed: ${err.message}`;
    }
  }
  pc?.close();
  state.connected = false;
  state.connectionState = 'closed';
  if (!state.error) setStatus('Stopped.');
}

function toggleSound() {
  const video = $('player');
  video.muted = !video.muted;
  $('sound').setAttribute('aria-pressed', String(!video.muted));
  $('sound').textContent = video.muted ? 'Turn sound on' : 'Turn sound off';
  video.play().catch(() => {});
}

$('room').textContent = roomName || '—';
$('identity').textContent = target || '—';
$('stop').addEventListener('click', stop);
$('sound').addEventListener('click', toggleSound);
window.addEventListener('pagehide', () => {
  if (resourceUrl && !state.stopped) {
    state.stopped = true;
    fetch(resourceUrl, {
      method: 'DELETE', headers: { Authorization: `Bearer ${token}` }, keepalive: true,
    }).catch(() => {});
  }
});

play().catch((err) => {
  fail(err.message);
  pc?.close();
});
