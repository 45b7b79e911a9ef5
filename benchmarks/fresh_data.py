"""Fresh data (IRGen Table 6) on Fashion-MNIST: build on half the gallery, add the other
half with the fitted tokenizer and no decoder retraining, and compare with a full build.

    .venv/bin/python benchmarks/fresh_data.py    # the 30k build took 228 s here, embeddings cached
"""

from __future__ import annotations

import time

import numpy as np

from genir.decoder.train import SameLabelSampler
from genir_experiments import tasks


def main() -> None:
    data = tasks.prepare("fashion-mnist")
    n = len(data.item_ids)
    rng = np.random.default_rng(0)
    half = np.sort(rng.permutation(n)[: n // 2])
    rest = np.setdiff1d(np.arange(n), half)
    labels = data.relevance["item_labels"]
    old = tasks.TaskData(
        name=data.name, item_ids=[data.item_ids[i] for i in half], item_emb=data.item_emb[half],
        train_queries=data.item_emb[half], sampler=SameLabelSampler(labels[half], labels[half]),
        query_emb=data.query_emb, relevance={**data.relevance, "item_labels": labels[half]},
        num_relevant=data.num_relevant // 2, metric_ks=data.metric_ks,
        encoder_spec=data.encoder_spec)
    t0 = time.perf_counter()
    index = tasks.build(old, tasks.default_config("fashion-mnist"))
    print(f"built on {len(half)} items in {time.perf_counter() - t0:.0f} s")
    print(tasks.format_table(tasks.evaluate(old, index)))
    t0 = time.perf_counter()
    index.add(data.item_emb[rest], [data.item_ids[i] for i in rest])
    print(f"\nadded {len(rest)} items in {time.perf_counter() - t0:.1f} s (no retraining)")
    # rows of the grown index: half first, then rest; relabel accordingly
    grown = tasks.TaskData(
        name=data.name + " (half built + half added)", item_ids=index.item_ids,
        item_emb=index.item_emb, train_queries=index.item_emb, sampler=None,
        query_emb=data.query_emb,
        relevance={**data.relevance, "item_labels": np.concatenate([labels[half], labels[rest]])},
        num_relevant=data.num_relevant, metric_ks=data.metric_ks, encoder_spec=data.encoder_spec)
    print(tasks.format_table(tasks.evaluate(grown, index)))


if __name__ == "__main__":
    main()
