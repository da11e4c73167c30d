"""Kills its own worker process: os._exit or a segfault."""
import ctypes
import os


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/exit":
        os._exit(3)
    if environ.get("PATH_INFO") == "/exit1":
        os._exit(1)
    if environ.get("PATH_INFO") == "/segv":
        ctypes.string_at(0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"pid %d\n" % os.getpid()]
