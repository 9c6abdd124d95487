#!/usr/bin/python3
"""Read and click a tray menu over D-Bus (StatusNotifierItem + com.canonical.dbusmenu).

    /usr/bin/python3 tray.py PID layout          # prints the menu as JSON: [{id, label, enabled}]
    /usr/bin/python3 tray.py PID click LABEL     # sends Event(id, "clicked") to the item

PID is the app's process id: its connection on the session bus is found by
GetConnectionUnixProcessID, then the Ayatana item under /org/ayatana/NotificationItem.
"""
import json
import re
import sys

import dbus

MENU_IFACE = "com.canonical.dbusmenu"


def find_menu(bus, pid):
    dbus_obj = bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
    d = dbus.Interface(dbus_obj, "org.freedesktop.DBus")
    for name in d.ListNames():
        if not name.startswith(":"):
            continue
        try:
            if int(d.GetConnectionUnixProcessID(name)) != pid:
                continue
            # Short timeout: some of the app's connections (e.g. one waiting for a
            # notification's action) do not answer method calls at all.
            root = bus.get_object(name, "/org/ayatana/NotificationItem", introspect=False)
            xml = dbus.Interface(root, "org.freedesktop.DBus.Introspectable").Introspect(timeout=2)
        except dbus.DBusException:
            continue
        for node in re.findall(r'<node name="([^"]+)"', xml):
            return name, f"/org/ayatana/NotificationItem/{node}/Menu"
    return None, None


def items(layout):
    out = []
    _id, props, children = layout
    for c in children:
        cid, cprops, _ = c
        # GTK mnemonics: "_" marks an access key, "__" is a literal underscore.
        label = str(cprops.get("label", "")).replace("__", "\0").replace("_", "").replace("\0", "_")
        if cprops.get("type", "") == "separator":
            continue
        out.append({"id": int(cid), "label": label, "enabled": bool(cprops.get("enabled", True))})
    return out


def main():
    pid = int(sys.argv[1])
    cmd = sys.argv[2]
    bus = dbus.SessionBus()
    name, path = find_menu(bus, pid)
    if not name:
        print(json.dumps({"error": "no tray item for pid %d" % pid}))
        sys.exit(3)
    menu = dbus.Interface(bus.get_object(name, path, introspect=False), MENU_IFACE)
    _rev, layout = menu.GetLayout(0, -1, dbus.Array([], signature="s"), timeout=5)
    its = items(layout)
    if cmd == "layout":
        print(json.dumps(its))
        return
    if cmd == "click":
        label = sys.argv[3]
        for it in its:
            if it["label"] == label:
                menu.Event(dbus.Int32(it["id"]), "clicked", dbus.Int32(0, variant_level=1), dbus.UInt32(0), timeout=5)
                print(json.dumps({"clicked": it}))
                return
        print(json.dumps({"error": "no item labelled %r" % label, "items": its}))
        sys.exit(4)


if __name__ == "__main__":
    main()
