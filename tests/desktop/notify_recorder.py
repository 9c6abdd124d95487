#!/usr/bin/python3
"""A tiny org.freedesktop.Notifications server for tests: records every Notify call.

    /usr/bin/python3 notify_recorder.py OUT.jsonl

Each Notify(app, replaces_id, icon, summary, body, actions, hints, timeout) is
appended to OUT.jsonl as one JSON object. Runs on the session bus of its
environment (the tests' private bus) until killed. Needs python3-dbus + python3-gi.
"""
import json
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"


class Server(dbus.service.Object):
    def __init__(self, bus, out):
        self.out = out
        self.next_id = 0
        super().__init__(bus, PATH)

    @dbus.service.method(NAME, in_signature="", out_signature="as")
    def GetCapabilities(self):
        return ["body", "body-markup", "actions"]

    @dbus.service.method(NAME, in_signature="", out_signature="ssss")
    def GetServerInformation(self):
        return ("tokenwarden-test-recorder", "tokenwarden", "1.0", "1.2")

    @dbus.service.method(NAME, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces_id, icon, summary, body, actions, hints, timeout):
        self.next_id += 1
        rec = {
            "id": self.next_id,
            "app": str(app),
            "summary": str(summary),
            "body": str(body),
            "actions": [str(a) for a in actions],
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return dbus.UInt32(self.next_id)

    @dbus.service.method(NAME, in_signature="u", out_signature="")
    def CloseNotification(self, nid):
        self.NotificationClosed(nid, 3)

    @dbus.service.signal(NAME, signature="uu")
    def NotificationClosed(self, nid, reason):
        pass

    @dbus.service.signal(NAME, signature="us")
    def ActionInvoked(self, nid, action):
        pass


def main():
    out = sys.argv[1]
    DBusGMainLoop(set_as_default=True)
    bus = dbus.SessionBus()
    name = dbus.service.BusName(NAME, bus, do_not_queue=True)
    Server(bus, out)
    _ = name
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
