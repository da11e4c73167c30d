"""Python side of rwsgi's app loading, run inside the embedded interpreter.

Kept in Python because these are ordinary import-system calls; Rust decides when to
call them and caches the results.
"""
import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
import traceback


def load_script(path, callable_name):
    """Executes a WSGI script file (any extension, like mod_wsgi's .wsgi files) as a
    fresh module and returns its callable."""
    name = "_rwsgi_script_" + hashlib.md5(path.encode()).hexdigest()
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    return _callable(module, callable_name, path)


def load_module(module_name, callable_name):
    """Imports `module_name` and returns its (possibly dotted) attribute `callable_name`."""
    module = importlib.import_module(module_name)
    return _callable(module, callable_name, module_name)


def _callable(module, callable_name, where):
    obj = module
    for part in callable_name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(
                f"{where} has no WSGI callable {callable_name!r}"
            ) from None
    if not callable(obj):
        raise TypeError(f"{callable_name!r} in {where} is not callable")
    return obj


def add_path(entries):
    """Puts each directory at the front of sys.path once."""
    for entry in reversed(entries):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def format_exception(exc, tb):
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__)).rstrip()
