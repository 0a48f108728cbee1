"""What the persistent compilation cache saves: a CLI call and the demo, first vs second process.

    python scripts/bench_compile_cache.py [--demo fast|full|none]

Each command runs twice in a fresh process against a new, empty cache directory
(``PATHPROB_CACHE_DIR``): the first process compiles and fills the cache, the second reads
it. For every run the script prints the wall time and the seconds JAX spent compiling
(the sum of its ``/jax/core/compile/*`` duration events, measured inside the process), as a
markdown table and, with ``--json``, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# Runs inside the child: count JAX's compile-time events, run the CLI, print the total on exit.
CHILD = """
import atexit, sys, jax.monitoring
spent = {"s": 0.0}
def listen(event, seconds, **kwargs):
    if event.startswith("/jax/core/compile/"):
        spent["s"] += seconds
jax.monitoring.register_event_duration_secs_listener(listen)
atexit.register(lambda: print(f"COMPILE_SECONDS {spent['s']:.3f}", file=sys.stderr))
from pathprob.cli import app
sys.argv = ["pathprob", *sys.argv[1:]]
app()
"""

COMMANDS = {
    "mass": ["mass", "checkpoints/concepts", "--prompt", "^", "--max-new", "5", "--regex", "[a-d]+;?"],
    "sample": ["sample", "checkpoints/concepts", "--prompt", "^", "--max-new", "6", "-n", "100000"],
}


def run(args: list[str], env: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    compile_s = float(done.stderr.rsplit("COMPILE_SECONDS", 1)[1].split()[0])
    return wall, compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", choices=("fast", "full", "none"), default="fast")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    commands = dict(COMMANDS)
    out = tempfile.mkdtemp(prefix="bench-demo-")
    if args.demo != "none":
        commands[f"demo ({args.demo})"] = ["demo", "--out", out, *(["--fast"] if args.demo == "fast" else [])]
    rows = []
    for name, command in commands.items():
        env = {**os.environ, "PATHPROB_CACHE_DIR": tempfile.mkdtemp(prefix="bench-cache-")}
        (wall1, comp1), (wall2, comp2) = run(command, env), run(command, env)
        rows.append({"command": "pathprob " + " ".join(command), "first_wall_s": wall1, "first_compile_s": comp1,
                     "second_wall_s": wall2, "second_compile_s": comp2, "second_over_first": wall2 / wall1})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| command | 1st wall s | 1st compile s | 2nd wall s | 2nd compile s | 2nd / 1st wall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['first_wall_s']:.1f} | {r['first_compile_s']:.1f} | {r['second_wall_s']:.1f} "
              f"| {r['second_compile_s']:.2f} | {r['second_over_first']:.2f} |")


if __name__ == "__main__":
    main()
