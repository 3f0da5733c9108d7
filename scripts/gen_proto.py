"""Regenerate the Python code for the wire contract in proto/ into narset/v1/.

Run from anywhere: `python scripts/gen_proto.py`. CI runs it and fails on any diff
(`python scripts/gen_proto.py --check`), so the committed code never drifts from the .proto files.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("narset") / "v1"
INIT_TEXT = '"""Generated protobuf and gRPC code for the narset.v1 contract (see proto/). Do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto under proto/ and return the generated files, relative."""
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    return sorted(p.relative_to(out_root) for p in (out_root / PACKAGE_DIR).iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        target = ROOT / PACKAGE_DIR
        committed = sorted(p.relative_to(ROOT) for p in target.iterdir() if p.is_file()) if target.exists() else []
        if args.check:
            drift = [
                str(p)
                for p in fresh
                if not (ROOT / p).exists() or not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)
            ]
            drift += [str(p) for p in committed if p not in fresh]
            if drift:
                print("generated code is out of date; run python scripts/gen_proto.py:", *drift, sep="\n  ")
                return 1
            print(f"generated code matches proto/ ({len(fresh)} files)")
            return 0
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for rel in fresh:
            shutil.copy2(Path(tmp) / rel, ROOT / rel)
        print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
