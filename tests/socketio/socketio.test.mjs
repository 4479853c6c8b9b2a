// The official socket.io-client (pinned in package-lock.json), unchanged, against real
// hubbub processes (target/debug/hubbub, or $HUBBUB_BIN): both transports and the
// upgrade, namespaces, auth, acks, errors, a room shared with protocol v1 clients, and
// bad input. Run: npm test (from tests/socketio, after npm ci).
//
// Nodes come from the JavaScript client's test helper (clients/js/test/nodes.mjs):
// configs in a temp dir, free ports, readiness polled; every wait is a poll with a
// deadline.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import WebSocket from 'ws';
import { Manager } from 'socket.io-client';
import { ack, connected, sio, track, uniq, v1 } from './clients.mjs';
import { startCluster, startNode, startSeededCluster, stopNode, until, withNodeLogs } from '../../clients/js/test/nodes.mjs';

const TEST_TIMEOUT_MS = 120_000;
const SECRET = 'socketio-tests-secret-of-at-least-32-bytes!';
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

/** An HTTP proxy with no sticky routing: each request and each WebSocket upgrade goes
 * to a node picked at random (a node that is down: 502, or the upgrade's socket
 * closed), or by `route(isUpgrade)` (a node) when given. `hits` counts requests by
 * port; `upgrades` lists the ports upgrades went to. */
const proxies = new Set();
// A test that fails before closing its proxy must not keep the file's process alive.
after(() => { for (const p of proxies) p.close(); });

async function randomProxy(nodes, route) {
  const ports = nodes.map((n) => Number(n.addr.split(':')[1]));
  const hits = new Map();
  const upgrades = [];
  const pick = (isUpgrade = false) => {
    const port = route ? Number(route(isUpgrade).addr.split(':')[1]) : ports[Math.floor(Math.random() * ports.length)];
    hits.set(port, (hits.get(port) || 0) + 1);
    if (isUpgrade) upgrades.push(port);
    return port;
  };
  const server = http.createServer((req, res) => {
    const up = http.request({ host: '127.0.0.1', port: pick(), path: req.url, method: req.method, headers: req.headers, agent: false }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => { if (!res.headersSent) res.writeHead(502); res.end(); });
    req.pipe(up);
  });
  server.on('upgrade', (req, socket, head) => {
    const up = net.connect(pick(true), '127.0.0.1', () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join('\r\n')}\r\n\r\n`);
      up.write(head);
      socket.pipe(up).pipe(socket);
    });
    for (const s of [socket, up]) s.on('error', () => {}).on('close', () => { socket.destroy(); up.destroy(); });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const proxy = { url: `http://127.0.0.1:${server.address().port}`, hits, upgrades, close: () => { proxies.delete(proxy); server.closeAllConnections?.(); server.close(); } };
  proxies.add(proxy);
  return proxy;
}

describe('socket.io-client on one node', { timeout: TEST_TIMEOUT_MS }, () => {
  let node;
  let url;
  before(async () => {
    node = await startNode('[socketio]\nnamespaces = ["/", "/chat"]\nping_interval_ms = 1000\nping_timeout_ms = 3000\nconnect_timeout_ms = 2000\n\n[[rooms.acl]]\npattern = "announce:*"\npublish = ["editor"]\n');
    url = `http://${node.addr}`;
  });
  after(() => stopNode(node));

  it('connects with the default transports, polling then the upgrade to WebSocket', async () => {
    const s = sio(url, { query: { user: 'polly', name: 'Polly' } });
    await connected(s);
    await until('the upgrade to websocket', () => s.io.engine.transport.name === 'websocket');
    assert.equal(s.seen.welcome[0].user.id, 'polly');
    assert.equal(s.id, s.seen.welcome[0].session, 'the Socket.IO sid is the session id');
    const room = uniq('r');
    const join = await s.timeout(10_000).emitWithAck('join', { room });
    assert.equal(join.ok, true);
    assert.deepEqual(join.data.members.map((m) => m.id), ['polly']);
    const pub = await s.timeout(10_000).emitWithAck('publish', { room, content: 'after the upgrade' });
    assert.equal(pub.ok, true);
    assert.equal(pub.data.seq, 1);
    const msg = await until('the message event', () => s.seen.message[0]);
    assert.equal(msg.content, 'after the upgrade');
    assert.equal(msg.room, room);
  });

  it('works on long-polling alone, pings included', async () => {
    const s = sio(url, { transports: ['polling'], query: { user: 'poll-only' } });
    await connected(s);
    const room = uniq('r');
    assert.equal((await s.timeout(10_000).emitWithAck('join', { room })).ok, true);
    for (let i = 1; i <= 5; i++) {
      const pub = await s.timeout(10_000).emitWithAck('publish', { room, content: `m${i}` });
      assert.equal(pub.data.seq, i);
    }
    await until('five messages by polling', () => s.seen.message.length === 5);
    assert.deepEqual(s.seen.message.map((m) => m.content), ['m1', 'm2', 'm3', 'm4', 'm5']);
    // pingInterval is 1 s and pingTimeout 3 s here: three pings answered over
    // polling, and still connected.
    let pings = 0;
    s.io.on('ping', () => { pings += 1; });
    await until('three pings over polling', () => pings >= 3);
    assert.equal(s.connected, true, 'the client answers pings over polling');
    assert.equal(s.io.engine.transport.name, 'polling');
  });

  it('connects over WebSocket alone', async () => {
    const s = sio(url, { transports: ['websocket'], query: { user: 'wsonly' } });
    await connected(s);
    assert.equal(s.io.engine.transport.name, 'websocket');
    const room = uniq('r');
    assert.equal((await s.timeout(10_000).emitWithAck('join', { room })).ok, true);
    const history = await s.timeout(10_000).emitWithAck('history', { room });
    assert.deepEqual(history, { ok: true, data: { room, messages: [] } });
    const presence = await s.timeout(10_000).emitWithAck('presence', { room });
    assert.deepEqual(presence.data.members.map((m) => m.id), ['wsonly']);
    const left = await s.timeout(10_000).emitWithAck('leave', { room });
    assert.deepEqual(left, { ok: true, data: { room } });
  });

  it('answers failed requests as acks with the v1 error codes', async () => {
    const s = sio(url, { transports: ['websocket'] });
    await connected(s);
    const notJoined = await s.timeout(10_000).emitWithAck('publish', { room: uniq('r'), content: 'x' });
    assert.equal(notJoined.ok, false);
    assert.equal(notJoined.error.code, 'not_joined');
    const unknown = await s.timeout(10_000).emitWithAck('shout', { room: 'r' });
    assert.equal(unknown.error.code, 'unknown_type');
    const badRoom = await s.timeout(10_000).emitWithAck('join', { room: 'no spaces' });
    assert.equal(badRoom.error.code, 'invalid_room');
    const notObject = await s.timeout(10_000).emitWithAck('publish', 'r1');
    assert.equal(notObject.error.code, 'bad_request');
    const roomAlone = await s.timeout(10_000).emitWithAck('join', uniq('alone'));
    assert.equal(roomAlone.ok, true, 'a room-only request may name the room alone');
    // Binary goes in `data` (payloads.test.mjs); `content` is text.
    const binary = await s.timeout(10_000).emitWithAck('publish', { room: 'r', content: Buffer.from([1, 2]) });
    assert.equal(binary.error.code, 'bad_request');
    assert.match(binary.error.message, /put binary data in data/);
    assert.equal(s.connected, true, 'errors keep the connection');
  });

  it('applies the limits and room ACLs of v1 clients', async () => {
    const s = sio(url, { transports: ['websocket'], query: { user: 'limited' } });
    await connected(s);
    const room = uniq('announce:r');
    assert.equal((await s.timeout(10_000).emitWithAck('join', { room })).ok, true);
    const refused = await s.timeout(10_000).emitWithAck('publish', { room, content: 'not an editor' });
    assert.equal(refused.error.code, 'forbidden', 'rooms.acl publish rule');
    const open = uniq('r');
    await s.timeout(10_000).emitWithAck('join', { room: open });
    const long = await s.timeout(10_000).emitWithAck('publish', { room: open, content: 'x'.repeat(5001) });
    assert.equal(long.error.code, 'too_long', 'limits.max_message_chars');
  });

  it('maps namespaces onto room prefixes and refuses unknown ones', async () => {
    const room = uniq('r');
    const chat = sio(`${url}/chat`, { transports: ['websocket'], query: { user: 'nsuser' } });
    await connected(chat);
    const bob = v1(node.addr, 'user=bob');
    await bob.opened();
    assert.equal((await bob.request({ type: 'join', room: `chat:${room}` })).ok, true);
    const join = await chat.timeout(10_000).emitWithAck('join', { room });
    assert.equal(join.ok, true);
    assert.equal(join.data.room, room, 'the prefix is not shown inside the namespace');
    await chat.timeout(10_000).emitWithAck('publish', { room, content: 'from /chat' });
    const seen = await until('the v1 client sees it', () => bob.of('message')[0]);
    assert.equal(seen.room, `chat:${room}`);
    assert.equal((await bob.request({ type: 'publish', room: `chat:${room}`, content: 'from v1' })).ok, true);
    const back = await until('the namespace sees it', () => chat.seen.message.find((m) => m.content === 'from v1'));
    assert.equal(back.room, room);

    const root = sio(url, { transports: ['websocket'] });
    await connected(root);
    const refused = await root.timeout(10_000).emitWithAck('join', { room: `chat:${room}` });
    assert.equal(refused.error.code, 'forbidden', 'the default namespace cannot reach /chat rooms');

    const nowhere = sio(`${url}/nowhere`, { transports: ['websocket'] });
    const error = await until('connect_error', () => nowhere.seen.connect_error[0]);
    assert.equal(error.message, 'Invalid namespace');
    bob.close();
  });

  for (const transports of [['polling'], ['websocket']]) {
    it(`multiplexes namespaces over one connection (${transports})`, async () => {
      const manager = new Manager(url, { transports, reconnection: false, query: { user: `mux-${transports}` } });
      const root = manager.socket('/');
      const chat = manager.socket('/chat');
      for (const s of [root, chat]) {
        s.seen = { message: [], connect_error: [] };
        s.on('message', (m) => s.seen.message.push(m));
        s.on('connect_error', (e) => s.seen.connect_error.push(e));
        track(s);
      }
      await Promise.all([connected(root), connected(chat)]);
      assert.notEqual(root.id, chat.id, 'one Session per namespace');
      const room = uniq('mux');
      assert.equal((await root.timeout(10_000).emitWithAck('join', { room })).ok, true);
      assert.equal((await chat.timeout(10_000).emitWithAck('join', { room })).ok, true);
      await chat.timeout(10_000).emitWithAck('publish', { room, content: 'in /chat' });
      await root.timeout(10_000).emitWithAck('publish', { room, content: 'in /' });
      await until('each namespace sees its own room', () => root.seen.message.length === 1 && chat.seen.message.length === 1);
      assert.deepEqual([root.seen.message[0].content, chat.seen.message[0].content], ['in /', 'in /chat']);
      assert.equal(chat.seen.message[0].room, room);

      chat.disconnect();
      const again = await root.timeout(10_000).emitWithAck('publish', { room, content: 'still here' });
      assert.equal(again.ok, true, 'disconnecting one namespace keeps the others');
      await until('the other namespace goes on', () => root.seen.message.length === 2);
      const bob = v1(node.addr, 'user=mux-watch');
      await bob.opened();
      const joined = await bob.request({ type: 'join', room: `chat:${room}` });
      assert.equal(joined.ok, true);
      let ids = joined.data.members.map((m) => m.id);
      while (ids.includes(`mux-${transports}`)) {
        const p = await bob.request({ type: 'presence', room: `chat:${room}` });
        ids = p.data.members.map((m) => m.id);
      }
      assert.deepEqual(ids, ['mux-watch'], 'the /chat Session left its room');
      const rootRoom = await bob.request({ type: 'join', room });
      assert.deepEqual(rootRoom.data.members.map((m) => m.id).sort(), [`mux-${transports}`, 'mux-watch'].sort());
      bob.close();
      root.disconnect();
    });
  }

  it('shares rooms with protocol v1 clients: messages, presence, typing, direct, rename', async () => {
    const room = uniq('mixed');
    const s = sio(url, { transports: ['websocket'], query: { user: 'sia', name: 'Sia' } });
    await connected(s);
    assert.equal((await s.timeout(10_000).emitWithAck('join', { room })).ok, true);
    const bob = v1(node.addr, 'user=vbob&name=Bob');
    await bob.opened();
    const joined = await bob.request({ type: 'join', room });
    assert.deepEqual(joined.data.members.map((m) => m.id).sort(), ['sia', 'vbob']);
    const diff = await until('presence_diff on Socket.IO', () => s.seen.presence_diff.find((d) => d.joins.some((m) => m.id === 'vbob')));
    assert.equal(diff.room, room);

    await bob.request({ type: 'publish', room, content: 'hello from v1' });
    await until('message on Socket.IO', () => s.seen.message.find((m) => m.content === 'hello from v1'));
    await s.timeout(10_000).emitWithAck('publish', { room, content: 'hello from socket.io' });
    const m = await until('message on v1', () => bob.of('message').find((f) => f.content === 'hello from socket.io'));
    assert.equal(m.from.id, 'sia');

    await bob.request({ type: 'typing', room });
    await until('typing on Socket.IO', () => s.seen.typing.find((t) => t.user.id === 'vbob'));
    s.emit('typing', { room });
    await until('typing on v1', () => bob.of('typing').find((t) => t.user.id === 'sia'));

    const sent = await s.timeout(10_000).emitWithAck('direct', { to: 'vbob', content: 'psst' });
    assert.equal(sent.data.delivered, 1);
    await until('direct on v1', () => bob.of('direct').find((d) => d.content === 'psst'));
    await bob.request({ type: 'direct', to: 'sia', content: 'back' });
    await until('direct on Socket.IO', () => s.seen.direct.find((d) => d.content === 'back'));

    const renamed = await s.timeout(10_000).emitWithAck('rename', { name: 'Sia Two' });
    assert.equal(renamed.data.user.name, 'Sia Two');
    await until('renamed on v1', () => bob.of('renamed').find((r) => r.user.id === 'sia'));

    s.disconnect();
    await until('the Socket.IO client leaves', () => bob.of('presence_diff').find((d) => d.leaves.some((l) => l.id === 'sia')));
    bob.close();
  });

  it('answers the standard Engine.IO errors', async () => {
    const get = async (q) => {
      const res = await fetch(`${url}/socket.io/?${q}`);
      return { status: res.status, body: await res.json() };
    };
    assert.deepEqual(await get('EIO=3&transport=polling'), { status: 400, body: { code: 5, message: 'Unsupported protocol version' } });
    assert.deepEqual(await get('EIO=4&transport=flash'), { status: 400, body: { code: 0, message: 'Transport unknown' } });
    assert.deepEqual(await get('EIO=4&transport=polling&sid=nope'), { status: 400, body: { code: 1, message: 'Session ID unknown' } });
    const post = await fetch(`${url}/socket.io/?EIO=4&transport=polling`, { method: 'POST', body: '40' });
    assert.deepEqual({ status: post.status, body: await post.json() }, { status: 400, body: { code: 2, message: 'Bad handshake method' } });
  });

  it('answers polling with CORS headers and the preflight', async () => {
    const origin = 'https://app.example';
    const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`, { headers: { origin } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('access-control-allow-origin'), origin);
    assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
    const preflight = await fetch(`${url}/socket.io/?EIO=4&transport=polling`, { method: 'OPTIONS', headers: { origin } });
    assert.equal(preflight.status, 204);
    assert.match(preflight.headers.get('access-control-allow-methods'), /POST/);
  });

  it('closes a connection that never connects to a namespace (connect_timeout_ms)', async () => {
    const ws = new WebSocket(`ws://${node.addr}/socket.io/?EIO=4&transport=websocket`);
    const got = [];
    let closedAt = 0;
    ws.on('message', (d) => got.push(d.toString()));
    ws.on('close', () => { closedAt = Date.now(); });
    await until('open packet', () => got[0]?.startsWith('0'));
    const opened = Date.now();
    await until('closed for want of a CONNECT', () => closedAt);
    assert.ok(closedAt - opened >= 1_500, `closed after ${closedAt - opened} ms, not before the 2 s timeout`);
  });

  it('closes a polling connection on a second concurrent GET and on bad packets', async () => {
    const open = await (await fetch(`${url}/socket.io/?EIO=4&transport=polling`)).text();
    assert.equal(open[0], '0');
    const handshake = JSON.parse(open.slice(1));
    assert.deepEqual(handshake.upgrades, ['websocket']);
    assert.equal(handshake.maxPayload, 100000);
    const base = `${url}/socket.io/?EIO=4&transport=polling&sid=${handshake.sid}`;
    // Two GETs at once: one waits, the other is refused and closes the connection,
    // which the waiting one learns as a close packet. Which is which is the server's.
    const answers = await Promise.all([fetch(base), fetch(base)].map(async (r) => {
      const res = await r;
      return { status: res.status, body: await res.text() };
    }));
    answers.sort((a, b) => a.status - b.status);
    assert.deepEqual(answers, [
      { status: 200, body: '1' },
      { status: 400, body: '{"code":3,"message":"Bad request"}' },
    ]);

    const again = JSON.parse((await (await fetch(`${url}/socket.io/?EIO=4&transport=polling`)).text()).slice(1));
    const sidUrl = `${url}/socket.io/?EIO=4&transport=polling&sid=${again.sid}`;
    const big = await fetch(sidUrl, { method: 'POST', body: '4' + 'x'.repeat(1_000_001) });
    assert.equal(big.status, 413, 'a POST over maxPayload');
    assert.equal((await fetch(sidUrl)).status, 400, 'and the connection is gone');
  });

  it('closes a WebSocket on malformed packets, leaving other clients alone', async () => {
    const bystander = sio(url, { transports: ['websocket'] });
    await connected(bystander);
    // An ack for an id the server never asked about is ignored, as socket.io does.
    {
      const ws = new WebSocket(`ws://${node.addr}/socket.io/?EIO=4&transport=websocket`);
      const got = [];
      ws.on('message', (d) => got.push(d.toString()));
      await until('open packet', () => got[0]?.startsWith('0'));
      ws.send('40');
      await until('CONNECT answered', () => got.find((f) => f.startsWith('40{')));
      ws.send('4317[{"ok":true}]');
      ws.send('427["ping"]');
      await until('still answering', () => got.includes('437[{"ok":true}]'));
      ws.close();
    }
    for (const bad of ['42{"not":"an array"}', '4x', '9', '42["connect"]', '40{"token":1', `42["publish",{"content":"${'x'.repeat(1_000_001)}"}]`]) {
      const ws = new WebSocket(`ws://${node.addr}/socket.io/?EIO=4&transport=websocket`);
      const got = [];
      ws.on('message', (d) => got.push(d.toString()));
      let closed = false;
      ws.on('close', () => { closed = true; });
      await until('open packet', () => got[0]?.startsWith('0'));
      ws.send('40');
      await until('CONNECT answered', () => got.find((f) => f.startsWith('40{')));
      ws.send(bad);
      await until(`closed after ${bad.slice(0, 40)}`, () => closed);
    }
    assert.equal((await bystander.timeout(10_000).emitWithAck('presence', { room: 'x' })).error.code, 'not_joined');
    assert.equal(bystander.connected, true);
  });
});

describe('socket.io-client and a node that shuts down', { timeout: TEST_TIMEOUT_MS }, () => {
  it('gets goodbye, then the transport closes and the client may reconnect', async () => {
    const node = await startNode();
    try {
      const url = `http://${node.addr}`;
      const polling = sio(url, { transports: ['polling'] });
      const ws = sio(url, { transports: ['websocket'] });
      const goodbyes = { polling: [], ws: [] };
      polling.on('goodbye', (g) => goodbyes.polling.push(g));
      ws.on('goodbye', (g) => goodbyes.ws.push(g));
      await Promise.all([connected(polling), connected(ws)]);
      await node.stop();
      for (const [name, s] of [['polling', polling], ['ws', ws]]) {
        await until(`${name}: disconnected`, () => s.seen.disconnect.length > 0);
        assert.equal(goodbyes[name].length, 1, `${name}: goodbye before the close`);
        assert.equal(typeof goodbyes[name][0].reconnect_after_ms, 'number');
        assert.equal(s.seen.disconnect[0], 'transport close', `${name}: not a server-side disconnect, so it reconnects`);
      }
    } finally {
      await stopNode(node);
    }
  });
});

describe('socket.io-client with JWT auth', { timeout: TEST_TIMEOUT_MS }, () => {
  let node;
  let url;
  before(async () => {
    node = await startNode(`[auth]\nmode = "jwt"\nsecret = "${SECRET}"\n`);
    url = `http://${node.addr}`;
  });
  after(() => stopNode(node));

  it('takes the token from the CONNECT auth payload', async () => {
    const s = sio(url, { auth: { token: jwt({ sub: 'carol', name: 'Carol' }) } });
    await connected(s);
    assert.deepEqual(s.seen.welcome[0].user, { id: 'carol', name: 'Carol' });
  });

  it('takes the token from the query as v1 does', async () => {
    const s = sio(url, { transports: ['websocket'], query: { token: jwt({ sub: 'dave', name: 'Dave' }) } });
    await connected(s);
    assert.equal(s.seen.welcome[0].user.id, 'dave');
  });

  it('refuses missing and bad tokens with CONNECT_ERROR and the v1 reasons', async () => {
    const missing = sio(url, { transports: ['websocket'] });
    const e1 = await until('connect_error', () => missing.seen.connect_error[0]);
    assert.equal(e1.data.reason, 'missing_token');
    assert.equal(e1.data.code, 'unauthorized');
    const forged = sio(url, { auth: { token: `${jwt({ sub: 'eve', name: 'Eve' })}x` } });
    const e2 = await until('connect_error', () => forged.seen.connect_error[0]);
    assert.equal(e2.data.reason, 'bad_signature');
    const expired = sio(url, { auth: { token: jwt({ sub: 'old', name: 'Old', exp: 1_000 }) } });
    const e3 = await until('connect_error', () => expired.seen.connect_error[0]);
    assert.equal(e3.data.reason, 'expired');
  });
});

describe('socket.io-client on a three-node cluster', { timeout: TEST_TIMEOUT_MS }, () => {
  let cluster;
  before(async () => { cluster = await startCluster(['a', 'b', 'c'], '[socketio]\nrecovery = true\n'); });
  after(() => cluster?.stop());
  // A failed test's error ends with what each node logged last.
  const itLogged = (name, fn) => it(name, () => withNodeLogs(() => cluster.nodes, fn));

  itLogged('shares a room across nodes with Socket.IO and v1 clients, each on its own node', async () => {
    const { a, b, c } = cluster.nodes;
    const room = uniq('spread');
    // WebSocket only, each client straight to its node (no proxy).
    const onA = sio(`http://${a.addr}`, { transports: ['websocket'], query: { user: 'on-a' } });
    const onB = sio(`http://${b.addr}`, { transports: ['websocket'], query: { user: 'on-b' } });
    await Promise.all([connected(onA), connected(onB)]);
    const v1c = v1(c.addr, 'user=on-c');
    await v1c.opened();
    for (const s of [onA, onB]) assert.equal((await ack(s, 'join', { room })).ok, true);
    assert.equal((await v1c.request({ type: 'join', room })).ok, true);
    await until('presence of all three on a', async () => {
      const p = await ack(onA, 'presence', { room });
      return p.ok && p.data.members.length === 3;
    });
    const pub = await ack(onA, 'publish', { room, content: 'from a' });
    assert.equal(pub.ok, true, JSON.stringify(pub));
    await v1c.request({ type: 'publish', room, content: 'from c' });
    for (const s of [onA, onB]) {
      await until('both messages, in order', () => s.seen.message.filter((m) => m.room === room).length === 2);
      assert.deepEqual(s.seen.message.map((m) => m.content), ['from a', 'from c']);
    }
    await until('c sees a', () => v1c.of('message').find((m) => m.content === 'from a'));
    v1c.close();
  });

  itLogged('recovers a connection on another node: its rooms, what it missed, socket.recovered', async () => {
    const { a, b, c } = cluster.nodes;
    const room = uniq('recover');
    // A proxy the client reaches the cluster through: to a first, then to b.
    let target = a;
    const open = new Set();
    const proxy = net.createServer((down) => {
      const up = net.connect(Number(target.addr.split(':')[1]), '127.0.0.1');
      open.add(down).add(up);
      down.pipe(up).pipe(down);
      for (const s of [down, up]) s.on('error', () => {}).on('close', () => { down.destroy(); up.destroy(); });
    });
    await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
    const s = sio(`http://127.0.0.1:${proxy.address().port}`, {
      reconnection: true, reconnectionDelay: 1500, reconnectionDelayMax: 1500, randomizationFactor: 0,
      query: { user: 'roamer' },
    });
    await connected(s);
    assert.equal(s.recovered, false);
    assert.equal((await ack(s, 'join', { room })).ok, true);
    const v1c = v1(c.addr, 'user=writer');
    await v1c.opened();
    await v1c.request({ type: 'join', room });
    await v1c.request({ type: 'publish', room, content: 'before' });
    await until('the first message', () => s.seen.message.length === 1);

    // Cut: every connection through the proxy drops, and the next goes to b.
    target = b;
    for (const sock of open) sock.destroy();
    await until('disconnected', () => !s.connected);
    await v1c.request({ type: 'publish', room, content: 'missed 1' });
    await v1c.request({ type: 'publish', room, content: 'missed 2' });
    await until('reconnected', () => s.connected, 60_000);
    assert.equal(s.recovered, true, 'socket.recovered after a reconnect to another node');
    await until('the missed messages', () => s.seen.message.length === 3);
    await v1c.request({ type: 'publish', room, content: 'after' });
    await until('live again', () => s.seen.message.length === 4);
    assert.deepEqual(s.seen.message.map((m) => m.content), ['before', 'missed 1', 'missed 2', 'after']);
    assert.deepEqual(s.seen.message.map((m) => m.seq), [1, 2, 3, 4]);
    s.disconnect();
    v1c.close();
    proxy.close();
  });

  itLogged('serves default-transport clients through a proxy that picks a random node per request', async () => {
    const proxy = await randomProxy(Object.values(cluster.nodes));
    const room = uniq('random');
    // Default transports (polling, then the upgrade), one on polling alone, and a v1
    // client on c: every request and every upgrade goes to any node.
    const clients = [1, 2, 3].map((i) => sio(proxy.url, { query: { user: `rnd-${i}` } }));
    clients.push(sio(proxy.url, { transports: ['polling'], query: { user: 'rnd-poll' } }));
    await Promise.all(clients.map(connected));
    const v1c = v1(cluster.nodes.c.addr, 'user=rnd-v1');
    await v1c.opened();
    for (const s of clients) assert.equal((await ack(s, 'join', { room })).ok, true);
    assert.equal((await v1c.request({ type: 'join', room })).ok, true);
    const sent = [];
    for (let round = 1; round <= 3; round++) {
      for (const [i, s] of clients.entries()) {
        const content = `r${round}-s${i}`;
        const pub = await ack(s, 'publish', { room, content });
        assert.equal(pub.ok, true, JSON.stringify(pub));
        sent.push(content);
      }
      const content = `r${round}-v1`;
      assert.equal((await v1c.request({ type: 'publish', room, content })).ok, true);
      sent.push(content);
    }
    const seqs = sent.map((_, i) => i + 1);
    for (const s of clients) {
      await until('every message', () => s.seen.message.filter((m) => m.room === room).length >= sent.length);
      const got = s.seen.message.filter((m) => m.room === room);
      assert.deepEqual(got.map((m) => m.content), sent, 'each message exactly once, in order');
      assert.deepEqual(got.map((m) => m.seq), seqs);
    }
    await until('v1 sees every message', () => v1c.of('message').length >= sent.length);
    assert.deepEqual(v1c.of('message').map((m) => m.content), sent);
    // Requests went to every node (which node holds which session is left to chance:
    // the next test sends an upgrade to another node than the holder on purpose).
    assert.equal(proxy.hits.size, 3, 'requests went to every node');
    for (const s of clients.slice(0, 3)) {
      await until('the upgrade to websocket', () => s.io.engine.transport.name === 'websocket');
    }
    assert.equal(clients[3].io.engine.transport.name, 'polling');
    // Still live after the upgrades, with nothing repeated.
    const last = await ack(clients[3], 'publish', { room, content: 'last' });
    assert.equal(last.ok, true);
    for (const s of clients) {
      await until('the last message', () => s.seen.message.filter((m) => m.room === room).length === sent.length + 1);
    }
    // Binary attachments through relayed polling requests (the POST's `b` records to
    // the holder, the answers' records back) and relayed WebSockets (binary frames).
    const bin = await ack(clients[3], 'publish', { room, data: { file: Buffer.from('poll') } });
    assert.equal(bin.ok, true, JSON.stringify(bin));
    for (const s of clients) {
      const got = await until('the binary message', () => s.seen.message.find((m) => m.seq === bin.data.seq));
      assert.equal(Buffer.from(got.data.file).toString(), 'poll');
    }
    for (const s of clients) s.disconnect();
    v1c.close();
    proxy.close();
  });

  itLogged('relays an upgrade that lands on another node to the holder: WebSocket, nothing lost or repeated', async () => {
    const { a, b, c } = cluster.nodes;
    // Polling requests to a, the WebSocket upgrade to b.
    const proxy = await randomProxy(Object.values(cluster.nodes), (isUpgrade) => (isUpgrade ? b : a));
    const room = uniq('relayed');
    const s = sio(proxy.url, { query: { user: 'relayed' } });
    await connected(s);
    assert.match(s.io.engine.id, /^a\./, 'the session is held by a');
    assert.equal((await ack(s, 'join', { room })).ok, true);
    const v1c = v1(c.addr, 'user=relay-v1');
    await v1c.opened();
    assert.equal((await v1c.request({ type: 'join', room })).ok, true);
    // Messages while the upgrade goes on, then after it.
    const sent = [];
    const writes = (async () => {
      for (let i = 1; i <= 10; i++) {
        const content = `w${i}`;
        assert.equal((await v1c.request({ type: 'publish', room, content })).ok, true);
        sent.push(content);
      }
    })();
    await until('the upgrade to websocket', () => s.io.engine.transport.name === 'websocket');
    assert.deepEqual(proxy.upgrades, [Number(b.addr.split(':')[1])], 'the upgrade went to b');
    await writes;
    const mine = await ack(s, 'publish', { room, content: 'over the relay' });
    assert.equal(mine.ok, true, JSON.stringify(mine));
    sent.push('over the relay');
    await until('every message', () => s.seen.message.length >= sent.length);
    assert.deepEqual(s.seen.message.map((m) => m.content), sent, 'each message exactly once, in order');
    assert.equal(s.io.engine.id.split('.')[0], 'a', 'still held by a');
    // Binary both ways over the relayed WebSocket: the client's attachment to a, and
    // a's binary frame back through b.
    const bin = await ack(s, 'publish', { room, data: Buffer.from([1, 2, 3]) });
    assert.equal(bin.ok, true, JSON.stringify(bin));
    const back = await until('the binary message over the relay', () => s.seen.message.find((m) => m.seq === bin.data.seq));
    assert.deepEqual([...back.data], [1, 2, 3]);
    const atV1 = await until('v1 on c gets it as base64', () => v1c.of('message').find((m) => m.seq === bin.data.seq));
    assert.deepEqual(atV1.data, { _binary: 'AQID' });
    // The client closes: a sees the Session go (presence), through the relay.
    s.disconnect();
    await until('the relayed Socket.IO client left', () => v1c.of('presence_diff').some((d) => (d.leaves || []).some((m) => m.id === 'relayed')));
    v1c.close();
    proxy.close();
  });

  itLogged('answers a sid no node holds with "Session ID unknown", forwarded or not', async () => {
    const { a, b } = cluster.nodes;
    const open = JSON.parse((await (await fetch(`http://${a.addr}/socket.io/?EIO=4&transport=polling`)).text()).slice(1));
    assert.match(open.sid, /^a\./, 'the sid names its node');
    const forwarded = await fetch(`http://${b.addr}/socket.io/?EIO=4&transport=polling&sid=a.nope`);
    assert.equal(forwarded.status, 400);
    assert.deepEqual(await forwarded.json(), { code: 1, message: 'Session ID unknown' });
    const nowhere = await fetch(`http://${b.addr}/socket.io/?EIO=4&transport=polling&sid=zz.nope`);
    assert.deepEqual(await nowhere.json(), { code: 1, message: 'Session ID unknown' });
  });
  // Last in this cluster: it kills a node.
  itLogged('reconnects a client whose holder is killed, through the random proxy, and goes on', async () => {
    const proxy = await randomProxy(Object.values(cluster.nodes));
    const room = uniq('killed');
    const s = sio(proxy.url, {
      reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 500, randomizationFactor: 0,
      query: { user: 'survivor' },
    });
    let connects = 0;
    s.on('connect', () => {
      connects += 1;
      // The application's rejoin on reconnect (socket.recovered does it when it can).
      if (connects > 1 && !s.recovered) s.emit('join', { room });
    });
    await connected(s);
    const first = s.io.engine.id;
    const holder = cluster.nodes[first.split('.')[0]];
    assert.ok(holder, `the sid ${first} names a node`);
    const writerNode = Object.values(cluster.nodes).find((n) => n !== holder);
    assert.equal((await ack(s, 'join', { room })).ok, true);
    const writer = v1(writerNode.addr, 'user=writer');
    await writer.opened();
    assert.equal((await writer.request({ type: 'join', room })).ok, true);
    await writer.request({ type: 'publish', room, content: 'before' });
    await until('the first message', () => s.seen.message.length === 1);

    await holder.kill9();
    await until('disconnected', () => !s.connected);
    // Published while the client is away (the room's log may be electing a leader
    // a moment: a refused publish is tried again).
    await until('a publish while away', async () => (await writer.request({ type: 'publish', room, content: 'missed' })).ok, 60_000);
    await until('reconnected to a node still up', () => s.connected && s.io.engine.id !== first, 60_000);
    assert.notEqual(s.io.engine.id.split('.')[0], holder.name);
    // [socketio] recovery is on in this cluster: the rooms and what was missed come
    // back on the node it reconnected to.
    assert.equal(s.recovered, true, 'socket.recovered after its holder was killed');
    await until('the missed message', () => s.seen.message.some((m) => m.content === 'missed'), 60_000);
    await until('a publish after the kill', async () => (await writer.request({ type: 'publish', room, content: 'after' })).ok, 60_000);
    await until('the message after the kill', () => s.seen.message.some((m) => m.content === 'after'), 60_000);
    assert.deepEqual(s.seen.message.map((m) => m.content), ['before', 'missed', 'after'], 'nothing lost or repeated');
    assert.deepEqual(s.seen.message.map((m) => m.seq), [1, 2, 3]);
    s.disconnect();
    writer.close();
    proxy.close();
  });
});

describe('socket.io-client on a cluster described by seeds alone (no [[nodes]])', { timeout: TEST_TIMEOUT_MS }, () => {
  let cluster;
  before(async () => { cluster = await startSeededCluster(); });
  after(() => cluster?.stop());
  // A failed test's error ends with what each node logged last.
  const itLogged = (name, fn) => it(name, () => withNodeLogs(() => cluster.nodes, fn));

  itLogged('relays through the HTTP addresses the nodes gossip: polling and upgrades to a random node', async () => {
    const nodes = Object.values(cluster.nodes);
    // Every node has heard every other's HTTP address once the view holds all three.
    for (const n of nodes) {
      await until(`node ${n.name} sees three`, async () => (await (await fetch(`http://${n.addr}/cluster`)).json()).view?.length === 3);
    }
    const proxy = await randomProxy(nodes);
    const room = uniq('seeded');
    const clients = [1, 2, 3].map((i) => sio(proxy.url, { query: { user: `seeded-${i}` } }));
    await Promise.all(clients.map(connected));
    for (const s of clients) assert.equal((await ack(s, 'join', { room })).ok, true);
    const sent = [];
    for (const [i, s] of clients.entries()) {
      for (let k = 1; k <= 2; k++) {
        const content = `s${i}-${k}`;
        assert.equal((await ack(s, 'publish', { room, content })).ok, true);
        sent.push(content);
      }
    }
    for (const s of clients) {
      await until('every message', () => s.seen.message.length >= sent.length);
      assert.deepEqual(s.seen.message.map((m) => m.content), sent, 'each message exactly once, in order');
      await until('the upgrade to websocket', () => s.io.engine.transport.name === 'websocket');
    }
    assert.equal(proxy.hits.size, 3, 'requests went to every node');
    for (const s of clients) s.disconnect();
    proxy.close();
  });
});
