// What the Socket.IO tests share: a socket.io-client socket that records what the
// application would see, a protocol v1 client over `ws`, unique room names. Every
// wait is a poll with a deadline (`until`, clients/js/test/nodes.mjs).

import { after } from 'node:test';
import WebSocket from 'ws';
import { io } from 'socket.io-client';
import { until } from '../../clients/js/test/nodes.mjs';

/** Every socket made here or handed to `track`; disconnected when the file's tests end. */
const sockets = new Set();
after(() => { for (const s of sockets) s.disconnect(); });

/** Disconnected with the others at the end. */
export const track = (s) => { sockets.add(s); return s; };

/** A socket.io-client socket, recording the events the application would see. */
export function sio(url, options = {}) {
  const s = io(url, { forceNew: true, reconnection: false, timeout: 10_000, ...options });
  s.seen = { message: [], presence_diff: [], typing: [], direct: [], renamed: [], welcome: [], connect_error: [], disconnect: [] };
  for (const name of Object.keys(s.seen)) s.on(name, (payload) => s.seen[name].push(payload));
  return track(s);
}

/** `s.timeout(ms).emitWithAck(event, payload)`; a timeout's error says which socket,
 * whether it is connected, on which transport, and the disconnects it saw (a socket
 * that lost its connection gets no ack: the timeout is then all it reports). */
export async function ack(s, event, payload, ms = 20_000) {
  try {
    return await s.timeout(ms).emitWithAck(event, payload);
  } catch (e) {
    const state = `${event} by ${JSON.stringify(s.io.opts.query ?? {})}: connected ${s.connected}, `
      + `engine ${s.io.engine?.id} on ${s.io.engine?.transport?.name}, disconnects ${JSON.stringify(s.seen?.disconnect ?? [])}`;
    if (e instanceof Error) e.message += ` (${state})`;
    throw e;
  }
}

/** Resolves once `s` is connected; throws at its first connect_error. */
export const connected = (s) => until('the socket connects', () => {
  if (s.seen.connect_error.length) throw new Error(`connect_error: ${s.seen.connect_error[0].message}`);
  return s.connected;
});

/** A protocol v1 client over `ws`, with its frames by type and requests by ref. */
export function v1(addr, query) {
  const ws = new WebSocket(`ws://${addr}/ws?${query}`);
  const frames = [];
  let ref = 0;
  ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
  return {
    ws,
    frames,
    of: (type) => frames.filter((f) => f.type === type),
    messages: () => frames.filter((f) => f.type === 'message'),
    opened: () => until('v1 welcome', () => frames.find((f) => f.type === 'welcome')),
    async request(frame) {
      const id = ++ref;
      ws.send(JSON.stringify({ ...frame, ref: id }));
      return until(`v1 reply to ${frame.type}`, () => frames.find((f) => f.type === 'reply' && f.ref === id));
    },
    close: () => ws.close(),
  };
}

/** A room name no other test uses. */
export const uniq = (label) => `${label}-${Math.random().toString(36).slice(2, 8)}`;
