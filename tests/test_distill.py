"""Head-output distillation of a detector (yolo_dero.ultra.distill): the loss itself, and the trainer's wrapper."""

import pytest
import torch

import yolo_dero.ultra  # noqa: F401  (offline set-up before Ultralytics is imported)
from yolo_dero.ultra.distill import head_distillation_loss

REG_MAX, NC, ANCHORS = 16, 3, 10


def _head(seed: int, b: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"boxes": torch.randn(b, 4 * REG_MAX, ANCHORS, generator=g),
            "scores": torch.randn(b, NC, ANCHORS, generator=g)}


def test_a_student_that_predicts_like_its_teacher_scores_zero():
    teacher = _head(0)
    cls, box = head_distillation_loss(teacher, teacher, REG_MAX)
    assert float(cls) == pytest.approx(0.0, abs=1e-5) and float(box) == pytest.approx(0.0, abs=1e-6)
    cls, box = head_distillation_loss(_head(1), teacher, REG_MAX)
    assert float(cls) > 0.05 and float(box) > 0.05


def test_gradients_reach_the_student_only():
    student = {k: v.requires_grad_() for k, v in _head(1).items()}
    teacher = {k: v.requires_grad_() for k, v in _head(0).items()}
    cls, box = head_distillation_loss(student, teacher, REG_MAX)
    (cls + box).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in student.values())
    assert all(v.grad is None for v in teacher.values())


def test_the_box_term_counts_where_the_teacher_sees_an_object():
    """Box distributions are taught where the teacher is confident: a student wrong only at background anchors
    scores (almost) nothing, wrong only at the one confident anchor scores the full term."""
    teacher = _head(0)
    teacher["scores"].fill_(-20.0)
    teacher["scores"][:, 0, 3] = 8.0  # anchor 3: an object of class 0
    off = torch.randn(2, 4 * REG_MAX, 1) * 3
    wrong_background, wrong_object = dict(teacher), dict(teacher)
    wrong_background["boxes"] = teacher["boxes"].clone()
    wrong_background["boxes"][..., 5:6] += off
    wrong_object["boxes"] = teacher["boxes"].clone()
    wrong_object["boxes"][..., 3:4] += off
    _, box_bg = head_distillation_loss(wrong_background, teacher, REG_MAX)
    _, box_obj = head_distillation_loss(wrong_object, teacher, REG_MAX)
    assert float(box_bg) < 1e-3 * float(box_obj) and float(box_obj) > 0.1


def test_a_teacher_on_another_grid_or_classes_is_refused():
    student = _head(1)
    other = {"boxes": _head(0)["boxes"], "scores": torch.randn(2, NC + 2, ANCHORS)}
    with pytest.raises(ValueError, match="with the student.s classes, reg_max and strides"):
        head_distillation_loss(student, other, REG_MAX)
