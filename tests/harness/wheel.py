"""A pure-Python wheel (PEP 427) written by hand, for tests that pip-install a package
into a venv without the network: pip installs a wheel with --no-index and no build step,
so nothing needs setuptools, which venvs of Python 3.12 and later no longer contain."""
from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(dest: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """Writes `{name}-{version}-py3-none-any.whl` into `dest` holding `files` (paths
    inside site-packages → text) plus its METADATA, WHEEL and RECORD; returns its path."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    entries = {path: text.encode() for path, text in files.items()}
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    entries[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: rwsgi-tests\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = "".join(f"{path},{_digest(data)},{len(data)}\n" for path, data in entries.items())
    entries[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in entries.items():
            z.writestr(path, data)
    return wheel
