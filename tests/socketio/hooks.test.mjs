// The connect hook ([hooks] connect_url) asked for Socket.IO connections, as for /ws
// upgrades: the official socket.io-client against a real node whose hook is a small
// HTTP backend started here. Allow (with a user and rooms, in the namespace's
// terms), deny with 401 and 403 as CONNECT_ERROR, and a failing hook under
// fail_closed. Every wait is a poll with a deadline.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import WebSocket from 'ws';
import { sio } from './clients.mjs';
import { startNode, stopNode, until } from '../../clients/js/test/nodes.mjs';

const TEST_TIMEOUT_MS = 120_000;

/** The backend: records every hook request; answers by the CONNECT's auth.ticket. */
async function backend() {
  const asked = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const request = JSON.parse(body);
      asked.push(request);
      const ticket = request.auth?.ticket;
      const answer = (status, json) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(json));
      };
      if (ticket === 'ann') {
        // `chat:secret` is the /chat namespace's room: not joined from `/`.
        answer(200, { action: 'allow', user_id: 'ann', name: 'Ann', rooms: ['lobby', 'chat:secret'] });
      } else if (ticket === 'chat-ann') {
        answer(200, { action: 'allow', user_id: 'ann', name: 'Ann', rooms: ['news'] });
      } else if (ticket === 'expired') {
        answer(200, { action: 'deny', status: 401, reason: 'your ticket expired' });
      } else if (ticket === 'banned') {
        answer(200, { action: 'deny', status: 403, reason: 'you are banned' });
      } else {
        answer(500, { oops: true });
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { asked, url: `http://127.0.0.1:${server.address().port}/connect`, close: () => server.close() };
}

/** A protocol v1 client that publishes (the node's hook lets it in too). */
async function v1Publisher(addr, room) {
  const ws = new WebSocket(`ws://${addr}/ws?user=pub`);
  const frames = [];
  ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
  await until('v1 welcome', () => frames.find((f) => f.type === 'welcome'));
  ws.send(JSON.stringify({ type: 'join', room, ref: 1 }));
  await until('v1 joined', () => frames.find((f) => f.type === 'reply' && f.ref === 1 && f.ok));
  return {
    publish: (content, ref) => {
      ws.send(JSON.stringify({ type: 'publish', room, content, ref }));
      return until('v1 published', () => frames.find((f) => f.type === 'reply' && f.ref === ref));
    },
    close: () => ws.close(),
  };
}

describe('the connect hook for Socket.IO connections', { timeout: TEST_TIMEOUT_MS }, () => {
  let hook;
  let node;
  let url;
  before(async () => {
    hook = await backend();
    // connect_failure is fail_closed by default: a ticket the backend does not know
    // gets its 500, which refuses the connection.
    node = await startNode(`[socketio]\nnamespaces = ["/", "/chat"]\n\n[hooks]\nconnect_url = "${hook.url}"\npass_headers = ["x-app"]\n`);
    url = `http://${node.addr}`;
  });
  after(async () => { await stopNode(node); hook?.close(); });

  it('allows with the backend\'s user and joins its rooms in the namespace', async () => {
    const s = sio(url, { auth: { ticket: 'ann' }, query: { user: 'mallory' }, extraHeaders: { 'x-app': 'web' } });
    await until('the socket connects', () => {
      if (s.seen.connect_error.length) throw new Error(`connect_error: ${s.seen.connect_error[0].message}`);
      return s.connected;
    });
    assert.equal(s.seen.welcome[0].user.id, 'ann', 'the hook named the user, not the query');
    assert.equal(s.seen.welcome[0].user.name, 'Ann');
    const asked = hook.asked.find((r) => r.auth?.ticket === 'ann');
    assert.equal(asked.namespace, '/');
    assert.equal(asked.headers['x-app'], 'web', 'the passed header of the handshake');
    assert.match(asked.query, /user=mallory/);
    assert.equal(asked.remote_addr, '127.0.0.1');
    // In lobby at once: presence shows ann without a join of hers.
    const presence = await until('ann in lobby', async () => {
      const answer = await s.timeout(5000).emitWithAck('presence', 'lobby');
      return answer.ok && answer.data.members.some((m) => m.id === 'ann') && answer;
    });
    assert.ok(presence);
    const published = await s.timeout(5000).emitWithAck('publish', { room: 'lobby', content: 'hi from ann' });
    assert.equal(published.ok, true, JSON.stringify(published));
    await until('her own message', () => s.seen.message.find((m) => m.content === 'hi from ann'));
    // Not in chat:secret, which belongs to /chat: the /chat namespace's presence of
    // its room `secret` does not list her.
    const chat = sio(`${url}/chat`, { auth: { ticket: 'chat-ann' }, transports: ['websocket'] });
    await until('the /chat socket connects', () => chat.connected);
    const joined = await chat.timeout(5000).emitWithAck('join', 'secret');
    assert.equal(joined.ok, true, JSON.stringify(joined));
    assert.deepEqual(joined.data.members.map((m) => m.id), ['ann']);
    assert.equal(joined.data.members[0].connections, 1, 'only the /chat connection is in chat:secret');
    chat.disconnect();
  });

  it('joins the rooms a /chat CONNECT is given under the namespace\'s prefix', async () => {
    const s = sio(`${url}/chat`, { auth: { ticket: 'chat-ann' }, transports: ['websocket'] });
    await until('the socket connects', () => {
      if (s.seen.connect_error.length) throw new Error(`connect_error: ${s.seen.connect_error[0].message}`);
      return s.connected;
    });
    assert.equal(hook.asked.find((r) => r.auth?.ticket === 'chat-ann').namespace, '/chat');
    await until('ann in news (chat:news)', async () => {
      const answer = await s.timeout(5000).emitWithAck('presence', 'news');
      return answer.ok && answer.data.room === 'news' && answer.data.members.some((m) => m.id === 'ann');
    });
  });

  it('denies with 401 and 403 as CONNECT_ERROR with the backend\'s reason', async () => {
    for (const [ticket, code, reason] of [['expired', 'unauthorized', 'your ticket expired'], ['banned', 'forbidden', 'you are banned']]) {
      const s = sio(url, { auth: { ticket } });
      const error = await until(`connect_error for ${ticket}`, () => s.seen.connect_error[0]);
      assert.equal(error.message, reason);
      assert.deepEqual(error.data, { code, reason: 'connect_hook' });
      assert.equal(s.connected, false);
    }
  });

  it('refuses as unavailable when the hook fails under fail_closed', async () => {
    const s = sio(url, { auth: { ticket: 'whatever' } });
    const error = await until('connect_error', () => s.seen.connect_error[0]);
    assert.deepEqual(error.data, { code: 'unavailable', reason: 'connect_hook' });
    assert.match(error.message, /connect hook.*500.*retry/);
  });
});

describe('a message reaches a Socket.IO client in a room the hook gave it', { timeout: TEST_TIMEOUT_MS }, () => {
  let hook;
  let node;
  before(async () => {
    hook = await backend();
    // fail_open: the v1 publisher (no ticket: the hook answers 500) is let in as itself.
    node = await startNode(`[hooks]\nconnect_url = "${hook.url}"\nconnect_failure = "fail_open"\n`);
  });
  after(async () => { await stopNode(node); hook?.close(); });

  it('delivers lobby messages without a join of its own', async () => {
    const s = sio(`http://${node.addr}`, { auth: { ticket: 'ann' } });
    await until('the socket connects', () => s.connected);
    const publisher = await v1Publisher(node.addr, 'lobby');
    await until('ann in lobby', async () => {
      const answer = await s.timeout(5000).emitWithAck('presence', 'lobby');
      return answer.ok && answer.data.members.some((m) => m.id === 'ann');
    });
    const reply = await publisher.publish('hello ann', 7);
    assert.equal(reply.ok, true, JSON.stringify(reply));
    const got = await until('the message', () => s.seen.message.find((m) => m.content === 'hello ann'));
    assert.equal(got.room, 'lobby');
    publisher.close();
  });
});
