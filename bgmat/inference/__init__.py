"""Inference: from a photo (or a folder, a clip, an HTTP request) to its cut-out.

One job per module, in the order a photo goes through them:

  image_io      read an untrusted input (path, bytes, PIL, numpy) as upright
                sRGB-or-profiled uint8 RGB, its own alpha, notes; `InputError`
  remover       the two trained stages with their weights (`Remover`):
                pre-segmentation at the working size, matting at the photo's
                size through `resolution`; the Python API
  resolution    shape buckets, the plan for one photo, overlapping tiles
  compile_cache how many compiled shapes a process keeps (flat memory), and
                XLA's persistent compilation cache
  render        alpha -> rgba / alpha / foreground / composite pixels
                (`bgmat.foreground` for the edge colours)
  remove_run    `bgmat remove` over files, folders, globs and stdin: what is
                taken, output names, atomic writes, one report per run
  video         clips and frame sequences (PyAV), temporal smoothing
  serve         `bgmat serve`: HTTP with dynamic batching

Reading, the model and rendering are shared by every entry point (CLI, Python
API, server, video), so a photo gives the same pixels whichever way it came.
"""
