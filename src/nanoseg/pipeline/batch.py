"""The engine of ``nanoseg batch`` (:mod:`nanoseg.cli.batch`): hundreds to thousands of micrographs on Spark, one table for the whole powder.

``nanoseg batch INPUT... --out DIR [--model URI] [--master local[*]|spark://HOST:PORT|yarn] [--partitions N]``

INPUTs are folders (their image files: ``.tif .tiff .png .jpg .jpeg``; ``--recursive`` for sub-folders),
globs (quote them: ``'data/*[0-9].tif'``), single files, or ``s3://bucket/prefix`` (every image object
under the prefix, or an ``fnmatch`` pattern such as ``s3://bucket/run7/*.tif``; endpoint and keys: the
project's S3 settings, :mod:`nanoseg.storage`). Local files are read through Spark's ``binaryFile``
source; S3 objects are fetched by the executors with :mod:`nanoseg.storage` (pyspark ships no S3
connector, and fetching one would be a Maven download).

The model (default ``models:/nanoseg@champion``) is loaded once per executor process by a
``mapInPandas`` function (:func:`analyse_partition`) that runs ``nanoseg predict``'s own per-image code
(:func:`nanoseg.inference.analyze.analyze`, in memory) on every file of its partition: same numbers as ``nanoseg
predict``. (MLflow's ``mlflow.pyfunc.spark_udf`` was measured against it, ``bench/batch_speed.py``: it
cannot return the per-particle rows as a Spark type, and one bad file fails its whole batch.)

What DIR holds::

    particles.parquet    one row per particle: particles.csv's columns and the file's sha256
    images.parquet       one row per input file: image, path, sha256, status (ok|error), message,
                         n_particles, pixel size and its source, the summary fields (nanoseg.serving.payload.summarize)
    summary.json         counts, the lognormal fit with bootstrap CIs over all measurable particles, failures
    psd.png              the pooled size distribution
    masks/, labels/      <stem>_<sha256[:8]>_mask.png / _labels.tif, with --masks / --labels
    parts/<id>/          what each finished partition wrote (images.parquet, particles.parquet)
    .nanoseg-batch.json  the batch's model (fingerprint) and its runs
    spark.log            Spark's own log of the last run

A bad or unreadable file becomes an ``error`` row with the one-line message ``nanoseg info`` gives for
it, and the batch goes on. Every partition commits its results atomically (a folder renamed into
``parts/``), so an interrupted batch keeps every finished partition. Running the same command again
skips the files already done — known by their content (sha256), so a renamed or copied file is not
analysed twice — analyses the new ones and rebuilds the tables from all parts. The tables and plots
are written atomically (:mod:`nanoseg.atomic`).

The executors write into DIR: on a cluster DIR must be a folder every executor and the driver see (a
shared file system); ``local[*]`` needs nothing. See the README's *Batches on Spark*.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from nanoseg.atomic import folder_mode, write_bytes, write_json, write_with
from nanoseg.errors import NanosegError, one_line

__all__ = ["DEFAULT_MODEL", "DEFAULT_MASTER", "IMAGE_SUFFIXES", "Source", "list_inputs", "model_fingerprint",
           "spark_session", "analyse_partition", "merge_parts", "batch_command"]

DEFAULT_MODEL = "models:/nanoseg@champion"
DEFAULT_MASTER = "local[*]"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
IMAGES_PER_PARTITION = 4  # default partition size: small enough that an interruption loses little
MANIFEST = ".nanoseg-batch.json"
PARTS = "parts"
OUTPUTS = ("particles.parquet", "images.parquet", "summary.json", "psd.png")
OWN_ENTRIES = {*OUTPUTS, PARTS, "masks", "labels", MANIFEST, "spark.log"}
_GLOB = re.compile(r"[*?\[]")
_LOCAL_MASTER = re.compile(r"^local(\[(\*|\d+)(,\s*\d+)?\])?$")

#: the first columns of images.parquet (the summary fields of nanoseg.serving.payload.summarize and the rest follow)
FIRST_COLUMNS = ("image", "path", "sha256", "status", "message", "n_particles", "n_measurable", "pixel_size_nm",
                 "pixel_size_source", "unit")
#: the result of a partition, one row per file it was given (what the driver collects)
STATUS_SCHEMA = "path string, sha256 string, status string, n_particles long, part string"


# ============================================================================ inputs


@dataclass(frozen=True)
class Source:
    """One input file: ``uri`` (``file:/abs/path`` or ``s3://bucket/key``), its size and modification time
    (ms; None for S3 objects) and the name shown in messages (``display``: the local path or the S3 URL)."""

    uri: str
    display: str
    size: int | None = None
    mtime_ms: int | None = None

    @property
    def name(self) -> str:
        return self.display.rstrip("/").rsplit("/", 1)[-1]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _local(path: Path) -> Source:
    path = Path(os.path.abspath(path))
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns // 1_000_000
    except OSError:  # a broken link: listed, and reported as the error row `nanoseg info` gives
        size = mtime = None
    return Source(f"file:{path}", str(path), size, mtime)


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(folder))
        return True
    except ValueError:
        return False


def _list_local(item: str, recursive: bool) -> list[Path]:
    path = Path(item).expanduser()
    if _GLOB.search(item):
        hits = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        files = [p for p in hits if not p.is_dir()]
        if not files:
            raise NanosegError(f"{item}: the pattern matches no file; check it (quote it so that the shell leaves "
                               "it to nanoseg, e.g. 'data/*.tif').")
        return files
    if path.is_dir():
        walk = path.rglob("*") if recursive else path.iterdir()
        files = sorted(p for p in walk if _is_image(p.name) and not p.is_dir())
        if not files:
            raise NanosegError(f"{item}: no image files ({' '.join(IMAGE_SUFFIXES)}) in this folder"
                               + ("" if recursive else " (--recursive also reads its sub-folders)")
                               + "; check the path.")
        return files
    if path.exists() or path.is_symlink():
        return [path]
    raise NanosegError(f"{item}: no such file or folder; check the path and the working folder.")


def _list_s3(item: str, client=None) -> list[Source]:
    from nanoseg import storage

    bucket, key = storage.parse_s3_url(item)
    client = client or storage.connect()
    match = _GLOB.search(key)
    prefix = key[: match.start()] if match else key
    keys = storage.list_keys(client, bucket, prefix)
    if match:
        keys = [k for k in keys if fnmatch.fnmatchcase(k, key)]
    elif key in keys:
        keys = [key]
    else:
        keys = [k for k in keys if _is_image(k)]
    if not keys:
        raise NanosegError(f"{item}: no image objects ({' '.join(IMAGE_SUFFIXES)}) under this prefix; check the "
                           "bucket, the prefix and the S3 endpoint (AWS_ENDPOINT_URL).")
    return [Source(f"s3://{bucket}/{k}", f"s3://{bucket}/{k}") for k in keys]


def list_inputs(inputs, out: Path | None = None, recursive: bool = False) -> list[Source]:
    """The input files of ``inputs`` (folders, globs, files, ``s3://`` prefixes), each once, in order.

    Files inside ``out`` (the batch's own outputs) are never inputs.

    Raises
    ------
    NanosegError
        An input that names no file, naming it and what to do.
    """
    sources, seen = [], set()
    for item in inputs:
        if str(item).startswith("s3://"):
            found = _list_s3(str(item))
        else:
            found = [_local(p) for p in _list_local(str(item), recursive) if out is None or not _inside(p, out)]
        for src in found:
            if src.uri not in seen:
                seen.add(src.uri)
                sources.append(src)
    return sources


def display_path(uri: str) -> str:
    """The path shown for a file Spark names ``uri`` (``file:/a/b c.tif`` -> ``/a/b c.tif``; Spark gives
    local paths undecoded, so a ``%`` in a name stays as it is)."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return uri


# ============================================================================ the model


def model_folder(ref: str, tmp: Path) -> Path:
    """A local folder holding the model (``nanoseg.json`` + ``model.keras``): ``ref`` itself, or the MLflow
    model ``ref`` downloaded into ``tmp``."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", ref):
        from nanoseg.model_store import download_model

        return Path(download_model(ref, tmp))
    folder = Path(ref)
    if not (folder / "nanoseg.json").is_file():
        raise NanosegError(f"{ref}: no such model folder (no nanoseg.json in it); pass --model with a folder written "
                           "by training (e.g. models/final) or a URI such as models:/nanoseg@champion.")
    return folder.absolute()


def model_fingerprint(folder: Path) -> str:
    """sha256 over the model folder's files (names and contents): what identifies the batch's model."""
    from nanoseg.storage import file_sha256

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


_LOADED: dict = {}


def _predictor(folder: str, threads: int):
    """The model of ``folder``, loaded once per process (an executor's Python worker is reused)."""
    if folder not in _LOADED:
        import tensorflow as tf

        from nanoseg.inference.loading import load_predictor

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already initialised in this process
            pass
        _LOADED[folder] = load_predictor(folder)
    return _LOADED[folder]


# ============================================================================ executors


def _failure(display: str, exc: BaseException) -> str:
    """The one-line message of a file that could not be analysed (``nanoseg predict``'s wording)."""
    if isinstance(exc, MemoryError):
        return f"{display}: not enough memory to analyse this image; give the executors more memory or split it."
    if isinstance(exc, NanosegError):
        return one_line(exc)
    return f"{display}: unexpected error ({type(exc).__name__}: {one_line(exc)}); please report it with the file."


def _fetch_s3(uri: str, work: Path, state: dict) -> bytes:
    from nanoseg import storage

    if "s3" not in state:
        state["s3"] = storage.connect()
    bucket, key = storage.parse_s3_url(uri)
    target = work / "fetched"
    storage.download_file(state["s3"], bucket, key, target, verify=False)
    try:
        return target.read_bytes()
    finally:
        target.unlink(missing_ok=True)


def analyse_file(data: bytes, display: str, cfg: dict, out: Path) -> tuple[dict, object]:
    """One file's bytes -> its images row (dict) and particle table (pandas, or None for an error row).

    The bytes are read under the file's own name (:func:`nanoseg.io.micrograph.read_micrograph` with
    ``data=``) and analysed in memory by :func:`nanoseg.inference.analyze.analyze`, ``nanoseg predict``'s own
    per-image computation: a bad file gets the message ``nanoseg info`` gives, the same numbers otherwise.
    """
    from nanoseg.inference.analyze import analyze
    from nanoseg.io.micrograph import read_micrograph
    from nanoseg.report.results import png_bytes, tif_bytes
    from nanoseg.serving.payload import summarize

    sha = hashlib.sha256(data).hexdigest()
    name = display.rstrip("/").rsplit("/", 1)[-1]
    row = {"image": name, "path": display, "sha256": sha, "size_bytes": len(data), "status": "ok",
           "message": None, "n_particles": 0}
    as_path = str(Path(display))  # a Path turns s3://b/k into s3:/b/k: messages name the URI again

    def named(message: str) -> str:
        return message.replace(as_path, display) if as_path != display else message

    try:
        notes: list[str] = []
        mg = read_micrograph(display, notes=notes, data=data)
        predictor, settings = _predictor(cfg["model"], cfg["threads"])
        result = analyze(predictor, settings, mg, notes=notes)
    except Exception as exc:  # noqa: BLE001 - one bad file is one error row, the batch goes on
        row.update(status="error", message=named(_failure(display, exc)))
        return row, None
    table, info = result.table, result.info
    info["notes"] = [named(n) for n in info["notes"]]
    row.update({k: info[k] for k in ("width", "height", "source_dtype", "pixel_size_nm", "pixel_size_source",
                                      "databar_row", "unit", "scale_factor", "polarity", "min_area_px",
                                      "seconds")})
    row["n_particles"] = int(len(table))
    row.update({k: v for k, v in summarize(table, info["foreground_fraction"]).items() if k != "n_particles"})
    row["notes"] = "; ".join(info["notes"]) or None
    stem = f"{Path(name).stem}_{sha[:8]}"
    for kind, suffix, encode in (("masks", "_mask.png", lambda: png_bytes(result.mask)),
                                 ("labels", "_labels.tif", lambda: tif_bytes(result.labels))):
        if cfg.get(kind):
            (out / kind).mkdir(exist_ok=True)
            write_bytes(out / kind / f"{stem}{suffix}", encode())
            row[f"{kind[:-1]}_file"] = f"{kind}/{stem}{suffix}"
    table = table.copy()
    table["sha256"] = sha
    return row, table


def _commit(out: Path, part: str, rows: list[dict], tables: list) -> None:
    """Write a partition's tables into ``parts/.<part>.tmp`` and rename it to ``parts/<part>`` (atomic)."""
    import pandas as pd

    parts = out / PARTS
    tmp = parts / f".{part}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        pd.DataFrame(rows).to_parquet(tmp / "images.parquet", index=False)
        particles = (pd.concat(tables, ignore_index=True) if tables
                     else pd.DataFrame({"sha256": pd.Series([], dtype=object)}))
        particles.to_parquet(tmp / "particles.parquet", index=False)
        os.chmod(tmp, folder_mode())
        os.replace(tmp, parts / part)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def analyse_partition(batches, cfg: dict, done):
    """``mapInPandas`` function: analyse the files of one partition and commit its part.

    Parameters
    ----------
    batches : iterator of pandas.DataFrame
        Rows of Spark's ``binaryFile`` source (``path``, ``content``; S3 objects come with no content and
        are fetched here).
    cfg : dict
        ``model`` (the local model folder, or the name of its archive given to ``SparkContext.addArchive``),
        ``threads`` (TensorFlow's), ``out``, ``run``, ``masks``, ``labels``.
    done : Broadcast of (set, dict, dict)
        sha256 of the contents already done (not analysed again: a ``duplicate`` row records the path), the
        driver's listing (path -> (size, modification time in ms), recorded with each row), and path ->
        sha256 of the files done (unchanged ones are skipped without a row).

    Yields
    ------
    pandas.DataFrame
        One row per file (:data:`STATUS_SCHEMA`), after the part is committed.
    """
    import pandas as pd
    from pyspark import SparkFiles, TaskContext

    cfg = dict(cfg)
    if not os.path.isabs(cfg["model"]):  # a cluster: the archive of the model folder, unpacked by Spark
        cfg["model"] = SparkFiles.get(cfg["model"])
    ctx = TaskContext.get()
    out, (known, stats, current) = Path(cfg["out"]), done.value
    rows, tables, status, state = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="nanoseg-batch-") as tmp:
        work = Path(tmp)
        for batch in batches:
            for uri, content in zip(batch["path"], batch["content"]):
                display = display_path(uri)
                size, mtime = stats.get(display, (None, None))
                try:
                    data = bytes(content) if content is not None else _fetch_s3(uri, work, state)
                except Exception as exc:  # noqa: BLE001 - an object that cannot be fetched is an error row
                    rows.append({"image": display.rsplit("/", 1)[-1], "path": display, "sha256": None,
                                 "size_bytes": size, "mtime_ms": mtime, "status": "error",
                                 "message": _failure(display, exc), "n_particles": 0})
                    status.append((uri, None, "error", 0))
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if current.get(display) == sha:  # unchanged since it was done (an S3 object read again)
                    status.append((uri, sha, "skipped", 0))
                    continue
                if sha in known:
                    rows.append({"image": display.rsplit("/", 1)[-1], "path": display, "sha256": sha,
                                 "size_bytes": len(data), "mtime_ms": mtime, "status": "duplicate",
                                 "message": None, "n_particles": 0})
                    status.append((uri, sha, "duplicate", 0))
                    continue
                row, table = analyse_file(data, display, cfg, out)
                row["mtime_ms"] = mtime
                rows.append(row)
                if table is not None:
                    tables.append(table)
                status.append((uri, row["sha256"], row["status"], row["n_particles"]))
    part = (f"{cfg['run']}-p{ctx.partitionId():05d}-a{ctx.attemptNumber()}-n{len(rows)}-{uuid.uuid4().hex[:6]}"
            if ctx else f"{cfg['run']}-local-n{len(rows)}-{uuid.uuid4().hex[:6]}")
    if rows:
        _commit(out, part, rows, tables)
    yield pd.DataFrame(status, columns=["path", "sha256", "status", "n_particles"]).assign(part=part)


# ============================================================================ Spark


def _spark_ready() -> None:
    """Raise NanosegError unless pyspark and a Java runtime are there."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise NanosegError("nanoseg batch needs pyspark: install the pinned stack (`make install`, "
                           "requirements.lock).") from None
    _java()


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin/java") if home and (Path(home) / "bin/java").is_file() else shutil.which("java")
    if not java:
        raise NanosegError("nanoseg batch runs on Spark, which needs a Java runtime (17 or newer), and none was "
                           "found (no java on PATH, no JAVA_HOME): install one, e.g. `apt-get install "
                           "default-jre-headless` (Debian's Java 17+; `make java` does it), or set JAVA_HOME.")
    return java


def under_spark_submit() -> bool:
    """Whether this process was started by ``spark-submit`` (its JVM and settings are already there)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_slots(master: str | None) -> int | None:
    """How many tasks a ``local[...]`` master runs at once (None for a cluster master)."""
    m = _LOCAL_MASTER.match((master or "").strip())
    if not m:
        return None
    return os.cpu_count() or 1 if m.group(2) in (None, "*") else int(m.group(2))


def parse_conf(items) -> dict:
    conf = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise NanosegError(f"--conf {item}: give a Spark setting as KEY=VALUE, e.g. --conf "
                               "spark.executor.memory=6g.")
        conf[key.strip()] = value.strip()
    return conf


def spark_session(master: str | None = DEFAULT_MASTER, conf: dict | None = None, log: Path | None = None):
    """A Spark session for nanoseg: local masters bound to 127.0.0.1, no UI, quiet (the JVM's output goes to
    ``log``), unreadable and vanished files skipped by the reader (they become error rows), workers on this
    Python. Nothing is downloaded (no packages, no ivy). ``master`` None: the one ``spark-submit`` was given
    (or Spark's default)."""
    _spark_ready()
    from pyspark.sql import SparkSession

    local = local_slots(master) is not None
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    settings = {"spark.app.name": "nanoseg batch", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                "spark.sql.files.ignoreCorruptFiles": "true", "spark.sql.files.ignoreMissingFiles": "true",
                "spark.sql.session.timeZone": "UTC", "spark.python.worker.reuse": "true",
                "spark.driver.memory": "2g"}
    if local:
        settings.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    settings.update(conf or {})
    builder = SparkSession.builder.master(master) if master else SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    saved = None
    if log is not None:  # the JVM (and the Python workers it starts) inherit these descriptors
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        saved = (os.dup(1), os.dup(2))
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pyspark's note on pandas 3
            spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - a JVM that does not start
        raise NanosegError(f"Spark did not start on master {master} ({one_line(exc, 300)}); see "
                           f"{log or 'its log'}.") from None
    finally:
        if saved:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _partitions(spark, n_files: int, requested: int | None) -> int:
    if requested is not None:
        if requested < 1:
            raise NanosegError(f"--partitions {requested}: give a whole number of at least 1.")
        return min(requested, max(n_files, 1))
    slots = spark.sparkContext.defaultParallelism
    return max(1, min(n_files, max(slots, math.ceil(n_files / IMAGES_PER_PARTITION))))


def _escape(path: str) -> str:
    """A path for Spark's reader, which reads glob patterns: its metacharacters escaped."""
    return re.sub(r"([*?\[\]{}\\])", r"\\\1", path)


def _frame(spark, pending: list[Source], partitions: int):
    """The pending files as one DataFrame (path, content) in about ``partitions`` partitions: local files
    through the ``binaryFile`` source (packed by size: no shuffle of the bytes), S3 objects as paths."""
    from pyspark.sql.types import BinaryType, StringType, StructField, StructType

    local = [s for s in pending if not s.uri.startswith("s3://")]
    remote = [s for s in pending if s.uri.startswith("s3://")]
    frames, n_local = [], 0
    if local:
        total = sum(s.size or 0 for s in local)
        n_local = max(1, round(partitions * len(local) / len(pending)))
        spark.conf.set("spark.sql.files.openCostInBytes", "1")
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(1, math.ceil((total + len(local)) / n_local))))
        spark.conf.set("spark.sql.files.minPartitionNum", str(n_local))
        try:
            frames.append(spark.read.format("binaryFile").load([_escape(s.uri) for s in local])
                          .select("path", "content"))
        except Exception as exc:  # noqa: BLE001 - AnalysisException: a file removed since it was listed
            raise NanosegError(f"an input file disappeared while the batch started ({one_line(exc, 300)}); run the "
                               "same command again.") from None
    if remote:
        schema = StructType([StructField("path", StringType()), StructField("content", BinaryType())])
        n_remote = max(1, partitions - n_local)
        rdd = spark.sparkContext.parallelize([(s.uri, None) for s in remote], min(n_remote, len(remote)))
        frames.append(spark.createDataFrame(rdd, schema))
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


def _count_committed(parts: Path, run: str) -> int:
    n = 0
    try:
        for entry in os.scandir(parts):
            m = re.match(rf"^{re.escape(run)}-.*-n(\d+)-", entry.name)
            if m:
                n += int(m.group(1))
    except OSError:
        pass
    return n


def run_partitions(spark, pending: list[Source], cfg: dict, done: tuple, n_parts: int) -> list:
    """Analyse ``pending`` on Spark in about ``n_parts`` partitions; return the status rows (one per file
    Spark could read). A progress bar follows the committed parts."""
    from functools import partial

    from tqdm import tqdm

    sc = spark.sparkContext
    frame = _frame(spark, pending, n_parts)
    stats = {s.display: (s.size, s.mtime_ms) for s in pending}
    shas, current = done
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pyspark's note on pandas 3 (mapInPandas works with it)
        job = frame.mapInPandas(partial(analyse_partition, cfg=cfg, done=sc.broadcast((shas, stats, current))),
                                STATUS_SCHEMA)
    result: dict = {}

    def collect():
        try:
            result["rows"] = job.collect()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result["error"] = exc

    worker = threading.Thread(target=collect, name="nanoseg-batch-job", daemon=True)
    parts = Path(cfg["out"]) / PARTS
    with tqdm(total=len(pending), desc="nanoseg batch", unit="image", mininterval=1) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            done_now = min(len(pending), _count_committed(parts, cfg["run"]))
            if done_now > bar.n:
                bar.update(done_now - bar.n)
    if "error" in result:
        lines = [ln for ln in str(result["error"]).splitlines() if ln.strip()] or [type(result["error"]).__name__]
        raise NanosegError(f"the Spark job failed ({one_line(lines[-1], 400)}); the finished partitions are "
                           f"kept in {parts}: run the same command again to do the rest (Spark's log: "
                           f"{Path(cfg['out']) / 'spark.log'}).") from None
    return [r.asDict() for r in result["rows"]]


# ============================================================================ merging the parts


def _read_parts(out: Path):
    """All committed parts: (images rows, particles) as pandas DataFrames, parts in commit-name order."""
    import pandas as pd

    images, particles = [], []
    parts = out / PARTS
    for part in sorted(p for p in parts.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if parts.is_dir() else []:
        try:
            img = pd.read_parquet(part / "images.parquet")
            par = pd.read_parquet(part / "particles.parquet")
        except Exception:  # noqa: BLE001 - a part damaged outside nanoseg: its files are analysed again
            continue
        order = len(images)
        images.append(img.assign(_part=part.name, _order=order))
        particles.append(par.assign(_part=part.name))
    img = pd.concat(images, ignore_index=True) if images else pd.DataFrame(
        columns=["image", "path", "sha256", "status", "message", "n_particles", "_part", "_order"])
    par = pd.concat(particles, ignore_index=True) if particles else pd.DataFrame(columns=["sha256", "_part"])
    return img, par


def _choose(images):
    """The current state of the batch from all part rows.

    Each path's latest row counts (a file changed since is what it is now). Rows of paths with the same
    content (sha256) are one file: the first path's row is kept, the other paths are duplicates of it
    (their particles are not counted twice); a path whose latest row says ``duplicate`` (content done
    before, under another name) takes the results of that content's latest analysis.

    Returns
    -------
    (rows, duplicates)
        ``rows``: one images row per file content (and per path Spark could not read), sorted by path;
        ``duplicates``: ``[{"path", "same_content_as"}]``.
    """
    import pandas as pd

    if not len(images):
        return images, []
    latest = images.sort_values("_order", kind="stable").groupby("path", sort=False).tail(1)
    unread = latest[latest["sha256"].isna()]
    read = latest[latest["sha256"].notna()].sort_values("path", kind="stable")
    analysed = images[images["sha256"].notna() & (images["status"] != "duplicate")]
    by_sha = analysed.sort_values("_order", kind="stable").groupby("sha256", sort=False).tail(1)
    by_sha = by_sha.set_index("sha256", drop=False)
    chosen, duplicates, owner = [], [], {}
    read = pd.concat([read[read["status"] != "duplicate"], read[read["status"] == "duplicate"]])
    for _, row in read.iterrows():
        sha = row["sha256"]
        if sha in owner:
            duplicates.append({"path": row["path"], "same_content_as": owner[sha]})
            continue
        if row["status"] == "duplicate":  # analysed before under another path, which holds other content now
            if sha not in by_sha.index:  # its results are gone (a part removed by hand): analysed again next run
                continue
            path, row = row["path"], by_sha.loc[sha].copy()
            row["path"], row["image"] = path, path.rsplit("/", 1)[-1]
        owner[sha] = row["path"]
        chosen.append(row)
    rows = pd.concat([pd.DataFrame(chosen), unread], ignore_index=True) if chosen else unread
    return rows.sort_values("path", kind="stable").reset_index(drop=True), duplicates


def _key(path, size, mtime) -> tuple:
    """A file's identity in a listing: path, size and modification time (None where unknown)."""
    def whole(v):
        return None if v is None or v != v else int(v)  # v != v: NaN from parquet
    return str(path), whole(size), whole(mtime)


def done_index(out: Path, retry_errors: bool = False) -> tuple[set, set, dict]:
    """What earlier runs finished.

    Returns
    -------
    (set, set, dict)
        The sha256 of the contents done; the :func:`_key` of the files whose current row is done (a
        content done, or, unless ``retry_errors``, a file that could not be read and has not changed
        since); path -> sha256 of the files whose content is done. Error rows count as done unless
        ``retry_errors``.
    """
    images, _ = _read_parts(out)
    if not len(images):
        return set(), set(), {}
    rows, _ = _choose(images)
    final = rows[rows["sha256"].notna() & ((rows["status"] == "ok") | (not retry_errors))]
    shas = set(final["sha256"])
    latest = images.sort_values("_order", kind="stable").groupby("path", sort=False).tail(1)
    content = latest[latest["sha256"].isin(shas)]
    current = dict(zip(content["path"], content["sha256"]))
    if "mtime_ms" not in latest:
        return shas, set(), current
    seen = latest[latest["sha256"].isin(shas) | (latest["sha256"].isna() & (not retry_errors))]
    return shas, {_key(p, s, m) for p, s, m in zip(seen["path"], seen["size_bytes"], seen["mtime_ms"])}, current


def _pooled(rows, particles):
    """The ECDs of the measurable particles of the ok images and their unit (:func:`nanoseg.measure.distribution.pooled_ecd`)."""
    import numpy as np

    from nanoseg.measure.distribution import pooled_ecd

    ok = rows[rows["status"] == "ok"]
    if not len(ok):
        return np.zeros(0), "nm"
    infos = [{"pixel_size_nm": None if v is None or v != v else float(v)} for v in ok["pixel_size_nm"]]
    if not len(particles) or "measurable" not in particles:
        return np.zeros(0), "nm" if all(i["pixel_size_nm"] for i in infos) else "px"
    groups = dict(tuple(particles.groupby("sha256", sort=False)))
    empty = particles.iloc[0:0]
    return pooled_ecd([groups.get(s, empty) for s in ok["sha256"]], infos)


def _plain(value):
    """``value`` for JSON: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def merge_parts(out: Path, meta: dict, run_info: dict) -> dict:
    """Rebuild particles.parquet, images.parquet, summary.json and psd.png from every committed part
    (each written atomically); returns the summary."""
    import pandas as pd

    from nanoseg import __version__
    from nanoseg.measure.distribution import plot_psd, size_distribution

    images, particles = _read_parts(out)
    rows, duplicates = _choose(images)
    keep = set(zip(rows["sha256"], rows["_part"])) if len(rows) else set()
    if len(particles):
        particles = particles[[(s, p) in keep for s, p in zip(particles["sha256"], particles["_part"])]]
        particles = particles.drop(columns=["_part"]).reset_index(drop=True)
    else:
        particles = particles.drop(columns=["_part"])
    table = rows.drop(columns=[c for c in ("_part", "_order", "mtime_ms") if c in rows]).reset_index(drop=True)
    table = table[[c for c in FIRST_COLUMNS if c in table] + [c for c in table if c not in FIRST_COLUMNS]]
    write_with(out / "particles.parquet", lambda tmp: particles.to_parquet(tmp, index=False))
    write_with(out / "images.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    ecd, unit = _pooled(rows, particles)
    ok = rows[rows["status"] == "ok"] if len(rows) else rows
    failed = rows[rows["status"] == "error"] if len(rows) else rows
    plot_psd({"ECD (measurable particles)": ecd}, out / "psd.png", unit=unit,
             title=f"{len(ecd)} measurable particles in {len(ok)} image(s)")
    summary = {
        "nanoseg_version": __version__, "written_by": "nanoseg batch", **meta, "unit": unit,
        "unit_note": "sizes in nm" if unit == "nm" else
        "sizes in px: no pixel size for at least one image", "n_files": int(len(rows)),
        "n_images": int(len(ok)), "n_failed": int(len(failed)),
        "n_particles": int(ok["n_particles"].sum()) if len(ok) else 0, "n_measurable": int(len(ecd)),
        "ecd_distribution": size_distribution(ecd, unit=unit),
        "failed": [{"image": i, "path": p, "message": m} for i, p, m in
                   zip(failed["image"], failed["path"], failed["message"])],
        "duplicates": duplicates, "last_run": run_info,
    }
    write_json(out / "summary.json", _plain(summary))
    return summary


# ============================================================================ the output folder


def _read_manifest(out: Path) -> dict | None:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "nanoseg batch" else None


def check_out(out: Path, fingerprint: str, model: str, overwrite: bool) -> dict | None:
    """Refuse an ``--out`` that is not this batch's folder; return its manifest (None for a new folder).

    A folder of another model is refused (its results would mix) unless ``overwrite``, which then removes
    the batch's own files (never a folder holding anything else)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise NanosegError(f"{out}: exists and is not a folder; choose another --out.")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest = _read_manifest(out)
    entries = {p.name for p in out.iterdir()}
    if manifest is None:
        raise NanosegError(f"{out}: not a folder written by nanoseg batch (no {MANIFEST}); choose a new or empty "
                           "--out.")
    if manifest.get("model_fingerprint") == fingerprint and not overwrite:
        return manifest
    foreign = sorted(entries - OWN_ENTRIES)
    if foreign:
        raise NanosegError(f"{out}: holds files nanoseg batch did not write ({', '.join(foreign[:3])}); move them "
                           "away or choose another --out.")
    if not overwrite:
        raise NanosegError(f"{out}: holds the results of another model ({manifest.get('model')}, fingerprint "
                           f"{str(manifest.get('model_fingerprint'))[:12]}); this run's model {model} has fingerprint "
                           f"{fingerprint[:12]}, and the two would mix. Choose another --out, or pass --overwrite to "
                           "start this folder again.")
    for name in entries & OWN_ENTRIES:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return None
# ============================================================================ a run


def _unreadable(sources: list[Source], run: str, out: Path) -> None:
    """Error rows for files Spark listed but could not read, with the message ``nanoseg info`` gives."""
    from nanoseg.io.micrograph import probe_image

    rows = []
    for src in sources:
        try:
            if src.uri.startswith("s3://"):
                raise NanosegError(f"{src.display}: the object could not be read; check it and run the batch again.")
            probe_image(src.display)
            with open(src.display, "rb") as fh:
                fh.read(1)
            message = f"{src.display}: Spark could not read this file; check it and run the batch again."
        except NanosegError as exc:
            message = one_line(exc)
        except OSError as exc:
            message = f"{src.display}: cannot open the file ({exc.strerror}); check its permissions."
        rows.append({"image": src.name, "path": src.display, "sha256": None, "size_bytes": src.size,
                     "mtime_ms": src.mtime_ms, "status": "error", "message": message, "n_particles": 0})
    if rows:
        _commit(out, f"{run}-driver-n{len(rows)}-{uuid.uuid4().hex[:6]}", rows, [])


def _settings(folder: Path) -> dict:
    from nanoseg.inference.loading import resolve_settings

    meta = json.loads((folder / "nanoseg.json").read_text())
    settings = resolve_settings(meta)
    return {"variant": meta.get("variant"), "model_run_id": meta.get("mlflow_run_id"),
            "threshold": settings["threshold"], "postprocess": settings["postprocess"]}


def _clean_stale(out: Path) -> None:
    parts = out / PARTS
    if parts.is_dir():
        for tmp in parts.glob(".*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


def _run_counts(out: Path, run: str) -> dict:
    """How many files this run analysed, found already done under another name, or could not read."""
    import pandas as pd

    counts = {"ok": 0, "error": 0, "duplicate": 0}
    for part in (out / PARTS).glob(f"{run}-*"):
        try:
            status = pd.read_parquet(part / "images.parquet", columns=["status"])["status"]
        except Exception:  # noqa: BLE001
            continue
        for key, n in status.value_counts().items():
            counts[key] = counts.get(key, 0) + int(n)
    return counts


def run_batch(inputs, out, model: str | None = None, master: str | None = None, partitions: int | None = None,
              conf: dict | None = None, recursive: bool = False, masks: bool = False, labels: bool = False,
              retry_errors: bool = False, overwrite: bool = False) -> tuple[dict, dict, bool]:
    """Analyse the files of ``inputs`` not yet done into ``out`` (see the module docstring).

    Returns
    -------
    (dict, dict, bool)
        The batch's summary (``summary.json``), this run's record (``.nanoseg-batch.json`` ``runs``) and
        whether it was interrupted (Ctrl-C: the finished partitions are kept).
    """
    master = master or (None if under_spark_submit() else DEFAULT_MASTER)
    model = model or DEFAULT_MODEL
    if partitions is not None and int(partitions) < 1:
        raise NanosegError(f"--partitions {partitions}: give a whole number of at least 1.")
    if str(out).startswith("s3://"):
        raise NanosegError(f"{out}: --out must be a folder on a file system the driver and the executors "
                           "share; write the batch there and copy it to S3 afterwards.")
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise NanosegError(f"{out}: exists and is not a folder; choose another --out.")
    sources = list_inputs(inputs, out, recursive)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:4]}"
    options = {"partitions": partitions, "masks": masks, "labels": labels}
    with tempfile.TemporaryDirectory(prefix="nanoseg-batch-model-") as tmp:
        folder = model_folder(model, Path(tmp))
        fingerprint = model_fingerprint(folder)
        manifest = check_out(out, fingerprint, model, overwrite)
        meta = {"model": model, "model_fingerprint": fingerprint, **_settings(folder)}
        manifest = manifest or {"written_by": "nanoseg batch", "created": started, **meta, "runs": []}
        shas, files, current = done_index(out, retry_errors)
        pending = [s for s in sources if s.uri.startswith("s3://") or _key(s.display, s.size, s.mtime_ms) not in files]
        gone = [s for s in pending if s.size is None and not s.uri.startswith("s3://")]  # broken links
        readable = [s for s in pending if s not in gone]
        if readable:  # before anything is written
            _spark_ready()
        (out / PARTS).mkdir(parents=True, exist_ok=True)
        _clean_stale(out)
        run_info = {"run": run, "started": started, "master": master, "inputs": list(map(str, inputs)),
                    "files": len(sources), "already_done": len(sources) - len(pending), "status": "running"}
        manifest["runs"] = [*manifest.get("runs", []), run_info]
        write_json(out / MANIFEST, manifest)
        interrupted = False
        try:
            _unreadable(gone, run, out)
            if readable:
                _run(readable, folder, out, run_info, master, conf or {}, options, (shas, current))
            run_info["status"] = "done"
        except KeyboardInterrupt:
            interrupted, run_info["status"] = True, "interrupted"
        except BaseException:
            run_info["status"] = "failed"
            raise
        finally:
            run_info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            run_info.update(_run_counts(out, run))
            write_json(out / MANIFEST, manifest)
            summary = merge_parts(out, meta, run_info)
    return summary, run_info, interrupted


def _executor_env(master: str | None) -> dict:
    """Spark settings passing the project's S3 settings to local executors (their Python workers are started
    by a JVM that may be older than this process's environment)."""
    from nanoseg.storage import ENDPOINT_ENV_VARS

    if local_slots(master) is None:
        return {}
    names = (*ENDPOINT_ENV_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CA_BUNDLE", "PYTHONPATH")
    return {f"spark.executorEnv.{n}": os.environ[n] for n in names if os.environ.get(n)}


def _run(pending, folder: Path, out: Path, run_info: dict, master: str | None, conf: dict, options: dict,
         done: tuple) -> None:
    """Start Spark, analyse ``pending``, add error rows for the files it could not read, stop Spark. Records in
    ``run_info`` the master used and the files found unchanged since they were done (S3 objects are read
    again to know)."""
    import signal

    handler = signal.getsignal(signal.SIGINT)  # pyspark installs its own (cancel the jobs, KeyboardInterrupt)
    spark = spark_session(master, {**_executor_env(master), **conf}, out / "spark.log")
    tmp = tempfile.mkdtemp(prefix="nanoseg-batch-")
    run, run_info["master"] = run_info["run"], spark.sparkContext.master
    try:
        n_parts = _partitions(spark, len(pending), options["partitions"])
        slots = local_slots(spark.sparkContext.master)
        if slots is None:  # the executors get the model folder from the driver, as an archive they unpack
            archive = _model_archive(folder, Path(tmp))
            spark.sparkContext.addArchive(str(archive))
            model_ref, threads = archive.name, int(spark.conf.get("spark.task.cpus", "1"))
        else:  # local: the folder itself; the cores shared by the tasks running at once
            model_ref, threads = str(folder), max(1, (os.cpu_count() or 1) // max(1, min(slots, n_parts)))
        cfg = {"model": model_ref, "threads": threads, "out": str(out), "run": run,
               "masks": bool(options["masks"]), "labels": bool(options["labels"])}
        rows = run_partitions(spark, pending, cfg, done, n_parts)
        seen = {display_path(r["path"]) for r in rows}
        _unreadable([s for s in pending if s.display not in seen], run, out)
        run_info["already_done"] += sum(r["status"] == "skipped" for r in rows)
    except (NanosegError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - Py4J / Spark errors: one line, the log has the rest
        lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        last = next((ln for ln in lines if "Exception" in ln or "Error" in ln), lines[0])
        raise NanosegError(f"Spark on {spark.sparkContext.master}: {one_line(last, 400)} (Spark's log: "
                           f"{out / 'spark.log'}); the finished partitions are kept.") from None
    finally:
        spark.stop()
        signal.signal(signal.SIGINT, handler)
        shutil.rmtree(tmp, ignore_errors=True)


def _model_archive(folder: Path, tmp: Path) -> Path:
    """The model folder as an uncompressed zip for ``SparkContext.addArchive`` (executors unpack it)."""
    import zipfile

    archive = tmp / f"nanoseg-model-{model_fingerprint(folder)[:12]}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return archive
