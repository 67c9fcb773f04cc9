"""bench.md: the machine, the sections that ran as tables, and the targets checked against them."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

TRAIN_RATIO, USER_LOOP_RATIO, WORKER_RATIO, CACHE_RATIO, ONNX_RATIO = 0.97, 2.0, 0.9, 1.3, 1.5
# a whole fit (validations, checkpoints, logging) against the steps alone (issue 24)
FIT_RATIO = 0.9


def _rate(record: dict[str, Any] | None) -> float | None:
    """The median images/s of a timed record (None when it failed or is missing)."""
    return record.get("images_per_s") if record else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _peak(record: dict[str, Any] | None) -> str:
    """'peak above the section's start (absolute peak)' in MiB."""
    memory = (record or {}).get("memory_mb")
    return f"{_fmt(memory['peak_above_before'])} ({memory['peak_rss']:.0f})" if memory else "–"


def _median_ratio(section: dict[str, Any], key: str) -> float | None:
    """The median over the training section's rounds of one ratio (None where no round has it)."""
    ratios = [r[key] for r in section.get("rounds", []) if key in r]
    return round(statistics.median(ratios), 3) if ratios else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the sections that ran: the measured value, the bar and whether it is met (None: not measured)."""
    rows = []
    for device, section in results["training"].items():
        rows.append({"target": f"{device}: bcd.train / raw timm loop", "bar": TRAIN_RATIO,
                     "value": _median_ratio(section, "framework_vs_raw")})
        if "fits" in section:
            rows.append({"target": f"{device}: a whole fit / bcd.train's steps", "bar": FIT_RATIO,
                         "value": _median_ratio(section, "fit_vs_framework")})
    if "cpu" in results["training"]:
        rows.append({"target": "cpu: bcd.train / plain loop as users run it", "bar": USER_LOOP_RATIO,
                     "value": _median_ratio(results["training"]["cpu"], "framework_vs_naive")})
    loading = results.get("loader")
    if loading:
        rows.append({"target": "loader, 1 worker / bare decode + augment", "bar": WORKER_RATIO,
                     "value": _ratio(_rate(loading["loader"].get("1")), _rate(loading["bare_decode_augment"]))})
        rows.append({"target": "loader, 1 worker: cached / uncached", "bar": CACHE_RATIO,
                     "value": _ratio(_rate(loading["loader_cached"].get("1")), _rate(loading["loader"].get("1")))})
    runtimes = results["inference"].get("cpu", {}).get("runtimes", {})
    if runtimes:
        batch = str(max(int(b) for b in runtimes.get("torch eager", {}).get("batches", {"32": 0})))
        onnx, eager = (runtimes.get(k, {}).get("batches", {}).get(batch) for k in ("onnxruntime", "torch channels_last"))
        rows.append({"target": f"cpu: onnxruntime / torch (channels_last, as bcd.predict runs it), batch {batch}",
                     "bar": ONNX_RATIO, "value": _ratio(_rate(onnx), _rate(eager))})
    for row in rows:
        row["met"] = None if row["value"] is None else row["value"] >= row["bar"]
    return rows


def _fit_lines(results: dict[str, Any]) -> list[str]:
    """The whole fits of the training rounds, beside the steps of their round."""
    lines = ["", "Whole fits as users run them (`bcd.train`: the recipe's loggers, validations and checkpoints, no test), "
             "each beside the steps of its round; images/s over the fit loop, the set-up before it (model, loggers, "
             "memory plan, loaders) timed apart:", "", "| device | round | epochs | images | validations | set-up s | "
             "fit s | fit images/s | bcd.train steps images/s | fit / steps |", "| --- | --- | --- | --- | --- | --- | "
             "--- | --- | --- | --- |"]
    for device, section in results["training"].items():
        for k, (fit, ratio) in enumerate(zip(section.get("fits", []), section["rounds"], strict=False), start=1):
            lines.append(f"| {device} | {k} | {fit['epochs']} | {fit['images']} | {fit['validations']} | "
                         f"{fit['setup_s']:g} | {fit['fit_s']:g} | {fit['images_per_s']:g} | {ratio['framework']:g} | "
                         f"{ratio['fit_vs_framework']:g} |")
    return lines


def _time_to_accuracy_lines(results: dict[str, Any]) -> list[str]:
    """The recipe's whole training and when it first reached the target val accuracy."""
    lines = ["", "## Time to accuracy", "", "The recipe's whole training (no test); the first validation whose accuracy "
             "reached the target, with the fit loop's wall time, the training images seen and the images/s until then:",
             "", "| device | target val acc | reached | fit s until | images until | images/s until | epochs | "
             "best val acc | whole fit s | whole fit images/s | set-up s | run dir |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for device, r in results["time_to_accuracy"].items():
        lines.append(f"| {device} | {r['target']:g} | {'yes' if r['reached'] else '**no**'} | "
                     f"{_fmt(r.get('elapsed_s'))} | {_fmt(r.get('train_images'))} | {_fmt(r.get('images_per_s_until'))} | "
                     f"{r['epochs']} | {_fmt(r['best_val_acc'])} | {r['fit_s']:g} | {r['images_per_s']:g} | "
                     f"{r['setup_s']:g} | {r['run_dir']} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole bench.md."""
    machine, settings = results["machine"], results["settings"]
    lines = [f"# bcd.bench: {settings['model']} at {settings['img_size']} px, batch {settings['batch_size']}", "",
             f"Command: `{results['command']}`", "",
             "| machine | |", "| --- | --- |"]
    for key in ("cpu", "cpu_count", "usable_cpus", "torch_threads", "load_average_1min", "gpu", "allocator",
                "platform"):
        lines.append(f"| {key} | {_fmt(machine[key])} |")
    lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + " |")
    timing = settings["timing"]
    lines += ["", f"Rates are images/s, the median of {timing['repeats']} timed repeats of {timing['steps']} "
              f"steps after {timing['warmup']} warm-up steps (pooled over the {settings.get('rounds', 1)} training "
              "round(s)); memory is the peak resident memory above the "
              "process's memory before the section (MiB). Other processes on the same cores slow everything: "
              "read the ratios, measured side by side in one process."]
    if results["training"]:
        lines += _training_lines(results)
    if results.get("loader"):
        lines += _loader_lines(results["loader"])
    if results["inference"]:
        lines += _inference_lines(results)
    if results.get("time_to_accuracy"):
        lines += _time_to_accuracy_lines(results)
    lines += ["", "## Targets", "", "| target | measured | bar | met |", "| --- | --- | --- | --- |"]
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {_fmt(row['value'])} | ≥ {row['bar']} | {met} |")
    return "\n".join(lines) + "\n"


def _training_lines(results: dict[str, Any]) -> list[str]:
    """The training section: the rates, the rounds' ratios and the whole fits."""
    lines = ["", "## Training", "",
             "| device | run | images/s | repeats | peak MiB above start (absolute) |", "| --- | --- | --- | --- | --- |"]
    names = {"raw": "raw timm loop (in-memory tensors)", "framework": "bcd.train (Lightning + datamodule from disk)",
             "naive": "plain loop as users run it (system malloc, no channels_last, own process)"}
    for device, section in results["training"].items():
        names.update({key: f"bcd.train, augmentation on {key.split('_', 1)[1]}" for key in section
                      if key.startswith("framework_")})
        for key, name in names.items():
            if key in section:
                record = section[key]
                lines.append(f"| {device} | {name} | {_fmt(_rate(record)) if 'error' not in record else record['error']}"
                             f" | {record.get('repeats', '')} | {_peak(record)} |")
    lines += ["", "Each bcd.train run against the raw loops just before and after it (the targets take the median "
              "over the rounds):", "", "| device | round | bcd.train | raw | bcd.train / raw | plain user loop | "
              "bcd.train / user loop |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for device, section in results["training"].items():
        for k, r in enumerate(section["rounds"], start=1):
            lines.append(f"| {device} | {k} | {r['framework']:g} | {r['raw']:g} | {r['framework_vs_raw']:g} | "
                         f"{_fmt(r.get('naive'))} | {_fmt(r.get('framework_vs_naive'))} |")
    alternatives = [(device, k, key[len("framework_"):-len("_vs_raw")], r[key[:-len("_vs_raw")]], r["raw"], r[key])
                    for device, section in results["training"].items()
                    for k, r in enumerate(section["rounds"], start=1)
                    for key in r if key.startswith("framework_") and key.endswith("_vs_raw") and key != "framework_vs_raw"]
    if alternatives:
        lines += ["", "The same step with the augmentation elsewhere (augmentation.device), against the same raw loops:",
                  "", "| device | round | augmentation on | bcd.train | raw | bcd.train / raw |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {device} | {k} | {place} | {rate:g} | {raw:g} | {ratio:g} |"
                  for device, k, place, rate, raw, ratio in alternatives]
    for device, section in results["training"].items():
        steps = section["raw"].get("optimizer_step_ms", {})
        if steps:
            lines += ["", f"{device}: one optimizer step of the raw loop takes "
                      + ", ".join(f"{ms:g} ms {name}" for name, ms in steps.items()) + "."]
    if any("fits" in section for section in results["training"].values()):
        lines += _fit_lines(results)
    return lines


def _loader_lines(loading: dict[str, Any]) -> list[str]:
    """The loader section."""
    lines = ["", f"## Loader ({loading['images']} training images at {loading['img_size']} px)", "",
              "| what | images/s | MiB: main process peak above start (absolute); memory each worker owns |", "| --- | --- | --- |"]
    for name, record in loading["decoders"].items():
        lines.append(f"| decode only: {name} | {_fmt(_rate(record))} | |")
    lines.append(f"| bare decode + augment, this process | {_fmt(_rate(loading['bare_decode_augment']))} | |")
    lines.append(f"| bare augment of cached images, this process | {_fmt(_rate(loading['bare_augment_cached']))} | |")
    for key, label in (("loader", "loader"), ("loader_cached", "loader with the decoded-image cache")):
        for workers, record in loading[key].items():
            private = ", ".join(_fmt(mb) for mb in record.get("worker_private_mb", []))
            lines.append(f"| {label}, {workers} worker(s), batch {record.get('batch_size', '?')} | "
                         f"{_fmt(_rate(record))} | {_peak(record)}; "
                         f"worker(s) own {private} |")
    cache = loading["cache"]
    lines += ["", f"The cache of these images takes {cache['mb']} MiB (built in {cache['build_s']} s); the full "
              f"Taleqani release (3,256 images) would take {cache['mb_full_taleqani']} MiB at this size."]
    return lines


def _inference_lines(results: dict[str, Any]) -> list[str]:
    """The inference section."""
    lines = ["", "## Inference", "", "| device | runtime | batch | images/s | vs torch eager | max abs diff of "
              "probabilities vs eager | peak MiB above start (absolute) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for device, section in results["inference"].items():
        eager = section["runtimes"].get("torch eager", {}).get("batches", {})
        for name, record in section["runtimes"].items():
            if "error" in record:
                lines.append(f"| {device} | {name} | | failed: {record['error'][:200]} | | | |")
                continue
            for batch, timed in record["batches"].items():
                lines.append(f"| {device} | {name} | {batch} | {_fmt(_rate(timed))} | "
                             f"{_fmt(_ratio(_rate(timed), _rate(eager.get(batch))))} | "
                             f"{timed['max_abs_diff_probs_vs_eager']:.2g} | {_peak(record)} |")
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Write bench.md."""
    path.write_text(markdown(results))
