"""The picture of one `audfer-jax predict` run: what the model saw and why.

One figure, top to bottom:
  * the T frames of the clip as the model saw them (face crop, resized to
    S x S; the first view), each titled with its frame index and time (and
    "no face" where the detector found none there: such frames get the clip's
    crop);
  * the class probabilities as horizontal bars, the top class in another
    colour and marked; beside them the AU head's 18 sigmoid probabilities as
    bars (FACS number and name, `au.au_label`) with the run's AU-expression
    prior row of the predicted class over them as markers (the knowledge
    AU-DFER's loss weighs the AU targets with), labelled as such;
  * with a timeline, the class probabilities of every window over time (at
    the window's centre), windows without a face shaded;
  * a title with the input, the checkpoint and step, and the face-detection
    summary.

Artists carry labels (`gid`) that tests read back: the bar containers are
`ax.containers[0]`, the prior markers the line labelled `prior`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib import figure as mpl_figure

from audfer_jax import au as au_lib

# Frames per row of the frame strip (MAE-DFER's 16 frames take two rows).
FRAMES_PER_ROW = 8
WIDTH_INCHES = 14.0
TOP_COLOUR, OTHER_COLOUR = "tab:red", "tab:blue"
AU_COLOUR, PRIOR_COLOUR = "tab:green", "black"


def _title(result: Mapping[str, Any], source: str, checkpoint: str) -> str:
    det = result.get("face_detection")
    if det:
        faces = (f"face detection ({det['detector']}): {det['frames_with_face']} of "
                 f"{det['frames_checked']} frames checked have a face")
    elif result.get("face_box") is not None:
        faces = "face box given"
    else:
        faces = "face detection off (the input is taken as a face crop)"
    return f"{source}\ncheckpoint: {checkpoint}\n{faces}"


def prediction_figure(result: Mapping[str, Any], clips: np.ndarray, *, fps: float,
                      source: str = "", checkpoint: str = "",
                      prior: Optional[np.ndarray] = None, prior_label: str = "",
                      timeline: Optional[Mapping[str, Any]] = None
                      ) -> mpl_figure.Figure:
    """Draws one prediction (see the module docstring).

    Args:
        result: an `inference.predict.predict_clip` result (class and AU
            probabilities, frame indices, face-detection summary).
        clips: `[V, T, S, S, 3] uint8`, the model's input; view 0 is drawn.
        fps: frames per second, for the frames' times.
        source: the input file or folder (title).
        checkpoint: what was loaded, with its step (title).
        prior: the run's AU-expression prior `[C, 18]` (rows in the order of
            `result["class_names"]`), or None; the predicted class's row is drawn.
        prior_label: what the prior is, or why there is none (legend / note).
        timeline: an optional `inference.timeline.predict_timeline` result.

    Returns:
        The figure (WIDTH_INCHES wide; height by the panels present).
    """
    clips = np.asarray(clips)
    frames = clips[0]
    idx = np.asarray(result["frame_indices"])[0]
    t = frames.shape[0]
    strip_rows = -(-t // FRAMES_PER_ROW)
    heights = [1.75 * strip_rows, 4.2] + ([2.6] if timeline else [])
    # Constrained layout makes room for the long AU tick labels and the legends.
    fig = mpl_figure.Figure(figsize=(WIDTH_INCHES, sum(heights) + 0.8), layout="constrained")
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    fig.suptitle(_title(result, source, checkpoint), fontsize=9)

    strip = grid[0].subgridspec(strip_rows, FRAMES_PER_ROW)
    no_face = set((result.get("face_detection") or {}).get("frames_without_face", ()))
    for k in range(t):
        ax = fig.add_subplot(strip[k // FRAMES_PER_ROW, k % FRAMES_PER_ROW])
        ax.imshow(frames[k], interpolation="nearest")
        missed = int(idx[k]) in no_face
        ax.set_title(f"#{int(idx[k])}  {idx[k] / fps:.2f} s" + ("  no face" if missed else ""),
                     fontsize=8, color=TOP_COLOUR if missed else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_gid(f"frame_{k}")
        if k == 0 and result.get("views", 1) > 1:
            ax.set_ylabel(f"view 1 of {result['views']}", fontsize=8)

    bars = grid[1].subgridspec(1, 2, width_ratios=[1, 3.2])
    _class_panel(fig.add_subplot(bars[0]), result)
    _au_panel(fig.add_subplot(bars[1]), result, prior, prior_label)
    if timeline:
        _timeline_panel(fig.add_subplot(grid[2]), timeline)
    return fig


def _class_panel(ax, result):
    names = list(result["class_names"])
    probs = np.asarray(result["probs"], np.float64)
    top = names.index(result["top_class"])
    y = np.arange(len(names))[::-1]               # first class at the top
    colours = [TOP_COLOUR if i == top else OTHER_COLOUR for i in range(len(names))]
    ax.barh(y, probs, color=colours, gid="class_probs")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("class probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    inside = probs[top] > 0.7          # a long bar: its label inside, in white
    ax.annotate(f"top: {result['top_class']} {probs[top]:.2f}", (probs[top], y[top]),
                xytext=(-3 if inside else 3, 0), textcoords="offset points", va="center",
                ha="right" if inside else "left", fontsize=8,
                color="white" if inside else TOP_COLOUR, gid="top_class")
    ax.set_title("expression", fontsize=9)
    ax.set_gid("classes")


def _au_panel(ax, result, prior, prior_label):
    au_names = list(result["au_names"])
    au_probs = np.asarray(result["au_probs"], np.float64)
    x = np.arange(len(au_names))
    ax.bar(x, au_probs, color=AU_COLOUR, width=0.7, label="AU head probability (sigmoid)",
           gid="au_probs")
    ymax = 1.0
    if prior is not None:
        row = np.asarray(prior, np.float64)[list(result["class_names"]).index(
                result["top_class"])][:len(au_names)]
        ax.plot(x, row, linestyle="none", marker="_", markersize=14, markeredgewidth=2.5,
                color=PRIOR_COLOUR, label=f"{prior_label}, row '{result['top_class']}'",
                gid="prior")
        ymax = max(ymax, float(row.max()) * 1.05)
    elif prior_label:
        ax.text(0.99, 0.97, prior_label, transform=ax.transAxes, ha="right", va="top",
                fontsize=7, gid="prior_note")
    ax.set_ylim(0, ymax)
    ax.set_xlim(-0.6, len(au_names) - 0.4)
    ax.set_xticks(x, [au_lib.au_label(n).replace(" ", "\n", 1) for n in au_names],
                  fontsize=6.5, rotation=90)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("AU head (auxiliary training head; not used for the expression)",
                 fontsize=9, pad=26)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False,
              borderaxespad=0)
    ax.set_gid("aus")


def _timeline_panel(ax, timeline):
    names = list(timeline["class_names"])
    rows = timeline["windows"]
    centre = np.asarray([(r["start_s"] + r["end_s"]) / 2 for r in rows])
    probs = np.asarray([[r["probabilities"][n] for n in names] if r["probabilities"]
                        else [np.nan] * len(names) for r in rows], np.float64)
    for c, name in enumerate(names):
        ax.plot(centre, probs[:, c], marker=".", markersize=3, linewidth=1.2, label=name,
                gid=f"timeline_{name}")
    for r in rows:
        if r["face_found"] is False:
            ax.axvspan(r["start_s"], r["end_s"], color="0.85", zorder=0, linewidth=0)
    if any(r["face_found"] is False for r in rows):
        ax.plot([], [], color="0.85", linewidth=6, label="no face")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(r["end_s"] for r in rows))       # the whole video, even for one window
    ax.set_xlabel(f"time (s), window centre; windows of {timeline['window_seconds']:g} s "
                  f"every {timeline['stride_seconds']:g} s", fontsize=8)
    ax.set_ylabel("class probability", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    ax.set_gid("timeline")


def timeline_series(ax) -> dict:
    """`{class name: (x [K], y [K])}` read back from a timeline panel's lines (tests)."""
    return {line.get_gid()[len("timeline_"):]: (np.asarray(line.get_xdata(), np.float64),
                                                np.asarray(line.get_ydata(), np.float64))
            for line in ax.get_lines() if (line.get_gid() or "").startswith("timeline_")}


def panel(fig: mpl_figure.Figure, gid: str):
    """The axes of `fig` whose gid is `gid` (`classes`, `aus`, `timeline`, `frame_<k>`)."""
    found: Sequence[Any] = [ax for ax in fig.axes if ax.get_gid() == gid]
    if not found:
        raise KeyError(f"no panel {gid!r} in the figure")
    return found[0]
