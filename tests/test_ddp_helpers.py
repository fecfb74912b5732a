"""The comparison the DDP tests rely on must be able to fail."""

import pytest
import torch
from ddp_helpers import assert_nested_close


@pytest.mark.parametrize(
    ("actual", "expected"),
    [({}, {}), ([], []), (None, None), ({"stages": ["original"]}, {"stages": ["original"]})],
    ids=["empty_dicts", "empty_lists", "nothing", "no_tensor"],
)
def test_results_without_any_tensor_fail(actual, expected):
    with pytest.raises(AssertionError, match="no tensor to compare|missing value"):
        assert_nested_close(actual, expected)


@pytest.mark.parametrize(
    "actual",
    [{"score": torch.tensor(1.0), "curve": None}, {"score": torch.tensor(1.0)}, None],
    ids=["a_missing_value", "a_missing_key", "a_missing_result"],
)
def test_missing_results_fail(actual):
    with pytest.raises(AssertionError, match="missing value|keys differ"):
        assert_nested_close(actual, {"score": torch.tensor(1.0), "curve": torch.zeros(3)})


def test_close_results_pass_and_different_ones_fail():
    expected = {"score": torch.tensor(1.0), "parts": [torch.arange(3.0), "label"]}
    assert_nested_close({"score": torch.tensor(1.0 + 1e-7), "parts": [torch.arange(3.0), "label"]}, expected)
    with pytest.raises(AssertionError, match=r"result\['parts'\]\[0\]"):
        assert_nested_close({"score": torch.tensor(1.0), "parts": [torch.arange(3.0) + 1, "label"]}, expected)
    with pytest.raises(AssertionError, match="'other' != 'label'"):
        assert_nested_close({"score": torch.tensor(1.0), "parts": [torch.arange(3.0), "other"]}, expected)
