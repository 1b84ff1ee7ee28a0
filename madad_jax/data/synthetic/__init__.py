"""The embedded demo data set: healthy "subjects" made from the MNI152 template, plus lesions.

Nothing is downloaded. `nilearn` ships the MNI152 2009 T1 template, its brain mask and its
grey/white-matter probability maps; every subject is sampled from them on a reduced grid (an
axial slab through the basal ganglia and the lateral ventricles) through its own random
spatial transform:

- a small affine jitter (per-axis scale, rotation) about the brain centre;
- a smooth elastic displacement (a cubic B-spline of random control-point offsets);
- a random enlargement or shrinkage of the lateral ventricles (a local radial zoom).

Then the intensities change per subject: a gamma (contrast) change, a smooth multiplicative
bias field, a global gain and Rician noise. The result is skull-stripped (zero outside the
brain mask), as the reference's inputs are.

Test subjects get lesions, each with a ground-truth mask. A lesion is an ellipsoid whose
surface is warped by smooth noise (`irregularity`), filled with a textured intensity set
relative to the local tissue: hypo-intense lesions fall in the range of CSF and dark grey
matter, hyper-intense ones (placed in darker tissue) in the range of white matter, iso-intense
ones only change texture. Lesions push the tissue around them outward (mass effect). Because
their intensities overlap those of normal tissue, a plain intensity threshold cannot isolate
them (see `madad_jax.evaluation.baseline`); a model of normal anatomy can, since they have the wrong
intensity or texture for their location.

Every random draw of a subject comes from `numpy.random.SeedSequence([seed, split, index])`,
so a subject is the same whatever the number of subjects asked for, and a test subject's
healthy counterpart (`lesions=None`) shares its anatomy, intensity changes and noise.

Two outputs:

- `write_dataset` writes NIfTI volumes, `{out}/{split}/{subject}_{MODALITY}.nii.gz` with
  `{subject}_brainmask.nii.gz` and, for lesioned splits, `{subject}_seg.nii.gz`, in MNI space
  (RAS, millimetres), to be converted like user data. CLI:
  `python -m madad_jax.data.synthetic --out DIR --n-train N --n-test M --seed S`.
- `make_split` / `from_config` return 2D slices in memory, in the format of
  `madad_jax.data.png.read_reference_split` (images in [-1, 1], -1 outside the brain).

Modules: `anatomy` (template, grid, spatial transform, intensity changes), `lesions`,
`subjects` (one subject from its seeds, 2D splits in memory), `writer` (NIfTI files, CLI).
"""

from madad_jax.data.synthetic.anatomy import MODALITIES, AnatomySpec, Grid
from madad_jax.data.synthetic.lesions import CONTRASTS, LesionSpec
from madad_jax.data.synthetic.subjects import (
    SLICE_POLICIES,
    SPLITS,
    Subject,
    from_config,
    make_split,
    make_subject,
    specs_from_config,
    subject_name,
)
from madad_jax.data.synthetic.writer import main, write_dataset

__all__ = [
    "CONTRASTS",
    "MODALITIES",
    "SLICE_POLICIES",
    "SPLITS",
    "AnatomySpec",
    "Grid",
    "LesionSpec",
    "Subject",
    "from_config",
    "main",
    "make_split",
    "make_subject",
    "specs_from_config",
    "subject_name",
    "write_dataset",
]
