#!/usr/bin/python3
"""Stands in for logind on a private system bus (logind itself needs systemd as PID 1,
which a test machine does not run): emits org.freedesktop.login1.Manager.PrepareForSleep
(true, then false) on /org/freedesktop/login1, as logind does around a suspend.

Usage: logind_signal.py BUS_ADDRESS own|foreign
  own      owns org.freedesktop.login1 first, as logind does;
  foreign  emits the same signals without owning the name (any other program).
Prints "sent" once both signals are on the bus.
"""
import sys

import dbus
import dbus.lowlevel

address, who = sys.argv[1], sys.argv[2]
bus = dbus.bus.BusConnection(address)
if who == "own":
    got = bus.request_name("org.freedesktop.login1", dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
    assert got == dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER, got
for going_to_sleep in (True, False):
    msg = dbus.lowlevel.SignalMessage(
        "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "PrepareForSleep"
    )
    msg.append(dbus.Boolean(going_to_sleep))
    bus.send_message(msg)
bus.flush()
# A round trip to the bus daemon: everything sent before it has been dispatched.
bus.get_unique_name()
dbus.Interface(
    bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"), "org.freedesktop.DBus"
).GetId()
print("sent")
