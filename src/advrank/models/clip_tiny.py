"""``clip-tiny``: a small dual encoder to train on a CPU (``advrank train --arch clip-tiny``).

Image tower: the C2F1 network (§4.1). Text tower: open_clip's tokenizer (BPE, 49,408 tokens,
shipped with the package), a token and position embedding, a 2-layer pre-norm transformer
(width 128, 4 heads) over the first 16 tokens (those after the end-of-text token masked), the
end-of-text token's state, a linear map to the embedding size. A learnable ``logit_scale``
(CLIP's temperature, log(1/0.07) at start) sits in the text tower for the contrastive loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advrank.models.builtin import c2f1
from advrank.models.dual import TextTokens
from advrank.registry import MODELS

VOCAB = 49_408  # open_clip's SimpleTokenizer
CONTEXT = 16


class TinyTextTransformer(TextTokens):
    """``list[str]`` -> ``[N, embed_dim]``: tokens ``[N, L]`` -> embeddings + positions ->
    pre-norm transformer (padding masked) -> LayerNorm -> the end-of-text token's state ->
    linear projection."""

    def __init__(self, embed_dim: int, width: int = 128, layers: int = 2, heads: int = 4,
                 context_length: int = CONTEXT):
        super().__init__(context_length)
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:  # [N, L] -> [N, D]
        eot = tokens.argmax(dim=1)  # the end-of-text token has the largest id (as in CLIP)
        padding = torch.arange(tokens.shape[1], device=tokens.device)[None] > eot[:, None]
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x, src_key_padding_mask=padding))
        return self.projection(x[torch.arange(x.shape[0], device=x.device), eot])


@MODELS.register("clip-tiny", default_embed_dim=128, text_tower=True)
def clip_tiny(image_shape, embed_dim: int) -> tuple[nn.Module, nn.Module]:
    """C2F1 image tower and a 2-layer transformer text tower, both to ``embed_dim``."""
    return c2f1(image_shape, embed_dim), TinyTextTransformer(embed_dim)
