"""python-socketio (the second Socket.IO client) against a real hubbub process.

A smaller set than the Node tests (../socketio.test.mjs): both transports, auth in
the CONNECT payload, acks and their error codes, a room shared by two clients, binary
data (bytes) over both transports, an unknown namespace. Run: python -m unittest tests/socketio/python/test_socketio.py
(with the packages of requirements.txt; the node is target/debug/hubbub or
$HUBBUB_BIN). Every wait is a poll with a deadline.
"""

import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time
import unittest

import socketio

ROOT = pathlib.Path(__file__).resolve().parents[3]
HUBBUB_BIN = os.environ.get("HUBBUB_BIN", str(ROOT / "target" / "debug" / "hubbub"))
DEADLINE_S = 30


def until(what, check, deadline_s=DEADLINE_S):
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.02)


class Node:
    """One hubbub process on a free port, its room logs in memory."""

    def __init__(self, extra=""):
        self.dir = tempfile.TemporaryDirectory(prefix="hubbub-py-")
        config = pathlib.Path(self.dir.name) / "node.toml"
        config.write_text(
            '[node]\nname = "py"\nhttp_addr = "127.0.0.1:0"\n\n'
            '[storage]\nengine = "memory"\n\n'
            '[log]\nlevel = "info"\nformat = "json"\n\n'
            "[limits]\nframes_per_second = 0\n\n"
            "[rate_limit]\nmessages_per_minute = 0\nhandshakes_per_ip_per_sec = 0\n\n"
            f'[socketio]\nnamespaces = ["/", "/chat"]\n{extra}'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
        self.proc = subprocess.Popen(
            [HUBBUB_BIN, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.addr = None
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                if found.is_set():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                fields = entry.get("fields", {})
                if fields.get("message", entry.get("message")) == "hubbub is listening":
                    self.addr = fields.get("addr", entry.get("addr"))
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(DEADLINE_S):
            self.stop()
            raise RuntimeError("hubbub did not say it is listening")
        self.url = f"http://{self.addr}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


class Recorder:
    """A client and the events it saw."""

    def __init__(self):
        self.client = socketio.Client(reconnection=False)
        self.seen = {"message": [], "welcome": [], "presence_diff": []}
        for name in self.seen:
            self.client.on(name, self._record(name))

    def _record(self, name):
        def handler(payload):
            self.seen[name].append(payload)

        return handler


class PythonSocketIoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def setUp(self):
        self.clients = []

    def tearDown(self):
        for recorder in self.clients:
            recorder.client.disconnect()

    def connect(self, transports=None, namespace="/", auth=None):
        recorder = Recorder()
        self.clients.append(recorder)
        recorder.client.connect(
            self.node.url,
            transports=transports,
            namespaces=[namespace],
            auth=auth,
            wait_timeout=DEADLINE_S,
        )
        return recorder

    def test_both_transports_share_a_room(self):
        room = f"py-{time.monotonic_ns()}"
        polling = self.connect(transports=["polling"], auth={"user": "pyp", "name": "Py P"})
        websocket = self.connect(transports=["websocket"], auth={"user": "pyw"})
        self.assertEqual(polling.client.transport(), "polling")
        self.assertEqual(websocket.client.transport(), "websocket")
        until("welcome", lambda: polling.seen["welcome"])
        self.assertEqual(polling.seen["welcome"][0]["user"], {"id": "pyp", "name": "Py P"})
        for recorder in (polling, websocket):
            joined = recorder.client.call("join", {"room": room}, timeout=DEADLINE_S)
            self.assertTrue(joined["ok"], joined)
        sent = polling.client.call(
            "publish", {"room": room, "content": "from polling"}, timeout=DEADLINE_S
        )
        self.assertEqual(sent["data"]["seq"], 1)
        websocket.client.call("publish", {"room": room, "content": "from ws"}, timeout=DEADLINE_S)
        for recorder in (polling, websocket):
            until("two messages", lambda r=recorder: len(r.seen["message"]) == 2)
            self.assertEqual(
                [m["content"] for m in recorder.seen["message"]], ["from polling", "from ws"]
            )

    def test_binary_data_arrives_as_bytes(self):
        room = f"pybin-{time.monotonic_ns()}"
        polling = self.connect(transports=["polling"], auth={"user": "pybp"})
        websocket = self.connect(transports=["websocket"], auth={"user": "pybw"})
        for recorder in (polling, websocket):
            joined = recorder.client.call("join", {"room": room}, timeout=DEADLINE_S)
            self.assertTrue(joined["ok"], joined)
        payload = bytes([0, 1, 2, 253, 254, 255])
        sent = websocket.client.call(
            "publish", {"room": room, "data": {"blob": payload}}, timeout=DEADLINE_S
        )
        self.assertTrue(sent["ok"], sent)
        for recorder in (polling, websocket):
            until("the binary message", lambda r=recorder: r.seen["message"])
            self.assertEqual(recorder.seen["message"][0]["data"]["blob"], payload)

    def test_default_transports_upgrade(self):
        recorder = self.connect(auth={"user": "pyu"})
        until("the upgrade to websocket", lambda: recorder.client.transport() == "websocket")
        pong = recorder.client.call("ping", timeout=DEADLINE_S)
        self.assertEqual(pong, {"ok": True})

    def test_failed_requests_are_acks_with_codes(self):
        recorder = self.connect(transports=["websocket"])
        answer = recorder.client.call("publish", {"room": "nowhere", "content": "x"}, timeout=DEADLINE_S)
        self.assertEqual(answer["ok"], False)
        self.assertEqual(answer["error"]["code"], "not_joined")
        answer = recorder.client.call("shout", {}, timeout=DEADLINE_S)
        self.assertEqual(answer["error"]["code"], "unknown_type")

    def test_namespaces(self):
        recorder = self.connect(transports=["websocket"], namespace="/chat", auth={"user": "pyn"})
        joined = recorder.client.call("join", {"room": "r1"}, namespace="/chat", timeout=DEADLINE_S)
        self.assertEqual(joined["data"]["room"], "r1")
        refused = Recorder()
        with self.assertRaises(socketio.exceptions.ConnectionError):
            refused.client.connect(
                self.node.url, transports=["websocket"], namespaces=["/nowhere"], wait_timeout=10
            )


if __name__ == "__main__":
    unittest.main()
