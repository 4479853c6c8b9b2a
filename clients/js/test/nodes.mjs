// Real hubbub processes for the library's tests: configs written to a temp dir, free
// ports, kill -9 and restart on the same ports and data, readiness polled. Every wait
// is a poll with a deadline; nothing sleeps for a fixed time.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const HUBBUB_BIN = path.resolve(REPO_ROOT, process.env.HUBBUB_BIN || 'target/debug/hubbub');
/** The longest one expectation waits: generous, the machine may be loaded. */
export const DEADLINE_MS = 30_000;
const STARTUP_DEADLINE_MS = 30_000;

const started = new Set();
process.once('exit', () => {
  for (const node of started) node.proc?.kill('SIGKILL');
});
// When the importing file's tests end, every node still running is killed, whatever
// failed first: a node left running (and a client connected to it) would keep this
// process, and the test run with it, waiting forever.
after(() => Promise.all([...started].map((node) => node.kill9())));

/** Polls `check` (sync or async) every 20 ms until it returns a truthy value, which it
 * returns; throws naming `what` after `deadlineMs`. */
export async function until(what, check, deadlineMs = DEADLINE_MS) {
  const end = Date.now() + deadlineMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Where `freePort` hands out ports: below Linux's ephemeral range (32768 and up by
 * default), so no `listen(0)` or outgoing connection can take a port between its
 * choice and the node's bind (a cluster node once failed with "Address already in use"
 * on a port from `listen(0)`), and below the Rust harness's 20000..32000
 * (tests/common/hubbub_node.rs). */
const PICKED_PORTS = [12_000, 20_000];
/** Test processes run side by side (clients/js runs its files in parallel): a port is
 * claimed across processes by creating its mark here with O_EXCL. Marks are removed
 * when this process exits; one older than an hour is from a run that crashed and is
 * taken over. */
const PORT_MARKS = path.join(os.tmpdir(), 'hubbub-js-test-ports');
const claimed = [];
process.once('exit', () => { for (const mark of claimed) try { unlinkSync(mark); } catch { /* gone */ } });
let nextPort = Math.floor(Math.random() * (PICKED_PORTS[1] - PICKED_PORTS[0]));

function claim(mark) {
  try {
    writeFileSync(mark, String(process.pid), { flag: 'wx' });
  } catch (e) {
    if (e.code !== 'EEXIST') throw e;
    let age = 0;
    try { age = Date.now() - statSync(mark).mtimeMs; } catch { return false; }
    if (age < 3_600_000) return false;
    writeFileSync(mark, String(process.pid));
  }
  claimed.push(mark);
  return true;
}

const canBind = (port) => new Promise((resolve) => {
  const server = net.createServer();
  server.once('error', () => resolve(false));
  server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
});

/** A port nothing listens on, that no other test of this run has been given. */
export async function freePort() {
  mkdirSync(PORT_MARKS, { recursive: true });
  const span = PICKED_PORTS[1] - PICKED_PORTS[0];
  for (let i = 0; i < span; i++) {
    const port = PICKED_PORTS[0] + nextPort;
    nextPort = (nextPort + 1) % span;
    if (claim(path.join(PORT_MARKS, String(port))) && await canBind(port)) return port;
  }
  throw new Error(`no free port in ${PICKED_PORTS.join('..')}`);
}

/** A TCP server that accepts and never answers (a frozen node, a black hole). */
export async function silentServer() {
  const sockets = new Set();
  const server = net.createServer((s) => { sockets.add(s); s.on('error', () => {}); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  };
}

const BASE_CONFIG = `
[log]
level = "info"
format = "json"

[limits]
frames_per_second = 0

[rate_limit]
messages_per_minute = 0
handshakes_per_ip_per_sec = 0

[heartbeat]
interval_ms = 2000
timeout_ms = 10000
`;

/** One hubbub process with a config file of its own; `start` again after `kill9`. */
class Node {
  constructor({ name, dir, config, args }) {
    this.name = name;
    this.dir = dir;
    this.config = config;
    this.args = args;
    this.proc = null;
    this.addr = null;
    this.logTail = [];
  }

  get url() { return `ws://${this.addr}/ws`; }

  async start() {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HUBBUB_')) env[k] = v;
    const proc = spawn(HUBBUB_BIN, this.args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = proc;
    // Every line the node logs, in its dir, kept with HUBBUB_KEEP_TEST_DIRS=1.
    const log = createWriteStream(path.join(this.dir, `${this.name}.log`), { flags: 'a' });
    started.add(this);
    await new Promise((resolve, reject) => {
      const fail = (why) => { clearTimeout(timer); reject(new Error(`node ${this.name}: ${why}\n${this.logTail.slice(-40).join('\n')}`)); };
      const timer = setTimeout(() => fail('did not say it is listening'), STARTUP_DEADLINE_MS);
      proc.once('error', (e) => fail(`cannot start ${HUBBUB_BIN}: ${e.message}`));
      proc.once('exit', (code, signal) => { if (this.proc === proc && !this.listening) fail(`exited (code ${code}, signal ${signal})`); });
      this.listening = false;
      createInterface({ input: proc.stderr }).on('close', () => log.end()).on('line', (line) => {
        log.write(`${line}\n`);
        this.logTail.push(line);
        if (this.logTail.length > 200) this.logTail.shift();
        if (this.listening) return;
        let entry;
        try { entry = JSON.parse(line); } catch { return; }
        const message = entry.message ?? entry.fields?.message;
        const addr = entry.addr ?? entry.fields?.addr;
        if (message === 'hubbub is listening' && typeof addr === 'string') {
          this.addr = addr;
          this.listening = true;
          clearTimeout(timer);
          resolve();
        }
      });
    });
    return this;
  }

  /** SIGKILL: no goodbye, no leave; the data dir stays for a restart. */
  async kill9() { await this._signal('SIGKILL'); }

  /** SIGSTOP / SIGCONT: a frozen process keeps its sockets open and answers nothing. */
  freeze() { this.proc.kill('SIGSTOP'); }
  thaw() { this.proc.kill('SIGCONT'); }

  /** SIGTERM: the drain (goodbye to every client, then exit). */
  async stop() { await this._signal('SIGTERM'); }

  async _signal(sig) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(sig);
    const hard = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(hard);
    started.delete(this);
  }

  async readyz() {
    const res = await fetch(`http://${this.addr}/readyz`);
    return { status: res.status, body: await res.json() };
  }

  async waitReady(deadlineMs = DEADLINE_MS) {
    await until(`node ${this.name} ready`, async () => (await this.readyz()).status === 200, deadlineMs);
  }
}

/** A node alone on a free port (kept across restarts), its room logs on disk. */
export async function startNode(extra = '') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hubbub-js-'));
  const port = await freePort();
  const config = path.join(dir, 'node.toml');
  writeFileSync(config, `[node]\nname = "solo"\nhttp_addr = "127.0.0.1:${port}"\n\n[storage]\ndir = "${dir}/data"\n${BASE_CONFIG}\n${extra}`);
  const node = new Node({ name: 'solo', dir, config, args: ['--config', config] });
  return node.start();
}

/** The last `lines` lines each node logged, under its name: for a failed test's error. */
export function nodeLogs(nodes, lines = 30) {
  return Object.values(nodes)
    .map((n) => `--- node ${n.name}, its last ${Math.min(lines, n.logTail.length)} log lines ---\n${n.logTail.slice(-lines).join('\n')}`)
    .join('\n');
}

/** `fn`, and if it throws, the error with `nodeLogs(nodes())` appended. */
export async function withNodeLogs(nodes, fn) {
  try {
    return await fn();
  } catch (e) {
    const logs = nodeLogs(nodes());
    if (e instanceof Error) e.message += `\n${logs}`;
    throw e;
  }
}

/** Removes a test's dir (configs, data, node logs); with HUBBUB_KEEP_TEST_DIRS=1 it is
 * kept and named, to read a failed test's node logs. */
function removeDir(dir) {
  if (process.env.HUBBUB_KEEP_TEST_DIRS) {
    process.stderr.write(`node configs, data and logs kept in ${dir}\n`);
  } else {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts every node and waits until each is ready; if one fails, the others are killed
 * and the dir removed before the error is thrown, so nothing is left running. */
async function startAll(nodes, dir, onListening = () => {}) {
  const all = Object.values(nodes);
  try {
    await Promise.all(all.map(async (n) => { await n.start(); onListening(n); }));
    await Promise.all(all.map((n) => n.waitReady()));
  } catch (e) {
    await Promise.all(all.map((n) => n.kill9()));
    removeDir(dir);
    throw e;
  }
}

/** Three nodes a, b, c of one cluster (one `[[nodes]]` file, as cluster.toml), each ready;
 * `extra` is appended to the shared settings. */
export async function startCluster(names = ['a', 'b', 'c'], extra = '') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hubbub-js-cluster-'));
  const config = path.join(dir, 'cluster.toml');
  let text = `[cluster]\ncookie = "js-client-tests"\nheartbeat_ms = 100\nfailure_timeout_ms = 600\n\n[storage]\ndir = "${dir}/data"\n${BASE_CONFIG}\n${extra}\n`;
  const ports = {};
  for (const name of names) {
    ports[name] = [await freePort(), await freePort()];
    text += `\n[[nodes]]\nname = "${name}"\nhttp_addr = "127.0.0.1:${ports[name][0]}"\nbind = "127.0.0.1:${ports[name][1]}"\n`;
  }
  writeFileSync(config, text);
  const nodes = {};
  for (const name of names) nodes[name] = new Node({ name, dir, config, args: ['--config', config, '--node', name] });
  await startAll(nodes, dir);
  return {
    nodes,
    dir,
    urls: () => names.map((n) => nodes[n].url),
    async stop() {
      await Promise.all(Object.values(nodes).map((n) => n.kill9()));
      removeDir(dir);
    },
  };
}

/** Three nodes of one cluster described as `docker-compose.yml` does: a config file
 * per node (`[node]` listening on 0.0.0.0, `[cluster]` with `seeds` and `voters`), no
 * `[[nodes]]`, so the nodes learn one another's names and addresses from the cluster. */
export async function startSeededCluster(names = ['a', 'b', 'c'], extra = '') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hubbub-js-seeded-'));
  const ports = {};
  for (const name of names) ports[name] = [await freePort(), await freePort()];
  const seeds = names.map((n) => `"127.0.0.1:${ports[n][1]}"`).join(', ');
  const voters = names.map((n) => `"${n}"`).join(', ');
  const nodes = {};
  for (const name of names) {
    const config = path.join(dir, `${name}.toml`);
    writeFileSync(config, `[node]\nname = "${name}"\nhttp_addr = "0.0.0.0:${ports[name][0]}"\n\n`
      + `[cluster]\nenabled = true\ncookie = "js-client-tests-seeded-cluster-cookie-0123456789"\nheartbeat_ms = 100\nfailure_timeout_ms = 600\n`
      + `bind = "127.0.0.1:${ports[name][1]}"\nadvertise = "127.0.0.1:${ports[name][1]}"\nseeds = [${seeds}]\nvoters = [${voters}]\n\n`
      + `[storage]\ndir = "${dir}/data-${name}"\n${BASE_CONFIG}\n${extra}\n`);
    nodes[name] = new Node({ name, dir, config, args: ['--config', config] });
  }
  await startAll(nodes, dir, (n) => {
    // Listening on 0.0.0.0: reached on loopback.
    n.addr = n.addr.replace(/^0\.0\.0\.0:/, '127.0.0.1:');
  });
  return {
    nodes,
    dir,
    async stop() {
      await Promise.all(Object.values(nodes).map((n) => n.kill9()));
      removeDir(dir);
    },
  };
}

/** Removes a single node's dir after it stopped (nothing when it never started). */
export async function stopNode(node) {
  if (!node) return;
  await node.kill9();
  removeDir(node.dir);
}
