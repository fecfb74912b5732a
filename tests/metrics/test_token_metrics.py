"""The token Metrics: sums of the functional layer's per-sample scores, the score protocol, bad options.

Their DDP test shares the spawn of tests/metrics/test_ddp.py.
"""


import pytest
import torch
from ddp_helpers import assert_nested_close
from matplotlib.figure import Figure
from text_helpers import CONVENTIONS, MASK, SPECIALS, game_metrics, logits_of, plain_transformer, token_metric_inputs

from lit_attr.functional.eraser import comprehensiveness, sufficiency
from lit_attr.functional.token_activation_deviation import token_activation_deviation
from lit_attr.functional.token_games import token_insertion_deletion
from lit_attr.functional.token_localization import token_auprc, token_f1, token_iou
from lit_attr.metrics import (
    Comprehensiveness,
    Sufficiency,
    TokenActivationDeviation,
    TokenInsertionDeletion,
    TokenLocalization,
)


def test_states_hold_the_sums_of_the_functional_scores():
    model = plain_transformer(dtype=torch.float64)
    ids, mask, scores, rationale = token_metric_inputs()
    scores = scores.double()
    halves = (slice(0, 4), slice(4, 6))
    options = {"attention_mask": mask, "special_token_ids": SPECIALS, "replacement_id": MASK}
    expected = {
        "comprehensiveness": comprehensiveness(model, ids, scores, bins=(10, 50), **options),
        "sufficiency": sufficiency(model, ids, scores, replacement="remove", **options),
        "token_insertion_deletion": token_insertion_deletion(model, ids, scores, n_steps=4, **options),
        "token_activation_deviation": token_activation_deviation(model, ids, scores, n_steps=3, **options),
    }
    for name, factory in game_metrics(model).items():
        metric = factory()
        for part in halves:
            metric.update(ids[part], scores[part], attention_mask=mask[part])
        result, want = metric.compute(), expected[name]
        if name in ("comprehensiveness", "sufficiency"):
            torch.testing.assert_close(result[name], want.aopc.mean().float())
            torch.testing.assert_close(result[f"{name}_curve"], want.per_bin.mean(0).float())
        elif name == "token_insertion_deletion":
            torch.testing.assert_close(result["insertion"], want.insertion_auc.mean().float())
            torch.testing.assert_close(result["difference"], (want.insertion_auc - want.deletion_auc).mean().float())
            torch.testing.assert_close(result["deletion_curve"], want.deletion_curve.mean(0).float())
        else:
            torch.testing.assert_close(result["deletion_mse"], want.deletion_mse.mean(0).float())
            both = torch.cat([want.insertion_mse.mean(0), want.deletion_mse.mean(0)]).mean()
            torch.testing.assert_close(result["mean_mse"], both.float())
    localization = TokenLocalization()
    special = ids.eq(SPECIALS[0]) | ids.eq(SPECIALS[1])
    for part in halves:
        localization.update(scores[part], rationale[part], attention_mask=mask[part], special_tokens_mask=special[part])
    for key, fn in (("token_f1", token_f1), ("token_iou", token_iou), ("auprc", token_auprc)):
        torch.testing.assert_close(localization.compute()[key], fn(scores, rationale, mask, special).mean().float())


def test_score_is_pure_and_update_takes_its_scores():
    model = plain_transformer()
    ids, mask, scores, rationale = token_metric_inputs(seed=1)
    logits = model(ids, mask).detach()
    for factory in game_metrics(model).values():
        direct, given = factory(), factory()
        per_sample = given.score(ids, scores, attention_mask=mask, logits=logits)
        assert int(given.count) == 0  # score() changes no state
        assert all(value.shape[0] == len(ids) for value in per_sample.values())
        given.update(ids, scores, scores=per_sample)
        direct.update(ids, scores, attention_mask=mask)
        assert_nested_close(given.compute(), direct.compute())
        assert "_model_ref" not in dict(direct.named_children()) and not any("model" in k for k in direct.state_dict())
    localization = TokenLocalization(metrics=("auprc", "token_f1"))
    per_sample = localization.score(scores, rationale, attention_mask=mask)
    assert sorted(per_sample) == ["auprc", "token_f1"] and per_sample["auprc"].shape == (6,)
    with pytest.raises(ValueError, match=r"`scores` for TokenLocalization must be a dict with the keys \['auprc'"):
        localization.update(scores, rationale, scores={"token_f1": per_sample["token_f1"]})
    short = TokenInsertionDeletion(model, n_steps=2, **CONVENTIONS).score(ids, scores, attention_mask=mask)
    with pytest.raises(ValueError, match="`scores` curves must have 5 points"):
        TokenInsertionDeletion(model, n_steps=4, **CONVENTIONS).update(ids, scores, scores=short)


def test_sigmoid_output_reaches_the_functional():
    model = plain_transformer(dtype=torch.float64)
    ids, mask, scores, _ = token_metric_inputs(seed=3)
    scores = scores.double()
    with torch.no_grad():
        target = logits_of(model, ids, mask).argmin(dim=1)  # a multi-label head explains any label
    options = {"attention_mask": mask, "special_token_ids": SPECIALS, "replacement_id": MASK, "output": "sigmoid"}
    for metric_class, function in ((Comprehensiveness, comprehensiveness), (Sufficiency, sufficiency)):
        metric = metric_class(model, bins=(10, 50), output="sigmoid", **CONVENTIONS)
        metric.update(ids, scores, target, attention_mask=mask)
        want = function(model, ids, scores, target, bins=(10, 50), **options)
        torch.testing.assert_close(metric.compute()[metric.key], want.aopc.mean().float())
        torch.testing.assert_close(metric.compute()[f"{metric.key}_curve"], want.per_bin.mean(0).float())
    games = TokenInsertionDeletion(model, n_steps=4, output="sigmoid", **CONVENTIONS)
    games.update(ids, scores, target, attention_mask=mask)
    want = token_insertion_deletion(model, ids, scores, target, n_steps=4, **options)
    torch.testing.assert_close(games.compute()["insertion_curve"], want.insertion_curve.mean(0).float())
    torch.testing.assert_close(games.compute()["deletion"], want.deletion_auc.mean().float())
    assert games.plot()[1].get_ylabel() == "sigmoid(logit)"


def test_plots_draw_the_curves():
    model = plain_transformer()
    ids, mask, scores, _ = token_metric_inputs(seed=2)
    for factory in (game_metrics(model)["comprehensiveness"], game_metrics(model)["token_insertion_deletion"]):
        metric = factory()
        metric.update(ids, scores, attention_mask=mask)
        fig, ax = metric.plot()
        assert isinstance(fig, Figure) and ax.lines


def test_bad_options_fail_when_the_metric_is_built():
    model = plain_transformer()
    with pytest.raises(ValueError, match=r"`max_tokens` must be given with `tokens_per_step`"):
        TokenInsertionDeletion(model, tokens_per_step=2, **CONVENTIONS)
    with pytest.raises(ValueError, match="`replacement` must be one of \\('mask', 'remove'\\)"):
        Comprehensiveness(model, replacement="drop", **CONVENTIONS)
    with pytest.raises(ValueError, match="`replacement_id` must be a token id in the vocabulary"):
        Sufficiency(model, replacement_id=100)
    with pytest.raises(ValueError, match=r"`output` must be one of \('prob', 'logit', 'sigmoid'\), got 'softmax'"):
        Comprehensiveness(model, output="softmax", **CONVENTIONS)
    with pytest.raises(ValueError, match=r"`output` must be one of \('prob', 'logit', 'prob_ratio', 'sigmoid'\)"):
        TokenInsertionDeletion(model, output="multi_label", **CONVENTIONS)
    bare = torch.nn.Sequential(torch.nn.EmbeddingBag(10, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="`replacement_id` \\(the \\[MASK\\] or \\[PAD\\] id"):
        TokenInsertionDeletion(bare)
    with pytest.raises(ValueError, match="Cannot find the model's encoder layers"):
        TokenActivationDeviation(bare, replacement_id=1)
    with pytest.raises(ValueError, match="`metrics` must be distinct names"):
        TokenLocalization(metrics=("token_f1", "pointing_game"))
