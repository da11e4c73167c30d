"""A small Pyramid application: a home page, a JSON view with a route parameter, and
the URLs route_url / route_path build for this mount.

nginx:   wsgi_app /srv/pyramid_site/app.py;
Apache:  WSGIScriptAlias /app /srv/pyramid_site/app.py
"""
import html
import warnings

# pyramid 2.1 still imports setuptools' pkg_resources, which warns on import (into the
# server's error log, as everything on Python's stderr).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from pyramid.config import Configurator  # noqa: E402
from pyramid.response import Response  # noqa: E402


def home(request):
    hello = request.route_url("hello", name="world")
    body = (
        "<!doctype html><html><head><title>rwsgi Pyramid example</title></head><body>"
        "<h1>Pyramid on rwsgi</h1>"
        f'<p><a id="hello" href="{html.escape(hello)}">say hello</a></p>'
        f'<p><a id="urls" href="{html.escape(request.route_path("urls"))}">URLs</a></p>'
        "</body></html>"
    )
    return Response(body, content_type="text/html")


def hello(request):
    name = request.matchdict["name"]
    return {
        "greeting": f"Hello, {name}!",
        "self": request.route_path("hello", name=name),
        "home": request.route_url("home"),
    }


def urls(request):
    return {
        "home": request.route_url("home"),
        "hello": request.route_url("hello", name="ada", _query={"x": "1"}),
        "hello_path": request.route_path("hello", name="ada"),
        "application_url": request.application_url,
        "script_name": request.script_name,
        "path_info": request.path_info,
    }


def make_app():
    with Configurator() as config:
        config.add_route("home", "/")
        config.add_route("hello", "/hello/{name}")
        config.add_route("urls", "/urls")
        config.add_view(home, route_name="home")
        config.add_view(hello, route_name="hello", renderer="json")
        config.add_view(urls, route_name="urls", renderer="json")
        return config.make_wsgi_app()


application = make_app()
