"""Evaluation: K-Score (KnowGen) and WiScore (WISE) aggregation, agent backends, a resumable
runner and the HTML report. `python -m gsjax.eval --config=configs/eval_knowgen.py`."""
