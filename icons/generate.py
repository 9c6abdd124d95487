#!/usr/bin/env python3
"""Draw Tokenwarden's app and tray icons (pure Python, no imaging library).

    python3 icons/generate.py        # rewrites the PNG/ICO/ICNS files next to this script

Tray icons (one per overall state) differ by shape as well as colour, so they stay
legible for colour-blind users and in monochrome panels:
  running          green disc, white check mark
  retrying         amber disc, white circular arrow
  unauthenticated  red disc, white exclamation mark
  idle             grey ring with a dash (nothing configured)
"""
import math
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SS = 4  # supersampling per axis


def png(w, h, rgba_rows):
    raw = b"".join(b"\x00" + bytes(r) for r in rgba_rows)

    def chunk(t, d):
        c = struct.pack(">I", len(d)) + t + d
        return c + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def seg_dist(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def render(size, shade):
    """shade(x, y) in unit coords [0,1) -> (r, g, b, a) or None."""
    rows = []
    for j in range(size):
        row = []
        for i in range(size):
            acc = [0.0, 0.0, 0.0, 0.0]
            for sj in range(SS):
                for si in range(SS):
                    x = (i + (si + 0.5) / SS) / size
                    y = (j + (sj + 0.5) / SS) / size
                    c = shade(x, y)
                    if c:
                        a = c[3] / 255.0
                        acc[0] += c[0] * a
                        acc[1] += c[1] * a
                        acc[2] += c[2] * a
                        acc[3] += a
            n = SS * SS
            a = acc[3] / n
            if a > 0:
                row += [round(acc[0] / n / a), round(acc[1] / n / a), round(acc[2] / n / a), round(a * 255)]
            else:
                row += [0, 0, 0, 0]
        rows.append(row)
    return png(size, size, rows)


WHITE = (255, 255, 255, 255)


def disc(colour, glyph):
    def shade(x, y):
        r = math.hypot(x - 0.5, y - 0.5)
        if r > 0.47:
            return None
        if glyph(x, y):
            return WHITE
        return colour
    return shade


def check(x, y):
    return min(seg_dist(x, y, 0.28, 0.52, 0.44, 0.68), seg_dist(x, y, 0.44, 0.68, 0.73, 0.34)) < 0.065


def arrow(x, y):
    r = math.hypot(x - 0.5, y - 0.5)
    ang = math.degrees(math.atan2(y - 0.5, x - 0.5)) % 360
    ring = abs(r - 0.24) < 0.06 and not (300 < ang < 360)
    # arrow head at the end of the gap (pointing clockwise, at ~300 degrees)
    hx, hy = 0.5 + 0.24 * math.cos(math.radians(300)), 0.5 + 0.24 * math.sin(math.radians(300))
    head = (abs(x - hx) + abs(y - hy - 0.0)) < 0.13 and y < hy + 0.02 + (x - hx) * 0.2 and x < hx + 0.1
    return ring or head


def bang(x, y):
    return seg_dist(x, y, 0.5, 0.24, 0.5, 0.56) < 0.07 or math.hypot(x - 0.5, y - 0.73) < 0.075


def idle(x, y):
    r = math.hypot(x - 0.5, y - 0.5)
    grey = (120, 128, 140, 255)
    if abs(r - 0.40) < 0.065:
        return grey
    if seg_dist(x, y, 0.34, 0.5, 0.66, 0.5) < 0.065:
        return grey
    return None


def app(x, y):
    # a shield: flat top with rounded corners, sides curving to a point
    bg = (37, 99, 235, 255)
    if y < 0.1 or y > 0.93:
        return None
    if y < 0.55:
        half = 0.38
    else:
        t = (y - 0.55) / (0.93 - 0.55)
        half = 0.38 * math.sqrt(max(0.0, 1 - t * t))
    if abs(x - 0.5) > half:
        return None
    if y < 0.16 and abs(x - 0.5) > 0.32 and math.hypot(abs(x - 0.5) - 0.32, y - 0.16) > 0.06:
        return None
    # keyhole
    if math.hypot(x - 0.5, y - 0.42) < 0.09 or (abs(x - 0.5) < 0.04 + (y - 0.42) * 0.12 and 0.42 < y < 0.68):
        return WHITE
    return bg


TRAY = {
    "tray-running": disc((22, 163, 74, 255), check),
    "tray-retrying": disc((217, 119, 6, 255), arrow),
    "tray-unauthenticated": disc((220, 38, 38, 255), bang),
    "tray-idle": idle,
}


def ico(pngs):
    head = struct.pack("<HHH", 0, 1, len(pngs))
    off = 6 + 16 * len(pngs)
    dirs, data = b"", b""
    for size, blob in pngs:
        s = 0 if size >= 256 else size
        dirs += struct.pack("<BBBBHHII", s, s, 0, 0, 1, 32, len(blob), off + len(data))
        data += blob
    return head + dirs + data


def icns(pngs):
    types = {32: b"ic11", 64: b"ic12", 128: b"ic07", 256: b"ic08", 512: b"ic09"}
    body = b"".join(types[s] + struct.pack(">I", len(b) + 8) + b for s, b in pngs if s in types)
    return b"icns" + struct.pack(">I", len(body) + 8) + body


def main():
    out = lambda n, b: open(os.path.join(HERE, n), "wb").write(b)
    for name, shade in TRAY.items():
        out(name + ".png", render(64, shade))
    sizes = {s: render(s, app) for s in (32, 64, 128, 256, 512)}
    out("32x32.png", sizes[32])
    out("128x128.png", sizes[128])
    out("128x128@2x.png", sizes[256])
    out("icon.png", sizes[512])
    out("icon.ico", ico([(s, sizes[s]) for s in (32, 64, 256)]))
    out("icon.icns", icns(sorted(sizes.items())))


if __name__ == "__main__":
    main()
