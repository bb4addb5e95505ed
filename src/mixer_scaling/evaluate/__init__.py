"""Evaluation: upstream top-1 (classify), linear few-shot (fewshot, downstream), throughput."""
