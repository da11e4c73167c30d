"""Loads a WSGI app the way the server modules do, to check it before a server starts.

Run by `rwsgi serve` as a script, with the Python the server will embed (the python
home's interpreter) in isolated mode: `python -I _appcheck.py REQUEST_JSON`. The request
is {"script": path | null, "module": name | null, "callable": name, "path": [dirs]}.
Prints one JSON object on the original stdout: {"ok": true, "version": "3.11",
"paths": {...}} or {"ok": false, "error": "...", "where": "file:line"}. Anything the app
prints goes to stderr. Standard library only: the checked Python need not have rwsgi.
"""
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
import traceback


def load(request):
    # Same steps as the engine's loader (src/loader.py): path entries in front of
    # sys.path, then the script executed as a fresh module or the module imported.
    for entry in reversed(request["path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if request["script"]:
        path = request["script"]
        name = "_rwsgi_script_" + hashlib.md5(path.encode()).hexdigest()
        loader = importlib.machinery.SourceFileLoader(name, path)
        spec = importlib.util.spec_from_loader(name, loader)
        module = importlib.util.module_from_spec(spec)
        module.__file__ = path
        sys.modules[name] = module
        loader.exec_module(module)
        where = path
    else:
        module = importlib.import_module(request["module"])
        where = request["module"]
    obj = module
    for part in request["callable"].split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"{where} has no WSGI callable {request['callable']!r}") from None
    if not callable(obj):
        raise TypeError(f"{request['callable']!r} in {where} is not callable")


def location(exc):
    """file:line of the app's code that raised (not this checker's or importlib's)."""
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and line already
    machinery = os.path.dirname(importlib.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != __file__ and not f.filename.startswith("<frozen")
              and os.path.dirname(f.filename) != machinery]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def main():
    request = json.loads(sys.argv[1])
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the app's prints must not mix with the answer
    try:
        load(request)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from an app is a failure too
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        answer = {"ok": False, "error": message, "where": location(exc)}
    else:
        answer = {"ok": True}
    answer["version"] = "%d.%d" % sys.version_info[:2]
    answer["prefix"] = sys.prefix
    answer["paths"] = {k: sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib")}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    os._exit(0)  # skip the app's atexit handlers and non-daemon threads


if __name__ == "__main__":
    main()
