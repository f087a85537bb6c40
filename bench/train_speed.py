"""Training throughput of the paper U-Net on this machine: images/s per configuration.

Plain fp32 ``model.fit`` (the baseline) against mixed bfloat16, XLA (``jit_compile``),
a frozen ImageNet encoder (``frozen``: only the decoder trains) and crop sizes; real ResNet50 encoder with ImageNet weights, decoder (256,128,64,32,16),
Dice loss, Adam, batch 4. Writes ``bench/results/train_speed.json`` and ``.md``.

    python bench/train_speed.py [--steps 6] [--configs fp32-256,bf16-256,xla-256,fp32-512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared/weights/resnet50_imagenet_notop.weights.h5"


def run_one(name: str, steps: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from nanoseg.model.losses import dice_coefficient, dice_loss
    from nanoseg.model.network import build_unet
    from nanoseg.model.precision import configure_precision

    precision, crop = name.split("-")
    crop = int(crop)
    configure_precision(precision == "bf16")
    model = build_unet(weights=str(WEIGHTS) if WEIGHTS.is_file() else None)
    if precision == "frozen":  # transfer learning: ImageNet encoder fixed (BN in inference mode), decoder trains
        model.get_layer("encoder").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=dice_loss, metrics=[dice_coefficient],
                  jit_compile=precision == "xla")
    rng = np.random.default_rng(0)
    x = rng.random((4 * (steps + 2), crop, crop, 1), dtype=np.float32)
    y = (rng.random((4 * (steps + 2), crop, crop, 1)) > 0.9).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace + warm up
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": name, "precision": precision, "crop": crop, "batch": 4, "steps": steps,
            "seconds_per_step": dt / steps, "images_per_s": 4 * steps / dt,
            "pixels_per_s_M": 4 * steps * crop * crop / dt / 1e6, "warmup_s": warm, "peak_rss_MiB": peak}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--configs", default="fp32-256,bf16-256,xla-256,frozen-256,fp32-512")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps)))
        return 0
    results = []
    for name in args.configs.split(","):
        # one process per configuration: the dtype policy and peak memory stay separate
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(res)
        print(f"{name}: {res['images_per_s']:.2f} images/s ({res['seconds_per_step']:.2f} s/step), "
              f"peak {res['peak_rss_MiB']:.0f} MiB", flush=True)
    base = next((r for r in results if r["config"] == "fp32-256"), None)
    for r in results:
        r["pixel_speedup_vs_fp32_256"] = r["pixels_per_s_M"] / base["pixels_per_s_M"] if base else None
    meta = {"date": date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")}
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"Training throughput, {meta['date']}, {meta['cpu']} ({meta['machine']}), batch 4, ResNet50 U-Net", "",
             "| config | images/s | s/step | Mpx/s | vs fp32-256 (px/s) | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['config']} | {r['images_per_s']:.2f} | {r['seconds_per_step']:.2f} | {r['pixels_per_s_M']:.3f} "
                     f"| {r['pixel_speedup_vs_fp32_256']:.2f}x | {r['peak_rss_MiB']:.0f} |")
    (out / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
