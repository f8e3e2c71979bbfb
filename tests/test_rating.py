"""The master scale grades PDs at its bounds as documented and refuses a malformed scale."""

from __future__ import annotations

import numpy as np
import pytest

from govrisk.core.rating import MasterScale, load_master_scale


def test_bounds_fall_in_the_next_grade() -> None:
    scale = load_master_scale()
    first, second = scale.grades[0], scale.grades[1]
    assert scale.grade(first.max_pd * 0.999) == first.grade
    assert scale.grade(first.max_pd) == second.grade
    assert list(scale.grade(np.array([0.0, 1.0]))) == [first.grade, scale.grades[-1].grade]


def test_grades_must_increase() -> None:
    with pytest.raises(ValueError, match="increase strictly"):
        MasterScale(
            name="x", version="1", grades=[{"grade": "a", "max_pd": 0.5}, {"grade": "b", "max_pd": 0.2}]
        )
