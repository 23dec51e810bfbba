"""Simulate a particle set with known truth (particles.star, stacks, truth.star, truth.csv).

Writes, inside the project, DIR/particles.star (RELION 3.1+ optics and particles blocks
with CTF parameters), one stack per micrograph DIR/Particles/micNNN.mrcs, DIR/truth.star
(the true rlnAnglePsi, rlnOriginX/YAngst and view as rlnClassNumber, 0 for junk) and
DIR/truth.csv (the whole truth table, junk types included).

Example:
  emclass2d simulate --out Simulated --n 5000 --box 64 --pixel-size 3.0 --views 8 \\
      --snr 0.05 --junk 0.15 --micrographs 50 --seed 0
  emclass2d run emclass2d.class2d --fn_img Simulated/particles.star --nr_classes 20
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.core.simulate import JUNK_TYPES, simulate_particles
from emclass2d.nodes.io.atomic import atomic_path
from emclass2d.nodes.io.mrc import write_mrcs
from emclass2d.nodes.io.star import write_star


def _relative(path: Path, project_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), project_dir.resolve())).as_posix()


def simulate_project_files(
    out_dir: str | os.PathLike[str],
    n: int = 5000,
    box: int = 64,
    pixel_size_A: float = 3.0,
    n_views: int = 8,
    snr: float | None = 0.05,
    junk_fraction: float = 0.15,
    n_micrographs: int = 50,
    seed: int = 0,
    project_dir: str | os.PathLike[str] = ".",
    **options: Any,
) -> Path:
    """Simulate particles and write them as a RELION particle set; returns particles.star's path.

    ``out_dir`` is taken relative to ``project_dir`` unless absolute; image and micrograph
    names in the STAR files are relative to ``project_dir`` (as RELION expects).
    ``options`` go to :func:`emclass2d.core.simulate.simulate_particles` (e.g. view_weights,
    junk_mix, particle_diameter_A).
    """
    project = Path(project_dir)
    out = Path(out_dir) if Path(out_dir).is_absolute() else project / out_dir
    sim = simulate_particles(n=n, box=box, pixel_size_A=pixel_size_A, n_views=n_views, snr=snr,
                             junk_fraction=junk_fraction, n_micrographs=n_micrographs, seed=seed, **options)
    (out / "Particles").mkdir(parents=True, exist_ok=True)
    truth = sim.truth
    mic = truth["micrograph"].to_numpy()
    image_names = np.empty(n, dtype=object)
    mic_names = np.empty(n, dtype=object)
    for m in np.unique(mic):
        rows = np.nonzero(mic == m)[0]
        stack = out / "Particles" / f"mic{m + 1:03d}.mrcs"
        write_mrcs(stack, sim.images[rows], pixel_size_A)
        rel = _relative(stack, project)
        image_names[rows] = [f"{i:06d}@{rel}" for i in range(1, len(rows) + 1)]
        mic_names[rows] = f"{_relative(out, project)}/Micrographs/mic{m + 1:03d}.mrc"
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnAmplitudeContrast": [sim.optics["amplitude_contrast"]],
        "rlnSphericalAberration": [sim.optics["cs_mm"]],
        "rlnVoltage": [sim.optics["voltage_kV"]],
        "rlnImagePixelSize": [float(pixel_size_A)],
        "rlnImageSize": [int(box)],
        "rlnImageDimensionality": [2],
    })
    particles = pd.DataFrame({
        "rlnCoordinateX": truth["coordinate_x_px"].to_numpy(),
        "rlnCoordinateY": truth["coordinate_y_px"].to_numpy(),
        "rlnImageName": image_names.astype(str),
        "rlnMicrographName": mic_names.astype(str),
        "rlnDefocusU": truth["defocus_u_A"].to_numpy(),
        "rlnDefocusV": truth["defocus_v_A"].to_numpy(),
        "rlnDefocusAngle": truth["defocus_angle_deg"].to_numpy(),
        "rlnCtfBfactor": np.zeros(n),
        "rlnCtfScalefactor": np.ones(n),
        "rlnPhaseShift": np.zeros(n),
        "rlnOpticsGroup": np.ones(n, dtype=np.int64),
    })
    star = out / "particles.star"
    write_star(star, {"optics": optics, "particles": particles})
    aligned = particles.assign(
        rlnAnglePsi=truth["psi_deg"].to_numpy(),
        rlnOriginXAngst=truth["origin_x_px"].to_numpy() * pixel_size_A,
        rlnOriginYAngst=truth["origin_y_px"].to_numpy() * pixel_size_A,
        rlnClassNumber=(truth["view"].to_numpy() + 1).astype(np.int64),
    )
    write_star(out / "truth.star", {"optics": optics, "particles": aligned},
               comments=["true alignment; rlnClassNumber = view + 1, 0 for junk (" + ", ".join(JUNK_TYPES) + ")"])
    with atomic_path(out / "truth.csv") as tmp:
        truth.assign(rlnImageName=image_names.astype(str)).to_csv(tmp, index=False)
    return star


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (relative to --project)")
    parser.add_argument("--n", type=int, default=5000, help="number of particles (default 5000)")
    parser.add_argument("--box", type=int, default=64, help="box size in pixels, even (default 64)")
    parser.add_argument("--pixel-size", type=float, default=3.0, help="pixel size in Å (default 3.0)")
    parser.add_argument("--views", type=int, default=8, help="number of distinct views (default 8)")
    parser.add_argument("--snr", type=float, default=0.05, help="signal-to-noise variance ratio (default 0.05)")
    parser.add_argument("--junk", type=float, default=0.15, help="fraction of junk images (default 0.15)")
    parser.add_argument("--micrographs", type=int, default=50, help="number of micrographs (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def main(args: argparse.Namespace) -> int:
    project = getattr(args, "project", None) or "."
    try:
        star = simulate_project_files(args.out, n=args.n, box=args.box, pixel_size_A=args.pixel_size,
                                      n_views=args.views, snr=args.snr, junk_fraction=args.junk,
                                      n_micrographs=args.micrographs, seed=args.seed, project_dir=project)
    except ValueError as exc:
        print(f"emclass2d {exc}", file=sys.stderr)
        return 1
    print(f"wrote {star} ({args.n} particles, {args.micrographs} micrographs)")
    return 0
