#!/usr/bin/python3
"""Print the text on the CLIPBOARD selection (what Ctrl+V would paste), the way
another application on the same X display would receive it.

    DISPLAY=:N /usr/bin/python3 clipboard.py

Exits 1 when the clipboard holds no text. Needs python3-gi with GTK 3.
"""
import sys

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk, Gtk  # noqa: E402


def main():
    text = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD).wait_for_text()
    if text is None:
        sys.exit(1)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
