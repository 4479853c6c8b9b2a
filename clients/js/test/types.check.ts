// Compiled by `npm run typecheck` only (never run): the types in index.d.ts fit the
// way docs/clients.md uses the client. A wrong field name here fails the check.
import { HubbubClient, HubbubError, isRetryable, type ChatMessage, type RoomState } from '../index.js';

declare const WS: import('../index.js').WebSocketConstructor;
const client = new HubbubClient({ urls: ['ws://a:8080/ws', 'ws://b:8080/ws'], user: 'alice', name: 'Alice', WebSocket: WS });
client.on('state', ({ state, retryAt }) => {
  const s: string = state === 'offline' ? `offline (retry in ${Math.ceil((retryAt - Date.now()) / 1000)}s)` : state;
  void s;
});
client.on('room', ({ room, state, error }) => {
  const shown: RoomState = state;
  void [room, shown, error?.code];
});
client.on('message', ({ message, live }) => {
  const m: ChatMessage = message;
  void [m.seq, m.from.name, live, m.data];
});
client.on('gap', ({ after, next, restarted }) => void [after + 1, next, restarted]);
client.on('presence', ({ members, updates }) => {
  for (const [id, m] of members) void [id, m.connections];
  void updates.length;
});
client.connect();
async function use(): Promise<void> {
  const info = await client.join('lobby');
  void info.lastSeq;
  try {
    const ack = await client.publish('lobby', 'hello', { deadlineMs: 5000 });
    await client.publish('lobby', null, { data: { kind: 'poll' } });
    await client.publish('lobby', 'not to me', { exceptSender: true });
    const many = await client.publishRooms(['lobby', 'news'], 'both', { exceptSender: true, data: 1 });
    for (const r of many.results) void [many.id, r.room, r.ok ? r.seq : r.error?.code];
    void [ack.seq, ack.duplicate];
  } catch (e) {
    if (e instanceof HubbubError && isRetryable(e)) void e.code;
  }
  const page = await client.history('lobby', { before: 10, limit: 20 });
  void page.messages[0]?.content;
  const sent = await client.direct('bob', 'psst');
  void sent.delivered;
  client.close();
}
void use;
