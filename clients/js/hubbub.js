// hubbub client library: protocol v1 (docs/protocol.md) with reconnect, failover to
// other nodes, resume with `since`, retries and an offline queue (docs/clients.md).
//
// One ES module, no dependencies, for browsers and Node 20+ (pass the `ws` package's
// WebSocket, or rely on a global one). The node serves this very file at /hubbub.js.
// Types: index.d.ts beside it.

/** Error codes a request may be retried on: the node said "later", or never answered. */
const RETRYABLE = new Set(['unavailable', 'internal', 'timeout', 'disconnected', 'rate_limited', 'not_joined']);
/** Codes after which a room is not joined again without being asked. */
const FINAL_JOIN_CODES = new Set(['invalid_room', 'forbidden', 'too_many_rooms', 'bad_request', 'room_limit']);
/** How many message ids per room (and direct message ids) are kept for dedupe. */
const SEEN_IDS = 1000;

const DEFAULTS = {
  requestTimeoutMs: 10_000,
  retryDeadlineMs: 15_000,
  connectTimeoutMs: 5_000,
  backoffMinMs: 250,
  backoffMaxMs: 10_000,
  offlineQueueMax: 100,
  pingIntervalMs: 0, // 0: half the node's heartbeat_ms
};

/** A failed request: a node's error (code, message, retry_after_ms) or a local one. */
export class HubbubError extends Error {
  constructor(code, message, retryAfterMs) {
    super(message || code);
    this.name = 'HubbubError';
    this.code = code;
    if (retryAfterMs != null) this.retryAfterMs = retryAfterMs;
  }
}

/** Whether `error` is worth retrying (the request may not have been carried out). */
export function isRetryable(error) {
  return !!error && RETRYABLE.has(error.code);
}

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Exponential backoff with equal jitter: half fixed, half random. */
function backoff(attempt, min, max) {
  const base = Math.min(max, min * 2 ** Math.min(attempt, 20));
  return base / 2 + Math.random() * (base / 2);
}

/** A bounded set of recent ids, oldest forgotten first. */
class RecentIds {
  constructor(cap) { this.cap = cap; this.set = new Set(); }
  has(id) { return this.set.has(id); }
  add(id) {
    this.set.add(id);
    if (this.set.size > this.cap) this.set.delete(this.set.values().next().value);
  }
  clear() { this.set.clear(); }
}

/**
 * A client of a hubbub service: one WebSocket at a time to one of `urls`, kept up for
 * as long as the client is not closed.
 */
export class HubbubClient {
  constructor(options = {}) {
    const urls = typeof options.urls === 'string' ? [options.urls] : options.urls;
    if (!Array.isArray(urls) || urls.length === 0 || !urls.every((u) => typeof u === 'string' && u)) {
      throw new TypeError('HubbubClient: `urls` must be a ws:// or wss:// URL or a non-empty list of them');
    }
    for (const u of urls) {
      if (!/^wss?:\/\//.test(u)) throw new TypeError(`HubbubClient: not a ws:// or wss:// URL: ${u}`);
    }
    const WS = options.WebSocket || globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError('HubbubClient: no WebSocket: pass `WebSocket` (e.g. the `ws` package\'s) on Node 20');
    }
    this.options = { ...DEFAULTS, ...options, urls };
    this._WebSocket = WS;
    /** @type {'idle'|'connecting'|'connected'|'rejoining'|'offline'|'closed'} */
    this.state = 'idle';
    /** When the next connection attempt starts (ms since the epoch), while offline. */
    this.retryAt = 0;
    /** The node connected to, from its welcome. */
    this.node = null;
    this.url = null;
    this.session = null;
    /** This connection's user, from its welcome (id and display name). */
    this.user = options.user ? { id: options.user, name: options.name || options.user } : null;
    /** The last error that made a connection fail or end. */
    this.lastError = null;
    /** @type {Map<string, object>} rooms this client is in (or trying to be) */
    this.rooms = new Map();

    this._name = options.name;
    this._listeners = new Map();
    this._ws = null;
    this._nextUrl = 0;
    this._attempt = 0;
    this._goodbyeDelay = null;
    this._timers = new Set();
    this._pending = new Map();
    this._nextRef = 1;
    this._queued = 0;
    this._waiters = new Set();
    this._seenDirects = new RecentIds(SEEN_IDS);
    this._generation = 0;
  }

  // ------------------------------------------------------------------ events

  /** Calls `fn(detail)` for every event of `type`; returns a function that stops it. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try { fn(detail); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  _setState(state) {
    if (this.state === state && state !== 'offline') return;
    this.state = state;
    if (state !== 'offline') this.retryAt = 0;
    this._emit('state', { state, retryAt: this.retryAt, node: this.node, url: this.url, error: this.lastError });
  }

  _setRoomState(room, state, error = null) {
    if (room.state === state && room.error === error) return;
    room.state = state;
    room.error = error;
    this._emit('room', { room: room.name, state, error });
    for (const w of [...this._waiters]) w.check();
    this._settleRejoin();
  }

  // ------------------------------------------------------------------ connection

  /** Starts connecting (and keeps connected until `close`). Idempotent. */
  connect() {
    if (this.state === 'closed') throw new HubbubError('closed', 'this client was closed');
    if (this._ws || this.state === 'offline') return;
    this._open();
  }

  /** Closes for good: pending requests and queued publishes fail with `closed`. */
  close() {
    if (this.state === 'closed') return;
    this._generation++;
    // Only the connection's own timers: the waits of publishes and joins still end
    // (each then finds the client closed and fails with `closed`).
    this._clearTimer(this._reconnectTimer);
    this._clearTimer(this._pingTimer);
    const ws = this._ws;
    this._ws = null;
    this._failPending(new HubbubError('closed', 'the client was closed'));
    this._setState('closed');
    for (const w of [...this._waiters]) w.fail(new HubbubError('closed', 'the client was closed'));
    if (ws) try { ws.close(1000); } catch { /* already closing */ }
  }

  /** Ends the current connection (or the wait) and tries again at once, on the next node. */
  reconnectNow() {
    if (this.state === 'closed') return;
    if (this._ws) { this._drop(new HubbubError('disconnected', 'reconnect asked for')); return; }
    this._clearTimer(this._reconnectTimer);
    this._open();
  }

  /** Changes the display name used now (`rename`) and on every later connection. */
  async rename(name) {
    const data = await this.request({ type: 'rename', name });
    const given = data && data.user && typeof data.user.name === 'string' ? data.user.name : name;
    this._name = given;
    if (this.user) this.user.name = this._name;
    return data;
  }

  _timer(ms, fn) {
    const t = setTimeout(() => { this._timers.delete(t); fn(); }, Math.max(0, ms));
    this._timers.add(t);
    return t;
  }

  _clearTimer(t) {
    if (t == null) return;
    clearTimeout(t);
    this._timers.delete(t);
  }

  _wsUrl(base) {
    const q = new URLSearchParams();
    const o = this.options;
    const user = this.user ? this.user.id : o.user;
    if (user) q.set('user', user);
    if (this._name) q.set('name', this._name);
    const token = typeof o.token === 'function' ? o.token() : o.token;
    if (token) q.set('token', token);
    const s = q.toString();
    if (!s) return base;
    return base + (base.includes('?') ? '&' : '?') + s;
  }

  _open() {
    const generation = ++this._generation;
    const base = this.options.urls[this._nextUrl % this.options.urls.length];
    // Every attempt after this one starts with the next node: one that does not
    // answer is left for another.
    this._nextUrl = (this._nextUrl + 1) % this.options.urls.length;
    this.url = base;
    this._setState('connecting');
    let ws;
    try {
      ws = new this._WebSocket(this._wsUrl(base));
    } catch (e) {
      this.lastError = new HubbubError('disconnected', `cannot open ${base}: ${e && e.message}`);
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    let welcomed = false;
    const connectTimer = this._timer(this.options.connectTimeoutMs, () => {
      if (this._ws === ws && !welcomed) {
        this._drop(new HubbubError('timeout', `${base} did not answer within ${this.options.connectTimeoutMs} ms`));
      }
    });
    ws.onmessage = (ev) => {
      if (this._ws !== ws || generation !== this._generation) return;
      let frame;
      try {
        const text = typeof ev.data === 'string' ? ev.data : String(ev.data);
        frame = JSON.parse(text);
      } catch { return; }
      if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
      this._lastHeard = Date.now();
      if (frame.type === 'welcome') {
        welcomed = true;
        this._clearTimer(connectTimer);
      }
      this._dispatch(frame);
    };
    ws.onerror = () => { /* a close follows; recovery happens there */ };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._clearTimer(connectTimer);
      const why = welcomed
        ? `connection to ${this.node || base} closed (${ev && ev.code})`
        : `could not connect to ${base} (${ev && ev.code})`;
      this._drop(new HubbubError('disconnected', why), true);
    };
  }

  /** The connection is gone (or is given up): fail what waited on it, then retry. */
  _drop(error, closedAlready = false) {
    const ws = this._ws;
    this._ws = null;
    this._generation++;
    this.lastError = error;
    this._clearTimer(this._pingTimer);
    if (ws && !closedAlready) {
      ws.onclose = null;
      ws.onmessage = null;
      try { ws.close(); } catch { /* never opened */ }
    }
    this._failPending(new HubbubError('disconnected', error.message));
    for (const room of this.rooms.values()) {
      room.resuming = false;
      room.buffer = [];
      if (room.state === 'joined' || room.state === 'joining' || room.state === 'failed') {
        this._setRoomState(room, 'rejoining', room.state === 'failed' ? room.error : null);
      }
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this.state === 'closed') return;
    let delay;
    if (this._goodbyeDelay != null) {
      delay = this._goodbyeDelay;
      this._goodbyeDelay = null;
    } else {
      delay = backoff(this._attempt, this.options.backoffMinMs, this.options.backoffMaxMs);
      this._attempt++;
    }
    this.retryAt = Date.now() + delay;
    this.state = 'offline';
    this._emit('state', { state: 'offline', retryAt: this.retryAt, node: this.node, url: this.url, error: this.lastError });
    this._reconnectTimer = this._timer(delay, () => { if (this.state === 'offline') this._open(); });
  }

  _failPending(error) {
    for (const p of this._pending.values()) {
      this._clearTimer(p.timer);
      p.reject(error);
    }
    this._pending.clear();
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || !this.session) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  _startPing(heartbeatMs) {
    const every = this.options.pingIntervalMs || Math.max(1000, Math.floor((heartbeatMs || 25_000) / 2));
    const generation = this._generation;
    const tick = () => {
      if (generation !== this._generation) return;
      // A pong (or any frame) proves the node alive; none within the request timeout
      // means it is gone (frozen, or a link that died without a close).
      this.request({ type: 'ping' }).catch((e) => {
        if (generation === this._generation && e.code === 'timeout') {
          this._drop(new HubbubError('timeout', `${this.node} stopped answering`));
        }
      });
      this._pingTimer = this._timer(every, tick);
    };
    this._pingTimer = this._timer(every, tick);
  }

  // ------------------------------------------------------------------ frames

  _dispatch(f) {
    switch (f.type) {
      case 'welcome': return this._onWelcome(f);
      case 'reply': {
        const p = this._pending.get(String(f.ref));
        if (!p) return;
        this._pending.delete(String(f.ref));
        this._clearTimer(p.timer);
        if (f.ok) p.resolve(f.data || {});
        else {
          const e = f.error || {};
          p.reject(new HubbubError(e.code || 'internal', e.message, e.retry_after_ms));
        }
        return;
      }
      case 'pong': {
        if (f.ref == null) return;
        const p = this._pending.get(String(f.ref));
        if (p) { this._pending.delete(String(f.ref)); this._clearTimer(p.timer); p.resolve({}); }
        return;
      }
      case 'message': return this._onMessage(f);
      case 'gap': return this._onGap(f);
      case 'presence_diff': return this._onPresenceDiff(f);
      case 'typing': {
        if (this.rooms.has(f.room)) this._emit('typing', { room: f.room, user: f.user });
        return;
      }
      case 'renamed': return this._onRenamed(f);
      case 'subscribed': return this._onSubscribed(f);
      case 'unsubscribed': return this._onUnsubscribed(f);
      case 'direct': {
        if (f.id != null) {
          if (this._seenDirects.has(f.id)) return;
          this._seenDirects.add(f.id);
        }
        this._emit('direct', { id: f.id, from: f.from, content: f.content, ts: f.ts });
        return;
      }
      case 'goodbye': {
        const ms = Number(f.reconnect_after_ms);
        this._goodbyeDelay = Number.isFinite(ms) && ms >= 0 ? ms : null;
        this._emit('goodbye', { reason: f.reason, reconnectAfterMs: this._goodbyeDelay });
        return;
      }
      case 'error': {
        const e = f.error || {};
        this._emit('error', new HubbubError(e.code || 'internal', e.message, e.retry_after_ms));
        return;
      }
      default: return; // frames of a newer protocol: ignored, as protocol.md asks
    }
  }

  _onWelcome(f) {
    this._attempt = 0;
    this.session = f.session;
    this.node = f.node;
    if (f.user && f.user.id) {
      this.user = { id: f.user.id, name: f.user.name || f.user.id };
      this._name = this.user.name;
    }
    this.lastError = null;
    this._startPing(f.heartbeat_ms);
    this._emit('welcome', { node: f.node, session: f.session, user: this.user, url: this.url });
    this._rejoinAll();
  }

  /** After a welcome: every room again, each with `since`; `connected` once all settled. */
  _rejoinAll() {
    const rooms = [...this.rooms.values()];
    if (rooms.length === 0) { this._setState('connected'); return; }
    this._setState('rejoining');
    // A failure is the room's state (and `room` event), not a rejection for anyone.
    for (const room of rooms) this._joinLoop(room).catch(() => {});
    this._settleRejoin();
  }

  _settleRejoin() {
    if (this.state !== 'rejoining') return;
    for (const room of this.rooms.values()) {
      if (room.state !== 'joined' && room.state !== 'failed') return;
    }
    this._setState('connected');
  }

  /**
   * Joins (or rejoins) `room` on the current connection, retrying what may be retried
   * until the retry deadline; then the room is `failed` and is tried again later while
   * the code is a passing one. Resolves when joined, rejects when failed.
   */
  async _joinLoop(room) {
    const generation = this._generation;
    const deadline = Date.now() + this.options.retryDeadlineMs;
    for (let attempt = 0; ; attempt++) {
      if (generation !== this._generation || this.rooms.get(room.name) !== room) {
        throw new HubbubError('disconnected', 'the connection changed');
      }
      try {
        await this._joinOnce(room);
        return;
      } catch (e) {
        if (generation !== this._generation || this.rooms.get(room.name) !== room) throw e;
        const final = FINAL_JOIN_CODES.has(e.code) || !isRetryable(e);
        const wait = e.retryAfterMs || backoff(attempt, this.options.backoffMinMs, this.options.backoffMaxMs);
        if (final || Date.now() + wait >= deadline) {
          this._setRoomState(room, 'failed', e);
          if (!final) this._retryLater(room, generation);
          throw e;
        }
        this._emit('retry', { op: 'join', room: room.name, error: e, attempt: attempt + 1, waitMs: wait });
        await this._sleep(wait, generation);
      }
    }
  }

  /** A failed room with a passing cause is tried again, on this node or, when there
   * are others and it kept refusing, on another one. */
  _retryLater(room, generation) {
    const others = this.options.urls.length > 1;
    if (others && room.error && room.error.code === 'unavailable') {
      // This node cannot order the room's messages (no quorum): another node may.
      this._drop(new HubbubError('unavailable', `${this.node} could not rejoin ${room.name}: ${room.error.message}`));
      return;
    }
    this._timer(this.options.backoffMaxMs, () => {
      if (generation === this._generation && this.rooms.get(room.name) === room && room.state === 'failed') {
        this._joinLoop(room).catch(() => {});
      }
    });
  }

  _sleep(ms, generation) {
    return new Promise((resolve, reject) => {
      this._timer(ms, () => (generation === this._generation ? resolve() : reject(new HubbubError('disconnected', 'the connection changed'))));
    });
  }

  async _joinOnce(room) {
    const since = room.lastSeq;
    room.resuming = true;
    room.buffer = [];
    const frame = { type: 'join', room: room.name };
    if (since > 0) frame.since = since;
    let data;
    try {
      data = await this.request(frame);
    } catch (e) {
      room.resuming = false;
      room.buffer = [];
      throw e;
    }
    const generation = this._generation;
    const seq = Number(data.seq) || 0;
    let history = Array.isArray(data.history) ? data.history : [];
    const restarted = since > 0 && seq < since;
    if (restarted) {
      // The room started afresh (its seqs are handed out again): what we hold is of
      // its old life.
      room.lastSeq = 0;
      room.ids.clear();
      this._emit('gap', { room: room.name, after: since, next: history.length ? history[0].seq : seq + 1, restarted: true });
    } else if (data.gap && since > 0) {
      this._emit('gap', { room: room.name, after: since, next: history.length ? history[0].seq : seq + 1, restarted: false });
    }
    // A resume cut for size: page forwards up to the reply's seq (protocol.md, Paging).
    if (since > 0 && !restarted && data.more && data.after != null) {
      let after = data.after;
      for (;;) {
        const page = await this.request({ type: 'history', room: room.name, after, before: seq + 1, limit: 1000 });
        if (generation !== this._generation) throw new HubbubError('disconnected', 'the connection changed');
        const msgs = Array.isArray(page.messages) ? page.messages : [];
        history = history.concat(msgs);
        if (!page.more || page.after == null || msgs.length === 0) break;
        after = page.after;
      }
    }
    let members = Array.isArray(data.members) ? data.members : [];
    if (data.members_more && members.length) {
      for (;;) {
        const page = await this.request({ type: 'presence', room: room.name, after: members[members.length - 1].id });
        const more = Array.isArray(page.members) ? page.members : [];
        members = members.concat(more);
        if (!page.more || more.length === 0) break;
      }
    }
    if (generation !== this._generation || this.rooms.get(room.name) !== room) {
      throw new HubbubError('disconnected', 'the connection changed');
    }
    room.members = new Map(members.map((m) => [m.id, { id: m.id, name: m.name, connections: m.connections }]));
    const live = since > 0;
    for (const m of history) this._deliver(room, m, live);
    room.resuming = false;
    const buffered = room.buffer.sort((a, b) => a.seq - b.seq);
    room.buffer = [];
    for (const m of buffered) this._deliver(room, m, true);
    if (room.lastSeq < seq && !restarted) room.lastSeq = seq;
    this._emit('presence', { room: room.name, members: room.members, joins: [], leaves: [], updates: [] });
    this._setRoomState(room, 'joined');
  }

  /** The application's backend joined this connection to a room (server API): the
   * room is joined from here on, its messages after `seq` follow, and it is rejoined
   * on later connections like any room `join` joined. */
  _onSubscribed(f) {
    if (typeof f.room !== 'string' || this.rooms.has(f.room)) return;
    const seq = Number(f.seq);
    const room = { name: f.room, state: 'joining', error: null, lastSeq: Number.isFinite(seq) && seq > 0 ? seq : 0, ids: new RecentIds(SEEN_IDS), members: new Map(), resuming: false, buffer: [] };
    this.rooms.set(f.room, room);
    this._setRoomState(room, 'joined');
  }

  /** The backend took this connection out of a room: it is left, as by `leave`. */
  _onUnsubscribed(f) {
    if (!this.rooms.delete(f.room)) return;
    this._emit('room', { room: f.room, state: 'left', error: null });
    for (const w of [...this._waiters]) w.check();
    this._settleRejoin();
  }

  _onMessage(f) {
    const room = this.rooms.get(f.room);
    if (!room) return;
    const { type, ...message } = f;
    if (room.resuming) { room.buffer.push(message); return; }
    if (room.state !== 'joined') return; // a reply will carry it
    this._deliver(room, message, true);
  }

  /** Hands one message to the application once: never one at or below `lastSeq`. */
  _deliver(room, m, live) {
    const seq = Number(m.seq);
    if (!Number.isFinite(seq) || seq <= room.lastSeq) return;
    if (m.id != null && room.ids.has(m.id)) return;
    room.lastSeq = seq;
    if (m.id != null) room.ids.add(m.id);
    this._emit('message', { room: room.name, message: m, live });
  }

  _onGap(f) {
    const room = this.rooms.get(f.room);
    if (!room) return;
    const next = Number(f.next);
    if (Number.isFinite(next) && next - 1 > room.lastSeq) room.lastSeq = next - 1;
    this._emit('gap', { room: f.room, after: f.after, next: f.next, restarted: false });
  }

  _onPresenceDiff(f) {
    const room = this.rooms.get(f.room);
    if (!room || room.state !== 'joined') return;
    const joins = f.joins || [], leaves = f.leaves || [], updates = f.updates || [];
    for (const m of leaves) room.members.delete(m.id);
    for (const m of [...joins, ...updates]) room.members.set(m.id, { id: m.id, name: m.name, connections: m.connections });
    this._emit('presence', { room: f.room, members: room.members, joins, leaves, updates });
  }

  _onRenamed(f) {
    const room = this.rooms.get(f.room);
    if (room && f.user) {
      const m = room.members.get(f.user.id);
      if (m) m.name = f.user.name;
    }
    if (f.user && this.user && f.user.id === this.user.id) {
      this.user.name = f.user.name;
      this._name = f.user.name;
    }
    this._emit('renamed', { room: f.room, user: f.user, oldName: f.old_name });
  }

  // ------------------------------------------------------------------ requests

  /**
   * Sends one request on the current connection; resolves with the reply's `data`,
   * rejects with a HubbubError (the node's code, or `offline`, `timeout`,
   * `disconnected`, `closed`). Not retried: see publish, join.
   */
  request(frame, { timeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') { reject(new HubbubError('closed', 'the client was closed')); return; }
      const ref = this._nextRef++;
      if (!this._send({ ...frame, ref })) { reject(new HubbubError('offline', 'not connected')); return; }
      const ms = timeoutMs ?? this.options.requestTimeoutMs;
      const timer = this._timer(ms, () => {
        if (this._pending.delete(String(ref))) reject(new HubbubError('timeout', `no answer to ${frame.type} within ${ms} ms`));
      });
      this._pending.set(String(ref), { resolve, reject, timer });
    });
  }

  /** Joins `room` and keeps it joined across reconnects. Resolves with the room. */
  async join(name) {
    if (typeof name !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/.test(name)) {
      throw new HubbubError('invalid_room', 'room names are 1 to 64 characters of A-Z a-z 0-9 _ . : -');
    }
    let room = this.rooms.get(name);
    if (room && room.state === 'joined') return this.roomInfo(name);
    if (!room) {
      room = { name, state: 'joining', error: null, lastSeq: 0, ids: new RecentIds(SEEN_IDS), members: new Map(), resuming: false, buffer: [] };
      this.rooms.set(name, room);
      this._emit('room', { room: name, state: 'joining', error: null });
    }
    if (this.state === 'connected' || this.state === 'rejoining') {
      try {
        await this._joinLoop(room);
      } catch (e) {
        if (FINAL_JOIN_CODES.has(e.code) && this.rooms.get(name) === room && room.lastSeq === 0) {
          this.rooms.delete(name);
          this._emit('room', { room: name, state: 'left', error: e });
        }
        throw e;
      }
    } else {
      await this._waitJoined(room, Date.now() + this.options.retryDeadlineMs);
    }
    return this.roomInfo(name);
  }

  /** Leaves `room` (here and on every later connection). */
  async leave(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    this.rooms.delete(name);
    this._emit('room', { room: name, state: 'left', error: null });
    for (const w of [...this._waiters]) w.check();
    this._settleRejoin();
    if (room.state === 'joined') await this.request({ type: 'leave', room: name }).catch(() => {});
  }

  /** What the client knows of a room: its state, last seq and members. */
  roomInfo(name) {
    const r = this.rooms.get(name);
    if (!r) return undefined;
    return { name: r.name, state: r.state, error: r.error, lastSeq: r.lastSeq, members: r.members };
  }

  /** Resolves once `room` is joined on the current connection; rejects at `deadline`,
   * when the room is left, or when it failed for good. */
  _waitJoined(room, deadline) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          if (this.state === 'closed') return w.fail(new HubbubError('closed', 'the client was closed'));
          if (this.rooms.get(room.name) !== room) return w.fail(new HubbubError('not_joined', `left ${room.name}`));
          if (room.state === 'joined') return w.done();
          if (room.state === 'failed' && room.error && !isRetryable(room.error)) return w.fail(room.error);
        },
        done: () => { this._waiters.delete(w); this._clearTimer(w.timer); resolve(); },
        fail: (e) => { this._waiters.delete(w); this._clearTimer(w.timer); reject(e); },
      };
      w.timer = this._timer(deadline - Date.now(), () => {
        const why = this.state === 'connected' || this.state === 'rejoining'
          ? `${room.name} is not joined (${room.state}${room.error ? `: ${room.error.code}` : ''})`
          : `not connected (${this.lastError ? this.lastError.message : this.state})`;
        w.fail(new HubbubError('timeout', why));
      });
      this._waiters.add(w);
      w.check();
    });
  }

  /**
   * Publishes `content` in `room` with an idempotency key (made up unless given), so
   * retries never post twice. `data` (protocol v1 addition) is structured data, any
   * JSON value, sent beside the content (pass `content` null or '' to send data only);
   * members get it as sent in the message's `data`. While offline or rejoining it waits in a bounded queue;
   * `unavailable`, `internal`, timeouts and lost connections are retried with backoff
   * until `deadlineMs` (default: retryDeadlineMs) has passed since the call.
   * `exceptSender` (protocol v1 addition): this connection gets no `message` of it
   * (the user's other connections do); the id is remembered so that a resume that
   * replays it from history does not emit it either.
   * Resolves with `{id, seq, ts, duplicate?}`.
   */
  async publish(name, content, { idempotencyKey, deadlineMs, data, exceptSender } = {}) {
    const room = this.rooms.get(name);
    if (!room) throw new HubbubError('not_joined', `join ${name} first`);
    const key = idempotencyKey || randomKey();
    const deadline = Date.now() + (deadlineMs ?? this.options.retryDeadlineMs);
    if (this._queued >= this.options.offlineQueueMax && room.state !== 'joined') {
      throw new HubbubError('queue_full', `${this._queued} publishes are already waiting for a connection`);
    }
    // One publish of a room at a time: a node orders a connection's pipelined
    // publishes in no promised order, and a chat's messages must keep the order they
    // were written in (queued ones included).
    const previous = room.chain || Promise.resolve();
    let release;
    const mine = new Promise((resolve) => { release = resolve; });
    // The next one waits for every earlier one, also when this one gives up first.
    room.chain = Promise.all([previous, mine]);
    this._queued++;
    let counted = true;
    const sent = () => { if (counted) { counted = false; this._queued--; } };
    try {
      let timer;
      await Promise.race([previous, new Promise((_, reject) => {
        timer = this._timer(deadline - Date.now(), () => reject(new HubbubError('timeout', `not published within ${deadlineMs ?? this.options.retryDeadlineMs} ms: earlier publishes of ${name} were still waiting`)));
      })]).finally(() => this._clearTimer(timer));
      for (let attempt = 0; ; attempt++) {
        if (room.state !== 'joined') await this._waitJoined(room, deadline);
        if (Date.now() >= deadline) throw new HubbubError('timeout', `not published within ${deadlineMs ?? this.options.retryDeadlineMs} ms`);
        const generation = this._generation;
        try {
          const frame = { type: 'publish', room: name, idempotency_key: key };
          if (content != null && !(content === '' && data != null)) frame.content = content;
          if (data != null) frame.data = data;
          if (exceptSender) frame.except_sender = true;
          const reply = this.request(
            frame,
            { timeoutMs: Math.max(1, Math.min(this.options.requestTimeoutMs, deadline - Date.now())) },
          );
          sent();
          const answer = await reply;
          if (exceptSender && answer && answer.id != null) room.ids.add(answer.id);
          return answer;
        } catch (e) {
          if (!isRetryable(e) && e.code !== 'offline') throw e;
          if (e.code === 'not_joined' && this.rooms.get(name) !== room) throw e;
          const wait = e.retryAfterMs || backoff(attempt, this.options.backoffMinMs, this.options.backoffMaxMs);
          if (Date.now() + wait >= deadline) throw e;
          this._emit('retry', { op: 'publish', room: name, error: e, attempt: attempt + 1, waitMs: wait });
          if (e.code === 'not_joined' && generation === this._generation && room.state === 'joined') {
            // The node forgot the room (it restarted it): join it again.
            this._setRoomState(room, 'rejoining');
            this._joinLoop(room).catch(() => {});
          }
          await new Promise((resolve) => this._timer(wait, resolve));
        }
      }
    } finally {
      sent();
      release();
    }
  }

  /**
   * Publishes one message to several joined rooms at once (protocol v1 `publish` with
   * `rooms`, at most 16): one id in every room, each room its own seq. Options as for
   * `publish`. The rooms whose result is a passing failure (`unavailable`, `internal`)
   * are sent again, with the same idempotency key, until `deadlineMs`; a failure of
   * the whole request is retried as `publish` does. Resolves with
   * `{id, results: [{room, ok, id?, seq?, ts?, duplicate?, error?}]}`, a result per
   * room in the order given: read each `ok`. Not queued while offline, and not
   * ordered after publishes of the same rooms still in flight.
   */
  async publishRooms(names, content, { idempotencyKey, deadlineMs, data, exceptSender } = {}) {
    if (!Array.isArray(names) || names.length === 0) throw new HubbubError('bad_request', 'rooms must be a non-empty array');
    const wanted = [...new Set(names)];
    for (const name of wanted) {
      if (!this.rooms.get(name)) throw new HubbubError('not_joined', `join ${name} first`);
    }
    const key = idempotencyKey || randomKey();
    const deadline = Date.now() + (deadlineMs ?? this.options.retryDeadlineMs);
    const results = new Map();
    let id = null;
    let pending = wanted;
    for (let attempt = 0; ; attempt++) {
      let wait = 0;
      let failure = null;
      try {
        for (const name of pending) {
          const room = this.rooms.get(name);
          if (!room) throw new HubbubError('not_joined', `join ${name} first`);
          if (room.state !== 'joined') await this._waitJoined(room, deadline);
        }
        if (Date.now() >= deadline) throw new HubbubError('timeout', `not published within ${deadlineMs ?? this.options.retryDeadlineMs} ms`);
        const frame = { type: 'publish', rooms: pending, idempotency_key: key };
        if (content != null && !(content === '' && data != null)) frame.content = content;
        if (data != null) frame.data = data;
        if (exceptSender) frame.except_sender = true;
        const answer = await this.request(
          frame,
          { timeoutMs: Math.max(1, Math.min(this.options.requestTimeoutMs, deadline - Date.now())) },
        );
        if (id == null) id = answer.id;
        for (const r of answer.results || []) {
          results.set(r.room, r);
          const room = this.rooms.get(r.room);
          if (exceptSender && r.ok && r.id != null && room) room.ids.add(r.id);
        }
        pending = pending.filter((name) => {
          const r = results.get(name);
          return r && !r.ok && r.error && ['unavailable', 'internal'].includes(r.error.code);
        });
        if (pending.length === 0) break;
        failure = new HubbubError(results.get(pending[0]).error.code, results.get(pending[0]).error.message);
      } catch (e) {
        if (!isRetryable(e) && e.code !== 'offline') throw e;
        if (e.code === 'not_joined' && !pending.every((name) => this.rooms.get(name))) throw e;
        failure = e;
        wait = e.retryAfterMs || 0;
      }
      wait = wait || backoff(attempt, this.options.backoffMinMs, this.options.backoffMaxMs);
      if (Date.now() + wait >= deadline) {
        // Out of time: what the rooms answered so far, or the failure if none did.
        if (results.size === 0) throw failure;
        break;
      }
      this._emit('retry', { op: 'publish', room: pending.join(','), error: failure, attempt: attempt + 1, waitMs: wait });
      await new Promise((resolve) => this._timer(wait, resolve));
    }
    return { id, results: wanted.map((name) => results.get(name)) };
  }

  /** A direct message to `to` (every connection of that user). */
  direct(to, content) {
    return this.request({ type: 'direct', to, content });
  }

  /** A page of `room`'s history (see protocol.md, `history`). */
  history(name, { before, after, limit } = {}) {
    const frame = { type: 'history', room: name };
    if (before != null) frame.before = before;
    if (after != null) frame.after = after;
    if (limit != null) frame.limit = limit;
    return this.request(frame);
  }

  /** Tells the room's other members this user is typing (best effort, no answer). */
  typing(name) {
    const room = this.rooms.get(name);
    if (!room || room.state !== 'joined') return false;
    return this._send({ type: 'typing', room: name });
  }
}
