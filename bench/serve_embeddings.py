"""Serving embeddings: `tunesmith serve` against infinity-emb, the field's CPU embedding server, same model,
same loopback load.

    python bench/serve_embeddings.py                   # the model bench/embeddings.py --dataset banking77 made
    python bench/serve_embeddings.py --model emb-squad --seconds 20

infinity-emb runs from its own virtual environment (bench/.venv-infinity, made on first use: it pins
transformers 4.x and sentence-transformers 3.x, which the project's environment must not get), on the artifact's
`model/` folder (a sentence-transformers folder, linked into the 3.x layout that pin reads), once with its torch
engine and once with its ONNX `optimum` engine (on optimum's own ONNX export of the weights, pooling as the
folder says; on 2026-12-06 each gave a cosine of 1.0000 to tunesmith's embedding of a probe text). tunesmith
serves the same registered version on the export's default variant. Each server runs alone; the asyncio load
generator of bench/serve.py sends one text of 10-40 words (sentences of SQuAD's paragraphs) per request to the
OpenAI-style embeddings route, for a fixed time at 1, 8 and 32 concurrent clients.
Reported: embeddings/s, p50/p99 latency, and the ratio to infinity's best engine at the same concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, require_shared_data, save
from serve import exported, free_port, run_server

VENV = ROOT / "bench" / ".venv-infinity"
INFINITY = "infinity-emb[server,torch,optimum]==0.0.78"


def infinity_venv() -> Path:
    exe = VENV / "bin" / "infinity_emb"
    if not exe.exists():
        print(f"making {VENV} with {INFINITY} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: a looser pin pulls a CUDA build
        subprocess.run([*pip, INFINITY], check=True)
    return exe


LEGACY_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
                "Pooling": "sentence_transformers.models.Pooling",
                "Normalize": "sentence_transformers.models.Normalize"}  # fmt: skip
POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
           "lasttoken": "pooling_mode_lasttoken", "weightedmean": "pooling_mode_weightedmean_tokens"}  # fmt: skip


def legacy_folder(model: Path, into: Path) -> Path:
    """The artifact's sentence-transformers folder in the layout sentence-transformers 3.x reads (infinity pins it).

    sentence-transformers 6 names its modules by new import paths and writes new config keys; the 3.x loader
    fails on them. The weights and tokenizer are the same files (linked), so both servers run one model.
    """
    into.mkdir(parents=True, exist_ok=True)
    for item in model.iterdir():
        if item.is_file() and item.name not in ("modules.json", "sentence_bert_config.json"):
            (into / item.name).symlink_to(item.resolve())
    modules = json.loads((model / "modules.json").read_text())
    for module in modules:
        module["type"] = LEGACY_TYPES[module["type"].rsplit(".", 1)[-1]]
        folder = into / module["path"]
        folder.mkdir(exist_ok=True)
        if module["type"].endswith("Pooling"):
            config = json.loads((model / module["path"] / "config.json").read_text())
            legacy = {key: False for key in POOLING.values()}
            legacy[POOLING[config["pooling_mode"]]] = True
            legacy["word_embedding_dimension"] = config["embedding_dimension"]
            (folder / "config.json").write_text(json.dumps(legacy))
    (into / "modules.json").write_text(json.dumps(modules))
    tokenizer = json.loads((model / "tokenizer_config.json").read_text())
    limit = min(tokenizer.get("model_max_length", 512), 512)
    (into / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": limit, "do_lower_case": False}))
    return into


def pooling(model: Path) -> str:
    modules = json.loads((model / "modules.json").read_text())
    folder = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    mode = json.loads((model / folder / "config.json").read_text())["pooling_mode"]
    return {"mean": "mean", "cls": "cls"}[mode]


def reference_done(port: int, name: str, seconds: float = 600) -> None:
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(f'tunesmith_reference_accuracy{{model="{name}"}}') and not line.endswith("NaN"):
                    return
        time.sleep(1)
    raise SystemExit("the server's start-up reference did not finish")


def texts(limit: int = 2000) -> list[str]:
    source = json.loads((require_shared_data() / "squad_v1.1_dev_part1" / "dev-v1.1-part.json").read_text())
    found = []
    for article in source["data"]:
        for paragraph in article["paragraphs"]:
            for sentence in re.split(r"(?<=[.!?])\s+", paragraph["context"]):
                if 10 <= len(sentence.split()) <= 40:
                    found.append(sentence)
    return found[:limit]


def version_info() -> str:
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; "
                           "print(m.version('infinity-emb'))"], capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="emb-banking77", help="a registered sentence-similarity model")
    parser.add_argument("--home", default=str(ROOT / "bench" / ".home"))
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per concurrency level")
    parser.add_argument("--settle", action="store_true", help="measure tunesmith once its start-up reference (the "
                        "live gauges' answers on validation, computed between requests) is done")
    parser.add_argument("--only", choices=["infinity-torch", "infinity-optimum", "tunesmith"])
    args = parser.parse_args()
    version, export = exported(args.home, args.model)
    sample = texts()
    results: dict[str, object] = {}
    scratch = tempfile.TemporaryDirectory()
    os.environ["DO_NOT_TRACK"] = "1"  # infinity's telemetry retries an unreachable host from the serving process
    for engine in ("torch", "optimum"):
        if args.only not in (None, f"infinity-{engine}"):
            continue
        exe = infinity_venv()
        port = free_port()
        print(f"infinity-emb ({engine} engine) ...", flush=True)
        folder = legacy_folder(version.path / "model", Path(scratch.name) / engine)
        if engine == "optimum":
            # The engine loads an ONNX file from the folder; ours ends in pooling, so give it optimum's own
            # export of the same weights. It matches files by bare name (a local folder's glob gives paths), so
            # the file goes to the folder's top and infinity runs from there on ".".
            # As plain transformers (last_hidden_state out): what the engine pools itself.
            subprocess.run([str(VENV / "bin" / "optimum-cli"), "export", "onnx", "--model", str(folder), "--task",
                            "feature-extraction", "--library-name", "transformers", str(folder / "export")],
                           check=True, capture_output=True)  # fmt: skip
            (folder / "export" / "model.onnx").rename(folder / "model.onnx")
        cmd = [str(exe), "v2", "--model-id", ".", "--served-model-name", version.name, "--port", str(port),
               "--engine", engine, "--device", "cpu", "--no-model-warmup"]  # fmt: skip
        if engine == "optimum":  # it pools by the CLS token unless told (the torch engine reads the folder's config)
            cmd += ["--pooling-method", pooling(version.path / "model")]
        bodies = [json.dumps({"model": version.name, "input": [t]}).encode() for t in sample]
        try:
            results[f"infinity-{engine}"] = run_server(cmd, port, "/health", bodies, args.seconds, "/embeddings",
                                                       ready_seconds=600, cwd=folder)  # fmt: skip
        except SystemExit as exc:
            print(f"infinity-emb ({engine}) did not start: {exc}", flush=True)
            results[f"infinity-{engine}"] = {"error": str(exc)}
    if args.only in (None, "tunesmith"):
        port = free_port()
        print(f"tunesmith serve ({export['default']}) ...", flush=True)
        cmd = [sys.executable, "-m", "tunesmith.cli", "--home", args.home, "serve", version.ref, "--port", str(port),
               "--no-access-log", "--auth", "off"]  # fmt: skip
        bodies = [json.dumps({"model": version.name, "input": t}).encode() for t in sample]
        results["tunesmith"] = run_server(cmd, port, "/readyz", bodies, args.seconds, "/v1/embeddings",
                                          settle=(lambda p: reference_done(p, version.name)) if args.settle else None)
        results["tunesmith"]["settled"] = args.settle  # type: ignore[index]

    peers = [r for k, r in results.items() if k.startswith("infinity") and "rows" in r]  # type: ignore[operator]
    best = {c: max(r["rows"][i]["rps"] for r in peers) for i, c in enumerate((1, 8, 32))} if peers else {}  # type: ignore[index]
    print(f"\nmodel {version.ref}, {len(sample)} texts of 10-40 words, one per request, {args.seconds:g} s per level\n")
    print("| server | clients | embeddings/s | vs infinity's best | p50 ms | p99 ms | errors | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for server, data in results.items():
        if "rows" not in data:  # type: ignore[operator]
            print(f"| {server} | - | failed to start | | | | | |")
            continue
        for row in data["rows"]:  # type: ignore[index]
            ratio = row["rps"] / best[row["clients"]] if best else None
            row["vs_infinity_best"] = ratio
            p50, p99 = (f"{row[k]:.1f}" if row[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
            print(f"| {server} | {row['clients']} | {row['rps']:.0f} | {f'{ratio:.2f}x' if ratio else '-'} | "
                  f"{p50} | {p99} | {row['errors']} | {data['peak_rss_mb']:.0f} |")  # type: ignore[index]  # fmt: skip
    int8 = export["variants"].get("int8", {})
    print(f"\nint8 ({int8.get('scheme')}): mean cosine {int8.get('mean_cosine', float('nan')):.4f}, min "
          f"{int8.get('min_cosine', float('nan')):.4f} to PyTorch; tunesmith served {export['default']}")  # fmt: skip
    path = save(f"serve_embeddings_{version.name}{'_settled' if args.settle else ''}", {
        "model": version.ref, "seconds": args.seconds, "texts": len(sample), "infinity_emb": version_info(),
        "results": results, "export": {k: export[k] for k in ("default", "checked_on", "variants")},
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
