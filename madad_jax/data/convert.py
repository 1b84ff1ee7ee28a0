"""Convert NIfTI volumes or the reference's PNG slices into ArrayRecord shard sets.

    python -m madad_jax.data.convert nifti INPUT_DIR OUT_DIR --modality T2 --image-size 256 \
        [--layout flat|brats|atlas] [--fractions train=0.8,val=0.1,test=0.1 | --split test] \
        [--policy train=healthy,val=healthy,test=largest_lesion] [--bad-input skip|stop]
    python -m madad_jax.data.convert png ROOT OUT_DIR --modality T2 --image-size 256

Each split becomes `OUT_DIR/{split}.array_record-*` plus `OUT_DIR/{split}.manifest.json`.
NIfTI subjects are split by `OUT_DIR/splits.json` (drawn once, then reused). Volumes must
already be registered to a common template and skull-stripped (see the README).
Running the same command again does nothing when inputs and settings are unchanged, and
resumes an interrupted conversion at the first unfinished shard.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from madad_jax.core import locks
from madad_jax.core.errors import PREEMPTED_EXIT, InputError
from madad_jax.data import png, preprocess
from madad_jax.data.errors import BadInputError, check_policy
from madad_jax.data.layouts import LAYOUTS, check_root, discover_nifti
from madad_jax.data.nifti import load_subject
from madad_jax.data.shardset import Unit, write_shard_set
from madad_jax.data.splits import check_disjoint, load_or_make_splits, parse_fractions

log = logging.getLogger("madad_jax.data")

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_POLICIES = {"train": "healthy", "val": "healthy", "test": "all"}


def _input(unit: Unit, role: str) -> str | None:
    path = dict(unit.inputs).get(role)
    if path is not None and path.startswith("missing:"):
        what = {"image": "image (missing modality)", "brainmask": "brain mask"}.get(role, role)
        raise BadInputError(path[len("missing:") :], f"no {what} for subject {unit.subject}")
    return path


def nifti_records(unit: Unit, modality: str, opts: preprocess.SliceOptions) -> list[dict]:
    """The slice records of one subject."""
    subject = load_subject(
        unit.subject, _input(unit, "image"), _input(unit, "brainmask"),
        _input(unit, "segmentation"),
    )
    rows = preprocess.subject_slices(subject, opts)
    for row in rows:
        row.update(
            source=subject.image.path,
            subject=unit.subject,
            modality=modality,
            name=f"{unit.subject}-slice_{row['slice_index']}",
            affine=subject.image.affine,
        )
    return rows


def parse_policies(text: str | Mapping[str, str]) -> dict[str, str]:
    """"all" (every split) or "train=healthy,test=largest_lesion" (other splits: defaults)."""
    if isinstance(text, str) and "=" not in text:
        return {"*": text}
    out = dict(DEFAULT_POLICIES)
    if isinstance(text, str):
        for part in text.split(","):
            split, _, policy = part.partition("=")
            out[split.strip()] = policy.strip()
    else:
        out.update(text)
    for policy in out.values():
        if policy not in preprocess.POLICIES:
            raise InputError(f"slice policy must be one of {preprocess.POLICIES}, got {policy!r}")
    return out


def _policy_for(policies: Mapping[str, str], split: str) -> str:
    return policies.get(split, policies.get("*", "all"))


def nifti_groups(
    input_dir: str | os.PathLike,
    modality: str,
    layout: Mapping[str, str | None],
    *,
    split: str | None = None,
    split_dirs: bool = False,
    fractions: Mapping[str, float] | None = None,
    split_file: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, list[Unit]]:
    """{split: subjects' units}: from split folders, one named split, or a split file."""
    root = os.fspath(input_dir)
    if split_dirs:
        check_root(root)
        present = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(root, s))]
        if not present:
            raise BadInputError(root, f"none of the split folders {list(SPLIT_NAMES)} exist")
        groups = {s: discover_nifti(os.path.join(root, s), modality, layout) for s in present}
        check_disjoint({s: [u.subject for u in us] for s, us in groups.items()}, root)
        return groups
    units = discover_nifti(root, modality, layout)
    if split is not None:
        return {split: units}
    if split_file is None:
        raise InputError("give split, split_dirs or a split_file")
    os.makedirs(os.path.dirname(os.path.abspath(split_file)), exist_ok=True)
    assignment = load_or_make_splits(
        split_file, [u.subject for u in units],
        fractions or {"train": 0.8, "val": 0.1, "test": 0.1}, seed,
    )
    by_subject = {u.subject: u for u in units}
    return {
        name: [by_subject[s] for s in subjects if s in by_subject]
        for name, subjects in assignment.items()
    }


def convert_nifti(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    modality: str,
    image_size: int,
    layout: str | Mapping[str, str | None] = "flat",
    split: str | None = None,
    split_dirs: bool = False,
    fractions: Mapping[str, float] | None = None,
    split_file: str | os.PathLike | None = None,
    seed: int = 0,
    policies: str | Mapping[str, str] = "train=healthy,val=healthy,test=all",
    axis: int = 2,
    percentiles: Sequence[float] = (0.5, 99.5),
    fit: str = "pad",
    min_brain_fraction: float = 0.1,
    middle_fraction: float = 0.5,
    subjects_per_shard: int = 8,
    bad_input: str = "skip",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Convert a directory of NIfTI subjects; returns {split: manifest}.

    With `split_dirs` the input has one folder per split (`train/`, `val/`, `test/`); with
    `split` every subject goes to that split; otherwise subjects are assigned by the split
    file (default `{output_dir}/splits.json`), drawn from `fractions` the first time.
    """
    check_policy(bad_input)
    out = os.fspath(output_dir)
    spec = LAYOUTS[layout] if isinstance(layout, str) else dict(layout)
    groups = nifti_groups(
        input_dir, modality, spec, split=split, split_dirs=split_dirs, fractions=fractions,
        split_file=split_file or os.path.join(out, "splits.json"), seed=seed,
    )
    policies = parse_policies(policies)
    manifests = {}
    for name, chosen in groups.items():
        opts = preprocess.SliceOptions(
            image_size=image_size, axis=axis, policy=_policy_for(policies, name),
            percentiles=tuple(percentiles), min_brain_fraction=min_brain_fraction,
            middle_fraction=middle_fraction, fit=fit,
        )
        settings = {"source": "nifti", "modality": modality, "layout": spec, **opts.to_dict()}
        manifests[name] = write_shard_set(
            chosen, lambda u, o=opts: nifti_records(u, modality, o), out, name,
            units_per_shard=subjects_per_shard, settings=settings, bad_input=bad_input,
            progress=progress,
        )
    return manifests


def _png_unit(stem, modality: str) -> Unit:
    name = stem.name
    subject = name.rsplit("-slice_", 1)[0]
    paths = png.slice_paths(stem, modality)
    inputs = tuple(
        (role, str(p)) for role, p in paths.items() if role != "segmentation" or p.exists()
    )
    return Unit(key=name, subject=subject, inputs=inputs)


def png_records(
    unit: Unit, modality: str, image_size: int, with_segmentation: bool,
    *, keep_empty_brainmask: bool = False,
) -> list[dict]:
    """The record of one reference PNG slice (identical to `png.read_slice`'s arrays)."""
    image_path = dict(unit.inputs)["image"]
    stem = png.Path(image_path[: -len(f"-{modality}.png")])
    s = png.read_slice(stem, modality, image_size, with_segmentation,
                       keep_empty_brainmask=keep_empty_brainmask)
    tail = unit.key.rsplit("-slice_", 1)
    index = int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else -1
    row = {
        "image": s["image"],
        "brainmask": s["brainmask"].astype(np.uint8),
        "slice_index": index,
        "axis": -1,
        "geometry": "",
        "source": image_path,
        "subject": unit.subject,
        "modality": modality,
        "name": unit.key,
        "affine": np.eye(4),
    }
    if with_segmentation:
        row["segmentation"] = s["segmentation"].astype(np.uint8)
        row["lesion_area"] = int(s["segmentation"].sum())
    return [row]


def convert_png(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    modality: str,
    image_size: int,
    splits: Sequence[str] = ("train", "val", "test"),
    slices_per_shard: int = 1024,
    bad_input: str = "skip",
    progress: bool = True,
    keep_empty_brainmask: bool = False,
) -> dict[str, dict[str, Any]]:
    """Convert the reference's PNG layout; splits whose folder is absent are left out.

    Slices with an empty brain mask are bad input unless `keep_empty_brainmask` (then they
    are kept as the reference's loader yields them: image -1, brain mask 0).
    """
    check_policy(bad_input)
    root, out = os.fspath(root), os.fspath(output_dir)
    check_root(root)
    present = [s for s in splits if os.path.exists(os.path.join(root, s))]
    if not present:
        raise BadInputError(root, f"none of the split folders {list(splits)} exist")
    manifests, owner = {}, {}
    for split in present:
        units = [_png_unit(s, modality) for s in png.list_slices(root, split, modality)]
        for u in units:
            if owner.setdefault(u.subject, split) != split:
                log.warning("subject %s is in both %s and %s", u.subject, owner[u.subject], split)
        with_seg = any(role == "segmentation" for u in units for role, _ in u.inputs)
        settings = {"source": "png", "modality": modality, "image_size": image_size,
                    "segmentation": with_seg}
        if keep_empty_brainmask:  # only when set, so default manifests stay as they were
            settings["keep_empty_brainmask"] = True
        manifests[split] = write_shard_set(
            units,
            lambda u, w=with_seg: png_records(u, modality, image_size, w,
                                              keep_empty_brainmask=keep_empty_brainmask),
            out, split,
            units_per_shard=slices_per_shard, settings=settings, bad_input=bad_input,
            progress=progress,
        )
    return manifests


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m madad_jax.data.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="source", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input", help="input directory")
    common.add_argument("output", help="output directory for shards and manifests")
    common.add_argument("--modality", required=True, help="e.g. T1, T2, FLAIR, T1CE")
    common.add_argument("--image-size", type=int, default=256)
    common.add_argument("--bad-input", choices=("skip", "stop"), default="skip",
                        help="skip and log unusable inputs, or stop at the first one")
    common.add_argument("--no-progress", action="store_true")
    common.add_argument("--verbose", action="store_true", help="tracebacks on errors")

    n = sub.add_parser("nifti", parents=[common], help="NIfTI volumes")
    n.add_argument("--layout", choices=sorted(LAYOUTS), default="flat")
    n.add_argument("--image-pattern", help="override the layout's image pattern")
    n.add_argument("--mask-pattern", help="override the layout's brain-mask pattern ('' none)")
    n.add_argument("--seg-pattern", help="override the layout's segmentation pattern ('' none)")
    n.add_argument("--split", help="put every subject in this split (no split file)")
    n.add_argument("--split-dirs", action="store_true",
                   help="INPUT has train/, val/, test/ folders (as the synthetic demo writes)")
    n.add_argument("--fractions", default="train=0.8,val=0.1,test=0.1")
    n.add_argument("--split-file", help="default: OUTPUT/splits.json")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--policy", default="train=healthy,val=healthy,test=all",
                   help=f"one of {preprocess.POLICIES} for all splits, or SPLIT=POLICY,...")
    n.add_argument("--axis", type=int, default=2, help="slicing axis of the RAS volume")
    n.add_argument("--percentiles", default="0.5,99.5")
    n.add_argument("--fit", choices=("pad", "brain"), default="pad")
    n.add_argument("--min-brain-fraction", type=float, default=0.1)
    n.add_argument("--middle-fraction", type=float, default=0.5)
    n.add_argument("--subjects-per-shard", type=int, default=8)

    g = sub.add_parser("png", parents=[common], help="the reference's PNG layout")
    g.add_argument("--splits", default="train,val,test")
    g.add_argument("--slices-per-shard", type=int, default=1024)
    g.add_argument("--keep-empty-brainmask", action="store_true",
                   help="keep slices whose brain mask is empty (as the reference does)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        with locks.hold(args.output, "conversion"):
            manifests = _convert(args)
    except locks.Terminated:  # SIGTERM: the subjects written so far are whole and kept
        print("error: stopped by SIGTERM; the shards written so far are kept and the same "
              "command resumes", file=sys.stderr)
        return PREEMPTED_EXIT
    except (BadInputError, ValueError, OSError) as err:
        if args.verbose:
            raise
        if isinstance(err, OSError):  # a full disk, a read-only output, ...
            err = f"{err.filename or args.output}: {err.strerror or err}"
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    for split, m in manifests.items():
        print(f"{split}: {m['num_records']} slices from {len(m['subjects'])} subjects "
              f"in {len(m['shards'])} shard(s), {len(m['skipped'])} input(s) skipped")
    return 0


def _convert(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if args.source == "nifti":
        layout = dict(LAYOUTS[args.layout])
        for role, value in (("image", args.image_pattern), ("brainmask", args.mask_pattern),
                            ("segmentation", args.seg_pattern)):
            if value is not None:
                layout[role] = value or None
        return convert_nifti(
            args.input, args.output, modality=args.modality, image_size=args.image_size,
            layout=layout, split=args.split, split_dirs=args.split_dirs,
            fractions=parse_fractions(args.fractions),
            split_file=args.split_file, seed=args.seed, policies=args.policy,
            axis=args.axis, percentiles=[float(x) for x in args.percentiles.split(",")],
            fit=args.fit, min_brain_fraction=args.min_brain_fraction,
            middle_fraction=args.middle_fraction, subjects_per_shard=args.subjects_per_shard,
            bad_input=args.bad_input, progress=not args.no_progress,
        )
    else:
        return convert_png(
            args.input, args.output, modality=args.modality, image_size=args.image_size,
            splits=[s for s in args.splits.split(",") if s],
            slices_per_shard=args.slices_per_shard, bad_input=args.bad_input,
            progress=not args.no_progress, keep_empty_brainmask=args.keep_empty_brainmask,
        )


if __name__ == "__main__":
    sys.exit(main())
