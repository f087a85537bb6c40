"""``nanoseg app``: a page for microscopists, served on 127.0.0.1.

Drop micrographs (TIFF, PNG, JPEG) on the page; each one goes through ``nanoseg predict``'s own code
(:func:`nanoseg.inference.analyze.analyze`, its files written by :func:`nanoseg.report.results.write_image_files`
with ``--roi``), so the files and numbers are those of ``nanoseg predict --roi`` for the same image and model. The page
shows each image with its particle outlines (the polygons of its Fiji ROI set, measurable particles
yellow, excluded ones cyan) and the detected data bar; a click on a particle shows its row of
``particles.csv``; an image's pixel size can be overridden and the image analysed again. The size
distribution of all images on the page (ECD of the measurable particles, lognormal fit, bootstrap
95 % confidence intervals) is computed as ``nanoseg predict`` computes its ``summary.json``, and
``particles.csv``, a zip of all files (labels, overlays, masks, ROI sets, ``psd.png``,
``summary.json``) and each file on its own can be downloaded.

The web stack is FastAPI on Starlette, served by uvicorn: all three come with MLflow (its tracking
server runs on them), so the app adds only ``python-multipart`` for uploads. The page is one static
HTML file with plain JavaScript and CSS (``nanoseg/app/static``): no framework, no build step, nothing
fetched from elsewhere.

Limits are those of the served model (:mod:`nanoseg.serving.payload`): at most :data:`~nanoseg.serving.payload.MAX_IMAGES`
images on the page, :data:`~nanoseg.serving.payload.MAX_IMAGE_BYTES` per file and
:data:`~nanoseg.serving.payload.MAX_PIXELS` pixels per image. Bad uploads are answered HTTP 400 with the
one-line message the command line prints for the same file (:class:`~nanoseg.errors.NanosegError`),
naming the uploaded file.

HTTP interface (JSON unless said otherwise)::

    GET    /                             the page (static files under /static/)
    GET    /api/info                     model, settings and limits
    GET    /api/images                   every image's result, in upload order
    POST   /api/images                   multipart: file, pixel_size (optional, e.g. "7.34nm") -> result
    POST   /api/images/{id}/rerun        form: pixel_size (empty: read it from the file) -> result
    DELETE /api/images/{id}  /api/images remove one image / all
    GET    /api/images/{id}/view.png     the image with its scale bar (what the outlines are drawn on)
    GET    /api/images/{id}/files/{name} one of its files (<stem>_labels.tif, _overlay.png, _mask.png, _rois.zip)
    GET    /api/psd                      size distribution of all images (predict's ecd_distribution)
    GET    /api/psd.png                  its plot (predict's psd.png)
    GET    /api/particles.csv            predict's particles.csv of all images
    GET    /api/results.zip              the folder `nanoseg predict --roi` writes, zipped
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile  # at module level: the endpoints' annotations
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask

from nanoseg.errors import NanosegError
from nanoseg.report.results import jsonable, particles_frame, plot_run_psd, run_summary
from nanoseg.serving.payload import check_image
from nanoseg.serving.payload import safe_name as _safe_name
from nanoseg.serving.payload import MAX_IMAGE_BYTES, MAX_IMAGES, MAX_PIXELS, RequestError, answer
from nanoseg.serving.service import DEFAULT_MODEL

STATIC = Path(__file__).with_name("static")
DEFAULT_PORT = 5002
HOST = "127.0.0.1"
RESULTS = "nanoseg-results"  # the folder inside results.zip


class NotFound(NanosegError):
    """An image id or file name the page does not hold (HTTP 404)."""


@dataclass(eq=False)
class PageImage:
    """One uploaded image and what ``nanoseg predict`` made of it.

    Attributes
    ----------
    id : str
        Random token naming the image in URLs.
    name : str
        The uploaded file's name (made safe for the file system).
    folder : Path
        Holds ``in/<name>`` (the bytes as uploaded) and ``out/`` (predict's files).
    pixel_size : str or None
        The pixel-size override as typed, None to read it from the file.
    table : pandas.DataFrame
        Its particle table (the rows of particles.csv).
    info : dict
        Predict's per-image info (summary.json ``images[i]``), paths replaced by ``name``.
    outlines : dict
        {particle id: (K, 2) polygon}, the polygons of its ROI set.
    """

    id: str
    name: str
    folder: Path
    pixel_size: str | None = None
    table: object = None
    info: dict = field(default_factory=dict)
    outlines: dict = field(default_factory=dict)

    @property
    def source(self) -> Path:
        return self.folder / "in" / self.name

    @property
    def out(self) -> Path:
        return self.folder / "out"

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def safe_name(name: str) -> str:
    """The file name without folders (``/`` or ``\\``), characters other than word characters, ``.``, ``+``,
    ``-`` replaced by ``_`` (:func:`nanoseg.serving.payload.safe_name`, as the server names uploads)."""
    return _safe_name(str(name or "").replace("\\", "/")) or "image"


def _label_replaced(text: str, path: Path, name: str) -> str:
    return str(text).replace(str(path), name)


class Workspace:
    """The images on the page, each analysed with ``nanoseg predict``'s per-image code.

    Parameters
    ----------
    predictor, settings
        From :func:`nanoseg.inference.loading.load_predictor`.
    root : Path
        A private folder for the uploads and results (removed by the caller).
    model_ref : str
        The model as given (shown on the page and in summary.json).
    max_images, max_pixels, max_bytes : int
        Limits (default: those of ``nanoseg serve``).
    """

    def __init__(self, predictor, settings: dict, root, model_ref: str = DEFAULT_MODEL,
                 max_images: int = MAX_IMAGES, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_IMAGE_BYTES):
        self.predictor, self.settings, self.root, self.model_ref = predictor, settings, Path(root), str(model_ref)
        self.max_images, self.max_pixels, self.max_bytes = int(max_images), int(max_pixels), int(max_bytes)
        self._images: dict[str, PageImage] = {}
        self._pending: set[str] = set()  # stems of uploads being analysed
        self._state = threading.Lock()   # short: the dict of images
        self._run = threading.Lock()     # long: one analysis at a time (the model uses all cores)

    # ------------------------------------------------------------------ images

    @property
    def images(self) -> list[PageImage]:
        with self._state:
            return list(self._images.values())

    def get(self, image_id: str) -> PageImage:
        with self._state:
            image = self._images.get(image_id)
        if image is None:
            raise NotFound(f"no image {image_id!r} on the page (removed, or the app was restarted); drop it again.")
        return image

    def check_size(self, nbytes: int, name: str) -> None:
        """Raise :class:`RequestError` for a file over the size limit (the message of ``nanoseg serve``)."""
        if nbytes > self.max_bytes:
            raise RequestError(f"{name}: the image file is larger than {_mib(self.max_bytes)} MiB; "
                               "send a smaller file.")

    def check_upload(self, data: bytes, name: str) -> None:
        """Raise :class:`RequestError` for a file over the size or pixel limit, a bomb or a stack: the server's
        check (:func:`nanoseg.serving.payload.check_image`), before anything is decoded."""
        self.check_size(len(data), name)
        if data:
            check_image(data, name, self.max_pixels)

    def _reserve(self, name: str) -> None:
        stem = Path(name).stem
        with self._state:
            if len(self._images) + len(self._pending) >= self.max_images:
                raise RequestError(f"{name}: the page already holds {self.max_images} images, the most it analyses "
                                   "together; download the results, then remove images (or Clear) to add more.")
            if stem in self._pending or any(im.stem == stem for im in self._images.values()):
                raise RequestError(f"{name}: an image named {stem!r} is already on the page; their outputs would "
                                   "overwrite each other. Rename the file or remove the other image first.")
            self._pending.add(stem)

    def add(self, data: bytes, name: str, pixel_size: str | None = None) -> PageImage:
        """Analyse an uploaded file (its bytes and file name) and put it on the page."""
        name = safe_name(name)
        self.check_upload(data, name)
        self._reserve(name)
        try:
            image = PageImage(secrets.token_hex(6), name, Path(tempfile.mkdtemp(prefix="image-", dir=self.root)),
                              pixel_size or None)
            image.source.parent.mkdir()
            image.source.write_bytes(data)
            try:
                self._analyse(image, image.pixel_size)
            except BaseException:
                _remove_tree(image.folder)
                raise
            with self._state:
                self._images[image.id] = image
        finally:
            with self._state:
                self._pending.discard(Path(name).stem)
        return image

    def rerun(self, image_id: str, pixel_size: str | None) -> PageImage:
        """Analyse an image again with another pixel size (None: the file's own); on error it stays as it was."""
        image = self.get(image_id)
        self._analyse(image, pixel_size or None)
        return image

    def remove(self, image_id: str) -> None:
        with self._state:
            image = self._images.pop(image_id, None)
        if image is None:
            raise NotFound(f"no image {image_id!r} on the page.")
        _remove_tree(image.folder)

    def clear(self) -> None:
        for image in self.images:
            self.remove(image.id)

    def _analyse(self, image: PageImage, pixel_size: str | None) -> None:
        """:func:`~nanoseg.inference.analyze.analyze` the upload; its files (``--roi``) go to a fresh ``out``
        folder, which then replaces the old one."""
        from nanoseg.inference.analyze import analyze
        from nanoseg.io.micrograph import read_micrograph
        from nanoseg.io.rois import particle_outlines
        from nanoseg.report.overlays import overlay_image
        from nanoseg.report.results import png_bytes, write_image_files

        new = Path(tempfile.mkdtemp(prefix="out-", dir=image.folder))
        try:
            with self._run:
                try:
                    notes: list[str] = []
                    mg = read_micrograph(image.source, pixel_size=pixel_size, notes=notes)
                    result = analyze(self.predictor, self.settings, mg, notes=notes)
                except NanosegError as exc:
                    raise RequestError(_label_replaced(exc, image.source, image.name)) from None
            write_image_files(result, new, roi=True)
            outlines = particle_outlines(result.labels, result.table["id"].tolist())
            # the whole frame in gray with predict's scale bar (no outlines: the page draws them)
            view = png_bytes(overlay_image(mg.pixels, np.zeros(mg.shape, np.uint8), mg.pixel_size_nm, mg.databar_row))
        except BaseException:
            _remove_tree(new)
            raise
        (new / "view.png").write_bytes(view)
        info = {**result.info, "path": image.name,
                "notes": [_label_replaced(n, image.source, image.name) for n in result.info["notes"]]}
        old = image.out
        if old.exists():
            os.replace(old, image.folder / f"old-{secrets.token_hex(4)}")
        os.replace(new, old)
        for stale in image.folder.glob("old-*"):
            _remove_tree(stale)
        image.table, image.info, image.outlines, image.pixel_size = result.table, info, outlines, pixel_size

    # ------------------------------------------------------------------ answers

    def result(self, image: PageImage) -> dict:
        """What the page shows of an image: the served answer (:func:`nanoseg.serving.payload.answer`) plus its
        id, outlines, notes, pixel-size override and file names."""
        res = answer(image.info, image.table, self.settings["threshold"])
        files = sorted(p.name for p in image.out.iterdir() if p.name != "view.png")
        res.update(id=image.id, notes=image.info.get("notes", []), seconds=image.info.get("seconds"),
                   pixel_size_override=image.pixel_size, files=files,
                   outlines={str(k): v.tolist() for k, v in image.outlines.items()})
        return res

    def file(self, image_id: str, name: str) -> Path:
        """One of an image's files (as listed in its result, or ``view.png``)."""
        image = self.get(image_id)
        path = image.out / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise NotFound(f"{image.name}: no file {name!r}; the image has {self.result(image)['files']}.")
        return path

    def particles(self):
        """predict's particles.csv of every image on the page (a DataFrame, upload order)."""
        return particles_frame([im.table for im in self.images])

    def summary(self) -> dict:
        """summary.json of the zip: predict's (:func:`nanoseg.report.results.run_summary`) for these images."""
        images = self.images
        return run_summary([im.table for im in images], [im.info for im in images], [], self.settings,
                           self.model_ref, written_by="nanoseg app", how="give its pixel size")

    def distribution(self) -> dict:
        """predict's ``ecd_distribution`` of the page, with ``n_images``, ``n_particles``, ``n_measurable``, ``unit``
        and ``unit_note`` (the same fields of :meth:`summary`)."""
        s = self.summary()
        return {k: s[k] for k in ("n_images", "n_particles", "n_measurable", "unit", "unit_note", "ecd_distribution")}

    def plot(self, path: Path) -> Path:
        """predict's psd.png of the page."""
        images = self.images
        return plot_run_psd([im.table for im in images], [im.info for im in images], path)

    def write_zip(self, path: Path) -> Path:
        """The folder ``nanoseg predict --roi`` writes for these images, as a zip (``nanoseg-results/...``)."""
        with tempfile.TemporaryDirectory(prefix="zip-", dir=self.root) as tmp:
            psd = self.plot(Path(tmp) / "psd.png")
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for image in self.images:
                    for f in sorted(image.out.iterdir()):
                        if f.name != "view.png":
                            zf.write(f, f"{RESULTS}/{f.name}")
                zf.writestr(f"{RESULTS}/particles.csv", self.particles().to_csv(index=False))
                zf.writestr(f"{RESULTS}/summary.json", json.dumps(jsonable(self.summary()), indent=2) + "\n")
                zf.write(psd, f"{RESULTS}/psd.png")
        return path

    def info(self) -> dict:
        """Model, settings and limits for the page."""
        from nanoseg import __version__

        s = self.settings
        return {"nanoseg_version": __version__, "model": self.model_ref, "variant": s.get("variant"),
                "threshold": s["threshold"], "tta": s["tta"],
                "model_pixel_size_nm": (s.get("training_scale") or {}).get("pixel_size_nm"),
                "limits": {"max_images": self.max_images, "max_image_bytes": self.max_bytes,
                           "max_pixels": self.max_pixels}}


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.3g}"


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- HTTP


def create_app(workspace: Workspace):
    """The FastAPI application serving the page and the API of the module docstring over ``workspace``."""
    app = FastAPI(title="nanoseg", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    ws = workspace

    @app.exception_handler(NotFound)
    def not_found(_request, exc):
        return JSONResponse({"message": str(exc)}, status_code=404)

    @app.exception_handler(NanosegError)
    def bad_request(_request, exc):
        return JSONResponse({"message": str(exc)}, status_code=400)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > ws.max_bytes + (1 << 20):
            return JSONResponse({"message": f"the upload is larger than {_mib(ws.max_bytes)} MiB; "
                                            "send a smaller file."}, status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info():
        return ws.info()

    @app.get("/api/images")
    def images():
        return [ws.result(im) for im in ws.images]

    @app.post("/api/images")
    def add_image(file: UploadFile = File(...), pixel_size: str | None = Form(None)):
        name = safe_name(file.filename)
        if file.size is not None:
            ws.check_size(file.size, name)  # before reading it into memory
        return ws.result(ws.add(file.file.read(), name, (pixel_size or "").strip() or None))

    @app.post("/api/images/{image_id}/rerun")
    def rerun(image_id: str, pixel_size: str | None = Form(None)):
        return ws.result(ws.rerun(image_id, (pixel_size or "").strip() or None))

    @app.delete("/api/images/{image_id}")
    def remove(image_id: str):
        ws.remove(image_id)
        return {"removed": image_id}

    @app.delete("/api/images")
    def clear():
        ws.clear()
        return {"removed": "all"}

    @app.get("/api/images/{image_id}/view.png")
    def view(image_id: str):
        return FileResponse(ws.get(image_id).out / "view.png", media_type="image/png")

    @app.get("/api/images/{image_id}/files/{name}")
    def download(image_id: str, name: str):
        return FileResponse(ws.file(image_id, name), filename=name)

    @app.get("/api/psd")
    def psd():
        return jsonable(ws.distribution())

    def temp_file(suffix: str) -> Path:
        fd, tmp = tempfile.mkstemp(suffix=suffix, dir=ws.root)
        os.close(fd)
        return Path(tmp)

    @app.get("/api/psd.png")
    def psd_png():
        path = ws.plot(temp_file(".png"))
        return FileResponse(path, media_type="image/png", background=BackgroundTask(path.unlink, missing_ok=True))

    @app.get("/api/particles.csv")
    def particles_csv():
        return Response(ws.particles().to_csv(index=False), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="particles.csv"'})

    @app.get("/api/results.zip")
    def results_zip():
        path = ws.write_zip(temp_file(".zip"))
        return FileResponse(path, filename="nanoseg-results.zip", media_type="application/zip",
                            background=BackgroundTask(path.unlink, missing_ok=True))

    return app
