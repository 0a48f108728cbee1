"""Writing result files: strict JSON, and nothing ever half-written.

JSON convention (every file and every ``--json`` output of the project): strict JSON that
any parser accepts (``allow_nan=False``). Undefined numbers (NaN) are written as ``null``;
infinities as the strings ``"inf"`` and ``"-inf"``. ``jsonable`` applies the convention to
any tree of dicts, lists, tuples, dataclass-free scalars and numpy values.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

INF, NEG_INF = "inf", "-inf"


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values, NaN as None and infinities as "inf"/"-inf"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return INF if value > 0 else NEG_INF
        return value
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON text of ``obj`` under the project's convention (see the module doc)."""
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def loads_strict(text: str) -> Any:
    """Parse JSON as strictly as JavaScript's ``JSON.parse``: NaN/Infinity literals are errors."""

    def reject(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, **kwargs) -> Path:
    """``obj`` as strict JSON (plus a newline), written atomically."""
    return write_atomic(path, dumps(obj, **kwargs) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
