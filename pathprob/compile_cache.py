"""JAX's persistent compilation cache, on by default for the command line and the demo.

Every CLI call used to compile its programs afresh (about 0.6 s per shape on the CPU; a
first narrowing curve spent 43 of its 69 s compiling). With the cache a program compiled
once is read back from disk by later processes. Where: ``$PATHPROB_CACHE_DIR``, else
``$XDG_CACHE_HOME/pathprob/jax``, else ``~/.cache/pathprob/jax``. ``PATHPROB_CACHE_DIR=off``
(or ``0``, ``none``) turns it off. The library does not turn it on by itself: a notebook
calls ``pathprob.enable_compile_cache()`` if it wants it.

The same directory keeps, in ``automata/``, the token automata of regexes over large
vocabularies (``pathprob.paths.token_automaton``); those are always read and written
there unless the cache is turned off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "PATHPROB_CACHE_DIR"
_OFF = ("", "0", "off", "none", "false")


def cache_dir() -> Path | None:
    """The cache directory from the environment (see the module doc); None when turned off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pathprob" / "jax"


def automata_dir() -> Path | None:
    """Where token automata of regexes are kept (``automata/`` in ``cache_dir()``); None when turned off."""
    where = cache_dir()
    return None if where is None else where / "automata"


def enable_compile_cache(path: str | Path | None = None) -> Path | None:
    """Turn on the persistent compilation cache at ``path`` (default: ``cache_dir()``); returns where, or None.

    Call before the first compilation. Every program is cached, however fast it compiled:
    a CLI call compiles dozens of small programs whose sum is what the user waits for.
    """
    where = Path(path).expanduser() if path is not None else cache_dir()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache location only costs speed
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return where
