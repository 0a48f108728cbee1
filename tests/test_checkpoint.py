"""Checkpoints: exact round trip, items read alone, retention, strict dtypes, digests, clear errors, atomic saves
under SIGKILL."""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pathprob.checkpoint import Checkpoints, tree_digest
from pathprob.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TMP_DIR = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def make_state(step: int) -> dict:
    """A small PyTree with float32, int32 and bfloat16 leaves whose values depend on ``step``."""
    return {
        "params": {
            "embed": (jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7 + step).astype(jnp.bfloat16),
            "w": jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32) * step,
        },
        "opt": {"count": jnp.int32(step), "ids": jnp.arange(5, dtype=jnp.int32) - step},
    }


def make_meta(step: int) -> dict:
    return {"step": step, "seed": 0, "config": {"d_model": 32, "dropout": None, "layers": [1, 2]},
            "tokenizer": "{\"tokens\": \"^ab;\"}", "eval_loss": float("nan"), "language": "ünïcode"}


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def assert_trees_equal(actual, expected):
    """Same structure, shapes, dtypes and values, leaf by leaf (chex names the first leaf that differs)."""
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    chex.assert_trees_all_equal(actual, expected)


def assert_meta_equal(actual, expected):
    """Equal, except that the meta is stored as strict JSON: NaN comes back as None."""
    assert actual.keys() == expected.keys()
    assert np.isnan(expected["eval_loss"]) and actual["eval_loss"] is None

    def without_nan(meta):
        return {k: v for k, v in meta.items() if k != "eval_loss"}

    assert without_nan(actual) == without_nan(expected)


def read_meta(directory, step=None):
    with Checkpoints(directory) as ckpts:
        return ckpts.load_meta(step=step)


def run_python(script: str, *args, **popen_kwargs) -> subprocess.Popen:
    python_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": python_path}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env, **popen_kwargs)


def test_round_trip_is_exact(tmp_path):
    with Checkpoints(tmp_path / "ckpt") as ckpts:
        assert ckpts.steps() == [] and ckpts.latest_step() is None
        for step in (10, 20):
            ckpts.save(step, make_state(step), make_meta(step))
        assert ckpts.steps() == [10, 20] and ckpts.latest_step() == 20
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = ckpts.load(abstract(make_state(0)))
        assert not [w for w in caught if "harding" in str(w.message)], [str(w.message) for w in caught]
        assert_trees_equal(restored, make_state(20))
        assert_trees_equal(ckpts.load(abstract(make_state(0)), step=10), make_state(10))
        assert_meta_equal(ckpts.load_meta(), make_meta(20))
        assert_meta_equal(ckpts.load_meta(step=10), make_meta(10))
    # A fresh reader sees the same; concrete arrays also serve as the abstract state.
    with Checkpoints(tmp_path / "ckpt") as ckpts:
        assert ckpts.steps() == [10, 20]
        assert_trees_equal(ckpts.load(make_state(0), step=10), make_state(10))
    assert_meta_equal(read_meta(tmp_path / "ckpt", step=10), make_meta(10))
    assert_meta_equal(read_meta(tmp_path / "ckpt"), make_meta(20))


def test_keep_retains_the_last_k_steps(tmp_path):
    with Checkpoints(tmp_path, keep=2) as ckpts:
        for step in range(1, 6):
            ckpts.save(step, make_state(step), make_meta(step))
            assert ckpts.steps() == list(range(max(1, step - 1), step + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "5"]
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.steps() == [4, 5] and ckpts.latest_step() == 5
        assert_trees_equal(ckpts.load(abstract(make_state(0)), step=4), make_state(4))
        unknown = rf"no checkpoint for step 3 in {re.escape(str(tmp_path))} \(stored: 4, 5\)"
        with pytest.raises(CheckpointError, match=unknown):
            ckpts.load(abstract(make_state(0)), step=3)
        with pytest.raises(CheckpointError, match="step 3"):
            ckpts.load_meta(step=3)


def test_nnx_and_optax_state_restores_into_its_own_types(tmp_path):
    tx = optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), 3)

    def build(seed):
        model = nnx.Sequential(nnx.Embed(7, 4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(seed)),
                               nnx.Linear(4, 7, rngs=nnx.Rngs(seed + 1)))
        return model

    graphdef, params = nnx.split(build(0))
    state = {"params": params, "opt_state": tx.init(params)}
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, state, {"step": 1})
        _, abstract_params = nnx.split(nnx.eval_shape(lambda: build(5)))
        restored = ckpts.load({"params": abstract_params, "opt_state": jax.eval_shape(tx.init, abstract_params)})
    assert type(restored["params"]) is type(params)
    assert type(restored["opt_state"]) is type(state["opt_state"])
    assert_trees_equal(restored, state)
    assert_trees_equal(nnx.state(nnx.merge(graphdef, restored["params"])), nnx.state(nnx.merge(graphdef, params)))


def test_mismatched_dtype_shape_or_structure_names_the_leaf(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(1), make_meta(1))
        wrong_dtype = abstract(make_state(1))
        wrong_dtype["params"]["embed"] = jax.ShapeDtypeStruct((3, 4), jnp.float32)  # stored as bfloat16
        with pytest.raises(CheckpointError, match=r"leaf 'params/embed' as bfloat16, requested float32"):
            ckpts.load(wrong_dtype)
        wrong_shape = abstract(make_state(1))
        wrong_shape["opt"]["ids"] = jax.ShapeDtypeStruct((6,), jnp.int32)
        with pytest.raises(CheckpointError, match=r"leaf 'opt/ids' with shape \(5,\), requested \(6,\)"):
            ckpts.load(wrong_shape)
        missing = abstract(make_state(1))
        missing["params"]["bias"] = jax.ShapeDtypeStruct((4,), jnp.float32)
        with pytest.raises(CheckpointError, match=r"has no leaf 'params/bias'"):
            ckpts.load(missing)
        extra = abstract(make_state(1))
        del extra["opt"]["count"]
        with pytest.raises(CheckpointError, match=r"has leaf 'opt/count', which the requested state lacks"):
            ckpts.load(extra)
        with pytest.raises(CheckpointError, match=r"has no item 'ema' \(it holds: digests, meta, opt, params\)"):
            ckpts.load({"ema": abstract(make_state(1))["params"]})


def test_missing_or_empty_directory(tmp_path):
    missing = tmp_path / "missing"
    with Checkpoints(missing) as ckpts:
        assert ckpts.steps() == [] and ckpts.latest_step() is None
        with pytest.raises(CheckpointError, match=f"no checkpoint directory at {re.escape(str(missing))}"):
            ckpts.load_meta()
        with pytest.raises(CheckpointError, match="no checkpoint directory"):
            ckpts.load(abstract(make_state(0)))
    assert not missing.exists(), "reading must not create the directory"
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        read_meta(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"no checkpoints in {re.escape(str(tmp_path / 'empty'))}"):
        read_meta(tmp_path / "empty")


def _garbage_everywhere(step_dir: Path):
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")


def _truncate_data(step_dir: Path):
    for f in step_dir.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete_data_files(step_dir: Path):
    for f in step_dir.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.unlink()


def _delete_arrays(step_dir: Path):
    shutil.rmtree(step_dir / "params")


def _delete_meta(step_dir: Path):
    shutil.rmtree(step_dir / "meta")


@pytest.mark.parametrize("corrupt, broken", [
    (_garbage_everywhere, {"arrays", "meta"}),
    (_truncate_data, {"arrays"}),
    (_delete_data_files, {"arrays"}),
    (_delete_arrays, {"arrays"}),
    (_delete_meta, {"meta"}),
])
# orbax leaves a callback on a closed event loop after a failed tensorstore read: its noise, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_step_raises_checkpoint_error(tmp_path, corrupt, broken):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(1), make_meta(1))
        ckpts.save(2, make_state(2), make_meta(2))
    corrupt(tmp_path / "2")
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.steps() == [1, 2]
        loads = {"arrays": lambda: ckpts.load(abstract(make_state(0))), "meta": ckpts.load_meta}
        for part, load in loads.items():
            if part in broken:
                with pytest.raises(CheckpointError, match=f"checkpoint step 2 in {re.escape(str(tmp_path))}") as raised:
                    load()
                assert "\n" not in str(raised.value)
            else:
                load()
        # The intact older step still loads.
        assert_trees_equal(ckpts.load(abstract(make_state(0)), step=1), make_state(1))


def test_unfinished_save_is_not_a_step_and_is_replaced(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(1), make_meta(1))
    stale = tmp_path / "2.orbax-checkpoint-tmp"
    (stale / "state").mkdir(parents=True)
    (stale / "state" / "half_written").write_bytes(b"\0" * 10)
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.steps() == [1] and ckpts.latest_step() == 1
        ckpts.save(2, make_state(2), make_meta(2))  # e.g. a resumed run reaching the same step
        assert ckpts.steps() == [1, 2]
        assert_trees_equal(ckpts.load(abstract(make_state(0))), make_state(2))
    assert not stale.exists()


def test_bad_saves_are_refused_and_write_nothing(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(1), make_meta(1))
        with pytest.raises(CheckpointError, match="step 1 already exists"):
            ckpts.save(1, make_state(1), make_meta(1))
        with pytest.raises(TypeError, match="JSON"):
            ckpts.save(2, make_state(2), {"seed": object()})
        with pytest.raises(ValueError, match="reserved"):
            ckpts.save(2, {"meta": make_state(2)["params"]}, make_meta(2))
        assert ckpts.steps() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
    with pytest.raises(CheckpointError, match="keep"):
        Checkpoints(tmp_path, keep=0)


# A child process that saves ever larger-numbered steps of ~64 MiB of incompressible data.
_SAVE_FOREVER = """
    import sys
    import jax.numpy as jnp
    import numpy as np
    from pathprob.checkpoint import Checkpoints

    def state(step):
        data = np.random.default_rng(step).integers(0, 2**32, size=16 * 2**20, dtype=np.uint32)
        return {"step": jnp.int32(step), "data": jnp.asarray(data)}

    with Checkpoints(sys.argv[1]) as ckpts:
        for step in range(1, 10_000):
            ckpts.save(step, {"state": state(step)}, {"step": step})
"""


def _big_state(step: int) -> dict:
    data = np.random.default_rng(step).integers(0, 2**32, size=16 * 2**20, dtype=np.uint32)
    return {"step": jnp.int32(step), "data": jnp.asarray(data)}


_BIG_ABSTRACT = {"state": {"step": jax.ShapeDtypeStruct((), jnp.int32),
                            "data": jax.ShapeDtypeStruct((16 * 2**20,), jnp.uint32)}}


def _kill_during_a_save(directory: Path, log: Path, timeout_s: float = 60.0) -> bool:
    """Start the saver, SIGKILL it as soon as a save of step >= 2 has begun; True if it died mid-save."""
    with open(log, "wb") as log_file:
        child = run_python(_SAVE_FOREVER, directory, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if child.poll() is not None:
                    pytest.fail(f"saver exited early ({child.returncode}):\n{log.read_text()[-3000:]}")
                names = os.listdir(directory) if directory.is_dir() else []
                if any((m := TMP_DIR.match(n)) and int(m.group(1)) >= 2 for n in names):
                    child.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
            else:
                pytest.fail(f"no save of step 2 began within {timeout_s} s:\n{log.read_text()[-3000:]}")
        finally:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return any(TMP_DIR.match(n) for n in os.listdir(directory))


def test_sigkill_during_a_save_leaves_the_previous_step_loadable(tmp_path):
    # The kill lands inside a ~0.3 s save unless this process stalls that long; then try again.
    for attempt in range(3):
        directory = tmp_path / f"run{attempt}"
        died_mid_save = _kill_during_a_save(directory, tmp_path / f"log{attempt}.txt")
        complete = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        unfinished = [int(m.group(1)) for n in os.listdir(directory) if (m := TMP_DIR.match(n))]
        with Checkpoints(directory) as ckpts:
            assert complete and ckpts.steps() == complete, os.listdir(directory)
            latest = ckpts.latest_step()
            assert_trees_equal(ckpts.load(_BIG_ABSTRACT)["state"], _big_state(latest))
            assert ckpts.load_meta() == {"step": latest}
            if died_mid_save:
                assert unfinished == [latest + 1]
                # A resumed run saves the step that was being written when the process died.
                ckpts.save(latest + 1, {"state": _big_state(latest + 1)}, {"step": latest + 1})
                assert ckpts.steps() == complete + [latest + 1]
                assert_trees_equal(ckpts.load(_BIG_ABSTRACT)["state"], _big_state(latest + 1))
                assert not any(TMP_DIR.match(n) for n in os.listdir(directory))
                shutil.rmtree(tmp_path)  # ~200 MB
                return
    pytest.fail("the saver was never killed in the middle of a save")


def test_leaving_the_with_block_completes_the_save_before_exit(tmp_path):
    script = """
        import os, sys
        import jax.numpy as jnp
        from pathprob.checkpoint import Checkpoints
        with Checkpoints(sys.argv[1], keep=1) as ckpts:
            for step in (1, 2):
                ckpts.save(step, {"params": {"w": jnp.arange(1000, dtype=jnp.float32) * step}}, {"step": step})
        os._exit(0)  # no interpreter shutdown, no atexit: the block itself must have finished everything
    """
    child = run_python(script, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.communicate(timeout=60)[0].decode()
    assert child.returncode == 0, output[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"], "step 1 pruned, no tmp dir left"
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.steps() == [2] and ckpts.load_meta() == {"step": 2}
        restored = ckpts.load({"params": {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}})["params"]
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(1000, dtype=np.float32) * 2)


def test_an_item_is_read_alone(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(1), make_meta(1))
    shutil.rmtree(tmp_path / "1" / "opt")  # not read, so not missed
    with Checkpoints(tmp_path) as ckpts:
        restored = ckpts.load({"params": abstract(make_state(0))["params"]})
    assert list(restored) == ["params"]
    assert_trees_equal(restored["params"], make_state(1)["params"])


def test_tree_digest_sees_every_byte_dtype_and_shape_but_not_the_container():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int32(7)}
    digest = tree_digest(tree)
    assert tree_digest({"b": jnp.int32(7), "a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}) == digest
    flipped = tree["a"].copy()
    flipped.reshape(-1).view(np.uint8)[5] ^= 1
    reinterpreted = tree["a"].view(np.int32)  # the same bytes as another dtype
    variants = [{**tree, "a": flipped}, {**tree, "a": reinterpreted}, {**tree, "a": tree["a"].reshape(3, 2)},
                {"c": tree["a"], "b": tree["b"]}]
    assert len({digest, *map(tree_digest, variants)}) == 1 + len(variants)


# orbax leaves a callback on a closed event loop after a failed tensorstore read: its noise, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_flipped_bytes_inside_an_array_fail_the_digest(tmp_path):
    weights = np.random.default_rng(0).normal(size=(256, 512)).astype(np.float32)
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, {"params": {"w": jnp.asarray(weights)}, "opt": {"count": jnp.int32(1)}}, {"step": 1})
    # The parameters' one large data file: orbax/tensorstore decode flipped bytes in its middle without complaint.
    chunks = [f for f in (tmp_path / "1" / "params").rglob("*") if f.parent.name == "d"]
    data = max(chunks, key=lambda f: f.stat().st_size)
    corrupt = bytearray(data.read_bytes())
    assert len(corrupt) > weights.nbytes // 2
    corrupt[len(corrupt) // 2] ^= 0xFF
    data.write_bytes(bytes(corrupt))
    with Checkpoints(tmp_path) as ckpts:
        want = rf"^checkpoint step 1 in {re.escape(str(tmp_path))} is corrupt: the arrays of 'params' do not match"
        with pytest.raises(CheckpointError, match=want) as raised:
            ckpts.load({"params": {"w": jax.ShapeDtypeStruct(weights.shape, jnp.float32)}})
        assert "\n" not in str(raised.value)
        assert ckpts.load({"opt": {"count": jax.ShapeDtypeStruct((), jnp.int32)}})["opt"]["count"] == 1


def test_a_checkpoint_of_the_earlier_single_item_layout_is_named_as_such(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, {"state": make_state(1)}, {"step": 1})  # the layout's shape: one item holding everything
        with pytest.raises(CheckpointError, match=r"has no item 'params' \(it holds: digests, meta, state\); "
                                                  r"it was written before .*: re-save or retrain it$"):
            ckpts.load({"params": abstract(make_state(1))["params"]})
