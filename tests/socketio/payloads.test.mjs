// Structured data and the broadcast variants through socket.io-client, with a
// protocol v1 client in the same rooms: `data` beside or instead of `content` both
// ways and in history; `except_sender` (the sender's socket gets the ack but no
// `message` event, its other connection does); one publish to several rooms, in a
// namespace (one id, each room its own seq). Every wait is a poll with a deadline.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connected, sio, uniq, v1 } from './clients.mjs';
import { startNode, stopNode, until } from '../../clients/js/test/nodes.mjs';

const TEST_TIMEOUT_MS = 120_000;
const ack = (s, event, fields) => s.timeout(10_000).emitWithAck(event, fields);

describe('payloads and broadcast variants over Socket.IO', { timeout: TEST_TIMEOUT_MS }, () => {
  let node;
  let url;
  before(async () => {
    node = await startNode('[socketio]\nnamespaces = ["/", "/chat"]\n');
    url = `http://${node.addr}`;
  });
  after(() => stopNode(node));

  it('carries structured data both ways, as sent, and keeps it in history', async () => {
    const room = uniq('data');
    const s = sio(url, { query: { user: 'sdata' } });
    await connected(s);
    const bob = v1(node.addr, 'user=vdata');
    await bob.opened();
    assert.equal((await ack(s, 'join', room)).ok, true);
    assert.equal((await bob.request({ type: 'join', room })).ok, true);
    const card = { kind: 'card', n: 3, tags: ['a', 'b'], nested: { ok: true, none: null } };
    const sent = await ack(s, 'publish', { room, data: card });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    const atBob = await until('v1 gets the data', () => bob.messages().find((m) => m.seq === sent.data.seq));
    assert.deepEqual(atBob.data, card);
    assert.equal(atBob.content, '', 'data alone: content is empty');
    const reply = await bob.request({ type: 'publish', room, content: 'see card', data: [1, 'two', { three: 3 }] });
    assert.equal(reply.ok, true, JSON.stringify(reply));
    const atSio = await until('Socket.IO gets the data', () => s.seen.message.find((m) => m.seq === reply.data.seq));
    assert.deepEqual(atSio.data, [1, 'two', { three: 3 }]);
    assert.equal(atSio.content, 'see card');
    const history = await ack(s, 'history', { room });
    assert.equal(history.ok, true, JSON.stringify(history));
    assert.deepEqual(history.data.messages.map((m) => m.data), [card, [1, 'two', { three: 3 }]]);
    bob.close();
  });

  it('except_sender: the ack but no message event for the sender, its other connection gets it', async () => {
    const room = uniq('except');
    const s = sio(url, { query: { user: 'sexcept' } });
    await connected(s);
    const other = v1(node.addr, 'user=sexcept');
    const bystander = v1(node.addr, 'user=vexcept');
    await other.opened();
    await bystander.opened();
    assert.equal((await ack(s, 'join', room)).ok, true);
    assert.equal((await other.request({ type: 'join', room })).ok, true);
    assert.equal((await bystander.request({ type: 'join', room })).ok, true);
    const sent = await ack(s, 'publish', { room, content: 'not to me', except_sender: true });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    await until('the bystander gets it', () => bystander.messages().find((m) => m.id === sent.data.id));
    await until('the sender\'s other connection gets it', () => other.messages().find((m) => m.id === sent.data.id));
    // A later message to the sender shows it had nothing before: its stream is in order.
    const later = await bystander.request({ type: 'publish', room, content: 'to everyone' });
    await until('the sender gets the later one', () => s.seen.message.find((m) => m.seq === later.data.seq));
    assert.deepEqual(s.seen.message.map((m) => m.content), ['to everyone'], 'no message event of its own');
    other.close();
    bystander.close();
  });

  it('one publish to several rooms of a namespace: one id, each room its own seq', async () => {
    const [r1, r2] = [uniq('multi'), uniq('multi')];
    const s = sio(`${url}/chat`, { query: { user: 'smulti' }, transports: ['websocket'] });
    await connected(s);
    const watcher = v1(node.addr, 'user=vmulti');
    await watcher.opened();
    for (const room of [r1, r2]) {
      assert.equal((await ack(s, 'join', room)).ok, true);
      assert.equal((await watcher.request({ type: 'join', room: `chat:${room}` })).ok, true);
    }
    // r2 gets one message first, so the two rooms' seqs differ.
    assert.equal((await ack(s, 'publish', { room: r2, content: 'warm up' })).ok, true);
    const sent = await ack(s, 'publish', { rooms: [r1, r2], content: 'to both' });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    const results = sent.data.results;
    assert.deepEqual(results.map((r) => [r.room, r.ok]), [[r1, true], [r2, true]], 'rooms shown without the prefix');
    assert.deepEqual(results.map((r) => r.seq), [1, 2]);
    assert.ok(results.every((r) => r.id === sent.data.id), 'one id');
    const seen = await until('the v1 watcher gets both', () => {
      const both = watcher.messages().filter((m) => m.content === 'to both');
      return both.length === 2 && both;
    });
    const byRoom = (a, b) => a[0].localeCompare(b[0]);
    assert.deepEqual(
      seen.map((m) => [m.room, m.seq, m.id]).sort(byRoom),
      [[`chat:${r1}`, 1, sent.data.id], [`chat:${r2}`, 2, sent.data.id]].sort(byRoom),
    );
    const mine = await until('its own two message events', () => {
      const both = s.seen.message.filter((m) => m.content === 'to both');
      return both.length === 2 && both;
    });
    assert.deepEqual(mine.map((m) => m.room).sort(), [r1, r2].sort(), 'the namespace sees its own names');
    // The default namespace cannot name /chat's rooms in a several-room publish.
    const root = sio(url, { query: { user: 'sroot' }, transports: ['websocket'] });
    await connected(root);
    const refused = await ack(root, 'publish', { rooms: [`chat:${r1}`], content: 'sneak' });
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, 'forbidden');
    watcher.close();
  });
});
