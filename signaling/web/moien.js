/**
 * Moien browser SDK — join a Moien room over the signaling WebSocket and move media over WebRTC.
 * Plain ES module, no dependencies. Speaks protocol version 1 (docs/PROTOCOL.md).
 *
 * ## Quick start
 * ```js
 * import { Room } from '/moien.js';
 * const room = await Room.connect('wss://example.org/rtc', token);
 * room.addEventListener('track_subscribed', (e) => {
 *   const { participant, info, track, stream } = e.detail;
 *   videoElement.srcObject = stream;
 * });
 * const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
 * await room.publish(media);
 * room.addEventListener('data_received', (e) => console.log(e.detail.identity, e.detail.data));
 * room.sendData('hello', { topic: 'chat' });
 * ```
 *
 * Dynacast is automatic: when the server says nobody receives a simulcast layer of yours
 * (`publish_layers`), the SDK stops encoding it, and resumes it when asked.
 *
 * ## Public API
 * - `Room.connect(url, token, options?) → Promise<Room>`: opens the WebSocket (`ws(s)://host/rtc`),
 *   sends `join` and resolves once the server answers `joined`. Rejects with a {@link MoienError}
 *   (`code` is the protocol error code, e.g. `unauthorized`) or a timeout.
 *   `options`: `{ room?, joinTimeout? (ms, 10000), requestTimeout? (ms, 15000),
 *   pingInterval? (ms, 15000), trickle? (bool, false), iceTransportPolicy? ('all' | 'relay':
 *   only through the server's TURN), reconnect? (bool, true), resumeWindow? (ms, 30000: how long
 *   to keep trying), qualityInterval? (ms, 2000), WebSocket? }`.
 * - `room.publish(mediaStream | MediaStreamTrack | MediaStreamTrack[], options?) →
 *   Promise<LocalTrack[]>`: sends the tracks on the publisher peer connection; resolves once the
 *   server answered. `options` (video options apply to video tracks only):
 *   - `source`: overrides the default (`microphone` for audio, `camera` for video); with `screen`,
 *     audio tracks become `screen_audio`;
 *   - `simulcast` (default true): three encodings, rids `q`, `h`, `f` at 1/4, 1/2 and full
 *     resolution (about 150 kbps, 500 kbps, 1.5 Mbps), so the server can send each subscriber
 *     what its downlink carries. Capture 1280×720 or more: browsers drop layers for small input;
 *   - `codec`: `vp8`, `vp9`, `av1` or `h264`: the only video codec offered, so the server must
 *     support it (publishing fails otherwise); default: the browser's and server's choice;
 *   - `scalabilityMode`: SVC instead of simulcast, e.g. `L1T3` (temporal layers) or `L3T3_KEY`
 *     (spatial and temporal; VP9 or AV1). Implies `simulcast: false`.
 * - `room.publishScreen({ audio?, codec? }) → Promise<LocalTrack[]>`: asks the browser for a screen
 *   (`getDisplayMedia`) and publishes it with source `screen` (one encoding, no simulcast: the
 *   server gives screen shares the highest priority). When the user stops sharing from the
 *   browser, the track is unpublished. Stop it yourself with `unpublish()` and `track.stop()`.
 * - `room.unpublish(trackOrSid) → Promise<void>`: stops sending a track (MediaStreamTrack, its
 *   LocalTrack or its server sid). The MediaStreamTrack itself is not stopped.
 * - `room.setMuted(trackOrSid, muted) → void`: mutes/unmutes a published track in place
 *   (`track.enabled`), and tells the others (`track_muted`).
 * - `room.setSubscription(trackSid, { paused?, maxLayer?, maxTemporal?, pinned? }) → void`: how
 *   you want one video you receive. `paused: true` for a tile nobody sees (nothing is sent),
 *   `maxLayer` (0 = lowest simulcast layer, or SVC spatial layer) for a small tile, `maxTemporal`
 *   (SVC temporal layer: a lower frame rate), `pinned` for more priority when bandwidth is short.
 *   Options left out keep their previous value.
 * - `room.sendData(data, { to?, topic?, reliable? }) → boolean`: sends a data message (chat,
 *   reactions, ...) to everyone else, or to the participants (or sids) in `to`. `data` is a
 *   string (binary data is sent base64-encoded); at most 16 KiB per message with its envelope and
 *   20 messages a second (the server refuses more with an `error` event, `too_large` or
 *   `rate_limited`; the session goes on). `reliable: false` uses the unordered channel without
 *   retransmissions. Returns false when the channel is not open (yet).
 * - `room.replaceTrack(trackOrSid, newTrack) → Promise<LocalTrack>`: sends `newTrack` instead of a
 *   published track (another camera or microphone) on the same transceiver: no renegotiation,
 *   same track sid for the others. The old MediaStreamTrack is not stopped.
 * - `room.switchDevice(kind, deviceId) → Promise<LocalTrack>`: opens the camera (`'video'`) or
 *   microphone (`'audio'`) `deviceId` (from `navigator.mediaDevices.enumerateDevices()`),
 *   replaces the published track of that kind with it and stops the old one.
 * - `room.reconnect() → void`: drops the signaling connection and resumes at once (what the SDK
 *   does by itself on a network change); see "Reconnection" below.
 * - `room.leave() → Promise<void>`: leaves the room and closes both peer connections.
 * - `room.participants`: `Map<sid, RemoteParticipant>` of everyone else in the room.
 * - `room.localParticipant`: `{sid, identity, name, tracks: Map<sid, LocalTrack>}`.
 * - `room.name`, `room.state` (`connected` | `reconnecting` | `disconnected`), `room.rtt` (ms,
 *   from ping/pong), `room.connectionQuality` (`excellent` | `good` | `poor` | `lost`).
 * - `room.activeSpeakers`: the latest `active_speakers` list, loudest first.
 * - `room.publisher` / `room.subscriber`: the two RTCPeerConnections (read-only; for getStats()).
 *
 * ## Events (`room.addEventListener(type, (e) => e.detail)`, all CustomEvents)
 * - `participant_joined`   `{participant}`
 * - `participant_left`     `{participant, reason}`
 * - `track_published`      `{participant, info}` — announced; `track_subscribed` follows
 * - `track_unpublished`    `{participant, info}`
 * - `track_subscribed`     `{participant, info, track, stream, mid}` — media arrives on `track`;
 *   `stream` is a MediaStream holding only that track.
 * - `track_unsubscribed`   `{participant, info, track, stream, mid}`
 * - `track_muted`          `{participant, info, muted}` — a remote publisher (un)muted a track
 * - `subscription_state`   `{participant, info, paused, layer, reason}` — the server paused or
 *   resumed a video you receive, or changed its layer: `reason` is `bandwidth` (your downlink does
 *   not carry it), `client` (you asked) or `muted`; `layer` is null while paused
 * - `active_speakers`      `{speakers: [{participant, level}]}` — who speaks, loudest first
 *   (`level` 0..1); `participant` is `room.localParticipant` when it is you; empty: silence
 * - `data_received`        `{participant, identity, topic, data, reliable}` — a data message
 * - `publish_layers`       `{track, layers: [{rid, active}]}` — the server asked to stop or resume
 *   encoding layers of one of your tracks (`track` is the LocalTrack); already applied
 * - `reconnecting`         `{reason}` — the signaling connection dropped (or the network changed);
 *   the SDK is resuming. Media may keep flowing meanwhile.
 * - `reconnected`          `{}` — resumed: same participant, same tracks, new network paths
 * - `participant_connection` `{participant, state}` — another participant lost its connection
 *   (`reconnecting`) or came back (`connected`); it stays in `room.participants` meanwhile
 * - `participant_updated`  `{participant, permissions?}` — metadata or permissions changed
 *   (`permissions` when it is you)
 * - `connection_quality`   `{quality, rtt, loss}` — your connection's quality changed:
 *   `excellent`, `good`, `poor` (loss over 5 % or RTT over 300 ms) or `lost`; `rtt` in ms, `loss`
 *   0..1 over the last interval
 * - `disconnected`         `{reason, code?}` — the session ended (`client_request`,
 *   `connection_lost`, `duplicate_identity`, `server_shutdown`, `resume_failed`, ...; see
 *   PROTOCOL.md)
 * - `error`                `{code, status, message}` — the server refused a request, or a local
 *   step failed (`code` `negotiation_failed`, or `encoding_failed` when layers could not be
 *   switched as `publish_layers` asked). The session goes on.
 *
 * ## Reconnection
 * When the WebSocket drops, the browser goes offline, the network changes (Wi-Fi to mobile data)
 * or the tab wakes from sleep with a dead socket, the SDK resumes by itself: it opens a new
 * socket and sends `resume` with the server's latest resume token, within the server's resume
 * window (30 s by default), retrying with backoff. The others see you `reconnecting`, never leave;
 * on success the publisher connection restarts ICE and the server re-offers the subscriber one.
 * When the server shuts down (`server_shutdown`) or the window has passed, `disconnected` comes
 * instead: join again (possibly elsewhere). `options.reconnect: false` turns this off.
 *
 * Participants present when you join are in `room.participants` as soon as `connect()` resolves
 * (no `participant_joined` for them); their tracks arrive as `track_subscribed` afterwards.
 * Attach listeners right after `connect()` resolves: events are held back until then.
 *
 * ## Types
 * - `TrackInfo`: `{sid, kind: 'audio'|'video', source, muted, codec}`
 * - `RemoteParticipant`: `{sid, identity, name, tracks: Map<sid, TrackInfo>}`
 * - `LocalTrack`: `{sid, mid, kind, source, muted, track: MediaStreamTrack, sender: RTCRtpSender}`
 *
 * @module moien
 */

export const PROTOCOL_VERSION = 1;

const DEFAULTS = {
  joinTimeout: 10_000,
  requestTimeout: 15_000,
  pingInterval: 15_000,
  trickle: false,
  reconnect: true,
  resumeWindow: 30_000,
  qualityInterval: 2000,
};

/** Close code the SDK uses when it drops a socket to resume on a new one (not a leave). */
const CLOSE_RESUME = 4000;
/** Delays between resume attempts, in ms; the last repeats until the window closes. */
const RESUME_BACKOFF = [0, 250, 500, 1000, 2000];

/** An error the server returned (`code` is stable, see PROTOCOL.md) or a local failure. */
export class MoienError extends Error {
  /**
   * @param {string} code protocol error code, or a local one (`timeout`, `closed`, ...)
   * @param {string} message
   * @param {number} [status] HTTP-like status from the server
   */
  constructor(code, message, status = 0) {
    super(message || code);
    this.name = 'MoienError';
    this.code = code;
    this.status = status;
  }
}

/**
 * Runs async jobs one at a time. Each peer connection gets one, so an offer that arrives while the
 * previous one is still being applied waits for it instead of racing it.
 */
class SerialQueue {
  #tail = Promise.resolve();

  /** @template T @param {() => Promise<T>} job @returns {Promise<T>} */
  run(job) {
    const result = this.#tail.then(job);
    this.#tail = result.catch(() => {});
    return result;
  }
}

function toTrackInfo(t) {
  return {
    sid: t.sid,
    kind: t.kind,
    source: t.source ?? 'unknown',
    muted: !!t.muted,
    codec: t.codec ?? '',
  };
}

function toParticipant(p) {
  return {
    sid: p.sid,
    identity: p.identity ?? '',
    name: p.name ?? '',
    tracks: new Map((p.tracks ?? []).map((t) => [t.sid, toTrackInfo(t)])),
  };
}

function toIceServers(list) {
  return (list ?? []).map((s) => {
    const server = { urls: s.urls };
    if (s.username != null) server.username = s.username;
    if (s.credential != null) server.credential = s.credential;
    return server;
  });
}

/**
 * Simulcast layers, lowest first as the server expects them. Bitrates follow the usual
 * 180p/360p/720p ladder; the server's allocator assumes the same figures before it measures.
 */
const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

const CODECS = ['vp8', 'vp9', 'av1', 'h264'];

/** Errors on the WebSocket that a refused data message produces (it carries no request id). */
const DATA_ERRORS = ['too_large', 'rate_limited'];
/** How long after a data message such an error is taken to be about it. */
const DATA_ERROR_WINDOW_MS = 3000;

/** The `sendEncodings` of a video transceiver for the publish options. */
function videoEncodings({ simulcast = true, scalabilityMode } = {}) {
  if (scalabilityMode) return [{ scalabilityMode }];
  if (simulcast) return SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
  return undefined;
}

/**
 * Restricts the transceiver to `codec` (and its retransmission format). Listing the others after
 * it is not enough: the browser sends the first codec of the answer, and an answerer may order
 * them by its own preference (RFC 3264 only recommends keeping the offer's order).
 */
function preferCodec(transceiver, codec) {
  const mime = `video/${codec}`;
  // Chromium checks a send-only transceiver's list against what it can send; older browsers
  // against what they can receive.
  for (const side of [globalThis.RTCRtpSender, globalThis.RTCRtpReceiver]) {
    const all = side?.getCapabilities?.('video')?.codecs ?? [];
    const wanted = all.filter((c) => c.mimeType.toLowerCase() === mime);
    if (wanted.length === 0) continue;
    const rtx = all.filter((c) => c.mimeType.toLowerCase() === 'video/rtx');
    try {
      transceiver.setCodecPreferences([...wanted, ...rtx]);
      return;
    } catch {
      // try the other capability list
    }
  }
  throw new MoienError('unsupported_codec', `this browser cannot send ${codec}`);
}

function toText(data) {
  if (typeof data === 'string') return data;
  let bytes = null;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (!bytes) throw new TypeError('sendData() takes a string, an ArrayBuffer or a typed array');
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** A small non-negative integer option, or undefined when absent. */
function layerIndex(name, value) {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < 0 || value > 255) {
    throw new TypeError(`${name} must be an integer from 0 to 255`);
  }
  return value;
}

function tracksOf(media) {
  if (media instanceof MediaStream) return media.getTracks();
  if (Array.isArray(media)) return media;
  if (media instanceof MediaStreamTrack) return [media];
  throw new TypeError('publish() takes a MediaStream, a MediaStreamTrack or an array of tracks');
}

/** A room session: one WebSocket, a publisher and a subscriber RTCPeerConnection. */
export class Room extends EventTarget {
  /** @type {Map<string, {sid:string, identity:string, name:string, tracks:Map<string, object>}>} */
  participants = new Map();
  localParticipant = null;
  name = '';
  /** @type {'connected'|'reconnecting'|'disconnected'} */
  state = 'connected';
  /** `excellent`, `good`, `poor` or `lost`, from the last quality check. */
  connectionQuality = 'excellent';
  /** Round-trip time of the last ping, in ms (null until the first pong). */
  rtt = null;
  /** The latest `active_speakers` list: `[{participant, level}]`, loudest first. */
  activeSpeakers = [];

  #ws;
  #options;
  #publisher;
  #subscriber;
  #pubQueue = new SerialQueue();
  #subQueue = new SerialQueue();
  /** The one publish_offer awaiting its answer: {resolve, reject, timer}. */
  #pendingAnswer = null;
  /** mid → subscription of the subscriber peer connection, from the latest subscribe_offer. */
  #subscriptions = new Map();
  /**
   * Sids of participants that left and tracks that were unpublished. An offer applied after such
   * news may still list them; subscribing to them would resurrect a ghost.
   */
  #ended = new Set();
  /** Local published tracks by MediaStreamTrack, to find them again in unpublish/setMuted. */
  #localByTrack = new Map();
  #pingTimer = 0;
  /** Messages received after `joined`, held until the caller had a chance to add listeners. */
  #held = [];
  #released = false;
  /** Reason from the server's `leave`, reported when the close that follows it arrives. */
  #leaveReason = null;
  /** The server's data channels on the subscriber connection, by reliability. */
  #channels = { reliable: null, lossy: null };
  /** When the last data message went out, to tell its refusals from a publish offer's. */
  #lastDataSent = 0;
  /** Latest `publish_layers` per track sid; applied once the track's sender is known. */
  #layerWishes = new Map();
  #url = '';
  /** The server's latest resume token (null: resumption is off on the server). */
  #resumeToken = null;
  /** When the server last said anything, for the silent-socket watchdog. */
  #lastHeard = Date.now();
  #qualityTimer = 0;
  /** Previous counters of the quality check: {sent, lost, received, missing}. */
  #qualityBase = null;
  /** Undoes the window/document listeners at the end of the session. */
  #unlisten = [];

  /**
   * Opens a session. Use this instead of the constructor.
   * @param {string} url WebSocket URL of the signaling endpoint, e.g. `wss://host/rtc`
   * @param {string} token access token (JWT) for one room
   * @param {object} [options] see the module documentation
   * @returns {Promise<Room>}
   */
  static async connect(url, token, options = {}) {
    const opts = { ...DEFAULTS, ...options };
    const WS = opts.WebSocket ?? globalThis.WebSocket;
    const ws = new WS(url);
    const joined = await new Promise((resolve, reject) => {
      const fail = (err) => {
        clearTimeout(timer);
        ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(); } catch { /* already closed */ }
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new MoienError('timeout', 'no answer to join')),
        opts.joinTimeout,
      );
      ws.onopen = () => {
        const join = { type: 'join', version: PROTOCOL_VERSION, token };
        if (opts.room) join.room = opts.room;
        ws.send(JSON.stringify(join));
      };
      ws.onerror = () => {}; // the close event that follows carries what we need
      ws.onclose = (e) => fail(new MoienError('closed', `socket closed (${e.code}) before joining`));
      ws.onmessage = (e) => {
        let msg;
        try { msg = JSON.parse(e.data); } catch { return; }
        if (msg.type === 'joined') {
          clearTimeout(timer);
          resolve(msg);
        } else if (msg.type === 'error') {
          fail(new MoienError(msg.code, msg.message, msg.status));
        }
      };
    });
    const room = new Room(ws, joined, { ...opts, url });
    // Event listeners can only be added once connect() resolved; a macrotask later they are.
    setTimeout(() => room.#release(), 0);
    return room;
  }

  /** @private Use {@link Room.connect}. */
  constructor(ws, joined, options) {
    super();
    if (!(ws && joined)) throw new TypeError('use Room.connect()');
    this.#ws = ws;
    this.#options = options;
    this.name = joined.room;
    const me = joined.participant;
    this.localParticipant = {
      sid: me.sid, identity: me.identity ?? '', name: me.name ?? '', tracks: new Map(),
    };
    for (const p of joined.participants ?? []) this.participants.set(p.sid, toParticipant(p));

    const config = {
      iceServers: toIceServers(joined.ice_servers),
      bundlePolicy: 'max-bundle',
      // 'relay' forces every connection through the TURN server (strict networks, tests).
      iceTransportPolicy: options.iceTransportPolicy === 'relay' ? 'relay' : 'all',
    };
    this.#publisher = new RTCPeerConnection(config);
    this.#subscriber = new RTCPeerConnection(config);
    if (options.trickle) {
      this.#trickle(this.#publisher, 'publisher');
      this.#trickle(this.#subscriber, 'subscriber');
    }
    // The server opens both data channels in its first subscribe_offer.
    this.#subscriber.addEventListener('datachannel', (e) => this.#adoptChannel(e.channel));

    this.#url = options.url;
    this.#resumeToken = joined.resume_token ?? null;
    this.#attach(ws);
    this.#pingTimer = setInterval(() => this.#tick(), options.pingInterval);
    this.#qualityTimer = setInterval(() => this.#checkQuality(), options.qualityInterval);
    this.#watchNetwork();
  }

  /** Makes `ws` the session's socket. */
  #attach(ws) {
    this.#ws = ws;
    this.#lastHeard = Date.now();
    ws.onmessage = (e) => {
      this.#lastHeard = Date.now();
      this.#receive(e.data);
    };
    ws.onerror = () => {};
    ws.onclose = (e) => this.#socketClosed(e.code);
  }

  /** Every ping interval: a ping, and a socket silent for two intervals is taken as dead. */
  #tick() {
    if (this.state !== 'connected') return;
    if (Date.now() - this.#lastHeard > 2 * this.#options.pingInterval + 5000) {
      this.#resume('silent');
      return;
    }
    this.#send({ type: 'ping', timestamp: Date.now() });
  }

  /** Resumes when the browser reports a new network, coming online, or waking up. */
  #watchNetwork() {
    const on = (target, type, fn) => {
      if (!target?.addEventListener) return;
      target.addEventListener(type, fn);
      this.#unlisten.push(() => target.removeEventListener(type, fn));
    };
    // Offline: the socket is as good as dead; drop it now and resume when the network is back.
    on(globalThis, 'offline', () => {
      if (this.state === 'connected') this.#resume('offline');
      this.#setQuality('lost', this.rtt, 1);
    });
    on(globalThis, 'online', () => {
      if (this.state === 'reconnecting') this.#retryNow?.();
    });
    // Wi-Fi to mobile data: the old socket's path may be gone without an error for a while.
    on(globalThis.navigator?.connection, 'change', () => {
      if (this.state === 'connected') this.#resume('network_change');
    });
    // A tab that slept may hold a socket the server already gave up on: ask it.
    on(globalThis.document, 'visibilitychange', () => {
      if (globalThis.document.visibilityState !== 'visible' || this.state !== 'connected') return;
      const asked = Date.now();
      this.#send({ type: 'ping', timestamp: asked });
      setTimeout(() => {
        if (this.state === 'connected' && this.#lastHeard < asked) this.#resume('wake');
      }, 5000);
    });
  }

  /** The socket closed: the end of the session (server said leave, or no resume), or a drop. */
  #socketClosed(code) {
    if (this.state !== 'connected') return;
    const resumable = this.#options.reconnect !== false && this.#resumeToken
      && this.#leaveReason === null && code !== 1000 && code !== 1008;
    if (resumable) this.#resume('connection_lost');
    else this.#closed('connection_lost', code);
  }

  /** Set while a resume waits between attempts: starts the next attempt at once. */
  #retryNow = null;

  /**
   * Resumes the session on a new socket: `resume` with the latest token, retried with backoff
   * until it works, the server refuses, or the resume window passes.
   */
  async #resume(reason) {
    if (this.state !== 'connected') return;
    this.state = 'reconnecting';
    this.#setQuality('lost', this.rtt, 1);
    const old = this.#ws;
    old.onclose = old.onmessage = null;
    try { old.close(CLOSE_RESUME, 'resuming'); } catch { /* already closed */ }
    this.#emit('reconnecting', { reason });
    const deadline = Date.now() + this.#options.resumeWindow;
    for (let attempt = 0; this.state === 'reconnecting'; attempt += 1) {
      const delay = RESUME_BACKOFF[Math.min(attempt, RESUME_BACKOFF.length - 1)];
      if (delay) {
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, delay);
          this.#retryNow = () => { clearTimeout(timer); resolve(); };
        });
        this.#retryNow = null;
      }
      if (this.state !== 'reconnecting') return;
      if (Date.now() > deadline) break;
      let outcome;
      try {
        outcome = await this.#tryResume();
      } catch {
        continue; // no network yet: try again
      }
      if (this.state !== 'reconnecting') {
        // Left meanwhile.
        try { outcome.ws?.close(1000); } catch { /* closed */ }
        return;
      }
      if (outcome.ws) {
        this.#resumed(outcome.ws, outcome.joined);
        return;
      }
      // The server refused: the session is gone (window passed, server restarted elsewhere).
      this.#closed(outcome.code === 'unauthorized' || outcome.code === 'not_found'
        ? 'resume_failed' : outcome.code);
      return;
    }
    if (this.state === 'reconnecting') this.#closed('resume_failed');
  }

  /** One resume attempt: resolves {ws, joined} or {code} (refused); rejects on network errors. */
  #tryResume() {
    const WS = this.#options.WebSocket ?? globalThis.WebSocket;
    return new Promise((resolve, reject) => {
      let ws;
      try { ws = new WS(this.#url); } catch (err) { reject(err); return; }
      const timer = setTimeout(() => {
        ws.onclose = ws.onmessage = ws.onerror = null;
        try { ws.close(); } catch { /* never opened */ }
        reject(new MoienError('timeout', 'no answer to resume'));
      }, this.#options.joinTimeout);
      ws.onopen = () => ws.send(JSON.stringify({
        type: 'resume', version: PROTOCOL_VERSION, token: this.#resumeToken,
      }));
      ws.onclose = () => { clearTimeout(timer); reject(new MoienError('closed', 'socket closed')); };
      ws.onmessage = (e) => {
        let msg;
        try { msg = JSON.parse(e.data); } catch { return; }
        if (msg.type === 'joined') {
          clearTimeout(timer);
          ws.onclose = ws.onmessage = null;
          resolve({ ws, joined: msg });
        } else if (msg.type === 'error') {
          clearTimeout(timer);
          ws.onclose = ws.onmessage = null;
          resolve({ code: msg.code });
        }
      };
    });
  }

  /** Back on a new socket: catch up with the room, restart ICE on the publisher connection. */
  #resumed(ws, joined) {
    this.#attach(ws);
    this.#resumeToken = joined.resume_token ?? this.#resumeToken;
    this.state = 'connected';
    // Who left or came while we were away.
    const now = new Map((joined.participants ?? []).map((p) => [p.sid, p]));
    for (const sid of [...this.participants.keys()]) {
      if (!now.has(sid)) this.#onParticipantLeft({ participant_sid: sid, reason: 'connection_lost' });
    }
    for (const info of now.values()) {
      const known = this.participants.get(info.sid);
      if (!known) {
        this.#onParticipantJoined(info);
        continue;
      }
      const tracks = new Set((info.tracks ?? []).map((t) => t.sid));
      for (const sid of [...known.tracks.keys()]) {
        if (!tracks.has(sid)) this.#onTrackUnpublished({ participant_sid: info.sid, track_sid: sid });
      }
      for (const t of info.tracks ?? []) {
        if (!known.tracks.has(t.sid)) this.#onTrackPublished({ participant_sid: info.sid, track: t });
      }
    }
    if (this.#localByTrack.size > 0) {
      this.#pubQueue.run(() => this.#negotiatePublisher({ iceRestart: true })).catch((err) => {
        this.#emit('error', { code: 'negotiation_failed', status: 0, message: err.message });
      });
    }
    this.#emit('reconnected', {});
  }

  /** Drops the signaling connection and resumes on a new one. */
  reconnect() {
    if (this.state === 'connected') this.#resume('client_request');
  }

  #setQuality(quality, rtt, loss) {
    if (quality === this.connectionQuality) return;
    this.connectionQuality = quality;
    this.#emit('connection_quality', { quality, rtt, loss });
  }

  /**
   * Rates the connection from the peer connections' statistics: round-trip time of the active
   * candidate pair, and the share of packets lost since the last check, both directions.
   */
  async #checkQuality() {
    if (this.state !== 'connected') return;
    let rtt = null;
    const now = { sent: 0, lost: 0, received: 0, missing: 0 };
    for (const pc of [this.#publisher, this.#subscriber]) {
      let report;
      try { report = await pc.getStats(); } catch { return; }
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
          rtt = Math.max(rtt ?? 0, s.currentRoundTripTime * 1000);
        } else if (s.type === 'remote-inbound-rtp') {
          now.lost += s.packetsLost ?? 0;
        } else if (s.type === 'outbound-rtp') {
          now.sent += s.packetsSent ?? 0;
        } else if (s.type === 'inbound-rtp') {
          now.received += s.packetsReceived ?? 0;
          now.missing += s.packetsLost ?? 0;
        }
      });
    }
    if (this.state !== 'connected') return;
    const base = this.#qualityBase ?? { sent: 0, lost: 0, received: 0, missing: 0 };
    this.#qualityBase = now;
    const lost = Math.max(0, now.lost - base.lost) + Math.max(0, now.missing - base.missing);
    const total = Math.max(0, now.sent - base.sent) + Math.max(0, now.received - base.received);
    const loss = total > 0 ? Math.min(1, lost / (total + lost)) : 0;
    const states = [this.#publisher.connectionState, this.#subscriber.connectionState];
    let quality = 'excellent';
    if (states.includes('failed') || states.includes('disconnected')) quality = 'lost';
    else if (loss > 0.05 || (rtt ?? 0) > 300) quality = 'poor';
    else if (loss > 0.01 || (rtt ?? 0) > 100) quality = 'good';
    this.#setQuality(quality, rtt, loss);
  }

  /** The peer connection that carries what this participant sends (client offers). */
  get publisher() { return this.#publisher; }

  /** The peer connection that carries what this participant receives (server offers). */
  get subscriber() { return this.#subscriber; }

  /**
   * Publishes tracks on the publisher peer connection.
   * @param {MediaStream|MediaStreamTrack|MediaStreamTrack[]} media
   * @param {object} [options]
   * @param {string} [options.source] `camera`, `microphone`, `screen`, `screen_audio`, `unknown`
   * @param {boolean} [options.simulcast=true] video in three layers (`q`, `h`, `f`)
   * @param {'vp8'|'vp9'|'av1'|'h264'} [options.codec] the video codec to send
   * @param {string} [options.scalabilityMode] SVC mode, e.g. `L1T3` or `L3T3_KEY` (no simulcast)
   * @returns {Promise<object[]>} the LocalTracks, with their server sids
   */
  publish(media, { source, simulcast = true, codec, scalabilityMode } = {}) {
    const tracks = tracksOf(media);
    const stream = media instanceof MediaStream ? media : new MediaStream(tracks);
    if (codec !== undefined && !CODECS.includes(String(codec).toLowerCase())) {
      return Promise.reject(new TypeError(`codec must be one of ${CODECS.join(', ')}`));
    }
    return this.#pubQueue.run(async () => {
      this.#assertConnected();
      const added = [];
      try {
        for (const track of tracks) {
          if (this.#localByTrack.has(track)) continue; // already published
          const video = track.kind === 'video';
          const init = { direction: 'sendonly', streams: [stream] };
          const sendEncodings = video ? videoEncodings({ simulcast, scalabilityMode }) : undefined;
          if (sendEncodings) init.sendEncodings = sendEncodings;
          const transceiver = this.#publisher.addTransceiver(track, init);
          added.push({ local: this.#newLocal(track, source, transceiver), transceiver });
          if (video && codec) preferCodec(transceiver, codec.toLowerCase());
        }
      } catch (err) {
        this.#dropAdded(added);
        throw err;
      }
      if (added.length === 0) return [];
      for (const a of added) this.#localByTrack.set(a.local.track, { ...a });
      try {
        await this.#negotiatePublisher();
      } catch (err) {
        // Drop what this call added so a later publish does not carry a half-announced track.
        for (const a of added) this.#localByTrack.delete(a.local.track);
        this.#dropAdded(added);
        throw err;
      }
      return added.map((a) => a.local);
    });
  }

  /**
   * Shares a screen: asks the browser for one and publishes it with source `screen`, in one
   * encoding (screen text needs full resolution more than layers).
   * @param {object} [options]
   * @param {boolean} [options.audio=false] also share the tab's or system's sound
   * @param {'vp8'|'vp9'|'av1'|'h264'} [options.codec] the video codec to send
   * @returns {Promise<object[]>} the LocalTracks
   */
  async publishScreen({ audio = false, codec } = {}) {
    this.#assertConnected();
    const media = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15, max: 30 } }, audio,
    });
    // Keep text sharp: under pressure, drop frames rather than resolution.
    for (const t of media.getVideoTracks()) t.contentHint = 'detail';
    let locals;
    try {
      locals = await this.publish(media, { source: 'screen', simulcast: false, codec });
    } catch (err) {
      for (const t of media.getTracks()) t.stop();
      throw err;
    }
    // The browser's own "Stop sharing" ends the track without telling us otherwise.
    for (const local of locals) {
      local.track.addEventListener('ended', () => {
        if (this.state === 'connected' && this.#localByTrack.has(local.track)) {
          this.unpublish(local.track).catch(() => {});
        }
      }, { once: true });
    }
    return locals;
  }

  #newLocal(track, source, transceiver) {
    let kindSource = source ?? (track.kind === 'audio' ? 'microphone' : 'camera');
    if (source === 'screen' && track.kind === 'audio') kindSource = 'screen_audio';
    return {
      sid: '', mid: null, kind: track.kind, muted: !track.enabled, track, source: kindSource,
      sender: transceiver.sender,
    };
  }

  #dropAdded(added) {
    for (const a of added) {
      try { a.transceiver.stop(); } catch { /* pc closed */ }
    }
  }

  /**
   * Stops sending one published track: its transceiver is stopped and the publisher renegotiates.
   * @param {MediaStreamTrack|object|string} trackOrSid a MediaStreamTrack, LocalTrack or track sid
   */
  unpublish(trackOrSid) {
    return this.#pubQueue.run(async () => {
      this.#assertConnected();
      const entry = this.#findLocal(trackOrSid);
      if (!entry) throw new MoienError('not_found', 'this track is not published');
      this.#localByTrack.delete(entry.local.track);
      this.localParticipant.tracks.delete(entry.local.sid);
      this.#layerWishes.delete(entry.local.sid);
      entry.transceiver.stop();
      await this.#negotiatePublisher();
    });
  }

  /**
   * Mutes or unmutes a published track. The transceiver stays; a muted track sends silence or
   * black frames and the others get `track_muted`.
   * @param {MediaStreamTrack|object|string} trackOrSid
   * @param {boolean} muted
   */
  setMuted(trackOrSid, muted) {
    const entry = this.#findLocal(trackOrSid);
    if (!entry) throw new MoienError('not_found', 'this track is not published');
    entry.local.track.enabled = !muted;
    if (entry.local.muted === !!muted) return;
    entry.local.muted = !!muted;
    // Before the answer the sid is unknown; the next publish_offer carries the muted flag instead.
    if (entry.local.sid) this.#send({ type: 'mute', track_sid: entry.local.sid, muted: !!muted });
  }

  /**
   * Tells the server how you want one track you receive. Options left out keep their value.
   * @param {string|object} trackSid the track's sid, or its TrackInfo
   * @param {object} prefs
   * @param {boolean} [prefs.paused] true: send nothing (a hidden tile)
   * @param {number} [prefs.maxLayer] highest simulcast layer or SVC spatial layer (0 = lowest)
   * @param {number} [prefs.maxTemporal] highest SVC temporal layer (0 = lowest frame rate)
   * @param {boolean} [prefs.pinned] more priority when bandwidth is short
   */
  setSubscription(trackSid, { paused, maxLayer, maxTemporal, pinned } = {}) {
    this.#assertConnected();
    const sid = typeof trackSid === 'string' ? trackSid : trackSid?.sid;
    if (!sid) throw new TypeError('setSubscription() needs a track sid');
    const msg = { type: 'update_subscription', track_sid: sid };
    if (paused !== undefined) msg.paused = !!paused;
    if (pinned !== undefined) msg.pinned = !!pinned;
    const layer = layerIndex('maxLayer', maxLayer);
    if (layer !== undefined) msg.max_layer = layer;
    const temporal = layerIndex('maxTemporal', maxTemporal);
    if (temporal !== undefined) msg.max_temporal = temporal;
    this.#send(msg);
  }

  /**
   * Sends a data message through the server.
   * @param {string|ArrayBuffer|ArrayBufferView} data a string, or bytes (sent base64-encoded)
   * @param {object} [options]
   * @param {Array<string|object>|string} [options.to] participants or sids; default: everyone else
   * @param {string} [options.topic] what kind of message it is (`chat`, `reaction`, ...)
   * @param {boolean} [options.reliable=true] false: unordered, no retransmission
   * @returns {boolean} false when the channel is not open
   */
  sendData(data, { to, topic = '', reliable = true } = {}) {
    const channel = reliable ? this.#channels.reliable : this.#channels.lossy;
    if (this.state !== 'connected' || channel?.readyState !== 'open') return false;
    const envelope = { topic: String(topic), data: toText(data) };
    const recipients = (Array.isArray(to) ? to : to == null ? [] : [to])
      .map((p) => (typeof p === 'string' ? p : p?.sid))
      .filter(Boolean);
    if (recipients.length) envelope.to = recipients;
    try {
      channel.send(JSON.stringify(envelope));
    } catch {
      return false; // closing, or over what the transport takes at all
    }
    this.#lastDataSent = Date.now();
    return true;
  }

  /**
   * Sends `newTrack` instead of a published track, on the same transceiver: no renegotiation,
   * the others keep the same track sid. The old MediaStreamTrack is not stopped.
   * @param {MediaStreamTrack|object|string} trackOrSid the published track, LocalTrack or sid
   * @param {MediaStreamTrack} newTrack of the same kind
   * @returns {Promise<object>} the LocalTrack, now carrying `newTrack`
   */
  async replaceTrack(trackOrSid, newTrack) {
    const entry = this.#findLocal(trackOrSid);
    if (!entry) throw new MoienError('not_found', 'this track is not published');
    if (!(newTrack instanceof MediaStreamTrack) || newTrack.kind !== entry.local.kind) {
      throw new TypeError(`replaceTrack() needs a ${entry.local.kind} MediaStreamTrack`);
    }
    await entry.local.sender.replaceTrack(newTrack);
    this.#localByTrack.delete(entry.local.track);
    newTrack.enabled = !entry.local.muted;
    entry.local.track = newTrack;
    this.#localByTrack.set(newTrack, entry);
    return entry.local;
  }

  /**
   * Switches the published camera or microphone to another device, without renegotiation.
   * @param {'audio'|'video'} kind
   * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
   * @returns {Promise<object>} the LocalTrack
   */
  async switchDevice(kind, deviceId) {
    const source = kind === 'audio' ? 'microphone' : 'camera';
    const entry = [...this.#localByTrack.values()]
      .find((e) => e.local.kind === kind && e.local.source === source);
    if (!entry) throw new MoienError('not_found', `no ${source} is published`);
    const constraints = { [kind]: { deviceId: { exact: deviceId } } };
    const media = await navigator.mediaDevices.getUserMedia(constraints);
    const [track] = kind === 'audio' ? media.getAudioTracks() : media.getVideoTracks();
    const old = entry.local.track;
    try {
      await this.replaceTrack(entry.local, track);
    } catch (err) {
      track.stop();
      throw err;
    }
    old.stop();
    return entry.local;
  }

  /** Leaves the room: tells the server, closes the socket and both peer connections. */
  async leave() {
    if (this.state === 'disconnected') return;
    this.#send({ type: 'leave' });
    this.#closed('client_request');
  }

  // ---- signaling -------------------------------------------------------------------------------

  #send(msg) {
    if (this.#ws.readyState === 1) this.#ws.send(JSON.stringify(msg));
  }

  #receive(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (!this.#released) this.#held.push(msg);
    else this.#handle(msg);
  }

  #release() {
    this.#released = true;
    for (const msg of this.#held.splice(0)) this.#handle(msg);
  }

  #handle(msg) {
    if (this.state === 'disconnected') return;
    switch (msg.type) {
      case 'publish_answer': return this.#onPublishAnswer(msg);
      case 'subscribe_offer': return this.#onSubscribeOffer(msg);
      case 'participant_joined': return this.#onParticipantJoined(msg.participant);
      case 'participant_left': return this.#onParticipantLeft(msg);
      case 'track_published': return this.#onTrackPublished(msg);
      case 'track_unpublished': return this.#onTrackUnpublished(msg);
      case 'track_muted': return this.#onTrackMuted(msg);
      case 'subscription_state': return this.#onSubscriptionState(msg);
      case 'active_speakers': return this.#onActiveSpeakers(msg);
      case 'publish_layers': return this.#onPublishLayers(msg);
      case 'pong':
        if (typeof msg.timestamp === 'number') this.rtt = Date.now() - msg.timestamp;
        return;
      case 'leave':
        this.#leaveReason = msg.reason;
        return;
      case 'resume_token':
        if (typeof msg.token === 'string') this.#resumeToken = msg.token;
        return;
      case 'participant_connection': return this.#onParticipantConnection(msg);
      case 'participant_updated': return this.#onParticipantUpdated(msg);
      case 'error': return this.#onError(msg);
      default: return; // newer servers may add messages; ignoring them keeps old clients working
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #onError(msg) {
    const err = new MoienError(msg.code, msg.message, msg.status);
    // Errors carry no request id; with one publish_offer in flight at a time, a refusal that
    // arrives while we wait for its answer is that offer's, unless it is what a data message
    // just sent gets when it is refused.
    const aboutData = DATA_ERRORS.includes(msg.code)
      && Date.now() - this.#lastDataSent < DATA_ERROR_WINDOW_MS;
    if (this.#pendingAnswer && !aboutData && ['bad_request', 'invalid_sdp', 'forbidden',
      'too_large', 'rate_limited', 'invalid_state', 'unavailable', 'internal'].includes(msg.code)) {
      this.#settleAnswer(null, err);
    }
    this.#emit('error', { code: msg.code, status: msg.status, message: msg.message });
  }

  #closed(reason, code) {
    if (this.state === 'disconnected') return;
    this.state = 'disconnected';
    clearInterval(this.#pingTimer);
    clearInterval(this.#qualityTimer);
    for (const undo of this.#unlisten.splice(0)) undo();
    this.#retryNow?.();
    this.#settleAnswer(null, new MoienError('closed', 'session ended'));
    this.#ws.onclose = this.#ws.onmessage = null;
    try { this.#ws.close(1000); } catch { /* already closed */ }
    for (const channel of Object.values(this.#channels)) channel?.close();
    this.#publisher.close();
    this.#subscriber.close();
    for (const [mid, sub] of this.#subscriptions) this.#unsubscribe(mid, sub);
    this.#emit('disconnected', { reason: this.#leaveReason ?? reason, code });
  }

  #assertConnected() {
    if (this.state !== 'connected') throw new MoienError('closed', 'not connected');
  }

  #trickle(pc, role) {
    pc.addEventListener('icecandidate', (e) => {
      if (e.candidate?.candidate) {
        this.#send({ type: 'candidate', role, candidate: e.candidate.candidate });
      }
    });
  }

  // ---- publisher -------------------------------------------------------------------------------

  /** One offer/answer round on the publisher connection. Runs inside the publisher queue. */
  async #negotiatePublisher({ iceRestart = false } = {}) {
    const pc = this.#publisher;
    await pc.setLocalDescription(await pc.createOffer({ iceRestart }));
    const tracks = [];
    for (const entry of this.#localByTrack.values()) {
      entry.local.mid = entry.transceiver.mid;
      tracks.push({
        mid: entry.local.mid, kind: entry.local.kind, source: entry.local.source,
        muted: entry.local.muted,
      });
    }
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.#settleAnswer(null, new MoienError('timeout', 'no publish_answer')),
        this.#options.requestTimeout,
      );
      this.#pendingAnswer = { resolve, reject, timer };
    });
    this.#send({ type: 'publish_offer', sdp: pc.localDescription.sdp, tracks });
    let answer;
    try {
      answer = await answered;
    } catch (err) {
      if (pc.signalingState === 'have-local-offer') {
        await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      }
      throw err;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    const byMid = new Map((answer.tracks ?? []).map((t) => [t.mid, t.track]));
    for (const entry of this.#localByTrack.values()) {
      const info = byMid.get(entry.local.mid);
      if (!info) continue;
      const wasUnknown = !entry.local.sid;
      entry.local.sid = info.sid;
      this.localParticipant.tracks.set(info.sid, entry.local);
      // A mute that happened before the sid was known went out in the offer, but only if it
      // happened before the offer was built; catch up on a later one.
      if (wasUnknown && entry.local.muted !== !!info.muted) {
        this.#send({ type: 'mute', track_sid: info.sid, muted: entry.local.muted });
      }
      // publish_layers may have overtaken the answer while it was being applied.
      if (wasUnknown && this.#layerWishes.has(info.sid)) this.#applyLayers(entry);
    }
  }

  #onPublishLayers(msg) {
    if (!msg.track_sid || !Array.isArray(msg.layers)) return;
    this.#layerWishes.set(msg.track_sid, msg.layers);
    const entry = this.#findLocal(msg.track_sid);
    if (entry) this.#applyLayers(entry);
  }

  /**
   * Switches the sender's encodings on and off as the latest `publish_layers` for the track says.
   * One change at a time per sender (setParameters must not overlap), always the latest wish.
   */
  #applyLayers(entry) {
    const { local } = entry;
    const apply = async () => {
      const layers = this.#layerWishes.get(local.sid);
      if (!layers || this.state !== 'connected' || !this.#localByTrack.has(local.track)) return;
      const params = local.sender.getParameters();
      const encodings = params.encodings ?? [];
      let changed = false;
      for (const { rid, active } of layers) {
        // Without simulcast the rid is empty and means the one encoding there is.
        const targets = rid ? encodings.filter((e) => e.rid === rid) : encodings;
        for (const e of targets) {
          if (e.active !== !!active) {
            e.active = !!active;
            changed = true;
          }
        }
      }
      if (changed) await local.sender.setParameters(params);
      this.#emit('publish_layers', {
        track: local, layers: layers.map((l) => ({ rid: l.rid ?? '', active: !!l.active })),
      });
    };
    entry.layersJob = (entry.layersJob ?? Promise.resolve()).then(apply).catch((err) => {
      if (this.state !== 'connected' || !this.#localByTrack.has(local.track)) return;
      this.#emit('error', {
        code: 'encoding_failed', status: 0, message: `cannot switch layers: ${err.message}`,
      });
    });
  }

  #onPublishAnswer(msg) {
    if (!this.#pendingAnswer) return; // late answer to an offer we gave up on
    this.#settleAnswer(msg, null);
  }

  #settleAnswer(answer, err) {
    const pending = this.#pendingAnswer;
    if (!pending) return;
    this.#pendingAnswer = null;
    clearTimeout(pending.timer);
    if (err) pending.reject(err);
    else pending.resolve(answer);
  }

  #findLocal(trackOrSid) {
    if (trackOrSid instanceof MediaStreamTrack) return this.#localByTrack.get(trackOrSid);
    const sid = typeof trackOrSid === 'string' ? trackOrSid : trackOrSid?.sid;
    const track = typeof trackOrSid === 'object' ? trackOrSid?.track : null;
    for (const entry of this.#localByTrack.values()) {
      if ((sid && entry.local.sid === sid) || (track && entry.local.track === track)) return entry;
    }
    return undefined;
  }

  // ---- subscriber ------------------------------------------------------------------------------

  #onSubscribeOffer(msg) {
    this.#subQueue.run(async () => {
      if (this.state !== 'connected') return;
      const pc = this.#subscriber;
      try {
        await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
        await pc.setLocalDescription(await pc.createAnswer());
      } catch (err) {
        if (this.state !== 'connected') return;
        this.#emit('error', {
          code: 'negotiation_failed', status: 0,
          message: `cannot apply subscribe_offer: ${err.message}`,
        });
        return;
      }
      this.#send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp });
      this.#reconcile(msg.tracks ?? []);
    });
  }

  /**
   * Brings the subscriptions in line with the `tracks` list of the offer just applied: m-lines that
   * disappeared or now carry another track are unsubscribed, new ones subscribed.
   */
  #reconcile(offered) {
    const wanted = new Map(offered.map((t) => [t.mid, t]));
    for (const [mid, sub] of this.#subscriptions) {
      const now = wanted.get(mid);
      if (!now || now.track_sid !== sub.trackSid) this.#unsubscribe(mid, sub);
    }
    const transceivers = new Map(this.#subscriber.getTransceivers().map((t) => [t.mid, t]));
    for (const [mid, t] of wanted) {
      if (this.#subscriptions.has(mid)) continue;
      if (this.#ended.has(t.participant_sid) || this.#ended.has(t.track_sid)) continue;
      const transceiver = transceivers.get(mid);
      if (!transceiver) continue;
      const participant = this.#participantFor(t.participant_sid);
      let info = participant.tracks.get(t.track_sid);
      if (!info) {
        info = toTrackInfo({ sid: t.track_sid, kind: t.kind });
        participant.tracks.set(info.sid, info);
      }
      const track = transceiver.receiver.track;
      const sub = {
        participantSid: t.participant_sid, trackSid: t.track_sid, track,
        stream: new MediaStream([track]),
      };
      this.#subscriptions.set(mid, sub);
      this.#emit('track_subscribed', { participant, info, track, stream: sub.stream, mid });
    }
  }

  #unsubscribe(mid, sub) {
    this.#subscriptions.delete(mid);
    const participant = this.participants.get(sub.participantSid)
      ?? { sid: sub.participantSid, identity: '', name: '', tracks: new Map() };
    const info = participant.tracks.get(sub.trackSid) ?? { sid: sub.trackSid };
    this.#emit('track_unsubscribed', {
      participant, info, track: sub.track, stream: sub.stream, mid,
    });
  }

  /** The participant with that sid; a placeholder if its `participant_joined` is still to come. */
  #participantFor(sid) {
    let p = this.participants.get(sid);
    if (!p) {
      p = { sid, identity: '', name: '', tracks: new Map(), pending: true };
      this.participants.set(sid, p);
    }
    return p;
  }

  // ---- room events -----------------------------------------------------------------------------

  #onParticipantJoined(info) {
    if (!info?.sid || info.sid === this.localParticipant.sid) return;
    const fresh = toParticipant(info);
    const known = this.participants.get(info.sid);
    if (known && !known.pending) return;
    if (known) {
      // Keep the object the placeholder handed out in track_subscribed.
      known.identity = fresh.identity;
      known.name = fresh.name;
      for (const [sid, t] of fresh.tracks) if (!known.tracks.has(sid)) known.tracks.set(sid, t);
      delete known.pending;
      this.#emit('participant_joined', { participant: known });
    } else {
      this.participants.set(fresh.sid, fresh);
      this.#emit('participant_joined', { participant: fresh });
    }
  }

  #onParticipantLeft(msg) {
    this.#ended.add(msg.participant_sid);
    const participant = this.participants.get(msg.participant_sid);
    if (!participant) return;
    for (const [mid, sub] of this.#subscriptions) {
      if (sub.participantSid === participant.sid) this.#unsubscribe(mid, sub);
    }
    this.participants.delete(participant.sid);
    if (!participant.pending) this.#emit('participant_left', { participant, reason: msg.reason });
  }

  #onTrackPublished(msg) {
    if (msg.participant_sid === this.localParticipant.sid || !msg.track) return;
    if (this.#ended.has(msg.participant_sid)) return;
    const participant = this.#participantFor(msg.participant_sid);
    const info = toTrackInfo(msg.track);
    const known = participant.tracks.get(info.sid);
    if (known) Object.assign(known, info);
    else participant.tracks.set(info.sid, info);
    this.#emit('track_published', { participant, info: known ?? info });
  }

  #onTrackUnpublished(msg) {
    this.#ended.add(msg.track_sid);
    const participant = this.participants.get(msg.participant_sid);
    if (!participant) return;
    for (const [mid, sub] of this.#subscriptions) {
      if (sub.trackSid === msg.track_sid) this.#unsubscribe(mid, sub);
    }
    const info = participant.tracks.get(msg.track_sid);
    participant.tracks.delete(msg.track_sid);
    if (info) this.#emit('track_unpublished', { participant, info });
  }

  #onParticipantConnection(msg) {
    const participant = this.participants.get(msg.participant_sid);
    if (!participant) return;
    participant.connection = msg.state;
    this.#emit('participant_connection', { participant, state: msg.state });
  }

  #onParticipantUpdated(msg) {
    const info = msg.participant;
    if (!info?.sid) return;
    if (info.sid === this.localParticipant.sid) {
      this.localParticipant.metadata = info.metadata ?? '';
      if (msg.permissions) this.localParticipant.permissions = msg.permissions;
      this.#emit('participant_updated', {
        participant: this.localParticipant, permissions: msg.permissions ?? null,
      });
      return;
    }
    const participant = this.participants.get(info.sid);
    if (!participant) return;
    participant.metadata = info.metadata ?? '';
    participant.name = info.name ?? participant.name;
    this.#emit('participant_updated', { participant, permissions: null });
  }

  #onTrackMuted(msg) {
    const participant = this.participants.get(msg.participant_sid);
    const info = participant?.tracks.get(msg.track_sid);
    if (!info) return;
    info.muted = !!msg.muted;
    this.#emit('track_muted', { participant, info, muted: info.muted });
  }

  #onSubscriptionState(msg) {
    if (this.#ended.has(msg.participant_sid) || this.#ended.has(msg.track_sid)) return;
    const participant = this.participants.get(msg.participant_sid) ?? stubParticipant(msg.participant_sid);
    const info = participant.tracks.get(msg.track_sid)
      ?? toTrackInfo({ sid: msg.track_sid, kind: 'video' });
    this.#emit('subscription_state', {
      participant, info, paused: !!msg.paused, layer: msg.layer ?? null, reason: msg.reason,
    });
  }

  #onActiveSpeakers(msg) {
    this.activeSpeakers = (msg.speakers ?? []).map((s) => ({
      participant: this.#anyParticipant(s.participant_sid), level: Number(s.level) || 0,
    }));
    this.#emit('active_speakers', { speakers: this.activeSpeakers });
  }

  /** You, a known participant, or a stub for one whose `participant_joined` is still to come. */
  #anyParticipant(sid) {
    if (sid === this.localParticipant.sid) return this.localParticipant;
    return this.participants.get(sid) ?? stubParticipant(sid);
  }

  // ---- data channels ---------------------------------------------------------------------------

  #adoptChannel(channel) {
    const reliable = channel.label === 'moien';
    if (!reliable && channel.label !== 'moien-lossy') return; // not one of ours
    channel.binaryType = 'arraybuffer';
    this.#channels[reliable ? 'reliable' : 'lossy'] = channel;
    channel.addEventListener('message', (e) => this.#onData(e.data, reliable));
    channel.addEventListener('close', () => {
      if (this.#channels[reliable ? 'reliable' : 'lossy'] === channel) {
        this.#channels[reliable ? 'reliable' : 'lossy'] = null;
      }
    });
  }

  #onData(raw, reliable) {
    if (this.state !== 'connected') return;
    let msg;
    try {
      msg = JSON.parse(typeof raw === 'string' ? raw : new TextDecoder().decode(raw));
    } catch {
      return; // not an envelope of ours
    }
    if (typeof msg?.from !== 'string' || typeof msg.data !== 'string') return;
    const participant = this.participants.get(msg.from) ?? stubParticipant(msg.from, msg.identity);
    this.#emit('data_received', {
      participant, identity: msg.identity ?? participant.identity, topic: msg.topic ?? '',
      data: msg.data, reliable,
    });
  }
}

function stubParticipant(sid, identity = '') {
  return { sid, identity, name: '', tracks: new Map() };
}
