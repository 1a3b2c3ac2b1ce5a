"""Zero-shot accuracy (no training) on Banking77 and AG News, from label names and from short descriptions.

    python bench/zeroshot.py

Banking77's labels are snake_case intents ("card_arrival"); names are used with underscores as spaces,
and "descriptions" are the names in a question template ("a question about {}"): writing 77 real
descriptions by hand was out of scope. AG News gets four one-line descriptions. Test splits: Banking77's
official test (3,080), AG News's test.csv (7,600). Writes bench/results/zeroshot.json.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import require_shared_data, save
from tunesmith.tasks.text_classification.zeroshot import create

AG_NEWS = {
    "World": "world news: international politics, governments, wars and diplomacy",
    "Sports": "sports news: games, teams, players, matches and championships",
    "Business": "business news: companies, markets, stocks, the economy and trade",
    "Sci/Tech": "science and technology news: computers, software, the internet, space and research",
}


def main() -> None:
    data = require_shared_data()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        registry = tunesmith.Registry(Path(work) / "home")
        with (data / "banking77/test.csv").open(encoding="utf-8") as handle:
            labels = sorted({row["category"] for row in csv.DictReader(handle)})
        classes = (data / "ag_news/classes.txt").read_text().split()
        ag_test = Path(work) / "ag_test.csv"
        with (data / "ag_news/test.csv").open(encoding="utf-8") as src, ag_test.open("w", newline="") as dst:
            writer = csv.writer(dst)
            writer.writerow(["text", "label"])
            for c, title, body in csv.reader(src):
                writer.writerow([f"{title}. {body}".replace("\\", " "), classes[int(c) - 1]])
        cases = [
            ("banking77", "label names", {n: n.replace("_", " ") for n in labels}, "{}", data / "banking77/test.csv"),
            ("banking77", "names in a template", {n: n.replace("_", " ") for n in labels},
             "a banking customer's question about {}", data / "banking77/test.csv"),
            ("agnews", "label names", {n: n for n in AG_NEWS}, "{}", ag_test),
            ("agnews", "short descriptions", AG_NEWS, "{}", ag_test),
        ]  # fmt: skip
        for i, (dataset, how, descriptions, template, test) in enumerate(cases):
            started = time.perf_counter()
            result = create(descriptions, name=f"zs{i}", registry=registry, template=template, test=test,
                            log=lambda _m: None)  # fmt: skip
            rows.append({"dataset": dataset, "labels_from": how, "template": template, "n": result.metrics["n"],
                         "accuracy": result.metrics["accuracy"], "f1_macro": result.metrics["f1_macro"],
                         "minutes": (time.perf_counter() - started) / 60})  # fmt: skip
            print(f"{dataset} ({how}): accuracy {result.metrics['accuracy']:.3f}", flush=True)
    save("zeroshot", {"rows": rows, "model": "embedded all-MiniLM-L6-v2, no training"})
    print("\n| dataset | labels from | accuracy | macro-F1 | test texts | minutes |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['labels_from']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['n']} | "
              f"{r['minutes']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
