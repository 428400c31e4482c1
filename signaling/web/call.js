// The call page. Built only on the public API of moien.js, so it doubles as an SDK example.
//
// Query parameters: room, name, token, autojoin=1; for tests and demos also codec=vp8|vp9|av1|h264,
// svc=L1T3|L3T3_KEY (SVC instead of simulcast), simulcast=0, relay=1 (TURN only) and share=1
// (share the screen right after joining).
import { Room } from './moien.js';

const $ = (id) => document.getElementById(id);
const ui = {
  lobby: $('lobby'), call: $('call'), form: $('join-form'), roomInput: $('room-input'),
  nameInput: $('name-input'), join: $('join'), mainArea: $('main-area'), grid: $('grid'),
  empty: $('empty'), stage: $('stage'), stageVideo: $('stage-video'), stageLabel: $('stage-label'),
  chatLog: $('chat-log'), chatForm: $('chat-form'), chatInput: $('chat-input'),
  selfView: $('self-view'), mic: $('mic'), camera: $('camera'), share: $('share'),
  leave: $('leave'), audioUnlock: $('audio-unlock'), status: $('status'),
  roomLabel: $('room-label'),
};

const LEAVE_TEXT = {
  client_request: 'You left the call.',
  connection_lost: 'The connection to the server was lost.',
  connect_timeout: 'Media could not connect to the server.',
  duplicate_identity: 'You joined this room from somewhere else.',
  server_shutdown: 'The server is shutting down.',
  slow_consumer: 'The connection was too slow to keep up.',
};

const ERROR_TEXT = {
  too_large: 'Message too long: it was not sent.',
  rate_limited: 'Messages sent too fast: some were not delivered.',
};

const CHAT_TOPIC = 'chat';
/** Highest simulcast layer the SDK publishes (q, h, f); what a large tile asks for. */
const TOP_LAYER = 2;

/** @type {Room|null} */
let room = null;
/** @type {MediaStream|null} */
let localMedia = null;
/** The LocalTracks of our screen share, while we share. */
let screenShare = null;
/** participant sid → camera tile */
const tiles = new Map();
/** track sid → {participant, info, stream} of every remote video we receive */
const videos = new Map();
/** Screen shares in the order they started: {key, participantSid, name, stream, remote} */
let screens = [];

const params = new URLSearchParams(location.search);

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
  // 720p input: browsers encode fewer simulcast layers from a smaller picture.
  const video = { width: { ideal: 1280 }, height: { ideal: 720 } };
  for (const constraints of [{ audio: true, video }, { audio: true }, { video }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch {
      // try the next, smaller request
    }
  }
  return null;
}

/** Publish options from the query string (codec, SVC, simulcast). */
function publishOptions() {
  const options = {};
  const codec = params.get('codec');
  if (codec) options.codec = codec;
  const svc = params.get('svc');
  if (svc) options.scalabilityMode = svc;
  if (params.get('simulcast') === '0') options.simulcast = false;
  return options;
}

function displayName(p) {
  return p.name || p.identity || 'Guest';
}

// ---- tiles -------------------------------------------------------------------------------------

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  return (words.length ? words.slice(0, 2).map((w) => w[0]) : ['?']).join('').toUpperCase();
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
  const videoState = document.createElement('div');
  videoState.className = 'video-state';
  videoState.textContent = 'Video paused: low bandwidth';
  const label = document.createElement('div');
  label.className = 'label';
  const name = document.createElement('span');
  name.className = 'name';
  const micOff = document.createElement('span');
  micOff.className = 'mic-off';
  micOff.textContent = 'muted';
  label.append(name, micOff);
  el.append(video, avatar, videoState, label);
  ui.grid.append(el);
  tile = { el, video, avatar, label: name, audios: new Map(), videoSid: null };
  tiles.set(participant.sid, tile);
  tileFor(participant);
  viewing.watch(tile);
  updateLayout();
  return tile;
}

function removeTile(sid) {
  const tile = tiles.get(sid);
  if (!tile) return;
  viewing.unwatch(tile);
  tile.video.srcObject = null;
  for (const audio of tile.audios.values()) audio.srcObject = null;
  tile.el.remove();
  tiles.delete(sid);
  updateLayout();
}

function updateLayout() {
  ui.grid.dataset.count = String(tiles.size);
  ui.empty.hidden = tiles.size > 0 || screens.length > 0;
}

function playAudio(audio) {
  audio.play().catch((err) => {
    // Autoplay with sound needs a user gesture in some browsers; offer one.
    if (err.name === 'NotAllowedError') ui.audioUnlock.hidden = false;
  });
}

// ---- the stage: screen shares, large ------------------------------------------------------------

/** The latest remote share; your own only when nobody else shares (you know your screen). */
function stagedScreen() {
  return screens.findLast((s) => s.remote) ?? screens.at(-1) ?? null;
}

function renderStage() {
  const shown = stagedScreen();
  ui.stage.hidden = !shown;
  ui.mainArea.classList.toggle('has-stage', !!shown);
  if (ui.stageVideo.srcObject !== (shown?.stream ?? null)) ui.stageVideo.srcObject = shown?.stream ?? null;
  if (ui.stage.dataset.track !== (shown?.key ?? '')) clearVideoState(ui.stage);
  ui.stageLabel.textContent = shown ? shown.name : '';
  ui.stage.dataset.participant = shown?.participantSid ?? '';
  ui.stage.dataset.track = shown?.key ?? '';
  ui.stage.classList.toggle('local', !!shown && !shown.remote);
  // Only the share on stage is worth receiving; the others wait, paused.
  for (const s of screens) if (s.remote) viewing.setWish(s.key, { paused: s !== shown });
  updateLayout();
}

function addScreen(entry) {
  screens = screens.filter((s) => s.key !== entry.key);
  screens.push(entry);
  renderStage();
}

function removeScreen(key) {
  const before = screens.length;
  screens = screens.filter((s) => s.key !== key);
  if (screens.length !== before) renderStage();
}

// ---- what we receive ----------------------------------------------------------------------------

/** A remote video goes to the stage when it is a screen share, else to its owner's tile. */
function placeVideo(sid) {
  const v = videos.get(sid);
  if (!v) return;
  const tile = tileFor(v.participant);
  if (v.info.source === 'screen') {
    if (tile.videoSid === sid) detachCamera(tile);
    addScreen({
      key: sid, participantSid: v.participant.sid, remote: true, stream: v.stream,
      name: `${displayName(v.participant)}'s screen`,
    });
    return;
  }
  removeScreen(sid);
  if (tile.videoSid !== sid) clearVideoState(tile.el);
  tile.video.srcObject = v.stream;
  tile.videoSid = sid;
  tile.el.classList.remove('no-video');
  tile.el.classList.toggle('camera-off', v.info.muted);
  viewing.track(tile);
}

function detachCamera(tile) {
  viewing.forget(tile.videoSid);
  tile.video.srcObject = null;
  tile.videoSid = null;
  tile.el.classList.add('no-video');
  clearVideoState(tile.el);
}

/** Forgets what subscription_state said about the video an element showed. */
function clearVideoState(el) {
  el.classList.remove('video-paused');
  delete el.dataset.videoState;
}

function onTrackSubscribed({ participant, info, track, stream }) {
  if (track.kind === 'video') {
    videos.set(info.sid, { participant, info, stream });
    placeVideo(info.sid);
    return;
  }
  const tile = tileFor(participant);
  const audio = document.createElement('audio');
  audio.autoplay = true;
  audio.srcObject = stream;
  tile.audios.set(info.sid, audio);
  tile.el.append(audio);
  if (info.source !== 'screen_audio') tile.el.classList.toggle('mic-muted', info.muted);
  playAudio(audio);
}

function onTrackUnsubscribed({ participant, info, track }) {
  if (track.kind === 'video') {
    videos.delete(info.sid);
    removeScreen(info.sid);
    const tile = tiles.get(participant.sid);
    if (tile?.videoSid === info.sid) detachCamera(tile);
    return;
  }
  const tile = tiles.get(participant.sid);
  const audio = tile?.audios.get(info.sid);
  if (audio) {
    audio.srcObject = null;
    audio.remove();
    tile.audios.delete(info.sid);
  }
}

function onTrackMuted({ participant, info, muted }) {
  const tile = tiles.get(participant.sid);
  if (!tile) return;
  if (info.kind === 'video') {
    if (tile.videoSid === info.sid) tile.el.classList.toggle('camera-off', muted);
  } else if (info.source !== 'screen_audio') {
    tile.el.classList.toggle('mic-muted', muted);
  }
}

/** The server paused a video for lack of bandwidth (or resumed it): say so on the tile. */
function onSubscriptionState({ participant, info, paused, layer, reason }) {
  const tile = tiles.get(participant.sid);
  const where = tile?.videoSid === info.sid ? tile.el
    : ui.stage.dataset.track === info.sid ? ui.stage : null;
  if (!where) return;
  where.classList.toggle('video-paused', paused && reason === 'bandwidth');
  where.dataset.videoState = paused ? `paused-${reason}` : `layer-${layer ?? 0}`;
}

/** The loudest speaker's tile (or your own view) is outlined. */
function onActiveSpeakers({ speakers }) {
  const loudest = speakers[0]?.participant.sid ?? null;
  for (const [sid, tile] of tiles) tile.el.classList.toggle('speaking', sid === loudest);
  ui.selfView.classList.toggle('speaking', !!room && loudest === room.localParticipant.sid);
}

// ---- subscriptions follow what is on screen -----------------------------------------------------

/**
 * Asks the server only for what the page shows: a camera tile scrolled out of view is paused, a
 * small one gets the lowest layer, the stage gets everything. Wishes are sent only on change.
 */
const viewing = (() => {
  /** track sid → what we last asked for ({paused, maxLayer}) */
  const sent = new Map();
  /** tile element → {visible, width} */
  const seen = new WeakMap();
  const byElement = new Map();

  const layerFor = (cssWidth) => {
    const px = cssWidth * (window.devicePixelRatio || 1);
    return px <= 400 ? 0 : px <= 800 ? 1 : TOP_LAYER;
  };

  const setWish = (sid, wish) => {
    if (!room || room.state !== 'connected' || !sid) return;
    // The server starts every subscription unpaused at its best layer.
    const last = sent.get(sid) ?? { paused: false, maxLayer: TOP_LAYER };
    const change = {};
    for (const [k, v] of Object.entries(wish)) if (v !== undefined && last[k] !== v) change[k] = v;
    if (Object.keys(change).length === 0) return;
    sent.set(sid, { ...last, ...change });
    room.setSubscription(sid, change);
  };

  const track = (tile) => {
    const s = seen.get(tile.el);
    if (!s || !tile.videoSid) return;
    setWish(tile.videoSid, s.visible
      ? { paused: false, maxLayer: layerFor(s.width) }
      : { paused: true });
  };

  const update = (el, patch) => {
    seen.set(el, { ...(seen.get(el) ?? { visible: true, width: 0 }), ...patch });
    const tile = byElement.get(el);
    if (tile) track(tile);
  };

  const intersection = new IntersectionObserver((entries) => {
    for (const e of entries) update(e.target, { visible: e.isIntersecting });
  });
  const resize = new ResizeObserver((entries) => {
    for (const e of entries) update(e.target, { width: e.contentRect.width });
  });

  return {
    setWish,
    track,
    watch(tile) {
      byElement.set(tile.el, tile);
      intersection.observe(tile.el);
      resize.observe(tile.el);
    },
    unwatch(tile) {
      byElement.delete(tile.el);
      intersection.unobserve(tile.el);
      resize.unobserve(tile.el);
      this.forget(tile.videoSid);
    },
    forget(sid) {
      if (sid) sent.delete(sid);
    },
    reset() {
      sent.clear();
    },
  };
})();

// ---- chat ---------------------------------------------------------------------------------------

function appendChat(from, text, { own = false, sid = '' } = {}) {
  const item = document.createElement('li');
  item.className = own ? 'own' : '';
  item.dataset.from = sid;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = from;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  item.append(who, body);
  ui.chatLog.append(item);
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

function onDataReceived({ participant, identity, topic, data }) {
  if (topic !== CHAT_TOPIC) return;
  const known = room?.participants.get(participant.sid);
  appendChat(known ? displayName(known) : identity || 'Guest', data, { sid: participant.sid });
}

function sendChat() {
  const text = ui.chatInput.value.trim();
  if (!text || !room) return;
  if (!room.sendData(text, { topic: CHAT_TOPIC })) {
    setStatus('Chat is not connected yet; try again in a moment.', true);
    return;
  }
  ui.chatInput.value = '';
  appendChat('You', text, { own: true, sid: room.localParticipant.sid });
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
  ui.share.disabled = !navigator.mediaDevices?.getDisplayMedia;
  ui.share.setAttribute('aria-pressed', String(!!screenShare));
  ui.share.textContent = screenShare ? 'Stop sharing' : 'Share screen';
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

async function startShare() {
  if (!room || screenShare) return;
  ui.share.disabled = true;
  try {
    const locals = await room.publishScreen({ codec: params.get('codec') ?? undefined });
    screenShare = locals;
    const video = locals.find((l) => l.kind === 'video');
    if (video) {
      addScreen({
        key: `local:${video.track.id}`, participantSid: room.localParticipant.sid, remote: false,
        stream: new MediaStream([video.track]), name: 'Your screen',
      });
      // Stopped from the browser's own control: the SDK unpublishes, the page catches up.
      video.track.addEventListener('ended', () => endShare(), { once: true });
    }
  } catch (err) {
    // Closing the browser's picker is a choice, not an error worth a red line.
    if (err.name !== 'NotAllowedError') setStatus(`Could not share the screen: ${err.message}`, true);
  } finally {
    renderControls();
  }
}

function endShare() {
  const locals = screenShare;
  if (!locals) return;
  screenShare = null;
  for (const l of locals) removeScreen(`local:${l.track.id}`);
  renderControls();
  return locals;
}

async function stopShare() {
  const locals = endShare();
  for (const l of locals ?? []) {
    if (room?.state === 'connected') await room.unpublish(l).catch(() => {});
    l.track.stop();
  }
}

function stopLocalMedia() {
  for (const track of localMedia?.getTracks() ?? []) track.stop();
  localMedia = null;
  ui.selfView.srcObject = null;
  for (const l of endShare() ?? []) l.track.stop();
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
  videos.clear();
  screens = [];
  renderStage();
  viewing.reset();
  stopLocalMedia();
  ui.audioUnlock.hidden = true;
  ui.chatLog.replaceChildren();
  showCall(false);
  setStatus(LEAVE_TEXT[reason] ?? `Disconnected (${reason}).`, reason !== 'client_request');
}

function wire(r) {
  r.addEventListener('participant_joined', (e) => tileFor(e.detail.participant));
  r.addEventListener('participant_left', (e) => removeTile(e.detail.participant.sid));
  r.addEventListener('track_subscribed', (e) => onTrackSubscribed(e.detail));
  r.addEventListener('track_unsubscribed', (e) => onTrackUnsubscribed(e.detail));
  // A subscription can come before its announcement; the source may change where it belongs.
  r.addEventListener('track_published', (e) => placeVideo(e.detail.info.sid));
  r.addEventListener('track_muted', (e) => onTrackMuted(e.detail));
  r.addEventListener('subscription_state', (e) => onSubscriptionState(e.detail));
  r.addEventListener('active_speakers', (e) => onActiveSpeakers(e.detail));
  r.addEventListener('data_received', (e) => onDataReceived(e.detail));
  r.addEventListener('disconnected', (e) => onDisconnected(e.detail));
  r.addEventListener('reconnecting', () => setStatus('Connection lost: reconnecting…', true));
  r.addEventListener('reconnected', () => setStatus(''));
  r.addEventListener('error', (e) => {
    const { code, message } = e.detail;
    if (ERROR_TEXT[code]) {
      setStatus(ERROR_TEXT[code], true);
      return;
    }
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
    room = await Room.connect(signalingUrl(), jwt, {
      room: roomName,
      iceTransportPolicy: params.get('relay') === '1' ? 'relay' : 'all',
    });
    window.moienRoom = room;
    wire(room);
    for (const p of room.participants.values()) tileFor(p);
    showCall(true);
    renderControls();
    setStatus(localMedia ? '' : 'No camera or microphone: you can watch and listen only.');
    if (localMedia) await room.publish(localMedia, publishOptions());
    if (params.get('share') === '1') await startShare();
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
  ui.share.addEventListener('click', () => (screenShare ? stopShare() : startShare()));
  ui.leave.addEventListener('click', () => room?.leave());
  ui.chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    sendChat();
  });
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
