"""A multiple-choice model that scores a choice by how close its embedding is to the context's.

The cross layout (`AutoModelForMultipleChoice`) encodes each (context, choice) pair jointly and
scores it with a new linear head on the pooler: every bit of "which choice fits" must be learnt
from the task data. A sentence encoder such as all-MiniLM-L6-v2 was trained to put related texts
close under mean pooling, so scoring ``scale · cos(mean-pool(context), mean-pool(choice))`` starts
well above chance (ARC-Easy 53 % of 4-way before any training) and fine-tuning the adapters moves
from there. This is the bi-encoder of sentence-transformers (its MultipleNegativesRankingLoss uses
the same scaled cosine, scale 20), with softmax over the task's own choices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import MultipleChoiceModelOutput


class SimilarityHead(nn.Module):
    """The task head: one learnt temperature (sent and averaged like any head)."""

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, context: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.einsum("nd,ncd->nc", context, choices)


class DualEncoderForMultipleChoice(nn.Module):
    """`encoder` (a bare transformer, e.g. `AutoModel`) shared by context and choices."""

    def __init__(self, encoder: nn.Module, scale: float = 20.0):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = SimilarityHead(scale)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Unit-length mean of the last hidden states over real tokens, one row per sequence."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)

    def forward(
        self,
        input_ids,
        attention_mask,
        context_input_ids,
        context_attention_mask,
        token_type_ids=None,
        context_token_type_ids=None,
        labels=None,
    ) -> MultipleChoiceModelOutput:
        n, c, length = input_ids.shape
        flat = None if token_type_ids is None else token_type_ids.reshape(n * c, length)
        choices = self.embed(input_ids.reshape(n * c, length), attention_mask.reshape(n * c, length), flat)
        context = self.embed(context_input_ids, context_attention_mask, context_token_type_ids)
        logits = self.classifier(context, choices.view(n, c, -1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits)
