#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/seeds/TARGET/NAME, from the byte examples
of docs/protocol.md, the embedded default config, the config examples of
docs/config.md and learning records built from src/bpf/learn.h's layout.
Run it from anywhere after one of those changes; the seeds are small
(a few KB per target) and committed. Files named regress-* are inputs that
once crashed a target, kept by hand; this script leaves them alone."""
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEEDS = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def doc_frames():
    doc = open(os.path.join(ROOT, "docs", "protocol.md")).read()
    out = []
    for block in re.findall(r"```hex\n(.*?)```", doc, re.S):
        frame = bytes.fromhex("".join(block.split()))
        (n,) = struct.unpack(">I", frame[:4])
        assert n == len(frame) - 4, "a hex example's length prefix is wrong"
        out.append(frame)
    assert out, "no hex examples in docs/protocol.md"
    return out


def kind_of(frame):
    m = re.match(rb'\{"kind":"([a-z]+)"', frame[4:])
    return m.group(1).decode() if m else "x"


def frame_seeds(frames):
    stream = b"".join(frames)
    # limit byte 0: 1 MiB. style: low 4 bits = number of chunk-size bytes,
    # 0x10 read_space, 0x20 next_frame_ref, 0x40 synthesize, 0x80 big chunks.
    write("frame", "doc-stream-oneshot", bytes([0, 0x00]) + stream)
    write("frame", "doc-stream-bytewise", bytes([0, 0x01, 0]) + stream)
    write("frame", "doc-stream-read-space", bytes([0, 0x33, 5, 0, 199]) + stream)
    # limit byte 29: max 4 bytes, every doc frame is too large.
    write("frame", "too-large", bytes([29, 0x00]) + frames[0])
    write("frame", "empty-frame", bytes([0, 0x00]) + frames[-1] + b"\0\0\0\0")
    write("frame", "partial", bytes([0, 0x11, 3]) + stream[:-7])
    # Synthesized: a 100000-byte frame of "x", a doc frame, a 100-byte one,
    # read in 63 KiB and 7 KiB pieces (bigger than the read size).
    cancel = frames[-1]
    prog = (bytes([1, 0x01, 0x86, 0xA0, ord("x")])
            + bytes([0, len(cancel)]) + cancel
            + bytes([1, 0, 0, 100, ord("{")]))
    write("frame", "synth-large-frame", bytes([0, 0xD2, 62, 6]) + prog)
    # Announces ~1 MiB and sends 100 bytes.
    write("frame", "synth-announce-only", bytes([0, 0x50]) + bytes([2, 0, 0x0F, 0, 0, 0, 100]) + b"\x01" * 100)


def decode_seeds(frames):
    for i, f in enumerate(frames):
        write("decode", f"doc-{i:02}-{kind_of(f)}", bytes([i]) + f)
    write("decode", "doc-all", bytes([63]) + b"".join(frames))
    # Ids the pre-parse scan has to read: escaped key, nested decoys.
    write("decode", "id-escaped-key", b"\x00" + b'{"kind":"cancel","\\u0069d":9}')
    write("decode", "id-nested-decoy", b"\x00" + b'{"kind":"nope","x":{"id":3},"id":4}')


def handshake_seeds(frames):
    n = 0
    for f in frames:
        k = kind_of(f)
        if k in ("hello", "welcome"):
            write("handshake", f"doc-{k}-{n}", f[4:])
            n += 1
    write("handshake", "hello-version-0", b'{"kind":"hello","version":0}')
    write("handshake", "hello-version-max", b'{"kind":"hello","version":18446744073709551615,"client":"x"}')
    write("handshake", "not-a-hello", frames[0][4:])


def invitation_seeds():
    token = "wdn_inv_1dr7fka5jeaqseizeeutcokbjfivsyljof4ydcmrtgq2tmnzyhe5dwpb5hy7qapx53ni"
    write("invitation", "doc-example", token + "\n")
    write("invitation", "doc-example-spaces", "  " + token + " \t")


CONFIG_ROLES = """\
[[role]]
name = "vpn-helper"
description = "may drive the VPN for a while"

[[rule]]
effect = "deny"
actions = ["call"]
names = ["net.vpn.secret"]
roles = ["vpn-helper"]

[[rule]]
effect = "deny"
actions = ["call"]
names = ["net.vpn.secret"]
users = ["alice"]

[[rule]]
actions = ["call", "subscribe"]
names = ["net.**"]
users = ["alice"]

[[rule]]
actions = ["invite"]
names = ["vpn-helper"]
users = ["alice"]
groups = ["netdev"]

[[rule]]
actions = ["call"]
names = ["net.vpn.*"]
roles = ["vpn-helper"]

[invitations]
persist = false
max_ttl_secs = 86400
"""

CONFIG_OVERREACH = """\
[[role]]
name = "wide"

[[role]]
name = "narrow"

[[rule]]
actions = ["call", "subscribe"]
names = ["a.*", "net.vpn.*"]
users = ["alice"]
admins = true

[[rule]]
actions = ["invite"]
names = ["wide", "narrow"]
users = ["alice"]

[[rule]]
actions = ["call"]
names = ["a.**"]
roles = ["wide"]

[[rule]]
actions = ["call"]
names = ["a.b"]
roles = ["narrow"]
"""

CONFIG_HOSTS = """\
[broker]
socket = "/run/warden/test.sock"
socket_mode = "0660"
socket_group = "wtest"
admin_group = "warden-admin"
on_slow_subscriber = "disconnect"

[limits]
max_frame_bytes = 65536
call_timeout_ms = 1000

[learn]
enabled = false

[sessions]
bus = "unix:path=/run/dbus/system_bus_socket"
classes = ["user"]

[[host]]
name = "agent"
scope = "system"
user = "warden-agent"
modules = ["/usr/lib/warden/modules/libwarden_example_echo.so"]
module_dir = "/usr/lib/warden/modules"
env = ["LANG", "TZ"]
restart_delay_ms = 250
restart_max_delay_ms = 30000
crash_limit = 5
crash_window_ms = 60000
stable_after_ms = 10000
stop_timeout_ms = 5000
read_paths = ["/etc/agent"]
write_paths = ["/var/lib/agent"]
deny_syscalls = ["ptrace", "mount"]

[[host]]
name = "desk"
scope = "session"
modules = ["/usr/lib/warden/modules/libwarden_example_echo.so"]

[[rule]]
actions = ["provide", "publish"]
names = ["example.**"]
hosts = ["agent", "desk"]

[[rule]]
actions = ["call"]
names = ["example.echo"]
everyone = true

[[rule]]
actions = ["module", "target"]
names = ["agent", "example.*"]
admins = true
gids = [27]
uids = [1002]
"""


def config_seeds():
    default = open(os.path.join(ROOT, "crates", "warden-policy", "src", "default.toml")).read()
    write("config", "embedded-default", default)
    write("config", "doc-roles", CONFIG_ROLES)
    write("config", "roles-overreach", CONFIG_OVERREACH)
    write("config", "hosts-and-sections", CONFIG_HOSTS)
    write("config", "bad-line-3", '[broker]\nsocket_mode = "0660"\nsocket = "relative"\n')


# struct wl_header, wl_path (src/bpf/learn.h), native endian.
PATH_LEN = 2832


def header(kind, tgid, comm):
    c = comm.encode()[:16]
    return struct.pack("=IIIIQII16s", kind, 7, tgid, tgid + 1, 123456789, 1000, 1000, c)


def path(name=None, dirs=(), dir_state=1, name_state=1):
    b = bytearray(PATH_LEN)
    b[12] = 1
    if name is not None:
        n = name.encode()
        b[16:16 + len(n)] = n
        struct.pack_into("=I", b, 4, len(n) + 1)
        b[13] = name_state
    off = 0
    for d in dirs:
        e = d.encode()
        b[528 + off:528 + off + len(e)] = e
        off += len(e) + 1
    struct.pack_into("=I", b, 8, off)
    b[14] = dir_state
    return bytes(b)


def learn_seeds():
    # Raw mode: byte 0 even, then the record.
    denial = (header(1, 42, "cat") + struct.pack("=qq4QiI", 257, -13, 0, 0, 0, 0, 0, 1)
              + path("../shadow", ["etc", "alice", "home"], 1)
              + path("b", ["deep"], 2))
    assert len(denial) == 5768
    write("learn_record", "raw-denial-openat", b"\0" + denial)
    kill = (header(1, 42, "kill") + struct.pack("=qq4QiI", 62, -1, 99, 9, 0, 0, 99, 0)
            + bytes(PATH_LEN) + bytes(PATH_LEN))
    write("learn_record", "raw-denial-kill", b"\0" + kill)
    write("learn_record", "raw-fork", b"\0" + header(2, 10, "sh") + struct.pack("=II", 11, 0))
    write("learn_record", "raw-exit", b"\0" + header(4, 10, "sh") + struct.pack("=iI", 256, 0))
    write("learn_record", "raw-left", b"\0" + header(5, 10, "su") + struct.pack("=II", 1, 0))
    exec_ = header(3, 10, "ls") + path("/usr/bin/ls", [], 0)
    write("learn_record", "raw-exec", b"\0" + exec_)
    access = header(6, 10, "ls") + struct.pack("=qII", 257, 1, 0) + path(None, ["passwd", "etc"], 1)
    assert len(access) == 2896
    write("learn_record", "raw-access", b"\0" + access)
    # Patched mode: byte 0 odd, length selector (4: denial), kind, then
    # patches (offset hi, lo, n, bytes).
    def patch(off, data):
        return struct.pack(">HB", off, len(data)) + data
    p = (bytes([1, 4, 1])
         + patch(48, struct.pack("=qq", 83, -1))
         + patch(104 + 4, struct.pack("=IIBBB", 8, 11, 1, 1, 3))
         + patch(104 + 16, b"./sub/x\0")
         + patch(104 + 528, b"work\0alice\0"))
    write("learn_record", "patched-denial-detached", p)
    p = bytes([1, 3, 6]) + patch(64 + 4, struct.pack("=I", 10)) + patch(64 + 12, b"\x01\x04") + patch(64 + 16, b"@abstract\0")
    write("learn_record", "patched-access-abstract", p)


def main():
    frames = doc_frames()
    frame_seeds(frames)
    decode_seeds(frames)
    handshake_seeds(frames)
    invitation_seeds()
    config_seeds()
    learn_seeds()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(SEEDS) for f in fs)
    print(f"seeds: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
