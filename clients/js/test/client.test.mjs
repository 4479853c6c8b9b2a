// The library against real hubbub processes (target/debug/hubbub, or $HUBBUB_BIN):
// single nodes and a three-node cluster, kill -9, restarts, a node that never answers.
// Run: node --test clients/js/test/*.test.mjs (from clients/js: npm test).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { HubbubClient, HubbubError } from '../hubbub.js';
import { DEADLINE_MS, freePort, silentServer, startCluster, startNode, stopNode, until } from './nodes.mjs';

const TEST_TIMEOUT_MS = 120_000;
const clients = new Set();

/** A client that records what the application would see. */
function client(urls, options = {}) {
  const c = new HubbubClient({
    urls,
    WebSocket,
    requestTimeoutMs: 5_000,
    retryDeadlineMs: 20_000,
    backoffMinMs: 100,
    backoffMaxMs: 1_000,
    connectTimeoutMs: 2_000,
    pingIntervalMs: 1_000,
    ...options,
  });
  const seen = { messages: {}, states: [], rooms: [], gaps: [], retries: [], goodbyes: [], presence: {} };
  c.on('message', ({ room, message }) => (seen.messages[room] ||= []).push(message));
  c.on('state', (s) => seen.states.push({ ...s, at: Date.now() }));
  c.on('room', (r) => seen.rooms.push({ ...r, at: Date.now() }));
  c.on('gap', (g) => seen.gaps.push(g));
  c.on('retry', (r) => seen.retries.push(r));
  c.on('goodbye', (g) => seen.goodbyes.push({ ...g, at: Date.now() }));
  c.on('presence', ({ room, members }) => { seen.presence[room] = new Map(members); });
  c.seen = seen;
  c.contents = (room) => (seen.messages[room] || []).map((m) => m.content);
  c.seqs = (room) => (seen.messages[room] || []).map((m) => m.seq);
  clients.add(c);
  c.connect();
  return c;
}

after(() => { for (const c of clients) c.close(); });

function assertOnceInOrder(c, room, expected) {
  const seqs = c.seqs(room);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `seqs strictly increase: ${seqs}`);
  const contents = c.contents(room);
  for (const text of expected) {
    assert.equal(contents.filter((t) => t === text).length, 1, `"${text}" delivered once: ${JSON.stringify(contents)}`);
  }
}

const has = (c, room, text) => c.contents(room).includes(text);
const uniq = (label) => `${label} ${Math.random().toString(36).slice(2, 8)}`;

describe('options', () => {
  it('refuses bad input with a clear error', () => {
    assert.throws(() => new HubbubClient({ urls: [], WebSocket }), /urls/);
    assert.throws(() => new HubbubClient({ urls: 'http://x/ws', WebSocket }), /not a ws:\/\/ or wss:\/\/ URL/);
    if (!globalThis.WebSocket) {
      assert.throws(() => new HubbubClient({ urls: 'ws://x/ws' }), /no WebSocket: pass `WebSocket`/);
    }
  });
});

describe('without a node', () => {
  it('close() fails what waits (a join, a queued publish) with closed, and reconnectNow keeps them waiting', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = client(`ws://127.0.0.1:${await freePort()}/ws`, { retryDeadlineMs: 60_000 });
    const joining = c.join('lobby');
    const publishing = c.publish('lobby', 'never sent');
    const short = c.publish('lobby', 'short', { deadlineMs: 1_500 });
    await until('offline', () => c.state === 'offline');
    c.reconnectNow(); // a retry now must not drop what waits, nor its deadline
    await until('offline again', () => c.seen.states.filter((s) => s.state === 'offline').length >= 2);
    await assert.rejects(short, (e) => e.code === 'timeout');
    c.close();
    await assert.rejects(joining, (e) => e.code === 'closed');
    await assert.rejects(publishing, (e) => e.code === 'closed');
    assert.equal(c.state, 'closed');
    assert.throws(() => c.connect(), (e) => e.code === 'closed');
  });
});

describe('one node', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await stopNode(node); });

  it('joins, publishes with an idempotency key, and a retry of the same key posts nothing', { timeout: TEST_TIMEOUT_MS }, async () => {
    const alice = client(node.url, { user: 'alice', name: 'Alice' });
    await alice.join('lobby');
    assert.equal(alice.roomInfo('lobby').state, 'joined');
    const first = await alice.publish('lobby', 'hello', { idempotencyKey: 'k-1' });
    const again = await alice.publish('lobby', 'hello', { idempotencyKey: 'k-1' });
    // The server honours the key (protocol v1 addition): the original's seq, no second message.
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, first.seq);
    assert.equal(again.id, first.id);
    await until('hello delivered', () => has(alice, 'lobby', 'hello'));
    const marker = await alice.publish('lobby', 'marker');
    await until('marker', () => has(alice, 'lobby', 'marker'));
    assert.deepEqual(alice.contents('lobby').filter((t) => t === 'hello'), ['hello']);
    assert.ok(marker.seq === first.seq + 1, 'the duplicate took no seq');
    await assert.rejects(alice.publish('nowhere', 'x'), (e) => e instanceof HubbubError && e.code === 'not_joined');
    await assert.rejects(alice.join('bad room!'), (e) => e.code === 'invalid_room');
  });

  it('publishes structured data and exposes it on messages (protocol v1 data)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `data-${Date.now()}`;
    const alice = client(node.url, { user: 'alice' });
    const bob = client(node.url, { user: 'bob' });
    await alice.join(room);
    await bob.join(room);
    const poll = { kind: 'poll', options: ['ramen', 'tacos'], open: true, n: 2.5 };
    await alice.publish(room, 'lunch?', { data: poll });
    await alice.publish(room, null, { data: [1, 'two'] });
    await until('both at bob', () => (bob.seen.messages[room] || []).length === 2);
    const [first, second] = bob.seen.messages[room];
    assert.equal(first.content, 'lunch?');
    assert.deepEqual(first.data, poll);
    assert.equal(second.content, '');
    assert.deepEqual(second.data, [1, 'two']);
    await assert.rejects(alice.publish(room, null, { data: 'x'.repeat(20_000) }), (e) => e.code === 'too_long');
  });

  it('exceptSender and publishRooms (protocol v1 broadcast variants)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const one = `bc1-${Date.now()}`;
    const two = `bc2-${Date.now()}`;
    const tab1 = client(node.url, { user: 'erin' });
    const tab2 = client(node.url, { user: 'erin' });
    for (const c of [tab1, tab2]) { await c.join(one); await c.join(two); }
    const ack = await tab1.publish(one, 'quiet', { exceptSender: true });
    await until('the other tab has it', () => has(tab2, one, 'quiet'));
    const marker = await tab2.publish(one, 'marker');
    await until('marker at tab1', () => has(tab1, one, 'marker'));
    assert.ok(!has(tab1, one, 'quiet'), 'the sending connection got its own message');
    assert.equal(marker.seq, ack.seq + 1);

    const both = await tab1.publishRooms([one, two], 'both', { data: { k: 1 } });
    assert.equal(both.results.length, 2);
    for (const r of both.results) {
      assert.equal(r.ok, true, JSON.stringify(both));
      assert.equal(r.id, both.id);
    }
    assert.deepEqual(both.results.map((r) => r.seq), [ack.seq + 2, 1]);
    await until('both rooms at tab2', () => has(tab2, one, 'both') && has(tab2, two, 'both'));
    const ids = [one, two].map((room) => tab2.seen.messages[room].find((m) => m.content === 'both').id);
    assert.deepEqual(ids, [both.id, both.id]);
    await assert.rejects(tab1.publishRooms([one, 'nowhere'], 'x'), (e) => e.code === 'not_joined');
  });

  it('presence counts follow a second connection closing', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `counts-${Date.now()}`;
    const watcher = client(node.url, { user: 'watcher' });
    await watcher.join(room);
    const tab1 = client(node.url, { user: 'dana', name: 'Dana' });
    const tab2 = client(node.url, { user: 'dana', name: 'Dana' });
    await tab1.join(room);
    await tab2.join(room);
    const count = () => watcher.seen.presence[room]?.get('dana')?.connections;
    await until('dana ×2 at the watcher', () => count() === 2);
    tab2.close();
    await until('dana back to ×1 (updates in presence_diff)', () => count() === 1);
    tab1.close();
    await until('dana gone', () => watcher.seen.presence[room] && !watcher.seen.presence[room].has('dana'));
  });

  it('kill -9 and restart: offline publishes are queued (bounded), sent once on reconnect; a deadline fails clearly', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `queue-${Date.now()}`;
    const alice = client(node.url, { user: 'alice', offlineQueueMax: 3 });
    const bob = client(node.url, { user: 'bob' });
    await alice.join(room);
    await bob.join(room);
    await alice.publish(room, 'before');
    await until('bob has "before"', () => has(bob, room, 'before'));

    await node.kill9();
    await until('alice offline', () => alice.state === 'offline' || alice.state === 'connecting');
    assert.notEqual(alice.roomInfo(room).state, 'joined', 'a room is not shown joined on a dead connection');
    const queued = ['q1', 'q2', 'q3'].map((t) => alice.publish(room, t, { deadlineMs: 60_000 }));
    await assert.rejects(alice.publish(room, 'q4'), (e) => e.code === 'queue_full');
    // A short deadline while offline: a clear error, not a silent loss.
    // (The queue is full, so this one is refused at once too.)
    await assert.rejects(alice.publish(room, 'too late', { deadlineMs: 200 }), (e) => ['queue_full', 'timeout'].includes(e.code));

    await node.start();
    const acks = await Promise.all(queued);
    assert.deepEqual(acks.map((a) => a.seq), [...acks.map((a) => a.seq)].sort((x, y) => x - y), 'sent in call order');
    for (const c of [alice, bob]) {
      await until(`${c === alice ? 'alice' : 'bob'} has the queued ones`, () => ['q1', 'q2', 'q3'].every((t) => has(c, room, t)));
      assertOnceInOrder(c, room, ['before', 'q1', 'q2', 'q3']);
    }
    assert.equal(alice.state, 'connected');
    assert.equal(alice.roomInfo(room).state, 'joined');
    // Alice went through the renderable states on the way.
    const states = alice.seen.states.map((s) => s.state);
    for (const s of ['offline', 'connecting', 'rejoining', 'connected']) assert.ok(states.includes(s), `saw ${s}: ${states}`);
    const offline = alice.seen.states.find((s) => s.state === 'offline');
    assert.ok(offline.retryAt > offline.at - 1, 'offline says when it retries');
  });

  it('while offline a publish past its deadline fails with timeout', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `deadline-${Date.now()}`;
    const alice = client(node.url, { user: 'alice2' });
    await alice.join(room);
    await node.kill9();
    await until('offline', () => alice.state !== 'connected');
    const t0 = Date.now();
    await assert.rejects(alice.publish(room, 'never', { deadlineMs: 500 }), (e) => e.code === 'timeout' && /not connected|not joined/.test(e.message));
    assert.ok(Date.now() - t0 < 3_000, 'failed at its deadline');
    await node.start();
    await until('rejoined', () => alice.roomInfo(room).state === 'joined');
    await alice.publish(room, 'after');
    await until('after', () => has(alice, room, 'after'));
    assert.ok(!has(alice, room, 'never'), 'the timed-out publish was never sent');
  });

  it('a frozen node (open socket, no answers) is noticed by the ping and left', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `frozen-${Date.now()}`;
    const alice = client(node.url, { user: 'alice4', pingIntervalMs: 300, requestTimeoutMs: 1_000 });
    await alice.join(room);
    node.freeze();
    const frozen = Date.now();
    try {
      await until('alice gives the connection up', () => alice.state !== 'connected', 10_000);
      const noticed = Date.now() - frozen;
      console.log(`[frozen] connection given up ${noticed} ms after SIGSTOP`);
      assert.ok(noticed <= 300 + 1_000 + 1_000, `noticed after ${noticed} ms`);
      assert.match(alice.lastError.message, /stopped answering/);
      assert.notEqual(alice.roomInfo(room).state, 'joined');
    } finally {
      node.thaw();
    }
    await until('alice back', () => alice.state === 'connected' && alice.roomInfo(room).state === 'joined');
  });

  it('goodbye: waits reconnect_after_ms, then resumes with since', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `bye-${Date.now()}`;
    const alice = client(node.url, { user: 'alice3' });
    await alice.join(room);
    await alice.publish(room, 'one');
    await until('one', () => has(alice, room, 'one'));
    const stopping = node.stop();
    await until('goodbye', () => alice.seen.goodbyes.length === 1);
    const bye = alice.seen.goodbyes[0];
    assert.ok(Number.isFinite(bye.reconnectAfterMs) && bye.reconnectAfterMs >= 0 && bye.reconnectAfterMs <= 2000, `reconnect_after_ms ${bye.reconnectAfterMs}`);
    await stopping;
    const offline = await until('offline after goodbye', () => alice.seen.states.find((s) => s.state === 'offline' && s.at >= bye.at));
    assert.ok(offline.retryAt - offline.at >= bye.reconnectAfterMs - 5, `retry in ${offline.retryAt - offline.at} ms, asked ${bye.reconnectAfterMs}`);
    const firstTry = await until('a try after the wait', () => alice.seen.states.find((s) => s.state === 'connecting' && s.at > offline.at));
    assert.ok(firstTry.at - bye.at >= bye.reconnectAfterMs - 5, 'not before reconnect_after_ms');
    await node.start();
    // Another client publishes while alice may still be away.
    const other = client(node.url, { user: 'other' });
    await other.join(room);
    await other.publish(room, 'two');
    await until('alice rejoined and has two', () => alice.roomInfo(room).state === 'joined' && has(alice, room, 'two'));
    assertOnceInOrder(alice, room, ['one', 'two']);
  });
});

describe('server API', () => {
  const KEY = 'js-client-test-api-key-0123456789';
  let node;
  before(async () => { node = await startNode(`[api]\nkeys = ["${KEY}"]\n`); });
  after(async () => { await stopNode(node); });
  const call = async (path, body) => {
    const res = await fetch(`http://${node.addr}/api/${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${path}: ${await res.clone().text()}`);
    return res.json();
  };

  it('a room the backend subscribes the user to is joined, gets messages, and is left on unsubscribe', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `backend-${Date.now()}`;
    const erin = client(node.url, { user: 'erin' });
    await until('erin connected', () => erin.state === 'connected');
    await call('publish', { room, content: 'before' });
    const joined = await call('subscribe', { user_id: 'erin', room });
    assert.equal(joined.connections, 1);
    await until('the room joined', () => erin.roomInfo(room)?.state === 'joined');
    await call('publish', { room, content: 'after' });
    await until('the message after the subscribe', () => has(erin, room, 'after'));
    assert.deepEqual(erin.contents(room), ['after'], 'what came before the subscribe is history, not live');
    await call('unsubscribe', { user_id: 'erin', room });
    await until('the room left', () => erin.seen.rooms.some((r) => r.room === room && r.state === 'left'));
  });
});

describe('failover', () => {
  it('a node that never answers is left for the next one', { timeout: TEST_TIMEOUT_MS }, async () => {
    const node = await startNode();
    const hole = await silentServer();
    try {
      const t0 = Date.now();
      const c = client([hole.url, node.url], { connectTimeoutMs: 1_000 });
      await until('connected to the real node', () => c.state === 'connected');
      assert.equal(c.url, node.url);
      assert.ok(Date.now() - t0 < 1_000 + 2_000 + 1_000, `took ${Date.now() - t0} ms`);
      assert.match(c.seen.states.find((s) => s.error)?.error.message ?? '', /did not answer/);
    } finally {
      await hole.close();
      await stopNode(node);
    }
  });

  describe('three nodes', () => {
    let cluster;
    before(async () => { cluster = await startCluster(); });
    after(async () => { await cluster?.stop(); });

    it('kill -9 of the node: the client moves to another node, rejoins with since, no duplicates', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { a, b } = cluster.nodes;
      const room = `move-${Date.now()}`;
      const alice = client(cluster.urls(), { user: 'alice' }); // a first
      const bob = client([b.url], { user: 'bob' });
      await alice.join(room);
      await bob.join(room);
      assert.equal(alice.node, 'a');
      const sent = [];
      for (let i = 0; i < 3; i++) { sent.push(`before ${i}`); await bob.publish(room, sent.at(-1)); }
      await until('alice has the first ones', () => sent.every((t) => has(alice, room, t)));

      await a.kill9();
      const killed = Date.now();
      // Bob keeps talking while alice is away (his publishes may wait for a new leader).
      for (let i = 0; i < 5; i++) { sent.push(`during ${i}`); await bob.publish(room, sent.at(-1)); }
      await until('alice on another node, joined', () => alice.state === 'connected' && alice.node !== 'a' && alice.roomInfo(room).state === 'joined');
      console.log(`[failover] alice joined on node ${alice.node} ${Date.now() - killed} ms after the kill (bob published meanwhile)`);
      for (let i = 0; i < 3; i++) { sent.push(`after ${i}`); await bob.publish(room, sent.at(-1)); }
      await until('alice has everything', () => sent.every((t) => has(alice, room, t)));
      assertOnceInOrder(alice, room, sent);
      assert.deepEqual(alice.seqs(room), bob.seqs(room), 'the same seqs as bob');
      assert.equal(alice.seen.gaps.length, 0, 'nothing reported missing');
      await a.start();
      await a.waitReady();
    });

    it('presence counts across nodes: one user on two nodes is ×2, then ×1 when one closes', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { a, b, c: cNode } = cluster.nodes;
      await Promise.all([a.waitReady(), b.waitReady(), cNode.waitReady()]);
      const room = `counts-${Date.now()}`;
      const watcher = client([cNode.url], { user: 'watcher-x' });
      await watcher.join(room);
      const onA = client([a.url], { user: 'erin', name: 'Erin' });
      const onB = client([b.url], { user: 'erin', name: 'Erin' });
      await onA.join(room);
      await onB.join(room);
      const count = () => watcher.seen.presence[room]?.get('erin')?.connections;
      await until('erin ×2 at the watcher on c', () => count() === 2);
      onB.close();
      await until('erin ×1 once her connection on b closed', () => count() === 1);
      onA.close();
      await until('erin gone', () => !watcher.seen.presence[room].has('erin'));
    });

    it('a restart without quorum: the client waits, never shows the room joined before it is, then receives', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { a, b } = cluster.nodes;
      await a.waitReady();
      const room = `restart-${Date.now()}`;
      const alice = client([a.url], { user: 'alice-r', retryDeadlineMs: 3_000 }); // a only: no failover
      const bob = client([b.url], { user: 'bob-r' });
      await alice.join(room);
      await bob.join(room);
      await bob.publish(room, 'first');
      await until('first', () => has(alice, room, 'first'));

      await a.kill9();
      await until('alice not connected', () => alice.state !== 'connected');
      const sinceKill = alice.seen.rooms.length;
      const restarted = Date.now();
      await a.start();
      // While a has no quorum it refuses the upgrade (503, as /readyz): the client stays
      // offline or connecting; a room is shown joined only once a join reply said so.
      const early = await a.readyz();
      await until('alice rejoined', () => alice.roomInfo(room).state === 'joined', DEADLINE_MS);
      console.log(`[restart] rejoined ${Date.now() - restarted} ms after the restart began; a answered ${early.status} just after it listened`);
      const joinedEvents = alice.seen.rooms.slice(sinceKill).filter((r) => r.room === room && r.state === 'joined');
      assert.equal(joinedEvents.length, 1, `joined once after the restart: ${JSON.stringify(alice.seen.rooms.slice(sinceKill))}`);
      const ready = await a.readyz();
      assert.equal(ready.status, 200, `a is ready once alice is joined (it was ${early.status} ${JSON.stringify(early.body)} just after start)`);
      await bob.publish(room, 'second');
      await until('alice receives bob after the restart', () => has(alice, room, 'second'));
      assertOnceInOrder(alice, room, ['first', 'second']);
    });

    it('publishes on a node without quorum get unavailable, are retried with the same key, and land once', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { a, b, c: cNode } = cluster.nodes;
      await Promise.all([a.waitReady(), b.waitReady(), cNode.waitReady()]);
      const room = `retry-${Date.now()}`;
      const carol = client([cNode.url], { user: 'carol', retryDeadlineMs: 60_000 });
      await carol.join(room);
      await carol.publish(room, 'warm');
      await a.kill9();
      await b.kill9();
      // c alone: its publishes are refused with unavailable (once it sees the others
      // down) and retried by the library.
      const texts = ['r1', 'r2', 'r3'];
      const acks = Promise.all(texts.map((t) => carol.publish(room, t)));
      await until('an unavailable publish retried', () => carol.seen.retries.some((r) => r.op === 'publish' && r.error.code === 'unavailable'));
      await Promise.all([a.start(), b.start()]);
      const done = await acks;
      assert.equal(new Set(done.map((x) => x.seq)).size, 3, 'three seqs');
      await until('carol has them', () => texts.every((t) => has(carol, room, t)));
      const history = await carol.history(room, { limit: 100 });
      for (const t of texts) {
        assert.equal(history.messages.filter((m) => m.content === t).length, 1, `"${t}" ordered once: ${history.messages.map((m) => m.content)}`);
      }
      assertOnceInOrder(carol, room, ['warm', ...texts]);
    });
  });
});
