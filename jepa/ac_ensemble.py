"""Several AC predictors trained apart over one frozen encoder, imagining as one.

Predictors of one recipe, trained with different seeds, plan with very different success on the
same goals: each errs near the goal in its own way. Averaging their imagined tokens (and states)
at every step cancels part of those errors, so the planner's energy follows what the members agree
on. Each member rolls out on its own predictions; only the outputs are averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepa.ac_predictor import ACPredictor, Prediction


class PredictorEnsemble(nn.Module):
    """The ``ACPredictor`` interface the planner and Serve use (``rollout``, action bounds, token
    grid), over ``members`` that read the same tokens, actions and states."""

    def __init__(self, members: list[ACPredictor]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 predictors, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if (m.grid, m.state_dim, m.frame_out.out_features) != (first.grid, first.state_dim, first.frame_out.out_features):
                raise ValueError(f"predictor {i} reads a {m.grid} grid of {m.frame_out.out_features}-D tokens "
                                 f"with state size {m.state_dim}; predictor 0 a {first.grid} grid of "
                                 f"{first.frame_out.out_features}-D tokens with state size {first.state_dim}")
            if not (torch.equal(m.action_low, first.action_low) and torch.equal(m.action_high, first.action_high)):
                raise ValueError(f"predictor {i} has other action bounds than predictor 0")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def action_low(self) -> Tensor:
        return self.members[0].action_low

    @property
    def action_high(self) -> Tensor:
        return self.members[0].action_high

    @property
    def action_dim(self) -> int:
        return self.members[0].action_dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.members[0].grid

    @property
    def state_dim(self) -> int:
        return self.members[0].state_dim

    def rollout(self, z: Tensor, actions: Tensor, states: Tensor | None = None, steps: int = 1) -> Prediction:
        """``ACPredictor.rollout`` of every member, averaged step by step."""
        outs = [m.rollout(z, actions, states, steps) for m in self.members]
        frames = torch.stack([o.frames for o in outs]).mean(0)
        if outs[0].states is None:
            return Prediction(frames, None)
        return Prediction(frames, torch.stack([o.states for o in outs]).mean(0))


def members_of(predictor: ACPredictor | PredictorEnsemble) -> list[ACPredictor]:
    """The single predictors behind ``predictor``: itself, or an ensemble's members."""
    return list(predictor.members) if isinstance(predictor, PredictorEnsemble) else [predictor]
