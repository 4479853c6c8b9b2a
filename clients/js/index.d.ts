// Types of hubbub.js (checked by `npm run typecheck`: tsc --noEmit). See docs/clients.md.

/** The part of the WebSocket API the client uses (browsers', Node 22's, the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** One node's URL (`ws://host:port/ws`, or a load balancer's) or several nodes'. */
  urls: string | string[];
  /** Anonymous mode: the user id (`?user=`); absent: the node makes one up. */
  user?: string;
  /** Anonymous mode: the display name (`?name=`); `rename` changes it for later connections too. */
  name?: string;
  /** JWT mode: the token (`?token=`), or a function asked before every connection. */
  token?: string | (() => string);
  /** The WebSocket class; default `globalThis.WebSocket` (pass the `ws` package's on Node 20). */
  WebSocket?: WebSocketConstructor;
  /** How long one request waits for its answer (default 10000). */
  requestTimeoutMs?: number;
  /** How long joins and publishes are retried (default 15000). */
  retryDeadlineMs?: number;
  /** How long a connection may take to its `welcome` before the next node is tried (default 5000). */
  connectTimeoutMs?: number;
  /** Reconnect backoff: first delay and cap (defaults 250 and 10000), with jitter. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Publishes that may wait for a connection at once (default 100); more fail with `queue_full`. */
  offlineQueueMax?: number;
  /** How often the client pings (0, the default: half the node's `heartbeat_ms`). */
  pingIntervalMs?: number;
}

/** `offline` is between attempts (see `retryAt`); `rejoining` is after a welcome, until every room is joined or failed. */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'rejoining' | 'offline' | 'closed';
export type RoomState = 'joining' | 'joined' | 'rejoining' | 'failed' | 'left';

/** Error codes of protocol v1, and the client's own. */
export type ErrorCode =
  | 'bad_request' | 'unknown_type' | 'invalid_room' | 'too_long' | 'not_joined' | 'too_many_rooms'
  | 'user_offline' | 'forbidden' | 'rate_limited' | 'room_limit' | 'internal' | 'unavailable'
  // the client's own:
  | 'timeout' | 'offline' | 'disconnected' | 'closed' | 'queue_full'
  | (string & {});

export class HubbubError extends Error {
  constructor(code: ErrorCode, message?: string, retryAfterMs?: number);
  readonly code: ErrorCode;
  readonly retryAfterMs?: number;
}
export function isRetryable(error: unknown): boolean;

export interface UserInfo { id: string; name: string; }
export interface Member extends UserInfo { connections: number; }
export interface ChatMessage {
  room: string;
  id: string;
  seq: number;
  from: UserInfo;
  /** '' for a message published with only `data`. */
  content: string;
  ts: number;
  /** Protocol v1 addition: the publish's structured data, as sent; absent when none. */
  data?: unknown;
}
export interface RoomInfo {
  name: string;
  state: RoomState;
  error: HubbubError | null;
  lastSeq: number;
  members: Map<string, Member>;
}
export interface PublishResult { id: string; seq: number; ts: number; duplicate?: boolean; }
export interface PublishOptions {
  idempotencyKey?: string;
  deadlineMs?: number;
  /** Protocol v1 addition: structured data, any JSON value. */
  data?: unknown;
  /** Protocol v1 addition: this connection gets no `message` of it (the user's other connections do). */
  exceptSender?: boolean;
}
/** One room's part of a `publishRooms`: `ok` with the message's id, seq and ts, or the room's error. */
export interface RoomPublishResult {
  room: string;
  ok: boolean;
  id?: string;
  seq?: number;
  ts?: number;
  duplicate?: boolean;
  error?: { code: string; message: string; retry_after_ms?: number };
}
/** A publish to several rooms: the one id, a result per room in the order given. */
export interface PublishRoomsResult { id: string; results: RoomPublishResult[]; }

export interface ClientEvents {
  state: { state: ConnectionState; retryAt: number; node: string | null; url: string | null; error: HubbubError | null };
  welcome: { node: string; session: string; user: UserInfo; url: string };
  room: { room: string; state: RoomState; error: HubbubError | null };
  /** Each message once, in seq order per room; `live` is false for the history of a first join. */
  message: { room: string; message: ChatMessage; live: boolean };
  /** Messages after seq `after` and before `next` will not be delivered; `restarted`: the room started afresh. */
  gap: { room: string; after: number; next: number; restarted: boolean };
  presence: { room: string; members: Map<string, Member>; joins: Member[]; leaves: Member[]; updates: Member[] };
  typing: { room: string; user: UserInfo };
  renamed: { room: string; user: UserInfo; oldName: string };
  direct: { id: string; from: UserInfo; content: string; ts: number };
  goodbye: { reason: string; reconnectAfterMs: number | null };
  error: HubbubError;
  /** A join or publish failed with a passing error and is tried again after `waitMs`. */
  retry: { op: 'join' | 'publish'; room: string; error: HubbubError; attempt: number; waitMs: number };
}

export class HubbubClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly retryAt: number;
  readonly node: string | null;
  readonly url: string | null;
  readonly session: string | null;
  readonly user: UserInfo | null;
  readonly lastError: HubbubError | null;

  on<K extends keyof ClientEvents>(type: K, fn: (detail: ClientEvents[K]) => void): () => void;
  connect(): void;
  close(): void;
  reconnectNow(): void;

  join(room: string): Promise<RoomInfo>;
  leave(room: string): Promise<void>;
  roomInfo(room: string): RoomInfo | undefined;
  /** `content` may be null (or '') when `options.data` is given. */
  publish(room: string, content: string | null, options?: PublishOptions): Promise<PublishResult>;
  /** Protocol v1 addition: one message to up to 16 joined rooms; read each result's `ok`. */
  publishRooms(rooms: string[], content: string | null, options?: PublishOptions): Promise<PublishRoomsResult>;
  direct(to: string, content: string): Promise<{ id: string; ts: number; delivered: number }>;
  rename(name: string): Promise<{ user: UserInfo }>;
  history(room: string, options?: { before?: number; after?: number; limit?: number }):
    Promise<{ room: string; messages: ChatMessage[]; more?: boolean; before?: number; after?: number }>;
  typing(room: string): boolean;
  request(frame: { type: string; [field: string]: unknown }, options?: { timeoutMs?: number }): Promise<Record<string, unknown>>;
}
