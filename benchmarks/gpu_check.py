"""The GPU check: one prepared command for a machine with a CUDA device (about 5 minutes).

1. the device(s) and the GPU's own fp32 matrix-multiply rate (CuPy GEMM, 8192²);
2. every test marked ``gpu`` (pytest -m gpu), on every visible device;
3. CPU against GPU on a fixed simulated set: the E-step's assignments (identical expected)
   and class weights (float32 rounding), and the GPU E-step's throughput at K = 12 and
   K = 100 with its share of the GEMM rate (useful flops: particles × classes × coarse
   psis × coarse translations × coarse Fourier pixels × 8 per complex multiply-add);
4. VDAM on 100,000 particles with K = 100 (64 px, 3 Å/px, GUI sampling) as a real Class2D
   job on the GPU, stopped after ``--vdam-seconds``: mini-batches done, particles per
   second between the first and the last mini-batch seen (start-up excluded), and the
   200 mini-batch run time that rate gives.

Figures are printed and written as JSON (``--out``). Without a GPU, ``--device cpu`` runs
steps 3-4 on the CPU at a small size, to check the script itself::

    python benchmarks/gpu_check.py --out gpu_check.json              # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --small --out /tmp/check.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def gemm_rate(n: int = 8192, repeat: int = 10) -> float:
    """fp32 GEMM TFLOP/s of the current CUDA device."""
    import cupy as cp

    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    a @ b
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    cp.cuda.Device().synchronize()
    return 2.0 * n**3 * repeat / (time.perf_counter() - t0) / 1e12


def gpu_tests() -> dict:
    """Run ``pytest -m gpu``; returns counts parsed from its summary line."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    print(done.stdout[-3000:])
    return {"summary": tail, **counts, "returncode": done.returncode}


def _project(root: Path, n: int, k: int):
    """A simulated project of ``n`` particles and the state of iteration 1 of an EM run with ``k`` classes."""
    from emclass2d.jobtypes.base import RunContext
    from emclass2d.jobtypes.class2d.options import Class2DOptions
    from emclass2d.jobtypes.class2d.start import new_state
    from emclass2d.jobtypes.class2d.step import iteration_setup
    from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files

    if not (root / "Sim/particles.star").exists():
        simulate_project_files("Sim", n=n, box=64, pixel_size_A=3.0, n_views=12, snr=0.1, junk_fraction=0.1,
                               n_micrographs=max(4, n // 500), seed=1, project_dir=root)
    opts = Class2DOptions(fn_img="Sim/particles.star", nr_classes=k, particle_diameter=140.0, random_seed=1,
                          do_em=True, do_grad=False, nr_iter_em=2)
    old = os.getcwd()
    os.chdir(root)
    try:
        ctx = RunContext(project_dir=root, job_dir=f"Class2D/k{k}/", options=opts, log=lambda s: None)
        state = new_state(ctx, opts, ["cpu"])
    finally:
        os.chdir(old)
    model, sampling = iteration_setup(state, opts, 1)
    return state, model, sampling


def estep(root: Path, state, model, sampling, device: str, n: int) -> tuple[float, object, object]:
    """(seconds, stats, results) of one E-step over the first ``n`` particles on ``device``."""
    from emclass2d.jobtypes.class2d.particle_stream import ParticleStream
    from emclass2d.nodes.io.particles import image_source_for

    stream = ParticleStream(state.table, image_source_for(state.table, root), [device], batch_size=512,
                            memory_budget_bytes=4 << 30, with_ctf=True, preread=True)
    idx = np.arange(n)
    stream.expectation(model, state.settings, sampling, 1, idx[: min(n, 512)])  # warm-up (kernels, plans)
    t0 = time.perf_counter()
    stats, results, _ = stream.expectation(model, state.settings, sampling, 1, idx)
    if device != "cpu":
        import cupy as cp

        cp.cuda.Device().synchronize()
    return time.perf_counter() - t0, stats, results


def useful_flops(n: int, k: int, sampling, model) -> float:
    """Coarse-pass multiply-adds of an E-step, as flops (8 per complex multiply-add)."""
    coarse = int(model.coarse_size)
    pixels = np.pi * (coarse / 2.0) ** 2 / 2.0
    return 8.0 * n * k * len(sampling.coarse_psi_deg()) * len(sampling.coarse_translations_px()) * pixels


def compare(root: Path, device: str, small: bool) -> dict:
    """CPU vs ``device`` assignments at K = 12, and the device's E-step throughput at K = 12 and 100."""
    out: dict = {}
    n_cmp = 400 if small else 2000
    state, model, sampling = _project(root, 4000 if not small else 800, 12)
    _, s_cpu, r_cpu = estep(root, state, model, sampling, "cpu", n_cmp)
    _, s_dev, r_dev = estep(root, state, model, sampling, device, n_cmp)
    from emclass2d.core.backend import to_host

    a = r_cpu.class_index[np.argsort(r_cpu.index)]
    b = r_dev.class_index[np.argsort(r_dev.index)]
    out["assignments_identical"] = float(np.mean(a == b))
    w_cpu, w_dev = to_host(s_cpu.wsum_pdf_class), to_host(s_dev.wsum_pdf_class)
    out["class_weight_max_rel_diff"] = float(np.max(np.abs(w_cpu - w_dev) / np.maximum(np.abs(w_cpu), 1e-12)))
    for k in (12, 100):
        state, model, sampling = _project(root, 4000 if not small else 800, k)
        n = 4000 if not small else 200
        secs, _, _ = estep(root, state, model, sampling, device, n)
        flops = useful_flops(n, k, sampling, model)
        out[f"k{k}_particles_per_s"] = n / secs
        out[f"k{k}_useful_tflops"] = flops / secs / 1e12
        print(f"E-step on {device}, K = {k}: {n / secs:.0f} particles/s, {flops / secs / 1e12:.2f} TFLOP/s useful")
    return out


def vdam_job(root: Path, device: str, n: int, k: int, seconds: float) -> dict:
    """A real VDAM Class2D job (200 mini-batches) stopped after ``seconds``; rate and extrapolation."""
    from emclass2d.jobtypes.class2d.options import Class2DOptions
    from emclass2d.jobtypes.class2d.vdam import schedule_for
    from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files

    project = root / "vdam"
    project.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    if not (project / "Sim/particles.star").exists():
        subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", "init", "--project", str(project)], check=True)
        simulate_project_files("Sim", n=n, box=64, pixel_size_A=3.0, n_views=12, snr=0.1, junk_fraction=0.1,
                               n_micrographs=max(4, n // 1000), seed=2, project_dir=project)
    simulate_s = time.perf_counter() - t0
    args = ["--fn_img", "Sim/particles.star", "--nr_classes", str(k), "--do_em", "No", "--do_grad", "Yes",
            "--nr_iter_grad", "200", "--particle_diameter", "140", "--random_seed", "1", "--nr_threads", "8",
            "--use_gpu", "Yes" if device != "cpu" else "No", "--gpu_ids", device.partition(":")[2]]
    job = subprocess.Popen([sys.executable, "-m", "emclass2d.jobtypes.cli", "run", "emclass2d.class2d",
                            "--project", str(project), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sched = schedule_for(Class2DOptions(nr_iter_grad=200, do_em=False, do_grad=True), n, k)
    sizes = [n if sched.subset_size(it) < 0 else sched.subset_size(it) for it in range(1, 201)]
    t0 = time.perf_counter()
    seen: list[tuple[float, int]] = []  # (time, last mini-batch in run.out) whenever it changes

    def last_minibatch() -> int:
        jobs = sorted((project / "Class2D").glob("job*"))
        log = (jobs[-1] / "run.out").read_text() if jobs and (jobs[-1] / "run.out").exists() else ""
        done = [int(m) for m in re.findall(r"Mini-batch\s+(\d+)/200", log)]
        return max(done) if done else 0

    while job.poll() is None and time.perf_counter() - t0 < seconds:
        time.sleep(1)
        last = last_minibatch()
        if last and (not seen or seen[-1][1] != last):
            seen.append((time.perf_counter(), last))
    wall = time.perf_counter() - t0
    if job.poll() is None:
        jobs = sorted((project / "Class2D").glob("job*"))
        if jobs:
            (jobs[-1] / "RELION_JOB_ABORT_NOW").touch()
        job.wait(timeout=120)
    last = seen[-1][1] if seen else 0
    # rate between the first and the last mini-batch seen: start-up (noise, it000) excluded
    if len(seen) >= 2:
        processed = sum(sizes[seen[0][1]:seen[-1][1]])
        rate = processed / (seen[-1][0] - seen[0][0])
    else:
        processed, rate = sum(sizes[:last]), float("nan")
    out = {"particles": n, "classes": k, "simulate_s": simulate_s, "seconds": wall, "mini_batches_done": last,
           "particles_processed": processed, "particles_per_s": rate,
           "extrapolated_200_minibatches_s": sum(sizes) / rate if rate > 0 else float("nan")}
    print(f"VDAM {n} particles, K = {k} on {device}: {last} mini-batches in {wall:.0f} s, {rate:.0f} particles/s, "
          f"200 mini-batches ~ {out['extrapolated_200_minibatches_s']:.0f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="gpu:0", help="gpu:N (default gpu:0) or cpu to check the script")
    parser.add_argument("--small", action="store_true", help="small sizes (a script check, not figures)")
    parser.add_argument("--vdam-seconds", type=float, default=150.0)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    report: dict = {"device": args.device}
    if args.device != "cpu":
        import cupy as cp

        count = cp.cuda.runtime.getDeviceCount()
        report["devices"] = [cp.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(count)]
        report["cupy"] = cp.__version__
        report["gemm_fp32_tflops"] = gemm_rate()
        print(f"{count} device(s) {report['devices']}; CuPy {cp.__version__}; "
              f"fp32 GEMM {report['gemm_fp32_tflops']:.1f} TFLOP/s")
    if not args.skip_tests:
        report["gpu_tests"] = gpu_tests()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", "init", "--project", str(root)], check=True,
                       capture_output=True)
        report["cpu_vs_device"] = compare(root, args.device, args.small)
        if "gemm_fp32_tflops" in report:
            for k in (12, 100):
                report["cpu_vs_device"][f"k{k}_share_of_gemm"] = (report["cpu_vs_device"][f"k{k}_useful_tflops"]
                                                                  / report["gemm_fp32_tflops"])
        n, k = (2000, 12) if args.small else (100_000, 100)
        report["vdam"] = vdam_job(root, args.device, n, k, args.vdam_seconds)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
