"""Checks of command-line input shared by the subcommands: each refuses with one sentence naming the flag."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from common.quoting import InputError, short_repr


def http_url(url: str, flag: str) -> str:
    """``url`` when it is an http:// or https:// URL with a host; an InputError naming ``flag`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{flag}: expected an http:// or https:// URL, got {short_repr(url)}")
    return url


def output_folder(folder: str, flag: str) -> Path:
    """The folder reports go to, created now: a file in its place, or one that cannot be created, is refused
    before any work is done."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag}: {folder!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{flag}: cannot create the folder {folder!r}: {exc.strerror or exc}") from None
    return out
