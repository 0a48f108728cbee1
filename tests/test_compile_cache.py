"""The persistent compilation cache: a second process reads back what the first compiled; off means off."""

import os
import subprocess
import sys

from pathprob.compile_cache import cache_dir

PROGRAM = """
import jax, jax.numpy as jnp
from pathprob.compile_cache import enable_compile_cache
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
print(enable_compile_cache())
jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((7, 5))).block_until_ready()
print(len(hits))
"""


def _run(env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROGRAM], env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_a_second_process_reads_the_programs_back(tmp_path):
    cache = tmp_path / "cache"
    where, hits = _run({"PATHPROB_CACHE_DIR": str(cache)})
    assert where == str(cache) and hits == "0" and any(cache.iterdir())
    where, hits = _run({"PATHPROB_CACHE_DIR": str(cache)})
    assert where == str(cache) and int(hits) >= 1  # every program of the first run, read back


def test_off_writes_nothing(tmp_path, monkeypatch):
    assert _run({"PATHPROB_CACHE_DIR": "off", "XDG_CACHE_HOME": str(tmp_path)}) == ["None", "0"]
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("PATHPROB_CACHE_DIR", "none")
    assert cache_dir() is None
    monkeypatch.delenv("PATHPROB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "pathprob" / "jax"
