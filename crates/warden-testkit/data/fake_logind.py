#!/usr/bin/python3
"""A fake org.freedesktop.login1 on a private bus, for tests.

It speaks the real interface, as much of it as the broker reads:
Manager.ListSessions -> a(susso), GetSession(s) -> o, GetSessionByPID(u)
-> o (or org.freedesktop.login1.NoSessionForPID), GetUser(u) -> o (or
org.freedesktop.login1.NoSuchUser), the signals SessionNew(so) and
SessionRemoved(so); sessions' org.freedesktop.login1.Session properties
(Id, User (uo), Name, Class, State, Type, Leader) and users'
org.freedesktop.login1.User properties (UID, GID, Name, RuntimePath,
State), through org.freedesktop.DBus.Properties (Get, GetAll, and
PropertiesChanged when a session's State changes).

The test drives it with lines on stdin, each answered "ok" (or "error
..."), after "ready" once the name is owned:
  add ID UID NAME CLASS [RUNTIME_PATH [PID...]]
  state ID STATE
  remove ID
Usage: fake_logind.py BUS_ADDRESS
"""
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

BASE = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"
USER = "org.freedesktop.login1.User"
PROPS = "org.freedesktop.DBus.Properties"


def esc(s):
    """sd_bus_path_encode: every byte but [A-Za-z0-9] as _XX."""
    return "".join(c if c.isalnum() and c.isascii() else "_%02x" % ord(c) for c in s)


class Props(dbus.service.Object):
    iface = None

    def props(self):
        raise NotImplementedError

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        p = self.props()
        if iface != self.iface or name not in p:
            raise dbus.exceptions.DBusException(
                "no such property", name="org.freedesktop.DBus.Error.UnknownProperty")
        return p[name]

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        return self.props() if iface == self.iface else {}

    @dbus.service.signal(PROPS, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass


class User(Props):
    iface = USER

    def __init__(self, bus, uid, name, runtime):
        self.path = "%s/user/_%d" % (BASE, uid)
        super().__init__(bus, self.path)
        self.uid, self.name, self.runtime = uid, name, runtime

    def props(self):
        return {"UID": dbus.UInt32(self.uid), "GID": dbus.UInt32(self.uid),
                "Name": self.name, "RuntimePath": self.runtime, "State": "active"}


class Session(Props):
    iface = SESSION

    def __init__(self, bus, sid, user, klass, pids):
        self.path = "%s/session/%s" % (BASE, esc(sid))
        super().__init__(bus, self.path)
        self.sid, self.user, self.klass, self.pids = sid, user, klass, pids
        self.state = "active"

    def props(self):
        return {"Id": self.sid,
                "User": dbus.Struct((dbus.UInt32(self.user.uid), dbus.ObjectPath(self.user.path))),
                "Name": self.user.name, "Class": self.klass, "State": self.state,
                "Type": "tty", "Leader": dbus.UInt32(self.pids[0] if self.pids else 0)}


class Manager(dbus.service.Object):
    def __init__(self, bus):
        super().__init__(bus, BASE)
        self.bus = bus
        self.sessions = {}
        self.users = {}

    @dbus.service.method(MANAGER, out_signature="a(susso)")
    def ListSessions(self):
        return [(s.sid, dbus.UInt32(s.user.uid), s.user.name, "", dbus.ObjectPath(s.path))
                for s in self.sessions.values()]

    @dbus.service.method(MANAGER, in_signature="s", out_signature="o")
    def GetSession(self, sid):
        if sid not in self.sessions:
            raise dbus.exceptions.DBusException(
                "No session '%s' known" % sid, name="org.freedesktop.login1.NoSuchSession")
        return dbus.ObjectPath(self.sessions[sid].path)

    @dbus.service.method(MANAGER, in_signature="u", out_signature="o")
    def GetSessionByPID(self, pid):
        for s in self.sessions.values():
            if pid in s.pids:
                return dbus.ObjectPath(s.path)
        raise dbus.exceptions.DBusException(
            "PID %d does not belong to any known session" % pid,
            name="org.freedesktop.login1.NoSessionForPID")

    @dbus.service.method(MANAGER, in_signature="u", out_signature="o")
    def GetUser(self, uid):
        if uid not in self.users:
            raise dbus.exceptions.DBusException(
                "User ID %d is not logged in or lingering" % uid,
                name="org.freedesktop.login1.NoSuchUser")
        return dbus.ObjectPath(self.users[uid].path)

    @dbus.service.signal(MANAGER, signature="so")
    def SessionNew(self, sid, path):
        pass

    @dbus.service.signal(MANAGER, signature="so")
    def SessionRemoved(self, sid, path):
        pass

    def command(self, words):
        if words[0] == "add":
            sid, uid, name, klass = words[1], int(words[2]), words[3], words[4]
            runtime = words[5] if len(words) > 5 else "/run/user/%d" % uid
            pids = [int(p) for p in words[6:]]
            if uid not in self.users:
                self.users[uid] = User(self.bus, uid, name, runtime)
            s = Session(self.bus, sid, self.users[uid], klass, pids)
            self.sessions[sid] = s
            self.SessionNew(sid, dbus.ObjectPath(s.path))
        elif words[0] == "state":
            s = self.sessions[words[1]]
            s.state = words[2]
            s.PropertiesChanged(SESSION, {"State": s.state}, [])
        elif words[0] == "remove":
            s = self.sessions.pop(words[1])
            s.remove_from_connection()
            self.SessionRemoved(s.sid, dbus.ObjectPath(s.path))
            if not any(o.user is s.user for o in self.sessions.values()):
                self.users.pop(s.user.uid).remove_from_connection()
        else:
            raise ValueError("unknown command %r" % words[0])


def main():
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(sys.argv[1])
    name = dbus.service.BusName("org.freedesktop.login1", bus)
    manager = Manager(bus)
    loop = GLib.MainLoop()

    def on_line(source, _cond):
        line = sys.stdin.readline()
        if not line:
            loop.quit()
            return False
        words = line.split()
        if words:
            try:
                manager.command(words)
                print("ok", flush=True)
            except Exception as e:  # reported to the test, which fails
                print("error %s" % e, flush=True)
        return True

    GLib.io_add_watch(sys.stdin, GLib.IO_IN | GLib.IO_HUP, on_line)
    print("ready", flush=True)
    loop.run()
    del name


main()
