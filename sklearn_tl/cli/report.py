"""A training report to look at: confusion matrix, per-class accuracy, misclassified images.

With several labels per image, per-label precision, recall and F1 take the
confusion matrix's place.

:func:`write_report` draws one matplotlib figure (the ``report`` extra) and
writes it as a PNG, or as a self-contained HTML page that embeds the figure and
lists the numbers and the misclassified files.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

__all__ = ["write_report"]

MAX_THUMBNAILS = 8


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the report needs matplotlib: pip install 'sklearn_tl[report]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _thumbnail(path, size=128):
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image)
    except OSError:
        return None


def _lr_panel(ax, lr_finder: dict) -> None:
    """The LR range test's smoothed loss against the learning rate, and its suggestion."""
    ax.plot(lr_finder["lrs"], lr_finder["losses"], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    suggestion = lr_finder.get("suggestion")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
        ax.legend(loc="upper left")
    ax.set_title("learning-rate range test (lr='auto')")


def _mistakes(y_true, y_pred, confidence):
    """Indices of the misclassified images, the most confident mistakes (the most instructive) first."""
    wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))
    if confidence is not None:
        wrong = wrong[np.argsort(-np.asarray(confidence)[wrong], kind="stable")]
    return wrong


def _figure(y_true, y_pred, class_names, paths, confidence, title, lr_finder=None):
    from sklearn.metrics import confusion_matrix

    plt = _import_pyplot()
    labels = list(class_names)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    wrong = _mistakes(y_true, y_pred, confidence)[:MAX_THUMBNAILS]

    n_thumb_rows = int(np.ceil(len(wrong) / 4)) if len(wrong) else 0
    side = max(4.0, 0.55 * len(labels) + 2.5)
    rows = [side] + ([2.6 * n_thumb_rows] if n_thumb_rows else []) + ([3.2] if lr_finder else [])
    fig = plt.figure(figsize=(2 * side + 1, sum(rows) + 0.8), layout="constrained")
    # One sub-figure per band, each laid out on its own: a wide panel below cannot squeeze the labels above.
    bands = list(np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=rows)))
    fig.suptitle(title, fontsize=13)

    top = bands.pop(0)
    ax, bar_ax = top.subplots(1, 2)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (cross-validated)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")

    ax = bar_ax
    bars = ax.barh(range(len(labels)), per_class, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.3)  # room for the labels
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("accuracy")
    ax.set_title("per-class accuracy")
    for bar, value, total in zip(bars, per_class, matrix.sum(axis=1)):
        ax.text(value + 0.01, bar.get_y() + bar.get_height() / 2, f"{value:.2f} (n={total})", va="center")

    if n_thumb_rows:
        thumbs = np.atleast_1d(bands.pop(0).subplots(n_thumb_rows, 4)).ravel()
        for ax in thumbs:
            ax.set_axis_off()
        for ax, index in zip(thumbs, wrong):
            thumb = _thumbnail(paths[index]) if paths is not None else None
            if thumb is not None:
                ax.imshow(thumb)
            extra = f" ({confidence[index]:.2f})" if confidence is not None else ""
            name = Path(str(paths[index])).name if paths is not None else f"#{index}"
            ax.set_title(f"{name}\ntrue {y_true[index]}\n→ {y_pred[index]}{extra}", fontsize=8)
    else:
        fig.text(0.5, 0.01, "no misclassified images", ha="center")
    if lr_finder:
        _lr_panel(bands.pop(0).subplots(), lr_finder)
    return fig, matrix, per_class, wrong


def _multilabel_figure(y_true, y_pred, label_names, paths, title, lr_finder=None):
    """Per-label precision, recall and F1 (in place of a confusion matrix) and the images with a wrong label set."""
    from sklearn.metrics import precision_recall_fscore_support

    plt = _import_pyplot()
    scores = precision_recall_fscore_support(y_true, y_pred, zero_division=0.0)
    wrong = np.flatnonzero((y_true != y_pred).any(axis=1))[:MAX_THUMBNAILS]
    n_thumb_rows = int(np.ceil(len(wrong) / 4)) if len(wrong) else 0
    lr_rows = [3.0] if lr_finder else []
    side = max(3.5, 0.45 * len(label_names) + 1.5)
    fig = plt.figure(figsize=(12, side + 2.6 * n_thumb_rows + 3.2 * len(lr_rows) + 0.8), layout="constrained")
    grid = fig.add_gridspec(1 + n_thumb_rows + len(lr_rows), 8, height_ratios=[side] + [2.4] * n_thumb_rows + lr_rows)
    fig.suptitle(title, fontsize=13)
    ax = fig.add_subplot(grid[0, :])
    positions = np.arange(len(label_names))
    for offset, (name, values) in zip((-0.27, 0, 0.27), zip(("precision", "recall", "F1"), scores[:3])):
        ax.barh(positions + offset, values, height=0.25, label=name)
    ax.set_yticks(positions, [f"{n} (n={int(c)})" for n, c in zip(label_names, scores[3])])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("per-label precision, recall and F1 (cross-validated)")
    names = np.asarray(label_names, dtype=object)
    for k, index in enumerate(wrong):
        ax = fig.add_subplot(grid[1 + k // 4, 2 * (k % 4) : 2 * (k % 4) + 2])
        thumb = _thumbnail(paths[index]) if paths is not None else None
        if thumb is not None:
            ax.imshow(thumb)
        ax.set_axis_off()
        name = Path(str(paths[index])).name if paths is not None else f"#{index}"
        true, predicted = (";".join(names[row.astype(bool)]) or "-" for row in (y_true[index], y_pred[index]))
        ax.set_title(f"{name}\ntrue {true} → {predicted}", fontsize=8)
    if lr_finder:
        _lr_panel(fig.add_subplot(grid[1 + n_thumb_rows, 1:7]), lr_finder)
    return fig, scores


def _write_multilabel_report(path, y_true, y_pred, label_names, paths, title, summary, lr_finder):
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    fig, scores = _multilabel_figure(y_true, y_pred, label_names, paths, title, lr_finder)
    png = _save_figure(fig, path)
    if png is None:
        return path
    esc = html.escape
    names = np.asarray(label_names, dtype=object)
    rows = "".join(
        f"<tr><td>{esc(str(name))}</td><td>{p:.3f}</td><td>{r:.3f}</td><td>{f:.3f}</td><td>{int(n)}</td></tr>"
        for name, p, r, f, n in zip(label_names, *scores)
    )
    mistakes = "".join(
        f"<li><code>{esc(str(paths[i]) if paths is not None else f'#{i}')}</code>: true "
        f"<b>{esc(';'.join(names[y_true[i].astype(bool)]) or '-')}</b>, predicted "
        f"<b>{esc(';'.join(names[y_pred[i].astype(bool)]) or '-')}</b></li>"
        for i in np.flatnonzero((y_true != y_pred).any(axis=1))
    ) or "<li>none</li>"
    body = f"""<h2>Per-label precision, recall and F1</h2>
<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>images with it</th></tr>{rows}</table>
<h2>Images with a wrong label set</h2><ul>{mistakes}</ul>
"""
    return _write_page(path, title, summary, png, "per-label precision, recall and F1, and images with a wrong label set", body, lr_finder)


def _save_figure(fig, path) -> bytes | None:
    """Write ``fig`` to ``path`` if it ends in .png (None), else return its PNG bytes for the page; closes it."""
    plt = _import_pyplot()
    try:
        if path.suffix.lower() == ".png":
            fig.savefig(path, dpi=110)
            return None
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _write_page(path, title, summary, png, alt, body, lr_finder):
    """The report page: title, summary lines, the figure inlined, ``body`` (HTML) and the LR test; returns ``path``."""
    esc = html.escape
    image = base64.b64encode(png).decode("ascii")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 12px}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f2f2f2}}</style></head>
<body><h1>{esc(title)}</h1>
{"".join(f"<p>{esc(line)}</p>" for line in summary)}
<img alt="{alt}" style="max-width:100%"
 src="data:image/png;base64,{image}">
{body}{_lr_section(lr_finder)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def _lr_section(lr_finder) -> str:
    if not lr_finder:
        return ""
    suggestion = lr_finder.get("suggestion")
    chosen = f"suggested learning rate: <b>{suggestion:.3g}</b>" if suggestion is not None else "no suggestion"
    points = "".join(f"<tr><td>{lr:.3g}</td><td>{loss:.4f}</td></tr>"
                     for lr, loss in zip(lr_finder["lrs"], lr_finder["losses"]))
    return (f"<h2>Learning-rate range test</h2><p>{chosen} (the curve is drawn in the figure above)</p>"
            f"<details><summary>{len(lr_finder['lrs'])} points</summary><table><tr><th>lr</th>"
            f"<th>smoothed loss</th></tr>{points}</table></details>")


def write_report(
    path, y_true, y_pred, class_names, *, paths=None, confidence=None, title="", summary=(), lr_finder=None
):
    """Write a PNG (``.png``) or HTML (``.html``/``.htm``) report of cross-validated predictions.

    Parameters
    ----------
    path : str or path-like
        Output file; its ending picks the format.
    y_true, y_pred : array-like of str, or 0/1 arrays of shape (n_samples, n_labels)
        True and predicted class names; or, for several labels per image,
        0/1 matrices, reported as per-label precision, recall and F1.
    class_names : list of str
        The classes (the label columns' names).
    paths : array-like of str, optional
        Image files, for thumbnails of misclassified images.
    confidence : array-like of float, optional
        Probability of each predicted class.
    title : str
    summary : iterable of str
        Lines shown at the top of the HTML page.
    lr_finder : dict, optional
        ``{"lrs", "losses", "suggestion"}`` of the final model's LR range
        test (``FineTuneClassifier(lr="auto").lr_finder_.as_dict()``): drawn
        as a curve, the suggestion marked and listed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".png", ".html", ".htm"}:
        raise ValueError(f"Report {str(path)!r} must end in .png or .html.")
    if np.ndim(y_true) == 2:
        return _write_multilabel_report(path, y_true, y_pred, class_names, paths, title, summary, lr_finder)
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    fig, matrix, per_class, wrong = _figure(y_true, y_pred, class_names, paths, confidence, title, lr_finder)
    png = _save_figure(fig, path)
    if png is None:
        return path
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(str(name))}</td><td>{acc:.3f}</td><td>{int(n)}</td></tr>"
        for name, acc, n in zip(class_names, per_class, matrix.sum(axis=1))
    )
    mistakes = "".join(
        f"<li><code>{esc(str(paths[i]) if paths is not None else f'#{i}')}</code>: true "
        f"<b>{esc(str(y_true[i]))}</b>, predicted <b>{esc(str(y_pred[i]))}</b>"
        + (f" ({confidence[i]:.2f})" if confidence is not None else "")
        + "</li>"
        for i in _mistakes(y_true, y_pred, confidence)
    ) or "<li>none</li>"
    body = f"""<h2>Per-class accuracy</h2>
<table><tr><th>class</th><th>accuracy</th><th>images</th></tr>{rows}</table>
<h2>Misclassified images</h2><ul>{mistakes}</ul>
"""
    return _write_page(path, title, summary, png, "confusion matrix, per-class accuracy and misclassified images", body, lr_finder)
