"""A few pages next to the admin: a home page, an upload form whose files come back as a
FileResponse download, a streamed response, and the URLs Django builds for this mount."""
import hashlib
import time

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import reverse


def home(request):
    return render(request, "home.html")


def upload(request):
    if request.method != "POST":
        return render(request, "upload.html")
    f = request.FILES["file"]
    digest = hashlib.sha256()
    for chunk in f.chunks():
        digest.update(chunk)
    name = default_storage.save(f.name, f)
    return JsonResponse({
        "name": name,
        "size": f.size,
        "sha256": digest.hexdigest(),
        "download": reverse("download", args=[name]),
    })


def download(request, name):
    if not default_storage.exists(name):
        raise Http404(name)
    # FileResponse hands the open file to the server's wsgi.file_wrapper (sendfile).
    return FileResponse(open(default_storage.path(name), "rb"), as_attachment=True,
                        filename=name)


def stream(request):
    n = int(request.GET.get("n", "5"))
    delay = float(request.GET.get("delay", "0.3"))

    def lines():
        for i in range(n):
            if i:
                time.sleep(delay)
            yield f"line {i}\n".encode()

    return StreamingHttpResponse(lines(), content_type="text/plain")


def urls(request):
    return JsonResponse({
        "home": reverse("home"),
        "upload": reverse("upload"),
        "admin": reverse("admin:index"),
        "absolute": request.build_absolute_uri(reverse("home")),
        "static": static("admin/css/base.css"),
        "script_name": request.META.get("SCRIPT_NAME", ""),
        "path": request.path,
        "path_info": request.path_info,
        "scheme": request.scheme,
    })
