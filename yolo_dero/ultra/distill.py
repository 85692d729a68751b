"""Distillation of a detector at the head's outputs: Ultralytics' ``DistillationModel`` with another loss.

Ultralytics' own distillation (``distill_model``) matches the features entering the Detect head through a learned
projector. :class:`HeadDistillationModel` keeps its wrapper (frozen teacher, hooks, checkpoints, resume) and matches
what the teacher *predicts* instead, anchor by anchor:

* the class scores: binary cross-entropy against the teacher's probabilities (less the teacher's own entropy, so a
  student that matches scores 0), normalised like Ultralytics' class loss by the total target mass;
* the box: the KL divergence between the teacher's and the student's DFL distributions of each box side, at
  temperature :data:`BOX_TEMPERATURE`, weighted by how sure the teacher is that an object is there.

The two terms take the supervised loss's own gains (``cls`` and ``dfl``) times ``dis``, so ``dis=1`` weighs the
teacher like the labels. The teacher must predict on the student's grid: same classes, ``reg_max`` and strides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ultralytics.nn.distill_model import DistillationModel

#: the distillation weight ``dis`` when none is given: ours (1 weighs the teacher like the labels); Ultralytics' default
DEFAULT_WEIGHT = {"head": 1.0, "feature": 6.0}
BOX_TEMPERATURE = 2.0  # softens the 16-bin side distributions so the teacher's spread, not only its peak, is taught


def head_distillation_loss(student: dict, teacher: dict, reg_max: int,
                           temperature: float = BOX_TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """(class term, box term) between two Detect heads' raw outputs (``{"boxes": (B, 4*reg_max, A),
    "scores": (B, nc, A), ...}``); the teacher's are treated as constants."""
    s_cls, t_cls = student["scores"].float(), teacher["scores"].detach().float()
    s_box, t_box = student["boxes"].float(), teacher["boxes"].detach().float()
    if s_cls.shape != t_cls.shape or s_box.shape != t_box.shape:
        raise ValueError(f"teacher and student heads differ: scores {tuple(t_cls.shape)} vs {tuple(s_cls.shape)}, "
                         f"boxes {tuple(t_box.shape)} vs {tuple(s_box.shape)}; distil from a detector with the "
                         f"student's classes, reg_max and strides")
    t_prob = t_cls.sigmoid()
    gap = (F.binary_cross_entropy_with_logits(s_cls, t_prob, reduction="none")
           - F.binary_cross_entropy_with_logits(t_cls, t_prob, reduction="none"))
    cls = gap.sum() / t_prob.sum().clamp(min=1)

    b, _, a = s_box.shape
    log_s = F.log_softmax(s_box.view(b, 4, reg_max, a) / temperature, dim=2)
    log_t = F.log_softmax(t_box.view(b, 4, reg_max, a) / temperature, dim=2)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(2).mean(1)  # (B, A): per anchor
    weight = t_prob.amax(1)  # (B, A): the teacher's confidence that some object is there
    box = (kl * weight).sum() / weight.sum().clamp(min=1) * temperature ** 2
    return cls, box


class HeadDistillationModel(DistillationModel):
    """Ultralytics' teacher-student wrapper whose distillation loss is :func:`head_distillation_loss` (its feature
    projector is built, as the wrapper's checkpoints and resume expect, and left unused)."""

    def loss(self, batch, preds=None):
        if not self.training:  # validation while training: the student's own loss, as the base class does
            return super().loss(batch, preds)
        self._teacher_feats.clear()
        self._student_feats.clear()
        with torch.no_grad():
            self.teacher_model(batch["img"])  # the hook on the teacher's Detect layer keeps its raw outputs
        preds = self.student_model(batch["img"])
        regular_loss, loss_items = self.student_model.loss(batch, preds)
        teacher = self.decouple_outputs(self._teacher_feats[len(self.feats_idx) - 1], branch="one2many")
        student = self.decouple_outputs(preds, branch="one2many")
        cls, box = head_distillation_loss(student, teacher, self.student_model.model[-1].reg_max)
        hyp = self.student_model.args
        loss_distill = ((cls * hyp.cls + box * hyp.dfl) * self.dis).reshape(1)
        loss_items["dis_loss"] = loss_distill.detach()
        return torch.cat([regular_loss, loss_distill * batch["img"].shape[0]]), loss_items
