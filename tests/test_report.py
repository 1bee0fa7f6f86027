"""The training report (``sklearn-tl train --report``): layout of the figure, order of the mistakes."""

import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from sklearn_tl.cli.report import _figure, _import_pyplot, write_report  # noqa: E402


def _predictions(n_classes, n_wrong, name_length, seed=0):
    """80 predictions over ``n_classes`` classes, the first ``n_wrong`` wrong, and a random confidence each."""
    names = [f"c{i}".ljust(name_length, "x") for i in range(n_classes)]
    y_true = np.array([names[i % n_classes] for i in range(80)], dtype=object)
    y_pred = y_true.copy()
    y_pred[:n_wrong] = [names[(i + 1) % n_classes] for i in range(n_wrong)]
    confidence = np.random.default_rng(seed).uniform(0.3, 1.0, size=80)
    return names, y_true, y_pred, confidence


LR_FINDER = {"lrs": np.logspace(-6, 0, 30), "losses": np.linspace(2.0, 0.5, 30), "suggestion": 1e-3}


@pytest.mark.parametrize(
    "n_classes, n_wrong, lr_finder, name_length",
    [(2, 0, LR_FINDER, 24), (6, 9, LR_FINDER, 24), (6, 9, LR_FINDER, 5), (2, 9, None, 24), (6, 0, None, 5)],
    ids=["lr-auto-2-classes", "lr-auto-mistakes", "lr-auto-short-names", "fixed-lr-mistakes", "plain"],
)
def test_every_label_lies_inside_the_saved_figure(tmp_path, n_classes, n_wrong, lr_finder, name_length):
    # The hybrid run of issue 22 (lr="auto": the range-test panel below) cut off the "true" axis label.
    import matplotlib

    names, y_true, y_pred, confidence = _predictions(n_classes, n_wrong, name_length)
    plt = _import_pyplot()
    fig, *_ = _figure(y_true, y_pred, names, None, confidence, "photos: hybrid, mobilenet_v2", lr_finder)
    try:
        fig.savefig(tmp_path / "r.png", dpi=110)  # as write_report saves it; draws the final layout
        renderer = fig.canvas.get_renderer()
        width, height = fig.canvas.get_width_height()
        inside = matplotlib.transforms.Bbox.from_extents(-1, -1, width + 1, height + 1)  # 1 px: rounding
        matrix_ax = next(ax for ax in fig.axes if ax.get_title().startswith("confusion matrix"))
        assert matrix_ax.yaxis.label.get_text() == "true"
        boxes = {"the 'true' label": matrix_ax.yaxis.label.get_window_extent(renderer)}
        # An axes' tight box holds what it draws: title, axis labels and the tick labels in view.
        boxes.update((f"axes {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in fig.axes)
        for what, box in boxes.items():
            assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (
                f"{what} at {box.extents.round(1)} is outside the {width}x{height} canvas"
            )
    finally:
        plt.close(fig)


def test_html_and_png_list_mistakes_most_confident_first(tmp_path):
    names, y_true, y_pred, confidence = _predictions(3, 12, 5, seed=1)
    paths = [f"img_{i:03d}.jpg" for i in range(80)]
    expected = [i for i in np.argsort(-confidence[:12], kind="stable")]
    assert expected != sorted(expected)  # path order and confidence order differ here
    plt = _import_pyplot()
    fig, _, _, shown = _figure(y_true, y_pred, names, paths, confidence, "t")
    plt.close(fig)
    assert list(shown) == expected[: len(shown)]

    page = write_report(tmp_path / "r.html", y_true, y_pred, names, paths=paths, confidence=confidence).read_text()
    mistakes = page.split("<h2>Misclassified images</h2>")[1]
    listed = [int(m) for m in re.findall(r"<code>img_(\d{3})\.jpg</code>", mistakes)]
    assert listed == expected
