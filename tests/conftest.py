import os
import shutil
import tempfile

# Tests run on the CPU, in float32, deterministically.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile hundreds of small programs whose run time is negligible: compile them without
# LLVM's optimisation passes (what XLA computes is the same; the tests' time halves). The
# benchmarks under scripts/ do not import this file and keep the default.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# One persistent compilation cache per test session, empty at its start and shared by the
# xdist workers (they inherit the environment of the process that imports this first), so a
# program two test files compile is compiled once. The CLI under test reads the same variable.
_OWN_CACHE = "PATHPROB_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["PATHPROB_CACHE_DIR"] = tempfile.mkdtemp(prefix="pathprob-test-cache-")

from pathprob.compile_cache import enable_compile_cache  # noqa: E402

enable_compile_cache()


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the controller, after every worker has finished
        shutil.rmtree(os.environ["PATHPROB_CACHE_DIR"], ignore_errors=True)
