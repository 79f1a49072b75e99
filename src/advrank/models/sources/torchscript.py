"""``torchscript:FILE``: a TorchScript export (``torch.jit.save``) mapping normalised images
to embeddings ``[B, D]`` (or feature maps, which are pooled). A TorchScript file holds
compiled code that runs when the model runs: load only files you trust. Its preprocessing is
not in the file: ImageNet's (224 px, mean/std) unless ``--input-size``/``--mean``/``--std``
say otherwise (``--mean 0,0,0 --std 1,1,1`` when the export normalises by itself)."""

from __future__ import annotations

from pathlib import Path

import torch

from advrank.core.io import file_sha256
from advrank.errors import AdvrankError
from advrank.models.sources.base import SourceNet, SourceOptions
from advrank.registry import MODEL_SOURCES


@MODEL_SOURCES.register("torchscript", argument="FILE", example="torchscript:model.ts",
                        supports_layer=False)
def torchscript_source(path: str, options: SourceOptions) -> SourceNet:
    file = Path(path).expanduser()
    if not file.is_file():
        raise AdvrankError(f"TorchScript file {file} does not exist")
    try:
        net = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:  # not a TorchScript archive, or a damaged one
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AdvrankError(f"{file} is not a loadable TorchScript file: {first}") from None
    # the archive holds the compiled code as well as the weights: its bytes identify both
    return SourceNet(net, {}, {"torchscript_file": str(file),
                               "torchscript_sha": file_sha256(file)})
