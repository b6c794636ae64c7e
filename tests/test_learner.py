"""The learner contract: ANIL, MAML and NIL provide every member of ``Learner``, and say what they adapt."""

from __future__ import annotations

import math

import pytest
from evaluation_support import conv4, make_anil

from algorithms.learner import HeadPath, Learner, OuterLoop, TrainableLearner, check_lr
from algorithms.maml import MAML
from algorithms.nil import NIL


def _members(protocol: type) -> set[str]:
    """Names a protocol declares: annotated attributes and methods (properties included), its bases' too."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (object,) or not getattr(cls, "_is_protocol", False):
            continue
        names |= set(getattr(cls, "__annotations__", {}))
        names |= {name for name, value in vars(cls).items()
                  if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    return names


@pytest.fixture(scope="module")
def learners() -> dict[str, Learner]:
    anil = make_anil(seed=0)
    return {"ANIL": anil, "MAML": MAML(*conv4(seed=1)), "NIL": NIL(anil)}


def test_every_learner_provides_the_whole_contract(learners):
    for name, learner in learners.items():
        missing = sorted(m for m in _members(Learner) if not hasattr(learner, m))
        assert not missing, f"{name} lacks {missing}"
    for name in ("ANIL", "MAML"):  # the outer loop's owners can be trained and checkpointed
        assert isinstance(learners[name], OuterLoop)
        assert all(hasattr(learners[name], m) for m in _members(TrainableLearner)), name
    assert {"features", "initial_head", "adapt_head", "head_logits"} <= _members(HeadPath)


def test_learners_say_what_their_inner_loop_adapts(learners):
    assert {name: lrn.adapts for name, lrn in learners.items()} == {"ANIL": "head", "MAML": "all", "NIL": "none"}
    assert learners["ANIL"].head_path() is learners["ANIL"]
    assert learners["MAML"].head_path() is None and learners["NIL"].head_path() is None
    assert learners["NIL"].inner_steps == 0 and learners["NIL"].inner_lr == learners["ANIL"].inner_lr
    # NIL is trained as the learner it wraps (the paper: "We use ANIL training").
    assert learners["NIL"].meta_train_step == learners["ANIL"].meta_train_step


def test_graph_settings_name_attributes_of_the_learner(learners):
    for name in ("ANIL", "MAML"):
        learner = learners[name]
        assert learner.GRAPH_SETTINGS and all(hasattr(learner, s) for s in learner.GRAPH_SETTINGS), name


@pytest.mark.parametrize("bad", [0, -0.1, math.inf, math.nan, "0.1", True, None])
def test_check_lr_rejects_what_is_not_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="inner_lr must be a positive finite number"):
        check_lr("inner_lr", bad)
    assert check_lr("inner_lr", 1) == 1.0 and isinstance(check_lr("inner_lr", 1), float)
