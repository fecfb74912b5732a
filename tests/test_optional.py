"""The text extra is optional: without it, what needs it says which extra to install."""

import sys

import pytest

from lit_attr.data.text import build_tokenizer
from lit_attr.models import DemoTextClassifier


@pytest.mark.parametrize("package", ["tokenizers", "transformers"])
def test_missing_text_extra_names_the_extra(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail as if it were not installed
    with pytest.raises(ImportError, match=rf"`{package}` is needed .* `pip install lit-attr\[text\]`"):
        if package == "tokenizers":
            build_tokenizer()
        else:
            DemoTextClassifier()
