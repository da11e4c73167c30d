"""Runs a suite app behind wsgiref.validate.validator (RWSGI_VALIDATE=1, see
tests/harness/validate.py, which generates the small per-mount scripts that call wrap()).

Every complaint of the validator (an AssertionError from one of its checks, or a
WSGIWarning) is appended to ../markers/validator.log before it is raised, with the request
it happened on; the test fixtures fail the test that made the request. The complaint
still raises, as the validator does, so the request also fails visibly (500 / broken
body and a traceback in the server's log).

The patches go to a private copy of wsgiref.validate: validated_app.py's use of the
standard module is left alone.
"""
import importlib.machinery
import importlib.util
import hashlib
import os
import sys
import threading
import wsgiref.validate as _std

HERE = os.path.dirname(os.path.abspath(__file__))
LOG = os.path.join(HERE, os.pardir, "markers", "validator.log")

_spec = importlib.util.spec_from_file_location("_rwsgi_wsgiref_validate", _std.__file__)
lint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint)

_current = threading.local()


def record(kind, message):
    """One line per complaint; O_APPEND keeps lines from several threads/workers whole."""
    try:
        where = sys._getframe(2).f_code.co_name
    except ValueError:
        where = "?"
    line = "pid=%d %s [%s] %s: %s" % (os.getpid(), getattr(_current, "request", "?"), where,
                                     kind, message)
    line = line.replace("\r", "\\r").replace("\n", "\\n") + "\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)


def _assert(cond, *args):
    if not cond:
        record("AssertionError", " ".join(str(a) for a in args) or "(check failed)")
        raise AssertionError(*args)


_check_string_type = lint.check_string_type
_check_status = lint.check_status


def _checked_string_type(value, title):
    try:
        return _check_string_type(value, title)
    except AssertionError as e:
        record("AssertionError", str(e))
        raise


def _checked_status(status):
    try:
        return _check_status(status)
    except ValueError as e:  # int() of a status code that is not a number
        record("ValueError", "status %r: %s" % (status, e))
        raise


class _Warnings:
    """The validator's `warnings`: a WSGIWarning is recorded and raised (an error, as in
    validated_app.py)."""

    @staticmethod
    def warn(message, category=UserWarning, stacklevel=1):
        record(category.__name__, str(message))
        raise category(message)


class _InputWrapper(lint.InputWrapper):
    """PEP 3333, on wsgi.input: "A server should allow read() to be called without an
    argument, and return the entire remainder of the client's input stream."
    wsgiref.validate (written for PEP 333) demands exactly one argument; this allows
    none too and keeps the check that the result is bytes."""

    def read(self, *args):
        lint.assert_(len(args) <= 1, "read() takes at most one argument")
        v = self.input.read(*args)
        lint.assert_(type(v) is bytes, "wsgi.input.read() returned %r" % type(v))
        return v


lint.assert_ = _assert
lint.check_string_type = _checked_string_type
lint.check_status = _checked_status
lint.warnings = _Warnings
lint.InputWrapper = _InputWrapper


def _load_script(path, callable_name):
    name = "_rwsgi_validated_" + hashlib.md5(path.encode()).hexdigest()
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    module.__file__ = path
    sys.modules[name] = module
    loader.exec_module(module)
    return _attr(module, callable_name)


def _attr(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def wrap(callable_name, mount, script=None, module=None, bypass=()):
    """The app `callable_name` of `script` (a path) or `module`, behind the validator,
    except for requests whose PATH_INFO is in `bypass` (routes that break PEP 3333 on
    purpose to test the server's handling)."""
    if script is not None:
        app = _load_script(script, callable_name)
    else:
        app = _attr(importlib.import_module(module), callable_name)
    checked = lint.validator(app)
    bypass = frozenset(bypass)

    def validated(environ, start_response):
        path = environ.get("PATH_INFO", "")
        qs = environ.get("QUERY_STRING")
        _current.request = "%s %s%s%s (mount %s)" % (
            environ.get("REQUEST_METHOD"), environ.get("SCRIPT_NAME", ""), path,
            "?" + qs if qs else "", mount)
        if path in bypass:
            return app(environ, start_response)
        return checked(environ, start_response)

    validated.__wrapped__ = app
    return validated
