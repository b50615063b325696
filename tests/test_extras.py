"""Every optional integration names its extra when its library is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = [
    ("httpx", "steplog.MlflowBackend('http://127.0.0.1:5000')", "mlflow"),
    ("wandb", "steplog.WandbBackend()", "wandb"),
    ("crc32c", "steplog.TensorBoardBackend('tb')", "tensorboard"),
    ("trackio", "steplog.TrackioBackend()", "trackio"),
    ("matplotlib", "steplog.LivePlotBackend()", "plot"),
    ("tropt", "import steplog.integrations.tropt", "tropt"),
    ("lightning", "import steplog.integrations.lightning", "lightning"),
    ("transformers", "import steplog.integrations.transformers", "transformers"),
    ("optuna", "import steplog.integrations.optuna", "optuna"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "code", "extra"), CASES)
def test_missing_dependency_raises_missing_extra_error(tmp_path, module, code, extra):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / f"{module}.py").write_text("raise ImportError('blocked for the test')\n")
    script = (
        "import steplog\n"
        "try:\n"
        f"    {code}\n"
        "except steplog.MissingExtraError as exc:\n"
        "    print('MISSING', exc)\n"
    )
    # The shim goes first; the rest of PYTHONPATH (a checkout's src/) stays.
    path = [str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "MISSING" in result.stdout
    assert f"pip install 'steplog[{extra}]'" in result.stdout


def test_importing_steplog_imports_no_optional_library():
    code = (
        "import sys, steplog, steplog.backends\n"
        "heavy = ['wandb', 'mlflow', 'trackio', 'httpx', 'matplotlib', 'crc32c', "
        "'tensorboard', 'tropt', 'pyarrow', 'numpy', 'torch', 'jax', 'lightning', "
        "'transformers', 'optuna']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
