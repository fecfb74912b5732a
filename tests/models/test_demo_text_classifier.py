"""DemoTextClassifier: a BERT from a config that learns the synthetic sentences and declares its token conventions."""

import torch
from lightning import Trainer

from lit_attr.inputs.tokens import find_embedding_layer
from lit_attr.methods import get_method
from lit_attr.models import DemoTextClassifier


def test_trained_model_is_accurate_and_attributes_without_options(trained_text_demo):
    model, data = trained_text_demo
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = trainer.validate(model, data, verbose=False)
    assert result["val_acc"] >= 0.95
    assert not model.training
    batch = next(iter(data.val_dataloader()))
    ids, mask = batch["input_ids"][:4], batch["attention_mask"][:4]
    assert find_embedding_layer(model) is model.bert.bert.embeddings.word_embeddings
    # The model declares [CLS], [SEP] and [MASK]: no token options are needed, special tokens score exactly 0.
    scores = get_method("input_x_gradient", model).attribute(ids, attention_mask=mask)
    assert bool((scores[batch["special_tokens_mask"][:4].bool()] == 0).all())


def test_forward_returns_logits_and_the_checkpoint_restores_the_model(tmp_path):
    torch.manual_seed(0)
    model = DemoTextClassifier(vocab_size=30, num_classes=3, hidden_size=16, intermediate_size=32).eval()
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 10, 11, 3]])
    mask = ids.ne(0).long()
    logits = model(ids, mask)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    torch.testing.assert_close(model(ids[:1, :4]), logits[:1], atol=1e-5, rtol=1e-5)  # padding is masked out
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "text.ckpt")
    restored = DemoTextClassifier.load_from_checkpoint(tmp_path / "text.ckpt").eval()
    torch.testing.assert_close(restored(ids, mask), logits)
    assert restored.token_options == model.token_options
