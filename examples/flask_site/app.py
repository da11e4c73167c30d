"""A small Flask site: a page, a form POST (post/redirect/get), an upload, a send_file
download, a streamed response and the URLs url_for builds for this mount.

Mounted by file, with the Flask object as the callable:
nginx:   wsgi_app /srv/flask_site/app.py;  wsgi_callable app;
Apache:  WSGIScriptAlias /app /srv/flask_site/app.py callable-object=app

Uploads go to var/uploads next to this file, which the server's worker user must be able
to write (nginx `user`, Apache `User`).
"""
import hashlib
import time
from pathlib import Path

from flask import (Flask, abort, jsonify, redirect, render_template, request, send_file,
                   stream_with_context, url_for)
from werkzeug.security import safe_join
from werkzeug.utils import secure_filename

UPLOADS = Path(__file__).resolve().parent / "var" / "uploads"

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = 32 << 20


@app.get("/")
def index():
    return render_template("index.html")


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "POST":
        name = request.form.get("name", "").strip()
        if not name:
            return render_template("form.html", error="a name, please"), 400
        return redirect(url_for("greet", name=name), code=303)
    return render_template("form.html", error=None)


@app.get("/greet/<name>")
def greet(name):
    return render_template("greet.html", name=name)


@app.post("/upload")
def upload():
    f = request.files["file"]
    name = secure_filename(f.filename or "") or "upload.bin"
    UPLOADS.mkdir(parents=True, exist_ok=True)
    path = UPLOADS / name
    f.save(path)
    data = path.read_bytes()
    return jsonify(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   download=url_for("download", name=name))


@app.get("/files/<name>")
def download(name):
    path = safe_join(str(UPLOADS), name)
    if path is None or not Path(path).is_file():
        abort(404)
    # send_file gives the open file to the server's wsgi.file_wrapper (sendfile).
    return send_file(path, as_attachment=True)


@app.get("/stream")
def stream():
    n = request.args.get("n", 5, type=int)
    delay = request.args.get("delay", 0.3, type=float)

    @stream_with_context
    def lines():
        for i in range(n):
            if i:
                time.sleep(delay)
            yield f"line {i} of {request.path}\n"

    return app.response_class(lines(), mimetype="text/plain")


@app.get("/urls")
def urls():
    return jsonify(
        index=url_for("index"),
        greet=url_for("greet", name="ada"),
        external=url_for("greet", name="ada", _external=True),
        static=url_for("static", filename="style.css"),
        script_root=request.script_root,
        path=request.path,
        url=request.url,
    )
