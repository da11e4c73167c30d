"""Reports the process it runs in, as JSON: ids, groups, working directory, umask,
rlimits, environment and open descriptors (daemon mode: what the supervisor set up).
`?read=PATH` also tries to read PATH and says what happened."""
import json
import os
import resource
from urllib.parse import parse_qs


def application(environ, start_response):
    mask = os.umask(0)
    os.umask(mask)
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    facts = {
        "pid": os.getpid(), "ppid": os.getppid(),
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
        "groups": sorted(os.getgroups()), "cwd": os.getcwd(), "umask": mask,
        "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA),
        "rlimit_cpu": resource.getrlimit(resource.RLIMIT_CPU),
        "env": dict(os.environ), "fds": fds,
    }
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "read" in query:
        try:
            with open(query["read"][0], "rb") as f:
                facts["read"] = "ok: " + f.read().decode("latin-1")
        except OSError as e:
            facts["read"] = type(e).__name__
    body = json.dumps(facts).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
