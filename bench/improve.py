"""Closing the loop on the shifted stream of the monitoring benchmark: does `tunesmith retrain` learn the shift
from feedback without forgetting, which strategy should be the default, and do the gate and the canary stop a
bad candidate?

    python bench/improve.py                      # run alone on the machine (about an hour on 2 cores)
    python bench/improve.py --part strategies    # steps 1-4 only
    python bench/improve.py --part bad --work W  # step 5 only, on the work folder of an earlier run

1. Production: AG News (the monitoring benchmark's split: Sci/Tech kept rare, 5 % of 3,000 training rows),
   `tunesmith train` defaults with a 4-minute budget, exported (ONNX int8).
2. The shifted stream: the monitoring benchmark's `topic` stream (Sci/Tech rising from 5 % to 60 % over 2,000
   requests). Feedback (the right label) arrives for 10 % or 30 % of it.
3. For each share and each strategy (`feedback`, `rehearsal` at replay 1x / 2x / 4x and at a fresh run's learning
   rate, `lora`, `scratch`), with a 3-minute budget each: `retrain` (export and gate included). Scored on 1,000 unseen shifted rows (Sci/Tech
   60 %) and on production's own test split (forgetting), beside production.
4. The default strategy's candidate goes through a 10 % canary on the real server (shifted traffic, sticky
   users) and is promoted with `canary promote`.
5. A planted bad candidate (shuffled labels): the gate's verdict; then forced into a 10 % canary with users'
   feedback arriving, where the server's rollback must end it; wrong answers it served, against its share.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, require_shared_data, save, write_csv
from monitoring import load_agnews, streams
from serve import free_port, stop, wait_ready

NAME = "news"
PLAN: list[tuple[str, float, float | None]] = [  # (strategy, replay, learning rate; None: the default)
    ("feedback", 0.0, None), ("rehearsal", 1.0, None), ("rehearsal", 2.0, None), ("rehearsal", 4.0, None),
    ("rehearsal", 2.0, 1e-4),  # a fresh run's step (what `retrain` used before WARM_LEARNING_RATE)
    ("lora", 2.0, None), ("scratch", 0.0, None),
]  # fmt: skip
DEFAULT = ("rehearsal", 2.0, None)


def quiet(_line: str) -> None:
    pass


def accuracy(model: Any, rows: list[tuple[str, str]]) -> float:
    predictions = model.predict([t for t, _ in rows], batch_size=64)
    return sum(p.label == label for p, (_, label) in zip(predictions, rows, strict=True)) / len(rows)


def data(seed: int = 0) -> dict[str, Any]:
    """The monitoring benchmark's training split and topic stream, and a disjoint shifted test set."""
    rng = random.Random(seed)
    rows = load_agnews(require_shared_data())
    rng.shuffle(rows)
    science = [r for r in rows if r[1] == "Sci/Tech"]
    others = [r for r in rows if r[1] != "Sci/Tech"]
    train = others[:2850] + science[:150]
    rng.shuffle(train)
    pool_science, pool_others = science[150:], others[2850:]
    # 600 + 400 rows held back from the stream: the shift's final mix (60 % Sci/Tech), never seen in feedback.
    shifted_test = pool_science[:600] + pool_others[:400]
    rng.shuffle(shifted_test)
    stream = streams(pool_others[400:] + pool_science[600:], [""], seed=1)["topic"]
    return {"train": train, "stream": [(t, str(label)) for t, label in stream], "shifted_test": shifted_test}


def serve(home: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "--home", str(home), "serve", f"{NAME}@production", "--port",
                                str(port), "--no-access-log", "--watch-interval", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_ready(port, "/readyz")
    return process, port


def replay(port: int, rows: list[tuple[str, str]], feedback_share: float, seed: int) -> list[dict[str, Any]]:
    """Send the rows as 100 sticky users; users correct a share of the answers (feedback on the request).
    Returns one record per request: its variant, whether it was right, and its status."""
    import httpx

    rng = random.Random(seed)
    corrects = [rng.random() < feedback_share for _ in rows]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        def send(i: int) -> dict[str, Any]:
            text, label = rows[i]
            response = client.post(f"/v1/models/{NAME}/predict", json={"text": text},
                                   headers={"X-Tunesmith-User": f"user-{i % 100}"})  # fmt: skip
            record = {"status": response.status_code, "variant": response.headers.get("x-tunesmith-variant")}
            if response.status_code == 200:
                record["right"] = response.json()["predictions"][0]["label"] == label
                if corrects[i]:
                    time.sleep(0.05)  # the prediction log is written in the background
                    client.post(f"/v1/models/{NAME}/feedback", json={"request_id": response.headers["x-request-id"],
                                                                     "answer": label})  # fmt: skip
            return record

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(send, range(len(rows))))


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def production(work: Path, rows: dict[str, Any], minutes: float) -> dict[str, Any]:
    import tunesmith

    home = work / "production"
    registry = tunesmith.Registry(home)
    started = time.perf_counter()
    tunesmith.train(write_csv(work / "train.csv", rows["train"]), name=NAME, registry=registry, max_minutes=minutes,
                    progress=False, log=quiet)  # fmt: skip
    tunesmith.export_model(NAME, registry=registry)
    registry.promote(f"{NAME}@1", "production")
    model = tunesmith.load_model(f"{NAME}@1", registry=registry)
    figures = {"minutes": (time.perf_counter() - started) / 60, "test": accuracy(model, _test_rows(registry)),
               "shifted": accuracy(model, rows["shifted_test"])}  # fmt: skip
    print(f"production: {figures['minutes']:.1f} min; test accuracy {figures['test']:.3f}, shifted {figures['shifted']:.3f}")
    return figures


def _test_rows(registry: Any) -> list[tuple[str, str]]:
    path = registry.resolve(f"{NAME}@1").path / "data" / "test.jsonl"
    return [(r["text"], r["label"]) for r in map(json.loads, path.read_text().splitlines())]


def strategies(work: Path, rows: dict[str, Any], minutes: float, shares: list[float],
               plan: list[tuple[str, float, float | None]]) -> list[dict[str, Any]]:  # fmt: skip
    import tunesmith
    from tunesmith.monitoring.feedback import store_feedback
    from tunesmith.retraining import retrain

    out = []
    for share in shares:
        home = work / f"feedback-{int(share * 100)}"
        rng = random.Random(2)
        given = [row for row in rows["stream"] if rng.random() < share]
        if not home.exists():  # else an earlier run's (--part extra): the same feedback, more candidates
            shutil.copytree(work / "production", home)
            for text, label in given:
                store_feedback(home, NAME, request_id=None, caller="bench", input=text, answer=label, predicted=None,
                               version=1, correct=None)  # fmt: skip
        registry = tunesmith.Registry(home)
        test_rows = _test_rows(registry)
        for strategy, replay_ratio, lr in plan:
            started = time.perf_counter()
            overrides = [f"train.max_minutes={minutes}", *([f"train.learning_rate={lr}"] if lr else [])]
            # Always from version 1: a canary run may have promoted a candidate in this home since.
            outcome = retrain(registry, NAME, strategy=strategy, replay=replay_ratio, against=f"{NAME}@1",
                              progress=False, log=quiet, overrides=overrides)  # fmt: skip
            elapsed = (time.perf_counter() - started) / 60
            ref = outcome.result.version.ref
            model = tunesmith.load_model(ref, registry=registry)
            criteria = {c.name: {"passed": c.passed, "detail": c.detail} for c in outcome.gate.criteria}
            row = {"share": share, "feedback_rows": len(given), "strategy": strategy, "replay": replay_ratio,
                   "learning_rate": lr, "ref": ref, "rows": outcome.lineage["rows"], "minutes": elapsed,
                   "train_minutes": outcome.result.train_minutes, "shifted": accuracy(model, rows["shifted_test"]),
                   "test": accuracy(model, test_rows), "gate": outcome.gate.passed, "criteria": criteria}  # fmt: skip
            out.append(row)
            print(f"  {share:.0%} {strategy:9} replay {replay_ratio:g} lr {lr or 'default'}: shifted {row['shifted']:.3f}, test "
                  f"{row['test']:.3f}, {elapsed:.1f} min, gate {'pass' if row['gate'] else 'FAIL'}", flush=True)  # fmt: skip
    return out


def canary(home: Path, ref: str, rows: dict[str, Any]) -> dict[str, Any]:
    """The default strategy's candidate through a 10 % canary on the real server, then promoted."""
    import tunesmith

    tunesmith.Registry(home).promote(ref, "candidate")  # a later strategy's pass moved the alias on
    started = cli(home, "canary", "start", NAME, "--alias", "candidate", "--share", "0.1")
    assert started.returncode == 0, started.stderr
    process, port = serve(home)
    try:
        time.sleep(3)  # the server's watch picks the split up
        answers = replay(port, rows["stream"][-1000:], 0.0, seed=3)
    finally:
        stop(process)
    status = cli(home, "canary", "status", NAME, "--json")
    promoted = cli(home, "canary", "promote", NAME)
    served = {v: sum(a["variant"] == v for a in answers) for v in {a["variant"] for a in answers}}
    return {"ref": ref, "requests": len(answers), "failed": sum(a["status"] != 200 for a in answers),
            "served": served, "status": json.loads(status.stdout) if status.returncode == 0 else status.stderr,
            "promoted": promoted.returncode == 0, "promote_output": (promoted.stdout + promoted.stderr).strip()}  # fmt: skip


def bad_candidate(work: Path, rows: dict[str, Any], minutes: float) -> dict[str, Any]:
    """Shuffled labels: the gate's verdict; then forced into a 10 % canary while users send feedback."""
    import tunesmith
    from tunesmith.gating import gate

    home = work / "bad"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(work / "production", home)
    registry = tunesmith.Registry(home)
    labels = [label for _, label in rows["train"]]
    random.Random(4).shuffle(labels)
    shuffled = [(text, label) for (text, _), label in zip(rows["train"], labels, strict=True)]
    version = tunesmith.train(write_csv(work / "shuffled.csv", shuffled), name=NAME, registry=registry,
                              max_minutes=minutes, progress=False, log=quiet).version  # fmt: skip
    tunesmith.export_model(version.ref, registry=registry)
    verdict = gate(registry, version.ref, log=quiet)
    print(f"bad candidate {version.ref}: gate {'pass' if verdict.passed else 'FAIL'}: "
          + "; ".join(f"{c.name} {c.detail}" for c in verdict.criteria if c.passed is False))  # fmt: skip
    registry.promote(version.ref, "candidate")  # forced past the gate, to test the canary's own protection
    started = cli(home, "canary", "start", NAME, "--alias", "candidate", "--share", "0.1")
    assert started.returncode == 0, started.stderr
    process, port = serve(home)
    try:
        time.sleep(3)
        answers = replay(port, rows["stream"][-1500:], 0.3, seed=5)
    finally:
        stop(process)
    status = json.loads(cli(home, "canary", "status", NAME, "--json").stdout)
    by_candidate = [a for a in answers if a["variant"] == "candidate"]
    return {"ref": version.ref, "gate": verdict.to_dict(), "requests": len(answers),
            "failed": sum(a["status"] != 200 for a in answers), "candidate_answers": len(by_candidate),
            "candidate_wrong": sum(not a.get("right") for a in by_candidate),
            "candidate_share_served": len(by_candidate) / len(answers), "status": status}  # fmt: skip


def print_table(base: dict[str, Any], table: list[dict[str, Any]]) -> None:
    print(f"\n| feedback | strategy | replay | lr | shifted | test (forgetting) | minutes | gate |\n|---|---|---|---|---|---|---|---|"
          f"\n| - | production | - | - | {base['shifted']:.3f} | {base['test']:.3f} | {base['minutes']:.1f} | - |")
    for r in table:
        print(f"| {r['share']:.0%} | {r['strategy']} | {r['replay']:g} | {r['learning_rate'] or 'default'} | "
              f"{r['shifted']:.3f} | {r['test']:.3f} | {r['minutes']:.1f} | {'pass' if r['gate'] else 'FAIL'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="production's training budget")
    parser.add_argument("--retrain-minutes", type=float, default=3.0, help="each candidate's training budget")
    parser.add_argument("--part", choices=("all", "strategies", "extra", "bad"), default="all",
                        help="extra: only --extra's candidates, added to an earlier run's table (--work)")
    parser.add_argument("--extra", default="rehearsal:2:2e-5",
                        help="strategy:replay:learning-rate entries, comma-separated (--part extra)")
    parser.add_argument("--work", type=Path, default=None, help="the folder of an earlier run (--part bad)")
    parser.add_argument("--shares", default="0.1,0.3", help="feedback shares (a smoke run: 0.3)")
    parser.add_argument("--only", default=None, help="strategies to run, e.g. rehearsal (a smoke run)")
    args = parser.parse_args()
    rows = data()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-improve-"))
    print(f"work folder {work}")
    results_file = RESULTS / "improve.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    previous.pop("machine", None)
    settings = {"minutes": args.minutes, "retrain_minutes": args.retrain_minutes, "plan": PLAN, "default": DEFAULT}
    if args.part in ("all", "strategies"):
        base = production(work, rows, args.minutes)
        plan = [p for p in PLAN if args.only is None or p[0] in args.only.split(",")]
        shares = [float(s) for s in args.shares.split(",")]
        table = strategies(work, rows, args.retrain_minutes, shares, plan)
        top = [r for r in table if r["share"] == max(shares)]
        # The default's candidate; when it failed its gate, the first that passed (the default should change).
        chosen = next((r for r in top if (r["strategy"], r["replay"], r["learning_rate"]) == DEFAULT and r["gate"]),
                      next((r for r in top if r["gate"]), None))  # fmt: skip
        rollout = canary(work / f"feedback-{int(max(shares) * 100)}", chosen["ref"], rows) if chosen else {"skipped": "no candidate passed"}
        rollout["strategy"] = chosen and [chosen["strategy"], chosen["replay"], chosen["learning_rate"]]
        print(f"canary of {chosen and chosen['ref']}: {rollout}")
        print_table(base, table)
        previous = {"production": base, "strategies": table, "canary": rollout, "settings": settings}
        save("improve", previous)
    if args.part == "extra":
        plan = [(e.split(":")[0], float(e.split(":")[1]), float(e.split(":")[2])) for e in args.extra.split(",")]
        table = strategies(work, rows, args.retrain_minutes, [float(s) for s in args.shares.split(",")], plan)
        previous["strategies"] = previous.get("strategies", []) + table
        save("improve", {**previous, "settings": {**previous.get("settings", {}), "extra": plan}})
    if args.part in ("strategies", "extra"):
        return
    bad = bad_candidate(work, rows, args.retrain_minutes)
    print(f"bad candidate in a 10 % canary: {bad['candidate_answers']} of {bad['requests']} answers "
          f"({bad['candidate_share_served']:.1%}), {bad['candidate_wrong']} wrong; {bad['failed']} failed requests; "
          f"canary: {bad['status']}")  # fmt: skip
    path = save("improve", {**previous, "bad_candidate": bad, "settings": settings})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
