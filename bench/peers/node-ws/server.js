// The Node `ws` peer: the classic tutorial broadcast server
//
//   wss.on('connection', ws => ws.on('message', data =>
//     wss.clients.forEach(client => client.send(data))));
//
// extended to the part of hubbub protocol v1 (docs/protocol.md) that the benchmark
// uses: `welcome` on connect; `join`, `leave` and `publish`, each answered with a
// `reply` carrying its `ref`; `message` broadcasts to every member of the room (the
// publisher included, before its reply) with one `seq` per room. The user id is
// `?user=` from the upgrade request. A broadcast is encoded once and the same string
// is sent to every member. No limits, no history, no presence.
//
// Usage: node server.js [PORT]   (listens on 127.0.0.1, default port 9200)
'use strict';

const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 9200);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });

/** room name -> { seq, members: Set<WebSocket> } */
const rooms = new Map();
let nextSession = 0;

wss.on('connection', (ws, request) => {
  const query = new URL(request.url, 'http://localhost').searchParams;
  const user = query.get('user') || `guest-${++nextSession}`;
  const joined = new Set();
  ws.send(JSON.stringify({
    type: 'welcome', session: crypto.randomUUID().replace(/-/g, ''),
    user: { id: user, name: user }, node: 'node-ws', protocol: 1, heartbeat_ms: 25000,
  }));

  ws.on('message', (data, isBinary) => {
    let frame;
    try {
      frame = JSON.parse(isBinary ? '' : data.toString());
    } catch {
      ws.send(JSON.stringify({ type: 'error', error: { code: 'bad_request', message: 'not JSON' } }));
      return;
    }
    const ref = frame.ref;
    const reply = (data) => ws.send(JSON.stringify(ref === undefined
      ? { type: 'reply', ok: true, data } : { type: 'reply', ref, ok: true, data }));
    const refuse = (code) => ws.send(JSON.stringify(ref === undefined
      ? { type: 'error', error: { code, message: code } }
      : { type: 'reply', ref, ok: false, error: { code, message: code } }));
    const name = frame.room;
    if (typeof name !== 'string') return refuse('bad_request');

    switch (frame.type) {
      case 'join': {
        let room = rooms.get(name);
        if (!room) rooms.set(name, room = { seq: 0, members: new Set() });
        room.members.add(ws);
        joined.add(name);
        return reply({ room: name, seq: room.seq, history: [], members: [], gap: false });
      }
      case 'leave': {
        const room = rooms.get(name);
        if (!room || !room.members.delete(ws)) return refuse('not_joined');
        joined.delete(name);
        return reply({ room: name });
      }
      case 'publish': {
        const room = rooms.get(name);
        if (!room || !room.members.has(ws)) return refuse('not_joined');
        if (typeof frame.content !== 'string') return refuse('bad_request');
        const seq = ++room.seq;
        const id = crypto.randomUUID();
        const ts = Date.now();
        const message = JSON.stringify({
          type: 'message', room: name, id, seq, from: { id: user, name: user },
          content: frame.content, ts,
        });
        for (const member of room.members) {
          if (member.readyState === member.OPEN) member.send(message);
        }
        return reply({ id, seq, ts });
      }
      default:
        return refuse('unknown_type');
    }
  });

  ws.on('close', () => {
    for (const name of joined) rooms.get(name)?.members.delete(ws);
  });
});

wss.on('listening', () => console.error(`node-ws listening on 127.0.0.1:${port}`));
