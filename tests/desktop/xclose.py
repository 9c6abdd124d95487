#!/usr/bin/python3
"""Close a window the way a window manager's close button does (WM_DELETE_WINDOW).

    /usr/bin/python3 xclose.py PID close     # ask every top-level window of PID to close
    /usr/bin/python3 xclose.py PID count     # print how many mapped top-level windows PID has

Windows are matched by _NET_WM_PID, of PID or any process it started (the app's
window is a child process of the app). Needs python3-xlib and DISPLAY.
"""
import os
import sys

from Xlib import X, display, protocol


def family(pid):
    """pid and all its descendants, from /proc."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out = {pid}
    grew = True
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in out and p not in out:
                out.add(p)
                grew = True
    return out


def windows(d, pid):
    pids = family(pid)
    atom_pid = d.intern_atom("_NET_WM_PID")
    out = []
    for w in d.screen().root.query_tree().children:
        try:
            prop = w.get_full_property(atom_pid, X.AnyPropertyType)
            if prop and int(prop.value[0]) in pids and w.get_attributes().map_state == X.IsViewable:
                out.append(w)
        except Exception:
            continue
    return out


def main():
    pid, cmd = int(sys.argv[1]), sys.argv[2]
    d = display.Display()
    ws = windows(d, pid)
    if cmd == "count":
        print(len(ws))
        return
    protocols = d.intern_atom("WM_PROTOCOLS")
    delete = d.intern_atom("WM_DELETE_WINDOW")
    for w in ws:
        ev = protocol.event.ClientMessage(window=w, client_type=protocols, data=(32, [delete, X.CurrentTime, 0, 0, 0]))
        w.send_event(ev, event_mask=X.NoEventMask)
    d.flush()
    print(len(ws))


if __name__ == "__main__":
    main()
