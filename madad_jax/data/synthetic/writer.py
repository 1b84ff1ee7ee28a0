"""Writing the demo data set as NIfTI volumes, and its command line.

`{out}/{split}/{subject}_{MODALITY}.nii.gz` with `{subject}_brainmask.nii.gz` and, for
lesioned splits, `{subject}_seg.nii.gz`, in MNI space (RAS, millimetres), plus `demo.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from madad_jax.data.synthetic.anatomy import MODALITIES, AnatomySpec, Grid
from madad_jax.data.synthetic.lesions import LesionSpec
from madad_jax.data.synthetic.subjects import make_subject


def _save_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=4)  # 4: MNI152
    img.set_sform(affine, code=4)
    nib.save(img, path)


def write_dataset(
    out: str | os.PathLike,
    n_train: int,
    n_test: int,
    seed: int = 0,
    n_val: int = 0,
    voxel_mm: float = 2.0,
    anatomy: AnatomySpec = AnatomySpec(),  # noqa: B008 (frozen)
    lesions: LesionSpec = LesionSpec(),  # noqa: B008 (frozen)
    modality: str = "T1",
    fov_mm: float = 208.0,
    z_mm: tuple[float, float] = (-8.0, 40.0),
    slice_mm: float = 3.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the demo subjects as NIfTI into `{out}/{split}/`; return the manifest.

    Each file is written under a temporary name and renamed, so an interrupted run leaves
    only whole files. `{out}/demo.json` (written last) records the settings and subjects.
    """
    from tqdm import tqdm

    out = Path(out)
    size = int(round(fov_mm / voxel_mm))
    grid = Grid(size=size, fov_mm=fov_mm, z_mm=tuple(z_mm), slice_mm=slice_mm)
    jobs = [("train", i) for i in range(n_train)]
    jobs += [("val", i) for i in range(n_val)] + [("test", i) for i in range(n_test)]
    manifest: dict[str, Any] = dict(
        seed=seed,
        modality=modality,
        shape=list(grid.shape),
        affine=grid.affine.tolist(),
        anatomy=dataclasses.asdict(anatomy),
        lesion=dataclasses.asdict(lesions),
        subjects={s: [] for s in ("train", "val", "test")},
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out))
    try:
        for split, i in tqdm(jobs, desc="demo subjects", disable=not progress):
            s = make_subject(
                i, split, seed, grid, anatomy, None if split == "train" else lesions, modality
            )
            files = {
                f"{s.name}_{modality}.nii.gz": s.image,
                f"{s.name}_brainmask.nii.gz": s.brainmask,
            }
            if s.seg is not None:
                files[f"{s.name}_seg.nii.gz"] = s.seg
            (out / split).mkdir(exist_ok=True)
            for fname, vol in files.items():
                _save_nifti(vol, s.affine, tmp / fname)
                os.replace(tmp / fname, out / split / fname)
            manifest["subjects"][split].append(dict(name=s.name, lesions=s.lesions))
        with open(tmp / "demo.json", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp / "demo.json", out / "demo.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m madad_jax.data.synthetic",
        description="Write the offline demo data set (MNI152-based subjects) as NIfTI volumes.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n-train", type=int, default=40, help="healthy training subjects")
    p.add_argument("--n-test", type=int, default=40, help="lesioned test subjects")
    p.add_argument("--n-val", type=int, default=0, help="lesioned validation subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", choices=MODALITIES, default="T1")
    p.add_argument("--voxel-mm", type=float, default=2.0, help="in-plane voxel size")
    p.add_argument("--slice-mm", type=float, default=3.0, help="distance between slices")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        if min(args.n_train, args.n_test, args.n_val) < 0:
            raise ValueError("subject counts must be >= 0")
        if args.voxel_mm <= 0 or args.slice_mm <= 0:
            raise ValueError("--voxel-mm and --slice-mm must be > 0")
        t0 = time.time()
        write_dataset(
            args.out,
            args.n_train,
            args.n_test,
            seed=args.seed,
            n_val=args.n_val,
            voxel_mm=args.voxel_mm,
            slice_mm=args.slice_mm,
            modality=args.modality,
            progress=True,
        )
        print(
            f"wrote {args.n_train + args.n_val + args.n_test} subjects to {args.out} "
            f"in {time.time() - t0:.1f} s"
        )
    except (OSError, ValueError) as err:
        if args.verbose:
            raise
        where = getattr(err, "filename", None) or args.out
        print(
            f"{where}: {err.strerror if isinstance(err, OSError) and err.strerror else err}",
            file=sys.stderr,
        )
        return 1
    return 0
