#!/usr/bin/env python3
"""A Warden client in Python, written only from docs/protocol.md.

Standard library only. Synchronous: each request reads frames until its
answer arrives; events and calls routed to this client (as a provider) that
arrive meanwhile are queued for next_event() / next_call().

    c = Client("/run/warden/warden.sock")   # checks the server's uid first
    print(c.call("warden.whoami"))

Before sending anything, the client checks the uid of the process listening
on the socket (docs/protocol.md, Transport): see trusted_uids().
"""

import argparse
import base64
import collections
import json
import os
import socket
import stat
import struct
import sys
import zlib

PROTOCOL_VERSION = 1
MAX_VERSION = 2**64 - 1  # a hello may ask for any version 1 ..= 2^64-1
DEFAULT_MAX_FRAME = 1024 * 1024
ABSOLUTE_MAX_FRAME = 16 * 1024 * 1024
MAX_REQUEST_ID = 2**53 - 1
EXIT_REMOTE_ERROR = 1
EXIT_CONNECT = 3


class WardenError(Exception):
    """The broker (or a provider) answered with an error."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerIdentityError(Exception):
    """The process listening on the socket runs as an untrusted uid (see
    trusted_uids); nothing was sent to it."""


class ProtocolError(Exception):
    """The peer broke the protocol or closed the connection."""


def encode_frame(envelope, max_frame=DEFAULT_MAX_FRAME):
    """Envelope (dict) -> frame bytes: 4-byte big-endian length + JSON."""
    body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    if not body or len(body) > max_frame:
        raise ValueError(f"frame too large ({len(body)} bytes, max {max_frame})")
    return struct.pack(">I", len(body)) + body


def decode_frames(buf, max_frame=DEFAULT_MAX_FRAME):
    """Splits complete frames off the front of buf.

    Returns (list of envelopes, remaining bytes). Raises ProtocolError on a
    zero or oversized length prefix."""
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        if n == 0 or n > max_frame:
            raise ProtocolError(f"invalid frame length {n} (max {max_frame})")
        if len(buf) < 4 + n:
            break
        out.append(json.loads(buf[4 : 4 + n].decode()))
        buf = buf[4 + n :]
    return out, buf


LOGIN_DEFS = "/etc/login.defs"
DEFAULT_SYS_UID_MAX = 999  # shadow-utils' default UID_MIN (1000), minus 1
NOBODY_UID = 65534  # the overflow uid: never a system account
_NO_UID = 2**32 - 1  # (uid_t) -1
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the C locale


def _getulong(text):
    """A number as shadow-utils' getulong() reads it (strtoul base 0, with
    nothing left over): optional leading white space and "+", then 0x/0X
    and hex digits, 0 and octal digits, or decimal digits. None if it is
    not one; also None for a "-" sign and for values above 2**32 - 1
    (strtoul would wrap them)."""
    s = text.lstrip(_C_SPACE)
    if s.startswith("+"):
        s = s[1:]
    if s[:2] in ("0x", "0X"):
        digits, base, allowed = s[2:], 16, "0123456789abcdefABCDEF"
    elif s.startswith("0") and len(s) > 1:
        digits, base, allowed = s[1:], 8, "01234567"
    else:
        digits, base, allowed = s, 10, "0123456789"
    if not digits or any(c not in allowed for c in digits):
        return None
    value = int(digits, base)
    return value if value <= _NO_UID else None


def _login_defs_values(text):
    """The (name, value) pairs of a login.defs text, split as shadow-utils'
    def_load() splits them: lines end at \n, trailing white space is cut,
    leading spaces/tabs skipped, "#" starts a comment, the name ends at the
    first space or tab (a line with nothing after it is skipped), the
    value starts after spaces, tabs and quotes and ends at the next quote."""
    for line in text.split("\n"):
        line = line.rstrip(_C_SPACE).lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        cut = min((i for i in (line.find(" "), line.find("\t")) if i >= 0), default=-1)
        if cut < 0:
            continue
        value = line[cut + 1 :].lstrip(' "\t')
        yield line[:cut], value.split('"', 1)[0]


def system_uid_max(login_defs_text):
    """The last system-account uid set by the text of a login.defs file:
    SYS_UID_MAX, else UID_MIN - 1 (0 if UID_MIN is 0), else 999. The last
    definition of a key wins, even if it is not a number (the key then
    counts as unset), as in shadow-utils' getdef. Same rule as the Rust
    client (warden_sys::SystemAccounts); both are tested against
    clients/testdata/login_defs_vectors.json."""
    values = {}
    for name, value in _login_defs_values(login_defs_text):
        values[name] = value
    sys_max = _getulong(values["SYS_UID_MAX"]) if "SYS_UID_MAX" in values else None
    if sys_max is not None:
        return sys_max
    uid_min = _getulong(values["UID_MIN"]) if "UID_MIN" in values else None
    if uid_min is not None:
        return max(uid_min - 1, 0)
    return DEFAULT_SYS_UID_MAX


def read_system_uid_max(path=LOGIN_DEFS):
    """system_uid_max() of the file at path; 999 if it is missing or
    unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return DEFAULT_SYS_UID_MAX
    return system_uid_max(data.decode("utf-8", "replace"))


def is_system_uid(uid, sys_uid_max):
    """True if uid is a system account: uid <= sys_uid_max, and never 65534
    (nobody) or 2**32 - 1."""
    return uid <= sys_uid_max and uid not in (NOBODY_UID, _NO_UID)


def _root_controlled_owner(directory):
    """Owner of directory if it and all its ancestors are root-owned and not
    writable by others (the directory itself may belong to anyone)."""
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not os.path.isabs(directory):
        return None
    parent = os.path.dirname(directory)
    while True:
        try:
            pst = os.lstat(parent)
        except OSError:
            return None
        if not stat.S_ISDIR(pst.st_mode) or pst.st_uid != 0 or pst.st_mode & 0o002:
            return None
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    return st.st_uid


def trusted_uids(socket_path, server_uid=None, login_defs=LOGIN_DEFS):
    """The uids a client accepts for the server at socket_path.

    With server_uid: exactly that uid. Otherwise root, your own effective
    uid, and the owner of the socket's directory if that owner is a system
    account (uid <= SYS_UID_MAX from login_defs, never 65534; see
    system_uid_max) and the directory is root-controlled (see
    _root_controlled_owner), as with the warden service account's
    /run/warden. The owner of an ordinary user's directory (/home/USER,
    /run/user/UID) is not trusted: anyone may listen in their own
    directory. Abstract sockets (@name): root and your own uid only."""
    if server_uid is not None:
        return {server_uid}
    trusted = {0, os.geteuid()}
    if not socket_path.startswith("@"):
        owner = _root_controlled_owner(os.path.dirname(os.path.abspath(socket_path)))
        if owner is not None and is_system_uid(owner, read_system_uid_max(login_defs)):
            trusted.add(owner)
    return trusted


INVITATION_ENV = "WARDEN_INVITATION"
_TOKEN_PREFIX = "wdn_inv_"
_TOKEN_LEN = 76
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def _b32_field(text, nbytes):
    """Decodes a lowercase, unpadded base32 field of exactly nbytes, with
    its unused bits zero (one spelling per value), or None."""
    if any(c not in _B32 for c in text):
        return None
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(padded)
    except ValueError:
        return None
    if len(raw) != nbytes or base64.b32encode(raw).decode().lower().rstrip("=") != text:
        return None
    return raw


def check_invitation(token):
    """Checks an invitation token's form (docs/protocol.md, "The token")
    and returns it without surrounding whitespace; raises ValueError
    ("malformed invitation: ...", never containing the token) otherwise.
    A mistyped token is caught here, before anything is sent."""
    t = token.strip(" \t\r\n")
    if not t.startswith(_TOKEN_PREFIX):
        raise ValueError(f"malformed invitation: it does not start with {_TOKEN_PREFIX}")
    if len(t) != _TOKEN_LEN:
        raise ValueError(f"malformed invitation: it has {len(t)} characters, a token has {_TOKEN_LEN}")
    if t[8] != "1":
        raise ValueError("malformed invitation: unknown token version; this client reads version 1")
    fields = [(t[9:17], 5), (t[17:69], 32), (t[69:], 4)]
    decoded = [_b32_field(text, n) for text, n in fields]
    if any(d is None for d in decoded):
        raise ValueError("malformed invitation: a character is not part of a token (a-z, 2-7)")
    if struct.unpack(">I", decoded[2])[0] != zlib.crc32(t[:69].encode()):
        raise ValueError("malformed invitation: the checksum does not match (a mistyped or altered token)")
    return t


def take_invitation_from_env():
    """Removes WARDEN_INVITATION from os.environ (so child processes do
    not inherit it) and returns its checked token, or None. Unlike the Rust
    library's helper it cannot overwrite the bytes of the process's initial
    environment, so /proc/PID/environ keeps showing the token to its own
    user and root: pass the token to Python programs by file
    (Client(..., invitation=open(f).read())) where that matters."""
    token = os.environ.pop(INVITATION_ENV, None)
    return None if token is None else check_invitation(token)


class Client:
    """One connection to the broker.

    Connecting checks the server's uid (SO_PEERCRED) before sending a byte:
    it must be in trusted_uids(socket_path, server_uid) (root, your own uid,
    or a system account owning a root-controlled socket directory; exactly
    server_uid if given), else ServerIdentityError.

    version is the highest protocol version to ask for (any integer from 1
    to 2^64-1); the welcome's version, the one spoken from then on, is the
    lower of it and the broker's (self.version).

    Events dropped for this connection are reported once each, either in an
    event's "missed" or in a "lagged" frame; self.missed_total adds up both
    as frames arrive.

    invitation is an invitation token to join with (docs/protocol.md,
    "Joining by invitation"); its form is checked first (ValueError). If
    the broker accepts it, self.role is the role the connection holds
    (else None); a refused one raises WardenError (bad_request, denied or
    limit_exceeded)."""

    def __init__(self, socket_path, server_uid=None, client_name="warden-client.py/0.1", timeout=30.0,
                 version=PROTOCOL_VERSION, invitation=None):
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
            raise ValueError(f"protocol version must be an integer from 1 to {MAX_VERSION}, not {version!r}")
        if invitation is not None:
            invitation = check_invitation(invitation)
        self.path = socket_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        addr = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self.sock.connect(addr)
        # Check who is listening before sending a single byte.
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        trusted = trusted_uids(socket_path, server_uid)
        if uid not in trusted:
            self.sock.close()
            raise ServerIdentityError(
                f"the server at {socket_path} runs as uid {uid}, which is not trusted "
                f"(trusted: {', '.join('uid %d' % u for u in sorted(trusted))}); "
                f"if this is expected, pin it with --server-uid {uid}"
            )
        self.server_uid = uid
        self.max_frame = DEFAULT_MAX_FRAME
        self._buf = b""
        self._frames = collections.deque()
        self._events = collections.deque()
        self._calls = collections.deque()
        self._next_id = 1
        self.last_error = None
        self.missed_total = 0
        hello = {"kind": "hello", "version": version, "client": client_name}
        if invitation is not None:
            hello["invitation"] = invitation
        self._send(hello)
        first = self._recv()
        if first.get("kind") == "error":
            err = first.get("error", {})
            raise WardenError(err.get("code"), err.get("message"))
        if first.get("kind") != "welcome":
            raise ProtocolError(f"expected welcome, got {first.get('kind')!r}")
        v = first.get("version")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= version:
            raise ProtocolError(f"the welcome's version {v!r} is not an integer from 1 to {version}")
        self.version = v
        self.welcome = first
        self.role = first.get("role")
        self.max_frame = min(int(first["limits"]["max_frame"]), ABSOLUTE_MAX_FRAME)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- framing ----------------------------------------------------------
    def _send(self, envelope):
        self.sock.sendall(encode_frame(envelope, self.max_frame))

    def _recv(self):
        while not self._frames:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError(
                    "the broker closed the connection"
                    + (f": {self.last_error['code']}: {self.last_error['message']}" if self.last_error else "")
                )
            self._buf += chunk
            frames, self._buf = decode_frames(self._buf, self.max_frame)
            self._frames.extend(frames)
        return self._frames.popleft()

    def _new_id(self):
        i = self._next_id
        self._next_id = 1 if i >= MAX_REQUEST_ID else i + 1
        return i

    def _dispatch(self, env):
        """Queues frames that are not answers; returns True if handled."""
        kind = env.get("kind")
        if kind in ("event", "lagged"):
            # Each drop is reported exactly once, in one or the other.
            missed = env.get("missed", 0)
            if isinstance(missed, int) and not isinstance(missed, bool):
                self.missed_total += missed
            self._events.append(env)
        elif kind == "call":
            self._calls.append(env)
        elif kind == "error" and "id" not in env:
            # Not by itself a close (docs/protocol.md, "Which errors close
            # the connection"); kept to explain a close that follows.
            self.last_error = env.get("error")
        elif kind == "cancel":
            # The broker withdrew a call it routed to us; answering it
            # now would be ignored.
            pass
        else:
            return False
        return True

    def _request(self, envelope):
        rid = self._new_id()
        envelope["id"] = rid
        self._send(envelope)
        while True:
            env = self._recv()
            if self._dispatch(env):
                continue
            if env.get("id") != rid:
                continue  # an answer to something we no longer wait for
            if env.get("kind") == "reply":
                return env.get("result")
            if env.get("kind") == "error":
                err = env.get("error", {})
                raise WardenError(err.get("code"), err.get("message"))
            raise ProtocolError(f"unexpected {env.get('kind')!r} answer")

    # -- API --------------------------------------------------------------
    def call(self, method, params=None, target=None):
        """Calls `method`. For a method of a per-session host, `target`
        chooses the instance: {"session": "ID"} or {"uid": N}."""
        env = {"kind": "call", "method": method}
        if params is not None:
            env["params"] = params
        if target is not None:
            env["target"] = target
        return self._request(env)

    def status(self):
        """warden.status (administrators by default). Per-method counts are
        under "methods" only for names that resolved to something that
        serves calls; every other call is counted in "unresolved"
        ({"calls", "errors"}). "truncated" is true when the broker cut the
        answer to fit in one frame ("connections" and "method_count" stay
        whole). Each entry of "connection_list" has "id", "uid", "pid",
        "comm", "connected_at_unix_ms" (when it was accepted, ms since the
        Unix epoch), "connected_for_ms" (how long ago that was), "in_flight",
        "calls", "queued_events" and "missed"."""
        return self.call("warden.status")

    def metrics(self):
        """warden.metrics: like status() for "methods", "unresolved" and
        "truncated", plus latency histograms and "queued_bytes_by_uid"."""
        return self.call("warden.metrics")

    def subscribe(self, topic):
        return self._request({"kind": "subscribe", "topic": topic})

    def unsubscribe(self, topic):
        return self._request({"kind": "unsubscribe", "topic": topic})

    def publish(self, topic, data=None):
        env = {"kind": "publish", "topic": topic}
        if data is not None:
            env["data"] = data
        return self._request(env)

    def provide(self, method):
        return self._request({"kind": "provide", "method": method})

    def unprovide(self, method):
        """Stop providing `method` (new calls get unknown_method; calls
        already routed here still take their answers)."""
        return self._request({"kind": "unprovide", "method": method})

    def next_event(self):
        """The next event or lagged notice (blocks). Drops are reported in
        an event's "missed" or in a lagged frame's, never both: add them up
        (or read self.missed_total)."""
        while not self._events:
            env = self._recv()
            if not self._dispatch(env):
                continue
        return self._events.popleft()

    def next_call(self):
        """The next call routed to this provider (blocks)."""
        while not self._calls:
            env = self._recv()
            if not self._dispatch(env):
                continue
        return self._calls.popleft()

    def reply(self, call, result=None, error=None):
        """Answers a routed call: result, or error=(code, message)."""
        if error is not None:
            code, message = error
            self._send({"kind": "error", "id": call["id"], "error": {"code": code, "message": message}})
        else:
            self._send({"kind": "reply", "id": call["id"], "result": result})


def _print(obj):
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description="Talk to the Warden broker (Python client).")
    p.add_argument("--socket", default=os.environ.get("WARDEN_SOCKET", "/run/warden/warden.sock"))
    p.add_argument("--server-uid", type=int, default=None)
    p.add_argument("--invite-file", default=None,
                   help="join with the invitation token in this file (else $WARDEN_INVITATION, removed from the environment)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping")
    sub.add_parser("whoami")
    sub.add_parser("status")
    c = sub.add_parser("call")
    c.add_argument("method")
    c.add_argument("params", nargs="?")
    s = sub.add_parser("subscribe")
    s.add_argument("topic")
    s.add_argument("--count", type=int, default=None)
    pb = sub.add_parser("publish")
    pb.add_argument("topic")
    pb.add_argument("data")
    a = p.parse_args(argv)
    try:
        if a.invite_file is not None:
            with open(a.invite_file, encoding="ascii", errors="replace") as f:
                invitation = f.read()
        else:
            invitation = take_invitation_from_env()
        client = Client(a.socket, a.server_uid, invitation=invitation)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ServerIdentityError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONNECT
    except WardenError as e:
        _print({"error": {"code": e.code, "message": e.message}})
        return EXIT_REMOTE_ERROR
    try:
        if a.cmd == "ping":
            _print(client.call("warden.ping"))
        elif a.cmd == "whoami":
            _print(client.call("warden.whoami"))
        elif a.cmd == "status":
            st = client.status()
            _print(st)
            if st.get("truncated"):
                print("note: the broker cut this answer to fit in one frame", file=sys.stderr)
        elif a.cmd == "call":
            params = json.loads(a.params) if a.params is not None else None
            _print(client.call(a.method, params))
        elif a.cmd == "publish":
            _print(client.publish(a.topic, json.loads(a.data)))
        elif a.cmd == "subscribe":
            client.subscribe(a.topic)
            client.sock.settimeout(None)
            seen = 0
            while a.count is None or seen < a.count:
                ev = client.next_event()
                if ev.get("kind") == "event":
                    seen += 1
                    _print({"topic": ev["topic"], "data": ev.get("data"), "missed": ev.get("missed", 0),
                            "publisher": ev.get("publisher")})
                else:
                    _print({"lagged": ev.get("missed"), "missed_total": client.missed_total})
    except WardenError as e:
        _print({"error": {"code": e.code, "message": e.message}})
        return EXIT_REMOTE_ERROR
    except (OSError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
