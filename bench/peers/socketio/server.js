// The socket.io peer: socket.io 4 over WebSocket only, alone or with several
// processes behind @socket.io/redis-adapter (then a broadcast reaches members
// connected to any process, through Redis pub/sub).
//
// Events, the same subset of work as hubbub protocol v1's (docs/protocol.md):
//   join(room, ack)              the socket joins the room; ack({ok: true, room, seq})
//   leave(room, ack)             ack({ok: true, room})
//   publish({room, content}, ack)
//       io.to(room).emit('message', {room, id, seq, from, content, ts}) to every member
//       (the publisher included), then ack({ok: true, id, seq, ts}).
// `seq` counts per room in this process (socket.io has no order across processes).
// On the wire: ../../../../shared/notes/socketio-v5.md (Engine.IO v4, Socket.IO v5).
//
// Usage: node server.js [PORT] [REDIS_URL]   (127.0.0.1; default port 9400; with a
// REDIS_URL such as redis://127.0.0.1:6390 the redis adapter is used)
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || process.env.PORT || 9400);
const redisUrl = process.argv[3] || process.env.REDIS_URL || '';

async function main() {
  const server = http.createServer();
  const io = new Server(server, { transports: ['websocket'], serveClient: false });
  if (redisUrl) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  /** room name -> seq */
  const seqs = new Map();
  let nextUser = 0;

  io.on('connection', (socket) => {
    const user = `sio-${process.pid}-${++nextUser}`;
    const ok = (ack, data) => { if (typeof ack === 'function') ack({ ok: true, ...data }); };
    const refuse = (ack, code) => { if (typeof ack === 'function') ack({ ok: false, error: code }); };

    socket.on('join', (room, ack) => {
      if (typeof room !== 'string') return refuse(ack, 'bad_request');
      socket.join(room);
      ok(ack, { room, seq: seqs.get(room) || 0 });
    });
    socket.on('leave', (room, ack) => {
      if (typeof room !== 'string' || !socket.rooms.has(room)) return refuse(ack, 'not_joined');
      socket.leave(room);
      ok(ack, { room });
    });
    socket.on('publish', (frame, ack) => {
      const room = frame && frame.room;
      if (typeof room !== 'string' || typeof frame.content !== 'string') return refuse(ack, 'bad_request');
      if (!socket.rooms.has(room)) return refuse(ack, 'not_joined');
      const seq = (seqs.get(room) || 0) + 1;
      seqs.set(room, seq);
      const id = crypto.randomUUID();
      const ts = Date.now();
      io.to(room).emit('message', {
        room, id, seq, from: { id: user, name: user }, content: frame.content, ts,
      });
      ok(ack, { id, seq, ts });
    });
  });

  server.listen(port, '127.0.0.1', () => {
    console.error(`socketio listening on 127.0.0.1:${port}${redisUrl ? ` (redis adapter: ${redisUrl})` : ''}`);
  });
}

main().catch((e) => { console.error(e); process.exit(1); });
