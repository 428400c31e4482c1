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
 * ```
 *
 * ## Public API
 * - `Room.connect(url, token, options?) → Promise<Room>`: opens the WebSocket (`ws(s)://host/rtc`),
 *   sends `join` and resolves once the server answers `joined`. Rejects with a {@link MoienError}
 *   (`code` is the protocol error code, e.g. `unauthorized`) or a timeout.
 *   `options`: `{ room?, joinTimeout? (ms, 10000), requestTimeout? (ms, 15000),
 *   pingInterval? (ms, 15000), trickle? (bool, false), WebSocket? }`.
 * - `room.publish(mediaStream | MediaStreamTrack | MediaStreamTrack[], { source? }) →
 *   Promise<LocalTrack[]>`: sends the tracks on the publisher peer connection; resolves once the
 *   server answered. `source` overrides the default (`microphone` for audio, `camera` for video).
 * - `room.unpublish(trackOrSid) → Promise<void>`: stops sending a track (MediaStreamTrack, its
 *   LocalTrack or its server sid). The MediaStreamTrack itself is not stopped.
 * - `room.setMuted(trackOrSid, muted) → void`: mutes/unmutes a published track in place
 *   (`track.enabled`), and tells the others (`track_muted`).
 * - `room.leave() → Promise<void>`: leaves the room and closes both peer connections.
 * - `room.participants`: `Map<sid, RemoteParticipant>` of everyone else in the room.
 * - `room.localParticipant`: `{sid, identity, name, tracks: Map<sid, LocalTrack>}`.
 * - `room.name`, `room.state` (`connected` | `disconnected`), `room.rtt` (ms, from ping/pong).
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
 * - `disconnected`         `{reason, code?}` — the session ended (`client_request`,
 *   `connection_lost`, `duplicate_identity`, `server_shutdown`, ...; see PROTOCOL.md)
 * - `error`                `{code, status, message}` — the server refused a request, or a local
 *   negotiation failed (`code` `negotiation_failed`). The session goes on.
 *
 * Participants present when you join are in `room.participants` as soon as `connect()` resolves
 * (no `participant_joined` for them); their tracks arrive as `track_subscribed` afterwards.
 * Attach listeners right after `connect()` resolves: events are held back until then.
 *
 * ## Types
 * - `TrackInfo`: `{sid, kind: 'audio'|'video', source, muted, codec}`
 * - `RemoteParticipant`: `{sid, identity, name, tracks: Map<sid, TrackInfo>}`
 * - `LocalTrack`: `{sid, mid, kind, source, muted, track: MediaStreamTrack}`
 *
 * @module moien
 */

export const PROTOCOL_VERSION = 1;

const DEFAULTS = {
  joinTimeout: 10_000,
  requestTimeout: 15_000,
  pingInterval: 15_000,
  trickle: false,
};

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
  /** @type {'connected'|'disconnected'} */
  state = 'connected';
  /** Round-trip time of the last ping, in ms (null until the first pong). */
  rtt = null;

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
    const room = new Room(ws, joined, opts);
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

    ws.onmessage = (e) => this.#receive(e.data);
    ws.onerror = () => {};
    ws.onclose = (e) => this.#closed('connection_lost', e.code);
    this.#pingTimer = setInterval(() => this.#send({ type: 'ping', timestamp: Date.now() }),
      options.pingInterval);
  }

  /** The peer connection that carries what this participant sends (client offers). */
  get publisher() { return this.#publisher; }

  /** The peer connection that carries what this participant receives (server offers). */
  get subscriber() { return this.#subscriber; }

  /**
   * Publishes tracks on the publisher peer connection.
   * @param {MediaStream|MediaStreamTrack|MediaStreamTrack[]} media
   * @param {{source?: string}} [options] `camera`, `microphone`, `screen`, `screen_audio`, `unknown`
   * @returns {Promise<object[]>} the LocalTracks, with their server sids
   */
  publish(media, { source } = {}) {
    const tracks = tracksOf(media);
    const stream = media instanceof MediaStream ? media : new MediaStream(tracks);
    return this.#pubQueue.run(async () => {
      this.#assertConnected();
      const added = [];
      for (const track of tracks) {
        if (this.#localByTrack.has(track)) continue; // already published
        const transceiver = this.#publisher.addTransceiver(track, {
          direction: 'sendonly', streams: [stream],
        });
        const local = {
          sid: '', mid: null, kind: track.kind, muted: !track.enabled, track,
          source: source ?? (track.kind === 'audio' ? 'microphone' : 'camera'),
        };
        added.push({ local, transceiver });
      }
      if (added.length === 0) return [];
      for (const a of added) this.#localByTrack.set(a.local.track, { ...a });
      try {
        await this.#negotiatePublisher();
      } catch (err) {
        // Drop what this call added so a later publish does not carry a half-announced track.
        for (const a of added) {
          this.#localByTrack.delete(a.local.track);
          try { a.transceiver.stop(); } catch { /* pc closed */ }
        }
        throw err;
      }
      return added.map((a) => a.local);
    });
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
      case 'pong':
        if (typeof msg.timestamp === 'number') this.rtt = Date.now() - msg.timestamp;
        return;
      case 'leave':
        this.#leaveReason = msg.reason;
        return;
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
    // arrives while we wait for its answer is that offer's.
    if (this.#pendingAnswer && ['bad_request', 'invalid_sdp', 'forbidden', 'too_large',
      'rate_limited', 'invalid_state', 'unavailable', 'internal'].includes(msg.code)) {
      this.#settleAnswer(null, err);
    }
    this.#emit('error', { code: msg.code, status: msg.status, message: msg.message });
  }

  #closed(reason, code) {
    if (this.state === 'disconnected') return;
    this.state = 'disconnected';
    clearInterval(this.#pingTimer);
    this.#settleAnswer(null, new MoienError('closed', 'session ended'));
    this.#ws.onclose = this.#ws.onmessage = null;
    try { this.#ws.close(1000); } catch { /* already closed */ }
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
  async #negotiatePublisher() {
    const pc = this.#publisher;
    await pc.setLocalDescription(await pc.createOffer());
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
    }
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

  #onTrackMuted(msg) {
    const participant = this.participants.get(msg.participant_sid);
    const info = participant?.tracks.get(msg.track_sid);
    if (!info) return;
    info.muted = !!msg.muted;
    this.#emit('track_muted', { participant, info, muted: info.muted });
  }
}
