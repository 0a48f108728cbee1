import os

# Tests run on the CPU, in float32, deterministically.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
