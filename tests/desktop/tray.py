#!/usr/bin/python3
"""Read and click a tray menu over D-Bus (StatusNotifierItem + com.canonical.dbusmenu).

    /usr/bin/python3 tray.py PID layout          # prints the menu as JSON: [{id, label, enabled}]
    /usr/bin/python3 tray.py PID click LABEL     # sends Event(id, "clicked") to the item

A submenu's items follow it, labelled "SUBMENU › ITEM" (its own line keeps its label).
    /usr/bin/python3 tray.py PID icon            # which icons/tray-*.png the item shows:
                                                 # {"state": "running"|...|null, "file": PATH}

PID is the app's process id: its connection on the session bus is found by
GetConnectionUnixProcessID, then the Ayatana item under /org/ayatana/NotificationItem.
"""
import json
import os
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


def items(layout, prefix=""):
    out = []
    _id, props, children = layout
    for c in children:
        cid, cprops, grandchildren = c
        # GTK mnemonics: "_" marks an access key, "__" is a literal underscore.
        label = str(cprops.get("label", "")).replace("__", "\0").replace("_", "").replace("\0", "_")
        if cprops.get("type", "") == "separator":
            continue
        out.append({"id": int(cid), "label": prefix + label, "enabled": bool(cprops.get("enabled", True))})
        if grandchildren:
            out.extend(items(c, prefix + label + " › "))
    return out


ICONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "icons")


def icon_state(bus, name, menu_path):
    """The state whose icons/tray-STATE.png has the same pixels as the item's icon file."""
    import gi

    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import GdkPixbuf

    item = menu_path[: -len("/Menu")]
    props = dbus.Interface(bus.get_object(name, item, introspect=False), "org.freedesktop.DBus.Properties")
    icon_name = str(props.Get("org.kde.StatusNotifierItem", "IconName", timeout=5))
    theme = str(props.Get("org.kde.StatusNotifierItem", "IconThemePath", timeout=5))
    path = icon_name if os.path.isabs(icon_name) else os.path.join(theme, icon_name)
    if not os.path.splitext(path)[1]:
        path += ".png"

    def pixels(p):
        b = GdkPixbuf.Pixbuf.new_from_file(p)
        return (b.get_width(), b.get_height(), b.get_n_channels(), bytes(b.get_pixels()))

    shown = pixels(path)
    for state in ("idle", "running", "retrying", "unauthenticated"):
        if pixels(os.path.join(ICONS, "tray-%s.png" % state)) == shown:
            return {"state": state, "file": path}
    return {"state": None, "file": path}


def main():
    pid = int(sys.argv[1])
    cmd = sys.argv[2]
    bus = dbus.SessionBus()
    name, path = find_menu(bus, pid)
    if not name:
        print(json.dumps({"error": "no tray item for pid %d" % pid}))
        sys.exit(3)
    if cmd == "icon":
        print(json.dumps(icon_state(bus, name, path)))
        return
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
