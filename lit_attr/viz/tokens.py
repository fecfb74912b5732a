"""Attributions of token inputs: per-token colours, highlighted text as HTML and as a figure, and token decoding."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from torch import Tensor

from lit_attr.viz.common import DIVERGING_CMAP

__all__ = ["token_colors", "token_decoder", "token_highlights_figure", "token_highlights_html"]


def _rationale_rows(rationales: Sequence[Any] | None, rows: list[tuple[list[str], np.ndarray]]) -> list[np.ndarray]:
    """Each sample's rationale as booleans per token (all False without rationales)."""
    if rationales is None:
        return [np.zeros(len(words), dtype=bool) for words, _ in rows]
    if len(rationales) != len(rows):
        raise ValueError(f"`rationales` must have one entry per sample ({len(rows)}), got {len(rationales)}.")
    marks = []
    for i, ((words, _), rationale) in enumerate(zip(rows, rationales, strict=True)):
        values = torch.as_tensor(rationale).detach().reshape(-1).cpu().numpy()
        if values.shape[0] < len(words):
            raise ValueError(f"Sample {i} has {len(words)} tokens but a rationale of {values.shape[0]}.")
        marks.append(values[: len(words)] > 0.5)
    return marks


def _token_rows(tokens: Sequence[Sequence[str]], scores: Tensor | Sequence[Any]) -> list[tuple[list[str], np.ndarray]]:
    """Pair each sample's tokens with its first ``len(tokens)`` scores, checking that there are enough."""
    if isinstance(tokens, str) or not all(isinstance(row, Sequence) and not isinstance(row, str) for row in tokens):
        raise TypeError("`tokens` must hold one sequence of token strings per sample.")
    if len(scores) != len(tokens):
        raise ValueError(f"`scores` must have one row per sample ({len(tokens)}), got {len(scores)}.")
    rows = []
    for i, (words, values) in enumerate(zip(tokens, scores, strict=True)):
        values = torch.as_tensor(values).detach().float().cpu().reshape(-1).numpy()
        if values.shape[0] < len(words):
            raise ValueError(f"Sample {i} has {len(words)} tokens but only {values.shape[0]} scores.")
        rows.append(([str(w) for w in words], values[: len(words)]))
    return rows


def token_colors(scores: Tensor | Sequence[float], cmap: str = DIVERGING_CMAP, scale: float | None = None) -> list[str]:
    """One background colour per token: the diverging map at ``score / scale``, by default the sample's ``max |score|``.

    Red supports the target, blue speaks against it, white is neutral; an all-zero sample is white.

    Example:
        >>> token_colors([2.0, 0.0, -2.0])
        ['#67001f', '#f7f6f6', '#053061']
        >>> token_colors([2.0], scale=4.0) == token_colors([1.0, 2.0])[:1]
        True
    """
    values = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    if scale is None:
        scale = float(values.abs().max()) if values.numel() else 0.0
    scaled = (values / scale).clamp(-1, 1) if scale > 0 else torch.zeros_like(values)
    colour_map = colormaps[cmap]
    return [to_hex(colour_map((float(v) + 1) / 2)) for v in scaled]


def _ink(background: str) -> str:
    """Black or white text, whichever reads better on ``background``."""
    red, green, blue = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#ffffff"


def token_highlights_html(
    tokens: Sequence[Sequence[str]],
    scores: Tensor | Sequence[Any],
    captions: Sequence[str] | None = None,
    title: str | None = None,
    rationales: Sequence[Any] | None = None,
    scale: float | None = None,
) -> str:
    """Self-contained HTML (inline styles only) that colours every token by its attribution, with a legend.

    For ``wandb.Html`` and report pages. Each sample is scaled by its own largest ``|score|`` (see
    :func:`token_colors`), or all by ``scale``; hovering a token shows its score. Rationale tokens (the ground
    truth) are underlined. Tokens, captions and the title are HTML-escaped.

    Args:
        tokens: one list of token strings per sample (real tokens only; e.g. the decoded ``input_ids``).
        scores: ``(N, L)`` per-token scores (or one 1-D sequence per sample); each row's first ``len(tokens[i])``
            entries are used, so padded rows are fine.
        captions: one text per sample, shown before its tokens (e.g. label, target and scores).
        title: a heading.
        rationales: one per sample, a value per token (> 0.5: part of the rationale), aligned like ``scores``.
        scale: one scale for every sample (``|score| = scale`` gets the end colours); ``None``: each its own.

    Returns:
        An HTML fragment (a ``<div>``).

    Example:
        >>> page = token_highlights_html([["the", "<b>", "good"]], torch.tensor([[0.0, -1.0, 2.0]]))
        >>> "&lt;b&gt;" in page and "<b>" not in page
        True
    """
    rows = _token_rows(tokens, scores)
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"`captions` must have one entry per sample ({len(rows)}), got {len(captions)}.")
    parts = ['<div class="lit-attr-tokens" style="font-family:sans-serif;line-height:2.1;font-size:14px">']
    if title:
        parts.append(f'<div style="font-weight:bold;margin-bottom:4px">{html.escape(title)}</div>')
    for i, ((words, values), marks) in enumerate(zip(rows, _rationale_rows(rationales, rows), strict=True)):
        spans = []
        for word, value, colour, mark in zip(words, values, token_colors(values, scale=scale), marks, strict=True):
            underline = ' class="lit-attr-rationale"' if mark else ""
            border = "border-bottom:3px solid #1a9850;" if mark else ""
            spans.append(
                f'<span{underline} title="{value:+.4g}" style="background-color:{colour};color:{_ink(colour)};'
                f'{border}padding:2px 4px;margin:0 1px;border-radius:3px">{html.escape(word)}</span>'
            )
        caption = ""
        if captions is not None:
            caption = f'<span style="color:#555;margin-right:8px">{html.escape(captions[i])}</span>'
        parts.append(f'<div class="lit-attr-sample">{caption}{"".join(spans)}</div>')
    low, middle, high = token_colors([-1.0, 0.0, 1.0])
    parts.append(
        '<div class="lit-attr-legend" style="font-size:12px;color:#555;margin-top:6px">against the target '
        f'<span style="display:inline-block;width:160px;height:10px;vertical-align:middle;'
        f'background:linear-gradient(to right,{low},{middle},{high})"></span> supports it '
        f"({'each sentence scaled by its largest |score|' if scale is None else f'one scale: ±{scale:.3g}'}"
        f"{'; underlined: the rationale' if rationales is not None else ''})</div>"
    )
    parts.append("</div>")
    return "".join(parts)


def token_highlights_figure(
    tokens: Sequence[Sequence[str]],
    scores: Tensor | Sequence[Any],
    captions: Sequence[str] | None = None,
    title: str | None = None,
    width: float = 8.0,
    fontsize: float = 9.0,
    rationales: Sequence[Any] | None = None,
    scale: float | None = None,
) -> Figure:
    """The token highlighting of :func:`token_highlights_html` as a figure (for image loggers and PNG files).

    Tokens are set in a monospaced font and wrapped at ``width`` inches; a colour bar shows the diverging scale.
    The figure is ``width`` inches wide at 100 dpi; its height grows with the number of lines.

    Args:
        tokens: one list of token strings per sample.
        scores: ``(N, L)`` per-token scores (or one 1-D sequence per sample).
        captions: one text per sample, written above its tokens.
        title: the figure's title.
        width: figure width in inches.
        fontsize: font size in points.
        rationales: see :func:`token_highlights_html` (framed in green here).
        scale: see :func:`token_highlights_html`.

    Returns:
        The figure (no pyplot state; render it with :func:`~lit_attr.viz.common.figure_to_array` or ``fig.savefig``).

    Example:
        >>> fig = token_highlights_figure([["the", "soup", "was", "good"]], torch.tensor([[0.1, 0.2, 0.0, 0.9]]))
        >>> from lit_attr.viz.common import figure_to_array
        >>> figure_to_array(fig).shape[1]
        800
    """
    rows = _token_rows(tokens, scores)
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"`captions` must have one entry per sample ({len(rows)}), got {len(captions)}.")
    char = 0.6 * fontsize / 72  # advance of a monospaced character, in inches
    line = 2.0 * fontsize / 72
    margin, usable = 0.2, width - 0.4
    # Lay the tokens out first (x in inches, line index), so the height is known before the figure exists.
    layout: list[tuple[float, int, str, bool, str | None]] = []
    lines = 0
    for i, ((words, values), marks) in enumerate(zip(rows, _rationale_rows(rationales, rows), strict=True)):
        if captions is not None:
            layout.append((margin, lines, captions[i], False, None))
            lines += 1
        x = margin
        for word, colour, mark in zip(words, token_colors(values, scale=scale), marks, strict=True):
            advance = (len(word) + 1) * char
            if x + advance > margin + usable and x > margin:
                x, lines = margin, lines + 1
            layout.append((x, lines, word, bool(mark), colour))
            x += advance + char / 2
        lines += 2  # the sample's last line and a blank one
    lines -= 1
    top, bottom = (0.45 if title else 0.15), 0.6
    height = top + lines * line + bottom
    fig = Figure(figsize=(width, height), dpi=100)
    for x, row, text, mark, colour in layout:
        y = 1 - (top + (row + 0.5) * line) / height
        if colour is None:
            fig.text(x / width, y, text, fontsize=fontsize * 0.9, color="#555555", va="center")
            continue
        fig.text(
            x / width, y, text, fontsize=fontsize, family="monospace", va="center", color=_ink(colour),
            bbox={"facecolor": colour, "edgecolor": "#1a9850" if mark else "none", "linewidth": 1.5,
                  "boxstyle": "round,pad=0.2"},
        )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=fontsize + 1, y=1 - 0.1 / height, va="top")
    bar = fig.add_axes((0.3, 0.2 / height, 0.4, 0.12 / height))
    mappable = ScalarMappable(norm=Normalize(-1.0, 1.0), cmap=DIVERGING_CMAP)
    colorbar = fig.colorbar(mappable, cax=bar, orientation="horizontal")
    ends = ("against", "supports") if scale is None else (f"-{scale:.3g} against", f"+{scale:.3g} supports")
    colorbar.set_ticks([-1, 0, 1], labels=[ends[0], "0", ends[1]])
    colorbar.ax.tick_params(labelsize=fontsize * 0.8)
    return fig


def token_decoder(source: Any) -> Callable[[Tensor], list[str]]:
    """A function from token ids to token strings, from whatever knows the vocabulary.

    Args:
        source: a Hugging Face ``transformers`` tokenizer (``convert_ids_to_tokens``); a ``tokenizers`` tokenizer
            (``id_to_token``); an object with ``decode(ids) -> list[str]`` (lit-attr's text data modules); an object
            with such a ``tokenizer`` attribute; a callable ``ids -> tokens``; or None (the ids as text).

    Example:
        >>> token_decoder(None)(torch.tensor([5, 7]))
        ['5', '7']
    """
    if source is None:
        return lambda ids: [str(int(i)) for i in ids]
    # Tokenizers' own decode joins the tokens into one string: their per-token lookups come first.
    if callable(getattr(source, "convert_ids_to_tokens", None)):
        method = source.convert_ids_to_tokens
    elif callable(getattr(source, "id_to_token", None)):
        return lambda ids: [str(source.id_to_token(int(i))) for i in ids]
    elif callable(getattr(source, "decode", None)):
        method = source.decode
    elif getattr(source, "tokenizer", None) is not None:
        return token_decoder(source.tokenizer)
    elif callable(source):
        method = source
    else:
        return token_decoder(None)
    return lambda ids: [str(token) for token in method([int(i) for i in ids])]
