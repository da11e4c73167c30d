from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("upload/", views.upload, name="upload"),
    path("files/<str:name>", views.download, name="download"),
    path("stream/", views.stream, name="stream"),
    path("urls/", views.urls, name="urls"),
    path("admin/", admin.site.urls),
]
