"""Render a pathprob ``report.html`` in headless Chromium and check it: images, console, full-page screenshot.

    python scripts/check_report.py OUT/report.html [--screenshot OUT/report.png] [--json]

Chromium is the distribution's package (Debian: ``apt-get install -y chromium``). Nothing is
injected into the page and no Python package beyond Pillow (which matplotlib needs) is used:

- images: every ``<img src>`` of the page is resolved (a ``data:`` URI is base64-decoded, a
  relative path is read beside the page; anything remote is refused: the report must be
  self-contained) and decoded with Pillow. An image loads when it decodes to a width and a
  height > 0: what the browser's ``naturalWidth > 0`` says, for the same bytes.
- console: Chromium runs with ``--enable-logging=stderr``, which writes each console message
  and uncaught exception of the page as one ``CONSOLE`` line. The report has no scripts, so
  every such line counts as an error (the log gives no level: a ``console.log`` counts too).
- screenshot: ``chromium --headless --screenshot`` with a window ``WIDTH`` wide and tall
  enough: the window's height doubles (from ``FIRST_HEIGHT`` to ``MAX_HEIGHT``) until rows
  of the page's background remain below the content, then the PNG is cropped to the content.
  The page renders when the screenshot holds anything but background.

One line per check (``ok`` or ``FAIL`` and what was found), or ``--json``; exit status 0
when every check passes, 1 otherwise, 2 when Chromium is missing or fails.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH = 1280  # CSS pixels: the report's column is 1100 px wide
FIRST_HEIGHT = 8192
MAX_HEIGHT = 65536
MARGIN = 24  # rows of background below the content that prove the window held the whole page
TIMEOUT_S = 120
CONSOLE = re.compile(r":CONSOLE[:(\d)]*\]?\s*(.*)")


class _Images(HTMLParser):
    """The ``src`` of every ``<img>``, in page order."""

    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def image_sources(page: Path) -> list[str]:
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.sources


def decode_image(src: str, page_dir: Path) -> tuple[int, int]:
    """(width, height) of the image ``src`` refers to; ``ValueError`` saying why it does not load."""
    if src.startswith("data:"):
        header, _, payload = src.partition(",")
        if not header.endswith(";base64"):
            raise ValueError(f"not a base64 data URI ({header[:40]})")
        try:
            raw = base64.b64decode(payload, validate=True)
        except binascii.Error as err:
            raise ValueError(f"bad base64 ({err})") from None
    elif re.match(r"^[a-z][a-z0-9+.-]*:|^//", src, re.IGNORECASE):
        raise ValueError(f"refers outside the report ({src[:60]})")
    else:
        path = page_dir / src
        if not path.is_file():
            raise ValueError(f"no such file {path}")
        raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # Pillow's failures
        raise ValueError(f"does not decode ({type(err).__name__}: {err})") from None


def check_images(page: Path) -> dict:
    sources = image_sources(page)
    bad = []
    for i, src in enumerate(sources, 1):
        try:
            width, height = decode_image(src, page.parent)
            if width == 0 or height == 0:
                bad.append(f"image {i}: {width}x{height}")
        except ValueError as err:
            bad.append(f"image {i}: {err}")
    detail = f"{len(sources) - len(bad)} of {len(sources)} images load" + (f"; {'; '.join(bad)}" if bad else "")
    return {"check": "images", "ok": bool(sources) and not bad, "detail": detail if sources else "no images"}


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Chromium found (Debian: apt-get install -y chromium), or pass --chromium PATH")


def render(chromium: str, page: Path, png: Path, height: int) -> str:
    """Screenshot ``page`` into ``png`` in a WIDTH x ``height`` window; returns Chromium's log (stderr)."""
    with tempfile.TemporaryDirectory(prefix="check_report_") as profile:
        command = [chromium, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                   "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
                   "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", f"--screenshot={png}",
                   f"--window-size={WIDTH},{height}", page.resolve().as_uri()]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stderr


def content_rows(png: Path) -> tuple[int, int]:
    """(the last row holding anything but the background, the image's height); the background is the colour
    of the bottom-left pixel."""
    pixels = np.asarray(Image.open(png).convert("RGB"), np.int16)
    background = pixels[-1, 0]
    rows = np.nonzero((np.abs(pixels - background).max(axis=2) > 8).any(axis=1))[0]
    return (int(rows[-1]) if rows.size else -1), pixels.shape[0]


def screenshot(chromium: str, page: Path, png: Path) -> tuple[str, dict]:
    """A full-page screenshot of ``page`` as ``png``; returns Chromium's log of the last render and the check."""
    height = FIRST_HEIGHT
    while True:
        log = render(chromium, page, png, height)
        last, rows = content_rows(png)
        if last < rows - MARGIN or height >= MAX_HEIGHT:
            break
        height *= 2
    if last < 0:
        return log, {"check": "screenshot", "ok": False, "detail": f"{png}: the page rendered blank"}
    whole = last < rows - MARGIN
    with Image.open(png) as image:
        image.crop((0, 0, image.width, min(rows, last + MARGIN))).save(png)
    detail = f"{png}: {WIDTH} x {min(rows, last + MARGIN)} px" + ("" if whole else f", cut at {MAX_HEIGHT} px")
    return log, {"check": "screenshot", "ok": whole, "detail": detail}


def check_console(log: str) -> dict:
    messages = [match.group(1).strip() for line in log.splitlines() if (match := CONSOLE.search(line))]
    detail = "no console messages" if not messages else f"{len(messages)} console message(s): " + " | ".join(
        message[:200] for message in messages[:5])
    return {"check": "console", "ok": not messages, "detail": detail}


def check_report(page: Path, png: Path, chromium: str) -> list[dict]:
    """Every check's result: {check, ok, detail}."""
    log, shot = screenshot(chromium, page, png)
    return [check_images(page), check_console(log), shot]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report.html to check")
    parser.add_argument("--screenshot", type=Path, help="the PNG to write (default: report.png beside the page)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--chromium", help="the Chromium binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    page = args.report
    if not page.is_file():
        print(f"check_report: no such file {page}", file=sys.stderr)
        return 2
    png = args.screenshot or page.with_name("report.png")
    try:
        results = check_report(page, png, find_chromium(args.chromium))
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"check_report: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"report": str(page), "screenshot": str(png), "checks": results}, indent=1))
    else:
        for result in results:
            print(f"{'ok  ' if result['ok'] else 'FAIL'} {result['check']}: {result['detail']}")
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
