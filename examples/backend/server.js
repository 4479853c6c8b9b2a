#!/usr/bin/env node
// An example application backend for hubbub (docs/webhooks.md), Node.js standard
// library only:
//
//   POST /hubbub/events   webhooks: checks X-Hubbub-Signature, drops repeats by
//                         delivery_id, appends every `publish` event to a JSONL file,
//                         and answers the `!count` command with a system message
//                         posted through hubbub's server API (POST /api/publish).
//   POST /hubbub/connect  connect hook: denies `?banned`, lets everyone else in and
//                         joins them to `lobby`.
//   POST /hubbub/publish  publish hook: rejects messages with "spam", masks "darn".
//
// Environment:
//   PORT                 where to listen (default 8090; 0 picks a free port)
//   HUBBUB_WEBHOOK_SECRET the [[webhooks]] secret (required)
//   STORE                the JSONL file (default ./messages.jsonl)
//   HUBBUB_API_URL       hubbub's HTTP address, e.g. http://127.0.0.1:8080 (optional:
//                        without it `!count` is answered in the log only)
//   HUBBUB_API_KEY       a key from hubbub's [api] keys (with HUBBUB_API_URL)
//
// It prints `listening on http://127.0.0.1:<port>` once it listens.

"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const https = require("node:https");

const PORT = Number(process.env.PORT ?? 8090);
const SECRET = process.env.HUBBUB_WEBHOOK_SECRET;
const STORE = process.env.STORE ?? "./messages.jsonl";
const API_URL = process.env.HUBBUB_API_URL ?? "";
const API_KEY = process.env.HUBBUB_API_KEY ?? "";
const MAX_BODY = 16 * 1024 * 1024;
const TOLERANCE_SECS = 300;

if (!SECRET) {
  console.error("HUBBUB_WEBHOOK_SECRET is required");
  process.exit(2);
}

// True when `header` (X-Hubbub-Signature) signs `body` (a Buffer of the raw bytes).
function verify(secret, header, body, toleranceSecs = TOLERANCE_SECS, now = Date.now() / 1000) {
  const items = header.split(",").map((part) => part.trim().split("="));
  const stamps = items.filter(([k, v]) => k === "t" && v !== undefined).map(([, v]) => v);
  const signatures = items.filter(([k, v]) => k === "v1" && v !== undefined).map(([, v]) => v);
  if (stamps.length !== 1 || !/^\d+$/.test(stamps[0])) return false;
  const t = stamps[0];
  if (Math.abs(now - Number(t)) > toleranceSecs) return false;
  const expected = crypto.createHmac("sha256", secret).update(`${t}.`).update(body).digest();
  return signatures.some((s) => {
    const given = Buffer.from(s, "hex");
    return given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}

// What was stored already: a restart must not store an event twice.
const seen = new Set();
const perRoom = new Map();
if (fs.existsSync(STORE)) {
  for (const line of fs.readFileSync(STORE, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const stored = JSON.parse(line);
    seen.add(stored.delivery_id);
    perRoom.set(stored.room, (perRoom.get(stored.room) ?? 0) + 1);
  }
}

function store(event) {
  const m = event.message;
  const line = {
    delivery_id: event.delivery_id,
    room: event.room,
    seq: event.seq,
    id: m.id,
    from: m.from,
    content: m.content,
    ts: m.ts,
  };
  fs.appendFileSync(STORE, JSON.stringify(line) + "\n");
  perRoom.set(event.room, (perRoom.get(event.room) ?? 0) + 1);
}

// POST /api/publish {"room", "content"} with Authorization: Bearer <key>; hubbub
// answers 200 {"room", "id", "seq"}.
function postSystemMessage(room, content) {
  if (!API_URL) {
    console.log(`(no HUBBUB_API_URL) would post to ${room}: ${content}`);
    return;
  }
  const url = new URL("/api/publish", API_URL);
  const body = JSON.stringify({ room, content });
  const client = url.protocol === "https:" ? https : http;
  const req = client.request(
    url,
    {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        authorization: `Bearer ${API_KEY}`,
      },
    },
    (res) => {
      let answer = "";
      res.on("data", (chunk) => (answer += chunk));
      res.on("end", () => console.log(`POST /api/publish ${res.statusCode} ${answer}`));
    },
  );
  req.on("error", (e) => console.error(`POST /api/publish failed: ${e.message}`));
  req.end(body);
}

function onEvent(event) {
  if (seen.has(event.delivery_id)) return; // a retry or a failover's resend
  seen.add(event.delivery_id);
  if (event.event !== "publish") {
    console.log(`${event.event} ${event.room ?? ""} ${event.user?.id ?? ""}`);
    return;
  }
  store(event);
  if (event.message.content.trim() === "!count") {
    postSystemMessage(event.room, `${perRoom.get(event.room)} messages stored for ${event.room}`);
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error("body too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer(async (req, res) => {
  let body;
  try {
    body = await readBody(req);
  } catch {
    return answer(res, 413, { error: "too large" });
  }
  if (req.method !== "POST") return answer(res, 405, { error: "POST only" });
  if (req.url === "/hubbub/events") {
    const signature = req.headers["x-hubbub-signature"] ?? "";
    if (!verify(SECRET, signature, body)) return answer(res, 401, { error: "bad signature" });
    let parsed;
    try {
      parsed = JSON.parse(body.toString("utf8"));
    } catch {
      return answer(res, 400, { error: "not JSON" });
    }
    // One event is an object; a batch (the backlog of a slow backend) an array.
    for (const event of Array.isArray(parsed) ? parsed : [parsed]) onEvent(event);
    return answer(res, 200, {});
  }
  if (req.url === "/hubbub/connect") {
    const asked = JSON.parse(body.toString("utf8"));
    if (/(^|&)banned(=|&|$)/.test(asked.query)) {
      return answer(res, 200, { action: "deny", status: 403, reason: "banned" });
    }
    return answer(res, 200, { action: "allow", rooms: ["lobby"] });
  }
  if (req.url === "/hubbub/publish") {
    const asked = JSON.parse(body.toString("utf8"));
    if (/spam/i.test(asked.content)) {
      return answer(res, 200, { action: "reject", code: "forbidden", message: "no spam, please" });
    }
    if (/darn/i.test(asked.content)) {
      return answer(res, 200, { action: "rewrite", content: asked.content.replace(/darn/gi, "d**n") });
    }
    return answer(res, 200, { action: "accept" });
  }
  return answer(res, 404, { error: "not found" });
});

server.listen(PORT, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
