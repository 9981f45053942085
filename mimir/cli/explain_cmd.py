"""``mimir explain``: saliency maps per subject and target (and their mean over subjects)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    console,
    handle_errors,
    module_option,
    parse_gpus,
    report_error,
    report_warning,
)
from mimir.errors import EXIT_ERROR, EXIT_PARTIAL, MimirError, UsageError
from mimir.inference.saliency import METHODS
from mimir.utils import atomic

#: Display blur (Gaussian sigma, pixels) of the pixel-level methods' figures.
DISPLAY_SMOOTH_PX = 3.0
#: Folder of the aggregated maps inside -o.
AGGREGATE_DIR = "aggregate"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _stem(path: str) -> str:
    name = Path(path).name
    for ext in (".zip", ".npy"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return _SAFE.sub("_", name) or "input"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


@app.command("explain", epilog=EXIT_CODES_HELP)
@handle_errors
def explain_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Subject zips (field 20201) or .npy images; a folder means the *_20201_*_*.zip and .npy files "
        "in it and its subfolders.",
        show_default=False,
    ),
    module: Optional[list[str]] = module_option(columns=False),  # noqa: UP007 (typer needs Optional)
    target: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "-t", "--target", metavar="TARGET",
        help="Target to explain (repeatable). Default: every target of the modules.", show_default=False,
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", metavar="DIR", help="Folder for the PNGs, maps (.npy) and explain.json.",
        show_default=False,
    ),
    method: str = typer.Option(
        "gradcam", "--method", help=f"Saliency method: {', '.join(METHODS)}.", metavar="METHOD"
    ),
    aggregate: bool = typer.Option(
        False, "--aggregate", help="Also write the mean normalised map per target over all inputs."
    ),
    register: bool = typer.Option(
        False, "--register",
        help="With --aggregate: also average the maps in a common anatomical frame (every subject registered "
        "to a template: affine, then demons on water and fat). Needs the 'register' extra (SimpleITK).",
    ),
    template: str = typer.Option(
        "cohort", "--template", metavar="cohort|INPUT",
        help="--register: the reference frame: 'cohort' (the mean image, refined by registering and averaging) "
        "or one subject's zip or .npy image.",
    ),
    template_iterations: int = typer.Option(
        2, "--template-iterations", min=0, max=10, metavar="N", help="--template cohort: rounds of refinement."
    ),
    workers: int = typer.Option(1, "--workers", min=1, max=256, metavar="N",
                                help="--register: processes registering subjects in parallel."),
    save_transforms: bool = typer.Option(
        False, "--save-transforms",
        help="--register: also write each subject's sampling map (template pixel -> subject row, column).",
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    gpu: Optional[str] = typer.Option(  # noqa: UP007
        None, "--gpu", metavar="N", help="GPU index: short for --device cuda:N.", show_default=False
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, metavar="N", help="CPU threads for torch (default: torch's choice).",
        show_default=False,
    ),
) -> None:
    """Show where the network looks: a saliency map per subject and target.

    For each input and target: OUT/<subject>/<module>.<target>.png (the water,
    fat and fat-fraction channels with the map overlaid) and .npy (the map,
    float32 256 x 256, unit sum). Default method: Grad-CAM on the last
    convolutional block, averaged over the ensemble's members.
    --aggregate adds OUT/aggregate/ (the mean map over the inputs, on their
    mean image); --register adds OUT/aggregate/registered/ (the maps averaged
    after registering every subject to a template, the template, and each
    subject's registration quality). OUT/explain.json records the method,
    modules and files.

    Example: [bold]mimir explain subject.zip -m phantom-demo -t liver_fat_percent -o explain/[/]
    """
    from mimir.cli.predict_cmd import expand_inputs
    from mimir.inference.explain import Aggregate, Explainer
    from mimir.outputs.figures import require_matplotlib, saliency_figure
    from mimir.preprocessing.pipeline import load_input

    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}", hint=f"Choose one of: {', '.join(METHODS)}.")
    require_matplotlib("explain")  # fail before any work
    if register:
        from mimir.inference.registration import require_simpleitk

        if not aggregate:
            raise UsageError("--register averages the maps in a common frame", hint="Add --aggregate.")
        require_simpleitk()
    template_image = None
    if register and template != "cohort":
        if not Path(template).is_file():
            raise UsageError("no such file", path=template, hint="Give a subject zip or .npy image, or 'cohort'.")
        template_image = load_input(template, cache=not no_cache)
    atomic.check_writable_dir(output)  # before any work
    files, refused = expand_inputs(inputs)
    gpus = parse_gpus(gpu, single=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    explainer = Explainer(module or None, targets=target or None, method=method, device=device,
                          gpu=gpus[0] if gpus else None)
    console.print(f"method: {escape(explainer.description)}", highlight=False)
    synthetic = set(explainer.synthetic_modules)
    if synthetic:
        report_warning(
            f"{', '.join(sorted(synthetic))}: a synthetic demonstration module (intended_use synthetic-demo); "
            "its predictions and maps mean nothing for real UK Biobank images"
        )
    agg = Aggregate() if aggregate else None
    # pixel-level maps are speckled: the figures (not the .npy maps) show them blurred
    smooth = 0.0 if method == "gradcam" else DISPLAY_SMOOTH_PX
    shown = "" if smooth == 0 else f"; shown blurred (Gaussian sigma {smooth:g} px)"
    written: list[dict[str, object]] = []
    failed: list[dict[str, str]] = [{"input": p, "error": f"{p}: {reason}"} for p, reason in refused]
    for item in failed:
        report_error(item["error"])
    stems: set[str] = set()
    kept: list[tuple[str, np.ndarray, dict[tuple[str, str], Path]]] = []
    started = time.perf_counter()
    for path in files:
        stem = _stem(path)
        if stem in stems:
            failed.append({"input": path, "error": f"{path}: another input has the name {stem}; skipped"})
            report_error(failed[-1]["error"])
            continue
        stems.add(stem)
        try:
            image = load_input(path, cache=not no_cache)
        except MimirError as exc:
            failed.append({"input": path, "error": str(exc)})
            report_error(str(exc))
            continue
        items = explainer.explain(image)
        folder = output / stem
        for it in items:
            base = folder / f"{it.module}.{it.target}"
            _save_npy(base.with_name(base.name + ".npy"), it.saliency)
            png = saliency_figure(
                image, it.saliency,
                title=f"{stem}  -  {it.module}{' (synthetic demo)' if it.module in synthetic else ''} "
                f"{it.target}: {it.mean:.4g} {it.unit} (sd {it.sd:.2g})",
                subtitle=f"saliency: {explainer.description}{shown}"
                + ("" if float(it.saliency.sum()) > 0 else "; the map is zero (no evidence raising the prediction)"),
                smooth_px=smooth,
            )
            atomic.write_bytes(base.with_name(base.name + ".png"), png)
            written.append({"input": path, "subject": stem, "module": it.module, "target": it.target,
                            "prediction": it.mean, "sd": it.sd, "unit": it.unit,
                            "png": str(base.with_name(base.name + ".png").relative_to(output)),
                            "npy": str(base.with_name(base.name + ".npy").relative_to(output))})
        if agg is not None:
            agg.add(image, items)
        if register:
            kept.append((stem, image, {(it.module, it.target): folder / f"{it.module}.{it.target}.npy"
                                       for it in items}))
        console.print(f"[green]ok[/] {escape(Path(path).name)}: {len(items)} map(s) in {escape(str(folder))}",
                      highlight=False, soft_wrap=True)
    aggregated: list[dict[str, object]] = []
    if agg is not None and agg.images:
        mean_image = agg.mean_image()
        for (mod, tgt), m in agg.maps().items():
            base = output / AGGREGATE_DIR / f"{mod}.{tgt}"
            _save_npy(base.with_name(base.name + ".npy"), m)
            atomic.write_bytes(base.with_name(base.name + ".png"), saliency_figure(
                mean_image, m, title=f"mean of {agg.counts[(mod, tgt)]} subject(s)  -  {mod}"
                f"{' (synthetic demo)' if mod in synthetic else ''} {tgt}",
                subtitle=f"aggregated saliency (mean of unit-sum maps): {explainer.description}{shown}",
                smooth_px=smooth))
            aggregated.append({"module": mod, "target": tgt, "subjects": agg.counts[(mod, tgt)],
                               "png": str(base.with_name(base.name + ".png").relative_to(output)),
                               "npy": str(base.with_name(base.name + ".npy").relative_to(output))})
        _save_npy(output / AGGREGATE_DIR / "mean_image.npy", mean_image)
    registered: dict[str, object] = {}
    if register and kept:
        registered = _registered_aggregate(kept, output, template_image, template, template_iterations, workers,
                                           save_transforms, f"{explainer.description}{shown}", smooth)
    if written or aggregated:
        summary = {
            "format": "mimir-explain/1",
            "method": method,
            "method_description": explainer.description,
            "map": "float32 (256, 256), non-negative, unit sum; rows head to knee, columns: coronal half then "
                   "sagittal half; the explained output is the target's standardised mean",
            "modules": explainer.identity(),
            "synthetic_demo": sorted(synthetic),
            "targets": explainer.targets,
            "maps": written,
            "aggregate": aggregated,
            "registered_aggregate": registered or None,
            "failed": failed,
            "wall_s": round(time.perf_counter() - started, 3),
        }
        atomic.write_text(output / "explain.json", json.dumps(summary, indent=2) + "\n")
    if not written:
        report_error(f"none of the {len(files) + len(refused)} input(s) could be explained; nothing written")
        raise typer.Exit(EXIT_ERROR)
    console.print(f"wrote {len(written)} map(s) for {len(files) + len(refused) - len(failed)} subject(s) to "
                  f"{escape(str(output))} ({method})", highlight=False, soft_wrap=True)
    if failed or (registered and registered["failed_subjects"]):
        raise typer.Exit(EXIT_PARTIAL)


#: Folder of the registered aggregate inside -o.
REGISTERED_DIR = f"{AGGREGATE_DIR}/registered"


def _registered_aggregate(
    kept: list[tuple[str, np.ndarray, dict[tuple[str, str], Path]]], output: Path, template_image: np.ndarray | None,
    template_name: str, iterations: int, workers: int, save_transforms: bool, description: str, smooth: float,
) -> dict[str, object]:
    """Register the explained subjects to the template and average their maps there; write OUT/aggregate/registered/."""
    from mimir.inference.cohort import RegisteredAggregate, cohort_template, register_all
    from mimir.outputs.figures import saliency_figure

    images = [im for _, im, _ in kept]
    started = time.perf_counter()
    if template_image is None:
        console.print(f"building the cohort template from {len(images)} subject(s) ({iterations} round(s))",
                      highlight=False)
        template_image = cohort_template(images, iterations, workers=workers)
    regs = register_all(images, template_image, workers=workers)
    folder = output / REGISTERED_DIR
    agg = RegisteredAggregate(template_image)
    subjects, failed = [], []
    for (stem, _, paths), reg in zip(kept, regs):
        row: dict[str, object] = {"subject": stem, "ok": reg.ok, **reg.quality.as_dict(),
                                  "seconds": round(reg.seconds, 3)}
        if not reg.ok:
            row["error"] = reg.error
            failed.append({"input": stem, "error": f"{stem}: {reg.error}; left out of the registered aggregate"})
            report_error(failed[-1]["error"])
        else:
            agg.add(reg, {key: np.load(p, allow_pickle=False) for key, p in paths.items()})
            if save_transforms:
                path = folder / "transforms" / f"{stem}.npy"
                _save_npy(path, reg.coords.astype(np.float32))
                row["transform"] = str(path.relative_to(output))
        subjects.append(row)
    _save_npy(folder / "template.npy", np.asarray(template_image, np.uint8))
    columns = ["subject", "ok", "body_dice_before", "body_dice_after", "residual_before", "residual_after",
               "seconds", "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(subjects)
    atomic.write_text(folder / "registration.csv", buf.getvalue())
    maps = []
    for (mod, tgt), m in agg.maps().items():
        base = folder / f"{mod}.{tgt}"
        _save_npy(base.with_name(base.name + ".npy"), m)
        atomic.write_bytes(base.with_name(base.name + ".png"), saliency_figure(
            template_image, m, title=f"{agg.counts[(mod, tgt)]} registered subject(s)  -  {mod} {tgt}",
            subtitle=f"aggregated in the template's frame: {description}", smooth_px=smooth))
        maps.append({"module": mod, "target": tgt, "subjects": agg.counts[(mod, tgt)],
                     "png": str(base.with_name(base.name + ".png").relative_to(output)),
                     "npy": str(base.with_name(base.name + ".npy").relative_to(output))})
    ok = sum(r.ok for r in regs)
    console.print(f"registered {ok} of {len(regs)} subject(s) to the template in {time.perf_counter() - started:.1f} s"
                  f" ({workers} worker(s))", highlight=False)
    return {
        "template": "cohort" if template_name == "cohort" else Path(template_name).name,
        "template_iterations": iterations if template_name == "cohort" else 0,
        "template_npy": str((folder / "template.npy").relative_to(output)),
        "quality_csv": str((folder / "registration.csv").relative_to(output)),
        "registration": "per view (coronal, sagittal): affine on water + fat, then demons on water and fat; "
                        "transforms: float32 (2, 256, 256) subject (row, column) sampled at each template pixel, "
                        "NaN outside the subject's view",
        "maps": maps,
        "subjects": subjects,
        "failed_subjects": failed,
    }

