// A plain WHIP publisher (RFC 9725): camera + microphone into a Moien room over one HTTP POST.
// Query: ?room=R&identity=I[&token=T]. Without a token it asks the dev-only /dev/token endpoint.
// Progress is mirrored into window.whipState = {connected, location, error, ...} for tests.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const roomName = params.get('room') ?? '';
const identity = params.get('identity') || `whip-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
const GATHER_CAP_MS = 3000;

const state = {
  connected: false, location: null, error: null, connectionState: 'new', stopped: false,
  deleteStatus: null,
};
window.whipState = state;

let pc = null;
let media = null;
let token = params.get('token') ?? '';
let resourceUrl = null;

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function fail(message) {
  state.error = message;
  setStatus(message, true);
}

async function devToken() {
  const q = new URLSearchParams({ room: roomName, identity, name: identity });
  const res = await fetch(`/dev/token?${q}`);
  if (!res.ok) throw new Error(`no token given and /dev/token answered ${res.status}`);
  return (await res.json()).token;
}

/** Non-trickle WHIP: the offer must carry the candidates, but never wait longer than the cap. */
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

async function publish() {
  if (!roomName) throw new Error('missing ?room=');
  setStatus('Starting camera and microphone…');
  media = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  $('preview').srcObject = media;
  token ||= await devToken();

  pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  for (const track of media.getTracks()) {
    pc.addTransceiver(track, { direction: 'sendonly', streams: [media] });
  }
  pc.addEventListener('connectionstatechange', () => {
    state.connectionState = pc.connectionState;
    state.connected = pc.connectionState === 'connected';
    if (state.connected) setStatus('Publishing.');
    else if (pc.connectionState === 'failed') fail('Media connection failed.');
  });

  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  setStatus('Sending offer…');
  const res = await fetch(`/whip/${encodeURIComponent(roomName)}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/sdp' },
    body: pc.localDescription.sdp,
  });
  if (res.status !== 201) {
    const why = (await res.text()).trim();
    throw new Error(`WHIP POST answered ${res.status}${why ? `: ${why}` : ''}`);
  }
  state.location = res.headers.get('Location');
  if (state.location) {
    resourceUrl = new URL(state.location, res.url).href;
    $('resource').textContent = state.location;
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  $('stop').disabled = false;
  setStatus('Connecting media…');
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
  for (const track of media?.getTracks() ?? []) track.stop();
  state.connected = false;
  state.connectionState = 'closed';
  if (!state.error) setStatus('Stopped.');
}

$('room').textContent = roomName || '—';
$('identity').textContent = identity;
$('stop').addEventListener('click', stop);
// Best effort on tab close: keepalive lets the DELETE outlive the page.
window.addEventListener('pagehide', () => {
  if (resourceUrl && !state.stopped) {
    state.stopped = true;
    fetch(resourceUrl, {
      method: 'DELETE', headers: { Authorization: `Bearer ${token}` }, keepalive: true,
    }).catch(() => {});
  }
});

publish().catch((err) => {
  fail(err.message);
  pc?.close();
  for (const track of media?.getTracks() ?? []) track.stop();
});
