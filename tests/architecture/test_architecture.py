"""The architecture holds: import contracts, one definition per protocol rule, a control plane without torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("narset", "kasmina_worker", "narset_demo")
# Makes `import torch` fail in a child process, as on a machine without torch.
NO_TORCH = "import sys; sys.modules['torch'] = None; "


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold():
    """`lint-imports` keeps every contract of pyproject.toml on the repository as it is."""
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module,bad_import,contract",
    [
        ("narset/control/_bad.py", "import kasmina_worker\n", "imports neither torch nor the worker"),
        ("narset/contract/_bad.py", "from narset.control import ledger\n", "Narset's layers"),
        ("kasmina_worker/runtime/_bad.py", "from narset.store import Store\n", "imports only the contract"),
        ("kasmina_worker/measure/_bad.py", "def f():\n    import transformers\n", "needs no training framework"),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, bad_import, contract):
    """One import across a plane's boundary, added to a copy of the tree, fails `lint-imports` naming the contract."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0, "the copy must pass before the bad import is added"
    (tmp_path / module).write_text(bad_import)
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert contract in done.stdout and "BROKEN" in done.stdout, done.stdout


RULE_CONSTANTS = ("PROTOCOL_VERSION", "MAX_EXTENSIONS", "DEFAULT_EXTRA_CKPTS", "TTL_LIMIT_FACTOR", "FOLD_DEPTH")


def test_each_protocol_rule_is_defined_once_in_the_contract():
    """Every rule constant both planes apply has exactly one definition, in narset/contract/rules.py."""
    pattern = re.compile(rf"^({'|'.join(RULE_CONSTANTS + ('SAFETY_FLAGS',))})\s*=", re.M)
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for name in pattern.findall(path.read_text()):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert found == {name: ["narset/contract/rules.py"] for name in (*RULE_CONSTANTS, "SAFETY_FLAGS")}


def _run_without_torch(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_control_plane_imports_without_torch():
    """The server, the CLI and the client import in a process where importing torch fails."""
    code = (
        "import importlib\n"
        "for name in ('narset.server.app', 'narset.cli', 'narset.client'): importlib.import_module(name)\n"
        "assert sys.modules['torch'] is None\n"
        "try:\n    import torch\nexcept ImportError:\n    print('torch unavailable')\n"
    )
    done = _run_without_torch(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch unavailable"


def test_serve_cli_and_client_run_without_torch(tmp_path):
    """`narset serve`, the CLI and the client serve and answer in processes where importing torch fails."""
    ready = tmp_path / "address"
    serve = subprocess.Popen(
        [sys.executable, "-c", NO_TORCH + "from narset.cli import main; sys.exit(main())", "serve"]
        + ["--address", "127.0.0.1:0", "--db", str(tmp_path / "narset.db"), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            if ready.exists() or serve.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), serve.stderr.read() if serve.poll() is not None else "no ready file"
        address = ready.read_text().strip()
        cli = _run_without_torch(
            "from narset.cli import main; sys.exit(main())", "blueprints", "--json", "--server", address
        )
        assert cli.returncode == 0, cli.stderr
        names = {b["name"] for b in json.loads(cli.stdout)["blueprints"]}
        assert {"lora", "dense_delta", "residual_mlp", "moe_expert"} <= names
        client = _run_without_torch(
            "from narset.client import NarsetClient\n"
            f"with NarsetClient({address!r}) as narset: print(len(narset.list_jobs()))"
        )
        assert client.returncode == 0 and client.stdout.strip() == "0", client.stderr
    finally:
        serve.terminate()
        assert serve.wait(timeout=30) == 0
