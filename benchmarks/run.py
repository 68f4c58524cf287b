"""The inspectd benchmark: python benchmarks/run.py [--images N]   (make bench)

Workload: N generated 1280x1024 8-bit grayscale PNGs, about half with the mark (cached under
bench-results/cache/), then the same frames as JPEGs (quality 92; --jpeg-rounds bursts, no latency run).
Measured in one run, on the same files:

  ceiling    decode + resize of the files alone, on all cores (a thread per core; the decoders drop the
             GIL), measured before and after each burst (the machine's speed drifts between minutes),
             twice: with cv2.imdecode (OpenCV's libpng), then with the decode stage's own decoder
             (daemon/intake/pixels.py: libdeflate and a delta decode for these files)
  naive      the tutorial script: cv2.imread, model.predict on one image, one SQLAlchemy commit per row
             (on a subset: it is slow; the same architecture as the bundled model, whose weights do not
             change its cost)
  inspectd   the real daemon (default config, SQLite, bundled model): --rounds bursts of N files dropped
             at once, files dropped -> rows committed, archive moves included, each compared with the
             ceilings measured around it (the median round is reported); then a steady rate at half that
             throughput for latency percentiles (file ready -> row committed, the daemon's own clock);
             one image alone; start-up to ready; peak and steady RSS
  CPU        CPU time per image of the ceiling's process and of the daemon's during each burst: how much
             more work the daemon does per image, less swayed than rates by what else the machine runs
  runtimes   inference cost per image of the bundled network, batch of 32: LiteRT running the network
             the daemon chose at load on this CPU (model/choice.py); LiteRT running each of the two
             networks the version ships (int8, float); a compiled TensorFlow call of the same
             architecture (tf.function with a fixed input signature)

Prints a table with the ratios inspectd/ceiling and inspectd/naive; writes bench-results/bench.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from inspectd.core.preprocess import preprocess
from inspectd.core.registry import ModelRegistry, bundled_model_dir
from inspectd.daemon import memory
from inspectd.daemon.intake.pixels import decode_pixels
from inspectd.model.choice import network_name, time_per_input
from inspectd.model.runtime import Inferencer
from inspectd.ops.synth import SynthSpec, generate

ROOT = Path(__file__).resolve().parent.parent
SPEC = SynthSpec(width=1280, height=1024, mark_min=96, mark_max=220)


JPEG_QUALITY = 92  # the JPEG workload: the same frames, as a camera set to high quality writes them


def _make(args: tuple[int, Path]) -> None:
    index, path = args
    sample = generate(np.random.default_rng(10_000 + index), SPEC)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
    cv2.imwrite(str(path), sample.image, params)


def workload(count: int, cache: Path, kind: str = "png") -> list[Path]:
    """``count`` generated frames as ``kind`` files ("png", "jpeg"), made once and cached."""
    folder = cache / f"{kind}-1280x1024-{count}"
    files = [folder / f"bench-{i:06d}.{'jpg' if kind == 'jpeg' else kind}" for i in range(count)]
    if not all(f.exists() for f in files):
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_make, [(i, f) for i, f in enumerate(files) if not f.exists()], chunksize=16))
        print(f"generated {count} images in {time.monotonic() - started:.0f}s (cached in {folder})")
    return files


@dataclass(frozen=True)
class Run:
    images_per_s: float
    cpu_ms_per_image: float  # CPU time of every thread of the process doing the work, per image


DECODERS = ("opencv", "inspectd")  # cv2.imdecode; the decode stage's decode_pixels
MAX_PIXELS = 100_000_000


def ceiling(files: list[Path], size: tuple[int, int], decoder: str = "opencv") -> Run:
    def one(path: Path) -> None:
        image: npt.NDArray[np.generic] | None
        if decoder == "opencv":
            image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        else:
            image = decode_pixels(path.read_bytes(), MAX_PIXELS)
        assert image is not None, path
        preprocess(image, size)

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, files))
    return Run(len(files) / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / len(files))


def floor(files: list[Path], result: dict[str, Any], model: Path | None, sample: int = 400) -> dict[str, Any]:
    """The CPU per image of the work no daemon can leave out, and the burst rate it alone allows on every
    core: decoding and resizing with the decode stage's decoder (the decoder ceiling's CPU per image),
    reading the file and its SHA-256 (every row's identity), and the chosen network on a batch of 32
    (one thread, as the daemon runs it). A target above ``max_over_*`` cannot be met by any daemon that
    does that work, however little else it does."""
    sample_files = files[:sample]
    cpu = time.process_time()
    for path in sample_files:
        hashlib.sha256(path.read_bytes()).digest()
    hash_ms = 1000 * (time.process_time() - cpu) / len(sample_files)
    lite = Inferencer.load(model or bundled_model_dir(), num_threads=1)
    x = np.random.default_rng(0).random((32, *lite.input_size, 1), dtype=np.float32)
    lite.logits(x)
    cpu = time.process_time()
    for _ in range(20):
        lite.logits(x)
    infer_ms = 1000 * (time.process_time() - cpu) / (20 * len(x))
    decode_ms = statistics.median(result["decoder_ceiling_cpu_ms_per_image"])
    total = decode_ms + hash_ms + infer_ms
    most = (os.cpu_count() or 1) * 1000 / total
    return {
        "decode_resize_cpu_ms": decode_ms,
        "read_sha256_cpu_ms": hash_ms,
        "inference_cpu_ms": infer_ms,
        "cpu_ms_per_image": total,
        "daemon_other_cpu_ms": statistics.median(result["burst_cpu_ms_per_image"]) - total,
        "max_images_per_s": most,
        "max_over_ceiling": most / statistics.median(result["ceiling_runs_images_per_s"]),
        "max_over_decoder_ceiling": most / statistics.median(result["decoder_ceiling_runs_images_per_s"]),
    }


class NaiveBase(DeclarativeBase):
    pass


class NaiveRow(NaiveBase):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    score: Mapped[float]


def naive(files: list[Path], tmp: Path) -> float:
    """What a user would write from the usual tutorials."""
    from inspectd.train.nets.small import small_cnn

    engine = sa.create_engine(f"sqlite:///{tmp / 'naive.db'}")
    NaiveBase.metadata.create_all(engine)
    model = small_cnn((128, 128))
    model.predict(np.zeros((1, 128, 128, 1), np.float32), verbose=0)  # warm-up, not timed
    started = time.perf_counter()
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert image is not None, path
        x = cv2.resize(image, (128, 128)).astype(np.float32)[np.newaxis, :, :, np.newaxis] / 255.0
        score = float(model.predict(x, verbose=0)[0, 0])
        with Session(engine) as session:
            session.add(NaiveRow(name=path.name, score=score))
            session.commit()
    return len(files) / (time.perf_counter() - started)


def runtimes(batch: int = 32, repeats: int = 20, version: Path | None = None) -> dict[str, float]:
    """Milliseconds per image of the bundled network in each runtime, batch of ``batch``; with
    ``version`` (a version folder), that network as shipped (LiteRT) too."""
    from inspectd.train.nets.small import small_cnn
    from inspectd.train.tf import tensorflow

    tf = tensorflow()
    lite = Inferencer.load(bundled_model_dir(), num_threads=os.cpu_count() or 1)
    x = np.random.default_rng(0).random((batch, *lite.input_size, 1), dtype=np.float32)

    calls: dict[str, Any] = {}  # name -> a call on a batch of ``batch`` inputs
    chosen = network_name(lite.network)
    calls[f"litert_{chosen}_chosen"] = lambda: lite.logits(x)
    for network in ("shipped", "float"):
        each = Inferencer.load(bundled_model_dir(), num_threads=os.cpu_count() or 1, network=network)
        calls[f"litert_{network_name(each.network)}"] = lambda each=each: each.logits(x)
    model = small_cnn(lite.input_size)
    compiled = tf.function(
        lambda t: model(t, training=False),
        jit_compile=False,
        input_signature=[tf.TensorSpec((batch, *lite.input_size, 1), tf.float32)],
    )
    calls["tensorflow_compiled_float"] = lambda: compiled(x).numpy()
    if version is not None:
        other = Inferencer.load(version, num_threads=os.cpu_count() or 1)
        xm = np.random.default_rng(0).random((batch, *other.input_size, 1), dtype=np.float32)
        calls[f"model_litert_{network_name(other.network)}"] = lambda: other.logits(xm)
    # interleaved (as the daemon times its networks at load): a drift of the machine's speed, or the first
    # calls' warm-up, falls on every runtime alike instead of on whichever was timed first
    return time_per_input(calls, batch, repeats, statistics.median)


def wait_ready(port: int, timeout: float | None = None) -> None:
    """Until the daemon on ``port`` answers /readyz with 200 (RuntimeError after ``timeout`` seconds)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while it starts
            pass
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeError(f"the daemon on port {port} is not ready after {timeout} s")
        time.sleep(0.02)


class Daemon:
    def __init__(
        self, root: Path, port: int, model: Path | None = None, source: Path = ROOT, extra: str = ""
    ) -> None:
        """``source``: the checkout whose ``inspectd`` runs (benchmarks/compare.py runs an older one);
        ``extra``: more configuration (TOML sections)."""
        self.root = root
        self.port = port
        env = {**os.environ, "PYTHONPATH": str(source)}
        # the default config but for the port: logs at info, a JSON line per image (into daemon.log)
        (root / "config.toml").write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n{extra}')
        subprocess.run(
            [sys.executable, "-m", "inspectd", "--config", str(root / "config.toml"), "db", "upgrade"],
            check=True,
            capture_output=True,
            cwd=source,
            env=env,
        )
        if model is not None:  # a version folder (a retrain's) instead of the bundled model
            registry = ModelRegistry(root / "var" / "models")
            registry.activate(registry.install(model).version, reason="benchmark --model")
        self.started = time.monotonic()
        self.log = (root / "daemon.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inspectd", "--config", str(root / "config.toml"), "run"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=source,
            env=env,
        )
        self.engine = sa.create_engine(f"sqlite:///{root / 'var' / 'inspectd.db'}")
        wait_ready(port)
        self.startup_s = time.monotonic() - self.started

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM results")).scalar() or 0)

    def latencies(self, after_id: int) -> list[float]:
        with self.engine.connect() as conn:
            return [
                float(v)
                for (v,) in conn.execute(
                    sa.text("SELECT latency_s FROM results WHERE id > :i"), {"i": after_id}
                )
            ]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the daemon process so far, all threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> tuple[float, float]:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()
        self.engine.dispose()


def wait_rows(daemon: Daemon, count: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while daemon.rows() < count:
        if time.monotonic() > deadline or daemon.proc.poll() is not None:
            raise RuntimeError(f"{daemon.rows()} of {count} rows; see {daemon.root / 'daemon.log'}")
        time.sleep(0.02)


def tagged(png: bytes, text: str) -> bytes:
    """The same image with a tEXt chunk before IEND: distinct bytes (so a distinct row), same pixels."""
    body = b"inspectd\0" + text.encode()
    chunk = len(body).to_bytes(4, "big") + b"tEXt" + body + zlib.crc32(b"tEXt" + body).to_bytes(4, "big")
    return png[:-12] + chunk + png[-12:]


def stage(files: list[Path], folder: Path, prefix: str) -> list[tuple[Path, Path]]:
    """Copies beside incoming (same filesystem), so that dropping them is a rename, as cameras do."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, src in enumerate(files):
        staged = folder / f"{prefix}-{i:06d}.png"
        staged.write_bytes(tagged(src.read_bytes(), f"{prefix}-{i}"))
        pairs.append((staged, folder.parent / "var" / "incoming" / staged.name))
    return pairs


def burst(daemon: Daemon, files: list[Path], prefix: str) -> Run:
    """All ``files`` renamed into incoming at once: images/s from the first rename until every row is
    committed and incoming is empty (archive moves included). The archive is emptied afterwards."""
    root = daemon.root
    pairs = stage(files, root / "staging", prefix)
    before = daemon.rows()
    cpu = daemon.cpu_s()
    started = time.monotonic()
    for staged, target in pairs:
        staged.rename(target)
    wait_rows(daemon, before + len(pairs))
    while any((root / "var" / "incoming").iterdir()):
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    used = daemon.cpu_s() - cpu
    shutil.rmtree(root / "var" / "processed", ignore_errors=True)
    return Run(len(pairs) / elapsed, 1000 * used / len(pairs))


def run_inspectd(
    files: list[Path],
    tmp: Path,
    port: int,
    steady_s: float,
    size: tuple[int, int],
    rounds: int,
    model: Path | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """Bursts alternate with ceiling runs (ceilings, burst, ceilings, burst, ..., ceilings; each time
    OpenCV's then the decode stage's decoder) so that each burst is compared with the ceilings measured
    just before and just after it: the machine's speed drifts between minutes. The daemon sits idle
    during the ceiling runs. ``latency``: then the steady rate's percentiles and the image alone."""
    root = tmp / f"daemon-{files[0].suffix.lstrip('.')}"
    root.mkdir()
    daemon = Daemon(root, port, model)
    result: dict[str, Any] = {"startup_s": daemon.startup_s}
    try:
        runs: dict[str, list[Run]] = {name: [ceiling(files, size, name)] for name in DECODERS}
        burst_runs: list[Run] = []
        for r in range(rounds):
            burst_runs.append(burst(daemon, files, f"burst{r}"))
            result["rss_after_burst_mib"], result["peak_rss_mib"] = daemon.rss_mib()
            for name in DECODERS:
                runs[name].append(ceiling(files, size, name))
            print(
                f"round {r + 1}: ceilings (OpenCV / inspectd's decoder) "
                f"{runs['opencv'][-2].images_per_s:.1f} / {runs['inspectd'][-2].images_per_s:.1f}, "
                f"inspectd {burst_runs[-1].images_per_s:.1f}, then "
                f"{runs['opencv'][-1].images_per_s:.1f} / {runs['inspectd'][-1].images_per_s:.1f} images/s",
                flush=True,
            )
        ceiling_runs = runs["opencv"]
        ceilings = [c.images_per_s for c in ceiling_runs]
        decoder_ceilings = [c.images_per_s for c in runs["inspectd"]]
        bursts = [b.images_per_s for b in burst_runs]
        result["ceiling_runs_images_per_s"] = ceilings
        result["decoder_ceiling_runs_images_per_s"] = decoder_ceilings
        result["burst_runs_images_per_s"] = bursts
        result["round_ratios"] = [b / ((ceilings[i] + ceilings[i + 1]) / 2) for i, b in enumerate(bursts)]
        result["decoder_round_ratios"] = [
            b / ((decoder_ceilings[i] + decoder_ceilings[i + 1]) / 2) for i, b in enumerate(bursts)
        ]
        result["burst_images_per_s"] = statistics.median(bursts)
        # CPU per image: what each costs, whatever else the machine runs meanwhile (less noisy than rates)
        result["ceiling_cpu_ms_per_image"] = [c.cpu_ms_per_image for c in ceiling_runs]
        result["decoder_ceiling_cpu_ms_per_image"] = [c.cpu_ms_per_image for c in runs["inspectd"]]
        result["burst_cpu_ms_per_image"] = [b.cpu_ms_per_image for b in burst_runs]
        if not latency:
            return result

        rate = result["burst_images_per_s"] / 2
        count = max(20, int(rate * steady_s))
        steady = stage([files[i % len(files)] for i in range(count)], root / "staging", "steady")
        first_id = daemon.rows()
        started = time.monotonic()
        for i, (staged, target) in enumerate(steady):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            staged.rename(target)
        wait_rows(daemon, first_id + count)
        lat = sorted(daemon.latencies(first_id))
        result["steady_rate_per_s"] = rate
        result["latency_ms"] = {
            f"p{q}": 1000 * lat[min(len(lat) - 1, int(q / 100 * len(lat)))] for q in (50, 95, 99)
        }
        result["rss_steady_mib"], result["peak_rss_mib"] = daemon.rss_mib()

        time.sleep(1.0)
        alone = stage(files[:1], root / "staging", "alone")
        before = daemon.rows()
        alone[0][0].rename(alone[0][1])
        wait_rows(daemon, before + 1)
        result["single_image_latency_ms"] = 1000 * daemon.latencies(before)[0]
    finally:
        daemon.stop()
    return result


def soak(files: list[Path], tmp: Path, port: int, total: int) -> dict[str, Any]:
    """``total`` images in bursts of ``len(files)``; RSS at rest after each; the archive is emptied
    between bursts (by the benchmark, not the daemon) so that the disk holds two bursts at most."""
    root = tmp / "soak"
    root.mkdir()
    daemon = Daemon(root, port)
    samples: list[float] = []
    done = 0
    try:
        while done < total:
            chunk = files[: min(len(files), total - done)]
            burst(daemon, chunk, f"soak{done}")
            done += len(chunk)
            time.sleep(2.0)  # RSS at rest after the burst
            samples.append(daemon.rss_mib()[0])
            print(f"soak: {done} images, RSS {samples[-1]:.0f} MiB", flush=True)
    finally:
        daemon.stop()
    return {
        "images": done,
        "rss_mib": samples,
        "growth_after_first_burst": (samples[-1] - samples[0]) / samples[0] if samples else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="bursts, each between two ceiling runs")
    parser.add_argument("--jpeg-rounds", type=int, default=3, help="the same on JPEGs (0: none)")
    parser.add_argument("--naive-images", type=int, default=200)
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=19208)
    parser.add_argument(
        "--soak", type=int, default=0, help="also feed this many images, RSS after each burst"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    parser.add_argument(
        "--model",
        type=Path,
        help="a model version folder (a retrain's) for the daemon instead of the bundled one",
    )
    args = parser.parse_args()
    files = workload(args.images, args.out.parent / "cache")
    # The ceiling gets the daemon's allocator settings: with glibc's default (dynamic) thresholds each
    # decoded frame's buffer is mapped and unmapped again, and decoding measured 15-20% slower here.
    memory.fix_mmap_threshold()
    size = Inferencer.load(args.model or bundled_model_dir()).input_size
    results: dict[str, Any] = {"images": len(files), "cores": os.cpu_count(), "image": "1280x1024 8-bit PNG"}
    with tempfile.TemporaryDirectory(prefix="inspectd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        list(ThreadPoolExecutor(4).map(lambda p: p.read_bytes(), files))  # page cache warm for everyone
        ours = results["inspectd"] = run_inspectd(
            files, tmp, args.port, args.steady_seconds, size, args.rounds, args.model
        )
        ours["floor"] = floor(files, ours, args.model)
        print(f"inspectd: {json.dumps(ours)}", flush=True)
        if args.jpeg_rounds:
            jpegs = workload(args.images, args.out.parent / "cache", "jpeg")
            list(ThreadPoolExecutor(4).map(lambda p: p.read_bytes(), jpegs))
            jpeg = results["jpeg"] = run_inspectd(
                jpegs, tmp, args.port, 0, size, args.jpeg_rounds, args.model, latency=False
            )
            jpeg["floor"] = floor(jpegs, jpeg, args.model)
            jpeg["ratios"] = {
                "inspectd_over_ceiling": statistics.median(jpeg["round_ratios"]),
                "inspectd_over_decoder_ceiling": statistics.median(jpeg["decoder_round_ratios"]),
            }
            print(f"jpeg: {json.dumps(jpeg)}", flush=True)
        results["ceiling_images_per_s"] = statistics.median(ours["ceiling_runs_images_per_s"])
        results["decoder_ceiling_images_per_s"] = statistics.median(ours["decoder_ceiling_runs_images_per_s"])
        results["naive_images_per_s"] = naive(files[: args.naive_images], tmp)
        print(f"naive: {results['naive_images_per_s']:.1f} images/s", flush=True)
        results["runtimes_ms_per_image"] = runtimes(version=args.model)
        if args.soak:
            results["soak"] = soak(files, tmp, args.port + 1, args.soak)
        shutil.rmtree(tmp, ignore_errors=True)
    ours = results["inspectd"]["burst_images_per_s"]
    runtimes_ms = results["runtimes_ms_per_image"]
    fastest = min(v for k, v in runtimes_ms.items() if not k.startswith("model_"))  # the bundled network
    chosen = next(v for k, v in runtimes_ms.items() if k.endswith("_chosen"))
    if args.model is not None:
        results["model"] = str(args.model)
    results["ratios"] = {
        # each burst against the mean of the ceilings measured just before and after it; the median round
        "inspectd_over_ceiling": statistics.median(results["inspectd"]["round_ratios"]),
        "inspectd_over_decoder_ceiling": statistics.median(results["inspectd"]["decoder_round_ratios"]),
        "decoder_ceiling_over_ceiling": results["decoder_ceiling_images_per_s"]
        / results["ceiling_images_per_s"],
        "inspectd_over_naive": ours / results["naive_images_per_s"],
        "ceiling_cpu_over_inspectd_cpu": statistics.median(results["inspectd"]["ceiling_cpu_ms_per_image"])
        / statistics.median(results["inspectd"]["burst_cpu_ms_per_image"]),
        "chosen_over_fastest_runtime": chosen / fastest,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\nresults: {args.out}")


def report(r: dict[str, Any]) -> None:
    d = r["inspectd"]
    runs = " / ".join(f"{v:.0f}" for v in d["ceiling_runs_images_per_s"])
    rounds = " / ".join(f"{v:.3f}" for v in d["round_ratios"])
    decoder_runs = " / ".join(f"{v:.0f}" for v in d["decoder_ceiling_runs_images_per_s"])
    decoder_rounds = " / ".join(f"{v:.3f}" for v in d["decoder_round_ratios"])
    rows = [
        (
            "ceiling, OpenCV: decode + resize only, all cores (median)",
            f"{r['ceiling_images_per_s']:.1f} images/s ({runs})",
        ),
        (
            "ceiling, inspectd's decoder (median)",
            f"{r['decoder_ceiling_images_per_s']:.1f} images/s ({decoder_runs}; "
            f"{r['ratios']['decoder_ceiling_over_ceiling']:.2f}x OpenCV's)",
        ),
        ("naive: imread + predict + commit per image", f"{r['naive_images_per_s']:.1f} images/s"),
        (
            "inspectd: burst, dropped -> committed + moved (median)",
            f"{d['burst_images_per_s']:.1f} images/s ("
            + " / ".join(f"{v:.0f}" for v in d["burst_runs_images_per_s"])
            + ")",
        ),
        (
            "inspectd / OpenCV ceiling (median round)",
            f"{r['ratios']['inspectd_over_ceiling']:.3f} ({rounds})",
        ),
        (
            "inspectd / its decoder's ceiling (median round)",
            f"{r['ratios']['inspectd_over_decoder_ceiling']:.3f} ({decoder_rounds})",
        ),
        ("inspectd / naive", f"{r['ratios']['inspectd_over_naive']:.1f}x"),
        (
            "CPU per image: ceiling / inspectd (medians)",
            f"{statistics.median(d['ceiling_cpu_ms_per_image']):.2f} / "
            f"{statistics.median(d['burst_cpu_ms_per_image']):.2f} ms "
            f"({r['ratios']['ceiling_cpu_over_inspectd_cpu']:.3f})",
        ),
        (
            f"latency at {d['steady_rate_per_s']:.0f}/s (half max): p50 / p95 / p99",
            " / ".join(f"{d['latency_ms'][k]:.0f}" for k in ("p50", "p95", "p99")) + " ms",
        ),
        ("a single image alone: ready -> committed", f"{d['single_image_latency_ms']:.0f} ms"),
        ("start-up to ready", f"{d['startup_s']:.2f} s"),
        ("RSS steady / peak", f"{d['rss_steady_mib']:.0f} / {d['peak_rss_mib']:.0f} MiB"),
    ]
    if "jpeg" in r:
        j = r["jpeg"]
        rows += [
            (
                f"JPEG (quality {JPEG_QUALITY}): ceilings, OpenCV / inspectd's decoder (medians)",
                f"{statistics.median(j['ceiling_runs_images_per_s']):.1f} / "
                f"{statistics.median(j['decoder_ceiling_runs_images_per_s']):.1f} images/s",
            ),
            (
                "JPEG: burst; / OpenCV ceiling; / its decoder's (median round)",
                f"{statistics.median(j['burst_runs_images_per_s']):.1f} images/s; "
                f"{j['ratios']['inspectd_over_ceiling']:.3f}; "
                f"{j['ratios']['inspectd_over_decoder_ceiling']:.3f}",
            ),
        ]
    for kind, part in (("PNG", d), ("JPEG", r.get("jpeg"))):
        if part is None or "floor" not in part:
            continue
        f = part["floor"]
        rows += [
            (
                f"{kind} floor, CPU per image: decode + resize / read + SHA-256 / inference",
                f"{f['decode_resize_cpu_ms']:.2f} / {f['read_sha256_cpu_ms']:.2f} / "
                f"{f['inference_cpu_ms']:.2f} = {f['cpu_ms_per_image']:.2f} ms "
                f"(the daemon's other work: {f['daemon_other_cpu_ms']:.2f} ms)",
            ),
            (
                f"{kind} floor: the most any daemon could burst; / OpenCV ceiling; / its decoder's",
                f"{f['max_images_per_s']:.0f} images/s; {f['max_over_ceiling']:.3f}; "
                f"{f['max_over_decoder_ceiling']:.3f}",
            ),
        ]
    rows += [(f"inference, {name}", f"{ms:.3f} ms/image") for name, ms in r["runtimes_ms_per_image"].items()]
    if "soak" in r:
        s = r["soak"]
        rows.append(
            (
                f"soak: RSS over {s['images']} images",
                f"{s['rss_mib'][0]:.0f} -> {s['rss_mib'][-1]:.0f} MiB "
                f"({100 * s['growth_after_first_burst']:+.1f}% after the first burst)",
            )
        )
    rows.append(("chosen network / fastest runtime", f"{r['ratios']['chosen_over_fastest_runtime']:.2f}"))
    width = max(len(k) for k, _ in rows)
    print(f"\n{r['images']} images, {r['image']}, {r['cores']} cores")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
