"""Exp 3.3's contact sheet (not a student file): content, style(s), every saved step and the
end image of a run in one picture, each labelled with its step and loss.
"""
import glob


def saved_steps(stem):
    """The steps of the <stem>_stepNNNN.jpg images on disk, in order."""
    paths = glob.glob(glob.escape(stem) + "_step*.jpg")
    return sorted(int(p[len(stem) + 5:-4]) for p in paths if p[len(stem) + 5:-4].isdigit())


def write_sheet(stem, content_rgb, style_rgbs, style_labels, history, end_path, end_label,
                title):
    """<stem>_sheet.png: content, style(s), every saved step image and the end image, each
    labelled with its step and loss (the loss logged for the next step, i.e. of that image;
    for the end image the last logged loss)."""
    from labkit.runtime.images import load_rgb
    from labkit.runtime.runlog import contact_sheet
    losses = {r["step"]: r["total"] for r in history}
    tiles = [(content_rgb, ["content"])]
    tiles += [(rgb, [label]) for rgb, label in zip(style_rgbs, style_labels)]
    for k in saved_steps(stem):
        loss = losses.get(k + 1, losses.get(k))
        tiles.append((load_rgb(f"{stem}_step{k:04d}.jpg"),
                      [f"step {k}", f"loss {loss:.4g}" if loss is not None else ""]))
    last = losses.get(max(losses)) if losses else None
    tiles.append((load_rgb(end_path), [end_label,
                                       f"loss {last:.4g}" if last is not None else ""]))
    return contact_sheet(stem + "_sheet.png", tiles, title=title)


def style_labels(style_blend, count):
    """'style 1', 'style 2 (0.30)', ...: the label of each style image (with its blend
    weight when there are several)."""
    from labkit.runtime.transfer import normalise_blend
    blend = normalise_blend(style_blend, count)
    return [f"style {i + 1}" + (f" ({b:.2f})" if len(blend) > 1 else "")
            for i, b in enumerate(blend)]
