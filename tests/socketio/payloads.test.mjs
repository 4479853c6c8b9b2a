// Structured data and the broadcast variants through socket.io-client, with a
// protocol v1 client in the same rooms: `data` beside or instead of `content` both
// ways and in history; binary attachments (Buffers) end to end, over polling and
// WebSocket, as `{"_binary": "<base64>"}` for v1, and refused past what a message
// holds; `except_sender` (the sender's socket gets the ack but no
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

  it('carries binary attachments end to end, over both transports, and to v1 as base64', async () => {
    const room = uniq('binary');
    const bytes = Buffer.from([0, 1, 2, 127, 128, 254, 255]);
    const polling = sio(url, { transports: ['polling'], query: { user: 'bpoll' } });
    const ws = sio(url, { transports: ['websocket'], query: { user: 'bws' } });
    await Promise.all([connected(polling), connected(ws)]);
    const bob = v1(node.addr, 'user=vbinary');
    await bob.opened();
    for (const s of [polling, ws]) assert.equal((await ack(s, 'join', room)).ok, true);
    assert.equal((await bob.request({ type: 'join', room })).ok, true);

    // From a polling client (its attachments in `b<base64>` records).
    const sent = await ack(polling, 'publish', { room, data: { name: 'f.bin', file: bytes, parts: [Buffer.from('hi')] } });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    const atWs = await until('the WebSocket client gets the bytes', () => ws.seen.message.find((m) => m.seq === sent.data.seq));
    assert.ok(Buffer.isBuffer(atWs.data.file), `a Buffer, not ${JSON.stringify(atWs.data.file)}`);
    assert.deepEqual([...atWs.data.file], [...bytes]);
    assert.equal(Buffer.from(atWs.data.parts[0]).toString(), 'hi');
    assert.equal(atWs.data.name, 'f.bin');
    const atBob = await until('v1 gets base64', () => bob.messages().find((m) => m.seq === sent.data.seq));
    assert.deepEqual(atBob.data.file, { _binary: bytes.toString('base64') });

    // From v1, in the documented form, to both transports (binary frames, records).
    const reply = await bob.request({ type: 'publish', room, data: { _binary: Buffer.from('from v1').toString('base64') } });
    assert.equal(reply.ok, true, JSON.stringify(reply));
    for (const s of [polling, ws]) {
      const got = await until('Socket.IO gets v1\'s bytes', () => s.seen.message.find((m) => m.seq === reply.data.seq));
      assert.equal(Buffer.from(got.data).toString(), 'from v1');
    }

    // From the WebSocket client, and in history (a BINARY_ACK).
    const third = await ack(ws, 'publish', { room, data: Buffer.from([9, 9]) });
    assert.equal(third.ok, true, JSON.stringify(third));
    await until('the polling client gets it', () => polling.seen.message.find((m) => m.seq === third.data.seq));
    const history = await ack(polling, 'history', { room });
    assert.equal(history.ok, true, JSON.stringify(history));
    const kept = history.data.messages.map((m) => m.data);
    assert.deepEqual([...kept[0].file], [...bytes]);
    assert.equal(Buffer.from(kept[1]).toString(), 'from v1');
    assert.deepEqual([...kept[2]], [9, 9]);
    for (const s of [polling, ws]) assert.equal(s.connected, true);
    bob.close();
  });

  it('refuses attachments too large for a message as they come, and stays connected', async () => {
    const room = uniq('binbig');
    const s = sio(url, { transports: ['websocket'], query: { user: 'bbig' } });
    await connected(s);
    assert.equal((await ack(s, 'join', room)).ok, true);
    // Two parts of 60 kB: each fits maxPayload (100 kB); neither fits a message
    // (16 KiB of content and data by default, 12,288 bytes of attachments).
    const half = Buffer.alloc(60_000, 7);
    const refused = await ack(s, 'publish', { room, data: [half, half] });
    assert.equal(refused.ok, false, JSON.stringify(refused).slice(0, 200));
    assert.equal(refused.error.code, 'too_long');
    assert.match(refused.error.message, /12288 bytes/);
    // Under that bound in bytes, but with the rest of the publish over the limit.
    const near = await ack(s, 'publish', { room, content: 'x'.repeat(8000), data: Buffer.alloc(12_000, 1) });
    assert.equal(near.ok, false);
    assert.equal(near.error.code, 'too_long');
    const fits = await ack(s, 'publish', { room, data: Buffer.alloc(12_000, 1) });
    assert.equal(fits.ok, true, JSON.stringify(fits));
    const fine = await ack(s, 'publish', { room, data: Buffer.from([1]) });
    assert.equal(fine.ok, true, JSON.stringify(fine));
    assert.equal(s.connected, true);
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
