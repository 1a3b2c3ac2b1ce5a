"""A simulated week in production: does monitoring see the shifts, stay quiet on the control, estimate accuracy
without labels, and cost the server nothing?

    python bench/monitoring.py                 # run alone on the machine (about 20 minutes on 2 cores)

1. Train on AG News (test split of the original, 3,000 rows) with one topic, Sci/Tech, kept rare (5 %):
   `tunesmith train` defaults with a 5-minute budget; exported (ONNX int8) and served by `tunesmith serve`.
2. Replay four streams of 2,000 requests each over HTTP (the server logs them; monitoring reads the log):
   control (the training mix), topic (Sci/Tech rising from 5 % to 60 %), typos (character noise on a share
   rising from 0 to 60 % of texts) and language (Chinese news from CLUE TNEWS, rising from 0 to 40 %).
3. Every 100 requests, the last 300 are compared with the validation split, as `tunesmith monitor` does:
   the domain classifier on embeddings, the label mix (chi-squared) and the confidences (KS), each at p < 0.01.
   Time to detect = requests until the first flagged window; false alarms = flagged windows on the control.
4. Estimated accuracy (CBPE, calibrated on validation) against the realised accuracy of each window (a Chinese
   text has no right AG News label: it counts as wrong), mean absolute error per stream.
5. Logging overhead: /predict throughput at 32 clients with the prediction log on and off, alternated twice.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_shared_data, save, write_csv
from serve import drive, free_port, stop, wait_ready

WINDOW, STEP, REQUESTS = 300, 100, 2000


def load_agnews(data: Path) -> list[tuple[str, str]]:
    classes = (data / "ag_news/classes.txt").read_text().split()
    with (data / "ag_news/test.csv").open(encoding="utf-8") as handle:
        return [(f"{title}. {body}".replace("\\", " "), classes[int(c) - 1]) for c, title, body in csv.reader(handle)]


def typo(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(max(1, len(chars) // 8)):  # one edit in eight characters: badly typed, still readable
        i = rng.randrange(len(chars))
        chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz ") if rng.random() < 0.7 else ""
    return "".join(chars)


def streams(pool: list[tuple[str, str]], chinese: list[str], seed: int,
            requests: int = REQUESTS) -> dict[str, list[tuple[str, str | None]]]:  # fmt: skip
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for text, label in pool:
        by_label.setdefault(label, []).append((text, label))
    others = [row for label, rows in by_label.items() if label != "Sci/Tech" for row in rows]
    science = by_label["Sci/Tech"]

    def mix(share: float) -> tuple[str, str]:
        return rng.choice(science) if rng.random() < share else rng.choice(others)

    out: dict[str, list[tuple[str, str | None]]] = {"control": [], "topic": [], "typos": [], "language": []}
    for i in range(requests):
        ramp = i / (requests - 1)
        out["control"].append(mix(0.05))
        out["topic"].append(mix(0.05 + 0.55 * ramp))
        text, label = mix(0.05)
        out["typos"].append((typo(text, rng), label) if rng.random() < 0.6 * ramp else (text, label))
        out["language"].append((rng.choice(chinese), None) if rng.random() < 0.4 * ramp else mix(0.05))
    return out


def replay(url: str, name: str, rows: list[tuple[str, str | None]]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        def send(i: int) -> None:
            response = client.post("/v1/models/news/predict", json={"text": rows[i][0]},
                                   headers={"X-Request-ID": f"{name}-{i:05d}"})  # fmt: skip
            response.raise_for_status()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, range(len(rows))))


def serve(home: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "--home", str(home), "serve", "news",
                                "--port", str(port), "--no-access-log", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_ready(port, "/readyz")
    return process, port


def analyse(home: Path, streams_: dict[str, list[tuple[str, str | None]]]) -> dict[str, Any]:
    import tunesmith
    from tunesmith.monitoring.predictions import read_predictions
    from tunesmith.monitoring.report import domain_auc, embed
    from tunesmith.monitoring.statistics import distribution_drift, estimated_accuracy, label_drift, outputs_profile
    from tunesmith.tasks.catalog import TASKS

    registry = tunesmith.Registry(home)
    version = registry.resolve("news")
    task = TASKS[version.task]
    model = task.load(version.path, "auto")
    items, answers = task.reference(version.path, "validation")
    outputs = task.log_outputs(model, task.serve_compute(model, items, 64))
    reference = outputs_profile(outputs, [task.is_correct(o, a) for o, a in zip(outputs, answers, strict=True)])
    reference_features = embed(items)
    logged = list(read_predictions(home, "news"))
    results: dict[str, Any] = {"reference": {"rows": len(items), "accuracy": reference.accuracy,
                                             "calibration_error": reference.calibration.to_dict()
                                             if reference.calibration else None}}  # fmt: skip
    for name, rows in streams_.items():
        mine = sorted((r for r in logged if r["request_id"].startswith(f"{name}-")), key=lambda r: r["request_id"])
        assert len(mine) == len(rows), (name, len(mine), len(rows))
        features = embed([r["input"] for r in mine])
        right = np.array([r["label"] == label for r, (_, label) in zip(mine, rows, strict=True)])
        windows = []
        for end in range(WINDOW, len(rows) + 1, STEP):
            part = mine[end - WINDOW : end]
            profile = outputs_profile([r["output"] for r in part])
            domain = domain_auc(reference_features, features[end - WINDOW : end], seed=end)
            labels = label_drift(reference.labels, profile.labels)
            confidence = distribution_drift(reference.confidence, profile.confidence)
            windows.append({"end": end, "domain_auc": domain["roc_auc"], "domain_threshold": domain["threshold"],
                            "domain": domain["drift"], "labels": labels["drift"], "label_p": labels["p_value"],
                            "confidence": confidence["drift"],
                            "estimated_accuracy": estimated_accuracy(reference.calibration, profile.confidence),
                            "realised_accuracy": float(right[end - WINDOW : end].mean())})  # fmt: skip
        first = {k: next((w["end"] for w in windows if w[k]), None) for k in ("domain", "labels", "confidence")}
        first["any"] = next((w["end"] for w in windows if w["domain"] or w["labels"] or w["confidence"]), None)
        errors = [abs(w["estimated_accuracy"] - w["realised_accuracy"]) for w in windows
                  if w["estimated_accuracy"] is not None]  # fmt: skip
        results[name] = {
            "windows": windows, "detected_at": first,
            "flagged_windows": {k: sum(bool(w[k]) for w in windows) for k in ("domain", "labels", "confidence")},
            "n_windows": len(windows), "cbpe_mae": float(np.mean(errors)) if errors else None,
            "raw_confidence_mae": float(np.mean([abs(np.mean([r["confidence"] for r in mine[w["end"] - WINDOW:w["end"]]])
                                                     - w["realised_accuracy"]) for w in windows])),
        }  # fmt: skip
    return results


def overhead(home: Path, texts: list[str], seconds: float) -> dict[str, Any]:
    bodies = [json.dumps({"text": t}).encode() for t in texts[:500]]
    runs = []
    for logging in ("on", "off") * 3:  # alternated: the machine's drift hits both alike
        flag = "--log-predictions" if logging == "on" else "--no-log-predictions"
        process, port = serve(home, flag)
        try:
            row = asyncio.run(drive(port, bodies, 32, seconds))
        finally:
            stop(process)
        runs.append({"log": logging, **row})
        print(f"  logging {logging}: {row['rps']:.0f} req/s, p99 {row['p99_ms']:.0f} ms, errors {row['errors']}")
    on = [r["rps"] for r in runs if r["log"] == "on"]
    off = [r["rps"] for r in runs if r["log"] == "off"]
    p99 = {k: float(np.median([r["p99_ms"] for r in runs if r["log"] == k])) for k in ("on", "off")}
    return {"runs": runs, "rps_on": float(np.median(on)), "rps_off": float(np.median(off)), "p99_ms": p99,
            "overhead": float(1 - np.median(on) / np.median(off))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget")
    parser.add_argument("--seconds", type=float, default=15.0, help="each throughput run")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="requests a stream (a smaller smoke run)")
    parser.add_argument("--overhead-only", type=Path, default=None, metavar="HOME",
                        help="re-measure only the logging overhead, on the home of an earlier run (after a change "
                        "to the log), and replace that part of the results")  # fmt: skip
    args = parser.parse_args()
    import tunesmith

    data = require_shared_data()
    if args.overhead_only is not None:
        rows = load_agnews(data)
        random.Random(0).shuffle(rows)
        cost = overhead(args.overhead_only, [t for t, _ in rows[3000:3500]], args.seconds)
        print(f"  on {cost['rps_on']:.0f} req/s vs off {cost['rps_off']:.0f} req/s: overhead {cost['overhead']:.1%}")
        results = Path(__file__).resolve().parent / "results" / "monitoring.json"
        previous = json.loads(results.read_text())
        previous.pop("machine", None)
        save("monitoring", {**previous, "overhead": cost, "overhead_remeasured": True})
        return
    rng = random.Random(0)
    rows = load_agnews(data)
    rng.shuffle(rows)
    science = [r for r in rows if r[1] == "Sci/Tech"]
    others = [r for r in rows if r[1] != "Sci/Tech"]
    train = others[:2850] + science[:150]  # Sci/Tech 5 % of the training data
    pool = others[2850:] + science[150:]
    rng.shuffle(train)
    chinese = [json.loads(line)["sentence"] for line in (data / "clue_tnews/dev.json").read_text().splitlines()]
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    home = work / "home"
    started = time.perf_counter()
    result = tunesmith.train(write_csv(work / "train.csv", train), name="news", registry=tunesmith.Registry(home),
                             max_minutes=args.minutes, progress=False)  # fmt: skip
    tunesmith.export_model("news", registry=tunesmith.Registry(home))
    trained = {"minutes": (time.perf_counter() - started) / 60, "test": result.metrics}
    print(f"trained and exported in {trained['minutes']:.1f} min; test accuracy {result.metrics['accuracy']:.3f}")

    planned = streams(pool, chinese, seed=1, requests=args.requests)
    process, port = serve(home)
    try:
        for name, stream in planned.items():
            replay(f"http://127.0.0.1:{port}", name, stream)
    finally:
        stop(process)
    analysis = analyse(home, planned)
    print(f"\n{'stream':10} {'detected (domain / labels / confidence / any)':46} {'false/flagged windows':22} "
          f"{'CBPE MAE':>8} {'raw MAE':>8}")  # fmt: skip
    for name in planned:
        r = analysis[name]
        found = " / ".join(str(r["detected_at"][k] or "-") for k in ("domain", "labels", "confidence", "any"))
        flagged = "/".join(str(r["flagged_windows"][k]) for k in ("domain", "labels", "confidence"))
        print(f"{name:10} {found:46} {flagged + ' of ' + str(r['n_windows']):22} {r['cbpe_mae']:8.3f} "
              f"{r['raw_confidence_mae']:8.3f}")  # fmt: skip
    print("\nlogging overhead at 32 clients (POST /predict, ONNX int8):")
    cost = overhead(home, [t for t, _ in pool], args.seconds)
    print(f"  on {cost['rps_on']:.0f} req/s vs off {cost['rps_off']:.0f} req/s: overhead {cost['overhead']:.1%}")
    path = save("monitoring", {"trained": trained, "streams": analysis, "overhead": cost,
                               "settings": {"window": WINDOW, "step": STEP, "requests": args.requests}})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
