"""Guards torchvision's fake-op registrations for ops its compiled library lacks.

The torchvision wheel that pins torch 2.13.0 is a CUDA build; next to the CPU
torch its compiled ops fail to load, and two unguarded
`register_fake("torchvision::nms"/"qnms")` lines then raise at import, which
breaks `import timm`. timm and segmentation_models_pytorch never call those
ops, so registering the fakes only when the op exists is enough. Idempotent.
"""
import importlib.util
import pathlib
import sys


def main():
  spec = importlib.util.find_spec('torchvision')
  if spec is None:
    print('torchvision not installed; nothing to patch')
    return 0
  path = pathlib.Path(spec.origin).parent / '_meta_registrations.py'
  text = path.read_text()
  changed = False
  for op in ('nms', 'qnms'):
    old = f'@torch.library.register_fake("torchvision::{op}")'
    new = (f'@(torch.library.register_fake("torchvision::{op}") '
           f'if hasattr(torch.ops.torchvision, "{op}") else (lambda f: f))')
    if old in text and new not in text:
      text = text.replace(old, new)
      changed = True
  if changed:
    path.write_text(text)
    print(f'patched {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
