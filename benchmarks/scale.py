"""Scale and faults: a zoo of small timm architectures (random weights) through the local and the Ray executor.

    python benchmarks/scale.py        # ~10 min on 2 idle cores; writes benchmarks/results/scale.md

1. local: the whole sweep with ``LocalExecutor`` (fresh cache).
2. ray: the same with ``RayExecutor`` on a local Ray instance of this machine's CPUs (fresh cache);
   its table must equal the local one row for row.
3. faults, on a third cache: ``posthoc-csra bench`` (local executor) is SIGKILLed once a third of
   the chunks exist; the run is resumed under Ray while a Ray worker SIGKILLs itself mid-task and
   one model's tasks raise; a last clean Ray run computes that model. Each step must schedule only
   the missing chunks, and the final table must equal the local one: nothing lost.

Images: ``--images`` ImageNet-ReaL images from ../shared (``subset:N:0:imagenet-real:DIR``), or,
without ../shared, generated noise images with labels over the 1000 classes.

Every task computes with one intra-op thread (``LoadOptions(threads=1)``, as a 1-CPU Ray task; the
CLI driver gets OMP_NUM_THREADS=1): a different thread count changes the order of float reductions,
and random-weight models have near-tied scores whose ranks (and so mAP) such rounding can flip. With
equal threads the runs compute bit-identical statistics, so their tables must be equal row for row.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: 20 small architectures of different families and feature layouts (NCHW CNNs, NLC transformers).
MODELS = ["mobilevit_xxs", "dla46x_c", "edgenext_xx_small", "mobilenetv3_small_050", "lcnet_050", "mobilenetv2_050",
          "mnasnet_small", "tinynet_e", "convnext_zepto_rms", "mobilenetv4_conv_small_050", "repghostnet_050",
          "regnetx_002", "regnety_002", "cspnext_tiny", "semnasnet_075", "efficientvit_m0", "xcit_nano_12_p16_224",
          "pvt_v2_b0", "resnet10t", "vit_tiny_patch16_224"]
LAMS = "0,0.25,0.5"


def dataset_spec(shared, n: int, folder: Path) -> str:
    if shared is not None:
        return f"subset:{n}:0:imagenet-real:{shared / 'data' / 'imagenet-val-real' / 'images'}"
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        labels = {f"k{j % 1000:04d}" for j in range(i * -(-1000 // n), (i + 1) * -(-1000 // n))}
        rows.append(f"{i}.png,{'|'.join(sorted(labels))}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{folder / 'labels.csv'}"


def same_table(a, b) -> bool:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(a.drop(columns=["seconds", "cached"]), b.drop(columns=["seconds", "cached"]),
                                      check_exact=False, rtol=1e-6)
    except AssertionError as err:
        print(f"tables differ: {err}", file=sys.stderr)
        return False
    return True


def complete_chunks(cache_dir: Path) -> int:
    return sum(1 for p in cache_dir.glob("stats/*/chunk-*.json") if p.with_suffix(".npz").is_file())


def summary(name: str, table, slots: int) -> dict:
    """One line of the results table from a run's ``attrs["run"]``."""
    run = table.attrs["run"]
    computed = max(run["chunks_computed"], 1)
    peaks = list(run["workers"].values()) or [0.0]
    return {"run": name, "chunks": run["chunks"], "computed": run["chunks_computed"], "cached": run["chunks_cached"],
            "failed": run["chunks_failed"], "wall s": run["wall_seconds"],
            "jobs/min": 60 * run["chunks_computed"] / run["wall_seconds"],
            "task s/chunk": run["task_seconds"] / computed,
            "overhead s/chunk": (run["wall_seconds"] * slots - run["task_seconds"]) / computed,
            "workers": len(run["workers"]), "peak MiB/worker (max)": max(peaks),
            "peak MiB/worker (mean)": sum(peaks) / len(peaks),
            "error rows": int(table["error"].notna().sum())}


def kill_cli_driver(args, spec: str, cache_dir: Path, models_file: Path, total_chunks: int, log: Path) -> dict:
    """``posthoc-csra bench`` in its own process group, SIGKILLed once a third of the chunks exist."""
    command = [sys.executable, "-m", "posthoc_csra", "bench", "-m", f"@{models_file}", "--random-weights", "-d", spec,
               "--img-size", str(args.img_size), "--lam", LAMS, "--chunk-size", str(args.chunk_size),
               "-b", str(args.chunk_size), "-j", "0", "--cache-dir", str(cache_dir), "--no-progress"]
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "wb") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        while complete_chunks(cache_dir) < total_chunks // 3 and driver.poll() is None:
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    if driver.returncode != -signal.SIGKILL:
        raise SystemExit(f"the CLI driver was not killed (exit status {driver.returncode}); see {log}")
    return {"seconds": time.perf_counter() - start, "chunks": complete_chunks(cache_dir),
            "temp files": len(list(cache_dir.glob("stats/*/.*.tmp-*")))}


def markdown(rows) -> str:
    import pandas as pd

    from posthoc_csra.tables import to_markdown

    table = pd.DataFrame(rows)
    return to_markdown(table, formats={c: ".2f" for c in table.columns if table[c].dtype.kind == "f"}).rstrip("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="images per model (one pass each)")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--chunk-size", type=int, default=8, help="images per cache chunk = per task")
    parser.add_argument("--models", type=int, default=len(MODELS), help="the first N of the zoo")
    parser.add_argument("--workdir", help="caches and logs (default: a temporary folder, removed)")
    parser.add_argument("--output", default=str(RESULTS / "scale.md"))
    args = parser.parse_args(argv)

    import ray

    from posthoc_csra.bench import run_bench
    from posthoc_csra.options import EvalOptions, LoadOptions, ModelSource
    from posthoc_csra.paths import shared_dir
    from posthoc_csra.executors import Faults, LocalExecutor, RayExecutor

    work = Path(args.workdir or tempfile.mkdtemp(prefix="posthoc-csra-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    models = MODELS[: args.models]
    failing = models[len(models) // 2]  # its tasks raise in the faults run: an error row, then a clean rerun
    shared = shared_dir()
    spec = dataset_spec(shared, args.images, work / "images")
    (work / "models.txt").write_text("\n".join(models) + "\n")
    load_before = os.getloadavg()
    chunks_per_model = -(-args.images // args.chunk_size)
    total = chunks_per_model * len(models)

    evaluation = EvalOptions(lams=LAMS)
    loading = LoadOptions(batch_size=args.chunk_size, workers=0, chunk_size=args.chunk_size, progress=False,
                          threads=1)

    def bench(cache: str, executor):
        return run_bench(models, [spec], evaluation, loading, img_sizes=[args.img_size],
                         source=ModelSource(pretrained=False), cache_dir=work / cache, executor=executor)

    started = time.perf_counter()
    rows, checks = [], []
    local = bench("local", LocalExecutor())
    rows.append(summary("local (1 process)", local, 1))

    context = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    slots = int(ray.cluster_resources()["CPU"])
    try:
        with RayExecutor(address=context.address_info["address"]) as executor:
            on_ray = bench("ray", executor)
        rows.append(summary(f"ray ({slots} CPUs, 1 per task)", on_ray, slots))
        checks.append(("Ray table = local table, row for row", same_table(on_ray, local)))

        killed = kill_cli_driver(args, spec, work / "faults", work / "models.txt", total, work / "driver.log")
        marker = work / "worker-killed"
        faults = Faults(kill_marker=str(marker), fail_models=(failing,))
        with RayExecutor(address=context.address_info["address"], faults=faults) as executor:
            resumed = bench("faults", executor)
        rows.append(summary("ray, resumed after the driver kill, with faults", resumed, slots))
        victim = int(marker.read_text()) if marker.is_file() else None
        before_rerun = complete_chunks(work / "faults")
        with RayExecutor(address=context.address_info["address"]) as executor:
            final = bench("faults", executor)
        rows.append(summary(f"ray, rerun ({failing} no longer failing)", final, slots))
    finally:
        ray.shutdown()
    run = resumed.attrs["run"]
    errors = resumed[resumed["error"].notna()]
    checks += [
        ("driver killed by SIGKILL halfway", f"{killed['chunks']} of {total} chunks were complete "
                                             f"({killed['temp files']} temp file(s) left) after "
                                             f"{killed['seconds']:.0f} s"),
        ("resumed run computed only the missing chunks",
         run["chunks_cached"] == killed["chunks"] and run["chunks_computed"] == before_rerun - killed["chunks"]),
        ("a Ray worker SIGKILLed itself mid-task; its task was retried",
         victim is not None and all(not w.endswith(f":{victim}") for w in run["workers"])),
        (f"{failing}'s tasks raised: one error row, every other model complete",
         list(errors["model"]) == [failing] and same_table(
             resumed[resumed["model"] != failing].reset_index(drop=True),
             local[local["model"] != failing].reset_index(drop=True))),
        ("rerun computed only the failed model's missing chunks",
         final.attrs["run"]["chunks_computed"] == total - before_rerun),
        ("final table = uninterrupted local table (nothing lost)", same_table(final, local)),
        ("no temp file left in the cache", not list((work / "faults").glob("stats/*/.*.tmp-*"))),
    ]
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, no GPU; "
               f"Python {platform.python_version()}, Ray {ray.__version__}; load average "
               f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other processes share the cores)")
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    body = "\n".join([
        "# Scale and faults",
        "",
        f"Produced by `{' '.join(['python benchmarks/scale.py', *(sys.argv[1:] if argv is None else argv)])}` "
        f"in {elapsed / 60:.1f} min.",
        "",
        f"Machine: {machine}.",
        "",
        f"Sweep: {len(models)} timm architectures at random init ({', '.join(models)}), {args.images} "
        f"{'ImageNet-ReaL images from ../shared' if shared else 'generated images'} at {args.img_size} px, "
        f"chunks of {args.chunk_size} images (one task each): {total} chunk tasks per full run; λ {LAMS}, both "
        f"spaces. Every run starts from its own empty cache except the fault steps, which share one.",
        "",
        "* Every task computes with 1 intra-op thread (as a 1-CPU Ray task), so all runs compute bit-identical "
        "statistics: local uses one core, Ray one per worker.",
        "* jobs/min: chunk tasks computed per minute of wall time.",
        "* task s/chunk: time inside a task (a worker's first task of a model includes loading it).",
        "* overhead s/chunk: (wall × parallel slots − Σ task time) / chunks computed — everything that is "
        "not a task: driver-side model loading for the cache key, scheduling, object transfer, checks and "
        "cache writes, idle slots.",
        "* peak MiB/worker: peak resident memory of each process that ran tasks (local: the driver itself).",
        f"* driver peak resident memory: {driver_peak:.0f} MiB.",
        "",
        markdown(rows),
        "",
        "Faults injected and survived:",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {('yes' if ok else 'NO') if isinstance(ok, bool) else ok} |" for name, ok in checks],
        "",
    ])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(body, encoding="utf-8")
    print(body)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for _, ok in checks if isinstance(ok, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
