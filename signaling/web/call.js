// The call page. Built only on the public API of moien.js, so it doubles as an SDK example.
import { Room } from './moien.js';

const $ = (id) => document.getElementById(id);
const ui = {
  lobby: $('lobby'), call: $('call'), form: $('join-form'), roomInput: $('room-input'),
  nameInput: $('name-input'), join: $('join'), grid: $('grid'), empty: $('empty'),
  selfView: $('self-view'), mic: $('mic'), camera: $('camera'), leave: $('leave'),
  audioUnlock: $('audio-unlock'), status: $('status'), roomLabel: $('room-label'),
};

const LEAVE_TEXT = {
  client_request: 'You left the call.',
  connection_lost: 'The connection to the server was lost.',
  connect_timeout: 'Media could not connect to the server.',
  duplicate_identity: 'You joined this room from somewhere else.',
  server_shutdown: 'The server is shutting down.',
  slow_consumer: 'The connection was too slow to keep up.',
};

/** @type {Room|null} */
let room = null;
/** @type {MediaStream|null} */
let localMedia = null;
/** participant sid → tile */
const tiles = new Map();

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle('error', isError);
}

function randomSuffix() {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('').slice(0, 6);
}

// Identities must be unique in a room (a second session with the same one ends the first), so a
// display name alone is not enough.
function identityFor(name) {
  const slug = name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '').slice(0, 32);
  return `${slug || 'guest'}-${randomSuffix()}`;
}

async function devToken(roomName, identity, name) {
  const q = new URLSearchParams({ room: roomName, identity, name });
  const res = await fetch(`/dev/token?${q}`);
  if (res.status === 404) {
    throw new Error('This server hands out no development tokens: open the page with ?token=…');
  }
  if (!res.ok) throw new Error(`Could not get a token (HTTP ${res.status}).`);
  const body = await res.json();
  return body.token;
}

function signalingUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/rtc`;
}

/** Camera and microphone, or whatever part of them is available; null when none is. */
async function getLocalMedia() {
  for (const constraints of [{ audio: true, video: true }, { audio: true }, { video: true }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch {
      // try the next, smaller request
    }
  }
  return null;
}

// ---- tiles -------------------------------------------------------------------------------------

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  return (words.length ? words.slice(0, 2).map((w) => w[0]) : ['?']).join('').toUpperCase();
}

function displayName(p) {
  return p.name || p.identity || 'Guest';
}

function tileFor(participant) {
  let tile = tiles.get(participant.sid);
  if (tile) {
    tile.label.textContent = displayName(participant);
    tile.avatar.textContent = initials(displayName(participant));
    tile.el.setAttribute('aria-label', displayName(participant));
    tile.el.dataset.identity = participant.identity;
    return tile;
  }
  const el = document.createElement('div');
  el.className = 'tile remote no-video';
  el.setAttribute('role', 'listitem');
  el.dataset.participant = participant.sid;
  const video = document.createElement('video');
  video.muted = true; // sound goes through the <audio> elements, so autoplay is never blocked
  video.autoplay = true;
  video.playsInline = true;
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  avatar.setAttribute('aria-hidden', 'true');
  const label = document.createElement('div');
  label.className = 'label';
  const name = document.createElement('span');
  name.className = 'name';
  const micOff = document.createElement('span');
  micOff.className = 'mic-off';
  micOff.textContent = 'muted';
  label.append(name, micOff);
  el.append(video, avatar, label);
  ui.grid.append(el);
  tile = { el, video, avatar, label: name, audios: new Map() };
  tiles.set(participant.sid, tile);
  tileFor(participant);
  updateGrid();
  return tile;
}

function removeTile(sid) {
  const tile = tiles.get(sid);
  if (!tile) return;
  tile.video.srcObject = null;
  for (const audio of tile.audios.values()) audio.srcObject = null;
  tile.el.remove();
  tiles.delete(sid);
  updateGrid();
}

function updateGrid() {
  ui.grid.dataset.count = String(tiles.size);
  ui.empty.hidden = tiles.size > 0;
}

function playAudio(audio) {
  audio.play().catch((err) => {
    // Autoplay with sound needs a user gesture in some browsers; offer one.
    if (err.name === 'NotAllowedError') ui.audioUnlock.hidden = false;
  });
}

function onTrackSubscribed({ participant, info, track, stream }) {
  const tile = tileFor(participant);
  if (track.kind === 'video') {
    tile.video.srcObject = stream;
    tile.el.classList.remove('no-video');
    tile.el.classList.toggle('camera-off', info.muted);
  } else {
    const audio = document.createElement('audio');
    audio.autoplay = true;
    audio.srcObject = stream;
    tile.audios.set(info.sid, audio);
    tile.el.append(audio);
    tile.el.classList.toggle('mic-muted', info.muted);
    playAudio(audio);
  }
}

function onTrackUnsubscribed({ participant, info, track, stream }) {
  const tile = tiles.get(participant.sid);
  if (!tile) return;
  if (track.kind === 'video') {
    if (tile.video.srcObject === stream) {
      tile.video.srcObject = null;
      tile.el.classList.add('no-video');
    }
  } else {
    const audio = tile.audios.get(info.sid);
    if (audio) {
      audio.srcObject = null;
      audio.remove();
      tile.audios.delete(info.sid);
    }
  }
}

function onTrackMuted({ participant, info, muted }) {
  const tile = tiles.get(participant.sid);
  if (!tile) return;
  if (info.kind === 'video') tile.el.classList.toggle('camera-off', muted);
  else tile.el.classList.toggle('mic-muted', muted);
}

// ---- local controls ----------------------------------------------------------------------------

function localTrack(kind) {
  return localMedia?.getTracks().find((t) => t.kind === kind) ?? null;
}

function renderControls() {
  const mic = localTrack('audio');
  const cam = localTrack('video');
  ui.mic.disabled = !mic;
  ui.camera.disabled = !cam;
  const micMuted = !mic?.enabled;
  const camOff = !cam?.enabled;
  ui.mic.setAttribute('aria-pressed', String(micMuted));
  ui.mic.textContent = micMuted ? 'Unmute microphone' : 'Mute microphone';
  ui.camera.setAttribute('aria-pressed', String(camOff));
  ui.camera.textContent = camOff ? 'Turn camera on' : 'Turn camera off';
  ui.selfView.hidden = !cam || camOff;
}

function toggle(kind) {
  const track = localTrack(kind);
  if (!track || !room) return;
  try {
    room.setMuted(track, track.enabled);
  } catch (err) {
    setStatus(err.message, true);
  }
  renderControls();
}

function stopLocalMedia() {
  for (const track of localMedia?.getTracks() ?? []) track.stop();
  localMedia = null;
  ui.selfView.srcObject = null;
}

// ---- joining and leaving -----------------------------------------------------------------------

function showCall(inCall) {
  ui.lobby.hidden = inCall;
  ui.call.hidden = !inCall;
  ui.join.disabled = false;
  ui.roomLabel.textContent = inCall && room ? room.name : '';
  document.title = inCall && room ? `${room.name} · Moien` : 'Moien call';
}

function onDisconnected({ reason }) {
  for (const sid of [...tiles.keys()]) removeTile(sid);
  stopLocalMedia();
  ui.audioUnlock.hidden = true;
  showCall(false);
  setStatus(LEAVE_TEXT[reason] ?? `Disconnected (${reason}).`, reason !== 'client_request');
}

function wire(r) {
  r.addEventListener('participant_joined', (e) => tileFor(e.detail.participant));
  r.addEventListener('participant_left', (e) => removeTile(e.detail.participant.sid));
  r.addEventListener('track_subscribed', (e) => onTrackSubscribed(e.detail));
  r.addEventListener('track_unsubscribed', (e) => onTrackUnsubscribed(e.detail));
  r.addEventListener('track_muted', (e) => onTrackMuted(e.detail));
  r.addEventListener('disconnected', (e) => onDisconnected(e.detail));
  r.addEventListener('error', (e) => {
    const { code, message } = e.detail;
    const where = code === 'negotiation_failed' ? 'Media negotiation failed' : 'Server';
    setStatus(`${where}: ${message || code}`, true);
  });
}

async function join(roomName, name, token) {
  ui.join.disabled = true;
  try {
    setStatus('Starting camera and microphone…');
    localMedia = await getLocalMedia();
    ui.selfView.srcObject = localMedia;
    setStatus('Joining…');
    const identity = identityFor(name);
    const jwt = token || await devToken(roomName, identity, name);
    const relay = new URLSearchParams(location.search).get('relay') === '1';
    room = await Room.connect(signalingUrl(), jwt, {
      room: roomName,
      iceTransportPolicy: relay ? 'relay' : 'all',
    });
    window.moienRoom = room;
    wire(room);
    for (const p of room.participants.values()) tileFor(p);
    showCall(true);
    renderControls();
    setStatus(localMedia ? '' : 'No camera or microphone: you can watch and listen only.');
    if (localMedia) await room.publish(localMedia);
  } catch (err) {
    if (room?.state === 'connected') {
      setStatus(`Could not publish: ${err.message}`, true);
      return;
    }
    stopLocalMedia();
    showCall(false);
    setStatus(`Could not join: ${err.message}`, true);
  } finally {
    ui.join.disabled = false;
  }
}

function start() {
  const params = new URLSearchParams(location.search);
  const token = params.get('token') ?? '';
  ui.roomInput.value = params.get('room') ?? '';
  ui.nameInput.value = params.get('name') ?? '';
  ui.form.addEventListener('submit', (e) => {
    e.preventDefault();
    const roomName = ui.roomInput.value.trim();
    const name = ui.nameInput.value.trim();
    if (roomName && name) join(roomName, name, token);
  });
  ui.mic.addEventListener('click', () => toggle('audio'));
  ui.camera.addEventListener('click', () => toggle('video'));
  ui.leave.addEventListener('click', () => room?.leave());
  ui.audioUnlock.addEventListener('click', () => {
    ui.audioUnlock.hidden = true;
    for (const tile of tiles.values()) for (const audio of tile.audios.values()) playAudio(audio);
  });
  // Tell the server right away instead of letting it time the session out.
  window.addEventListener('pagehide', () => room?.leave());

  if (params.get('autojoin') === '1' && ui.roomInput.value && ui.nameInput.value) {
    join(ui.roomInput.value.trim(), ui.nameInput.value.trim(), token);
  } else {
    (ui.roomInput.value ? ui.nameInput : ui.roomInput).focus();
  }
}

start();
