"""hessian_book: the book's chapters, built on the numerical core ``hessian_core``.

Shared pieces, one job per module:

* ``data``, ``models`` -- MNIST (checksummed) and modular addition; LeNet-tiny, the modular-addition transformer
  and MLP;
* ``store``, ``training``, ``runs`` -- the parameter-keyed, checksummed results store; resumable training loops;
  the training runs the chapters share;
* ``measure``, ``sharpness``, ``curves`` -- per-checkpoint Hessian measurements; Adam-preconditioned sharpness;
  events read off training curves;
* ``fourier``, ``circuit`` -- Fourier tools for modular addition; Nanda et al.'s progress measures of its circuit;
* ``mechanism`` -- ablations, patching, eigenvector weight on Fourier subspaces against a random-subspace null,
  other curvature matrices, probes (the mechanistic chapter);
* ``stats``, ``sampling``, ``spikes`` -- hierarchical bootstrap of phase differences over seeds; stratified
  Hessian subsamples; training-loss spikes;
* ``config``, ``fanout``, ``progress``, ``glue``, ``plots`` -- chapter configurations; running independent
  tasks on local processes or a Dask cluster; progress bars; glued numbers and words; figures;
* ``calibration`` -- the ~10-second benchmark of this machine's speed that accompanies every timing;
* ``explorer`` -- the interactive checkpoint explorer of the static book (plotly: a slider over checkpoints, a
  selector over runs), with the spectrum decimation that keeps its extremes and largest gaps exactly.

``hessian_book.chapters`` holds one module per chapter: a ``Config`` (defaults, presets, validation) and
``run(config)`` returning the chapter's result; the notebooks in ``notebooks/`` only call them.
"""
