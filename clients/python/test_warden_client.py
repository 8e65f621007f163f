"""Unit tests of the Python client that need no broker: framing against the
byte examples of docs/protocol.md, the trust rule, and a fake server on a
socket pair."""

import json
import os
import re
import socket
import struct
import threading
import unittest

import warden_client as wc

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "protocol.md")


def doc_examples():
    text = open(DOC, encoding="utf-8").read()
    pairs = re.findall(r"```json\n(.*?)\n```\s*```hex\n(.*?)\n```", text, re.S)
    return [(j, bytes.fromhex(h.replace("\n", " "))) for j, h in pairs]


class FramingTest(unittest.TestCase):
    def test_doc_examples_encode_and_decode(self):
        examples = doc_examples()
        self.assertGreaterEqual(len(examples), 6)
        for js, frame in examples:
            env = json.loads(js)
            self.assertEqual(wc.encode_frame(env), frame, js)
            frames, rest = wc.decode_frames(frame)
            self.assertEqual(frames, [env])
            self.assertEqual(rest, b"")

    def test_partial_and_multiple_frames(self):
        a = wc.encode_frame({"kind": "lagged", "missed": 1})
        b = wc.encode_frame({"kind": "cancel", "id": 2})
        frames, rest = wc.decode_frames(a + b[:3])
        self.assertEqual(frames, [{"kind": "lagged", "missed": 1}])
        self.assertEqual(rest, b[:3])

    def test_limits(self):
        with self.assertRaises(wc.ProtocolError):
            wc.decode_frames(struct.pack(">I", 0))
        with self.assertRaises(wc.ProtocolError):
            wc.decode_frames(struct.pack(">I", wc.DEFAULT_MAX_FRAME + 1))
        with self.assertRaises(ValueError):
            wc.encode_frame({"kind": "call", "id": 1, "method": "a", "params": "x" * 100}, max_frame=50)


class TrustTest(unittest.TestCase):
    def test_default_and_pinned(self):
        me = os.geteuid()
        self.assertIn(0, wc.trusted_uids("@x"))
        self.assertIn(me, wc.trusted_uids("@x"))
        self.assertEqual(wc.trusted_uids("@x", server_uid=4242), {4242})
        # /tmp is writable by others: its owner (root) is trusted anyway,
        # but nothing under it adds an owner.
        self.assertIsNone(wc._root_controlled_owner("/tmp/does-not-matter"))


class FakeServerTest(unittest.TestCase):
    def test_call_against_a_fake_broker(self):
        name = "@warden-py-test-%d" % os.getpid()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("\0" + name[1:])
        srv.listen(1)

        def serve():
            conn, _ = srv.accept()
            buf = b""
            frames = []
            while len(frames) < 2:
                buf += conn.recv(4096)
                got, buf = wc.decode_frames(buf)
                frames.extend(got)
                if frames and frames[0]["kind"] == "hello" and len(frames) == 1:
                    conn.sendall(wc.encode_frame({"kind": "welcome", "version": 1, "server": "fake/0",
                        "identity": {"uid": 1, "gid": 1, "groups": [], "pid": 2},
                        "limits": {"max_frame": 4096, "max_in_flight": 4, "call_timeout_ms": 1000}}))
            call = frames[1]
            conn.sendall(wc.encode_frame({"kind": "event", "topic": "t.x", "data": 5}))
            conn.sendall(wc.encode_frame({"kind": "error", "id": call["id"],
                                          "error": {"code": "denied", "message": "no"}}))
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        c = wc.Client(name)
        self.assertEqual(c.max_frame, 4096)
        with self.assertRaises(wc.WardenError) as ctx:
            c.call("warden.status")
        self.assertEqual(ctx.exception.code, "denied")
        self.assertEqual(c.next_event()["data"], 5)
        c.close()
        t.join()
        srv.close()

    def test_untrusted_server_gets_nothing(self):
        name = "@warden-py-test2-%d" % os.getpid()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("\0" + name[1:])
        srv.listen(1)
        with self.assertRaises(wc.ServerIdentityError):
            wc.Client(name, server_uid=os.geteuid() + 1)
        conn, _ = srv.accept()
        conn.settimeout(2)
        self.assertEqual(conn.recv(100), b"")
        srv.close()


if __name__ == "__main__":
    unittest.main()
