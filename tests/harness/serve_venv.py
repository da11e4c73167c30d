"""The virtualenv tests/test_serve.py runs `rwsgi` from: target/serve-venv, made with
/usr/bin/python3 -m venv, then `pip install .` of this repository (which builds both
server modules for that venv's Python: a few minutes the first time; cargo's cache in
target/wheel-build makes later builds incremental).

The venv is kept between runs and rebuilt only when a hash of the package's and the
Rust sources changes (stored in the venv as .rwsgi-sources). Under target/ with 0755
directories, so the servers' workers (nobody / www-data) can read it.

`python3 tests/harness/serve_venv.py` (make serve-venv) makes it up to date.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / "target" / "serve-venv"
BASE_PYTHON = "/usr/bin/python3"
# What `pip install .` builds from.
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "Cargo.toml", "Cargo.lock", "build.rs",
           "python", "src", "ngx-module", "apache-module", "daemon"]
STAMP = ".rwsgi-sources"


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        top = REPO / name
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for f in files:
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def ensure(log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
    """Returns VENV, (re)built if missing or made from other sources."""
    VENV.parent.mkdir(exist_ok=True)
    with open(VENV.parent / "serve-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        wanted = source_hash()
        stamp = VENV / STAMP
        if (VENV / "bin" / "rwsgi").is_file() and stamp.is_file() and stamp.read_text() == wanted:
            return VENV
        log(f"serve-venv: building {VENV} (pip install {REPO}; compiles the modules)")
        shutil.rmtree(VENV, ignore_errors=True)
        old = os.umask(0o022)
        try:
            subprocess.run([BASE_PYTHON, "-m", "venv", str(VENV)], check=True)
            p = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                                str(REPO)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=3600)
        finally:
            os.umask(old)
        if p.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            raise RuntimeError(f"pip install {REPO} into {VENV} failed:\n{p.stdout[-6000:]}")
        for d in (REPO / "target", VENV):
            d.chmod(0o755)
        stamp.write_text(wanted)
        return VENV


if __name__ == "__main__":
    print(ensure())
