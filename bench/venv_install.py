"""The venv install of scripts/install.sh, pip against uv, with the same pins, from empty caches.

    python3 bench/venv_install.py [--requirements requirements-stack.txt] [--rounds 1]

Each round creates a fresh venv and installs the requirements file with pip (--no-cache-dir), then
another with uv (requirements-install.txt's pin, --no-cache), alternating; prints each time and the
ratio pip/uv. What install.sh uses is the faster one (README "Setup").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fresh_venv(where: Path) -> Path:
    subprocess.run(["python3", "-m", "venv", str(where)], check=True)
    return where / "bin" / "python"


def with_pip(requirements: Path) -> float:
    where = Path(tempfile.mkdtemp(prefix="rewind-bench-pip-"))
    try:
        python = fresh_venv(where / "venv")
        started = time.perf_counter()
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check", "-r", str(requirements)],
            check=True,
            cwd=REPO,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(where, ignore_errors=True)


def with_uv(requirements: Path) -> float:
    where = Path(tempfile.mkdtemp(prefix="rewind-bench-uv-"))
    try:
        python = fresh_venv(where / "venv")
        started = time.perf_counter()  # installing uv itself is part of what install.sh does
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check", "-r", "requirements-install.txt"],
            check=True,
            cwd=REPO,
        )
        subprocess.run(
            [str(python), "-m", "uv", "pip", "install", "--quiet", "--no-cache", "--python", str(python), "-r", str(requirements)],
            check=True,
            cwd=REPO,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requirements", default="requirements-stack.txt")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    requirements = REPO / args.requirements
    pip_s, uv_s = [], []
    for number in range(args.rounds):
        pip_s.append(with_pip(requirements))
        uv_s.append(with_uv(requirements))
        print(f"round {number + 1}: pip {pip_s[-1]:.1f} s, uv {uv_s[-1]:.1f} s", flush=True)
    print(
        f"{args.requirements}: pip {min(pip_s):.1f} s, uv {min(uv_s):.1f} s (best of {args.rounds}); ratio pip/uv {min(pip_s) / min(uv_s):.1f}"
    )


if __name__ == "__main__":
    main()
