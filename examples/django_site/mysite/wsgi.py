"""The WSGI entry point, as `django-admin startproject` writes it.

nginx:   wsgi_app /srv/django_site/mysite/wsgi.py;  wsgi_python_path /srv/django_site;
Apache:  WSGIScriptAlias / /srv/django_site/mysite/wsgi.py
         WSGIPythonPath /srv/django_site
"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
