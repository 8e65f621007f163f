"""Unit tests of the Python client that need no broker: framing against the
byte examples of docs/protocol.md, the trust rule, and a fake server on a
socket pair."""

import json
import os
import re
import socket
import struct
import tempfile
import threading
import unittest
from unittest import mock

import warden_client as wc

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "protocol.md")
# Shared with the Rust client's tests (crates/warden-sys/src/linux/login_defs.rs).
VECTORS = os.path.join(os.path.dirname(__file__), "..", "testdata", "login_defs_vectors.json")


def doc_examples():
    text = open(DOC, encoding="utf-8").read()
    pairs = re.findall(r"```json\n(.*?)\n```\s*```hex\n(.*?)\n```", text, re.S)
    return [(j, bytes.fromhex(h.replace("\n", " "))) for j, h in pairs]


class InvitationTest(unittest.TestCase):
    def doc_token(self):
        text = open(DOC, encoding="utf-8").read()
        return next(l for l in text.splitlines() if l.startswith("wdn_inv_"))

    def test_the_documented_token_is_accepted_and_typos_are_not(self):
        t = self.doc_token()
        self.assertEqual(wc.check_invitation(t + "\n"), t)
        bad = {
            "x": "does not start",
            t[:-1]: "75 characters",
            t.replace("wdn_inv_1", "wdn_inv_2"): "version",
            t[:30] + ("b" if t[30] == "a" else "a") + t[31:]: "checksum",
            t[:20] + "1" + t[21:]: "character",
        }
        for token, why in bad.items():
            with self.assertRaises(ValueError) as cm:
                wc.check_invitation(token)
            msg = str(cm.exception)
            self.assertTrue(msg.startswith("malformed invitation"), msg)
            self.assertIn(why, msg)
            self.assertNotIn(t[17:40], msg)

    def test_the_environment_helper_removes_the_variable(self):
        t = self.doc_token()
        with mock.patch.dict(os.environ, {wc.INVITATION_ENV: t}):
            self.assertEqual(wc.take_invitation_from_env(), t)
            self.assertNotIn(wc.INVITATION_ENV, os.environ)
            self.assertIsNone(wc.take_invitation_from_env())


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

    def test_login_defs_vectors(self):
        with open(VECTORS, encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        self.assertGreaterEqual(len(cases), 20)
        for case in cases:
            name = case["name"]
            if case["login_defs"] is None:
                limit = wc.read_system_uid_max("/nonexistent/warden/login.defs")
            else:
                limit = wc.system_uid_max(case["login_defs"])
            self.assertEqual(limit, case["sys_uid_max"], name)
            for uid in case["trusted"]:
                self.assertTrue(wc.is_system_uid(uid, limit), f"{name}: uid {uid}")
            for uid in case["untrusted"]:
                self.assertFalse(wc.is_system_uid(uid, limit), f"{name}: uid {uid}")

    def test_unreadable_login_defs_means_the_default(self):
        self.assertEqual(wc.read_system_uid_max("/"), 999)  # a directory: EISDIR
        self.assertEqual(wc.read_system_uid_max("/nonexistent/login.defs"), 999)

    def test_numbers_read_like_strtoul_base_0(self):
        for text, want in [
            ("999", 999), ("0x3e7", 999), ("0X3E7", 999), ("01747", 999), ("0", 0),
            ("00", 0), ("+999", 999), ("\v999", 999), ("4294967295", 2**32 - 1),
            ("4294967296", None), ("-1", None), ("08", None), ("0x", None), ("0xg", None),
            ("++1", None), ("+-1", None), ("1_000", None), ("999 ", None), ("", None),
            ("\u0663", None), (" 1", 1),
        ]:
            self.assertEqual(wc._getulong(text), want, repr(text))

    def test_directory_owner_needs_a_system_account(self):
        # Stand in for a root-controlled directory owned by `owner` (making
        # one needs root); login.defs decides whether the owner is trusted.
        with tempfile.NamedTemporaryFile("w", suffix=".defs") as defs:
            defs.write("UID_MIN 1000\n")
            defs.flush()
            for owner, trusted in [(996, True), (999, True), (1000, False), (1002, False), (65534, False)]:
                if owner == os.geteuid():
                    continue
                with mock.patch.object(wc, "_root_controlled_owner", return_value=owner):
                    uids = wc.trusted_uids("/run/x/warden.sock", login_defs=defs.name)
                    self.assertEqual(owner in uids, trusted, f"owner {owner}: {uids}")
                    self.assertEqual(wc.trusted_uids("@x", login_defs=defs.name), {0, os.geteuid()})
                    self.assertEqual(wc.trusted_uids("/run/x/warden.sock", 4242, defs.name), {4242})


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

    def _fake(self, tag, welcome_version, after_hello):
        """A fake broker: answers the hello with a welcome of
        welcome_version, then sends the frames after_hello(hello)."""
        name = "@warden-py-%s-%d" % (tag, os.getpid())
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("\0" + name[1:])
        srv.listen(1)
        seen = []

        def serve():
            conn, _ = srv.accept()
            buf = b""
            while not seen:
                buf += conn.recv(4096)
                got, buf = wc.decode_frames(buf)
                seen.extend(got)
            conn.sendall(wc.encode_frame({"kind": "welcome", "version": welcome_version, "server": "fake/0",
                "identity": {"uid": 1, "gid": 1, "groups": [], "pid": 2},
                "limits": {"max_frame": 4096, "max_in_flight": 4, "call_timeout_ms": 1000}}))
            for env in after_hello(seen[0]):
                conn.sendall(wc.encode_frame(env))
            conn.recv(1)
            conn.close()

        t = threading.Thread(target=serve)
        t.start()
        return name, srv, t, seen

    def test_any_version_up_to_2_pow_64_minus_1(self):
        for asked in (1, 2, 2**32, 2**64 - 1):
            name, srv, t, seen = self._fake("ver", 1, lambda h: [])
            c = wc.Client(name, version=asked)
            self.assertEqual(seen[0]["version"], asked)
            self.assertEqual(c.version, 1)
            c.close()
            t.join()
            srv.close()
        for bad in (0, -1, 2**64, 1.0, True, "1"):
            with self.assertRaises(ValueError):
                wc.Client("@unused", version=bad)

    def test_a_welcome_above_the_asked_version_is_refused(self):
        name, srv, t, _ = self._fake("ver2", 2, lambda h: [])
        with self.assertRaises(wc.ProtocolError):
            wc.Client(name)
        t.join()
        srv.close()

    def test_missed_and_lagged_add_up(self):
        frames = [
            {"kind": "event", "topic": "t.x", "data": 1},
            {"kind": "event", "topic": "t.x", "data": 2, "missed": 3},
            {"kind": "lagged", "missed": 4},
            {"kind": "error", "error": {"code": "bad_request", "message": "not a close"}},
            {"kind": "event", "topic": "t.x", "data": 3},
        ]
        name, srv, t, _ = self._fake("missed", 1, lambda h: frames)
        c = wc.Client(name)
        got = [c.next_event() for _ in range(4)]
        self.assertEqual([e["kind"] for e in got], ["event", "event", "lagged", "event"])
        self.assertEqual(c.missed_total, 7)
        self.assertEqual(c.last_error["message"], "not a close")
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
