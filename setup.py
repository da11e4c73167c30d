"""Build step of the `rwsgi` Python package (metadata: pyproject.toml).

`pip install .` / `pip wheel .` run build_py below, which compiles the two server modules
and daemon mode's program with cargo for the Python running the build (PYO3_PYTHON =
sys.executable) and puts them in the package as
rwsgi/modules/{ngx_http_rwsgi_module.so,mod_rwsgi.so,rwsgi-daemon} (the modules run the
rwsgi-daemon beside them), with build.json recording that Python's version. The wheel is therefore platform- and
Python-specific (cpXY-cpXY-linux_*), like any extension module.

Needs cargo on PATH, the nginx and Apache development files (nginx-dev, apache2-dev, as
`make deps` installs) and libclang. The nginx module is compiled against a configured
nginx source tree: $NGINX_BUILD_DIR if set, else target/nginx-src/objs, made from
/usr/share/nginx/src with the installed nginx's configure flags (as the Makefile does).
Cargo's output goes to target/wheel-build/<python>-<hash of its path>, so rebuilding for
the same interpreter is incremental and does not disturb `make build`'s target/release.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
NGINX_DEB_SRC = Path("/usr/share/nginx/src")
MODULES = {  # cargo's output name -> name in the package
    "libngx_http_rwsgi_module.so": "ngx_http_rwsgi_module.so",
    "libmod_rwsgi.so": "mod_rwsgi.so",
    "rwsgi-daemon": "rwsgi-daemon",
}


def log(msg):
    print(f"rwsgi build: {msg}", file=sys.stderr, flush=True)


def nginx_build_dir() -> Path:
    """A configured nginx tree whose flags match the installed nginx binary (so the
    module's signature matches `nginx -V`); the Makefile's $(NGINX_SRC)/objs rule."""
    if os.environ.get("NGINX_BUILD_DIR"):
        return Path(os.environ["NGINX_BUILD_DIR"])
    src = ROOT / "target" / "nginx-src"
    if (src / "objs" / "Makefile").is_file():
        return src / "objs"
    if not (NGINX_DEB_SRC / "configure").is_file():
        raise SystemExit(f"rwsgi build: {NGINX_DEB_SRC} is missing: install nginx-dev "
                         "(apt-get install nginx-dev) or set NGINX_BUILD_DIR to a configured "
                         "nginx tree's objs/ directory")
    log(f"configuring nginx sources from {NGINX_DEB_SRC} in {src}")
    tmp = src.with_name(f"nginx-src.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(NGINX_DEB_SRC, tmp, symlinks=True)
    subprocess.run(["bash", "-c", 'source ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}" '
                    "--with-cc-opt='-g -O2 -fPIC' --with-ld-opt='-fPIC' >/dev/null"],
                   cwd=tmp, check=True)
    shutil.rmtree(src, ignore_errors=True)
    tmp.rename(src)
    return src / "objs"


def add_rpath(env: dict):
    """A shared libpython outside the system's library directories (pyenv, /opt/python)
    is found through an rpath in the modules, as the interpreter binary finds it."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir:
        return
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    system = {"/lib", "/usr/lib", "/lib64", "/usr/lib64", f"/lib/{arch}", f"/usr/lib/{arch}"}
    if os.path.realpath(libdir) not in system:
        env["RUSTFLAGS"] = f"{env.get('RUSTFLAGS', '')} -C link-arg=-Wl,-rpath,{libdir}".strip()


def build_modules(dest: Path):
    if shutil.which("cargo") is None:
        raise SystemExit("rwsgi build: cargo is not on PATH: install Rust (https://rustup.rs)")
    exe = sys.executable
    key = f"{sys.implementation.cache_tag}-{hashlib.sha1(exe.encode()).hexdigest()[:8]}"
    target = ROOT / "target" / "wheel-build" / key
    env = dict(os.environ, PYO3_PYTHON=exe, NGINX_BUILD_DIR=str(nginx_build_dir()))
    add_rpath(env)
    cmd = ["cargo", "build", "--release", "--locked", "--target-dir", str(target),
           "-p", "ngx_http_rwsgi_module", "-p", "mod_rwsgi", "-p", "rwsgi-daemon"]
    log(f"{' '.join(cmd)}  (PYO3_PYTHON={exe})")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    dest.mkdir(parents=True, exist_ok=True)
    for built, name in MODULES.items():
        shutil.copyfile(target / "release" / built, dest / name)
        os.chmod(dest / name, 0o755)
    info = {
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "python_executable": exe,
        "soabi": sysconfig.get_config_var("SOABI"),
    }
    (dest / "build.json").write_text(json.dumps(info, indent=2) + "\n")


class build_py(_build_py):
    """Copies the Python sources, then builds and adds the server modules."""

    def run(self):
        super().run()
        if not self.dry_run:
            build_modules(Path(self.build_lib) / "rwsgi" / "modules")


class BinaryDistribution(Distribution):
    """The package ships compiled code linked to one Python: platform wheel tags."""

    def has_ext_modules(self):
        return True


(ROOT / "target").mkdir(exist_ok=True)
setup(
    cmdclass={"build_py": build_py},
    distclass=BinaryDistribution,
    # setuptools' scratch dirs under target/, not in the source tree
    options={"build": {"build_base": str(ROOT / "target" / "py-build")},
             "egg_info": {"egg_base": str(ROOT / "target")}},
)
