// End-to-end tests of the chat page that hubbub serves at `GET /`, in real headless
// Chromium driven by playwright-core. Run by tests/browser/run.sh:
//
//   node --test tests/browser/*.test.mjs
//
// It starts the real binary ($HUBBUB_BIN, default target/debug/hubbub) on port 0 and
// learns the port from the "hubbub is listening" log line. Every wait is a Playwright
// wait (locator.waitFor / page.waitForFunction) bounded by a timeout; nothing sleeps for
// a fixed time. Each test makes its own browser contexts, i.e. its own users.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
// The library's own helpers for real nodes (a cluster from one [[nodes]] file, kill -9).
import { startCluster } from '../../clients/js/test/nodes.mjs';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
// A relative HUBBUB_BIN is taken from the repo root (where run.sh runs).
const HUBBUB_BIN = path.resolve(REPO_ROOT, process.env.HUBBUB_BIN || 'target/debug/hubbub');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
/** How long the node may take to log that it is listening. */
const STARTUP_DEADLINE_MS = 20_000;
/** The longest any single expectation waits (the machine may be loaded). */
const WAIT_MS = 15_000;
const TEST_TIMEOUT_MS = 90_000;
const SCREENSHOT = '/tmp/hubbub-chat.png';

const MESSAGES = '[data-testid="messages"] .message';

/** Every node started, so `after` can stop them all. */
const nodes = [];
/** The node most scenarios share. */
let node = null;
/** @type {import('playwright-core').Browser | null} */
let browser = null;

// ------------------------------------------------------------------ the hubbub process

/**
 * Starts the binary (with extra `HUBBUB_*` settings) and resolves with
 * `{proc, addr, logTail}` once it logs its listen address.
 */
function startNode(settings = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('HUBBUB_')) env[k] = v; // no stray HUBBUB_CONFIG etc. from the caller
  }
  Object.assign(env, {
    HUBBUB_NODE__HTTP_ADDR: '127.0.0.1:0',
    HUBBUB_LOG__FORMAT: 'json',
    HUBBUB_LOG__LEVEL: 'info',
    // The tests send bursts (eleven messages in two seconds) to check ordering and
    // dedupe; the per-user message limit (burst 10) is tested in the Rust suites.
    HUBBUB_RATE_LIMIT__MESSAGES_PER_MINUTE: '0',
    // Each node its own room logs: a node started afresh has no history, and two
    // nodes never share (or lock) one database.
    HUBBUB_STORAGE__DIR: mkdtempSync(path.join(os.tmpdir(), 'hubbub-browser-')),
    ...settings,
  });
  const proc = spawn(HUBBUB_BIN, [], { cwd: REPO_ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const started = { proc, addr: null, logTail: [] };
  nodes.push(started); // so `after` kills it even if startup fails below

  return new Promise((resolve, reject) => {
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`${why}\n--- hubbub stderr (last lines) ---\n${started.logTail.join('\n')}`));
    };
    const timer = setTimeout(
      () => fail(`hubbub did not log "hubbub is listening" within ${STARTUP_DEADLINE_MS} ms`),
      STARTUP_DEADLINE_MS,
    );
    proc.once('error', (e) => fail(`cannot start ${HUBBUB_BIN}: ${e.message}`));
    proc.once('exit', (code, signal) => {
      if (!started.addr) fail(`hubbub exited before listening (code ${code}, signal ${signal})`);
    });
    // Keep reading stderr for the whole run: a full pipe would block the node's logging.
    createInterface({ input: proc.stderr }).on('line', (line) => {
      started.logTail.push(line);
      if (started.logTail.length > 50) started.logTail.shift();
      if (started.addr) return;
      let entry;
      try { entry = JSON.parse(line); } catch { return; }
      if (entry && entry.message === 'hubbub is listening' && typeof entry.addr === 'string') {
        started.addr = entry.addr;
        clearTimeout(timer);
        resolve(started);
      }
    });
  });
}

async function stopNode({ proc }) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGTERM');
  const killTimer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(killTimer);
}
// Last resort if the runner dies without running `after`.
process.once('exit', () => {
  for (const { proc } of nodes) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
});

before(async () => {
  node = await startNode();
  assert.match(node.addr, /^127\.0\.0\.1:\d+$/);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
});

after(async () => {
  await browser?.close().catch(() => {});
  await Promise.all(nodes.map(stopNode));
});

// ------------------------------------------------------------------ page helpers

let userCounter = 0;

/**
 * A fresh browser context (its own localStorage, hence its own user id) with the chat
 * page loaded. With `name`, the display name is put in localStorage before the page's
 * script runs, as a returning user would have it.
 */
async function openUser(name, target = node, { viewport = { width: 1100, height: 640 }, query = '' } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  if (name) {
    await context.addInitScript((n) => {
      try { if (!localStorage.getItem('hubbub.name')) localStorage.setItem('hubbub.name', n); } catch { /* about:blank */ }
    }, name);
  }
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`http://${target.addr}/${query}`);
  const user = { context, page, errors, label: `${++userCounter}-${name || 'unnamed'}` };
  if (name) await landed(user);
  return user;
}

/** The page connected by itself and joined lobby (its rooms of the last visit). */
async function landed(user) {
  await connected(user.page);
  await user.page.waitForFunction(() => window.hubbub.rooms.lobby?.joined === true, null, { timeout: WAIT_MS });
  user.userId = await user.page.evaluate(() => window.hubbub.user.id);
}

/** The socket drops and the browser is offline, so every reconnect fails meanwhile. */
async function goOffline(user) {
  await user.context.setOffline(true);
  await user.page.evaluate(() => window.hubbub.client.reconnectNow());
  await user.page.locator('[data-testid="status"][data-state="offline"]').waitFor();
}

async function connected(page) {
  await page.locator('[data-testid="status"][data-state="connected"]').waitFor({ timeout: WAIT_MS });
}

/** The `.message` in the shown room whose body is exactly `text`. */
function messageLocator(page, text) {
  return page.locator(MESSAGES).filter({
    has: page.locator('.body').getByText(text, { exact: true }),
  });
}

/** Waits for the message with `text` in the shown room and returns its seq. */
async function seqOf(page, text) {
  const msg = messageLocator(page, text);
  await msg.waitFor({ timeout: WAIT_MS });
  assert.equal(await msg.count(), 1, `"${text}" is shown once`);
  const seq = Number(await msg.getAttribute('data-seq'));
  assert.ok(Number.isInteger(seq) && seq > 0, `"${text}" has a positive integer data-seq (got ${seq})`);
  return seq;
}

/** Sends `text` through the composer, as a user would. */
async function sendViaUi(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('send-button').click();
}

/** [seq, body] of every message shown, in DOM order. */
function shownMessages(page) {
  return page.locator(MESSAGES).evaluateAll((nodes) =>
    nodes.map((n) => [Number(n.dataset.seq), n.querySelector('.body')?.textContent ?? '']));
}

/** Waits until the element's text content equals `expected`. */
async function waitForText(page, selector, expected) {
  try {
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.textContent === want,
      [selector, expected],
      { timeout: WAIT_MS },
    );
  } catch (e) {
    const actual = await page.locator(selector).textContent().catch(() => '(missing)');
    throw new Error(`${selector}: expected text ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`, { cause: e });
  }
}

function memberSelector(userId) {
  return `[data-testid="members"] li[data-user-id="${userId}"]`;
}

/** Unique message text, so tests sharing the node's lobby never confuse each other. */
function uniq(label) {
  return `${label} ${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * Runs `body` with fresh users (one browser context each), then closes them. A page
 * that threw an uncaught error fails the test. On failure, screenshots of every page go
 * to /tmp for a look.
 */
async function withUsers(names, body, target = node) {
  const users = [];
  try {
    for (const name of names) users.push(await openUser(name, target));
    await body(...users);
    for (const u of users) {
      assert.deepEqual(u.errors.map(String), [], `no uncaught errors in ${u.label}'s page`);
    }
  } catch (e) {
    for (const u of users) {
      const file = `/tmp/hubbub-chat-failure-${u.label}.png`;
      if (await u.page.screenshot({ path: file, fullPage: true }).then(() => true, () => false)) {
        console.error(`screenshot of ${u.label}'s page: ${file}`);
      }
      if (u.errors.length) console.error(`uncaught errors in ${u.label}'s page:`, u.errors);
    }
    throw e;
  } finally {
    for (const u of users) await u.context.close().catch(() => {});
  }
}

// ------------------------------------------------------------------ scenarios

describe('chat page', () => {
  it('two users in lobby: members, typing, sending (and a screenshot)', { timeout: TEST_TIMEOUT_MS }, async () => {
    // Bob has no stored name: he is asked for one before anything else, and no raw id
    // is ever shown as his name.
    await withUsers(['Alice', null], async (alice, bob) => {
      await bob.page.getByTestId('name-prompt').waitFor();
      assert.equal(await bob.page.locator('[data-testid="status"]').getAttribute('data-state'), 'idle', 'not connected before a name');
      await bob.page.getByTestId('name-prompt-input').fill('Bobby');
      await bob.page.getByTestId('name-prompt-button').click();
      await landed(bob);
      await waitForText(alice.page, `${memberSelector(bob.userId)} .member-name`, 'Bobby');
      // Both landed in lobby.
      for (const u of [alice, bob]) {
        await u.page.locator('[data-testid="rooms"] li[data-room="lobby"].active').waitFor();
        await waitForText(u.page, '[data-testid="room-title"]', '#lobby');
      }

      // Bob renames himself through the name form; Alice sees the new name, and a line
      // in her timeline says so.
      await bob.page.getByTestId('name-input').fill('Bob');
      await bob.page.getByTestId('name-button').click();
      await bob.page.waitForFunction(() => window.hubbub.user.name === 'Bob', null, { timeout: WAIT_MS });
      await alice.page.locator('[data-testid="system"]', { hasText: 'Bobby is now Bob' }).waitFor();

      // Each sees the other in the member list, by id and name; themselves marked.
      await waitForText(alice.page, `${memberSelector(bob.userId)} .member-name`, 'Bob');
      await waitForText(bob.page, `${memberSelector(alice.userId)} .member-name`, 'Alice');
      await waitForText(alice.page, `${memberSelector(alice.userId)} .you`, '(you)');
      await waitForText(bob.page, `${memberSelector(bob.userId)} .you`, '(you)');
      assert.equal(await bob.page.locator(`${memberSelector(alice.userId)} .you`).count(), 0,
        'Alice is not marked "(you)" in Bob\'s list');

      // Alice types: Bob is told so, with her name. The indicator lasts ~3 s, so record
      // every text it shows rather than risk polling past it on a slow machine.
      await bob.page.evaluate(() => {
        const typing = document.querySelector('[data-testid="typing"]');
        window.typingSeen = [];
        new MutationObserver(() => window.typingSeen.push(typing.textContent))
          .observe(typing, { childList: true, characterData: true, subtree: true });
      });
      const text = uniq('hello from Alice');
      await alice.page.getByTestId('message-input').pressSequentially(text.slice(0, 8));
      try {
        await bob.page.waitForFunction(() => window.typingSeen.includes('Alice is typing…'), null, { timeout: WAIT_MS });
      } catch (e) {
        const seen = await bob.page.evaluate(() => window.typingSeen);
        throw new Error(`Bob's typing indicator never read "Alice is typing…"; it read ${JSON.stringify(seen)}`, { cause: e });
      }
      assert.equal(await alice.page.getByTestId('typing').textContent(), '',
        'Alice is not told about her own typing');

      // ... and sends with the button: both show the message with the same seq.
      await alice.page.getByTestId('message-input').fill(text);
      await alice.page.getByTestId('send-button').click();
      const seqA = await seqOf(alice.page, text);
      const seqB = await seqOf(bob.page, text);
      assert.equal(seqB, seqA, 'both pages show the same seq');
      assert.equal(await alice.page.getByTestId('message-input').inputValue(), '', 'the composer is cleared');

      const atAlice = messageLocator(alice.page, text);
      const atBob = messageLocator(bob.page, text);
      assert.equal(await atAlice.locator('.from').textContent(), 'Alice');
      assert.equal(await atBob.locator('.from').textContent(), 'Alice');
      assert.ok(await atAlice.evaluate((n) => n.classList.contains('mine')), 'own message is .mine for Alice');
      assert.ok(!(await atBob.evaluate((n) => n.classList.contains('mine'))), 'not .mine for Bob');

      // Her message ends her typing indicator at Bob's at once (not ~3 s later, on expiry).
      assert.equal(await bob.page.getByTestId('typing').textContent(), '', 'the message clears "is typing"');

      // Seqs in each page are strictly increasing.
      for (const u of [alice, bob]) {
        const seqs = (await shownMessages(u.page)).map(([s]) => s);
        for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `${u.label}: seqs increase: ${seqs}`);
      }

      // (d) What a person would see.
      await alice.page.screenshot({ path: SCREENSHOT, fullPage: true });
    });
  });

  it('joining another room: listed, and its messages stay out of lobby', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `side-${Date.now().toString(36)}`;
    await withUsers(['Alice', 'Bob'], async (alice, bob) => {
      // Bob joins the room through the join form, then goes back to lobby.
      await bob.page.getByTestId('room-input').fill(room);
      await bob.page.getByTestId('join-button').click();
      await bob.page.locator(`[data-testid="rooms"] li[data-room="${room}"].active:not(.pending)`).waitFor();
      await waitForText(bob.page, '[data-testid="room-title"]', `#${room}`);
      assert.equal(await bob.page.getByTestId('room-input').inputValue(), '', 'the room input is cleared');
      await bob.page.locator('[data-testid="rooms"] li[data-room="lobby"]').click();
      await waitForText(bob.page, '[data-testid="room-title"]', '#lobby');

      // Alice joins it too (typing a leading #, which the form strips) and sends there.
      await alice.page.getByTestId('room-input').fill(`#${room}`);
      await alice.page.getByTestId('join-button').click();
      const roomItem = alice.page.locator(`[data-testid="rooms"] li[data-room="${room}"]`);
      await alice.page.locator(`[data-testid="rooms"] li[data-room="${room}"].active:not(.pending)`).waitFor();
      await waitForText(alice.page, '[data-testid="room-title"]', `#${room}`);
      assert.deepEqual(
        await alice.page.locator('[data-testid="rooms"] li').evaluateAll((ns) => ns.map((n) => n.dataset.room)),
        ['lobby', room],
        'lobby and the new room are listed, in join order',
      );
      await waitForText(alice.page, `${memberSelector(bob.userId)} .member-name`, 'Bob');

      const sideText = uniq('only in the side room');
      await sendViaUi(alice.page, sideText);
      const sideSeq = await seqOf(alice.page, sideText);

      // Bob, looking at lobby, gets it as unread in the room list, not in his lobby view.
      await waitForText(bob.page, `[data-testid="rooms"] li[data-room="${room}"] [data-testid="unread"]`, '1');
      assert.equal(await messageLocator(bob.page, sideText).count(), 0, 'not shown in Bob\'s lobby');

      // Alice goes back to lobby: her lobby view does not show it either.
      await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"]').click();
      await waitForText(alice.page, '[data-testid="room-title"]', '#lobby');
      assert.equal(await messageLocator(alice.page, sideText).count(), 0, 'not shown in Alice\'s lobby');
      assert.ok(!(await roomItem.evaluate((n) => n.classList.contains('active'))), 'the side room is no longer active');

      // A lobby message goes to lobby only: Bob sees it, and the side room gets no unread.
      const lobbyText = uniq('lobby again');
      await sendViaUi(alice.page, lobbyText);
      await seqOf(bob.page, lobbyText);
      await seqOf(alice.page, lobbyText);

      // Bob opens the side room: the message is there, with the same seq; unread cleared.
      await bob.page.locator(`[data-testid="rooms"] li[data-room="${room}"]`).click();
      await waitForText(bob.page, '[data-testid="room-title"]', `#${room}`);
      assert.equal(await seqOf(bob.page, sideText), sideSeq);
      assert.equal(await messageLocator(bob.page, lobbyText).count(), 0, 'the lobby message is not in the side room');
      assert.deepEqual((await shownMessages(bob.page)).map(([s]) => s), [sideSeq], 'the side room holds just its message');
      await waitForText(bob.page, `[data-testid="rooms"] li[data-room="${room}"] [data-testid="unread"]`, '');
    });
  });

  it('reconnect without loss: messages sent while away arrive once, in order', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withUsers(['Alice', 'Bob'], async (alice, bob) => {
      // Bob has seen something in lobby, so he resumes with `since` when he returns.
      const first = uniq('before the drop');
      await sendViaUi(alice.page, first);
      await seqOf(bob.page, first);

      // Bob's browser goes offline (so reconnect attempts fail and he stays away while
      // Alice sends) and his socket is closed from inside the page.
      await goOffline(bob);
      // Alice sees him leave: the server noticed the disconnect.
      await alice.page.locator(memberSelector(bob.userId)).waitFor({ state: 'detached' });

      // Alice sends several messages through the UI while Bob is away.
      const whileAway = [];
      for (let i = 1; i <= 5; i++) {
        const text = uniq(`while Bob is away #${i}`);
        whileAway.push(text);
        await sendViaUi(alice.page, text);
        await seqOf(alice.page, text);
      }
      assert.notEqual(await bob.page.evaluate(() => window.hubbub.state), 'connected', 'Bob is still away');
      for (const text of whileAway) {
        assert.equal(await messageLocator(bob.page, text).count(), 0, 'Bob cannot have it yet');
      }

      // Bob comes back online; Alice sends a burst at the same moment, so some of it
      // may race the resume (live frames vs. the join reply's history).
      const burst = Array.from({ length: 5 }, (_, i) => uniq(`burst #${i + 1}`));
      await Promise.all([
        bob.context.setOffline(false),
        alice.page.evaluate((texts) => Promise.all(texts.map((content) =>
          window.hubbub.client.publish('lobby', content))), burst),
      ]);

      await connected(bob.page);
      const expected = [first, ...whileAway, ...burst];
      const allShown = (texts) => {
        const bodies = new Set(Array.from(
          document.querySelectorAll('[data-testid="messages"] .message .body'), (b) => b.textContent));
        return texts.every((t) => bodies.has(t));
      };
      await alice.page.waitForFunction(allShown, expected, { timeout: WAIT_MS });
      await bob.page.waitForFunction(allShown, expected, { timeout: WAIT_MS });
      await waitForText(alice.page, `${memberSelector(bob.userId)} .member-name`, 'Bob');
      await bob.page.waitForFunction(() => window.hubbub.rooms.lobby?.joined === true, null, { timeout: WAIT_MS });

      const atAlice = await shownMessages(alice.page);
      const atBob = await shownMessages(bob.page);
      const bobSeqs = atBob.map(([s]) => s);
      for (let i = 1; i < bobSeqs.length; i++) {
        assert.ok(bobSeqs[i] > bobSeqs[i - 1], `Bob's seqs strictly increase (no duplicates): ${bobSeqs}`);
      }
      for (const text of expected) {
        assert.equal(atBob.filter(([, body]) => body === text).length, 1, `Bob shows "${text}" exactly once`);
      }
      assert.deepEqual(bobSeqs, atAlice.map(([s]) => s), 'Bob shows the same seqs as Alice');
      assert.deepEqual(atBob, atAlice, 'and the same messages at them');
      // Alice's messages in the order she sent them (the burst was concurrent, so only as a set).
      const seqOfText = new Map(atBob.map(([s, body]) => [body, s]));
      const ordered = [first, ...whileAway].map((t) => seqOfText.get(t));
      for (let i = 1; i < ordered.length; i++) assert.ok(ordered[i] > ordered[i - 1], 'sent order kept');
      assert.equal(await bob.page.getByTestId('gap').count(), 0, 'nothing reported missing');
      assert.equal(await bob.page.locator('[data-testid="status"]').getAttribute('data-state'), 'connected');
    });
  });

  // protocol.md, `join`: a `since` above the room's `seq` means the room started afresh
  // (here: its node kept its room logs in memory and restarted while Bob was away), so
  // its seqs are being handed out again. The page must drop its old messages rather
  // than skip the new ones as duplicates. (A room that merely retires keeps its
  // history in the log: only a node that lost its log starts a room afresh.)
  it('reconnect to a room that started afresh: new messages are not taken for old ones', { timeout: TEST_TIMEOUT_MS }, async () => {
    const forgetful = { HUBBUB_STORAGE__ENGINE: 'memory' };
    let retiring = await startNode(forgetful);
    const room = `brief-${Date.now().toString(36)}`;
    await withUsers(['Alice', 'Bob'], async (alice, bob) => {
      const join = async (u) => {
        await u.page.getByTestId('room-input').fill(room);
        await u.page.getByTestId('join-button').click();
        await u.page.locator(`[data-testid="rooms"] li[data-room="${room}"].active:not(.pending)`).waitFor();
      };
      // Bob alone in the room: seqs 1..3.
      await join(bob);
      const old = ['old #1', 'old #2', 'old #3'].map(uniq);
      for (const text of old) {
        await sendViaUi(bob.page, text);
        await seqOf(bob.page, text);
      }

      // Bob drops off; the node restarts on the same address with nothing.
      await goOffline(bob);
      await alice.page.locator(memberSelector(bob.userId)).waitFor({ state: 'detached' });
      await stopNode(retiring);
      retiring = await startNode({ ...forgetful, HUBBUB_NODE__HTTP_ADDR: retiring.addr });
      await connected(alice.page);

      // Alice finds it new, and sends two messages: seqs 1 and 2 again, below Bob's 3.
      await join(alice);
      assert.equal(await alice.page.evaluate((r) => window.hubbub.rooms[r].lastSeq, room), 0,
        'precondition: the room started afresh (it had retired before Alice joined)');
      const fresh = ['new #1', 'new #2'].map(uniq);
      for (const text of fresh) {
        await sendViaUi(alice.page, text);
        await seqOf(alice.page, text);
      }

      // Bob returns: he must show the new messages, not his stale ones.
      await bob.context.setOffline(false);
      await connected(bob.page);
      await bob.page.waitForFunction((r) => window.hubbub.rooms[r]?.joined === true, room, { timeout: WAIT_MS });
      for (const text of fresh) await seqOf(bob.page, text);
      for (const text of old) assert.equal(await messageLocator(bob.page, text).count(), 0, 'old message dropped');
      assert.equal(await bob.page.getByTestId('gap').count(), 1, 'Bob is told that messages were missed');

      // And live messages that reuse his old seqs are shown too.
      const live = ['new #3', 'new #4'].map(uniq);
      for (const text of live) {
        await sendViaUi(alice.page, text);
        await seqOf(alice.page, text);
        await seqOf(bob.page, text);
      }
      const atAlice = await shownMessages(alice.page);
      assert.deepEqual(atAlice.map(([, body]) => body), [...fresh, ...live]);
      assert.deepEqual(await shownMessages(bob.page), atAlice, 'Bob shows what Alice shows');
    }, retiring);
    await stopNode(retiring);
  });

  it('a reload keeps rooms, name and direct messages; a direct message to oneself shows once', { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = `kept-${Date.now().toString(36)}`;
    await withUsers(['Alice', 'Bob'], async (alice, bob) => {
      await alice.page.getByTestId('room-input').fill(room);
      await alice.page.getByTestId('join-button').click();
      await alice.page.locator(`[data-testid="rooms"] li[data-room="${room}"][data-state="joined"]`).waitFor();
      // A direct message to Bob, from his entry in the member list.
      await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"]').click();
      await alice.page.locator(memberSelector(bob.userId)).click();
      const dm = uniq('psst');
      await sendViaUi(alice.page, dm);
      await messageLocator(alice.page, dm).waitFor();
      await bob.page.locator(`[data-testid="conversations"] li[data-peer="${alice.userId}"]`).waitFor();
      // And one to herself: shown once, though every connection of hers gets a copy.
      await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"]').click();
      await alice.page.locator(memberSelector(alice.userId)).click();
      const note = uniq('note to self');
      await sendViaUi(alice.page, note);
      await messageLocator(alice.page, note).waitFor();
      await alice.page.waitForFunction(() => window.hubbub.state === 'connected');
      assert.equal(await messageLocator(alice.page, note).count(), 1, 'a direct message to oneself shows once');

      await alice.page.reload();
      await landed(alice);
      await alice.page.waitForFunction((r) => window.hubbub.rooms[r]?.joined === true, room, { timeout: WAIT_MS });
      assert.deepEqual(
        await alice.page.locator('[data-testid="rooms"] li').evaluateAll((ns) => ns.map((n) => n.dataset.room)),
        ['lobby', room], 'both rooms are back');
      assert.equal(await alice.page.getByTestId('name-input').inputValue(), 'Alice');
      assert.equal(await alice.page.getByTestId('name-prompt').isVisible(), false, 'no name prompt for a returning user');
      await alice.page.locator(`[data-testid="conversations"] li[data-peer="${bob.userId}"]`).click();
      await messageLocator(alice.page, dm).waitFor();
      await alice.page.locator(`[data-testid="conversations"] li[data-peer="${alice.userId}"]`).click();
      assert.equal(await messageLocator(alice.page, note).count(), 1);
    });
  });

  it('offline: a banner, a disabled input, and a room list that does not claim to be joined', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withUsers(['Alice'], async (alice) => {
      const banner = alice.page.getByTestId('offline-banner');
      assert.equal(await banner.isVisible(), false);
      await goOffline(alice);
      await banner.waitFor();
      assert.match(await banner.textContent(), /offline: retrying in \d+s/);
      assert.match(await alice.page.getByTestId('status').textContent(), /^Offline \(retry in \d+s\)$/);
      assert.equal(await alice.page.getByTestId('message-input').isDisabled(), true, 'the input is disabled');
      assert.notEqual(await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"]').getAttribute('data-state'), 'joined');
      await alice.page.getByTestId('members-stale').waitFor();
      await alice.context.setOffline(false);
      await alice.page.getByTestId('retry-now').click().catch(() => { /* already back */ });
      await connected(alice.page);
      await banner.waitFor({ state: 'hidden' });
      await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"][data-state="joined"]').waitFor();
      assert.equal(await alice.page.getByTestId('message-input').isDisabled(), false);
    });
  });

  it('a second tab: ×2 in the others\' member list, back when it closes; joins and leaves in the timeline', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withUsers(['Alice', 'Bob'], async (alice, bob) => {
      await alice.page.locator('[data-testid="system"]', { hasText: 'Bob joined' }).last().waitFor();
      const tab = await bob.context.newPage(); // same browser, same user
      await tab.goto(`http://${node.addr}/`);
      await connected(tab);
      await waitForText(alice.page, `${memberSelector(bob.userId)} .conns`, '×2');
      await tab.close();
      await alice.page.waitForFunction((sel) => !document.querySelector(sel), `${memberSelector(bob.userId)} .conns`, { timeout: WAIT_MS });
      assert.equal(await alice.page.locator(memberSelector(bob.userId)).count(), 1, 'still a member');
      await bob.context.close();
      await alice.page.locator(memberSelector(bob.userId)).waitFor({ state: 'detached' });
      await alice.page.locator('[data-testid="system"]', { hasText: 'Bob left' }).last().waitFor();
    });
  });

  it('at phone width the message box is on screen', { timeout: TEST_TIMEOUT_MS }, async () => {
    const phone = await openUser('Pat', node, { viewport: { width: 375, height: 667 } });
    try {
      for (const id of ['message-input', 'send-button', 'status']) {
        const box = await phone.page.getByTestId(id).boundingBox();
        assert.ok(box && box.y >= 0 && box.y + box.height <= 667 && box.x + box.width <= 375, `${id} within the screen: ${JSON.stringify(box)}`);
      }
      const text = uniq('from a phone');
      await sendViaUi(phone.page, text);
      await seqOf(phone.page, text);
      await phone.page.screenshot({ path: '/tmp/hubbub-chat-phone.png' });
    } finally {
      await phone.context.close();
    }
  });
});

// The scenario: two browsers on a three-node cluster; Alice's node is killed
// with -9 and restarted while her page retries. It must end with her page rejoined and
// receiving Bob's messages, with no action of hers; and while it is not rejoined, the
// room must not be shown joined.
describe('chat page on a cluster', () => {
  let cluster = null;
  before(async () => { cluster = await startCluster(); });
  after(async () => { await cluster?.stop(); });

  it('kill -9 and restart of Alice\'s node: her page rejoins and receives Bob\'s messages by itself', { timeout: 3 * TEST_TIMEOUT_MS }, async () => {
    const { a, b } = cluster.nodes;
    const users = [];
    try {
      const alice = await openUser('Alice', a);
      users.push(alice);
      const bob = await openUser('Bob', b);
      users.push(bob);
      await waitForText(alice.page, `${memberSelector(bob.userId)} .member-name`, 'Bob');
      const before = uniq('before the kill');
      await sendViaUi(bob.page, before);
      await seqOf(alice.page, before);

      // Every state the lobby entry shows from now on, recorded in the page.
      await alice.page.evaluate(() => {
        window.lobbyStates = [];
        const note = () => {
          const li = document.querySelector('[data-testid="rooms"] li[data-room="lobby"]');
          const s = li?.dataset.state;
          const joined = window.hubbub.rooms.lobby?.joined === true;
          if (s && s !== window.lobbyStates.at(-1)?.shown) window.lobbyStates.push({ shown: s, joined });
          if (s === 'joined' && !joined) window.lobbyStates.push({ shown: s, joined, lie: true });
        };
        new MutationObserver(note).observe(document.getElementById('rooms'), { subtree: true, childList: true, attributes: true });
        note();
      });

      await a.kill9();
      await alice.page.locator('[data-testid="status"]:not([data-state="connected"])').waitFor();
      await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"]:not([data-state="joined"])').waitFor();
      const during = uniq('while a is down');
      await sendViaUi(bob.page, during);
      await seqOf(bob.page, during);
      const restarted = Date.now();
      await a.start();

      // No action of Alice's: the page reconnects (the node refuses upgrades until it has
      // its quorum), rejoins with since, and gets what she missed.
      await alice.page.locator('[data-testid="rooms"] li[data-room="lobby"][data-state="joined"]').waitFor({ timeout: 60_000 });
      console.log(`[cluster page] lobby joined again ${Date.now() - restarted} ms after node a was started again`);
      await connected(alice.page);
      await seqOf(alice.page, during);
      const after = uniq('after the restart');
      await sendViaUi(bob.page, after);
      await seqOf(alice.page, after);
      const states = await alice.page.evaluate(() => window.lobbyStates);
      assert.ok(!states.some((s) => s.lie), `never shown joined while not joined: ${JSON.stringify(states)}`);
      assert.ok(states.some((s) => s.shown !== 'joined'), `the lobby was shown not joined meanwhile: ${JSON.stringify(states)}`);
      // Exactly once, in order, the same as Bob's.
      const atAlice = await shownMessages(alice.page);
      const atBob = await shownMessages(bob.page);
      for (const text of [before, during, after]) {
        assert.equal(atAlice.filter(([, body]) => body === text).length, 1, `"${text}" once at Alice`);
      }
      const seqs = atAlice.map(([seq]) => seq);
      for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `Alice's seqs increase: ${seqs}`);
      assert.deepEqual(atAlice.slice(-3), atBob.slice(-3));
      for (const u of users) assert.deepEqual(u.errors.map(String), [], `no uncaught errors in ${u.label}'s page`);
    } catch (e) {
      for (const u of users) await u.page.screenshot({ path: `/tmp/hubbub-chat-failure-${u.label}.png`, fullPage: true }).catch(() => {});
      throw e;
    } finally {
      for (const u of users) await u.context.close().catch(() => {});
    }
  });

  it('with ?nodes= the page fails over to another node while its own is down', { timeout: 3 * TEST_TIMEOUT_MS }, async () => {
    const { a, b, c } = cluster.nodes;
    await a.waitReady();
    const users = [];
    try {
      const carol = await openUser('Carol', a, { query: `?nodes=${b.addr},${c.addr}` });
      users.push(carol);
      const bob = await openUser('Bob', b);
      users.push(bob);
      await waitForText(carol.page, '[data-testid="status"]', 'Connected to node a');
      await a.kill9();
      await carol.page.waitForFunction(() => /^Connected to node [bc]$/.test(document.querySelector('[data-testid="status"]').textContent), null, { timeout: 60_000 });
      await carol.page.locator('[data-testid="rooms"] li[data-room="lobby"][data-state="joined"]').waitFor();
      const text = uniq('to carol on another node');
      await sendViaUi(bob.page, text);
      await seqOf(carol.page, text);
      for (const u of users) assert.deepEqual(u.errors.map(String), [], `no uncaught errors in ${u.label}'s page`);
    } finally {
      for (const u of users) await u.context.close().catch(() => {});
      await a.start();
    }
  });
});
